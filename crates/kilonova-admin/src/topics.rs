//! Topic routes (`/admin/v2/{persistent|non-persistent}/{tenant}/{namespace}…`):
//! list, create, partitions, delete, stats, internal stats, unload,
//! subscriptions (create, delete, skip, reset cursor, expire, peek) and the
//! last message id. Operations on a partitioned topic apply to every partition.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use kilonova_broker::{check_servable, AdminReply, AdminRequest, Broker, Position, ResetTo};
use kilonova_metadata::{Domain, NamespaceName, TopicName};

use crate::api::{Access, Api};
use crate::error::{json_body, ApiError, ApiResult};
use crate::fan_out::{each, on_owner, Incoming, PartitionReply};
use crate::namespaces::Force;
use kilonova_auth::Want;

#[derive(Deserialize)]
pub struct TopicPath {
    pub domain: String,
    pub tenant: String,
    pub namespace: String,
    pub topic: String,
}

#[derive(Deserialize)]
struct NsPath {
    domain: String,
    tenant: String,
    namespace: String,
}

#[derive(Deserialize)]
pub(crate) struct SubPath {
    domain: String,
    tenant: String,
    namespace: String,
    topic: String,
    pub(crate) subscription: String,
}

fn domain(d: &str) -> ApiResult<Domain> {
    d.parse()
        .map_err(|_| ApiError::not_found(format!("no such route: unknown topic domain {d:?}")))
}

pub fn topic_name(p: &TopicPath) -> ApiResult<TopicName> {
    let d = domain(&p.domain)?;
    Ok(TopicName::parse(&format!(
        "{}://{}/{}/{}",
        d.as_str(),
        p.tenant,
        p.namespace,
        p.topic
    ))?)
}

pub(crate) fn sub_topic(p: &SubPath) -> ApiResult<TopicName> {
    topic_name(&TopicPath {
        domain: p.domain.clone(),
        tenant: p.tenant.clone(),
        namespace: p.namespace.clone(),
        topic: p.topic.clone(),
    })
}

