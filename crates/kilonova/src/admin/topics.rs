//! `kilonova admin topics …` → `/admin/v2/{persistent|non-persistent}/…`.

use std::fmt::Write as _;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{ArgGroup, Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use kilonova_metadata::{Domain, NamespaceName, TopicName, TopicNameError};

use super::client::{AdminClient, AdminError, ApiPath, Reply, ResourcePath};
use super::{permissions, topic_policies, units, Output};

#[derive(Subcommand)]
pub enum TopicsCmd {
    /// List a namespace's topics, both domains unless
    /// --topic-domain; --limit/--after page through one domain (persistent
    /// unless --topic-domain).
    List(ListTopics),
    /// List a namespace's partitioned topics.
    ListPartitionedTopics { namespace: NamespaceName },
    /// Create a non-partitioned topic.
    Create { topic: TopicName },
    /// Create a partitioned topic.
    CreatePartitionedTopic(Partitions),
    /// Grow a partitioned topic to more partitions.
    UpdatePartitionedTopic(Partitions),
    /// Show a partitioned topic's partition count.
    GetPartitionedTopicMetadata { topic: TopicName },
    /// Delete a topic (with --force, even with producers or consumers).
    Delete(DeleteTopic),
    /// Delete a partitioned topic and its partitions.
    DeletePartitionedTopic(DeleteTopic),
    /// A topic's statistics.
    Stats { topic: TopicName },
    /// A topic's storage-level statistics (ledgers, cursors).
    StatsInternal { topic: TopicName },
    /// Close the topic on its broker; clients reconnect.
    Unload { topic: TopicName },
    /// List a topic's subscriptions.
    Subscriptions { topic: TopicName },
    /// Create a subscription.
    CreateSubscription(CreateSubscription),
    /// Delete a subscription (with --force, even with consumers).
    Unsubscribe(Unsubscribe),
    /// Skip messages of a subscription's backlog.
    Skip(Skip),
    /// Move a subscription's cursor back (or forward) to a time or a message.
    ResetCursor(ResetCursor),
    /// Skip a subscription's messages older than a time.
    ExpireMessages(ExpireMessages),
    /// Show messages at the head of a subscription's backlog, without
    /// consuming them.
    PeekMessages(PeekMessages),
    /// Count a subscription's backlog by reading it: entries, and messages in
    /// them (stops at the broker's scan limits, saying "aborted": true).
    AnalyzeBacklog(AnalyzeBacklog),
    /// Mark a subscription replicated (--enable) or not (--disable): its
    /// position is kept in step across the replication clusters.
    SetReplicatedSubscriptionStatus(SetReplicatedSubscriptionStatus),
    /// Whether a subscription is replicated (each partition's).
    GetReplicatedSubscriptionStatus(SubscriptionArgs),
    /// Offload the topic's older segments to the object store, keeping at
    /// most --size-threshold bytes only locally (as pulsar-admin: the broker
    /// is asked to offload everything before the newest segments that fit).
    Offload(OffloadArgs),
    /// How the topic's last offload went.
    OffloadStatus { topic: TopicName },
    /// Re-create a topic lost with the broker's data directory (or a
    /// partitioned topic and its partitions) from its manifest and
    /// offloaded segments in the object store. Kilonova's own verb.
    Restore { topic: TopicName },
    /// The id of the topic's last message.
    LastMessageId { topic: TopicName },
    /// The namespace bundle the topic belongs to (`0x…_0x…`).
    BundleRange { topic: TopicName },
    /// The broker serving the topic: its Pulsar URL (`pulsar+ssl://…` with
    /// an https admin URL, as pulsar-admin prints it).
    Lookup { topic: TopicName },
    /// A partitioned topic's stats, summed over its partitions (with each
    /// partition's with --per-partition).
    PartitionedStats(PartitionedStats),
    /// Acknowledge everything published so far: on one subscription (-s) or,
    /// without -s, on every subscription of the topic.
    #[command(visible_alias = "skip-all")]
    ClearBacklog(ClearBacklog),
    /// Expire messages older than a time on every subscription of the topic.
    #[command(visible_alias = "expire-all")]
    ExpireMessagesAllSubscriptions(ExpireAll),
    /// Show the N-th message from the first or back from the last, without a
    /// subscription.
    ExamineMessage(ExamineMessage),
    /// Show the message at ledgerId:entryId.
    GetMessageById(GetMessageById),
    /// Terminate the topic: it takes no more messages, for good (producers
    /// are refused; consumers are told when they have read everything).
    Terminate { topic: TopicName },
    /// Terminate every partition of a partitioned topic.
    PartitionedTerminate { topic: TopicName },
    /// Start compacting the topic (keep the latest message of each key);
    /// every partition of a partitioned topic.
    Compact { topic: TopicName },
    /// The compaction's status: NOT_RUN, RUNNING, SUCCESS or ERROR (a
    /// partitioned topic's: an aggregate, and each partition's).
    CompactionStatus { topic: TopicName },
    /// Grant a role actions (produce, consume, …) on the topic.
    GrantPermission {
        topic: TopicName,
        #[command(flatten)]
        grant: permissions::Grant,
    },
    /// Revoke a role's permissions on the topic.
    RevokePermission {
        topic: TopicName,
        #[command(flatten)]
        revoke: permissions::Revoke,
    },
    /// Show the roles granted permissions on the topic (its namespace's grants included).
    Permissions { topic: TopicName },
    #[command(flatten)]
    Policy(topic_policies::TopicPolicyCmd),
}

#[derive(Args)]
pub struct ListTopics {
    namespace: NamespaceName,
    /// persistent or non_persistent. pulsar-admin's -td works too.
    #[arg(long, value_parser = topic_domain)]
    topic_domain: Option<Domain>,
    /// At most this many topics (a Kilonova extension).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Only topics after this one, as a list printed it or by its local name
    /// (a Kilonova extension).
    #[arg(long)]
    after: Option<String>,
}

/// A domain as paths spell it, or `non_persistent` as pulsar-admin's
/// `--topic-domain` does.
fn topic_domain(s: &str) -> Result<Domain, TopicNameError> {
    match s {
        "non_persistent" => Ok(Domain::NonPersistent),
        s => s.parse(),
    }
}

impl ListTopics {
    /// One request per domain listed.
    fn paths(&self) -> Vec<ApiPath> {
        let paged = self.limit.is_some() || self.after.is_some();
        let domains = match self.topic_domain {
            Some(d) => vec![d],
            None if paged => vec![Domain::Persistent],
            None => vec![Domain::Persistent, Domain::NonPersistent],
        };
        domains
            .into_iter()
            .map(|d| {
                let mut path = ApiPath::topics(&self.namespace, d);
                if let Some(limit) = self.limit {
                    path = path.query("limit", limit);
                }
                if let Some(after) = &self.after {
                    // The API pages by local name; a list prints full names.
                    let local = after
                        .parse::<TopicName>()
                        .map_or_else(|_| after.clone(), |t| t.local);
                    path = path.query("after", local);
                }
                path
            })
            .collect()
    }
}

#[derive(Args)]
pub struct Partitions {
    topic: TopicName,
    #[arg(short = 'p', long, value_parser = clap::value_parser!(u32).range(1..))]
    partitions: u32,
}

#[derive(Args)]
pub struct DeleteTopic {
    topic: TopicName,
    /// Close producers and consumers first.
    #[arg(short = 'f', long)]
    force: bool,
}

/// A topic and one of its subscriptions.
#[derive(Args)]
pub struct SubscriptionArgs {
    topic: TopicName,
    #[arg(short = 's', long)]
    subscription: String,
}

impl SubscriptionArgs {
    fn path(&self) -> ApiPath {
        self.topic
            .path()
            .join("subscription")
            .join(&self.subscription)
    }
}

#[derive(Args)]
pub struct CreateSubscription {
    #[command(flatten)]
    sub: SubscriptionArgs,
    /// Where the subscription starts: latest, earliest or ledgerId:entryId.
    #[arg(short = 'm', long, default_value = "latest")]
    message_id: Position,
}

#[derive(Args)]
pub struct Unsubscribe {
    #[command(flatten)]
    sub: SubscriptionArgs,
    /// Disconnect the subscription's consumers first.
    #[arg(short = 'f', long)]
    force: bool,
}

#[derive(Args)]
pub struct Skip {
    #[command(flatten)]
    sub: SubscriptionArgs,
    /// How many messages to skip.
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
}

#[derive(Args)]
#[command(group(ArgGroup::new("target").required(true).args(["time", "message_id"])))]
pub struct ResetCursor {
    #[command(flatten)]
    sub: SubscriptionArgs,
    /// Go back this long from now: seconds or 10m, 3h, 2d.
    #[arg(short = 't', long, value_parser = units::parse_duration_secs)]
    time: Option<u64>,
    /// Go to this message: ledgerId:entryId, earliest or latest.
    #[arg(short = 'm', long)]
    message_id: Option<Position>,
}

#[derive(Args)]
pub struct ExpireMessages {
    #[command(flatten)]
    sub: SubscriptionArgs,
    /// Expire messages older than this: seconds or 10m, 3h, 2d.
    #[arg(short = 't', long = "expireTime", value_name = "TIME",
          value_parser = units::parse_duration_secs)]
    expire_time: u64,
}

