//! `kilonova admin …`: pulsar-admin's verbs over the admin REST API.
//!
//! `kilonova admin [--admin-url URL] [--auth-token T] [--output human|json]
//! GROUP VERB …`. Each group (clusters, tenants, namespaces, topics,
//! topicPolicies, brokers) is a module turning its verbs into requests; [`client`] sends them. A verb
//! returns an [`Output`], printed once it has fully succeeded, so a failure
//! leaves stdout empty and says `error: <reason>` on stderr (exit code 1).

use std::ffi::OsString;
use std::io::{self, Write};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Url;
use serde_json::Value;

mod brokers;
mod client;
mod clusters;
mod kafka_groups;
mod namespaces;
mod offload;
mod permissions;
mod policies;
mod schemas;
mod tenants;
mod topic_policies;
mod topics;
mod units;

use client::{AdminClient, AdminError, AuthToken};

#[derive(Args)]
pub struct AdminArgs {
    /// The broker's admin (HTTP) URL.
    #[arg(
        long,
        env = "KILONOVA_ADMIN_URL",
        default_value = "http://127.0.0.1:8080",
        value_parser = client::parse_admin_url
    )]
    admin_url: Url,
    /// Sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "KILONOVA_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<AuthToken>,
    /// CA certificates (PEM) an `https://` admin URL's certificate must chain to.
    #[arg(long, env = "KILONOVA_TLS_TRUST_CERT_PATH")]
    tls_trust_cert_path: Option<std::path::PathBuf>,
    /// `human`: lists one item per line, objects as indented JSON, scalars as
    /// themselves. `json`: exactly one JSON document (`null` when the server
    /// sent nothing).
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// Give up on a request after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout: u64,
    #[command(subcommand)]
    group: Group,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Group {
    /// Clusters: list, get, create, update, delete.
    Clusters {
        #[command(subcommand)]
        verb: clusters::ClustersCmd,
    },
    /// Tenants: list, get, create, update, delete.
    Tenants {
        #[command(subcommand)]
        verb: tenants::TenantsCmd,
    },
    /// Namespaces and their policies.
    Namespaces {
        #[command(subcommand)]
        verb: namespaces::NamespacesCmd,
    },
    /// Topics, partitioned topics and subscriptions.
    Topics {
        #[command(subcommand)]
        verb: topics::TopicsCmd,
    },
    /// Topic-level policies: the `topics set-…/get-…/remove-…` verbs.
    #[command(name = "topicPolicies", visible_alias = "topic-policies")]
    TopicPolicies {
        #[command(subcommand)]
        verb: topic_policies::TopicPolicyCmd,
    },
    /// Brokers of a cluster, and this broker's health.
    Brokers {
        #[command(subcommand)]
        verb: brokers::BrokersCmd,
    },
    /// Kafka consumer groups: list, describe (lag), reset, delete.
    #[command(name = "kafka-groups")]
    KafkaGroups {
        #[command(subcommand)]
        verb: kafka_groups::KafkaGroupsCmd,
    },
    /// Topics' schemas: get, upload, delete, compatibility.
    Schemas {
        #[command(subcommand)]
        verb: schemas::SchemasCmd,
    },
}

/// What a verb prints.
pub enum Output {
    /// A document, printed per `--output`.
    Document(Value),
    /// Text laid out for people, with the document `--output json` prints.
    Rendered { human: String, json: Value },
}

/// pulsar-admin's single-dash long flags, which clap cannot parse, and the
/// long flags they stand for here.
const SINGLE_DASH_FLAGS: &[(&str, &str)] = &[
    ("-ttl", "--messageTTL"),
    ("-md", "--msg-dispatch-rate"),
    ("-bd", "--byte-dispatch-rate"),
    ("-dt", "--dispatch-rate-period"),
    ("-rp", "--relative-to-publish-rate"),
    ("-lt", "--limitTime"),
    ("-td", "--topic-domain"),
    ("-sr", "--subscribe-rate"),
    ("-st", "--subscribe-rate-period"),
    ("-ts", "--offloadThresholdInSeconds"),
    ("-dl", "--offloadDeletionLagInMillis"),
    ("-oat", "--offloadAfterThreshold"),
    ("-oats", "--offloadAfterThresholdInSeconds"),
    ("-oae", "--offloadAfterElapsed"),
];

