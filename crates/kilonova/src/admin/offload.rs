//! Tiered-storage offload policies, as pulsar-admin sets them.
//!
//! Namespace level: `set-offload-threshold` (`PUT …/offloadThreshold` and
//! `PUT …/offloadThresholdInSeconds`, both at once, as pulsar-admin does),
//! `get-offload-threshold`, the deletion lag (`PUT` / `GET` / `DELETE
//! …/offloadDeletionLagMs`) and the offload policies (`POST` / `GET
//! …/offloadPolicies`, `DELETE …/removeOffloadPolicies`). Topic level: the
//! flags of `set-offload-policies`. Both levels' offload policies are Pulsar's
//! `OffloadPolicies` body; pulsar-admin names their flags differently.

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use kilonova_metadata::NamespaceName;

use super::client::{AdminClient, AdminError, ResourcePath};
use super::policies::{self, Op, Policy};
use super::{units, Output};

/// What a namespace's offload threshold is when nobody set it (Pulsar's -1).
const UNSET: i64 = -1;

#[derive(Subcommand)]
pub enum NamespaceOffloadCmd {
    /// Offload a topic's older sealed segments once it holds this much locally
    /// (and, with --time, once they are this old).
    SetOffloadThreshold(SetOffloadThreshold),
    /// Show the offload thresholds, in bytes and in seconds (-1: the broker's default).
    GetOffloadThreshold(OffloadNs),
    /// Keep the local copy of an offloaded segment this long.
    SetOffloadDeletionLag(SetOffloadDeletionLag),
    /// Show the offload deletion lag.
    GetOffloadDeletionLag(OffloadNs),
    /// Remove the offload deletion lag (the broker's default applies).
    ClearOffloadDeletionLag(OffloadNs),
    /// Set the namespace's offload policies: driver, bucket, thresholds, deletion lag.
    SetOffloadPolicies(SetNamespaceOffloadPolicies),
    /// Show the namespace's offload policies.
    GetOffloadPolicies(OffloadNs),
    /// Remove the namespace's offload policies.
    RemoveOffloadPolicies(OffloadNs),
}

// Just the namespace (no doc comment: clap would show it as every verb's help).
#[derive(Args)]
pub struct OffloadNs {
    /// tenant/namespace
    namespace: NamespaceName,
}

#[derive(Args)]
pub struct SetOffloadThreshold {
    namespace: NamespaceName,
    /// Bytes kept locally: bytes or 10M, 16G, 3T (0: offload every sealed
    /// segment; -1: the broker's default; other negatives: never).
    #[arg(short = 's', long, allow_negative_numbers = true,
          value_parser = units::parse_size_or_negative)]
    size: i64,
    /// Age past which sealed segments are offloaded: seconds or 10m, 5h, 3d,
    /// 2w (-1, the default: the broker's default; other negatives: never).
    #[arg(short = 't', long, default_value = "-1", allow_negative_numbers = true,
          value_parser = units::parse_duration_secs_or_negative)]
    time: i64,
}

#[derive(Args)]
pub struct SetOffloadDeletionLag {
    namespace: NamespaceName,
    /// How long after its offload a segment's local copy is deleted: seconds
    /// or 10m, 5h, 3d, 2w.
    #[arg(short = 'l', long, value_parser = units::parse_duration_ms)]
    lag: i64,
}

/// `namespaces set-offload-policies`'s flags (pulsar-admin's; as for the
/// topic verb, no credential, block-size or read-priority flags).
#[derive(Args)]
pub struct SetNamespaceOffloadPolicies {
    namespace: NamespaceName,
    #[command(flatten)]
    place: OffloadPlace,
    /// Bytes kept locally: bytes or 10M, 16G (0: offload every sealed
    /// segment, negative: never). pulsar-admin's -oat works too.
    #[arg(long = "offloadAfterThreshold", allow_negative_numbers = true,
          value_parser = units::parse_size_or_negative)]
    threshold_bytes: Option<i64>,
    /// Age past which sealed segments are offloaded: seconds or 100m, 3h, 2d
    /// (negative: never). pulsar-admin's -oats works too.
    #[arg(long = "offloadAfterThresholdInSeconds", allow_negative_numbers = true,
          value_parser = units::parse_duration_secs_or_negative)]
    threshold_secs: Option<i64>,
    /// How long a segment's local copy is kept after its offload: seconds or
    /// 10s, 100m, 3h, 2d, 5w. pulsar-admin's -oae works too.
    #[arg(long = "offloadAfterElapsed", value_parser = units::parse_duration_ms)]
    deletion_lag_ms: Option<i64>,
}