#[derive(Args)]
pub struct PeekMessages {
    #[command(flatten)]
    sub: SubscriptionArgs,
    /// How many messages to show.
    #[arg(short = 'n', long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
}

#[derive(Args)]
pub struct AnalyzeBacklog {
    #[command(flatten)]
    sub: SubscriptionArgs,
    /// Start from this message (ledgerId:entryId) instead of the first
    /// unacknowledged one.
    #[arg(short = 'p', long)]
    position: Option<Position>,
}

impl AnalyzeBacklog {
    /// The route and its body (none: from the first unacknowledged message).
    fn request(&self) -> (ApiPath, Option<Value>) {
        let path = self.sub.path().join("analyzeBacklog");
        (path, self.position.map(Position::to_json))
    }
}

#[derive(Args)]
pub struct OffloadArgs {
    topic: TopicName,
    /// Bytes to keep in the local store (e.g. 10M, 1G): older segments go.
    #[arg(short = 's', long = "size-threshold", value_parser = units::parse_size_bytes)]
    size_threshold: u64,
}

/// What `topics restore` printed: one line per topic restored.
fn restore_text(doc: &Value) -> String {
    let restored = doc
        .get("restored")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut lines = Vec::with_capacity(restored.len() + 1);
    if let Some(n) = doc
        .get("partitions")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
    {
        let topic = doc.get("topic").and_then(Value::as_str).unwrap_or("");
        lines.push(format!(
            "Restored partitioned topic {topic} with {n} partitions"
        ));
    }
    for t in restored {
        let field = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
        lines.push(format!(
            "Restored {}: {} segments, {} entries, {} bytes, as exported at {} ms; its first message is now {}",
            t.get("topic").and_then(Value::as_str).unwrap_or(""),
            field("segments"),
            field("entries"),
            field("bytes"),
            field("exportedAtMs"),
            t.get("firstMessageId").and_then(Value::as_str).unwrap_or(""),
        ));
    }
    lines.join("\n")
}