pub fn routes(api: Api) -> Api {
    const T: &str = "/admin/v2/{domain}/{tenant}/{namespace}/{topic}";
    const S: &str = "/admin/v2/{domain}/{tenant}/{namespace}/{topic}/subscription/{subscription}";
    api.route(
        "/admin/v2/{domain}/{tenant}/{namespace}",
        get(list),
        &[("GET", Access::Namespace(Want::Lookup), "List the namespace's topics (partitions of partitioned topics included); ?limit=N&after=NAME pages through them")],
    )
    .route(
        "/admin/v2/{domain}/{tenant}/{namespace}/partitioned",
        get(list_partitioned),
        &[("GET", Access::Namespace(Want::Lookup), "List the namespace's partitioned topics")],
    )
    .route(
        T,
        put(create).delete(delete),
        &[
            ("PUT", Access::TenantAdmin, "Create a non-partitioned topic (409 if it exists)"),
            ("DELETE", Access::TenantAdmin, "Delete a topic and its data (412 with connected clients unless ?force=true)"),
        ],
    )
    .route(
        &format!("{T}/partitions"),
        get(get_partitions)
            .put(create_partitioned)
            .post(update_partitions)
            .delete(delete_partitioned),
        &[
            ("GET", Access::Topic(Want::Lookup), "Partitioned-topic metadata: {\"partitions\": N} (0: not partitioned)"),
            ("PUT", Access::TenantAdmin, "Create a partitioned topic; body: the partition count"),
            ("POST", Access::TenantAdmin, "Grow a partitioned topic; body: the new partition count"),
            ("DELETE", Access::TenantAdmin, "Delete a partitioned topic and all its partitions (?force=true)"),
        ],
    )
    .route(&format!("{T}/stats"), get(stats), &[("GET", Access::Topic(Want::Lookup), "Topic stats: rates, counters, storage, publishers, subscriptions")])
    .route(
        &format!("{T}/partitioned-stats"),
        get(partitioned_stats),
        &[("GET", Access::Topic(Want::Lookup), "Stats of a partitioned topic, summed over its partitions, with each partition's unless ?perPartition=false; loads no partition (one not loaded reports its stored state)")],
    )
    .route(&format!("{T}/internalStats"), get(internal_stats), &[("GET", Access::Topic(Want::Lookup), "Storage view: ledgers (segments) and cursors")])
    .route(&format!("{T}/unload"), put(unload), &[("PUT", Access::TenantAdmin, "Unload the topic (clients reconnect)")])
    .route(&format!("{T}/subscriptions"), get(subscriptions), &[("GET", Access::Topic(Want::Consume), "List the topic's subscriptions")])
    .route(&format!("{T}/lastMessageId"), get(last_message_id), &[("GET", Access::Topic(Want::Consume), "The last message's id {ledgerId, entryId}")])
    .route(
        S,
        put(create_subscription).delete(delete_subscription),
        &[
            ("PUT", Access::Topic(Want::Consume), "Create a durable subscription; body: optional MessageId to start at (default: the end)"),
            ("DELETE", Access::Topic(Want::Consume), "Delete a subscription (412 with connected consumers unless ?force=true)"),
        ],
    )
    .route(
        &format!("{S}/skip_all"),
        post(skip_all),
        &[("POST", Access::Topic(Want::Consume), "Acknowledge everything published so far on the subscription (clear its backlog); consumers stay connected")],
    )
    .route(&format!("{S}/skip/{{count}}"), post(skip), &[("POST", Access::Topic(Want::Consume), "Acknowledge the subscription's next N messages")])
    .route(
        &format!("{S}/resetcursor/{{timestamp}}"),
        post(reset_to_time),
        &[("POST", Access::Topic(Want::Consume), "Move the subscription to the first message published at or after a time (ms)")],
    )
    .route(
        &format!("{S}/resetcursor"),
        post(reset_to_id),
        &[("POST", Access::Topic(Want::Consume), "Move the subscription to a message id; body: {ledgerId, entryId}")],
    )
    .route(
        &format!("{S}/expireMessages/{{seconds}}"),
        post(expire),
        &[("POST", Access::Topic(Want::Consume), "Acknowledge the subscription's messages older than N seconds")],
    )
    .route(
        &format!("{T}/all_subscription/expireMessages/{{seconds}}"),
        post(expire_all),
        &[("POST", Access::Topic(Want::Consume), "Acknowledge every subscription's messages older than N seconds")],
    )
    .route(
        &format!("{S}/position/{{n}}"),
        get(peek),
        &[("GET", Access::Topic(Want::Consume), "Peek at the subscription's N-th unacknowledged message (from 1): the payload, with X-Pulsar-* headers")],
    )
}

/// The topics an operation on `name` reaches: its partitions if it is
/// partitioned, else itself. 404 if it does not exist.
pub(crate) async fn targets(b: &Broker, name: &TopicName) -> ApiResult<Vec<TopicName>> {
    match b.resources().topic(name).await? {
        None => Err(ApiError::not_found(format!("topic {name} not found"))),
        Some(t) if t.partitions > 0 => {
            check_servable(name, &t)?;
            Ok((0..t.partitions).map(|i| name.partition_name(i)).collect())
        }
        Some(_) => Ok(vec![name.clone()]),
    }
}

/// A verb Pulsar serves per partition only: a partitioned topic's base
/// name is refused (405), `ask` saying what to do instead.
pub(crate) async fn refuse_partitioned(b: &Broker, name: &TopicName, ask: &str) -> ApiResult<()> {
    if b.resources()
        .topic(name)
        .await?
        .is_some_and(|t| t.partitions > 0)
    {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{name} is a partitioned topic: {ask}"),
        ));
    }
    Ok(())
}

