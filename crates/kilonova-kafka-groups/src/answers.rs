//! The consumer-group requests on a [`Coordinator`], in the protocol's
//! types: FindCoordinator's keys and answer, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, DescribeGroups, ListGroups, and the answers to
//! OffsetCommit / OffsetFetch. Authorization and where committed offsets
//! live are the caller's (the broker's Kafka listener keeps them in its
//! metadata store, the federation's proxies with the controller).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::describe_groups_response::{
    DescribedGroup, DescribedGroupMember,
};
use kilonova_kafka::kafka_protocol::messages::find_coordinator_response::Coordinator as Found;
use kilonova_kafka::kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kilonova_kafka::kafka_protocol::messages::leave_group_response::MemberResponse;
use kilonova_kafka::kafka_protocol::messages::list_groups_response::ListedGroup;
use kilonova_kafka::kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kilonova_kafka::kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kilonova_kafka::kafka_protocol::messages::{
    BrokerId, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kilonova_kafka::kafka_protocol::protocol::StrBytes;

use crate::groups::{state_name, Answer, Coordinator, Join, Joined, Synced};

/// A group answer that may wait (for the generation to form, for the leader).
pub type Later<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How much longer than the rebalance timeout a join waits before it gives up.
const JOIN_MARGIN: Duration = Duration::from_secs(5);
/// The longest a follower's sync waits for the leader's assignment.
const SYNC_WAIT: Duration = Duration::from_secs(60);

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn opt_str(s: &Option<String>) -> Option<StrBytes> {
    s.as_deref().map(str_bytes)
}

fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn now<T: Send + 'static>(t: T) -> Later<T> {
    Box::pin(std::future::ready(t))
}

/// Where a group's coordinator is: a node id, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

/// The group ids a FindCoordinator asks about (version 4 asks for several,
/// before one); `None` for another key type (transactions are not served).
pub fn coordinator_keys(r: &FindCoordinatorRequest, version: i16) -> Option<Vec<StrBytes>> {
    if r.key_type != 0 {
        return None;
    }
    Some(match version {
        v if v >= 4 => r.coordinator_keys.clone(),
        _ => vec![r.key.clone()],
    })
}

/// The answer to a FindCoordinator, from each key's coordinator (or error).
pub fn coordinators_found(
    found: Vec<(StrBytes, Result<Node, i16>)>,
    version: i16,
) -> FindCoordinatorResponse {
    let mut coordinators: Vec<Found> = found
        .into_iter()
        .map(|(k, found)| match found {
            Ok(n) => Found::default()
                .with_key(k)
                .with_node_id(BrokerId(n.id))
                .with_host(str_bytes(&n.host))
                .with_port(n.port),
            Err(code) => Found::default()
                .with_key(k)
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1)
                .with_error_code(code),
        })
        .collect();
    // Version 4 answers in the list only; before, in the top-level fields.
    if version >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let first = coordinators.pop().unwrap_or_default();
    FindCoordinatorResponse::default()
        .with_error_code(first.error_code)
        .with_node_id(first.node_id)
        .with_host(first.host)
        .with_port(first.port)
}

/// A FindCoordinator for another key type than groups: every key refused.
pub fn coordinators_refused(r: &FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let keys = match version {
        v if v >= 4 => r.coordinator_keys.clone(),
        _ => vec![r.key.clone()],
    };
    let refused = keys
        .into_iter()
        .map(|k| (k, Err(ResponseError::CoordinatorNotAvailable.code())))
        .collect();
    coordinators_found(refused, version)
}

/// A JoinGroup refused before it reached the group.
pub fn join_refused(code: i16) -> Later<JoinGroupResponse> {
    now(JoinGroupResponse::default()
        .with_error_code(code)
        .with_generation_id(-1))
}

/// Joins the group; the answer once the generation forms.
pub fn join(
    groups: &Coordinator,
    r: JoinGroupRequest,
    version: i16,
    client_id: &str,
    client_host: String,
) -> Later<JoinGroupResponse> {
    let session = millis(r.session_timeout_ms);
    // Version 0 has no rebalance timeout: the session timeout stands in.
    let rebalance = match r.rebalance_timeout_ms {
        ms if ms > 0 => millis(ms),
        _ => session,
    };
    let join = Join {
        group: r.group_id.0.to_string(),
        member_id: r.member_id.to_string(),
        instance_id: r.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: client_id.to_string(),
        client_host,
        session_timeout: session,
        rebalance_timeout: rebalance,
        protocol_type: r.protocol_type.to_string(),
        protocols: r
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        id_required: version >= 4,
    };
    let member = join.member_id.clone();
    let answer = groups.join(join, Instant::now());
    Box::pin(async move {
        let joined = match answer {
            Answer::Now(j) => j,
            Answer::Later(rx) => match tokio::time::timeout(rebalance + JOIN_MARGIN, rx).await {
                Ok(Ok(j)) => j,
                Ok(Err(_)) => Joined {
                    error: ResponseError::UnknownMemberId.code(),
                    member_id: member,
                    ..Default::default()
                },
                Err(_) => Joined {
                    error: ResponseError::RebalanceInProgress.code(),
                    member_id: member,
                    ..Default::default()
                },
            },
        };
        JoinGroupResponse::default()
            .with_error_code(joined.error)
            .with_generation_id(if joined.error == 0 {
                joined.generation
            } else {
                -1
            })
            .with_protocol_type(opt_str(&joined.protocol_type))
            .with_protocol_name(opt_str(&joined.protocol))
            .with_leader(str_bytes(&joined.leader))
            .with_member_id(str_bytes(&joined.member_id))
            .with_members(
                joined
                    .members
                    .iter()
                    .map(|(id, instance, meta)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(str_bytes(id))
                            .with_group_instance_id(opt_str(instance))
                            .with_metadata(meta.clone())
                    })
                    .collect(),
            )
    })
}