/// Where offloaded segments go: the flags both levels share.
#[derive(Args)]
pub struct OffloadPlace {
    /// The offload driver: S3, aws-s3, google-cloud-storage, filesystem,
    /// azureblob or aliyun-oss.
    #[arg(short = 'd', long, required = true)]
    driver: String,
    #[arg(short = 'r', long)]
    region: Option<String>,
    #[arg(short = 'b', long)]
    bucket: Option<String>,
    #[arg(short = 'e', long)]
    endpoint: Option<String>,
}

impl NamespaceOffloadCmd {
    /// The requests the verb makes, in order.
    fn requests(&self) -> Result<Vec<(super::client::ApiPath, Op)>, AdminError> {
        use NamespaceOffloadCmd as C;
        let at = |n: &NamespaceName, policy: Policy, op: Op| (policy.path(n.path(), &op), op);
        Ok(match self {
            C::SetOffloadThreshold(a) => vec![
                at(
                    &a.namespace,
                    Policy::OffloadThreshold,
                    Op::Put(json!(a.size)),
                ),
                at(
                    &a.namespace,
                    Policy::OffloadThresholdInSeconds,
                    Op::Put(json!(a.time)),
                ),
            ],
            C::GetOffloadThreshold(n) => vec![
                at(&n.namespace, Policy::OffloadThreshold, Op::Get),
                at(&n.namespace, Policy::OffloadThresholdInSeconds, Op::Get),
            ],
            C::SetOffloadDeletionLag(a) => vec![at(
                &a.namespace,
                Policy::OffloadDeletionLag,
                Op::Put(json!(a.lag)),
            )],
            C::GetOffloadDeletionLag(n) => {
                vec![at(&n.namespace, Policy::OffloadDeletionLag, Op::Get)]
            }
            C::ClearOffloadDeletionLag(n) => {
                vec![at(&n.namespace, Policy::OffloadDeletionLag, Op::Remove)]
            }
            C::SetOffloadPolicies(a) => vec![at(
                &a.namespace,
                Policy::OffloadPolicies,
                Op::Set(
                    a.place
                        .body(a.threshold_bytes, a.threshold_secs, a.deletion_lag_ms)?,
                ),
            )],
            C::GetOffloadPolicies(n) => vec![at(&n.namespace, Policy::OffloadPolicies, Op::Get)],
            // Pulsar's route for it is not the one it sets and gets.
            C::RemoveOffloadPolicies(n) => {
                vec![(n.namespace.path().join("removeOffloadPolicies"), Op::Remove)]
            }
        })
    }
}

pub async fn run_namespace(
    client: &AdminClient,
    cmd: NamespaceOffloadCmd,
) -> Result<Output, AdminError> {
    let mut answers = Vec::new();
    for (path, op) in cmd.requests()? {
        answers.push(policies::send(client, &path, op).await?);
    }
    Ok(match (cmd, answers.as_slice()) {
        (NamespaceOffloadCmd::GetOffloadThreshold(_), [bytes, secs]) => {
            thresholds_output(bytes, secs)
        }
        (NamespaceOffloadCmd::GetOffloadDeletionLag(_), [lag]) => deletion_lag_output(lag),
        // A set or a remove answers nothing; a GET of the offload policies, the document.
        (_, answers) => Output::Document(answers.last().cloned().unwrap_or(Value::Null)),
    })
}

/// pulsar-admin's two lines; `--output json` gets both values in one object.
fn thresholds_output(bytes: &Value, secs: &Value) -> Output {
    let or_unset = |v: &Value| v.as_i64().unwrap_or(UNSET);
    let (bytes, secs) = (or_unset(bytes), or_unset(secs));
    Output::Rendered {
        human: format!("offloadThresholdInBytes: {bytes}\noffloadThresholdInSeconds: {secs}\n"),
        json: json!({ "offloadThresholdInBytes": bytes, "offloadThresholdInSeconds": secs }),
    }
}

/// pulsar-admin's words (whole minutes); `--output json` gets the milliseconds.
fn deletion_lag_output(lag: &Value) -> Output {
    let human = match lag.as_i64() {
        Some(ms) => format!("{} minute(s)\n", ms / 60_000),
        None => "Unset for namespace. Defaulting to broker setting.\n".to_string(),
    };
    Output::Rendered {
        human,
        json: lag.clone(),
    }
}

/// The drivers whose bucket, region and endpoint Pulsar names `s3…`.
fn is_s3_driver(driver: &str) -> bool {
    driver.eq_ignore_ascii_case("S3") || driver.eq_ignore_ascii_case("aws-s3")
}