pub(crate) fn done(_: Vec<PartitionReply>) -> StatusCode {
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct Paging {
    limit: Option<usize>,
    after: Option<String>,
}

async fn list(
    State(b): State<Broker>,
    Path(p): Path<NsPath>,
    Query(q): Query<Paging>,
) -> ApiResult<Json<Vec<String>>> {
    let d = domain(&p.domain)?;
    let ns = NamespaceName::new(&p.tenant, &p.namespace)?;
    let r = b.resources();
    let Some(limit) = q.limit else {
        return Ok(Json(r.topics_of_namespace(&ns, Some(d)).await?));
    };
    if !r.namespace_exists(&ns).await? {
        return Err(ApiError::not_found(format!("namespace {ns} not found")));
    }
    // A page of topic records, partitioned ones expanded (a Kilonova extension).
    // `after` may be a local name or a full one.
    let after = q
        .after
        .as_deref()
        .map(|a| a.rsplit('/').next().unwrap_or(a));
    if after.is_some_and(str::is_empty) {
        return Err(ApiError::bad_request("after must name a topic"));
    }
    let page = r.topic_page(&ns, d, after, limit.clamp(1, 100_000)).await?;
    let mut out = Vec::new();
    for local in page.names {
        let name = TopicName {
            domain: d,
            tenant: ns.tenant.clone(),
            namespace: ns.namespace.clone(),
            local,
        };
        match r.topic(&name).await? {
            Some(t) if t.is_oversized() => {
                tracing::warn!(topic = %name, partitions = t.partitions, "not listing the partitions of an oversized partitioned topic (delete it)");
            }
            Some(t) if t.partitions > 0 => {
                out.extend((0..t.partitions).map(|i| name.partition_name(i).to_string()))
            }
            Some(_)
                if name.partition().is_some()
                    && r.topic(&name.partitioned_topic())
                        .await?
                        .is_some_and(|t| t.partitions > 0) => {}
            Some(_) => out.push(name.to_string()),
            None => {}
        }
    }
    Ok(Json(out))
}

async fn list_partitioned(
    State(b): State<Broker>,
    Path(p): Path<NsPath>,
) -> ApiResult<Json<Vec<String>>> {
    let d = domain(&p.domain)?;
    let ns = NamespaceName::new(&p.tenant, &p.namespace)?;
    if !b.resources().namespace_exists(&ns).await? {
        return Err(ApiError::not_found(format!("namespace {ns} not found")));
    }
    let names = b
        .resources()
        .topics(&ns, d)
        .await?
        .into_iter()
        .filter(|(_, t)| t.partitions > 0)
        .map(|(n, _)| n.to_string())
        .collect();
    Ok(Json(names))
}

async fn create(State(b): State<Broker>, Path(p): Path<TopicPath>) -> ApiResult<StatusCode> {
    let name = topic_name(&p)?;
    if name.partition().is_some()
        && b.resources()
            .topic(&name.partitioned_topic())
            .await?
            .is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{name} is a partition of an existing partitioned topic"),
        ));
    }
    b.check_topic_quota(&name.namespace(), 1).await?;
    b.resources().create_topic(&name, 0).await?;
    tracing::info!(topic = %name, "topic created");
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes `name` (every partition of a partitioned topic, on the broker
/// serving each: `incoming` is the caller's request, for its credentials).
pub async fn delete_topic_everywhere(
    b: &Broker,
    name: &TopicName,
    force: bool,
    incoming: &Incoming,
) -> ApiResult<()> {
    let record = b
        .resources()
        .topic(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("topic {name} not found")))?;
    if record.partitions == 0 {
        return delete_one(b, name, force, incoming).await;
    }
    let partitions = b.used_partitions(name, record.partitions).await?;
    if !force {
        if let Some(p) = partitions.iter().find(|p| b.has_clients(p)) {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!("partition {p} has connected producers or consumers (use force)"),
            ));
        }
    }
    // Partitions other brokers serve first: each refuses there if its
    // clients are connected and `force` is not set, before anything here goes.
    let mut here = Vec::new();
    for p in partitions {
        match b.other_owner(&p).await? {
            Some(_) => delete_one(b, &p, force, incoming).await?,
            None => here.push(p),
        }
    }
    for p in &here {
        if b.resources().topic(p).await?.is_some() {
            delete_one(b, p, true, incoming).await?;
        }
    }
    b.resources().delete_topic(name).await?;
    Ok(())
}

/// Deletes one topic that is not partitioned (or a partition) where it is
/// served: here, or on its owner (with the caller's credentials).
async fn delete_one(
    b: &Broker,
    name: &TopicName,
    force: bool,
    incoming: &Incoming,
) -> ApiResult<()> {
    match b.other_owner(name).await? {
        Some(owner) => {
            let delete = incoming.about("DELETE", name, "", Some(format!("force={force}")));
            on_owner(b, &delete, name, owner).await?;
        }
        None => {
            b.topic_admin(name, AdminRequest::Delete { force }).await?;
        }
    }
    Ok(())
}

