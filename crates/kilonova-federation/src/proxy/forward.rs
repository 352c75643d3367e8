//! Produce, Fetch and ListOffsets forwarded: each logical partition named
//! in a request goes to its physical partition's leader, one request per
//! leader, the answers joined in the order asked. Record batches pass
//! through as bytes; offsets are the physical partition's (a logical
//! partition *is* one).
//!
//! Requests to the leaders are sent in the order the client's requests
//! came (the connection handles them one by one), so a partition's batches
//! reach it in the client's order; the answers are awaited off the
//! connection's reading.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_request::ListOffsetsTopic;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::produce_request::TopicProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    ProduceRequest, ProduceResponse, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kilonova_kafka_groups::answers::Later;

use super::Shared;
use crate::map::{FederationMap, Seen, Side, WriteRefused};
use crate::upstream::{InFlight, UpstreamError};

/// The longest a forwarded fetch waits, whatever the client asks.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(30);
/// The most record bytes a forwarded fetch asks its leaders for, all of
/// them together, whatever the client asks (the client fetches again for
/// more); what the proxy reserves of its memory budget for a fetch's answer.
pub const MAX_FETCH_BYTES: usize = 16 << 20;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// Where one logical partition of a request goes.
enum Route {
    /// To `leader`, as `(physical topic, physical partition)` of `cluster`.
    Leader {
        cluster: String,
        leader: String,
        topic: String,
        partition: i32,
    },
    /// Answered here: retired at this offset (consumers only).
    Retired(i64),
    /// Refused with this error.
    Refused(i16),
}

/// Where logical partition `(topic, partition)` goes for `side`.
async fn route(
    shared: &Shared,
    map: &FederationMap,
    topic: &str,
    partition: i32,
    side: Side,
) -> Route {
    let Some(t) = map.topics.get(topic) else {
        return Route::Refused(ResponseError::UnknownTopicOrPartition.code());
    };
    let failing = |c: &str| shared.is_failing(c);
    let p = match side {
        Side::Produce => match map.write_target(t, partition, &failing) {
            Ok(p) => p,
            Err(WriteRefused::NoPartition) => {
                return Route::Refused(ResponseError::UnknownTopicOrPartition.code())
            }
            Err(WriteRefused::NothingWritable) => {
                return Route::Refused(ResponseError::NotLeaderOrFollower.code())
            }
        },
        Side::Consume => match map.seen(t, partition) {
            None => return Route::Refused(ResponseError::UnknownTopicOrPartition.code()),
            Some(Seen::Retired(end)) => return Route::Retired(end),
            Some(Seen::Live(p)) => p,
        },
    };
    match shared.leader(map, &p.cluster, &p.topic, p.partition).await {
        Some(leader) => Route::Leader {
            cluster: p.cluster.clone(),
            leader,
            topic: p.topic.clone(),
            partition: p.partition,
        },
        None => Route::Refused(ResponseError::NotLeaderOrFollower.code()),
    }
}

/// One logical partition of a request, going to a leader.
struct Part<T> {
    /// The logical topic's index in the request.
    ti: usize,
    logical: i32,
    topic: String,
    partition: i32,
    /// That partition's part of the request.
    data: T,
}

/// The logical partitions going to one leader.
struct ToLeader<T> {
    cluster: String,
    parts: Vec<Part<T>>,
}

/// A request's parts by physical topic, in first-seen order.
type ByTopic<'a, T> = Vec<(&'a str, Vec<&'a Part<T>>)>;

impl<T> ToLeader<T> {
    fn by_topic(&self) -> ByTopic<'_, T> {
        let mut out: ByTopic<'_, T> = Vec::new();
        for part in &self.parts {
            match out.iter_mut().find(|(t, _)| *t == part.topic) {
                Some((_, v)) => v.push(part),
                None => out.push((&part.topic, vec![part])),
            }
        }
        out
    }

    /// The logical `(topic index, partition)` of physical `(topic, partition)`.
    fn logical(&self, topic: &str, partition: i32) -> Option<(usize, i32)> {
        self.parts
            .iter()
            .find(|p| p.topic == topic && p.partition == partition)
            .map(|p| (p.ti, p.logical))
    }

    /// The same without the request's data (sent already).
    fn sent(self) -> ToLeader<()> {
        ToLeader {
            cluster: self.cluster,
            parts: self
                .parts
                .into_iter()
                .map(|p| Part {
                    ti: p.ti,
                    logical: p.logical,
                    topic: p.topic,
                    partition: p.partition,
                    data: (),
                })
                .collect(),
        }
    }
}

