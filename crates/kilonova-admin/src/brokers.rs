//! `/admin/v2/brokers`: the cluster's brokers, the health check, the
//! version, the leader broker and the runtime configuration.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
        "/admin/v2/brokers/shed",
        post(shed),
        &[(
            "POST",
            Access::SuperUser,
            "Run one shedding round now on the load manager's leader (also with shedding switched off); answers the bundles moved: [{\"bundle\", \"from\", \"to\"}]",
        )],
    )
    .route(
        "/admin/v2/broker-stats/load-report",
        get(load_report),
        &[(
            "GET",
            Access::SuperUser,
            "This broker's last load report (Pulsar's LocalBrokerData: cpu, memory, bandwidthIn/Out as {usage, limit}, rates, counts, lastStats per bundle)",
        )],
    )
    .route(
        "/admin/v2/broker-stats/load-report/{broker}",
        get(stored_load_report),
        &[(
            "GET",
            Access::SuperUser,
            "The last load report broker BROKER (host:port) stored in the cluster's metadata",
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

/// Pulsar's `LeaderBroker`: the broker leading the load manager (elected
/// through the metadata store); a standalone broker leads itself.
async fn leader_broker(State(b): State<Broker>) -> ApiResult<Json<serde_json::Value>> {
    let leader = b.load_manager_leader().await?.ok_or_else(|| {
        ApiError::not_found("no broker leads the load manager yet: try again in a few seconds")
    })?;
    Ok(Json(serde_json::json!({
        "brokerId": leader.broker_id,
        "serviceUrl": leader.service_url,
    })))
}

async fn shed(State(b): State<Broker>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Ok(Json(b.shed_on_leader(authorization).await?))
}

async fn load_report(State(b): State<Broker>) -> Json<kilonova_metadata::load::LoadReport> {
    Json(b.load_report())
}

async fn stored_load_report(
    State(b): State<Broker>,
    Path(broker): Path<String>,
) -> ApiResult<Json<kilonova_metadata::load::LoadReport>> {
    match b.stored_load_report(&broker).await? {
        Some(r) => Ok(Json(r)),
        None => Err(ApiError::not_found(format!(
            "broker {broker} has no load report (not a live broker of this cluster)"
        ))),
    }
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
