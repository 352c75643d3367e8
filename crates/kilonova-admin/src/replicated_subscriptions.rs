//! Pulsar's replicated subscription status:
//! `POST …/{topic}/subscription/{sub}/replicatedSubscriptionStatus` (body:
//! `true` or `false`) marks a subscription replicated or not, and `GET` the
//! same path answers `{topic: bool}`, one entry per partition of a
//! partitioned topic. A replicated subscription keeps its position in step
//! with its namesakes in the namespace's other replication clusters.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Json;

use kilonova_auth::Want;
use kilonova_broker::{AdminReply, AdminRequest, Broker};

use crate::api::{Access, Api};
use crate::error::{json_body, ApiResult};
use crate::topics::{sub_topic, targets, SubPath};

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/subscription/{subscription}/replicatedSubscriptionStatus",
        post(set).get(get),
        &[
            (
                "POST",
                Access::TenantAdmin,
                "Mark a subscription replicated or not (every partition of a partitioned topic); body: true or false",
            ),
            (
                "GET",
                Access::Topic(Want::Consume),
                "Whether a subscription is replicated: {topic: bool}, one entry per partition",
            ),
        ],
    )
}

async fn set(
    State(b): State<Broker>,
    Path(p): Path<SubPath>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let on: bool = json_body(&body)?;
    status(&b, &p, Some(on)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get(
    State(b): State<Broker>,
    Path(p): Path<SubPath>,
) -> ApiResult<Json<BTreeMap<String, bool>>> {
    Ok(Json(status(&b, &p, None).await?))
}

/// Each partition's status (after setting it).
async fn status(b: &Broker, p: &SubPath, set: Option<bool>) -> ApiResult<BTreeMap<String, bool>> {
    let name = sub_topic(p)?;
    let mut out = BTreeMap::new();
    for t in targets(b, &name).await? {
        let request = AdminRequest::ReplicatedSubscription {
            subscription: p.subscription.clone(),
            set,
        };
        match b.topic_admin(&t, request).await? {
            AdminReply::Flag(on) => {
                out.insert(t.to_string(), on);
            }
            _ => return Err(crate::topics::unexpected()),
        }
    }
    if let Some(on) = set {
        tracing::info!(topic = %name, subscription = %p.subscription, replicated = on, "replicated subscription status set");
    }
    Ok(out)
}
