//! The admin API's request bodies, through the real router over a real broker
//! (storage and metadata store in a temporary directory): policies,
//! permissions, partitions, tenants, clusters, namespaces, subscriptions.
//!
//! Input: `[route][variant][body]`. Invariants: a body never makes the server
//! fail (no 5xx, no panic); a body it accepts leaves the resource readable
//! (the matching GET answers 2xx with JSON), and the namespace's topic list
//! still answers.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use kilonova_auth::Security;
use kilonova_broker::{Broker, BrokerConfig};
use kilonova_metadata::{EmbeddedStore, Resources, TopicName};
use kilonova_storage::{DirStateStore, SegmentStore, StoreConfig};

use super::{scratch_dir, Target};
use crate::mutate::Input;
use crate::rng::Rng;

/// The shapes of the bodies the routes take.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Cluster,
    Tenant,
    Policies,
    ClusterSet,
    BacklogQuota,
    Retention,
    Int,
    PublishRate,
    DispatchRate,
    InactiveTopic,
    DelayedDelivery,
    Bool,
    AutoTopicCreation,
    Actions,
    Partitions,
    MessageId,
}

/// A route taking a body: method, path (`{k}` is the input's variant), body
/// shape, the GET that must answer once it succeeded, and what undoes it.
struct Route {
    method: &'static str,
    path: &'static str,
    body: Shape,
    check: &'static str,
    undo: Option<&'static str>,
}

const TOPIC: &str = "/admin/v2/persistent/public/default/fz";

/// The POST routes of policies under `$prefix`, each checked with a GET of itself.
macro_rules! policy_routes {
    ($prefix:literal, $(($p:literal, $b:ident)),* $(,)?) => {
        [$(
            Route { method: "POST", path: concat!($prefix, $p), body: Shape::$b, check: concat!($prefix, $p), undo: None },
        )*]
    };
}

const NS_POLICIES: [Route; 14] = policy_routes![
    "/admin/v2/namespaces/public/default/",
    ("retention", Retention),
    ("messageTTL", Int),
    ("publishRate", PublishRate),
    ("dispatchRate", DispatchRate),
    ("subscriptionDispatchRate", DispatchRate),
    ("replicatorDispatchRate", DispatchRate),
    ("inactiveTopicPolicies", InactiveTopic),
    ("maxProducersPerTopic", Int),
    ("maxConsumersPerTopic", Int),
    ("maxConsumersPerSubscription", Int),
    ("maxTopicsPerNamespace", Int),
    ("delayedDelivery", DelayedDelivery),
    ("deduplication", Bool),
    ("autoTopicCreation", AutoTopicCreation),
];

const TOPIC_POLICIES: [Route; 13] = policy_routes![
    "/admin/v2/persistent/public/default/fz/",
    ("retention", Retention),
    ("messageTTL", Int),
    ("publishRate", PublishRate),
    ("dispatchRate", DispatchRate),
    ("subscriptionDispatchRate", DispatchRate),
    ("replicatorDispatchRate", DispatchRate),
    ("replication", ClusterSet),
    ("inactiveTopicPolicies", InactiveTopic),
    ("maxProducersPerTopic", Int),
    ("maxConsumersPerTopic", Int),
    ("maxConsumersPerSubscription", Int),
    ("maxMessageSize", Int),
    ("delayedDelivery", DelayedDelivery),
];