/// Groups a request's partitions by leader; the others get their answer
/// from `local` now.
async fn split<T, A>(
    shared: &Shared,
    map: &FederationMap,
    side: Side,
    asked: Vec<(usize, String, i32, T)>,
    mut local: impl FnMut(usize, i32, Route) -> A,
) -> (HashMap<(String, usize), ToLeader<T>>, Vec<(usize, A)>) {
    // By leader, and by round: two logical partitions written to one
    // physical partition (one drained, redirected) go in two requests.
    let mut to: HashMap<(String, usize), ToLeader<T>> = HashMap::new();
    let mut answered = Vec::new();
    for (ti, topic, partition, part) in asked {
        match route(shared, map, &topic, partition, side).await {
            Route::Leader {
                cluster,
                leader,
                topic: physical,
                partition: pp,
            } => {
                let mut round = 0;
                while to.get(&(leader.clone(), round)).is_some_and(|g| {
                    g.parts
                        .iter()
                        .any(|p| p.topic == physical && p.partition == pp)
                }) {
                    round += 1;
                }
                to.entry((leader, round))
                    .or_insert_with(|| ToLeader {
                        cluster,
                        parts: Vec::new(),
                    })
                    .parts
                    .push(Part {
                        ti,
                        logical: partition,
                        topic: physical,
                        partition: pp,
                        data: part,
                    })
            }
            other => answered.push((ti, local(ti, partition, other))),
        }
    }
    (to, answered)
}

/// A call's failure: the cluster is marked failing if it could not be reached.
fn failed(shared: &Shared, cluster: &str, e: &UpstreamError) -> i16 {
    match e {
        UpstreamError::Connect { .. } | UpstreamError::Closed(_) | UpstreamError::Timeout(..) => {
            shared.mark_failing(cluster, e);
            ResponseError::NotLeaderOrFollower.code()
        }
        UpstreamError::Unsupported { .. } => ResponseError::UnsupportedVersion.code(),
        UpstreamError::Protocol { .. } => ResponseError::UnknownServerError.code(),
    }
}

/// Errors that mean a leader moved: forget where the leaders are.
fn leader_moved(code: i16) -> bool {
    code == ResponseError::NotLeaderOrFollower.code()
        || code == ResponseError::LeaderNotAvailable.code()
        || code == ResponseError::UnknownTopicOrPartition.code()
}

fn refused_code(route: Route) -> i16 {
    match route {
        Route::Refused(code) => code,
        // A producer never sees a retired partition; a leader is forwarded.
        _ => ResponseError::NotLeaderOrFollower.code(),
    }
}

/// The requests sent to the leaders, each with its answer to come (or the
/// error code its partitions get).
type Sent = Vec<(ToLeader<()>, Result<InFlight, i16>)>;

/// Sends each leader its part (`body` builds it): fetches each on a
/// connection of their own (a long poll holds one), the rest on the
/// leader's shared connection.
async fn send_all<T>(
    shared: &Shared,
    to: HashMap<(String, usize), ToLeader<T>>,
    api: ApiKey,
    version: i16,
    expect_answer: bool,
    body: impl Fn(&ToLeader<T>) -> RequestKind,
) -> Sent {
    let mut sent = Vec::with_capacity(to.len());
    for ((leader, _), group) in to {
        let request = body(&group);
        let started = match api {
            ApiKey::Fetch => shared.pool.start_fetch(&leader, version, request).await,
            _ => match shared.pool.shared(&leader).await {
                Ok(up) => up.start(api, version, request, expect_answer).await,
                Err(e) => Err(e),
            },
        };
        let started = started.map_err(|e| failed(shared, &group.cluster, &e));
        sent.push((group.sent(), started));
    }
    sent
}