/// Where an offload keeping `keep` bytes locally starts keeping: the first
/// ledger (segment) of the newest ones whose sizes add up to at most
/// `keep` — as pulsar-admin computes it from the internal stats' ledgers
/// (oldest first, each `{ledgerId, size}`). `None`: nothing to offload.
fn offload_target(ledgers: &[Value], keep: u64) -> Option<u64> {
    let mut kept = 0u64;
    let mut first_kept = None;
    for l in ledgers.iter().rev() {
        let size = l.get("size").and_then(Value::as_u64).unwrap_or(0);
        let id = l.get("ledgerId").and_then(Value::as_u64)?;
        if kept.saturating_add(size) > keep && first_kept.is_some() {
            return first_kept;
        }
        kept = kept.saturating_add(size);
        first_kept = Some(id);
    }
    None
}

#[derive(Args)]
pub struct SetReplicatedSubscriptionStatus {
    #[command(flatten)]
    sub: SubscriptionArgs,
    /// Replicate the subscription's position.
    #[arg(
        short = 'e',
        long,
        conflicts_with = "disable",
        required_unless_present = "disable"
    )]
    enable: bool,
    /// Stop replicating it.
    #[arg(short = 'd', long)]
    disable: bool,
}

#[derive(Args)]
pub struct PartitionedStats {
    topic: TopicName,
    /// Include each partition's stats.
    #[arg(long = "per-partition")]
    per_partition: bool,
}

#[derive(Args)]
pub struct ClearBacklog {
    topic: TopicName,
    /// The subscription; every subscription of the topic when absent.
    #[arg(short = 's', long)]
    subscription: Option<String>,
}

#[derive(Args)]
pub struct ExpireAll {
    topic: TopicName,
    /// Expire messages older than this: seconds or 10m, 3h, 2d.
    #[arg(short = 't', long = "expireTime", value_name = "TIME",
          value_parser = units::parse_duration_secs)]
    expire_time: u64,
}

#[derive(Args)]
pub struct ExamineMessage {
    topic: TopicName,
    /// Count from the first message (earliest) or back from the last (latest).
    #[arg(short = 'i', long = "initialPosition", default_value = "latest",
          value_parser = ["earliest", "latest"])]
    initial_position: String,
    /// Which message, from 1.
    #[arg(short = 'm', long = "messagePosition", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    message_position: u64,
}

#[derive(Args)]
pub struct GetMessageById {
    topic: TopicName,
    #[arg(short = 'l', long = "ledgerId")]
    ledger_id: u64,
    #[arg(short = 'e', long = "entryId")]
    entry_id: u64,
}

/// A position in a topic, as pulsar-admin's `--messageId` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    Earliest,
    Latest,
    Id { ledger: i64, entry: i64 },
}

impl Position {
    /// Pulsar's MessageId JSON (`MessageId.earliest` is -1:-1, `latest` is
    /// Long.MAX_VALUE twice).
    fn to_json(self) -> Value {
        let (ledger, entry) = match self {
            Position::Earliest => (-1, -1),
            Position::Latest => (i64::MAX, i64::MAX),
            Position::Id { ledger, entry } => (ledger, entry),
        };
        json!({ "ledgerId": ledger, "entryId": entry })
    }
}