/// Rewrites pulsar-admin's single-dash long flags (`-ttl 120`, `-ttl=120`)
/// in an `admin` command line into their `--long` forms, up to a `--`.
pub fn pulsar_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    crate::client::args::pulsar_style_args(args.into_iter().collect(), "admin", SINGLE_DASH_FLAGS)
}

/// Runs one admin command. A failure does not return: it prints
/// `error: <reason>` on stderr and exits with code 1.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let output_format = args.output;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminError::Local(format!("cannot start the I/O runtime: {e}")))
        .and_then(|runtime| runtime.block_on(execute(args)));
    let printed = result.and_then(|output| {
        print(&output, output_format)
            .map_err(|e| AdminError::Local(format!("cannot write the output: {e}")))
    });
    match printed {
        Ok(()) => Ok(()),
        Err(e) => {
            // Nothing useful is left to do if stderr is gone too.
            let _ = writeln!(io::stderr(), "error: {e}");
            std::process::exit(1)
        }
    }
}

async fn execute(args: AdminArgs) -> Result<Output, AdminError> {
    let client = AdminClient::new(
        args.admin_url,
        args.auth_token.as_ref(),
        args.tls_trust_cert_path.as_deref(),
        Duration::from_secs(args.request_timeout),
    )?;
    match args.group {
        Group::Clusters { verb } => clusters::run(&client, verb).await,
        Group::Tenants { verb } => tenants::run(&client, verb).await,
        Group::Namespaces { verb } => namespaces::run(&client, verb).await,
        Group::Topics { verb } => topics::run(&client, verb).await,
        Group::TopicPolicies { verb } => topic_policies::run(&client, verb).await,
        Group::Brokers { verb } => brokers::run(&client, verb).await,
        Group::Schemas { verb } => schemas::run(&client, verb).await,
        Group::KafkaGroups { verb } => kafka_groups::run(&client, verb).await,
    }
}

fn print(output: &Output, format: OutputFormat) -> io::Result<()> {
    let text = render(output, format);
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // `kilonova admin … | head`: the reader has what it wanted.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn render(output: &Output, format: OutputFormat) -> String {
    match (output, format) {
        (Output::Document(doc), OutputFormat::Json)
        | (Output::Rendered { json: doc, .. }, OutputFormat::Json) => {
            format!("{}\n", pretty(doc))
        }
        (Output::Rendered { human, .. }, OutputFormat::Human) => human.clone(),
        (Output::Document(doc), OutputFormat::Human) => human(doc),
    }
}

/// A list one item per line, an object as indented JSON, a scalar as itself,
/// nothing as nothing.
fn human(doc: &Value) -> String {
    match doc {
        Value::Null => String::new(),
        Value::Array(items) => items
            .iter()
            .map(|item| format!("{}\n", scalar(item)))
            .collect(),
        Value::Object(_) => format!("{}\n", pretty(doc)),
        other => format!("{}\n", scalar(other)),
    }
}

/// A string without its quotes; anything else as compact JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pretty(doc: &Value) -> String {
    // Serialising a `Value` cannot fail (its map keys are strings).
    serde_json::to_string_pretty(doc).unwrap_or_else(|_| doc.to_string())
}