/// What differs between the answers of the requests forwarded.
trait Forwarded {
    /// One partition's answer.
    type Answer: Send + 'static;
    /// A leader's answers: (physical topic, one partition's answer).
    fn answers(r: ResponseKind) -> Vec<(String, Self::Answer)>;
    fn partition(a: &Self::Answer) -> i32;
    fn error(a: &Self::Answer) -> i16;
    /// The answer with the logical partition's index.
    fn relabel(a: Self::Answer, logical: i32) -> Self::Answer;
    fn refused(partition: i32, code: i16) -> Self::Answer;
    /// Whether this answer is worth answering at once (a fetch's records:
    /// the other leaders' partitions are fetched again by the client).
    fn enough(_a: &Self::Answer) -> bool {
        false
    }
}

/// Awaits the leaders' answers into `answered` (as logical partitions),
/// until all are in or one is [`Forwarded::enough`].
async fn collect<F: Forwarded>(
    shared: Arc<Shared>,
    sent: Sent,
    wait: Duration,
    answered: &mut Vec<(usize, F::Answer)>,
) {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut pending: FuturesUnordered<_> = sent
        .into_iter()
        .map(|(group, started)| {
            let shared = shared.clone();
            async move {
                let answer = match started {
                    Ok(in_flight) => in_flight
                        .answer(wait)
                        .await
                        .map_err(|e| failed(&shared, &group.cluster, &e)),
                    Err(code) => Err(code),
                };
                (group, answer)
            }
        })
        .collect();
    while let Some((group, answer)) = pending.next().await {
        let mut enough = false;
        match answer {
            Ok(Some(r)) => {
                for (topic, a) in F::answers(r) {
                    if leader_moved(F::error(&a)) {
                        shared.forget_leaders(&group.cluster, &topic);
                    }
                    if let Some((ti, lp)) = group.logical(&topic, F::partition(&a)) {
                        enough |= F::enough(&a);
                        answered.push((ti, F::relabel(a, lp)));
                    }
                }
            }
            // A produce with acks 0: nobody answers.
            Ok(None) => {}
            Err(code) => {
                for part in group.parts {
                    answered.push((part.ti, F::refused(part.logical, code)));
                }
            }
        }
        if enough {
            break;
        }
    }
}

struct Produced;

impl Forwarded for Produced {
    type Answer = PartitionProduceResponse;
    fn answers(r: ResponseKind) -> Vec<(String, Self::Answer)> {
        let ResponseKind::Produce(r) = r else {
            return Vec::new();
        };
        r.responses
            .into_iter()
            .flat_map(|t| {
                let topic = t.name.0.to_string();
                t.partition_responses
                    .into_iter()
                    .map(move |p| (topic.clone(), p))
            })
            .collect()
    }
    fn partition(a: &Self::Answer) -> i32 {
        a.index
    }
    fn error(a: &Self::Answer) -> i16 {
        a.error_code
    }
    fn relabel(a: Self::Answer, logical: i32) -> Self::Answer {
        a.with_index(logical)
    }
    fn refused(partition: i32, code: i16) -> Self::Answer {
        PartitionProduceResponse::default()
            .with_index(partition)
            .with_error_code(code)
            .with_base_offset(-1)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(-1)
    }
}

struct Fetched;

impl Forwarded for Fetched {
    type Answer = PartitionData;
    fn answers(r: ResponseKind) -> Vec<(String, Self::Answer)> {
        let ResponseKind::Fetch(r) = r else {
            return Vec::new();
        };
        r.responses
            .into_iter()
            .flat_map(|t| {
                let topic = t.topic.0.to_string();
                t.partitions.into_iter().map(move |p| (topic.clone(), p))
            })
            .collect()
    }
    fn partition(a: &Self::Answer) -> i32 {
        a.partition_index
    }
    fn error(a: &Self::Answer) -> i16 {
        a.error_code
    }
    fn relabel(a: Self::Answer, logical: i32) -> Self::Answer {
        a.with_partition_index(logical)
    }
    fn refused(partition: i32, code: i16) -> Self::Answer {
        PartitionData::default()
            .with_partition_index(partition)
            .with_error_code(code)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
    }
    fn enough(a: &Self::Answer) -> bool {
        a.records.as_ref().is_some_and(|r| !r.is_empty())
    }
}

struct Listed;

