//! The route table: every route is added through [`Api::route`] with a
//! summary per method, so the router, the OpenAPI document and the checks
//! that walk the routes (authorization, later) cannot drift apart.

use axum::routing::MethodRouter;
use axum::Router;
use serde_json::{json, Map, Value};

use kilonova_broker::Broker;

/// One documented operation.
#[derive(Clone, Debug)]
pub struct Operation {
    pub path: String,
    pub method: &'static str,
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
    /// (`"GET"`, …) with what it does.
    pub fn route(
        mut self,
        path: &str,
        methods: MethodRouter<Broker>,
        docs: &[(&'static str, &str)],
    ) -> Self {
        for (method, summary) in docs {
            self.operations.push(Operation {
                path: path.to_owned(),
                method,
                summary: (*summary).to_owned(),
            });
        }
        self.router = self.router.route(path, methods);
        self
    }

    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    pub fn into_parts(self) -> (Router<Broker>, Vec<Operation>) {
        (self.router, self.operations)
    }
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
                    "parameters": params,
                    "responses": {
                        "200": {"description": "OK (a JSON body)"},
                        "204": {"description": "Done (no body)"},
                        "400": {"description": "Bad name, body or value: {\"reason\": …}"},
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