async fn delete(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    Query(q): Query<Force>,
    incoming: Incoming,
) -> ApiResult<StatusCode> {
    let name = topic_name(&p)?;
    if b.resources()
        .topic(&name)
        .await?
        .is_some_and(|t| t.partitions > 0)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{name} is a partitioned topic: delete it with DELETE …/partitions"),
        ));
    }
    delete_topic_everywhere(&b, &name, q.force, &incoming).await?;
    tracing::info!(topic = %name, force = q.force, "topic deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn get_partitions(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
) -> ApiResult<Json<Value>> {
    let name = topic_name(&p)?;
    Ok(Json(json!({ "partitions": b.partitions(&name).await? })))
}

fn partition_count(body: &[u8]) -> ApiResult<u32> {
    let n: i64 = json_body(body)?;
    match u32::try_from(n) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "the partition count must be a positive integer, not {n}"
        ))),
    }
}

async fn create_partitioned(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let name = topic_name(&p)?;
    let n = partition_count(&body)?;
    b.check_partition_count(n)?;
    b.check_topic_quota(&name.namespace(), n).await?;
    b.resources().create_topic(&name, n).await?;
    tracing::info!(topic = %name, partitions = n, "partitioned topic created");
    Ok(StatusCode::NO_CONTENT)
}

async fn update_partitions(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let name = topic_name(&p)?;
    let n = partition_count(&body)?;
    b.check_partition_count(n)?;
    b.resources().update_partitions(&name, n).await?;
    tracing::info!(topic = %name, partitions = n, "partitioned topic grown");
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_partitioned(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    Query(q): Query<Force>,
    incoming: Incoming,
) -> ApiResult<StatusCode> {
    let name = topic_name(&p)?;
    match b.resources().topic(&name).await? {
        Some(t) if t.partitions > 0 => {}
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{name} is not a partitioned topic"),
            ))
        }
        None => {
            return Err(ApiError::not_found(format!(
                "partitioned topic {name} not found"
            )))
        }
    }
    delete_topic_everywhere(&b, &name, q.force, &incoming).await?;
    tracing::info!(topic = %name, force = q.force, "partitioned topic deleted");
    Ok(StatusCode::NO_CONTENT)
}

fn to_json(v: &impl serde::Serialize) -> ApiResult<Value> {
    serde_json::to_value(v)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn stats(State(b): State<Broker>, Path(p): Path<TopicPath>) -> ApiResult<Json<Value>> {
    let name = topic_name(&p)?;
    match b.topic_admin(&name, AdminRequest::Stats).await? {
        AdminReply::Stats(s) => Ok(Json(to_json(&s)?)),
        _ => Err(unexpected()),
    }
}

pub(crate) fn unexpected() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the topic answered another request",
    )
}

#[derive(Deserialize)]
struct PartitionedStatsQuery {
    /// Pulsar's `perPartition`: include each partition's stats (default true).
    #[serde(rename = "perPartition", default = "yes")]
    per_partition: bool,
}

fn yes() -> bool {
    true
}