impl FromStr for Position {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => return Ok(Position::Earliest),
            "latest" => return Ok(Position::Latest),
            _ => {}
        }
        let parsed = s
            .split_once(':')
            .and_then(|(l, e)| Some((l.parse().ok()?, e.parse().ok()?)));
        match parsed {
            Some((ledger, entry)) => Ok(Position::Id { ledger, entry }),
            None => Err(format!(
                "invalid message id {s:?}: expected ledgerId:entryId, earliest or latest"
            )),
        }
    }
}

pub async fn run(client: &AdminClient, cmd: TopicsCmd) -> Result<Output, AdminError> {
    use TopicsCmd as C;
    let doc = match cmd {
        C::GrantPermission { topic, grant } => {
            permissions::grant(client, topic.path(), &grant).await?
        }
        C::RevokePermission { topic, revoke } => {
            permissions::revoke(client, topic.path(), &revoke).await?
        }
        C::Permissions { topic } => permissions::list(client, topic.path()).await?,
        C::Policy(verb) => return topic_policies::run(client, verb).await,
        C::List(list) => {
            let mut topics = Vec::new();
            for path in list.paths() {
                match client.get(&path).await? {
                    Value::Array(items) => topics.extend(items),
                    Value::Null => {}
                    other => topics.push(other),
                }
            }
            Value::Array(topics)
        }
        C::ListPartitionedTopics { namespace } => {
            let path = ApiPath::topics(&namespace, Domain::Persistent).join("partitioned");
            client.get(&path).await?
        }
        C::Create { topic } => client.put(&topic.path(), None).await?,
        C::CreatePartitionedTopic(p) => {
            let path = p.topic.path().join("partitions");
            client.put(&path, Some(&json!(p.partitions))).await?
        }
        C::UpdatePartitionedTopic(p) => {
            let path = p.topic.path().join("partitions");
            client.post(&path, Some(&json!(p.partitions))).await?
        }
        C::GetPartitionedTopicMetadata { topic } => {
            client.get(&topic.path().join("partitions")).await?
        }
        C::Delete(d) => client.delete(&d.topic.path().force(d.force)).await?,
        C::DeletePartitionedTopic(d) => {
            let path = d.topic.path().join("partitions").force(d.force);
            client.delete(&path).await?
        }
        C::Stats { topic } => client.get(&topic.path().join("stats")).await?,
        C::StatsInternal { topic } => client.get(&topic.path().join("internalStats")).await?,
        C::Unload { topic } => client.put(&topic.path().join("unload"), None).await?,
        C::Subscriptions { topic } => client.get(&topic.path().join("subscriptions")).await?,
        C::CreateSubscription(c) => {
            // The REST API starts a subscription without a body at the latest
            // message.
            let body = match c.message_id {
                Position::Latest => None,
                other => Some(other.to_json()),
            };
            client.put(&c.sub.path(), body.as_ref()).await?
        }
        C::Unsubscribe(u) => client.delete(&u.sub.path().force(u.force)).await?,
        C::Skip(s) => {
            let path = s.sub.path().join("skip").join(s.count);
            client.post(&path, None).await?
        }
        C::ResetCursor(r) => {
            let base = r.sub.path().join("resetcursor");
            match (r.message_id, r.time) {
                (Some(position), _) => client.post(&base, Some(&position.to_json())).await?,
                (None, Some(ago_secs)) => {
                    let path = base.join(epoch_ms_ago(ago_secs));
                    client.post(&path, None).await?
                }
                (None, None) => {
                    return Err(AdminError::InvalidArgument(
                        "reset-cursor needs --time or --message-id".into(),
                    ))
                }
            }
        }
        C::ExpireMessages(e) => {
            let path = e.sub.path().join("expireMessages").join(e.expire_time);
            client.post(&path, None).await?
        }
        C::PeekMessages(p) => return peek(client, &p).await,
        C::AnalyzeBacklog(a) => {
            let (path, body) = a.request();
            client.post(&path, body.as_ref()).await?
        }
        C::SetReplicatedSubscriptionStatus(r) => {
            let path = r.sub.path().join("replicatedSubscriptionStatus");
            client.post(&path, Some(&Value::Bool(r.enable))).await?
        }
        C::GetReplicatedSubscriptionStatus(sub) => {
            client
                .get(&sub.path().join("replicatedSubscriptionStatus"))
                .await?
        }
        C::BundleRange { topic } => client.get(&ApiPath::lookup(&topic).join("bundle")).await?,
        C::Lookup { topic } => {
            let doc = client.get(&ApiPath::lookup(&topic)).await?;
            return Ok(lookup_output(doc, client.is_tls()));
        }
        C::LastMessageId { topic } => client.get(&topic.path().join("lastMessageId")).await?,
        C::Offload(o) => {
            let stats = client.get(&o.topic.path().join("internalStats")).await?;
            let ledgers = stats
                .get("ledgers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let Some(ledger) = offload_target(&ledgers, o.size_threshold) else {
                return Ok(Output::Rendered {
                    human: "Nothing to offload".into(),
                    json: Value::Null,
                });
            };
            let body = json!({"ledgerId": ledger, "entryId": 0});
            client
                .put(&o.topic.path().join("offload"), Some(&body))
                .await?;
            return Ok(Output::Rendered {
                human: format!(
                    "Offload triggered for {} for messages before {ledger}:0:-1",
                    o.topic
                ),
                json: body,
            });
        }
        C::OffloadStatus { topic } => client.get(&topic.path().join("offload")).await?,
        C::Restore { topic } => {
            let doc = client.post(&topic.path().join("restore"), None).await?;
            return Ok(Output::Rendered {
                human: restore_text(&doc),
                json: doc,
            });
        }
        C::Terminate { topic } => {
            let doc = client.post(&topic.path().join("terminate"), None).await?;
            // pulsar-admin's words, with the id as ledgerId:entryId:partitionIndex.
            let human = format!("Topic successfully terminated at {}", message_id_text(&doc));
            return Ok(Output::Rendered { human, json: doc });
        }
        C::PartitionedTerminate { topic } => {
            let path = topic.path().join("terminate").join("partitions");
            client.post(&path, None).await?
        }
        C::PartitionedStats(p) => {
            let path = p
                .topic
                .path()
                .join("partitioned-stats")
                .query("perPartition", p.per_partition);
            client.get(&path).await?
        }
        C::ClearBacklog(c) => {
            let subs = match c.subscription {
                Some(s) => vec![s],
                None => {
                    let listed = client.get(&c.topic.path().join("subscriptions")).await?;
                    listed
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                }
            };
            for sub in subs {
                let path = c
                    .topic
                    .path()
                    .join("subscription")
                    .join(sub)
                    .join("skip_all");
                client.post(&path, None).await?;
            }
            Value::Null
        }
        C::ExpireMessagesAllSubscriptions(e) => {
            let path = e
                .topic
                .path()
                .join("all_subscription")
                .join("expireMessages")
                .join(e.expire_time);
            client.post(&path, None).await?
        }
        C::ExamineMessage(e) => {
            let path = e
                .topic
                .path()
                .join("examinemessage")
                .query("initialPosition", &e.initial_position)
                .query("messagePosition", e.message_position);
            return one_message(client, &path).await;
        }
        C::GetMessageById(g) => {
            let path = g
                .topic
                .path()
                .join("ledger")
                .join(g.ledger_id)
                .join("entry")
                .join(g.entry_id);
            return one_message(client, &path).await;
        }
        C::Compact { topic } => client.put(&topic.path().join("compaction"), None).await?,
        C::CompactionStatus { topic } => client.get(&topic.path().join("compaction")).await?,
    };
    Ok(Output::Document(doc))
}

