//! Every admin route is behind its access check: the test walks the route
//! table (what the router serves and the OpenAPI document describes) and sends
//! each operation without a token, with a bad one, and as roles without the
//! access. A route added without an access check fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use kilonova_admin::Access;
use kilonova_auth::issue::{self, SigningKey};
use kilonova_auth::{AuthConfig, Secret, Security};
use kilonova_broker::{Broker, BrokerConfig};
use kilonova_metadata::policies::TenantInfo;
use kilonova_metadata::{EmbeddedStore, NamespaceName, Resources};
use kilonova_storage::{DirStateStore, SegmentStore, StoreConfig};

struct Fixture {
    router: axum::Router,
    key: SigningKey,
    resources: Resources,
    _dir: tempfile::TempDir,
}

/// A broker with authentication and authorization on: super-user `admin`,
/// tenant `acme` administered by `ops`, namespace `acme/ns`.
async fn fixture(authenticate_metrics: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut sc = StoreConfig::new(dir.path().join("storage"));
    sc.log_file_bytes = 16 << 20;
    let store = SegmentStore::open(sc).unwrap();
    let state = Arc::new(DirStateStore::open(dir.path().join("state")).unwrap());
    let metadata = EmbeddedStore::open(&dir.path().join("metadata.redb")).unwrap();
    let resources = Resources::new(Arc::new(metadata));
    resources
        .bootstrap("standalone", &Default::default())
        .await
        .unwrap();
    let tenant = TenantInfo {
        admin_roles: ["ops".to_string()].into(),
        allowed_clusters: ["standalone".to_string()].into(),
    };
    resources.create_tenant("acme", &tenant).await.unwrap();
    let ns = NamespaceName::parse("acme/ns").unwrap();
    resources
        .create_namespace(&ns, Default::default())
        .await
        .unwrap();
    let secret = issue::generate_secret_key().unwrap();
    let config = AuthConfig {
        authentication_enabled: true,
        authorization_enabled: true,
        super_user_roles: ["admin".to_string()].into(),
        token_secret_key: Some(Secret::new(format!(
            "data:;base64,{}",
            issue::base64_text(&secret)
        ))),
        authenticate_metrics_endpoint: authenticate_metrics,
        ..AuthConfig::default()
    };
    let broker = Broker::new(
        BrokerConfig::default(),
        store,
        state,
        resources.clone(),
        "pulsar://127.0.0.1:6650".to_string(),
        Security::from_config(&config).unwrap(),
        kilonova_broker::clock::system(),
    )
    .unwrap();
    Fixture {
        router: kilonova_admin::router(broker),
        key: SigningKey::from_secret(&secret).unwrap(),
        resources,
        _dir: dir,
    }
}

