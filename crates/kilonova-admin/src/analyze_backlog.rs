//! Pulsar's analyze-backlog: `POST …/{topic}/subscription/{sub}/analyzeBacklog`
//! (body: optional `{ledgerId, entryId}` to start from) reads the
//! subscription's backlog and answers `AnalyzeSubscriptionBacklogResult`:
//! `{entries, messages, filterAcceptedEntries, …, aborted, firstMessageId,
//! lastMessageId}`. As in Pulsar, a partitioned topic is refused (405): ask
//! its partitions.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::Json;

use kilonova_auth::Want;
use kilonova_broker::{BacklogAnalysis, Broker, ResetTo};

use crate::api::{Access, Api};
use crate::error::{json_body, ApiResult};
use crate::topics::{refuse_partitioned, sub_topic, MessageIdBody, SubPath};

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/subscription/{subscription}/analyzeBacklog",
        post(analyze),
        &[(
            "POST",
            Access::Topic(Want::Consume),
            "Count the subscription's backlog by reading it (entries, messages; aborted at the broker's scan limits); body: optional {ledgerId, entryId} to start from",
        )],
    )
}

async fn analyze(
    State(b): State<Broker>,
    Path(p): Path<SubPath>,
    body: Bytes,
) -> ApiResult<Json<BacklogAnalysis>> {
    let name = sub_topic(&p)?;
    refuse_partitioned(&b, &name, "analyze the backlog of each partition").await?;
    let start = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match json_body::<MessageIdBody>(&body)?.target() {
            ResetTo::Position(p) => Some(p),
            // Pulsar's MessageId.earliest: from the first unacknowledged entry.
            ResetTo::Earliest | ResetTo::PublishTime(_) => None,
            ResetTo::Latest => Some(kilonova_broker::Position::new(u64::MAX, u64::MAX)),
        }
    };
    let analysis = b.analyze_backlog(&name, &p.subscription, start).await?;
    tracing::debug!(topic = %name, subscription = %p.subscription, ?analysis, "backlog analyzed");
    Ok(Json(analysis))
}