/// `topics set-offload-policies`'s flags (pulsar-admin's; its credential,
/// block-size and read-priority flags are not taken: Kilonova reads object
/// store credentials from the broker's configuration only).
#[derive(Args)]
pub struct OffloadPoliciesArgs {
    #[command(flatten)]
    place: OffloadPlace,
    /// Bytes kept locally: bytes or 10M, 16G (0: offload every sealed
    /// segment, negative: never).
    #[arg(short = 't', long = "offloadThresholdInBytes", allow_negative_numbers = true,
          value_parser = units::parse_size_or_negative)]
    threshold_bytes: Option<i64>,
    /// Age past which sealed segments are offloaded: seconds or 10m, 5h
    /// (negative: never). pulsar-admin's -ts works too.
    #[arg(long = "offloadThresholdInSeconds", allow_negative_numbers = true,
          value_parser = units::parse_duration_secs_or_negative)]
    threshold_secs: Option<i64>,
    /// Milliseconds a segment's local copy is kept after its offload.
    /// pulsar-admin's -dl works too.
    #[arg(long = "offloadDeletionLagInMillis", value_parser = clap::value_parser!(i64).range(0..))]
    deletion_lag_ms: Option<i64>,
}

impl OffloadPoliciesArgs {
    pub fn body(&self) -> Result<Value, AdminError> {
        self.place.body(
            self.threshold_bytes,
            self.threshold_secs,
            self.deletion_lag_ms,
        )
    }
}

