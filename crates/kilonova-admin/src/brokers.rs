//! `/admin/v2/brokers`: the cluster's brokers and the health check.

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
