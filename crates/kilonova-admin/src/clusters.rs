//! `/admin/v2/clusters`: list, get, create, update, delete.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;

use kilonova_broker::Broker;
use kilonova_metadata::policies::ClusterData;

use crate::api::{Access, Api};
use crate::error::{json_body, ApiResult};

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/clusters",
        get(list),
        &[("GET", Access::Authenticated, "List the clusters")],
    )
    .route(
        "/admin/v2/clusters/{cluster}",
        get(get_one).put(create).post(update).delete(delete),
        &[
            ("GET", Access::SuperUser, "Get a cluster's service URLs"),
            (
                "PUT",
                Access::SuperUser,
                "Create a cluster (409 if it exists)",
            ),
            ("POST", Access::SuperUser, "Update a cluster"),
            (
                "DELETE",
                Access::SuperUser,
                "Delete a cluster (412 while a tenant allows it)",
            ),
        ],
    )
}

async fn list(State(b): State<Broker>) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(b.resources().list_clusters().await?))
}

async fn get_one(State(b): State<Broker>, Path(c): Path<String>) -> ApiResult<Json<ClusterData>> {
    Ok(Json(b.resources().cluster(&c).await?))
}

async fn create(
    State(b): State<Broker>,
    Path(c): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let data: ClusterData = json_body(&body)?;
    b.resources().create_cluster(&c, &data).await?;
    tracing::info!(cluster = %c, "cluster created");
    Ok(StatusCode::NO_CONTENT)
}

async fn update(
    State(b): State<Broker>,
    Path(c): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let data: ClusterData = json_body(&body)?;
    b.resources().update_cluster(&c, data).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(State(b): State<Broker>, Path(c): Path<String>) -> ApiResult<StatusCode> {
    b.resources().delete_cluster(&c).await?;
    tracing::info!(cluster = %c, "cluster deleted");
    Ok(StatusCode::NO_CONTENT)
}
