//! `kilonova admin kafka-groups …` → `/admin/v2/kafka/{tenant}/{namespace}/groups`:
//! Kafka consumer groups (list, lag per partition, reset, delete).

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::{AdminClient, AdminError, ApiPath};
use super::Output;

#[derive(Subcommand)]
pub enum KafkaGroupsCmd {
    /// List a namespace's Kafka groups (those with committed offsets).
    List {
        /// `tenant/namespace` (the Kafka listener's is public/default).
        namespace: String,
    },
    /// A group's state, members, and per partition its committed offset,
    /// the log end and the lag.
    Describe { namespace: String, group: String },
    /// Reset a group's offsets on a topic (the group must have no members).
    Reset {
        namespace: String,
        group: String,
        /// The Kafka topic.
        #[arg(long)]
        topic: String,
        /// `earliest`, `latest` or an offset.
        #[arg(long)]
        to: String,
    },
    /// Delete a group's committed offsets (it must have no members).
    Delete { namespace: String, group: String },
}

fn path(namespace: &str, rest: &[&str]) -> Result<ApiPath, AdminError> {
    let (tenant, ns) = namespace.split_once('/').ok_or_else(|| {
        AdminError::InvalidArgument(format!("{namespace:?} is not tenant/namespace"))
    })?;
    let mut segments = vec!["kafka", tenant, ns, "groups"];
    segments.extend_from_slice(rest);
    Ok(ApiPath::new(segments))
}

pub async fn run(client: &AdminClient, cmd: KafkaGroupsCmd) -> Result<Output, AdminError> {
    let doc = match cmd {
        KafkaGroupsCmd::List { namespace } => client.get(&path(&namespace, &[])?).await?,
        KafkaGroupsCmd::Describe { namespace, group } => {
            client.get(&path(&namespace, &[&group])?).await?
        }
        KafkaGroupsCmd::Reset {
            namespace,
            group,
            topic,
            to,
        } => {
            let to = match to.as_str() {
                "earliest" | "latest" => Value::from(to),
                n => Value::from(n.parse::<u64>().map_err(|_| {
                    AdminError::InvalidArgument(format!(
                        "--to is earliest, latest or an offset, not {n:?}"
                    ))
                })?),
            };
            let body = json!({"topic": topic, "to": to});
            client
                .post(&path(&namespace, &[&group, "reset"])?, Some(&body))
                .await?
        }
        KafkaGroupsCmd::Delete { namespace, group } => {
            client.delete(&path(&namespace, &[&group])?).await?
        }
    };
    Ok(Output::Document(doc))
}
