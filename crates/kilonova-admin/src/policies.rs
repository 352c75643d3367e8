//! Policy routes: GET / POST / DELETE of each policy, at namespace level
//! (`/admin/v2/namespaces/{tenant}/{namespace}/{policy}`) and as a topic-level
//! override (`/admin/v2/{domain}/{tenant}/{namespace}/{topic}/{policy}`).
//! Each policy is described once ([`Field`]) and served at both levels.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

use kilonova_broker::{Broker, BrokerError};
use kilonova_metadata::policies::{self as p, Policies, TopicPolicies};
use kilonova_metadata::{MetadataError, NamespaceName};

use crate::api::{Access, Api};
use crate::error::{json_body, ApiError, ApiResult};
use crate::topics::{topic_name, TopicPath};

/// One policy: its path segment, its check, and where it lives at each level.
pub struct Field<T: 'static> {
    pub path: &'static str,
    pub what: &'static str,
    check: fn(&T) -> kilonova_metadata::Result<()>,
    /// The check against the broker, for a policy of the namespace given (or
    /// of one of its topics): its configuration's caps, what the metadata
    /// holds (the clusters named exist and the tenant may use them).
    limit: Limit<T>,
    /// The namespace's value (per-cluster policies: this cluster's).
    ns_get: fn(&Policies, &str) -> Option<T>,
    ns_put: fn(&mut Policies, &str, Option<T>),
    /// The topic-level override, if the policy has one.
    topic: Option<fn(&mut TopicPolicies) -> &mut Option<T>>,
}

/// A check of a value against the broker, which may read the metadata.
type Limit<T> = for<'a> fn(&'a T, &'a Broker, &'a NamespaceName) -> Checking<'a>;
type Checking<'a> = Pin<Box<dyn Future<Output = ApiResult<()>> + Send + 'a>>;

fn no_check<T>(_: &T) -> kilonova_metadata::Result<()> {
    Ok(())
}

fn no_limit<'a, T>(_: &'a T, _: &'a Broker, _: &'a NamespaceName) -> Checking<'a> {
    Box::pin(std::future::ready(Ok(())))
}

/// Auto-created partitioned topics get no more partitions than the cap (Pulsar: 406).
fn auto_creation_limit<'a>(
    o: &'a p::AutoTopicCreationOverride,
    b: &'a Broker,
    _: &'a NamespaceName,
) -> Checking<'a> {
    let checked: Result<(), BrokerError> = match o.default_num_partitions {
        Some(n) if o.topic_type == p::TopicType::Partitioned => b.check_partition_count(n),
        _ => Ok(()),
    };
    Box::pin(std::future::ready(checked.map_err(ApiError::from)))
}

