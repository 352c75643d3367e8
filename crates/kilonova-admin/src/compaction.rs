//! Topic compaction: `PUT …/{topic}/compaction` starts one (409 while one
//! runs), `GET …/{topic}/compaction` answers its status as Pulsar's
//! `LongRunningProcessStatus`: `{"status": "NOT_RUN|RUNNING|SUCCESS|ERROR",
//! "lastError": "…"}`. The compaction threshold is a policy (`policies.rs`).
//!
//! On a partitioned topic, `PUT` starts compacting every partition, as
//! Pulsar's admin does (it tries them all; the first refusal is the answer).
//! Pulsar answers `GET` on a partitioned topic with 404; Kilonova answers an
//! aggregate ([`aggregate`]) with each partition's status under
//! `"partitions"`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use serde::Serialize;

use kilonova_auth::Want;
use kilonova_broker::{AdminReply, AdminRequest, Broker, CompactionStatus};
use kilonova_metadata::TopicName;

use crate::api::{Access, Api};
use crate::error::ApiResult;
use crate::topics::{targets, topic_name, TopicPath};

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/compaction",
        get(status).put(compact),
        &[
            ("PUT", Access::TenantAdmin, "Start compacting the topic, or every partition of a partitioned one (409 while a compaction runs)"),
            ("GET", Access::Topic(Want::Lookup), "The compaction's status: {\"status\": \"NOT_RUN|RUNNING|SUCCESS|ERROR\", \"lastError\": \"…\"}; a partitioned topic's aggregates its partitions' (each under \"partitions\")"),
        ],
    )
}

async fn compact(State(b): State<Broker>, Path(p): Path<TopicPath>) -> ApiResult<StatusCode> {
    let name = topic_name(&p)?;
    let mut first_error = None;
    for t in partitions_or_itself(&b, &name).await? {
        if let Err(e) = b.topic_admin(&t, AdminRequest::Compact).await {
            tracing::info!(topic = %t, error = %e, "compaction not started");
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    tracing::info!(topic = %name, "compaction requested");
    Ok(StatusCode::NO_CONTENT)
}

/// A status answer: a topic's, or a partitioned topic's aggregate with its
/// partitions'.
#[derive(Serialize)]
struct StatusBody {
    #[serde(flatten)]
    status: CompactionStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<BTreeMap<String, CompactionStatus>>,
}

async fn status(State(b): State<Broker>, Path(p): Path<TopicPath>) -> ApiResult<Json<StatusBody>> {
    let name = topic_name(&p)?;
    let targets = partitions_or_itself(&b, &name).await?;
    if targets.len() == 1 && targets.first() == Some(&name) {
        return Ok(Json(StatusBody {
            status: status_of(&b, &name).await?,
            partitions: None,
        }));
    }
    let mut partitions = BTreeMap::new();
    for t in targets {
        // A partition not loaded ran no compaction since it was (the status
        // is kept in memory, as Pulsar's): asking does not load it.
        let s = if b.is_loaded(&t) {
            status_of(&b, &t).await?
        } else {
            CompactionStatus {
                status: "NOT_RUN",
                last_error: String::new(),
            }
        };
        partitions.insert(t.to_string(), s);
    }
    Ok(Json(StatusBody {
        status: aggregate(&partitions),
        partitions: Some(partitions),
    }))
}

/// A partitioned topic's partitions, else the topic itself (a partition is
/// one, even before its first use).
async fn partitions_or_itself(b: &Broker, name: &TopicName) -> ApiResult<Vec<TopicName>> {
    if name.partition().is_some() {
        return Ok(vec![name.clone()]);
    }
    targets(b, name).await
}

async fn status_of(b: &Broker, name: &TopicName) -> ApiResult<CompactionStatus> {
    match b.topic_admin(name, AdminRequest::CompactionStatus).await? {
        AdminReply::Compaction(s) => Ok(s),
        _ => Err(crate::topics::unexpected()),
    }
}

/// A partitioned topic's status from its partitions': `RUNNING` while any
/// runs, else `ERROR` if any failed (the first failure's partition and
/// error), else `SUCCESS` if all succeeded, else `NOT_RUN` (some partitions
/// were never compacted).
fn aggregate(partitions: &BTreeMap<String, CompactionStatus>) -> CompactionStatus {
    let any = |s: &str| partitions.values().any(|p| p.status == s);
    let (status, last_error) = if any("RUNNING") {
        ("RUNNING", String::new())
    } else if let Some((name, p)) = partitions.iter().find(|(_, p)| p.status == "ERROR") {
        ("ERROR", format!("{name}: {}", p.last_error))
    } else if partitions.values().all(|p| p.status == "SUCCESS") {
        ("SUCCESS", String::new())
    } else {
        ("NOT_RUN", String::new())
    };
    CompactionStatus { status, last_error }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(statuses: &[(&'static str, &str)]) -> CompactionStatus {
        let partitions = statuses
            .iter()
            .enumerate()
            .map(|(i, (s, e))| {
                (
                    format!("t-partition-{i}"),
                    CompactionStatus {
                        status: s,
                        last_error: (*e).to_owned(),
                    },
                )
            })
            .collect();
        aggregate(&partitions)
    }

    #[test]
    fn a_partitioned_topic_is_running_while_any_partition_runs() {
        assert_eq!(
            of(&[("SUCCESS", ""), ("RUNNING", ""), ("ERROR", "x")]).status,
            "RUNNING"
        );
    }

    #[test]
    fn a_partitioned_topic_failed_if_any_partition_failed_and_says_which() {
        let s = of(&[("SUCCESS", ""), ("ERROR", "too many keys")]);
        assert_eq!(
            (s.status, s.last_error.as_str()),
            ("ERROR", "t-partition-1: too many keys")
        );
    }

    #[test]
    fn a_partitioned_topic_succeeded_only_when_every_partition_did() {
        assert_eq!(of(&[("SUCCESS", ""), ("SUCCESS", "")]).status, "SUCCESS");
        assert_eq!(of(&[("SUCCESS", ""), ("NOT_RUN", "")]).status, "NOT_RUN");
        assert_eq!(of(&[("NOT_RUN", "")]).status, "NOT_RUN");
    }
}