/// Sums the counters of the partitions' stats; subscriptions are merged by
/// name. Loads no partition: one not loaded reports its stored state
/// ([`Broker::partition_stats`]).
async fn partitioned_stats(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    Query(q): Query<PartitionedStatsQuery>,
    incoming: Incoming,
) -> ApiResult<Json<Value>> {
    let name = topic_name(&p)?;
    let record = b
        .resources()
        .topic(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("topic {name} not found")))?;
    let parts: Vec<(TopicName, Value)> = if record.partitions == 0 {
        let AdminReply::Stats(s) = b.topic_admin(&name, AdminRequest::Stats).await? else {
            return Err(unexpected());
        };
        vec![(name.clone(), to_json(&s)?)]
    } else {
        check_servable(&name, &record)?;
        let stats = b.partition_stats(&name, record.partitions).await?;
        let mut parts = Vec::with_capacity(stats.len());
        for (i, s) in (0..record.partitions).zip(&stats) {
            let partition = name.partition_name(i);
            // In a cluster, a partition another broker serves: its stats there.
            let stats = match b.other_owner(&partition).await? {
                Some(owner) => {
                    let get = incoming.about("GET", &partition, "/stats", None);
                    json_body(&on_owner(&b, &get, &partition, owner).await?)?
                }
                None => to_json(s)?,
            };
            parts.push((partition, stats));
        }
        parts
    };
    let mut total = json!({"metadata": {"partitions": parts.len()}, "partitions": {}});
    // Rates add up as decimals; counters and sizes stay integers, as
    // Pulsar's (a client reading `msgInCounter` as a long must not get 3.0).
    const RATES: [&str; 4] = [
        "msgRateIn",
        "msgThroughputIn",
        "msgRateOut",
        "msgThroughputOut",
    ];
    const COUNTERS: [&str; 6] = [
        "msgInCounter",
        "bytesInCounter",
        "msgOutCounter",
        "bytesOutCounter",
        "storageSize",
        "backlogSize",
    ];
    let mut publishers = Vec::new();
    for (t, v) in parts {
        for key in RATES {
            let add = v.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            let cur = total.get(key).and_then(Value::as_f64).unwrap_or(0.0);
            total[key] = json!(cur + add);
        }
        for key in COUNTERS {
            let add = v.get(key).and_then(Value::as_u64).unwrap_or(0);
            let cur = total.get(key).and_then(Value::as_u64).unwrap_or(0);
            total[key] = json!(cur.saturating_add(add));
        }
        for (sub, sv) in v
            .get("subscriptions")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let backlog = sv.get("msgBacklog").and_then(Value::as_u64).unwrap_or(0);
            let entry = &mut total["subscriptions"][sub];
            let before = entry.get("msgBacklog").and_then(Value::as_u64).unwrap_or(0);
            entry["msgBacklog"] = json!(before + backlog);
        }
        if let Some(pubs) = v.get("publishers").and_then(Value::as_array) {
            publishers.extend(pubs.iter().cloned());
        }
        if q.per_partition {
            total["partitions"][t.to_string()] = v;
        }
    }
    total["publishers"] = Value::Array(publishers);
    Ok(Json(total))
}

async fn internal_stats(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
) -> ApiResult<Json<Value>> {
    let name = topic_name(&p)?;
    match b.topic_admin(&name, AdminRequest::InternalStats).await? {
        AdminReply::InternalStats(s) => Ok(Json(to_json(&s)?)),
        _ => Err(unexpected()),
    }
}

async fn unload(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    incoming: Incoming,
) -> ApiResult<StatusCode> {
    let name = topic_name(&p)?;
    let replies = each(&b, &name, &incoming, || AdminRequest::Unload).await?;
    tracing::info!(topic = %name, "topic unloaded");
    Ok(done(replies))
}

async fn subscriptions(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    incoming: Incoming,
) -> ApiResult<Json<Vec<String>>> {
    let name = topic_name(&p)?;
    let mut names = Vec::new();
    for r in each(&b, &name, &incoming, || AdminRequest::Subscriptions).await? {
        match r {
            PartitionReply::Here(AdminReply::Names(n)) => names.extend(n),
            PartitionReply::Here(_) => {}
            PartitionReply::There(body) => names.extend(json_body::<Vec<String>>(&body)?),
        }
    }
    names.sort();
    names.dedup();
    Ok(Json(names))
}

async fn last_message_id(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
) -> ApiResult<Json<Value>> {
    let name = topic_name(&p)?;
    match b.topic_admin(&name, AdminRequest::LastMessageId).await? {
        AdminReply::LastMessageId(id) => Ok(Json(to_json(&id)?)),
        _ => Err(unexpected()),
    }
}

/// A MessageId body: `{ledgerId, entryId[, partitionIndex]}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MessageIdBody {
    ledger_id: i64,
    entry_id: i64,
    #[serde(default = "minus_one")]
    partition_index: i32,
}

fn minus_one() -> i32 {
    -1
}

impl MessageIdBody {
    /// Pulsar's `MessageId.earliest` is (-1, -1), `latest` is (Long.MAX, Long.MAX).
    pub(crate) fn target(&self) -> ResetTo {
        match (self.ledger_id, self.entry_id) {
            (l, _) if l < 0 => ResetTo::Earliest,
            (i64::MAX, _) => ResetTo::Latest,
            (l, e) => ResetTo::Position(Position::new(l as u64, e.max(0) as u64)),
        }
    }
}

