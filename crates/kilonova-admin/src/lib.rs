//! Kilonova's admin REST API on Pulsar's v2 paths.
//!
//! Today: the broker health check and partitioned-topic metadata (what clients and
//! tests need to create partitioned topics). The rest of the admin API is issue #13.
//! Errors are Pulsar-style: a 4xx status with `{"reason": "…"}`.
//!
//! This crate never touches storage or sockets of its own beyond the HTTP router.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use kilonova_broker::{Broker, BrokerError, Domain, TopicName};

/// The admin router over a broker.
pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/admin/v2/brokers/health", get(health))
        .route(
            "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/partitions",
            get(get_partitions)
                .put(create_partitioned)
                .post(update_partitions),
        )
        .with_state(broker)
}

async fn health(State(broker): State<Broker>) -> Response {
    if broker.is_shutting_down() {
        return reason(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is shutting down",
        );
    }
    (StatusCode::OK, "ok").into_response()
}

#[derive(Serialize)]
struct PartitionedMetadata {
    partitions: u32,
}

fn reason(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "reason": why.into() }))).into_response()
}

fn error_response(e: &BrokerError) -> Response {
    let status = match e {
        BrokerError::InvalidTopicName(_) | BrokerError::BadRequest(_) => StatusCode::BAD_REQUEST,
        BrokerError::NamespaceNotFound(_)
        | BrokerError::TopicNotFound(_)
        | BrokerError::NotFound(_) => StatusCode::NOT_FOUND,
        BrokerError::Precondition(_) => StatusCode::PRECONDITION_FAILED,
        BrokerError::Conflict(_) => StatusCode::CONFLICT,
        BrokerError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    reason(status, e.to_string())
}

fn topic_name(domain: &str, tenant: &str, ns: &str, topic: &str) -> Result<TopicName, BrokerError> {
    let t = TopicName::parse(&format!("{domain}://{tenant}/{ns}/{topic}"))?;
    debug_assert!(matches!(
        t.domain,
        Domain::Persistent | Domain::NonPersistent
    ));
    Ok(t)
}

async fn get_partitions(
    State(broker): State<Broker>,
    Path((domain, tenant, ns, topic)): Path<(String, String, String, String)>,
) -> Response {
    let t = match topic_name(&domain, &tenant, &ns, &topic) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    match broker.partitions(&t).await {
        Ok(partitions) => Json(PartitionedMetadata { partitions }).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `PUT …/partitions` with the partition count as the JSON body, as pulsar-admin sends.
async fn create_partitioned(
    State(broker): State<Broker>,
    Path(path): Path<(String, String, String, String)>,
    body: String,
) -> Response {
    partitions(broker, path, body, true).await
}

/// `POST …/partitions`: grow an existing partitioned topic.
async fn update_partitions(
    State(broker): State<Broker>,
    Path(path): Path<(String, String, String, String)>,
    body: String,
) -> Response {
    partitions(broker, path, body, false).await
}

async fn partitions(
    broker: Broker,
    (domain, tenant, ns, topic): (String, String, String, String),
    body: String,
    create: bool,
) -> Response {
    let t = match topic_name(&domain, &tenant, &ns, &topic) {
        Ok(t) => t,
        Err(e) => return error_response(&e),
    };
    let n: u32 = match body.trim().parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return reason(
                StatusCode::BAD_REQUEST,
                "body must be the number of partitions (a positive integer)",
            )
        }
    };
    let result = if create {
        broker.resources().create_topic(&t, n).await.map(drop)
    } else {
        broker.resources().update_partitions(&t, n).await
    };
    match result.map_err(BrokerError::from) {
        Ok(()) => {
            tracing::info!(topic = %t, partitions = n, create, "partitioned topic set");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error_response(&e),
    }
}