/// Syncs with the group: the member's assignment once the leader's is in.
pub fn sync(groups: &Coordinator, r: SyncGroupRequest) -> Later<SyncGroupResponse> {
    let assignments: Vec<(String, Bytes)> = r
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let answer = groups.sync(
        &r.group_id.0,
        r.generation_id,
        &r.member_id,
        assignments,
        Instant::now(),
    );
    Box::pin(async move {
        let synced = match answer {
            Answer::Now(s) => s,
            Answer::Later(rx) => match tokio::time::timeout(SYNC_WAIT, rx).await {
                Ok(Ok(s)) => s,
                _ => Synced {
                    error: ResponseError::RebalanceInProgress.code(),
                    ..Default::default()
                },
            },
        };
        SyncGroupResponse::default()
            .with_error_code(synced.error)
            .with_protocol_type(opt_str(&synced.protocol_type))
            .with_protocol_name(opt_str(&synced.protocol))
            .with_assignment(synced.assignment)
    })
}

/// A SyncGroup refused before it reached the group.
pub fn sync_refused(code: i16) -> Later<SyncGroupResponse> {
    now(SyncGroupResponse::default().with_error_code(code))
}

pub fn heartbeat(groups: &Coordinator, r: &HeartbeatRequest) -> HeartbeatResponse {
    let error = groups.heartbeat(&r.group_id.0, r.generation_id, &r.member_id, Instant::now());
    HeartbeatResponse::default().with_error_code(error)
}

pub fn leave(groups: &Coordinator, r: &LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    // Version 3 and later name several members; before, one.
    let ids: Vec<String> = match version {
        v if v >= 3 => r.members.iter().map(|m| m.member_id.to_string()).collect(),
        _ => vec![r.member_id.to_string()],
    };
    let errors = groups.leave(&r.group_id.0, &ids, Instant::now());
    let members = r
        .members
        .iter()
        .zip(&errors)
        .map(|(m, e)| {
            MemberResponse::default()
                .with_member_id(m.member_id.clone())
                .with_group_instance_id(m.group_instance_id.clone())
                .with_error_code(*e)
        })
        .collect();
    let error = match version {
        v if v >= 3 => 0,
        _ => errors.first().copied().unwrap_or(0),
    };
    LeaveGroupResponse::default()
        .with_error_code(error)
        .with_members(members)
}

/// One committed offset of an OffsetCommit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub metadata: Option<String>,
}

/// The offsets an OffsetCommit commits.
pub fn commits(r: &OffsetCommitRequest) -> Vec<Commit> {
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| Commit {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
            })
        })
        .collect()
}

/// The answer to an OffsetCommit: `error` for every partition it named.
pub fn committed(r: &OffsetCommitRequest, error: i16) -> OffsetCommitResponse {
    let topics = r
        .topics
        .iter()
        .map(|t| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(error)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// A group's committed offsets: by topic, by partition, the offset and its
/// metadata.
pub type CommittedOffsets = BTreeMap<String, BTreeMap<i32, (i64, Option<String>)>>;

/// The answer to an OffsetFetch: the partitions it asked for, or (none
/// named) every one committed; -1 where nothing is.
pub fn offsets_fetched(r: &OffsetFetchRequest, stored: &CommittedOffsets) -> OffsetFetchResponse {
    let asked: Vec<(String, Vec<i32>)> = match &r.topics {
        Some(ts) => ts
            .iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect(),
        None => stored
            .iter()
            .map(|(t, ps)| (t.clone(), ps.keys().copied().collect()))
            .collect(),
    };
    let topics = asked
        .into_iter()
        .map(|(name, partitions)| {
            let committed = stored.get(&name);
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(&name)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|p| {
                            let c = committed.and_then(|c| c.get(&p));
                            OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(c.map_or(-1, |c| c.0))
                                .with_committed_leader_epoch(-1)
                                .with_metadata(Some(str_bytes(
                                    c.and_then(|c| c.1.as_deref()).unwrap_or(""),
                                )))
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// DescribeGroups: each group as the coordinator knows it, or the error
/// `allowed` gives for it.
pub fn describe(
    groups: &Coordinator,
    ids: &[GroupId],
    allowed: Vec<Result<(), i16>>,
) -> DescribeGroupsResponse {
    let described = ids
        .iter()
        .zip(allowed)
        .map(|(id, allowed)| {
            let g = DescribedGroup::default().with_group_id(id.clone());
            if let Err(code) = allowed {
                return g.with_error_code(code);
            }
            let Some(d) = groups.describe(&id.0) else {
                // Unknown to the coordinator: Kafka calls it Dead.
                return g.with_group_state(StrBytes::from_static_str("Dead"));
            };
            g.with_group_state(StrBytes::from_static_str(state_name(d.state)))
                .with_protocol_type(str_bytes(d.protocol_type.as_deref().unwrap_or("")))
                .with_protocol_data(str_bytes(d.protocol.as_deref().unwrap_or("")))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(str_bytes(&m.member_id))
                                .with_group_instance_id(opt_str(&m.instance_id))
                                .with_client_id(str_bytes(&m.client_id))
                                .with_client_host(str_bytes(&m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                )
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(described)
}

/// ListGroups: every group the coordinator holds.
pub fn list(groups: &Coordinator) -> ListGroupsResponse {
    let listed = groups
        .list()
        .into_iter()
        .map(|(name, state, _, protocol_type)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(&name)))
                .with_protocol_type(str_bytes(protocol_type.as_deref().unwrap_or("")))
                .with_group_state(str_bytes(state_name(state)))
        })
        .collect();
    ListGroupsResponse::default().with_groups(listed)
}