async fn create_subscription(
    State(b): State<Broker>,
    Path(p): Path<SubPath>,
    incoming: Incoming,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let incoming = incoming.with_body(body.clone());
    let name = sub_topic(&p)?;
    let start = if body.iter().all(u8::is_ascii_whitespace) {
        ResetTo::Latest
    } else {
        json_body::<MessageIdBody>(&body)?.target()
    };
    let sub = p.subscription.clone();
    let replies = each(&b, &name, &incoming, || AdminRequest::CreateSubscription {
        name: sub.clone(),
        start,
    })
    .await?;
    tracing::info!(topic = %name, subscription = %p.subscription, "subscription created");
    Ok(done(replies))
}

async fn delete_subscription(
    State(b): State<Broker>,
    Path(p): Path<SubPath>,
    Query(q): Query<Force>,
    incoming: Incoming,
) -> ApiResult<StatusCode> {
    let name = sub_topic(&p)?;
    let sub = p.subscription.clone();
    let replies = each(&b, &name, &incoming, || AdminRequest::DeleteSubscription {
        name: sub.clone(),
        force: q.force,
    })
    .await?;
    tracing::info!(topic = %name, subscription = %p.subscription, "subscription deleted");
    Ok(done(replies))
}

#[derive(Deserialize)]
struct SkipPath {
    domain: String,
    tenant: String,
    namespace: String,
    topic: String,
    subscription: String,
    count: String,
}

pub(crate) fn number<T: std::str::FromStr>(what: &str, v: &str) -> ApiResult<T> {
    v.parse().map_err(|_| {
        ApiError::bad_request(format!("{what} must be a non-negative integer, not {v:?}"))
    })
}

fn sub_path(
    domain: String,
    tenant: String,
    namespace: String,
    topic: String,
    subscription: String,
) -> SubPath {
    SubPath {
        domain,
        tenant,
        namespace,
        topic,
        subscription,
    }
}

async fn skip(
    State(b): State<Broker>,
    Path(p): Path<SkipPath>,
    incoming: Incoming,
) -> ApiResult<StatusCode> {
    let count: u64 = number("the count", &p.count)?;
    let sp = sub_path(p.domain, p.tenant, p.namespace, p.topic, p.subscription);
    let name = sub_topic(&sp)?;
    let replies = each(&b, &name, &incoming, || AdminRequest::Skip {
        subscription: sp.subscription.clone(),
        count,
    })
    .await?;
    Ok(done(replies))
}

async fn skip_all(
    State(b): State<Broker>,
    Path(p): Path<SubPath>,
    incoming: Incoming,
) -> ApiResult<StatusCode> {
    let name = sub_topic(&p)?;
    let replies = each(&b, &name, &incoming, || AdminRequest::ClearBacklog {
        subscription: Some(p.subscription.clone()),
    })
    .await?;
    tracing::info!(topic = %name, subscription = %p.subscription, "backlog cleared");
    Ok(done(replies))
}

#[derive(Deserialize)]
struct TimePath {
    domain: String,
    tenant: String,
    namespace: String,
    topic: String,
    subscription: String,
    timestamp: String,
}

async fn reset_to_time(
    State(b): State<Broker>,
    Path(p): Path<TimePath>,
    incoming: Incoming,
) -> ApiResult<StatusCode> {
    let ms: u64 = number("the timestamp", &p.timestamp)?;
    let sp = sub_path(p.domain, p.tenant, p.namespace, p.topic, p.subscription);
    let name = sub_topic(&sp)?;
    let replies = each(&b, &name, &incoming, || AdminRequest::ResetCursor {
        subscription: sp.subscription.clone(),
        to: ResetTo::PublishTime(ms),
    })
    .await?;
    tracing::info!(topic = %name, subscription = %sp.subscription, ms, "cursor reset to a time");
    Ok(done(replies))
}