/// Every cluster named is registered here and allowed to the tenant (Pulsar
/// answers 403 for either).
fn clusters_exist<'a>(
    clusters: &'a BTreeSet<String>,
    b: &'a Broker,
    ns: &'a NamespaceName,
) -> Checking<'a> {
    Box::pin(async move {
        let forbidden = |reason: String| ApiError::new(StatusCode::FORBIDDEN, reason);
        for c in clusters {
            match b.resources().cluster(c).await {
                Ok(_) => {}
                Err(MetadataError::NotFound(_)) => {
                    return Err(forbidden(format!("Invalid cluster id: {c}")))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let tenant = b.resources().tenant(&ns.tenant).await?;
        if let Some(c) = clusters
            .iter()
            .find(|c| !tenant.allowed_clusters.contains(*c))
        {
            return Err(forbidden(format!(
                "Cluster [{c}] is not in the list of allowed clusters list for tenant [{}]",
                ns.tenant
            )));
        }
        Ok(())
    })
}

fn check_count(v: &i32) -> kilonova_metadata::Result<()> {
    p::check_limit("value", *v)
}

pub static RETENTION: Field<p::RetentionPolicies> = Field {
    path: "retention",
    what: "retention",
    check: p::check_retention,
    limit: no_limit,
    ns_get: |n, _| n.retention_policies,
    ns_put: |n, _, v| n.retention_policies = v,
    topic: Some(|t| &mut t.retention_policies),
};

pub static MESSAGE_TTL: Field<i32> = Field {
    path: "messageTTL",
    what: "message TTL",
    check: |v| p::check_ttl(*v),
    limit: no_limit,
    ns_get: |n, _| n.message_ttl_in_seconds,
    ns_put: |n, _, v| n.message_ttl_in_seconds = v,
    topic: Some(|t| &mut t.message_ttl_in_seconds),
};

pub static PUBLISH_RATE: Field<p::PublishRate> = Field {
    path: "publishRate",
    what: "publish rate",
    check: p::check_publish_rate,
    limit: no_limit,
    ns_get: |n, c| n.publish_max_message_rate.get(c).copied(),
    ns_put: |n, c, v| put_cluster(&mut n.publish_max_message_rate, c, v),
    topic: Some(|t| &mut t.publish_rate),
};

pub static DISPATCH_RATE: Field<p::DispatchRate> = Field {
    path: "dispatchRate",
    what: "dispatch rate",
    check: p::check_dispatch_rate,
    limit: no_limit,
    ns_get: |n, c| n.topic_dispatch_rate.get(c).copied(),
    ns_put: |n, c, v| put_cluster(&mut n.topic_dispatch_rate, c, v),
    topic: Some(|t| &mut t.dispatch_rate),
};

pub static SUBSCRIPTION_DISPATCH_RATE: Field<p::DispatchRate> = Field {
    path: "subscriptionDispatchRate",
    what: "subscription dispatch rate",
    check: p::check_dispatch_rate,
    limit: no_limit,
    ns_get: |n, c| n.subscription_dispatch_rate.get(c).copied(),
    ns_put: |n, c, v| put_cluster(&mut n.subscription_dispatch_rate, c, v),
    topic: Some(|t| &mut t.subscription_dispatch_rate),
};

/// What each replicator sends to a remote cluster.
pub static REPLICATOR_DISPATCH_RATE: Field<p::DispatchRate> = Field {
    path: "replicatorDispatchRate",
    what: "replicator dispatch rate",
    check: p::check_dispatch_rate,
    limit: no_limit,
    ns_get: |n, c| n.replicator_dispatch_rate.get(c).copied(),
    ns_put: |n, c, v| put_cluster(&mut n.replicator_dispatch_rate, c, v),
    topic: Some(|t| &mut t.replicator_dispatch_rate),
};

/// Topic level only: the namespace's replication clusters have their own
/// route (`/namespaces/{t}/{ns}/replication`, set but never removed).
pub static TOPIC_REPLICATION_CLUSTERS: Field<BTreeSet<String>> = Field {
    path: "replication",
    what: "replication clusters",
    check: p::check_replication_clusters,
    limit: clusters_exist,
    ns_get: |_, _| None,
    ns_put: |_, _, _| {},
    topic: Some(|t| &mut t.replication_clusters),
};

pub static INACTIVE_TOPIC: Field<p::InactiveTopicPolicies> = Field {
    path: "inactiveTopicPolicies",
    what: "inactive topic policies",
    check: p::check_inactive_topic_policies,
    limit: no_limit,
    ns_get: |n, _| n.inactive_topic_policies,
    ns_put: |n, _, v| n.inactive_topic_policies = v,
    topic: Some(|t| &mut t.inactive_topic_policies),
};

pub static MAX_PRODUCERS: Field<i32> = Field {
    path: "maxProducersPerTopic",
    what: "max producers per topic",
    check: check_count,
    limit: no_limit,
    ns_get: |n, _| n.max_producers_per_topic,
    ns_put: |n, _, v| n.max_producers_per_topic = v,
    topic: Some(|t| &mut t.max_producers_per_topic),
};

pub static MAX_CONSUMERS: Field<i32> = Field {
    path: "maxConsumersPerTopic",
    what: "max consumers per topic",
    check: check_count,
    limit: no_limit,
    ns_get: |n, _| n.max_consumers_per_topic,
    ns_put: |n, _, v| n.max_consumers_per_topic = v,
    topic: Some(|t| &mut t.max_consumers_per_topic),
};

pub static MAX_CONSUMERS_PER_SUBSCRIPTION: Field<i32> = Field {
    path: "maxConsumersPerSubscription",
    what: "max consumers per subscription",
    check: check_count,
    limit: no_limit,
    ns_get: |n, _| n.max_consumers_per_subscription,
    ns_put: |n, _, v| n.max_consumers_per_subscription = v,
    topic: Some(|t| &mut t.max_consumers_per_subscription),
};

/// Namespace level (the topic level is [`MAX_UNACKED_ON_CONSUMER`]).
pub static MAX_UNACKED_PER_CONSUMER: Field<i32> = Field {
    path: "maxUnackedMessagesPerConsumer",
    what: "max unacked messages per consumer",
    check: check_count,
    limit: no_limit,
    ns_get: |n, _| n.max_unacked_messages_per_consumer,
    ns_put: |n, _, v| n.max_unacked_messages_per_consumer = v,
    topic: None,
};

/// Namespace level (the topic level is [`MAX_UNACKED_ON_SUBSCRIPTION`]).
pub static MAX_UNACKED_PER_SUBSCRIPTION: Field<i32> = Field {
    path: "maxUnackedMessagesPerSubscription",
    what: "max unacked messages per subscription",
    check: check_count,
    limit: no_limit,
    ns_get: |n, _| n.max_unacked_messages_per_subscription,
    ns_put: |n, _, v| n.max_unacked_messages_per_subscription = v,
    topic: None,
};

/// Topic level: Pulsar names the topic's route `…OnConsumer`, the namespace's
/// `…PerConsumer`; the topic's value overrides the namespace's.
pub static MAX_UNACKED_ON_CONSUMER: Field<i32> = Field {
    path: "maxUnackedMessagesOnConsumer",
    what: "max unacked messages per consumer",
    check: check_count,
    limit: no_limit,
    ns_get: |_, _| None,
    ns_put: |_, _, _| {},
    topic: Some(|t| &mut t.max_unacked_messages_on_consumer),
};

/// Topic level (see [`MAX_UNACKED_ON_CONSUMER`]).
pub static MAX_UNACKED_ON_SUBSCRIPTION: Field<i32> = Field {
    path: "maxUnackedMessagesOnSubscription",
    what: "max unacked messages per subscription",
    check: check_count,
    limit: no_limit,
    ns_get: |_, _| None,
    ns_put: |_, _, _| {},
    topic: Some(|t| &mut t.max_unacked_messages_on_subscription),
};

/// Namespace level only.
pub static MAX_TOPICS_PER_NAMESPACE: Field<i32> = Field {
    path: "maxTopicsPerNamespace",
    what: "max topics per namespace",
    check: check_count,
    limit: no_limit,
    ns_get: |n, _| n.max_topics_per_namespace,
    ns_put: |n, _, v| n.max_topics_per_namespace = v,
    topic: None,
};

/// Topic level only (the namespace has none in Pulsar either; the broker's
/// `max_message_bytes` is the default).
pub static MAX_MESSAGE_SIZE: Field<i32> = Field {
    path: "maxMessageSize",
    what: "max message size",
    check: check_count,
    limit: no_limit,
    ns_get: |_, _| None,
    ns_put: |_, _, _| {},
    topic: Some(|t| &mut t.max_message_size),
};

pub static DELAYED_DELIVERY: Field<p::DelayedDeliveryPolicies> = Field {
    path: "delayedDelivery",
    what: "delayed delivery",
    check: no_check,
    limit: no_limit,
    ns_get: |n, _| n.delayed_delivery_policies,
    ns_put: |n, _, v| n.delayed_delivery_policies = v,
    topic: Some(|t| &mut t.delayed_delivery),
};

pub static DEDUPLICATION: Field<bool> = Field {
    path: "deduplication",
    what: "deduplication",
    check: no_check,
    limit: no_limit,
    ns_get: |n, _| n.deduplication_enabled,
    ns_put: |n, _, v| n.deduplication_enabled = v,
    topic: Some(|t| &mut t.deduplication_enabled),
};

pub static COMPACTION_THRESHOLD: Field<i64> = Field {
    path: "compactionThreshold",
    what: "compaction threshold",
    check: |v| p::check_compaction_threshold(*v),
    limit: no_limit,
    ns_get: |n, _| n.compaction_threshold,
    ns_put: |n, _, v| n.compaction_threshold = v,
    topic: Some(|t| &mut t.compaction_threshold),
};

/// Namespace level; Pulsar's `offload_threshold`, which it answers as -1
/// when unset and unsets when set to -1 (set with PUT, as Pulsar).
pub static OFFLOAD_THRESHOLD: Field<i64> = Field {
    path: "offloadThreshold",
    what: "offload threshold (bytes kept locally; 0: offload every sealed segment, -1: the broker's default, other negatives: never)",
    check: no_check,
    limit: no_limit,
    ns_get: |n, _| Some(n.namespace_offload_threshold_bytes().unwrap_or(p::OFFLOAD_UNSET)),
    ns_put: |n, _, v| {
        n.offload_threshold = v.filter(|v| *v != p::OFFLOAD_UNSET);
        // The last value set is the one in force (Pulsar writes both too).
        if let Some(o) = &mut n.offload_policies {
            o.managed_ledger_offload_threshold_in_bytes = None;
        }
    },
    topic: None,
};

/// Namespace level; as [`OFFLOAD_THRESHOLD`], in seconds.
pub static OFFLOAD_THRESHOLD_IN_SECONDS: Field<i64> = Field {
    path: "offloadThresholdInSeconds",
    what: "offload threshold in seconds (age of sealed segments offloaded; -1: the broker's default, other negatives: never)",
    check: no_check,
    limit: no_limit,
    ns_get: |n, _| Some(n.namespace_offload_threshold_secs().unwrap_or(p::OFFLOAD_UNSET)),
    ns_put: |n, _, v| {
        n.offload_threshold_in_seconds = v.filter(|v| *v != p::OFFLOAD_UNSET);
        if let Some(o) = &mut n.offload_policies {
            o.managed_ledger_offload_threshold_in_seconds = None;
        }
    },
    topic: None,
};

/// Namespace level (set with PUT, as Pulsar); unset: the broker's default.
pub static OFFLOAD_DELETION_LAG: Field<i64> = Field {
    path: "offloadDeletionLagMs",
    what: "offload deletion lag (milliseconds the local copy of an offloaded segment is kept)",
    check: |v| p::check_offload_deletion_lag(*v),
    limit: no_limit,
    ns_get: |n, _| n.namespace_offload_deletion_lag_ms(),
    ns_put: |n, _, v| {
        n.offload_deletion_lag_ms = v;
        if let Some(o) = &mut n.offload_policies {
            o.managed_ledger_offload_deletion_lag_in_millis = None;
        }
    },
    topic: None,
};

/// Namespace level: where offloaded segments go, and thresholds and a lag
/// that take precedence over the three above. Pulsar removes them at
/// `DELETE …/removeOffloadPolicies` ([`remove_namespace_offload_policies`]).
pub static NAMESPACE_OFFLOAD_POLICIES: Field<p::OffloadPolicies> = Field {
    path: "offloadPolicies",
    what: "offload policies",
    check: p::check_namespace_offload_policies,
    limit: no_limit,
    ns_get: |n, _| n.offload_policies.clone(),
    ns_put: |n, _, v| n.offload_policies = v,
    topic: None,
};

/// Topic level: Pulsar keeps a topic's offload thresholds and deletion lag
/// in its `offloadPolicies`.
pub static TOPIC_OFFLOAD_POLICIES: Field<p::OffloadPolicies> = Field {
    path: "offloadPolicies",
    what: "offload policies",
    check: p::check_offload_policies,
    limit: no_limit,
    ns_get: |_, _| None,
    ns_put: |_, _, _| {},
    topic: Some(|t| &mut t.offload_policies),
};

pub static SUBSCRIBE_RATE: Field<p::SubscribeRate> = Field {
    path: "subscribeRate",
    what: "subscribe rate per consumer",
    check: p::check_subscribe_rate,
    limit: no_limit,
    ns_get: |n, c| n.cluster_subscribe_rate.get(c).copied(),
    ns_put: |n, c, v| put_cluster(&mut n.cluster_subscribe_rate, c, v),
    topic: Some(|t| &mut t.subscribe_rate),
};

/// Namespace level only; minutes, as Pulsar's body.
pub static SUBSCRIPTION_EXPIRATION_TIME: Field<i32> = Field {
    path: "subscriptionExpirationTime",
    what: "subscription expiration time (minutes)",
    check: |v| p::check_subscription_expiration(*v),
    limit: no_limit,
    ns_get: |n, _| n.subscription_expiration_time_minutes,
    ns_put: |n, _, v| n.subscription_expiration_time_minutes = v,
    topic: None,
};

/// Namespace level only (Pulsar has no topic-level override of it).
pub static AUTO_TOPIC_CREATION: Field<p::AutoTopicCreationOverride> = Field {
    path: "autoTopicCreation",
    what: "auto topic creation",
    check: p::check_auto_topic_creation,
    limit: auto_creation_limit,
    ns_get: |n, _| n.auto_topic_creation_override,
    ns_put: |n, _, v| n.auto_topic_creation_override = v,
    topic: None,
};

fn put_cluster<T>(map: &mut std::collections::BTreeMap<String, T>, cluster: &str, v: Option<T>) {
    match v {
        Some(v) => {
            map.insert(cluster.to_owned(), v);
        }
        None => {
            map.remove(cluster);
        }
    }
}

/// A policy's value as a GET answers it: the value, or 204 when unset.
pub fn answer<T: Serialize>(v: Option<T>) -> Response {
    match v {
        Some(v) => Json(v).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

fn namespace(tenant: &str, ns: &str) -> ApiResult<NamespaceName> {
    Ok(NamespaceName::new(tenant, ns)?)
}

/// The method that sets a namespace policy: POST for most, PUT for the
/// few Pulsar sets with PUT.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SetWith {
    Post,
    Put,
    /// Pulsar's PUT, and the POST Kilonova's CLI has sent since before.
    PutOrPost,
}

/// Adds the namespace-level routes of `field`, set with POST.
pub fn namespace_routes<T>(api: Api, field: &'static Field<T>) -> Api
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    namespace_routes_set_with(api, field, SetWith::Post)
}

/// Adds the namespace-level routes of `field`, set with `set_with`.
pub fn namespace_routes_set_with<T>(api: Api, field: &'static Field<T>, set_with: SetWith) -> Api
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let path = format!(
        "/admin/v2/namespaces/{{tenant}}/{{namespace}}/{}",
        field.path
    );
    let get_doc = format!("Get the namespace's {}", field.what);
    let set_doc = format!("Set the namespace's {}", field.what);
    let del_doc = format!("Remove the namespace's {}", field.what);
    let set = move |State(b): State<Broker>, Path((t, n)): Path<(String, String)>, body: Bytes| async move {
        let ns = namespace(&t, &n)?;
        let value: T = json_body(&body)?;
        (field.check)(&value)?;
        (field.limit)(&value, &b, &ns).await?;
        let cluster = b.config().cluster_name.clone();
        b.resources()
            .update_namespace(&ns, |p| {
                (field.ns_put)(p, &cluster, Some(value.clone()));
                Ok(())
            })
            .await?;
        tracing::info!(namespace = %ns, policy = field.path, "namespace policy set");
        ApiResult::Ok(StatusCode::NO_CONTENT)
    };
    let methods = get(
        move |State(b): State<Broker>, Path((t, n)): Path<(String, String)>| async move {
            let ns = namespace(&t, &n)?;
            let policies = b.resources().namespace(&ns).await?;
            ApiResult::Ok(answer((field.ns_get)(&policies, &b.config().cluster_name)))
        },
    )
    .delete(
        move |State(b): State<Broker>, Path((t, n)): Path<(String, String)>| async move {
            let ns = namespace(&t, &n)?;
            let cluster = b.config().cluster_name.clone();
            b.resources()
                .update_namespace(&ns, |p| {
                    (field.ns_put)(p, &cluster, None);
                    Ok(())
                })
                .await?;
            ApiResult::Ok(StatusCode::NO_CONTENT)
        },
    );
    let (methods, set_methods): (_, &[&'static str]) = match set_with {
        SetWith::Post => (methods.post(set), &["POST"]),
        SetWith::Put => (methods.put(set), &["PUT"]),
        SetWith::PutOrPost => (methods.put(set).post(set), &["PUT", "POST"]),
    };
    let mut docs = vec![("GET", Access::TenantAdmin, get_doc.as_str())];
    docs.extend(
        set_methods
            .iter()
            .map(|m| (*m, Access::TenantAdmin, set_doc.as_str())),
    );
    docs.push(("DELETE", Access::TenantAdmin, del_doc.as_str()));
    api.route(&path, methods, &docs)
}

/// Adds the topic-level routes of `field` (overrides of the namespace's).
pub fn topic_routes<T>(api: Api, field: &'static Field<T>) -> Api
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let Some(slot) = field.topic else {
        return api;
    };
    let path = format!(
        "/admin/v2/{{domain}}/{{tenant}}/{{namespace}}/{{topic}}/{}",
        field.path
    );
    let get_doc = format!(
        "Get the topic's own {} (unset: the namespace's applies)",
        field.what
    );
    let set_doc = format!("Set the topic's {}, overriding the namespace's", field.what);
    let del_doc = format!("Remove the topic's {} override", field.what);
    api.route(
        &path,
        get(
            move |State(b): State<Broker>, Path(tp): Path<TopicPath>| async move {
                let name = topic_name(&tp)?;
                let mut record = b
                    .resources()
                    .topic(&name)
                    .await?
                    .ok_or_else(|| MetadataError::NotFound(format!("topic {name}")))?;
                ApiResult::Ok(answer(slot(&mut record.policies).clone()))
            },
        )
        .post(
            move |State(b): State<Broker>, Path(tp): Path<TopicPath>, body: Bytes| async move {
                let name = topic_name(&tp)?;
                let value: T = json_body(&body)?;
                (field.check)(&value)?;
                (field.limit)(&value, &b, &name.namespace()).await?;
                b.resources()
                    .update_topic(&name, |t| {
                        *slot(&mut t.policies) = Some(value.clone());
                        Ok(())
                    })
                    .await?;
                tracing::info!(topic = %name, policy = field.path, "topic policy set");
                ApiResult::Ok(StatusCode::NO_CONTENT)
            },
        )
        .delete(
            move |State(b): State<Broker>, Path(tp): Path<TopicPath>| async move {
                let name = topic_name(&tp)?;
                b.resources()
                    .update_topic(&name, |t| {
                        *slot(&mut t.policies) = None;
                        Ok(())
                    })
                    .await?;
                ApiResult::Ok(StatusCode::NO_CONTENT)
            },
        ),
        &[
            ("GET", Access::TenantAdmin, &get_doc),
            ("POST", Access::TenantAdmin, &set_doc),
            ("DELETE", Access::TenantAdmin, &del_doc),
        ],
    )
}

/// Pulsar's route that removes a namespace's offload policies.
fn remove_namespace_offload_policies(api: Api) -> Api {
    api.route(
        "/admin/v2/namespaces/{tenant}/{namespace}/removeOffloadPolicies",
        axum::routing::delete(
            |State(b): State<Broker>, Path((t, n)): Path<(String, String)>| async move {
                let ns = namespace(&t, &n)?;
                b.resources()
                    .update_namespace(&ns, |p| {
                        p.offload_policies = None;
                        Ok(())
                    })
                    .await?;
                ApiResult::Ok(StatusCode::NO_CONTENT)
            },
        ),
        &[(
            "DELETE",
            Access::TenantAdmin,
            "Remove the namespace's offload policies (as DELETE …/offloadPolicies)",
        )],
    )
}

/// Every policy's routes at both levels.
pub fn routes(api: Api) -> Api {
    let api = namespace_routes(api, &RETENTION);
    let api = namespace_routes(api, &MESSAGE_TTL);
    let api = namespace_routes(api, &PUBLISH_RATE);
    let api = namespace_routes(api, &DISPATCH_RATE);
    let api = namespace_routes(api, &SUBSCRIPTION_DISPATCH_RATE);
    let api = namespace_routes(api, &REPLICATOR_DISPATCH_RATE);
    let api = namespace_routes(api, &INACTIVE_TOPIC);
    let api = namespace_routes(api, &MAX_PRODUCERS);
    let api = namespace_routes(api, &MAX_CONSUMERS);
    let api = namespace_routes(api, &MAX_CONSUMERS_PER_SUBSCRIPTION);
    let api = namespace_routes(api, &MAX_TOPICS_PER_NAMESPACE);
    let api = namespace_routes(api, &MAX_UNACKED_PER_CONSUMER);
    let api = namespace_routes(api, &MAX_UNACKED_PER_SUBSCRIPTION);
    let api = namespace_routes(api, &DELAYED_DELIVERY);
    let api = namespace_routes(api, &DEDUPLICATION);
    let api = namespace_routes(api, &AUTO_TOPIC_CREATION);
    let api = namespace_routes_set_with(api, &COMPACTION_THRESHOLD, SetWith::PutOrPost);
    let api = namespace_routes_set_with(api, &OFFLOAD_THRESHOLD, SetWith::Put);
    let api = namespace_routes_set_with(api, &OFFLOAD_THRESHOLD_IN_SECONDS, SetWith::Put);
    let api = namespace_routes_set_with(api, &OFFLOAD_DELETION_LAG, SetWith::Put);
    let api = namespace_routes(api, &NAMESPACE_OFFLOAD_POLICIES);
    let api = remove_namespace_offload_policies(api);
    let api = namespace_routes(api, &SUBSCRIBE_RATE);
    let api = namespace_routes(api, &SUBSCRIPTION_EXPIRATION_TIME);
    let api = topic_routes(api, &SUBSCRIBE_RATE);
    let api = topic_routes(api, &COMPACTION_THRESHOLD);
    let api = topic_routes(api, &TOPIC_OFFLOAD_POLICIES);
    let api = topic_routes(api, &RETENTION);
    let api = topic_routes(api, &MESSAGE_TTL);
    let api = topic_routes(api, &PUBLISH_RATE);
    let api = topic_routes(api, &DISPATCH_RATE);
    let api = topic_routes(api, &SUBSCRIPTION_DISPATCH_RATE);
    let api = topic_routes(api, &REPLICATOR_DISPATCH_RATE);
    let api = topic_routes(api, &TOPIC_REPLICATION_CLUSTERS);
    let api = topic_routes(api, &INACTIVE_TOPIC);
    let api = topic_routes(api, &MAX_PRODUCERS);
    let api = topic_routes(api, &MAX_CONSUMERS);
    let api = topic_routes(api, &MAX_CONSUMERS_PER_SUBSCRIPTION);
    let api = topic_routes(api, &MAX_MESSAGE_SIZE);
    let api = topic_routes(api, &DELAYED_DELIVERY);
    let api = topic_routes(api, &MAX_UNACKED_ON_CONSUMER);
    let api = topic_routes(api, &MAX_UNACKED_ON_SUBSCRIPTION);
    topic_routes(api, &DEDUPLICATION)
}
