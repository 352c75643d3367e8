//! Operations on every topic of a namespace: list them (`…/topics`), unload
//! its bundles (`…/unload`, or one: `…/{bundle}/unload`; on their owners in
//! a cluster), clear their backlogs (`…/clearBacklog`, on every
//! subscription or one).

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::Json;
use serde::Deserialize;

use kilonova_broker::{AdminRequest, Broker, BrokerError};
use kilonova_metadata::bundles::{self, BundleRange};
use kilonova_metadata::{Domain, NamespaceName, TopicName};

use crate::api::{Access, Api};
use crate::error::{ApiError, ApiResult};

pub fn routes(api: Api) -> Api {
    const NS: &str = "/admin/v2/namespaces/{tenant}/{namespace}";
    api.route(
        &format!("{NS}/topics"),
        get(topics),
        &[("GET", Access::Namespace(kilonova_auth::Want::Lookup), "The namespace's topics (partitions of partitioned topics); ?mode=PERSISTENT (default), NON_PERSISTENT or ALL")],
    )
    .route(
        &format!("{NS}/unload"),
        put(unload),
        &[("PUT", Access::TenantAdmin, "Unload every bundle of the namespace on its owner: topics closed (clients look them up again), bundles released")],
    )
    .route(
        &format!("{NS}/{{bundle}}/unload"),
        put(unload_bundle),
        &[("PUT", Access::TenantAdmin, "Unload one bundle (0x00000000_0x40000000) on its owner: its topics closed, the bundle handed to `?destinationBroker=ID` if given, else to the least loaded other broker")],
    )
    .route(
        &format!("{NS}/{{bundle}}/split"),
        put(split_bundle),
        &[("PUT", Access::TenantAdmin, "Split one bundle in two at its middle hash on the broker serving it, which keeps both halves (`?unload=true`: both unloaded after); answers 412 with shared storage")],
    )
    .route(
        &format!("{NS}/clearBacklog"),
        post(clear_backlog_all),
        &[("POST", Access::TenantAdmin, "Clear the backlog of every subscription of every topic of the namespace")],
    )
    .route(
        &format!("{NS}/clearBacklog/{{subscription}}"),
        post(clear_backlog_one),
        &[("POST", Access::TenantAdmin, "Clear the backlog of one subscription on every topic of the namespace that has it")],
    )
}

fn namespace(tenant: &str, ns: &str) -> ApiResult<NamespaceName> {
    Ok(NamespaceName::new(tenant, ns)?)
}

#[derive(Deserialize)]
struct Mode {
    mode: Option<String>,
}

async fn topics(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
    Query(q): Query<Mode>,
) -> ApiResult<Json<Vec<String>>> {
    let ns = namespace(&t, &n)?;
    let domain = match q.mode.as_deref() {
        None | Some("PERSISTENT") => Some(Domain::Persistent),
        Some("NON_PERSISTENT") => Some(Domain::NonPersistent),
        Some("ALL") => None,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "mode must be PERSISTENT, NON_PERSISTENT or ALL, not {other:?}"
            )))
        }
    };
    Ok(Json(b.resources().topics_of_namespace(&ns, domain).await?))
}

async fn unload(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let ns = namespace(&t, &n)?;
    let served = b.unload_namespace(&ns, authorization(&headers)).await?;
    tracing::info!(namespace = %ns, bundles = served, "namespace unloaded");
    Ok(StatusCode::NO_CONTENT)
}

/// `?destinationBroker=ID`: the broker to hand the bundle to.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Destination {
    destination_broker: Option<String>,
}

async fn unload_bundle(
    State(b): State<Broker>,
    Path((t, n, bundle)): Path<(String, String, String)>,
    Query(d): Query<Destination>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let ns = namespace(&t, &n)?;
    let range: BundleRange = bundle
        .parse()
        .map_err(|e| ApiError::bad_request(format!("bundle {bundle:?}: {e}")))?;
    let policies = b.resources().namespace(&ns).await?;
    if !bundles::ranges(&policies.bundles)?.contains(&range) {
        return Err(ApiError::not_found(format!(
            "namespace {ns} has no bundle {range}"
        )));
    }
    let to = d.destination_broker.as_deref().filter(|d| !d.is_empty());
    b.unload_bundle_anywhere(&ns, range, authorization(&headers), to)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?unload=`, and Pulsar's `splitAlgorithmName` (only its default is served).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SplitOptions {
    #[serde(default)]
    unload: bool,
    split_algorithm_name: Option<String>,
}

async fn split_bundle(
    State(b): State<Broker>,
    Path((t, n, bundle)): Path<(String, String, String)>,
    Query(o): Query<SplitOptions>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    let ns = namespace(&t, &n)?;
    if let Some(a) = o
        .split_algorithm_name
        .as_deref()
        .filter(|a| *a != "range_equally_divide")
    {
        return Err(ApiError::bad_request(format!(
            "split algorithm {a:?} is not served: only range_equally_divide"
        )));
    }
    let range: BundleRange = bundle
        .parse()
        .map_err(|e| ApiError::bad_request(format!("bundle {bundle:?}: {e}")))?;
    b.split_bundle_anywhere(&ns, range, o.unload, authorization(&headers))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's credentials, passed on when a bundle is unloaded on its owner.
fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

async fn clear_backlog(b: &Broker, ns: &NamespaceName, sub: Option<&str>) -> ApiResult<()> {
    let names = b
        .resources()
        .topics_of_namespace(ns, Some(Domain::Persistent))
        .await?;
    for name in &names {
        let topic = TopicName::parse(name)?;
        let request = AdminRequest::ClearBacklog {
            subscription: sub.map(str::to_owned),
        };
        match b.topic_admin(&topic, request).await {
            // A topic without that subscription, or deleted meanwhile.
            Ok(_)
            | Err(BrokerError::SubscriptionNotFound(_))
            | Err(BrokerError::TopicNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(namespace = %ns, subscription = ?sub, topics = names.len(), "namespace backlog cleared");
    Ok(())
}

async fn clear_backlog_all(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    clear_backlog(&b, &namespace(&t, &n)?, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_backlog_one(
    State(b): State<Broker>,
    Path((t, n, sub)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    clear_backlog(&b, &namespace(&t, &n)?, Some(&sub)).await?;
    Ok(StatusCode::NO_CONTENT)
}
