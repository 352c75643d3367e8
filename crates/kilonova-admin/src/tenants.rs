//! `/admin/v2/tenants`: list, get, create, update, delete.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;

use kilonova_broker::Broker;
use kilonova_metadata::policies::TenantInfo;

use crate::api::{Access, Api};
use crate::error::{json_body, ApiResult};

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/tenants",
        get(list),
        &[("GET", Access::SuperUser, "List the tenants")],
    )
    .route(
        "/admin/v2/tenants/{tenant}",
        get(get_one).put(create).post(update).delete(delete),
        &[
            (
                "GET",
                Access::TenantAdmin,
                "Get a tenant's admin roles and allowed clusters",
            ),
            (
                "PUT",
                Access::SuperUser,
                "Create a tenant (409 if it exists, 412 for an unknown cluster)",
            ),
            ("POST", Access::SuperUser, "Update a tenant"),
            (
                "DELETE",
                Access::SuperUser,
                "Delete a tenant (412 while it has namespaces)",
            ),
        ],
    )
}

async fn list(State(b): State<Broker>) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(b.resources().list_tenants().await?))
}

async fn get_one(State(b): State<Broker>, Path(t): Path<String>) -> ApiResult<Json<TenantInfo>> {
    Ok(Json(b.resources().tenant(&t).await?))
}

/// An absent or empty body is a tenant with no roles and no clusters.
fn info(body: &[u8]) -> ApiResult<TenantInfo> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TenantInfo::default());
    }
    json_body(body)
}

async fn create(
    State(b): State<Broker>,
    Path(t): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    b.resources().create_tenant(&t, &info(&body)?).await?;
    tracing::info!(tenant = %t, "tenant created");
    Ok(StatusCode::NO_CONTENT)
}

async fn update(
    State(b): State<Broker>,
    Path(t): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    b.resources().update_tenant(&t, info(&body)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete(State(b): State<Broker>, Path(t): Path<String>) -> ApiResult<StatusCode> {
    b.resources().delete_tenant(&t).await?;
    tracing::info!(tenant = %t, "tenant deleted");
    Ok(StatusCode::NO_CONTENT)
}
