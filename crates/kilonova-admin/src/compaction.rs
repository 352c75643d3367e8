//! Topic compaction: `PUT …/{topic}/compaction` starts one (409 while one
//! runs), `GET …/{topic}/compaction` answers its status as Pulsar's
//! `LongRunningProcessStatus`: `{"status": "NOT_RUN|RUNNING|SUCCESS|ERROR",
//! "lastError": "…"}`. The compaction threshold is a policy (`policies.rs`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;

use kilonova_auth::Want;
use kilonova_broker::{AdminReply, AdminRequest, Broker, CompactionStatus};

use crate::api::{Access, Api};
use crate::error::{ApiError, ApiResult};
use crate::topics::{topic_name, TopicPath};

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/compaction",
        get(status).put(compact),
        &[
            ("PUT", Access::TenantAdmin, "Start compacting the topic (409 while a compaction runs)"),
            ("GET", Access::Topic(Want::Lookup), "The compaction's status: {\"status\": \"NOT_RUN|RUNNING|SUCCESS|ERROR\", \"lastError\": \"…\"}"),
        ],
    )
}

async fn compact(State(b): State<Broker>, Path(p): Path<TopicPath>) -> ApiResult<StatusCode> {
    let name = topic_name(&p)?;
    b.topic_admin(&name, AdminRequest::Compact).await?;
    tracing::info!(topic = %name, "compaction requested");
    Ok(StatusCode::NO_CONTENT)
}

async fn status(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
) -> ApiResult<Json<CompactionStatus>> {
    let name = topic_name(&p)?;
    match b.topic_admin(&name, AdminRequest::CompactionStatus).await? {
        AdminReply::Compaction(s) => Ok(Json(s)),
        _ => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the topic answered another request",
        )),
    }
}
