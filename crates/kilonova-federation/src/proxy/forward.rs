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
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
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

/// Forwards a produce; the answer once every leader answered (none with
/// acks 0).
///
/// `counts` holds, per topic, the partition count this connection's
/// producer is taken to know. When producers of a topic see more
/// partitions than that (a cluster was added to a spread topic, a keyed
/// topic rebalanced), the connection's next batches for the topic are
/// refused unwritten with `NOT_LEADER_OR_FOLLOWER`, once: the client
/// refreshes its metadata at once and sends them again, instead of using
/// the new partitions only at its next periodic refresh (librdkafka's is
/// 5 minutes by default).
pub async fn produce(
    shared: &Arc<Shared>,
    p: ProduceRequest,
    version: i16,
    counts: &mut HashMap<String, u32>,
) -> Later<Option<ProduceResponse>> {
    let map = shared.view().map;
    let acks = p.acks;
    let timeout = Duration::from_millis(u64::try_from(p.timeout_ms).unwrap_or(0));
    let names: Vec<TopicName> = p.topic_data.iter().map(|t| t.name.clone()).collect();
    let mut answered = Vec::new();
    let mut asked: Vec<(usize, String, i32, Option<bytes::Bytes>)> = Vec::new();
    for (ti, t) in p.topic_data.into_iter().enumerate() {
        let topic = t.name.0.to_string();
        let now = map
            .topics
            .get(&topic)
            .map_or(0, |lt| map.partition_count(lt, Side::Produce));
        let known = *counts.entry(topic.clone()).or_insert(now);
        if now > known {
            counts.insert(topic.clone(), now);
            tracing::debug!(topic, known, now, "producer told to refresh its metadata");
            for d in t.partition_data {
                answered.push((
                    ti,
                    produce_refused(d.index, ResponseError::NotLeaderOrFollower.code()),
                ));
            }
            continue;
        }
        asked.extend(
            t.partition_data
                .into_iter()
                .map(|d| (ti, topic.clone(), d.index, d.records)),
        );
    }
    let (to, refused) = split(shared, &map, Side::Produce, asked, |_, partition, route| {
        produce_refused(partition, refused_code(route))
    })
    .await;
    answered.extend(refused);
    let mut sent: Vec<(ToLeader<()>, Result<InFlight, i16>)> = Vec::with_capacity(to.len());
    for ((leader, _), group) in to {
        let body = ProduceRequest::default()
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
                                    .map(|part| {
                                        PartitionProduceData::default()
                                            .with_index(part.partition)
                                            .with_records(part.data.clone())
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        shared
            .metrics
            .produced_batches
            .fetch_add(group.parts.len() as u64, Ordering::Relaxed);
        let started = match shared.pool.shared(&leader).await {
            Ok(up) => up
                .start(
                    ApiKey::Produce,
                    version,
                    RequestKind::Produce(body),
                    acks != 0,
                )
                .await
                .map_err(|e| failed(shared, &group.cluster, &e)),
            Err(e) => Err(failed(shared, &group.cluster, &e)),
        };
        sent.push((group.sent(), started));
    }
    let shared = shared.clone();
    Box::pin(async move {
        for (group, started) in sent {
            let answer = match started {
                Ok(in_flight) => in_flight
                    .answer(timeout)
                    .await
                    .map_err(|e| failed(&shared, &group.cluster, &e)),
                Err(code) => Err(code),
            };
            match answer {
                Ok(Some(ResponseKind::Produce(r))) => {
                    for t in r.responses {
                        for pr in t.partition_responses {
                            if leader_moved(pr.error_code) {
                                shared.forget_leaders(&group.cluster, &t.name.0);
                            }
                            if let Some((ti, lp)) = group.logical(&t.name.0, pr.index) {
                                answered.push((ti, pr.with_index(lp)));
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(code) => {
                    for Part {
                        ti, logical: lp, ..
                    } in group.parts
                    {
                        answered.push((
                            ti,
                            PartitionProduceResponse::default()
                                .with_index(lp)
                                .with_error_code(code)
                                .with_base_offset(-1)
                                .with_log_append_time_ms(-1)
                                .with_log_start_offset(-1),
                        ));
                    }
                }
            }
        }
        if acks == 0 {
            return None;
        }
        Some(
            ProduceResponse::default().with_responses(joined(&names, answered, |name, parts| {
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(parts)
            })),
        )
    })
}

fn produce_refused(partition: i32, code: i16) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(partition)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
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

fn partition_error(partition: i32, code: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(partition)
        .with_error_code(code)
        .with_high_watermark(-1)
        .with_last_stable_offset(-1)
        .with_log_start_offset(-1)
}

/// Forwards a fetch. Each leader gets the partitions it leads, on a
/// connection of its own for the fetch (a long poll holds a connection);
/// the answer goes as soon as one leader answers with records (the others'
/// partitions are fetched again by the client) or all have answered.
pub async fn fetch(shared: &Arc<Shared>, f: FetchRequest, version: i16) -> Later<FetchResponse> {
    shared.metrics.fetches.fetch_add(1, Ordering::Relaxed);
    let map = shared.view().map;
    let names: Vec<TopicName> = f.topics.iter().map(|t| t.topic.clone()).collect();
    let asked: Vec<(usize, String, i32, FetchPartition)> = f
        .topics
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.partitions
                .iter()
                .map(move |p| (ti, t.topic.0.to_string(), p.partition, p.clone()))
        })
        .collect();
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
            other => partition_error(partition, refused_code(other)),
        },
    )
    .await;
    let wait = Duration::from_millis(u64::try_from(f.max_wait_ms).unwrap_or(0)).min(MAX_FETCH_WAIT);
    let mut sent: Vec<(ToLeader<()>, Result<InFlight, i16>)> = Vec::with_capacity(to.len());
    for ((leader, _), group) in to {
        let body = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(wait.as_millis() as i32)
            .with_min_bytes(f.min_bytes)
            .with_max_bytes(f.max_bytes)
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
            );
        let started = shared
            .pool
            .start_fetch(&leader, version, RequestKind::Fetch(body))
            .await
            .map_err(|e| failed(shared, &group.cluster, &e));
        sent.push((group.sent(), started));
    }
    let shared = shared.clone();
    Box::pin(async move {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        // Only retired partitions asked: long-poll as a broker would on a
        // partition that gets nothing, rather than have the client spin.
        if sent.is_empty() && answered.iter().all(|(_, p)| p.error_code == 0) {
            tokio::time::sleep(wait).await;
        }
        let mut answered = answered;
        let mut pending: FuturesUnordered<_> = sent
            .into_iter()
            .map(|(group, started)| {
                let shared = shared.clone();
                async move {
                    let answer = match started {
                        Ok(in_flight) => match in_flight.answer(wait).await {
                            Ok(Some(ResponseKind::Fetch(r))) => Ok(r),
                            Ok(_) => Err(ResponseError::UnknownServerError.code()),
                            Err(e) => Err(failed(&shared, &group.cluster, &e)),
                        },
                        Err(code) => Err(code),
                    };
                    (group, answer)
                }
            })
            .collect();
        let mut got_records = false;
        while let Some((group, answer)) = pending.next().await {
            match answer {
                Ok(r) => {
                    for t in r.responses {
                        for pd in t.partitions {
                            if leader_moved(pd.error_code) {
                                shared.forget_leaders(&group.cluster, &t.topic.0);
                            }
                            got_records |= pd.records.as_ref().is_some_and(|r| !r.is_empty());
                            if let Some((ti, lp)) = group.logical(&t.topic.0, pd.partition_index) {
                                answered.push((ti, pd.with_partition_index(lp)));
                            }
                        }
                    }
                }
                Err(code) => {
                    for Part {
                        ti, logical: lp, ..
                    } in group.parts
                    {
                        answered.push((ti, partition_error(lp, code)));
                    }
                }
            }
            if got_records {
                break;
            }
        }
        FetchResponse::default()
            .with_session_id(0)
            .with_responses(joined(&names, answered, |topic, parts| {
                FetchableTopicResponse::default()
                    .with_topic(topic)
                    .with_partitions(parts)
            }))
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
    let asked: Vec<(usize, String, i32, ListOffsetsPartition)> = l
        .topics
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.partitions
                .iter()
                .map(move |p| (ti, t.name.0.to_string(), p.partition_index, p.clone()))
        })
        .collect();
    let (to, answered) = split(shared, &map, Side::Consume, asked, |_, partition, route| {
        let p = ListOffsetsPartitionResponse::default()
            .with_partition_index(partition)
            .with_leader_epoch(-1)
            .with_timestamp(-1);
        match route {
            Route::Retired(end) => p.with_offset(end),
            other => p.with_offset(-1).with_error_code(refused_code(other)),
        }
    })
    .await;
    let mut sent = Vec::with_capacity(to.len());
    for ((leader, _), group) in to {
        let body = ListOffsetsRequest::default()
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
            );
        let started = match shared.pool.shared(&leader).await {
            Ok(up) => up
                .start(
                    ApiKey::ListOffsets,
                    version,
                    RequestKind::ListOffsets(body),
                    true,
                )
                .await
                .map_err(|e| failed(shared, &group.cluster, &e)),
            Err(e) => Err(failed(shared, &group.cluster, &e)),
        };
        sent.push((group.sent(), started));
    }
    let shared = shared.clone();
    Box::pin(async move {
        let mut answered = answered;
        for (group, started) in sent {
            let answer = match started {
                Ok(in_flight) => in_flight
                    .answer(Duration::ZERO)
                    .await
                    .map_err(|e| failed(&shared, &group.cluster, &e)),
                Err(code) => Err(code),
            };
            match answer {
                Ok(Some(ResponseKind::ListOffsets(r))) => {
                    for t in r.topics {
                        for p in t.partitions {
                            if let Some((ti, lp)) = group.logical(&t.name.0, p.partition_index) {
                                answered
                                    .push((ti, p.with_partition_index(lp).with_leader_epoch(-1)));
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(code) => {
                    for Part {
                        ti, logical: lp, ..
                    } in group.parts
                    {
                        answered.push((
                            ti,
                            ListOffsetsPartitionResponse::default()
                                .with_partition_index(lp)
                                .with_error_code(code)
                                .with_offset(-1)
                                .with_timestamp(-1)
                                .with_leader_epoch(-1),
                        ));
                    }
                }
            }
        }
        ListOffsetsResponse::default().with_topics(joined(&names, answered, |name, parts| {
            ListOffsetsTopicResponse::default()
                .with_name(name)
                .with_partitions(parts)
        }))
    })
}
