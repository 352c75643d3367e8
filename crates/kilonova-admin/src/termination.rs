//! Topic termination, as Pulsar's admin API has it: `POST …/{topic}/terminate`
//! terminates a non-partitioned topic (or one partition) and answers the last
//! message's id `{ledgerId, entryId, partitionIndex}`; a partitioned topic is
//! refused there (405) and terminated partition by partition with
//! `POST …/{topic}/terminate/partitions`, which answers `{"<index>": id, …}`.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Json;

use kilonova_broker::{topic_admin::LastMessageId, AdminReply, AdminRequest, Broker};

use crate::api::{Access, Api};
use crate::error::{ApiError, ApiResult};
use crate::topics::{topic_name, TopicPath};

pub fn routes(api: Api) -> Api {
    const T: &str = "/admin/v2/{domain}/{tenant}/{namespace}/{topic}";
    api.route(
        &format!("{T}/terminate"),
        post(terminate),
        &[("POST", Access::TenantAdmin, "Terminate the topic: it takes no more messages, for good; answers the last message's id (405 for a partitioned topic)")],
    )
    .route(
        &format!("{T}/terminate/partitions"),
        post(terminate_partitions),
        &[("POST", Access::TenantAdmin, "Terminate every partition of a partitioned topic; answers {\"<partition>\": last message id}")],
    )
}

async fn terminate_one(b: &Broker, name: &kilonova_broker::TopicName) -> ApiResult<LastMessageId> {
    match b.topic_admin(name, AdminRequest::Terminate).await? {
        AdminReply::LastMessageId(id) => Ok(id),
        _ => Err(crate::topics::unexpected()),
    }
}

/// The partition count of `name`, 404 if it does not exist.
async fn partitions(b: &Broker, name: &kilonova_broker::TopicName) -> ApiResult<u32> {
    match b.resources().topic(name).await? {
        Some(t) => Ok(t.partitions),
        None if name.partition().is_some() => Ok(0),
        None => Err(ApiError::not_found(format!("topic {name} not found"))),
    }
}

async fn terminate(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
) -> ApiResult<Json<LastMessageId>> {
    let name = topic_name(&p)?;
    if partitions(&b, &name).await? > 0 {
        // Pulsar's answer and words.
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Termination of a partitioned topic is not allowed",
        ));
    }
    let id = terminate_one(&b, &name).await?;
    tracing::info!(topic = %name, ledger = id.ledger_id, entry = id.entry_id, "topic terminated");
    Ok(Json(id))
}

async fn terminate_partitions(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
) -> ApiResult<Json<BTreeMap<u32, LastMessageId>>> {
    let name = topic_name(&p)?;
    let n = partitions(&b, &name).await?;
    if n == 0 {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{name} is not a partitioned topic"),
        ));
    }
    let mut ids = BTreeMap::new();
    for i in 0..n {
        ids.insert(i, terminate_one(&b, &name.partition_name(i)).await?);
    }
    tracing::info!(topic = %name, partitions = n, "partitioned topic terminated");
    Ok(Json(ids))
}
