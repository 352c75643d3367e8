//! Tiered storage's topic verbs, as Pulsar's admin API has them:
//! `PUT …/{topic}/offload` (body: a MessageId) offloads every sealed
//! segment before the one holding that message to the object store, and
//! `GET …/{topic}/offload` answers how the last offload went
//! (`{status, lastError, firstUnoffloadedMessage}`). A partitioned topic's
//! base name is refused (405): ask each partition, as pulsar-admin does.
//! `POST …/{topic}/restore` (Kilonova's own; Pulsar has no such verb)
//! re-creates a topic lost with the broker's data directory from its
//! manifest and objects in the object store.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::Json;

use kilonova_auth::Want;
use kilonova_broker::{AdminReply, AdminRequest, Broker, OffloadStatus, ResetTo, RestoreReport};

use crate::api::{Access, Api};
use crate::error::{json_body, ApiResult};
use crate::topics::{refuse_partitioned, topic_name, MessageIdBody, TopicPath};

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/restore",
        post(restore),
        &[(
            "POST",
            Access::TenantAdmin,
            "Re-create a topic that does not exist (or a partitioned topic and its partitions) from its manifest and offloaded segments in the object store: {topic, partitions, restored: [{topic, segments, entries, bytes, exportedAtMs, firstMessageId}]}",
        )],
    )
    .route(
        "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/offload",
        put(offload).get(status),
        &[
            (
                "PUT",
                Access::TenantAdmin,
                "Offload every sealed segment before the one holding the given message {ledgerId, entryId} to the object store",
            ),
            (
                "GET",
                Access::Topic(Want::Lookup),
                "How the last offload went: {status: NOT_RUN|RUNNING|SUCCESS|ERROR, lastError, firstUnoffloadedMessage}",
            ),
        ],
    )
}

async fn offload(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let name = topic_name(&p)?;
    refuse_partitioned(&b, &name, "offload each partition").await?;
    let before = match json_body::<MessageIdBody>(&body)?.target() {
        ResetTo::Position(p) => p,
        ResetTo::Latest => kilonova_broker::Position::new(u64::MAX, 0),
        ResetTo::Earliest | ResetTo::PublishTime(_) => kilonova_broker::Position::new(0, 0),
    };
    b.topic_admin(&name, AdminRequest::Offload { before })
        .await?;
    tracing::info!(topic = %name, before = %before, "offload triggered");
    Ok(StatusCode::NO_CONTENT)
}

async fn status(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
) -> ApiResult<Json<OffloadStatus>> {
    let name = topic_name(&p)?;
    refuse_partitioned(&b, &name, "offload each partition").await?;
    match b.topic_admin(&name, AdminRequest::OffloadStatus).await? {
        AdminReply::Offload(s) => Ok(Json(s)),
        _ => Err(crate::topics::unexpected()),
    }
}

async fn restore(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
) -> ApiResult<Json<RestoreReport>> {
    let name = topic_name(&p)?;
    let report = b.restore_topic(&name).await?;
    tracing::info!(topic = %name, restored = report.restored.len(), "topic restored from the object store");
    Ok(Json(report))
}