impl OffloadPlace {
    /// Pulsar's `OffloadPolicies` body, with pulsar-admin's check that an S3
    /// driver is given a region or an endpoint.
    fn body(
        &self,
        threshold_bytes: Option<i64>,
        threshold_secs: Option<i64>,
        deletion_lag_ms: Option<i64>,
    ) -> Result<Value, AdminError> {
        let s3 = is_s3_driver(&self.driver);
        if s3 && self.region.is_none() && self.endpoint.is_none() {
            return Err(AdminError::InvalidArgument(
                "Either s3ManagedLedgerOffloadRegion or s3ManagedLedgerOffloadServiceEndpoint must be set if s3 offload enabled".into(),
            ));
        }
        let prefix = if s3 {
            "s3ManagedLedgerOffload"
        } else {
            "managedLedgerOffload"
        };
        let mut body = Map::new();
        body.insert("managedLedgerOffloadDriver".into(), json!(self.driver));
        for (name, value) in [
            ("Region", &self.region),
            ("Bucket", &self.bucket),
            ("ServiceEndpoint", &self.endpoint),
        ] {
            if let Some(v) = value {
                body.insert(format!("{prefix}{name}"), json!(v));
            }
        }
        for (name, value) in [
            ("managedLedgerOffloadThresholdInBytes", threshold_bytes),
            ("managedLedgerOffloadThresholdInSeconds", threshold_secs),
            ("managedLedgerOffloadDeletionLagInMillis", deletion_lag_ms),
        ] {
            if let Some(v) = value {
                body.insert(name.into(), json!(v));
            }
        }
        Ok(Value::Object(body))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Group;
    use super::*;

    fn offload_cmd(args: &[&str]) -> NamespaceOffloadCmd {
        let mut argv = vec!["namespaces"];
        argv.extend_from_slice(args);
        match parse(&argv) {
            Ok(a) => match a.group {
                Group::Namespaces {
                    verb: super::super::namespaces::NamespacesCmd::Offload(c),
                } => c,
                _ => panic!("{args:?} is not an offload verb"),
            },
            Err(e) => panic!("{argv:?} should parse: {e}"),
        }
    }

    fn requests(args: &[&str]) -> Vec<(&'static str, String, Option<Value>)> {
        offload_cmd(args)
            .requests()
            .unwrap()
            .into_iter()
            .map(|(path, op)| {
                let (method, body) = op.method_and_body();
                (method, path.to_string(), body)
            })
            .collect()
    }

    const NS: &str = "/admin/v2/namespaces/t/ns";

    #[test]
    fn set_offload_threshold_puts_both_thresholds_as_pulsar_admin_does() {
        for flag in ["-s", "--size"] {
            assert_eq!(
                requests(&["set-offload-threshold", "t/ns", flag, "10M"]),
                [
                    (
                        "PUT",
                        format!("{NS}/offloadThreshold"),
                        Some(json!(10 << 20))
                    ),
                    (
                        "PUT",
                        format!("{NS}/offloadThresholdInSeconds"),
                        Some(json!(-1))
                    ),
                ]
            );
        }
        let both = requests(&["set-offload-threshold", "t/ns", "-s", "0", "-t", "1h"]);
        assert_eq!(both[0].2, Some(json!(0)), "0: offload every sealed segment");
        assert_eq!(both[1].2, Some(json!(3600)));
        assert_eq!(
            requests(&["set-offload-threshold", "t/ns", "-s", "-1"])[0].2,
            Some(json!(-1)),
            "-1: the broker's default"
        );
        assert_eq!(
            requests(&["get-offload-threshold", "t/ns"]),
            [
                ("GET", format!("{NS}/offloadThreshold"), None),
                ("GET", format!("{NS}/offloadThresholdInSeconds"), None),
            ]
        );
        let mut argv = vec!["namespaces", "set-offload-threshold", "t/ns"];
        assert!(parse(&argv).is_err(), "--size is required");
        argv.extend(["-s", "10X"]);
        assert!(parse(&argv).is_err(), "an unknown unit");
    }

    #[test]
    fn offload_deletion_lag_is_set_in_seconds_or_with_a_unit_and_sent_in_ms() {
        for flag in ["-l", "--lag"] {
            assert_eq!(
                requests(&["set-offload-deletion-lag", "t/ns", flag, "1h"]),
                [(
                    "PUT",
                    format!("{NS}/offloadDeletionLagMs"),
                    Some(json!(3_600_000))
                )]
            );
        }
        assert_eq!(
            requests(&["set-offload-deletion-lag", "t/ns", "-l", "30"])[0].2,
            Some(json!(30_000))
        );
        assert_eq!(
            requests(&["get-offload-deletion-lag", "t/ns"]),
            [("GET", format!("{NS}/offloadDeletionLagMs"), None)]
        );
        assert_eq!(
            requests(&["clear-offload-deletion-lag", "t/ns"]),
            [("DELETE", format!("{NS}/offloadDeletionLagMs"), None)]
        );
        assert!(parse(&["namespaces", "set-offload-deletion-lag", "t/ns", "-l", "-1"]).is_err());
    }

    #[test]
    fn namespace_offload_policies_take_pulsar_admins_namespace_flags() {
        assert_eq!(
            requests(&[
                "set-offload-policies",
                "t/ns",
                "-d",
                "aws-s3",
                "-b",
                "cold",
                "-e",
                "http://127.0.0.1:8333",
                "-oat",
                "10M",
                "-oats",
                "1h",
                "-oae",
                "10s",
            ]),
            [(
                "POST",
                format!("{NS}/offloadPolicies"),
                Some(json!({
                    "managedLedgerOffloadDriver": "aws-s3",
                    "s3ManagedLedgerOffloadBucket": "cold",
                    "s3ManagedLedgerOffloadServiceEndpoint": "http://127.0.0.1:8333",
                    "managedLedgerOffloadThresholdInBytes": 10 << 20,
                    "managedLedgerOffloadThresholdInSeconds": 3600,
                    "managedLedgerOffloadDeletionLagInMillis": 10_000,
                }))
            )]
        );
        assert_eq!(
            requests(&["get-offload-policies", "t/ns"]),
            [("GET", format!("{NS}/offloadPolicies"), None)]
        );
        assert_eq!(
            requests(&["remove-offload-policies", "t/ns"]),
            [("DELETE", format!("{NS}/removeOffloadPolicies"), None)],
            "Pulsar's route"
        );
        assert!(parse(&["namespaces", "set-offload-policies", "t/ns", "-b", "x"]).is_err());
        assert!(matches!(
            offload_cmd(&["set-offload-policies", "t/ns", "-d", "S3", "-b", "x"]).requests(),
            Err(AdminError::InvalidArgument(_))
        ));
    }

    #[test]
    fn the_outputs_are_pulsar_admins() {
        let Output::Rendered { human, json } = thresholds_output(&json!(1024), &Value::Null) else {
            panic!("rendered")
        };
        assert_eq!(
            human,
            "offloadThresholdInBytes: 1024\noffloadThresholdInSeconds: -1\n"
        );
        assert_eq!(
            json,
            json!({"offloadThresholdInBytes": 1024, "offloadThresholdInSeconds": -1})
        );
        let Output::Rendered { human, .. } = deletion_lag_output(&json!(7_200_000)) else {
            panic!("rendered")
        };
        assert_eq!(human, "120 minute(s)\n");
        let Output::Rendered { human, .. } = deletion_lag_output(&Value::Null) else {
            panic!("rendered")
        };
        assert_eq!(
            human,
            "Unset for namespace. Defaulting to broker setting.\n"
        );
    }
}
