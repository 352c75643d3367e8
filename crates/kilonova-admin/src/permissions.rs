//! Permissions (Pulsar's `namespaces grant-permission` and `topics
//! grant-permission`): roles granted actions on a namespace or on one topic,
//! kept in the namespace's record. Granting replaces a role's actions.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;

use kilonova_broker::Broker;
use kilonova_metadata::policies::AuthAction;
use kilonova_metadata::{MetadataError, NamespaceName};

use crate::api::{Access, Api};
use crate::error::{json_body, ApiError, ApiResult};
use crate::topics::{topic_name, TopicPath};

type Grants = BTreeMap<String, BTreeSet<AuthAction>>;

pub fn routes(api: Api) -> Api {
    const NS: &str = "/admin/v2/namespaces/{tenant}/{namespace}/permissions";
    const TOPIC: &str = "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/permissions";
    api.route(
        NS,
        get(namespace_permissions),
        &[(
            "GET",
            Access::TenantAdmin,
            "Roles and the actions granted to each on the namespace",
        )],
    )
    .route(
        &format!("{NS}/{{role}}"),
        post(grant_namespace).delete(revoke_namespace),
        &[
            (
                "POST",
                Access::TenantAdmin,
                "Grant a role actions on the namespace; body: [\"produce\", \"consume\", …]",
            ),
            (
                "DELETE",
                Access::TenantAdmin,
                "Revoke a role's permissions on the namespace",
            ),
        ],
    )
    .route(
        TOPIC,
        get(topic_permissions),
        &[(
            "GET",
            Access::TenantAdmin,
            "Roles and their actions on the topic: the namespace's grants and the topic's own",
        )],
    )
    .route(
        &format!("{TOPIC}/{{role}}"),
        post(grant_topic).delete(revoke_topic),
        &[
            (
                "POST",
                Access::TenantAdmin,
                "Grant a role actions on the topic; body: [\"produce\", \"consume\", …]",
            ),
            (
                "DELETE",
                Access::TenantAdmin,
                "Revoke a role's permissions on the topic (412 if it has none at topic level)",
            ),
        ],
    )
}

fn actions(body: &[u8]) -> ApiResult<BTreeSet<AuthAction>> {
    let names: Vec<String> = json_body(body)?;
    let set = names
        .iter()
        .map(|n| AuthAction::parse(n))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if set.is_empty() {
        return Err(ApiError::bad_request("grant at least one action"));
    }
    Ok(set)
}

fn role(r: &str) -> ApiResult<&str> {
    if r.trim().is_empty() {
        return Err(ApiError::bad_request("the role is empty"));
    }
    Ok(r)
}

async fn namespace_permissions(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
) -> ApiResult<Json<Grants>> {
    let ns = NamespaceName::new(&t, &n)?;
    Ok(Json(
        b.resources()
            .namespace(&ns)
            .await?
            .auth_policies
            .namespace_auth,
    ))
}

async fn grant_namespace(
    State(b): State<Broker>,
    Path((t, n, r)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let ns = NamespaceName::new(&t, &n)?;
    let (r, granted) = (role(&r)?, actions(&body)?);
    b.resources()
        .update_namespace(&ns, |p| {
            p.auth_policies
                .namespace_auth
                .insert(r.to_owned(), granted.clone());
            Ok(())
        })
        .await?;
    tracing::info!(namespace = %ns, role = r, ?granted, "permission granted");
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_namespace(
    State(b): State<Broker>,
    Path((t, n, r)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let ns = NamespaceName::new(&t, &n)?;
    b.resources()
        .update_namespace(&ns, |p| {
            p.auth_policies.namespace_auth.remove(&r);
            Ok(())
        })
        .await?;
    tracing::info!(namespace = %ns, role = %r, "permission revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn topic_permissions(
    State(b): State<Broker>,
    Path(tp): Path<TopicPath>,
) -> ApiResult<Json<Grants>> {
    let name = topic_name(&tp)?;
    let auth = b
        .resources()
        .namespace(&name.namespace())
        .await?
        .auth_policies;
    let mut all = auth.namespace_auth;
    for (r, a) in auth
        .destination_auth
        .get(&name.to_string())
        .into_iter()
        .flatten()
    {
        all.entry(r.clone()).or_default().extend(a.iter().copied());
    }
    Ok(Json(all))
}

#[derive(Deserialize)]
struct TopicRolePath {
    domain: String,
    tenant: String,
    namespace: String,
    topic: String,
    role: String,
}

impl TopicRolePath {
    fn split(self) -> (TopicPath, String) {
        (
            TopicPath {
                domain: self.domain,
                tenant: self.tenant,
                namespace: self.namespace,
                topic: self.topic,
            },
            self.role,
        )
    }
}

async fn grant_topic(
    State(b): State<Broker>,
    Path(p): Path<TopicRolePath>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let (tp, r) = p.split();
    let name = topic_name(&tp)?;
    let (r, granted) = (role(&r)?, actions(&body)?);
    let key = name.to_string();
    b.resources()
        .update_namespace(&name.namespace(), |p| {
            p.auth_policies
                .destination_auth
                .entry(key.clone())
                .or_default()
                .insert(r.to_owned(), granted.clone());
            Ok(())
        })
        .await?;
    tracing::info!(topic = %name, role = r, ?granted, "permission granted");
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_topic(
    State(b): State<Broker>,
    Path(p): Path<TopicRolePath>,
) -> ApiResult<StatusCode> {
    let (tp, r) = p.split();
    let name = topic_name(&tp)?;
    let key = name.to_string();
    b.resources()
        .update_namespace(&name.namespace(), |p| {
            let roles = p.auth_policies.destination_auth.get_mut(&key);
            if roles.and_then(|roles| roles.remove(&r)).is_none() {
                return Err(MetadataError::Precondition(format!(
                    "role {r} has no permissions at the level of topic {key}"
                )));
            }
            if p.auth_policies
                .destination_auth
                .get(&key)
                .is_some_and(BTreeMap::is_empty)
            {
                p.auth_policies.destination_auth.remove(&key);
            }
            Ok(())
        })
        .await?;
    tracing::info!(topic = %name, role = %r, "permission revoked");
    Ok(StatusCode::NO_CONTENT)
}
