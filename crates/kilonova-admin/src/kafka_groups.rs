//! `/admin/v2/kafka/{tenant}/{namespace}/groups`: the Kafka consumer groups
//! of a namespace (those with committed offsets), a group's lag per
//! partition, resetting an empty group's offsets, deleting an empty group.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use kilonova_broker::Broker;
use kilonova_metadata::kafka_groups::CommittedOffset;
use kilonova_metadata::{NamespaceName, TopicName};

use crate::api::{Access, Api};
use crate::error::{json_body, ApiError, ApiResult};

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/kafka/{tenant}/{namespace}/groups",
        get(list),
        &[("GET", Access::TenantAdmin, "List the namespace's Kafka consumer groups (those with committed offsets)")],
    )
    .route(
        "/admin/v2/kafka/{tenant}/{namespace}/groups/{group}",
        get(describe).delete(delete),
        &[
            ("GET", Access::TenantAdmin, "A Kafka group: its state, members, and per partition its committed offset, the log end and the lag"),
            ("DELETE", Access::TenantAdmin, "Delete a Kafka group's committed offsets (409 while it has members)"),
        ],
    )
    .route(
        "/admin/v2/kafka/{tenant}/{namespace}/groups/{group}/reset",
        post(reset),
        &[("POST", Access::TenantAdmin, "Reset a Kafka group's offsets on a topic; body {\"topic\": t, \"to\": \"earliest\"|\"latest\"|offset} (409 while it has members)")],
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PartitionLag {
    topic: String,
    partition: i32,
    committed: i64,
    /// The offset after the last durable record (none: the topic is gone).
    log_end: Option<u64>,
    lag: Option<u64>,
}

#[derive(Serialize)]
struct Described {
    group: String,
    state: &'static str,
    members: usize,
    partitions: Vec<PartitionLag>,
}

fn namespace(tenant: &str, ns: &str) -> ApiResult<NamespaceName> {
    Ok(NamespaceName::new(tenant, ns)?)
}

/// The Kilonova topic serving Kafka topic `topic`'s partition `partition`
/// (none: the topic does not exist).
async fn partition_topic(
    b: &Broker,
    ns: &NamespaceName,
    topic: &str,
    partition: i32,
) -> ApiResult<Option<TopicName>> {
    let name = TopicName::parse(&format!("persistent://{ns}/{topic}"))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Some(record) = b.resources().topic(&name).await? else {
        return Ok(None);
    };
    let p = u32::try_from(partition).ok();
    Ok(match (record.partitions, p) {
        (0, Some(0)) => Some(name),
        (n, Some(p)) if p < n => Some(name.partition_name(p)),
        _ => None,
    })
}

async fn list(
    State(b): State<Broker>,
    Path((tenant, ns)): Path<(String, String)>,
) -> ApiResult<Json<Vec<String>>> {
    let ns = namespace(&tenant, &ns)?;
    let mut groups = b.resources().kafka_groups(&ns).await?;
    groups.sort();
    Ok(Json(groups))
}

async fn describe(
    State(b): State<Broker>,
    Path((tenant, ns, group)): Path<(String, String, String)>,
) -> ApiResult<Json<Described>> {
    let ns = namespace(&tenant, &ns)?;
    let offsets = b.resources().kafka_group_offsets(&ns, &group).await?;
    let live = b.kafka_group_state(&group);
    if offsets.topics.is_empty() && live.members == 0 {
        return Err(ApiError::not_found(format!(
            "Kafka group {group:?} has no committed offsets and no members"
        )));
    }
    let mut partitions = Vec::new();
    for (topic, committed) in &offsets.topics {
        for (partition, c) in committed {
            let log_end = match partition_topic(&b, &ns, topic, *partition).await? {
                Some(t) => Some(b.message_index_bounds(&t).await?.1),
                None => None,
            };
            let lag = log_end.map(|end| end.saturating_sub(u64::try_from(c.offset).unwrap_or(0)));
            partitions.push(PartitionLag {
                topic: topic.clone(),
                partition: *partition,
                committed: c.offset,
                log_end,
                lag,
            });
        }
    }
    Ok(Json(Described {
        group,
        state: live.state,
        members: live.members,
        partitions,
    }))
}

/// A group with members keeps its offsets: they would overwrite a reset.
fn refuse_if_live(b: &Broker, group: &str) -> ApiResult<()> {
    let live = b.kafka_group_state(group);
    match live.members {
        0 => Ok(()),
        n => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Kafka group {group:?} has {n} members ({}): stop them first",
                live.state
            ),
        )),
    }
}

#[derive(Deserialize)]
struct Reset {
    topic: String,
    to: Value,
}

async fn reset(
    State(b): State<Broker>,
    Path((tenant, ns, group)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let ns = namespace(&tenant, &ns)?;
    let r: Reset = json_body(&body)?;
    refuse_if_live(&b, &group)?;
    let name = TopicName::parse(&format!("persistent://{ns}/{}", r.topic))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let record = b
        .resources()
        .topic(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("topic {name}")))?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut commits = Vec::new();
    for p in 0..record.partitions.max(1) {
        let t = match record.partitions {
            0 => name.clone(),
            _ => name.partition_name(p),
        };
        let (start, end) = b.message_index_bounds(&t).await?;
        let offset = match &r.to {
            Value::String(s) if s == "earliest" => start,
            Value::String(s) if s == "latest" => end,
            Value::Number(n) => n
                .as_u64()
                .ok_or_else(|| ApiError::bad_request("an offset is a non-negative integer"))?,
            other => {
                return Err(ApiError::bad_request(format!(
                    "\"to\" is \"earliest\", \"latest\" or an offset, not {other}"
                )))
            }
        };
        commits.push((
            r.topic.clone(),
            p as i32,
            CommittedOffset {
                offset: i64::try_from(offset).unwrap_or(i64::MAX),
                metadata: None,
                committed_ms: now_ms,
            },
        ));
    }
    b.resources()
        .commit_kafka_offsets(&ns, &group, &commits)
        .await?;
    tracing::info!(group, topic = %name, to = %r.to, "Kafka group offsets reset");
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(
    State(b): State<Broker>,
    Path((tenant, ns, group)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let ns = namespace(&tenant, &ns)?;
    refuse_if_live(&b, &group)?;
    match b.resources().delete_kafka_group(&ns, &group).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found(format!("Kafka group {group:?}"))),
    }
}
