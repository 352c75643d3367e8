//! Kilonova's admin REST API on Pulsar's v2 paths (`/admin/v2/…`), its
//! OpenAPI description (`/admin/v2/openapi.json`, kept in docs/openapi.json)
//! and the Prometheus endpoint (`/metrics`).
//!
//! Errors are Pulsar-style: a 4xx status with `{"reason": "…"}` (404 unknown,
//! 409 exists, 412 precondition such as not empty, 400 bad name or value).
//! Every route is declared through [`api::Api`] with its documentation.
//!
//! This crate never touches storage (it does not depend on kilonova-storage;
//! `scripts/check-layering` checks): the broker does. Its only sockets are the
//! ones the HTTP router is served on ([`server::AdminServer`], for the HTTP
//! and HTTPS ports).

mod analyze_backlog;
pub mod api;
mod brokers;
mod clusters;
mod compaction;
mod error;
mod fan_out;
mod kafka_groups;
mod lookup;
mod messages;
mod namespace_topics;
mod namespaces;
mod offload;
mod permissions;
mod policies;
mod replicated_subscriptions;
mod schemas;
pub mod server;
mod tenants;
mod termination;
mod topics;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;

use kilonova_broker::Broker;

pub use api::{openapi, Access, Api, Operation};
pub use error::ApiError;

/// Every admin route, with its documentation.
pub fn api() -> Api {
    let api = Api::new();
    let api = brokers::routes(api);
    let api = clusters::routes(api);
    let api = tenants::routes(api);
    let api = namespaces::routes(api);
    let api = policies::routes(api);
    let api = topics::routes(api);
    let api = permissions::routes(api);
    let api = schemas::routes(api);
    let api = lookup::routes(api);
    let api = messages::routes(api);
    let api = namespace_topics::routes(api);
    let api = compaction::routes(api);
    let api = termination::routes(api);
    let api = analyze_backlog::routes(api);
    let api = offload::routes(api);
    let api = replicated_subscriptions::routes(api);
    let api = kafka_groups::routes(api);
    api.route(
        "/metrics",
        get(metrics),
        &[(
            "GET",
            Access::Metrics,
            "Prometheus metrics (text format 0.0.4)",
        )],
    )
}

/// The admin router over a broker, with the OpenAPI document and a JSON 404.
pub fn router(broker: Broker) -> axum::Router {
    let (router, operations) = api().into_parts();
    let doc = openapi(&operations);
    router
        .route(
            "/admin/v2/openapi.json",
            api::guarded(
                get(move || {
                    let doc = doc.clone();
                    async move { Json(doc) }
                }),
                vec![("GET", Access::Authenticated)],
            ),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn(error::redirect_to_owner))
        // The access checks find the broker here (they run as route layers,
        // before the state is attached).
        .layer(axum::Extension(broker.clone()))
        .with_state(broker)
}

async fn metrics(State(broker): State<Broker>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        broker.render_metrics(),
    )
        .into_response()
}