const OTHER_ROUTES: [Route; 11] = [
    Route {
        method: "PUT",
        path: "/admin/v2/clusters/fz-c{k}",
        body: Shape::Cluster,
        check: "/admin/v2/clusters/fz-c{k}",
        undo: Some("/admin/v2/clusters/fz-c{k}"),
    },
    Route {
        method: "PUT",
        path: "/admin/v2/tenants/fz-t{k}",
        body: Shape::Tenant,
        check: "/admin/v2/tenants/fz-t{k}",
        undo: Some("/admin/v2/tenants/fz-t{k}"),
    },
    Route {
        method: "POST",
        path: "/admin/v2/tenants/public",
        body: Shape::Tenant,
        check: "/admin/v2/tenants/public",
        undo: None,
    },
    Route {
        method: "PUT",
        path: "/admin/v2/namespaces/public/fz-n{k}",
        body: Shape::Policies,
        check: "/admin/v2/namespaces/public/fz-n{k}",
        undo: Some("/admin/v2/namespaces/public/fz-n{k}"),
    },
    Route {
        method: "POST",
        path: "/admin/v2/namespaces/public/default/replication",
        body: Shape::ClusterSet,
        check: "/admin/v2/namespaces/public/default/replication",
        undo: None,
    },
    Route {
        method: "POST",
        path: "/admin/v2/namespaces/public/default/backlogQuota",
        body: Shape::BacklogQuota,
        check: "/admin/v2/namespaces/public/default/backlogQuotaMap",
        undo: None,
    },
    Route {
        method: "POST",
        path: "/admin/v2/namespaces/public/default/permissions/fz-r{k}",
        body: Shape::Actions,
        check: "/admin/v2/namespaces/public/default/permissions",
        undo: None,
    },
    Route {
        method: "POST",
        path: "/admin/v2/persistent/public/default/fz/permissions/fz-r{k}",
        body: Shape::Actions,
        check: "/admin/v2/persistent/public/default/fz/permissions",
        undo: None,
    },
    Route {
        method: "PUT",
        path: "/admin/v2/persistent/public/default/fz-p{k}/partitions",
        body: Shape::Partitions,
        check: "/admin/v2/persistent/public/default/fz-p{k}/partitions",
        undo: Some("/admin/v2/persistent/public/default/fz-p{k}/partitions?force=true"),
    },
    Route {
        method: "PUT",
        path: "/admin/v2/persistent/public/default/fz/subscription/fz-s{k}",
        body: Shape::MessageId,
        check: "/admin/v2/persistent/public/default/fz/subscriptions",
        undo: Some("/admin/v2/persistent/public/default/fz/subscription/fz-s{k}"),
    },
    Route {
        method: "POST",
        path: "/admin/v2/persistent/public/default/fz/subscription/fz-s/resetcursor",
        body: Shape::MessageId,
        check: "/admin/v2/persistent/public/default/fz/subscriptions",
        undo: None,
    },
];

fn routes() -> impl Iterator<Item = &'static Route> {
    NS_POLICIES
        .iter()
        .chain(TOPIC_POLICIES.iter())
        .chain(OTHER_ROUTES.iter())
}

fn route_count() -> usize {
    NS_POLICIES.len() + TOPIC_POLICIES.len() + OTHER_ROUTES.len()
}

fn int(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => json!(rng.interesting_i64()),
        1 => json!(rng.interesting_u64()),
        2 => json!(rng.below(100)),
        3 => json!(-(rng.below(3) as i64)),
        4 => json!(*rng.pick(&[1e308, -1e308, 0.5, -0.0, 1e19]).unwrap_or(&0.5)),
        _ => json!(rng.between(0, 100_000)),
    }
}

fn string(rng: &mut Rng) -> Value {
    json!(rng.text(64))
}

fn enum_of(rng: &mut Rng, names: &[&str]) -> Value {
    if rng.chance(1, 8) {
        return string(rng);
    }
    json!(rng.pick(names).copied().unwrap_or(""))
}

fn strings(rng: &mut Rng, known: &[&str]) -> Value {
    let n = rng.below(4);
    Value::Array(
        (0..n)
            .map(|_| {
                if rng.chance(3, 4) {
                    json!(rng.pick(known).copied().unwrap_or(""))
                } else {
                    string(rng)
                }
            })
            .collect(),
    )
}

/// Occasionally a value of the wrong type, or an unknown field.
fn perturb(rng: &mut Rng, v: Value) -> Value {
    match rng.below(16) {
        0 => Value::Null,
        1 => json!([v]),
        2 => string(rng),
        3 => match v {
            Value::Object(mut m) => {
                m.insert(rng.text(12), int(rng));
                Value::Object(m)
            }
            other => other,
        },
        _ => v,
    }
}

