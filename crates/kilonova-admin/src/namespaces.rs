//! `/admin/v2/namespaces`: list, create (with bundles), get policies, delete
//! (refused while topics exist unless `force`), replication clusters and the
//! backlog quota map. The other policies are in [`crate::policies`].

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;

use kilonova_broker::Broker;
use kilonova_metadata::policies::{self as p, BacklogQuota, Policies};
use kilonova_metadata::{Domain, NamespaceName};

use crate::api::{Access, Api};
use crate::error::{json_body, ApiError, ApiResult};
use crate::topics::delete_topic_everywhere;

pub fn routes(api: Api) -> Api {
    api.route(
        "/admin/v2/namespaces/{tenant}",
        get(list),
        &[("GET", Access::TenantAdmin, "List the tenant's namespaces")],
    )
    .route(
        "/admin/v2/namespaces/{tenant}/{namespace}",
        get(policies).put(create).delete(delete),
        &[
            ("GET", Access::TenantAdmin, "Get the namespace's policies"),
            ("PUT", Access::TenantAdmin, "Create a namespace; body: optional policies, e.g. {\"bundles\":{\"numBundles\":64}}"),
            ("DELETE", Access::TenantAdmin, "Delete a namespace (412 while it has topics; ?force=true deletes them)"),
        ],
    )
    .route(
        "/admin/v2/namespaces/{tenant}/{namespace}/bundles",
        get(bundles),
        &[("GET", Access::TenantAdmin, "Get the namespace's bundles: {boundaries: [\"0x00000000\", …, \"0xffffffff\"], numBundles}")],
    )
    .route(
        "/admin/v2/namespaces/{tenant}/{namespace}/replication",
        get(get_replication).post(set_replication),
        &[
            ("GET", Access::TenantAdmin, "Get the namespace's replication clusters"),
            ("POST", Access::TenantAdmin, "Set the namespace's replication clusters (each must exist)"),
        ],
    )
    .route(
        "/admin/v2/namespaces/{tenant}/{namespace}/backlogQuotaMap",
        get(get_backlog_quotas),
        &[("GET", Access::TenantAdmin, "Get the namespace's backlog quotas by type")],
    )
    .route(
        "/admin/v2/namespaces/{tenant}/{namespace}/backlogQuota",
        post(set_backlog_quota).delete(remove_backlog_quota),
        &[
            ("POST", Access::TenantAdmin, "Set a backlog quota (?backlogQuotaType=destination_storage|message_age)"),
            ("DELETE", Access::TenantAdmin, "Remove a backlog quota (?backlogQuotaType=…)"),
        ],
    )
}

fn namespace(tenant: &str, ns: &str) -> ApiResult<NamespaceName> {
    Ok(NamespaceName::new(tenant, ns)?)
}

async fn list(State(b): State<Broker>, Path(t): Path<String>) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(b.resources().list_namespaces(&t).await?))
}

async fn policies(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
) -> ApiResult<Json<Policies>> {
    Ok(Json(b.resources().namespace(&namespace(&t, &n)?).await?))
}

async fn bundles(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
) -> ApiResult<Json<kilonova_metadata::policies::BundlesData>> {
    Ok(Json(
        b.resources().namespace(&namespace(&t, &n)?).await?.bundles,
    ))
}

async fn create(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let ns = namespace(&t, &n)?;
    let mut policies: Policies = if body.iter().all(u8::is_ascii_whitespace) {
        Policies::default()
    } else {
        json_body(&body)?
    };
    if policies.replication_clusters.is_empty() {
        // As Pulsar: a new namespace is local until `set-clusters` says otherwise.
        policies.replication_clusters = [b.config().cluster_name.clone()].into();
    }
    if policies.bundles.num_bundles > p::MAX_BUNDLES {
        return Err(ApiError::bad_request(format!(
            "bundles must be at most {}",
            p::MAX_BUNDLES
        )));
    }
    b.resources().create_namespace(&ns, policies).await?;
    tracing::info!(namespace = %ns, "namespace created");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
pub(crate) struct Force {
    #[serde(default)]
    pub force: bool,
}

async fn delete(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
    Query(q): Query<Force>,
    incoming: crate::fan_out::Incoming,
) -> ApiResult<StatusCode> {
    let ns = namespace(&t, &n)?;
    let resources = b.resources();
    if !resources.namespace_exists(&ns).await? {
        return Err(ApiError::not_found(format!("namespace {ns} not found")));
    }
    if q.force {
        for domain in [Domain::Persistent, Domain::NonPersistent] {
            for (name, _) in resources.topics(&ns, domain).await? {
                // Partitions are deleted with their partitioned topic.
                if name.partition().is_some() {
                    let base = name.partitioned_topic();
                    if resources
                        .topic(&base)
                        .await?
                        .is_some_and(|r| r.partitions > 0)
                    {
                        continue;
                    }
                }
                delete_topic_everywhere(&b, &name, true, &incoming).await?;
            }
        }
    }
    resources.delete_namespace(&ns).await?;
    tracing::info!(namespace = %ns, force = q.force, "namespace deleted");
    // Its history in shared storage (a cluster): the namespace is gone
    // already, so a failure here only leaves data behind.
    if let Err(e) = b.forget_namespace_history(&ns).await {
        tracing::warn!(namespace = %ns, error = %e, "forgetting a deleted namespace's shared history failed");
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn get_replication(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
) -> ApiResult<Json<BTreeSet<String>>> {
    let policies = b.resources().namespace(&namespace(&t, &n)?).await?;
    Ok(Json(policies.replication_clusters))
}

async fn set_replication(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let ns = namespace(&t, &n)?;
    let clusters: BTreeSet<String> = json_body(&body)?;
    if clusters.is_empty() {
        return Err(ApiError::bad_request(
            "replication clusters must not be empty",
        ));
    }
    b.resources()
        .set_replication_clusters(&ns, clusters)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct QuotaType {
    #[serde(rename = "backlogQuotaType", default = "destination_storage")]
    kind: String,
}

fn destination_storage() -> String {
    p::BACKLOG_DESTINATION_STORAGE.to_owned()
}

fn quota_type(q: &QuotaType) -> ApiResult<&str> {
    match q.kind.as_str() {
        k @ (p::BACKLOG_DESTINATION_STORAGE | p::BACKLOG_MESSAGE_AGE) => Ok(k),
        other => Err(ApiError::bad_request(format!(
            "unknown backlogQuotaType {other:?}: destination_storage or message_age"
        ))),
    }
}

async fn get_backlog_quotas(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
) -> ApiResult<Json<BTreeMap<String, BacklogQuota>>> {
    let policies = b.resources().namespace(&namespace(&t, &n)?).await?;
    Ok(Json(policies.backlog_quota_map))
}

async fn set_backlog_quota(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
    Query(q): Query<QuotaType>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let ns = namespace(&t, &n)?;
    let kind = quota_type(&q)?.to_owned();
    let quota: BacklogQuota = json_body(&body)?;
    p::check_backlog_quota(&quota)?;
    b.resources()
        .update_namespace(&ns, |p| {
            p.backlog_quota_map.insert(kind.clone(), quota);
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_backlog_quota(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
    Query(q): Query<QuotaType>,
) -> ApiResult<StatusCode> {
    let ns = namespace(&t, &n)?;
    let kind = quota_type(&q)?.to_owned();
    b.resources()
        .update_namespace(&ns, |p| {
            p.backlog_quota_map.remove(&kind);
            Ok(())
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
