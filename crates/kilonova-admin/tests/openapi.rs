//! docs/openapi.json is the OpenAPI document the broker serves, generated from
//! the route table: this test fails when they differ. Regenerate with
//! `KILONOVA_WRITE_OPENAPI=1 cargo test -p kilonova-admin --test openapi`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn docs_openapi_json_is_the_served_document() {
    let api = kilonova_admin::api();
    let doc = kilonova_admin::openapi(api.operations());
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    if std::env::var_os("KILONOVA_WRITE_OPENAPI").is_some() {
        std::fs::write(doc_path(), &text).unwrap();
    }
    let kept = std::fs::read_to_string(doc_path()).unwrap_or_default();
    assert!(
        kept == text,
        "docs/openapi.json is out of date: run KILONOVA_WRITE_OPENAPI=1 cargo test -p kilonova-admin --test openapi"
    );
}

#[test]
fn every_route_family_is_documented_with_its_methods() {
    let api = kilonova_admin::api();
    let ops: Vec<(String, &str)> = api
        .operations()
        .iter()
        .map(|o| (o.path.clone(), o.method))
        .collect();
    for (path, method) in [
        ("/admin/v2/clusters/{cluster}", "PUT"),
        ("/admin/v2/tenants/{tenant}", "DELETE"),
        ("/admin/v2/namespaces/{tenant}/{namespace}", "PUT"),
        (
            "/admin/v2/namespaces/{tenant}/{namespace}/retention",
            "POST",
        ),
        (
            "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/partitions",
            "PUT",
        ),
        (
            "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/stats",
            "GET",
        ),
        ("/admin/v2/brokers/health", "GET"),
        ("/metrics", "GET"),
    ] {
        assert!(
            ops.iter().any(|(p, m)| p == path && *m == method),
            "{method} {path} is not in the route table"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (p, m) in &ops {
        assert!(seen.insert((p, m)), "{m} {p} is declared twice");
    }
}