fn body(rng: &mut Rng, shape: Shape) -> Value {
    const QUOTA_POLICIES: &[&str] = &[
        "producer_request_hold",
        "producer_exception",
        "consumer_backlog_eviction",
    ];
    let v = match shape {
        Shape::Cluster => json!({
            "serviceUrl": string(rng),
            "brokerServiceUrl": string(rng),
            "serviceUrlTls": string(rng),
        }),
        Shape::Tenant => json!({
            "adminRoles": strings(rng, &["ops", "admin"]),
            "allowedClusters": strings(rng, &["standalone", "fz-c0"]),
        }),
        Shape::Policies => {
            let mut m = serde_json::Map::new();
            if rng.chance(1, 2) {
                m.insert("bundles".into(), json!({"numBundles": int(rng)}));
            }
            if rng.chance(1, 3) {
                m.insert("message_ttl_in_seconds".into(), int(rng));
            }
            if rng.chance(1, 3) {
                m.insert("replication_clusters".into(), strings(rng, &["standalone"]));
            }
            if rng.chance(1, 3) {
                m.insert(
                    "retention_policies".into(),
                    json!({"retentionTimeInMinutes": int(rng), "retentionSizeInMB": int(rng)}),
                );
            }
            if rng.chance(1, 4) {
                m.insert(
                    "backlog_quota_map".into(),
                    json!({"destination_storage": {"limitSize": int(rng), "limitTime": int(rng), "policy": enum_of(rng, QUOTA_POLICIES)}}),
                );
            }
            Value::Object(m)
        }
        Shape::ClusterSet => strings(rng, &["standalone", "fz-c0", "nowhere"]),
        Shape::BacklogQuota => json!({
            "limitSize": int(rng),
            "limitTime": int(rng),
            "policy": enum_of(rng, QUOTA_POLICIES),
        }),
        Shape::Retention => json!({
            "retentionTimeInMinutes": int(rng),
            "retentionSizeInMB": int(rng),
        }),
        Shape::Int => int(rng),
        Shape::PublishRate => json!({
            "publishThrottlingRateInMsg": int(rng),
            "publishThrottlingRateInByte": int(rng),
        }),
        Shape::DispatchRate => json!({
            "dispatchThrottlingRateInMsg": int(rng),
            "dispatchThrottlingRateInByte": int(rng),
            "relativeToPublishRate": rng.chance(1, 4),
            "ratePeriodInSecond": int(rng),
        }),
        Shape::InactiveTopic => json!({
            "inactiveTopicDeleteMode": enum_of(rng, &["delete_when_no_subscriptions", "delete_when_subscriptions_caught_up"]),
            "maxInactiveDurationSeconds": int(rng),
            "deleteWhileInactive": rng.chance(1, 2),
        }),
        Shape::DelayedDelivery => json!({"active": rng.chance(1, 2), "tickTime": int(rng)}),
        Shape::Bool => json!(rng.chance(1, 2)),
        Shape::AutoTopicCreation => json!({
            "allowAutoTopicCreation": rng.chance(1, 2),
            "topicType": enum_of(rng, &["partitioned", "non-partitioned"]),
            "defaultNumPartitions": int(rng),
        }),
        Shape::Actions => strings(
            rng,
            &[
                "produce",
                "consume",
                "functions",
                "sources",
                "sinks",
                "packages",
            ],
        ),
        Shape::Partitions => int(rng),
        Shape::MessageId => json!({
            "ledgerId": int(rng),
            "entryId": int(rng),
            "partitionIndex": int(rng),
        }),
    };
    perturb(rng, v)
}

/// Replaces a random leaf of a JSON value.
fn mutate_json(rng: &mut Rng, v: &mut Value) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            let i = rng.below(m.len());
            let Some(key) = m.keys().nth(i).cloned() else {
                return;
            };
            match rng.below(4) {
                0 => {
                    m.remove(&key);
                }
                _ => {
                    if let Some(child) = m.get_mut(&key) {
                        mutate_json(rng, child);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = rng.below(a.len());
            if let Some(child) = a.get_mut(i) {
                mutate_json(rng, child);
            }
        }
        _ => {
            *v = match rng.below(5) {
                0 => int(rng),
                1 => string(rng),
                2 => Value::Null,
                3 => json!(rng.chance(1, 2)),
                _ => json!({}),
            };
        }
    }
}

