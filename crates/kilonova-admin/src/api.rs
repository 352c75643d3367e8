//! The route table: every route is added through [`Api::route`] with, per
//! method, who may call it ([`Access`]) and a summary, so the router, the
//! OpenAPI document and the authorization checks cannot drift apart: a route
//! cannot be added without saying who may call it, and its check runs before
//! its handler.

use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use axum::Router;
use serde_json::{json, Map, Value};

use kilonova_auth::{Need, Principal, Want};
use kilonova_broker::{Broker, BrokerError};
use kilonova_metadata::{NamespaceName, TopicName};

use crate::error::ApiError;

/// Who may call an operation (Pulsar's rules): checked, when authentication
/// is on, before the handler runs. Names come from the path's `{tenant}`,
/// `{namespace}`, `{domain}` and `{topic}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone authenticated.
    Authenticated,
    /// Super-users only.
    SuperUser,
    /// Super-users and the tenant's admin roles.
    TenantAdmin,
    /// ... and roles granted the permission on the namespace.
    Namespace(Want),
    /// ... and roles granted the permission on the namespace or the topic.
    Topic(Want),
    /// `/metrics`: open unless `authenticate_metrics_endpoint`, then
    /// anyone authenticated.
    Metrics,
}

/// One documented operation.
#[derive(Clone, Debug)]
pub struct Operation {
    pub path: String,
    pub method: &'static str,
    pub access: Access,
    pub summary: String,
}

/// A router being built, with the documentation of each route.
pub struct Api {
    router: Router<Broker>,
    operations: Vec<Operation>,
}

impl Default for Api {
    fn default() -> Self {
        Self::new()
    }
}

impl Api {
    pub fn new() -> Self {
        Api {
            router: Router::new(),
            operations: Vec::new(),
        }
    }

    /// Adds `path` served by `methods`; `docs` names each method served
    /// (`"GET"`, …) with who may call it and what it does. A method served
    /// but not named is refused (403) whenever authentication is on.
    pub fn route(
        mut self,
        path: &str,
        methods: MethodRouter<Broker>,
        docs: &[(&'static str, Access, &str)],
    ) -> Self {
        for (method, access, summary) in docs {
            self.operations.push(Operation {
                path: path.to_owned(),
                method,
                access: *access,
                summary: (*summary).to_owned(),
            });
        }
        let table: Vec<(&'static str, Access)> = docs.iter().map(|(m, a, _)| (*m, *a)).collect();
        self.router = self.router.route(path, guarded(methods, table));
        self
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn into_parts(self) -> (Router<Broker>, Vec<Operation>) {
        (self.router, self.operations)
    }
}

/// `methods` behind the access check of each method in `table`.
pub fn guarded(
    methods: MethodRouter<Broker>,
    table: Vec<(&'static str, Access)>,
) -> MethodRouter<Broker> {
    let table = std::sync::Arc::new(table);
    methods.route_layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let table = table.clone();
            async move {
                match check(&table, req).await {
                    Ok(req) => next.run(req).await,
                    Err(e) => e.into_response(),
                }
            }
        },
    ))
}

/// The bearer token of a request, if any.
fn bearer(req: &Request) -> Result<Option<String>, BrokerError> {
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| BrokerError::Authentication(kilonova_auth::AuthError::Malformed))?;
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(Some(token.trim().to_owned()))
        }
        // Another scheme (Basic, …) is named; anything else may be a bare
        // credential and is never echoed.
        Some((scheme, _))
            if scheme.len() <= 16 && scheme.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            Err(BrokerError::Authentication(
                kilonova_auth::AuthError::UnsupportedMethod(scheme.to_owned()),
            ))
        }
        _ => Err(BrokerError::Authentication(
            kilonova_auth::AuthError::Malformed,
        )),
    }
}

/// Authenticates the request and checks its role against the method's access.
async fn check(table: &[(&'static str, Access)], req: Request) -> Result<Request, ApiError> {
    let Some(broker) = req.extensions().get::<Broker>().cloned() else {
        return Err(ApiError::from(BrokerError::Metadata(
            "the admin router was built without its broker".into(),
        )));
    };
    let security = broker.security();
    if !security.authentication_enabled() {
        return Ok(req);
    }
    let method = req.method().clone();
    let access = table
        .iter()
        .find(|(m, _)| Method::from_bytes(m.as_bytes()).is_ok_and(|m| m == method))
        .map(|(_, a)| *a);
    if access == Some(Access::Metrics) && !security.authenticate_metrics() {
        return Ok(req);
    }
    let token = bearer(&req)?;
    let method_name = token.as_ref().map(|_| kilonova_auth::TOKEN_METHOD);
    let principal: Option<Principal> =
        broker.authenticate(method_name, token.as_deref().map(str::as_bytes))?;
    let Some(access) = access else {
        return Err(
            BrokerError::Authorization("no access is defined for this method".into()).into(),
        );
    };
    let (mut parts, body) = req.into_parts();
    let params = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let tenant = param("tenant");
    let ns = match (&tenant, param("namespace")) {
        (Some(t), Some(n)) => Some(NamespaceName::new(t, &n)?),
        _ => None,
    };
    // The schema routes name no domain: their topics are persistent.
    let domain = param("domain").or_else(|| param("topic").map(|_| "persistent".to_owned()));
    let topic = match (domain, &ns, param("topic")) {
        (Some(d), Some(ns), Some(t)) => Some(TopicName::parse(&format!("{d}://{ns}/{t}"))?),
        _ => None,
    };
    let need = match access {
        Access::Authenticated | Access::Metrics => Need::Authenticated,
        Access::SuperUser => Need::SuperUser,
        Access::TenantAdmin => Need::TenantAdmin,
        Access::Namespace(w) => Need::Namespace(w),
        Access::Topic(w) => match &topic {
            Some(t) => Need::Topic(t, w),
            None => Need::Namespace(w),
        },
    };
    broker
        .authorize(principal.as_ref(), need, tenant.as_deref(), ns.as_ref())
        .await?;
    Ok(Request::from_parts(parts, body))
}

/// The OpenAPI 3 description of `operations`.
pub fn openapi(operations: &[Operation]) -> Value {
    let mut paths = Map::new();
    for op in operations {
        let params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let entry = paths.entry(op.path.clone()).or_insert_with(|| json!({}));
        if let Some(obj) = entry.as_object_mut() {
            obj.insert(
                op.method.to_ascii_lowercase(),
                json!({
                    "summary": op.summary,
                    "x-kilonova-access": format!("{:?}", op.access),
                    "parameters": params,
                    "responses": {
                        "200": {"description": "OK (a JSON body)"},
                        "204": {"description": "Done (no body)"},
                        "400": {"description": "Bad name, body or value: {\"reason\": …}"},
                        "401": {"description": "Authentication on and no valid bearer token: {\"reason\": …}"},
                        "403": {"description": "The token's role lacks the access: {\"reason\": …}"},
                        "404": {"description": "Not found: {\"reason\": …}"},
                        "409": {"description": "Already exists or changed concurrently: {\"reason\": …}"},
                        "412": {"description": "Precondition failed (e.g. not empty): {\"reason\": …}"}
                    }
                }),
            );
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Kilonova admin API",
            "description": "Pulsar admin v2 paths served by Kilonova. Errors are {\"reason\": \"…\"} with a 4xx status.",
            "version": env!("CARGO_PKG_VERSION")
        },
        "paths": paths
    })
}
