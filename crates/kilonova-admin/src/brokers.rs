//! `/admin/v2/brokers`: the cluster's brokers, the health check, the
//! version, the leader broker and the runtime configuration.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;

use kilonova_broker::Broker;

use crate::api::{Access, Api};
use crate::error::{ApiError, ApiResult};

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/brokers/health",
        get(health),
        &[(
            "GET",
            Access::SuperUser,
            "Health check: 200 `ok` while the broker serves",
        )],
    )
    .route(
        "/admin/v2/brokers/version",
        get(version),
        &[(
            "GET",
            Access::SuperUser,
            "The broker's version, as text",
        )],
    )
    .route(
        "/admin/v2/brokers/leaderBroker",
        get(leader_broker),
        &[(
            "GET",
            Access::SuperUser,
            "The cluster's leader broker: {\"brokerId\", \"serviceUrl\"} (a standalone broker leads itself)",
        )],
    )
    .route(
        "/admin/v2/brokers/configuration/runtime",
        get(runtime_config),
        &[(
            "GET",
            Access::SuperUser,
            "The broker's configuration in effect: every [broker] option, values as strings",
        )],
    )
    .route(
        "/admin/v2/brokers/{cluster}",
        get(list),
        &[(
            "GET",
            Access::SuperUser,
            "The cluster's active brokers (host:port of their HTTP service)",
        )],
    )
}

async fn health(State(broker): State<Broker>) -> Response {
    if broker.is_shutting_down() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is shutting down",
        )
        .into_response();
    }
    // Pulsar's health check writes and reads a message: a broker whose
    // storage cannot write is not healthy, whatever else still works.
    if let Err(why) = broker.storage_health().await {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    (StatusCode::OK, "ok").into_response()
}

async fn list(
    State(b): State<Broker>,
    Path(cluster): Path<String>,
) -> ApiResult<Json<Vec<String>>> {
    b.resources().cluster(&cluster).await?;
    Ok(Json(b.resources().list_brokers(&cluster).await?))
}

async fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Pulsar's `LeaderBroker`. Until brokers elect a leader, the first broker
/// registered in the cluster (by name) leads; a standalone broker is the only
/// one.
async fn leader_broker(State(b): State<Broker>) -> ApiResult<Json<serde_json::Value>> {
    let cluster = &b.config().cluster_name;
    let mut brokers = b.resources().list_brokers(cluster).await?;
    brokers.sort();
    let leader = brokers
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no broker is registered in {cluster}")))?;
    Ok(Json(serde_json::json!({
        "brokerId": leader,
        "serviceUrl": format!("http://{leader}"),
    })))
}

/// Pulsar's `Map<String, String>`: each option by its name in the
/// configuration file, its value as text (lists and tables as JSON).
async fn runtime_config(
    State(b): State<Broker>,
) -> ApiResult<Json<std::collections::BTreeMap<String, String>>> {
    let doc = serde_json::to_value(b.config())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let map = match doc {
        serde_json::Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect(),
        _ => std::collections::BTreeMap::new(),
    };
    Ok(Json(map))
}