pub struct AdminTarget {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

impl AdminTarget {
    pub fn new() -> anyhow::Result<Self> {
        let dir = scratch_dir()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let router = rt.block_on(async {
            let mut sc = StoreConfig::new(dir.path().join("storage"));
            sc.log_file_bytes = 16 << 20;
            let store = SegmentStore::open(sc)?;
            let state = Arc::new(DirStateStore::open(dir.path().join("state"))?);
            let metadata = EmbeddedStore::open(&dir.path().join("metadata.redb"))?;
            let resources = Resources::new(Arc::new(metadata));
            resources
                .bootstrap("standalone", &Default::default())
                .await?;
            resources
                .create_topic(&TopicName::parse("persistent://public/default/fz")?, 0)
                .await?;
            let broker = Broker::new(
                BrokerConfig::default(),
                store,
                state,
                resources,
                "pulsar://127.0.0.1:6650".to_string(),
                Security::open(),
                kilonova_broker::clock::system(),
            )?;
            let router = kilonova_admin::router(broker);
            let sub = Request::builder()
                .method("PUT")
                .uri(format!("{TOPIC}/subscription/fz-s"))
                .body(Body::empty())?;
            let status = router.clone().oneshot(sub).await?.status();
            anyhow::ensure!(status.is_success(), "creating the subscription: {status}");
            anyhow::Ok(router)
        })?;
        Ok(AdminTarget {
            rt,
            router,
            _dir: dir,
        })
    }

    async fn call(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let Ok(req) = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
        else {
            return (StatusCode::BAD_REQUEST, Vec::new());
        };
        let Ok(resp) = self.router.clone().oneshot(req).await;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        (status, bytes)
    }
}

fn assert_not_a_server_error(what: &str, status: StatusCode, body: &[u8]) {
    assert!(
        !status.is_server_error(),
        "{what} answered {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
}

impl Target for AdminTarget {
    fn name(&self) -> &'static str {
        "admin"
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let route = rng.below(route_count());
        let shape = routes().nth(route).map_or(Shape::Int, |r| r.body);
        let mut input = Input::new(vec![route as u8, rng.below(4) as u8]);
        let v = body(rng, shape);
        input.bytes.extend_from_slice(v.to_string().as_bytes());
        input
    }

    fn mutate_structured(&mut self, rng: &mut Rng, input: &mut Input) -> bool {
        let Some(mut v) = input
            .bytes
            .get(2..)
            .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        else {
            return false;
        };
        for _ in 0..rng.between(1, 3) {
            mutate_json(rng, &mut v);
        }
        input.bytes.truncate(2);
        input.bytes.extend_from_slice(v.to_string().as_bytes());
        true
    }

    fn fresh_per_mille(&self) -> u32 {
        250
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        // The router and the broker's answers, plus what the body holds.
        (4 << 20) + 64 * input_len
    }

    fn run(&mut self, input: &[u8]) {
        let [route, variant, body @ ..] = input else {
            return;
        };
        let Some(route) = routes().nth(usize::from(*route) % route_count()) else {
            return;
        };
        let k = (variant % 4).to_string();
        let path = route.path.replace("{k}", &k);
        self.rt.block_on(async {
            let (status, answer) = self.call(route.method, &path, body.to_vec()).await;
            assert_not_a_server_error(&format!("{} {path}", route.method), status, &answer);
            if status.is_success() {
                let check = route.check.replace("{k}", &k);
                let (s, got) = self.call("GET", &check, Vec::new()).await;
                assert!(
                    s.is_success(),
                    "{} {path} was accepted, then GET {check} answered {s}: {}",
                    route.method,
                    String::from_utf8_lossy(&got[..got.len().min(300)])
                );
                if s != StatusCode::NO_CONTENT {
                    assert!(
                        serde_json::from_slice::<Value>(&got).is_ok(),
                        "GET {check} is not JSON"
                    );
                }
                let list = "/admin/v2/persistent/public/default?limit=20";
                let (s, got) = self.call("GET", list, Vec::new()).await;
                assert!(
                    s.is_success(),
                    "after {} {path}, GET {list} answered {s}: {}",
                    route.method,
                    String::from_utf8_lossy(&got[..got.len().min(300)])
                );
                if let Some(undo) = route.undo {
                    let undo = undo.replace("{k}", &k);
                    let (s, got) = self.call("DELETE", &undo, Vec::new()).await;
                    assert_not_a_server_error(&format!("DELETE {undo}"), s, &got);
                }
            }
        });
    }
}