async fn reset_to_id(
    State(b): State<Broker>,
    Path(p): Path<SubPath>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let name = sub_topic(&p)?;
    let id: MessageIdBody = json_body(&body)?;
    let to = id.target();
    let target = match b.resources().topic(&name).await? {
        Some(t) if t.partitions > 0 => match u32::try_from(id.partition_index) {
            Ok(i) if i < t.partitions => name.partition_name(i),
            _ => {
                return Err(ApiError::bad_request(
                    "partitionIndex must name one of the topic's partitions",
                ))
            }
        },
        _ => name.clone(),
    };
    b.topic_admin(
        &target,
        AdminRequest::ResetCursor {
            subscription: p.subscription.clone(),
            to,
        },
    )
    .await?;
    tracing::info!(topic = %target, subscription = %p.subscription, "cursor reset to a message id");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ExpirePath {
    domain: String,
    tenant: String,
    namespace: String,
    topic: String,
    subscription: String,
    seconds: String,
}

async fn expire(
    State(b): State<Broker>,
    Path(p): Path<ExpirePath>,
    incoming: Incoming,
) -> ApiResult<StatusCode> {
    let seconds: u64 = number("the age in seconds", &p.seconds)?;
    let sp = sub_path(p.domain, p.tenant, p.namespace, p.topic, p.subscription);
    let name = sub_topic(&sp)?;
    let replies = each(&b, &name, &incoming, || AdminRequest::Expire {
        subscription: Some(sp.subscription.clone()),
        seconds,
    })
    .await?;
    Ok(done(replies))
}

#[derive(Deserialize)]
struct ExpireAllPath {
    domain: String,
    tenant: String,
    namespace: String,
    topic: String,
    seconds: String,
}

async fn expire_all(
    State(b): State<Broker>,
    Path(p): Path<ExpireAllPath>,
    incoming: Incoming,
) -> ApiResult<StatusCode> {
    let seconds: u64 = number("the age in seconds", &p.seconds)?;
    let name = topic_name(&TopicPath {
        domain: p.domain,
        tenant: p.tenant,
        namespace: p.namespace,
        topic: p.topic,
    })?;
    let replies = each(&b, &name, &incoming, || AdminRequest::Expire {
        subscription: None,
        seconds,
    })
    .await?;
    Ok(done(replies))
}

#[derive(Deserialize)]
struct PeekPath {
    domain: String,
    tenant: String,
    namespace: String,
    topic: String,
    subscription: String,
    n: String,
}

async fn peek(State(b): State<Broker>, Path(p): Path<PeekPath>) -> ApiResult<Response> {
    let n: u64 = number("the position", &p.n)?;
    if n == 0 {
        return Err(ApiError::bad_request("positions count from 1"));
    }
    let sp = sub_path(p.domain, p.tenant, p.namespace, p.topic, p.subscription);
    let name = sub_topic(&sp)?;
    let AdminReply::Peeked(found) = b
        .topic_admin(
            &name,
            AdminRequest::Peek {
                subscription: sp.subscription.clone(),
                n,
            },
        )
        .await?
    else {
        return Err(unexpected());
    };
    let m = found.ok_or_else(|| {
        ApiError::not_found(format!(
            "subscription {} has fewer than {n} messages",
            sp.subscription
        ))
    })?;
    Ok(message_response(m))
}

/// An entry as Pulsar's admin API sends a message: the payload as the body,
/// its metadata as `X-Pulsar-*` headers.
pub(crate) fn message_response(m: kilonova_broker::Peeked) -> Response {
    let mut headers = HeaderMap::new();
    let mut put_header = |k: &str, v: String| {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            headers.insert(k, v);
        }
    };
    put_header(
        "X-Pulsar-Message-ID",
        format!("{}:{}", m.position.segment, m.position.entry),
    );
    put_header("X-Pulsar-publish-time", m.publish_time_ms.to_string());
    put_header("X-Pulsar-producer-name", m.producer_name.clone());
    put_header("X-Pulsar-sequence-id", m.sequence_id.to_string());
    put_header("Content-Type", "application/octet-stream".into());
    if let Some(n) = m.batch_size {
        put_header("X-Pulsar-num-batch-message", n.to_string());
    }
    for (k, v) in &m.properties {
        put_header(&format!("X-Pulsar-PROPERTY-{k}"), v.clone());
    }
    (StatusCode::OK, headers, m.data).into_response()
}
