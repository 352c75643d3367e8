//! Reading one message of a topic by where it is, without a subscription:
//! `examinemessage` (the N-th from the first or the last) and
//! `ledger/{ledgerId}/entry/{entryId}` (by id). The answer is Pulsar's: the
//! payload as the body, metadata as `X-Pulsar-*` headers.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use kilonova_auth::Want;
use kilonova_broker::{AdminReply, AdminRequest, Broker, Position};

use crate::api::{Access, Api};
use crate::error::{ApiError, ApiResult};
use crate::topics::{message_response, number, topic_name, unexpected, TopicPath};

pub fn routes(api: Api) -> Api {
    const T: &str = "/admin/v2/{domain}/{tenant}/{namespace}/{topic}";
    api.route(
        &format!("{T}/examinemessage"),
        get(examine),
        &[("GET", Access::Topic(Want::Consume), "The N-th message from the first (?initialPosition=earliest) or back from the last (latest, the default) entry; ?messagePosition=N (from 1)")],
    )
    .route(
        &format!("{T}/ledger/{{ledger}}/entry/{{entry}}"),
        get(by_id),
        &[("GET", Access::Topic(Want::Consume), "The message at ledgerId:entryId (404 if none is stored there)")],
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExamineQuery {
    initial_position: Option<String>,
    message_position: Option<String>,
}

async fn examine(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    Query(q): Query<ExamineQuery>,
) -> ApiResult<Response> {
    let name = topic_name(&p)?;
    let from_latest = match q.initial_position.as_deref() {
        None | Some("latest") => true,
        Some("earliest") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "initialPosition must be earliest or latest, not {other:?}"
            )))
        }
    };
    let n: u64 = match q.message_position.as_deref() {
        None => 1,
        Some(v) => number("messagePosition", v)?,
    };
    if n == 0 {
        return Err(ApiError::bad_request("messagePosition counts from 1"));
    }
    let AdminReply::Peeked(found) = b
        .topic_admin(&name, AdminRequest::Examine { from_latest, n })
        .await?
    else {
        return Err(unexpected());
    };
    let m =
        found.ok_or_else(|| ApiError::not_found(format!("{name} has fewer than {n} messages")))?;
    Ok(message_response(m))
}

#[derive(Deserialize)]
struct EntryPath {
    domain: String,
    tenant: String,
    namespace: String,
    topic: String,
    ledger: String,
    entry: String,
}

async fn by_id(State(b): State<Broker>, Path(p): Path<EntryPath>) -> ApiResult<Response> {
    let ledger: u64 = number("the ledger id", &p.ledger)?;
    let entry: u64 = number("the entry id", &p.entry)?;
    let name = topic_name(&TopicPath {
        domain: p.domain,
        tenant: p.tenant,
        namespace: p.namespace,
        topic: p.topic,
    })?;
    let AdminReply::Peeked(found) = b
        .topic_admin(
            &name,
            AdminRequest::ReadEntry {
                position: Position::new(ledger, entry),
            },
        )
        .await?
    else {
        return Err(unexpected());
    };
    let m = found.ok_or_else(|| {
        ApiError::not_found(format!("message {ledger}:{entry} not found in {name}"))
    })?;
    Ok(message_response(m))
}