#[cfg(test)]
mod verbs_documented;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    /// The `kilonova` command line, as far as `admin` goes.
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Admin(AdminArgs),
    }

    /// Parses `kilonova admin <args>` through the same argv rewrite as main.
    pub(super) fn parse(args: &[&str]) -> Result<AdminArgs, clap::Error> {
        let argv = ["kilonova", "admin"].iter().chain(args).map(OsString::from);
        Cli::try_parse_from(pulsar_style_args(argv)).map(|cli| match cli.command {
            Top::Admin(a) => a,
        })
    }

    #[test]
    fn every_verb_is_well_formed() {
        // clap checks a command's flags (clashing names, groups) only when
        // it is parsed; this checks every verb's.
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_come_before_the_group() {
        let a = parse(&[
            "--admin-url",
            "http://10.0.0.1:9090",
            "--auth-token",
            "tok",
            "--output",
            "json",
            "tenants",
            "list",
        ])
        .unwrap();
        assert_eq!(a.admin_url.as_str(), "http://10.0.0.1:9090/");
        assert!(a.auth_token.is_some());
        assert_eq!(a.output, OutputFormat::Json);
        assert!(matches!(
            a.group,
            Group::Tenants {
                verb: tenants::TenantsCmd::List
            }
        ));
    }

    #[test]
    fn defaults_are_localhost_8080_and_human_output() {
        // The test must not depend on the environment it runs in.
        if std::env::var_os("KILONOVA_ADMIN_URL").is_some() {
            return;
        }
        let a = parse(&["clusters", "list"]).unwrap();
        assert_eq!(a.admin_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(a.output, OutputFormat::Human);
    }

    #[test]
    fn single_dash_long_flags_are_rewritten_only_for_admin() {
        let argv = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            pulsar_style_args(argv(&[
                "k",
                "admin",
                "namespaces",
                "set-message-ttl",
                "a/b",
                "-ttl",
                "5"
            ])),
            argv(&[
                "k",
                "admin",
                "namespaces",
                "set-message-ttl",
                "a/b",
                "--messageTTL",
                "5"
            ])
        );
        assert_eq!(
            pulsar_style_args(argv(&[
                "k",
                "admin",
                "n",
                "set-message-ttl",
                "a/b",
                "-ttl=-5"
            ])),
            argv(&[
                "k",
                "admin",
                "n",
                "set-message-ttl",
                "a/b",
                "--messageTTL=-5"
            ])
        );
        assert_eq!(
            pulsar_style_args(argv(&[
                "k",
                "admin",
                "n",
                "set-dispatch-rate",
                "a/b",
                "-md",
                "1",
                "-dt",
                "2"
            ])),
            argv(&[
                "k",
                "admin",
                "n",
                "set-dispatch-rate",
                "a/b",
                "--msg-dispatch-rate",
                "1",
                "--dispatch-rate-period",
                "2"
            ])
        );
        assert_eq!(
            pulsar_style_args(argv(&["k", "admin", "x", "--", "-ttl"])),
            argv(&["k", "admin", "x", "--", "-ttl"])
        );
        assert_eq!(
            pulsar_style_args(argv(&["k", "perf", "-ttl"])),
            argv(&["k", "perf", "-ttl"])
        );
        assert_eq!(pulsar_style_args(argv(&["k"])), argv(&["k"]));
    }

    #[test]
    fn human_output_lists_one_item_per_line_and_objects_indented() {
        assert_eq!(human(&json!(["a", "b", 3])), "a\nb\n3\n");
        assert_eq!(human(&json!([])), "");
        assert_eq!(human(&json!(3600)), "3600\n");
        assert_eq!(human(&json!("ok")), "ok\n");
        assert_eq!(human(&json!(true)), "true\n");
        assert_eq!(human(&Value::Null), "");
        let obj = human(&json!({"a": 1, "b": [1]}));
        assert!(obj.lines().count() > 1, "{obj}");
        assert_eq!(
            serde_json::from_str::<Value>(&obj).unwrap(),
            json!({"a": 1, "b": [1]})
        );
    }

    #[test]
    fn json_output_is_one_document_even_when_empty() {
        let one =
            |o: &Output| serde_json::from_str::<Value>(&render(o, OutputFormat::Json)).unwrap();
        assert_eq!(one(&Output::Document(Value::Null)), Value::Null);
        assert_eq!(one(&Output::Document(json!(["x"]))), json!(["x"]));
        let rendered = Output::Rendered {
            human: "Message ID: 1:2\n".into(),
            json: json!([{"messageId": "1:2"}]),
        };
        assert_eq!(one(&rendered), json!([{"messageId": "1:2"}]));
        assert_eq!(render(&rendered, OutputFormat::Human), "Message ID: 1:2\n");
    }
}