/// A lookup's answer: the broker URL a client of the admin URL's kind
/// (TLS or not) would use, and the whole `LookupData` for `--output json`.
fn lookup_output(doc: Value, tls: bool) -> Output {
    let (first, second) = match tls {
        true => ("brokerUrlTls", "brokerUrl"),
        false => ("brokerUrl", "brokerUrlTls"),
    };
    let url = [first, second]
        .iter()
        .find_map(|k| doc.get(*k).and_then(Value::as_str))
        .unwrap_or("(no broker URL)");
    Output::Rendered {
        human: format!("{url}\n"),
        json: doc,
    }
}

/// Wall-clock milliseconds `secs` ago (0 if that is before the epoch).
fn epoch_ms_ago(secs: u64) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now_ms.saturating_sub(secs.saturating_mul(1000))
}

/// `GET …/position/{n}` for n = 1..=count, stopping at the first position past
/// the end of the backlog.
async fn peek(client: &AdminClient, p: &PeekMessages) -> Result<Output, AdminError> {
    let base = p.sub.path().join("position");
    let mut messages = Vec::new();
    for n in 1..=p.count {
        match client.send(Method::GET, &base.clone().join(n), None).await {
            Ok(reply) => messages.push(Peeked::from_reply(&reply)),
            Err(e) if e.is_not_found() => {
                // 404 at position 1 is an empty backlog, or no such topic or
                // subscription: the subscription list tells which.
                if n == 1 && !subscription_exists(client, &p.sub).await? {
                    return Err(e);
                }
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Output::Rendered {
        human: render_peeked(&messages),
        json: Value::Array(messages.iter().map(Peeked::to_json).collect()),
    })
}

/// A message the REST API sends as peek does (payload and `X-Pulsar-*` headers).
async fn one_message(client: &AdminClient, path: &ApiPath) -> Result<Output, AdminError> {
    let reply = client.send(Method::GET, path, None).await?;
    let m = Peeked::from_reply(&reply);
    Ok(Output::Rendered {
        human: render_peeked(std::slice::from_ref(&m)),
        json: m.to_json(),
    })
}

async fn subscription_exists(
    client: &AdminClient,
    sub: &SubscriptionArgs,
) -> Result<bool, AdminError> {
    let subs = client.get(&sub.topic.path().join("subscriptions")).await?;
    Ok(subs.as_array().is_some_and(|s| {
        s.iter()
            .any(|name| name.as_str() == Some(&sub.subscription))
    }))
}

/// One peeked message: the REST API sends the payload as the body and the
/// metadata as `X-Pulsar-*` headers.
struct Peeked {
    message_id: Option<String>,
    publish_time: Option<String>,
    payload: Vec<u8>,
}

impl Peeked {
    fn from_reply(reply: &Reply) -> Self {
        let header = |name: &str| {
            reply
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Peeked {
            message_id: header("X-Pulsar-Message-ID"),
            publish_time: header("X-Pulsar-publish-time"),
            payload: reply.body.to_vec(),
        }
    }

    /// `payload` when it is UTF-8 text, `payloadHex` otherwise.
    fn to_json(&self) -> Value {
        let mut doc = json!({ "messageId": self.message_id });
        if let Some(t) = &self.publish_time {
            doc["publishTime"] = json!(t);
        }
        match std::str::from_utf8(&self.payload) {
            Ok(text) => doc["payload"] = json!(text),
            Err(_) => doc["payloadHex"] = json!(hex(&self.payload)),
        }
        doc
    }
}

/// pulsar-admin's layout: the id, the publish time, then the payload (as
/// text when it is UTF-8, else as a hex dump), messages separated by a rule.
fn render_peeked(messages: &[Peeked]) -> String {
    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push_str(&"-".repeat(73));
            out.push('\n');
        }
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "Message ID: {}",
            m.message_id.as_deref().unwrap_or("?")
        );
        if let Some(t) = &m.publish_time {
            let _ = writeln!(out, "Publish time: {t}");
        }
        match std::str::from_utf8(&m.payload) {
            Ok(text) => {
                out.push_str(text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            Err(_) => out.push_str(&hex_dump(&m.payload)),
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Offset, 16 bytes in hex, and their printable characters.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (row, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        let _ = writeln!(out, "{:08x}  {:<47}  |{text}|", row * 16, hex.join(" "));
    }
    out
}

/// A MessageId document as pulsar-admin prints one: `ledgerId:entryId:partitionIndex`.
fn message_id_text(doc: &Value) -> String {
    let field = |k: &str| doc.get(k).and_then(Value::as_i64).unwrap_or(-1);
    format!(
        "{}:{}:{}",
        field("ledgerId"),
        field("entryId"),
        field("partitionIndex")
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Group;
    use super::*;

    fn cmd(args: &[&str]) -> TopicsCmd {
        let mut argv = vec!["topics"];
        argv.extend_from_slice(args);
        match parse(&argv) {
            Ok(a) => match a.group {
                Group::Topics { verb } => verb,
                _ => panic!("not a topics verb"),
            },
            Err(e) => panic!("{argv:?} should parse: {e}"),
        }
    }

    fn refused(args: &[&str]) -> bool {
        let mut argv = vec!["topics"];
        argv.extend_from_slice(args);
        parse(&argv).is_err()
    }

    fn paths(args: &[&str]) -> Vec<String> {
        match cmd(args) {
            TopicsCmd::List(l) => l.paths().iter().map(ToString::to_string).collect(),
            _ => panic!("not list"),
        }
    }

    #[test]
    fn list_covers_both_domains_unless_told_or_paging() {
        assert_eq!(
            paths(&["list", "t/ns"]),
            ["/admin/v2/persistent/t/ns", "/admin/v2/non-persistent/t/ns"]
        );
        assert_eq!(
            paths(&["list", "t/ns", "-td", "non_persistent"]),
            ["/admin/v2/non-persistent/t/ns"]
        );
        assert_eq!(
            paths(&[
                "list",
                "t/ns",
                "--limit",
                "100",
                "--after",
                "persistent://t/ns/x"
            ]),
            ["/admin/v2/persistent/t/ns?limit=100&after=x"]
        );
        assert_eq!(
            paths(&["list", "t/ns", "-td", "non-persistent", "--after", "y"]),
            ["/admin/v2/non-persistent/t/ns?after=y"]
        );
        assert!(refused(&["list", "t/ns", "-td", "durable"]));
        assert!(
            refused(&["list", "t/ns/x"]),
            "a namespace is tenant/namespace"
        );
    }

    #[test]
    fn subscription_verbs_take_s_and_subscription() {
        for flag in ["-s", "--subscription"] {
            match cmd(&["unsubscribe", "t/ns/x", flag, "sub", "-f"]) {
                TopicsCmd::Unsubscribe(u) => {
                    assert!(u.force);
                    assert_eq!(
                        u.sub.path().to_string(),
                        "/admin/v2/persistent/t/ns/x/subscription/sub"
                    );
                }
                _ => panic!("not unsubscribe"),
            }
        }
        assert!(refused(&["skip", "t/ns/x", "-n", "2"]), "-s is required");
    }

    #[test]
    fn analyze_backlog_posts_to_the_subscription_with_an_optional_start() {
        for flag in ["-s", "--subscription"] {
            match cmd(&["analyze-backlog", "t/ns/x", flag, "sub"]) {
                TopicsCmd::AnalyzeBacklog(a) => {
                    let (path, body) = a.request();
                    assert_eq!(
                        path.to_string(),
                        "/admin/v2/persistent/t/ns/x/subscription/sub/analyzeBacklog"
                    );
                    assert_eq!(body, None, "from the first unacknowledged message");
                }
                _ => panic!("not analyze-backlog"),
            }
        }
        for flag in ["-p", "--position"] {
            match cmd(&["analyze-backlog", "x", "-s", "s", flag, "3:7"]) {
                TopicsCmd::AnalyzeBacklog(a) => {
                    assert_eq!(a.request().1, Some(json!({"ledgerId": 3, "entryId": 7})))
                }
                _ => panic!("not analyze-backlog"),
            }
        }
        assert!(refused(&["analyze-backlog", "x"]), "-s is required");
        assert!(refused(&["analyze-backlog", "x", "-s", "s", "-p", "seven"]));
    }

    #[test]
    fn offload_keeps_the_newest_ledgers_that_fit_the_threshold() {
        let ledgers: Vec<Value> = [(1, 100), (2, 100), (3, 100), (4, 10)]
            .iter()
            .map(|(id, size)| json!({"ledgerId": id, "size": size}))
            .collect();
        assert_eq!(
            offload_target(&ledgers, 150),
            Some(3),
            "4 and 3 fit, 2 does not"
        );
        assert_eq!(
            offload_target(&ledgers, 0),
            Some(4),
            "the newest stays: it is being written"
        );
        assert_eq!(
            offload_target(&ledgers, 1000),
            None,
            "everything fits: nothing to offload"
        );
        assert_eq!(offload_target(&[], 0), None);
        match cmd(&["offload", "t/ns/x", "-s", "10M"]) {
            TopicsCmd::Offload(o) => assert_eq!(o.size_threshold, 10 << 20),
            _ => panic!("not offload"),
        }
        assert!(refused(&["offload", "x"]), "--size-threshold is required");
    }

    #[test]
    fn set_replicated_subscription_status_needs_exactly_one_of_enable_and_disable() {
        for (flag, on) in [
            ("--enable", true),
            ("-e", true),
            ("--disable", false),
            ("-d", false),
        ] {
            match cmd(&["set-replicated-subscription-status", "x", "-s", "s", flag]) {
                TopicsCmd::SetReplicatedSubscriptionStatus(r) => assert_eq!(r.enable, on, "{flag}"),
                _ => panic!("not set-replicated-subscription-status"),
            }
        }
        assert!(refused(&[
            "set-replicated-subscription-status",
            "x",
            "-s",
            "s"
        ]));
        assert!(refused(&[
            "set-replicated-subscription-status",
            "x",
            "-s",
            "s",
            "-e",
            "-d"
        ]));
        assert!(
            refused(&["get-replicated-subscription-status", "x"]),
            "-s is required"
        );
    }

    #[test]
    fn create_subscription_starts_at_latest_unless_told() {
        match cmd(&["create-subscription", "x", "-s", "s"]) {
            TopicsCmd::CreateSubscription(c) => assert_eq!(c.message_id, Position::Latest),
            _ => panic!("not create-subscription"),
        }
        match cmd(&["create-subscription", "x", "-s", "s", "-m", "earliest"]) {
            TopicsCmd::CreateSubscription(c) => {
                assert_eq!(
                    c.message_id.to_json(),
                    json!({"ledgerId": -1, "entryId": -1})
                )
            }
            _ => panic!("not create-subscription"),
        }
    }

    #[test]
    fn reset_cursor_needs_exactly_one_of_time_and_message_id() {
        match cmd(&["reset-cursor", "x", "-s", "s", "-t", "10m"]) {
            TopicsCmd::ResetCursor(r) => assert_eq!((r.time, r.message_id), (Some(600), None)),
            _ => panic!("not reset-cursor"),
        }
        match cmd(&["reset-cursor", "x", "-s", "s", "-m", "12:34"]) {
            TopicsCmd::ResetCursor(r) => {
                assert_eq!(
                    r.message_id,
                    Some(Position::Id {
                        ledger: 12,
                        entry: 34
                    })
                )
            }
            _ => panic!("not reset-cursor"),
        }
        assert!(refused(&["reset-cursor", "x", "-s", "s"]));
        assert!(refused(&[
            "reset-cursor",
            "x",
            "-s",
            "s",
            "-t",
            "1m",
            "-m",
            "1:2"
        ]));
        assert!(refused(&["reset-cursor", "x", "-s", "s", "-m", "12"]));
    }

    #[test]
    fn reset_time_is_now_minus_the_duration() {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ten_minutes_ago = epoch_ms_ago(600);
        assert!(
            ten_minutes_ago <= now_ms - 600_000 + 5_000
                && ten_minutes_ago + 5_000 >= now_ms - 600_000
        );
        assert_eq!(epoch_ms_ago(u64::MAX), 0);
    }

    #[test]
    fn partition_counts_and_counts_must_be_positive() {
        assert!(refused(&["create-partitioned-topic", "x", "-p", "0"]));
        assert!(refused(&["create-partitioned-topic", "x"]));
        match cmd(&["create-partitioned-topic", "x", "--partitions", "4"]) {
            TopicsCmd::CreatePartitionedTopic(p) => assert_eq!(p.partitions, 4),
            _ => panic!("not create-partitioned-topic"),
        }
        assert!(refused(&["peek-messages", "x", "-s", "s", "-n", "0"]));
        assert!(refused(&["skip", "x", "-s", "s", "-n", "-1"]));
    }

    #[test]
    fn expire_messages_takes_seconds_or_units() {
        match cmd(&["expire-messages", "x", "-s", "s", "-t", "2"]) {
            TopicsCmd::ExpireMessages(e) => assert_eq!(e.expire_time, 2),
            _ => panic!("not expire-messages"),
        }
        match cmd(&["expire-messages", "x", "-s", "s", "--expireTime", "1h"]) {
            TopicsCmd::ExpireMessages(e) => assert_eq!(e.expire_time, 3600),
            _ => panic!("not expire-messages"),
        }
    }

    #[test]
    fn topic_arguments_must_be_topic_names() {
        assert!(refused(&["stats", "a/b"]));
        assert!(refused(&["stats", "kafka://t/ns/x"]));
        match cmd(&["delete", "non-persistent://t/ns/x", "-f"]) {
            TopicsCmd::Delete(d) => assert_eq!(
                d.topic.path().force(d.force).to_string(),
                "/admin/v2/non-persistent/t/ns/x?force=true"
            ),
            _ => panic!("not delete"),
        }
    }

    #[test]
    fn lookup_prints_the_broker_url_of_the_admin_urls_kind() {
        let doc = json!({"brokerUrl": "pulsar://h:6650", "brokerUrlTls": "pulsar+ssl://h:6651"});
        let human = |doc: &Value, tls| match lookup_output(doc.clone(), tls) {
            Output::Rendered { human, .. } => human,
            Output::Document(_) => panic!("not rendered"),
        };
        assert_eq!(human(&doc, false), "pulsar://h:6650\n");
        assert_eq!(human(&doc, true), "pulsar+ssl://h:6651\n");
        let plain_only = json!({"brokerUrl": "pulsar://h:6650", "brokerUrlTls": null});
        assert_eq!(human(&plain_only, true), "pulsar://h:6650\n");
        match cmd(&["lookup", "t/ns/x"]) {
            TopicsCmd::Lookup { topic } => assert_eq!(
                ApiPath::lookup(&topic).to_string(),
                "/lookup/v2/topic/persistent/t/ns/x"
            ),
            _ => panic!("not lookup"),
        }
    }

    #[test]
    fn peeked_messages_print_id_and_payload() {
        let text = Peeked {
            message_id: Some("5:2".into()),
            publish_time: None,
            payload: b"v2".to_vec(),
        };
        let binary = Peeked {
            message_id: Some("5:3".into()),
            publish_time: Some("2024-01-01T00:00:00Z".into()),
            payload: vec![0, 159, 146, 150],
        };
        let human = render_peeked(&[text, binary]);
        assert!(human.starts_with("Message ID: 5:2\nv2\n---"), "{human}");
        assert!(
            human.contains("Message ID: 5:3\nPublish time: 2024-01-01T00:00:00Z\n"),
            "{human}"
        );
        assert!(human.contains("00000000  00 9f 92 96"), "{human}");
        let binary = Peeked {
            message_id: None,
            publish_time: None,
            payload: vec![0xff],
        };
        assert_eq!(
            binary.to_json(),
            json!({"messageId": null, "payloadHex": "ff"})
        );
    }
}