/// The path with every `{param}` filled with a name in `acme/ns`.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{tenant}" => "acme",
            "{namespace}" => "ns",
            "{domain}" => "persistent",
            "{topic}" => "t",
            "{subscription}" => "s",
            "{cluster}" => "standalone",
            "{role}" => "somebody",
            s if s.starts_with('{') => "1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn status(router: &axum::Router, method: &str, path: &str, auth: Option<&str>) -> StatusCode {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let req = req.body(Body::from("{}")).unwrap();
    router.clone().oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn every_route_refuses_missing_and_bad_tokens_and_roles_without_its_access() {
    let f = fixture(false).await;
    let bearer = |role: &str| format!("Bearer {}", f.key.token("sub", role, None).unwrap());
    let other_key = SigningKey::from_secret(&issue::generate_secret_key().unwrap()).unwrap();
    let forged = format!("Bearer {}", other_key.token("sub", "admin", None).unwrap());
    let (stranger, ops, admin) = (bearer("stranger"), bearer("ops"), bearer("admin"));
    let api = kilonova_admin::api();
    assert!(api.operations().len() > 80, "the route table looks empty");
    for op in api.operations() {
        let path = concrete(&op.path);
        let m = op.method;
        let what = format!("{m} {} ({:?})", op.path, op.access);
        if op.access == Access::Metrics {
            // Open unless configured (checked below).
            assert_eq!(
                status(&f.router, m, &path, None).await,
                StatusCode::OK,
                "{what}"
            );
            continue;
        }
        for (auth, who) in [
            (None, "no token"),
            (Some("Bearer not-a-jwt"), "a malformed token"),
            (Some(forged.as_str()), "a forged token"),
            (Some("Basic YWRtaW46YWRtaW4="), "basic credentials"),
        ] {
            assert_eq!(
                status(&f.router, m, &path, auth).await,
                StatusCode::UNAUTHORIZED,
                "{what} with {who}"
            );
        }
        let stranger_allowed = op.access == Access::Authenticated;
        if !stranger_allowed {
            assert_eq!(
                status(&f.router, m, &path, Some(&stranger)).await,
                StatusCode::FORBIDDEN,
                "{what} as a role without grants"
            );
        }
        if op.access == Access::SuperUser {
            assert_eq!(
                status(&f.router, m, &path, Some(&ops)).await,
                StatusCode::FORBIDDEN,
                "{what} as the tenant's admin"
            );
        }
        // Reading is allowed to whoever has the access (mutations would
        // change what later routes see; the handlers have their own tests).
        if m == "GET" {
            for (auth, who, has_access) in [
                (&admin, "the super-user", true),
                (&ops, "the tenant's admin", op.access != Access::SuperUser),
                (&stranger, "a role without grants", stranger_allowed),
            ] {
                if !has_access {
                    continue;
                }
                let s = status(&f.router, m, &path, Some(auth)).await;
                assert!(
                    s != StatusCode::UNAUTHORIZED && s != StatusCode::FORBIDDEN,
                    "{what} as {who}: {s}"
                );
            }
        }
    }
    // The OpenAPI document is served to any authenticated role only.
    let doc = "/admin/v2/openapi.json";
    assert_eq!(
        status(&f.router, "GET", doc, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&f.router, "GET", doc, Some(&stranger)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_tenant_admin_manages_its_tenant_and_not_another() {
    let f = fixture(false).await;
    let ops = format!("Bearer {}", f.key.token("sub", "ops", None).unwrap());
    let admin = format!("Bearer {}", f.key.token("sub", "admin", None).unwrap());
    let r = &f.router;
    assert_eq!(
        status(r, "PUT", "/admin/v2/namespaces/acme/ns2", Some(&ops)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status(r, "PUT", "/admin/v2/namespaces/public/ns2", Some(&ops)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(r, "PUT", "/admin/v2/tenants/other", Some(&ops)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(r, "PUT", "/admin/v2/namespaces/public/ns2", Some(&admin)).await,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn metrics_need_a_token_when_so_configured() {
    let f = fixture(true).await;
    let any = format!("Bearer {}", f.key.token("sub", "stranger", None).unwrap());
    assert_eq!(
        status(&f.router, "GET", "/metrics", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&f.router, "GET", "/metrics", Some(&any)).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_metadata_read_error_during_authorization_is_500_not_403() {
    let f = fixture(false).await;
    let stranger = format!("Bearer {}", f.key.token("sub", "stranger", None).unwrap());
    let admin = format!("Bearer {}", f.key.token("sub", "admin", None).unwrap());
    let path = "/admin/v2/persistent/acme/ns";
    assert_eq!(
        status(&f.router, "GET", path, Some(&stranger)).await,
        StatusCode::FORBIDDEN
    );
    // The namespace's record (its grants) becomes unreadable.
    f.resources
        .store()
        .put(
            "/namespaces/acme/ns",
            bytes::Bytes::from_static(b"{not json"),
            kilonova_metadata::Expect::Any,
            None,
        )
        .await
        .unwrap();
    let req = Request::builder()
        .method("GET")
        .uri(path)
        .header("authorization", &stranger)
        .body(Body::empty())
        .unwrap();
    let resp = f.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let reason: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let reason = reason["reason"].as_str().unwrap();
    assert!(reason.contains("cannot authorize"), "{reason}");
    // A super-user's access needs no record: still allowed to try.
    assert_ne!(
        status(&f.router, "GET", "/admin/v2/clusters", Some(&admin)).await,
        StatusCode::FORBIDDEN
    );
}