impl Forwarded for Listed {
    type Answer = ListOffsetsPartitionResponse;
    fn answers(r: ResponseKind) -> Vec<(String, Self::Answer)> {
        let ResponseKind::ListOffsets(r) = r else {
            return Vec::new();
        };
        r.topics
            .into_iter()
            .flat_map(|t| {
                let topic = t.name.0.to_string();
                t.partitions.into_iter().map(move |p| (topic.clone(), p))
            })
            .collect()
    }
    fn partition(a: &Self::Answer) -> i32 {
        a.partition_index
    }
    fn error(a: &Self::Answer) -> i16 {
        a.error_code
    }
    fn relabel(a: Self::Answer, logical: i32) -> Self::Answer {
        a.with_partition_index(logical).with_leader_epoch(-1)
    }
    fn refused(partition: i32, code: i16) -> Self::Answer {
        ListOffsetsPartitionResponse::default()
            .with_partition_index(partition)
            .with_error_code(code)
            .with_offset(-1)
            .with_timestamp(-1)
            .with_leader_epoch(-1)
    }
}

/// A request's partitions, each with its logical topic's index and name.
fn flatten<T, P: Clone>(
    topics: &[T],
    parts: impl Fn(&T) -> (&TopicName, &[P]),
    index: impl Fn(&P) -> i32,
) -> Vec<(usize, String, i32, P)> {
    topics
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            let (name, ps) = parts(t);
            let name = name.0.to_string();
            ps.iter()
                .map(|p| (ti, name.clone(), index(p), p.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// How long a connection's batches for a topic are refused once its
/// producers are to see more partitions ([`produce`]): librdkafka retries a
/// refused batch after `retry.backoff.ms` (100 ms) and refreshes its
/// metadata at once, so batches still in flight when it heard of the
/// refusal arrive well within it.
pub const REFRESH_WINDOW: Duration = Duration::from_secs(1);

/// A topic's partition count as a producer connection is taken to know it,
/// and until when its batches are refused after the count grew.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownCount {
    count: u32,
    refusing_until: Option<tokio::time::Instant>,
}

impl KnownCount {
    /// Whether a batch read `now`, with producers to see `count`
    /// partitions, is refused: from the read that finds the count grown,
    /// for [`REFRESH_WINDOW`].
    fn refusing(&mut self, count: u32, now: tokio::time::Instant) -> bool {
        if count > self.count {
            self.refusing_until = Some(now + REFRESH_WINDOW);
        }
        self.count = count;
        match self.refusing_until {
            Some(until) if now < until => true,
            _ => {
                self.refusing_until = None;
                false
            }
        }
    }
}

/// Forwards a produce; the answer once every leader answered (none with
/// acks 0).
///
/// `counts` holds, per topic, the partition count this connection's
/// producer is taken to know. When producers of a topic see more
/// partitions than that (a cluster was added to a spread topic, a keyed
/// topic rebalanced), the connection's batches for the topic are refused
/// unwritten with `NOT_LEADER_OR_FOLLOWER` for [`REFRESH_WINDOW`]: the
/// client refreshes its metadata at once and sends them again, instead of
/// using the new partitions only at its next periodic refresh (librdkafka's
/// is 5 minutes by default). Not only the first batch: a producer keeps
/// several requests in flight, and one sent before it heard of the refusal
/// but written while the refused one waited for its retry would put a
/// key's later records before its earlier ones (a retried batch goes back
/// to the head of its partition's queue, so refusing all of them keeps the
/// order).
pub async fn produce(
    shared: &Arc<Shared>,
    p: ProduceRequest,
    version: i16,
    counts: &mut HashMap<String, KnownCount>,
) -> Later<Option<ProduceResponse>> {
    let map = shared.view().map;
    let acks = p.acks;
    let timeout = Duration::from_millis(u64::try_from(p.timeout_ms).unwrap_or(0));
    let names: Vec<TopicName> = p.topic_data.iter().map(|t| t.name.clone()).collect();
    let mut answered = Vec::new();
    let mut asked = Vec::new();
    for (ti, topic, partition, data) in
        flatten(&p.topic_data, |t| (&t.name, &t.partition_data), |d| d.index)
    {
        let count = map
            .topics
            .get(&topic)
            .map_or(0, |lt| map.partition_count(lt, Side::Produce));
        let known = counts.entry(topic.clone()).or_insert(KnownCount {
            count,
            refusing_until: None,
        });
        if known.refusing(count, tokio::time::Instant::now()) {
            tracing::debug!(topic, count, "producer told to refresh its metadata");
            answered.push((
                ti,
                Produced::refused(partition, ResponseError::NotLeaderOrFollower.code()),
            ));
            continue;
        }
        asked.push((ti, topic, partition, data));
    }
    let (to, refused) = split(shared, &map, Side::Produce, asked, |_, partition, route| {
        Produced::refused(partition, refused_code(route))
    })
    .await;
    answered.extend(refused);
    let batches: usize = to.values().map(|g| g.parts.len()).sum();
    shared
        .metrics
        .produced_batches
        .fetch_add(batches as u64, Ordering::Relaxed);
    let sent = send_all(shared, to, ApiKey::Produce, version, acks != 0, |group| {
        RequestKind::Produce(
            ProduceRequest::default()
                .with_transactional_id(p.transactional_id.clone())
                .with_acks(acks)
                .with_timeout_ms(p.timeout_ms)
                .with_topic_data(
                    group
                        .by_topic()
                        .into_iter()
                        .map(|(topic, parts)| {
                            TopicProduceData::default()
                                .with_name(name(topic))
                                .with_partition_data(
                                    parts
                                        .into_iter()
                                        .map(|part| part.data.clone().with_index(part.partition))
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
        )
    })
    .await;
    let shared = shared.clone();
    Box::pin(async move {
        collect::<Produced>(shared, sent, timeout, &mut answered).await;
        if acks == 0 {
            return None;
        }
        let topics = joined(&names, answered, |name, parts| {
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(parts)
        });
        Some(ProduceResponse::default().with_responses(topics))
    })
}

/// The per-topic answers in the request's topic order.
fn joined<A, T>(
    names: &[TopicName],
    mut answered: Vec<(usize, A)>,
    topic: impl Fn(TopicName, Vec<A>) -> T,
) -> Vec<T> {
    answered.sort_by_key(|(ti, _)| *ti);
    let mut out = Vec::with_capacity(names.len());
    let mut it = answered.into_iter().peekable();
    for (ti, n) in names.iter().enumerate() {
        let mut parts = Vec::new();
        while let Some((_, a)) = it.next_if(|(i, _)| *i == ti) {
            parts.push(a);
        }
        if !parts.is_empty() {
            out.push(topic(n.clone(), parts));
        }
    }
    out
}

/// Forwards a fetch. Each leader gets the partitions it leads, on a
/// connection of its own for the fetch (a long poll holds a connection);
/// the answer goes as soon as one leader answers with records (the others'
/// partitions are fetched again by the client) or all have answered.
pub async fn fetch(shared: &Arc<Shared>, f: FetchRequest, version: i16) -> Later<FetchResponse> {
    shared.metrics.fetches.fetch_add(1, Ordering::Relaxed);
    let map = shared.view().map;
    let names: Vec<TopicName> = f.topics.iter().map(|t| t.topic.clone()).collect();
    let asked = flatten(&f.topics, |t| (&t.topic, &t.partitions), |p| p.partition);
    let offsets: HashMap<(usize, i32), i64> = asked
        .iter()
        .map(|(ti, _, p, fp)| ((*ti, *p), fp.fetch_offset))
        .collect();
    let (to, answered) = split(
        shared,
        &map,
        Side::Consume,
        asked,
        |ti, partition, route| match route {
            Route::Retired(end) => {
                let at = offsets.get(&(ti, partition)).copied().unwrap_or(end);
                let p = PartitionData::default()
                    .with_partition_index(partition)
                    .with_high_watermark(end)
                    .with_last_stable_offset(end)
                    .with_log_start_offset(end);
                if at == end {
                    p
                } else {
                    p.with_error_code(ResponseError::OffsetOutOfRange.code())
                }
            }
            other => Fetched::refused(partition, refused_code(other)),
        },
    )
    .await;
    let wait = Duration::from_millis(u64::try_from(f.max_wait_ms).unwrap_or(0)).min(MAX_FETCH_WAIT);
    // The leaders' answers together stay within what the connection
    // reserved for this fetch's answer.
    let per_leader = (MAX_FETCH_BYTES / to.len().max(1)) as i32;
    let sent = send_all(shared, to, ApiKey::Fetch, version, true, |group| {
        RequestKind::Fetch(
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(wait.as_millis() as i32)
                .with_min_bytes(f.min_bytes)
                .with_max_bytes(f.max_bytes.clamp(1, per_leader))
                .with_isolation_level(f.isolation_level)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(
                    group
                        .by_topic()
                        .into_iter()
                        .map(|(topic, parts)| {
                            FetchTopic::default()
                                .with_topic(name(topic))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|part| {
                                            part.data
                                                .clone()
                                                .with_partition(part.partition)
                                                .with_current_leader_epoch(-1)
                                                .with_last_fetched_epoch(-1)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
        )
    })
    .await;
    let shared = shared.clone();
    Box::pin(async move {
        // Only retired partitions asked: long-poll as a broker would on a
        // partition that gets nothing, rather than have the client spin.
        if sent.is_empty() && answered.iter().all(|(_, p)| p.error_code == 0) {
            tokio::time::sleep(wait).await;
        }
        let mut answered = answered;
        collect::<Fetched>(shared, sent, wait, &mut answered).await;
        let topics = joined(&names, answered, |topic, parts| {
            FetchableTopicResponse::default()
                .with_topic(topic)
                .with_partitions(parts)
        });
        FetchResponse::default()
            .with_session_id(0)
            .with_responses(topics)
    })
}

/// Forwards a ListOffsets; a retired partition answers its end offset.
pub async fn list_offsets(
    shared: &Arc<Shared>,
    l: ListOffsetsRequest,
    version: i16,
) -> Later<ListOffsetsResponse> {
    let map = shared.view().map;
    let names: Vec<TopicName> = l.topics.iter().map(|t| t.name.clone()).collect();
    let asked = flatten(
        &l.topics,
        |t| (&t.name, &t.partitions),
        |p| p.partition_index,
    );
    let (to, answered) = split(
        shared,
        &map,
        Side::Consume,
        asked,
        |_, partition, route| match route {
            Route::Retired(end) => ListOffsetsPartitionResponse::default()
                .with_partition_index(partition)
                .with_leader_epoch(-1)
                .with_timestamp(-1)
                .with_offset(end),
            other => Listed::refused(partition, refused_code(other)),
        },
    )
    .await;
    let sent = send_all(shared, to, ApiKey::ListOffsets, version, true, |group| {
        RequestKind::ListOffsets(
            ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(l.isolation_level)
                .with_topics(
                    group
                        .by_topic()
                        .into_iter()
                        .map(|(topic, parts)| {
                            ListOffsetsTopic::default()
                                .with_name(name(topic))
                                .with_partitions(
                                    parts
                                        .into_iter()
                                        .map(|part| {
                                            part.data
                                                .clone()
                                                .with_partition_index(part.partition)
                                                .with_current_leader_epoch(-1)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                ),
        )
    })
    .await;
    let shared = shared.clone();
    Box::pin(async move {
        let mut answered = answered;
        collect::<Listed>(shared, sent, Duration::ZERO, &mut answered).await;
        ListOffsetsResponse::default().with_topics(joined(&names, answered, |name, parts| {
            ListOffsetsTopicResponse::default()
                .with_name(name)
                .with_partitions(parts)
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grown_topic_refuses_every_batch_for_the_window_then_none() {
        let t0 = tokio::time::Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut known = KnownCount {
            count: 3,
            refusing_until: None,
        };
        assert!(!known.refusing(3, ms(0)), "nothing grew");
        // Grown: this batch and every one read within the window, not only
        // the first (batches in flight behind it would overtake its retry).
        assert!(known.refusing(4, ms(10)));
        assert!(known.refusing(4, ms(11)));
        assert!(known.refusing(4, ms(1009)));
        assert!(!known.refusing(4, ms(1010)), "the window ended");
        assert!(!known.refusing(4, ms(5000)));
        // Fewer partitions (a drain): nothing to refresh for.
        assert!(!known.refusing(3, ms(5001)));
        // Grown again: a new window.
        assert!(known.refusing(5, ms(6000)));
        assert!(!known.refusing(5, ms(7000)));
    }
}
