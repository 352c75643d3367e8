//! `kilonova admin schemas …` → `/admin/v2/schemas/{tenant}/{ns}/{topic}/…`,
//! and the namespace verbs of the schema compatibility strategy
//! (`namespaces set-schema-compatibility-strategy` / `get-…`). Flags are
//! pulsar-admin's.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use kilonova_metadata::schema::CompatibilityStrategy;
use kilonova_metadata::{NamespaceName, TopicName};

use super::client::{AdminClient, AdminError, ApiPath, ResourcePath};
use super::Output;

#[derive(Subcommand)]
pub enum SchemasCmd {
    /// Show a topic's schema: the latest version, one (--version) or all (--all-version).
    Get {
        topic: TopicName,
        /// The version to show.
        #[arg(long, conflicts_with = "all_version")]
        version: Option<u64>,
        /// Show every version.
        #[arg(short = 'a', long = "all-version")]
        all_version: bool,
    },
    /// Register a schema version; FILE holds {"type": …, "schema": …, "properties": {}}.
    Upload {
        topic: TopicName,
        #[arg(short = 'f', long)]
        filename: PathBuf,
    },
    /// Delete a topic's schema (--force: every version, numbering starts over).
    Delete {
        topic: TopicName,
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Whether a schema (FILE, as for upload) could be registered on the topic.
    Compatibility {
        topic: TopicName,
        #[arg(short = 'f', long)]
        filename: PathBuf,
    },
}

/// The namespace verbs of the schema compatibility strategy.
#[derive(Subcommand)]
pub enum NamespaceSchemaCmd {
    /// Set how new schema versions of the namespace's topics are checked.
    SetSchemaCompatibilityStrategy(SetStrategy),
    /// Show the schema compatibility strategy.
    GetSchemaCompatibilityStrategy {
        /// tenant/namespace
        namespace: NamespaceName,
    },
}

#[derive(Args)]
pub struct SetStrategy {
    namespace: NamespaceName,
    /// ALWAYS_COMPATIBLE, ALWAYS_INCOMPATIBLE, BACKWARD, FORWARD, FULL, their
    /// _TRANSITIVE forms, or UNDEFINED (the broker default, FULL).
    #[arg(short = 'c', long)]
    compatibility: CompatibilityStrategy,
}

/// `/admin/v2/schemas/{tenant}/{ns}/{topic}`.
fn base(t: &TopicName) -> ApiPath {
    ApiPath::new(["schemas", &t.tenant, &t.namespace, &t.local])
}

/// The JSON document in `file`.
fn read_body(file: &PathBuf) -> Result<Value, AdminError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| AdminError::InvalidArgument(format!("cannot read {}: {e}", file.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        AdminError::InvalidArgument(format!("{} is not a JSON document: {e}", file.display()))
    })
}

pub async fn run(client: &AdminClient, cmd: SchemasCmd) -> Result<Output, AdminError> {
    let doc = match cmd {
        SchemasCmd::Get {
            topic,
            version,
            all_version,
        } => {
            let path = match (version, all_version) {
                (_, true) => base(&topic).join("schemas"),
                (Some(v), false) => base(&topic).join("schema").join(v),
                (None, false) => base(&topic).join("schema"),
            };
            client.get(&path).await?
        }
        SchemasCmd::Upload { topic, filename } => {
            let body = read_body(&filename)?;
            client
                .post(&base(&topic).join("schema"), Some(&body))
                .await?
        }
        SchemasCmd::Delete { topic, force } => {
            client
                .delete(&base(&topic).join("schema").force(force))
                .await?
        }
        SchemasCmd::Compatibility { topic, filename } => {
            let body = read_body(&filename)?;
            client
                .post(&base(&topic).join("compatibility"), Some(&body))
                .await?
        }
    };
    Ok(Output::Document(doc))
}

pub async fn run_namespace(
    client: &AdminClient,
    cmd: NamespaceSchemaCmd,
) -> Result<Value, AdminError> {
    match cmd {
        NamespaceSchemaCmd::SetSchemaCompatibilityStrategy(s) => {
            let path = s.namespace.path().join("schemaCompatibilityStrategy");
            client
                .put(&path, Some(&json!(s.compatibility.name())))
                .await
        }
        NamespaceSchemaCmd::GetSchemaCompatibilityStrategy { namespace } => {
            client
                .get(&namespace.path().join("schemaCompatibilityStrategy"))
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Group;
    use super::*;

    #[test]
    fn schema_verbs_take_pulsar_admins_flags() {
        let a = parse(&["schemas", "get", "persistent://a/b/t", "--version", "3"]).unwrap();
        let Group::Schemas {
            verb:
                SchemasCmd::Get {
                    topic,
                    version,
                    all_version,
                },
        } = a.group
        else {
            panic!("not schemas get");
        };
        assert_eq!(base(&topic).to_string(), "/admin/v2/schemas/a/b/t");
        assert_eq!((version, all_version), (Some(3), false));
        assert!(parse(&["schemas", "get", "a/b/t", "--all-version"]).is_ok());
        assert!(parse(&["schemas", "get", "a/b/t", "-a", "--version", "1"]).is_err());
        assert!(parse(&["schemas", "upload", "a/b/t", "-f", "s.json"]).is_ok());
        assert!(parse(&["schemas", "upload", "a/b/t"]).is_err());
        assert!(parse(&["schemas", "delete", "a/b/t", "--force"]).is_ok());
        assert!(parse(&["schemas", "compatibility", "a/b/t", "--filename", "s.json"]).is_ok());
    }

    #[test]
    fn the_strategy_verbs_take_a_known_strategy() {
        assert!(parse(&[
            "namespaces",
            "set-schema-compatibility-strategy",
            "a/b",
            "-c",
            "BACKWARD_TRANSITIVE"
        ])
        .is_ok());
        assert!(parse(&[
            "namespaces",
            "set-schema-compatibility-strategy",
            "a/b",
            "--compatibility",
            "SIDEWAYS"
        ])
        .is_err());
        assert!(parse(&["namespaces", "get-schema-compatibility-strategy", "a/b"]).is_ok());
    }
}
