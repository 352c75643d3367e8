//! The consumer-group requests: FindCoordinator (this broker), JoinGroup,
//! SyncGroup, Heartbeat and LeaveGroup on the listener's [`Coordinator`],
//! OffsetCommit / OffsetFetch on the metadata store (a group's offsets
//! survive restarts), ListGroups.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
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
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kilonova_kafka::kafka_protocol::protocol::StrBytes;
use kilonova_metadata::kafka_groups::CommittedOffset;
use kilonova_metadata::names::NamespaceName;

use super::connection::KafkaConnection;
use super::groups::{state_name, Answer, Join, Joined, Synced};
use kilonova_auth::{Need, Want};

/// A group answer that may wait (for the generation to form, for the leader).
pub(super) type Later<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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

impl KafkaConnection {
    fn namespace(&self) -> Result<NamespaceName, i16> {
        NamespaceName::parse(&self.namespace)
            .map_err(|_| ResponseError::CoordinatorNotAvailable.code())
    }

    /// Whether this connection's role may do `want` in its namespace;
    /// groups and producer ids are the namespace's.
    pub(super) async fn namespace_allowed(&self, want: Want) -> Result<(), i16> {
        let ns = self.namespace()?;
        self.broker
            .authorize(
                self.principal.as_ref(),
                Need::Namespace(want),
                None,
                Some(&ns),
            )
            .await
            .map_err(|e| match super::errors::code(&e) {
                c if c == ResponseError::TopicAuthorizationFailed.code() => {
                    ResponseError::GroupAuthorizationFailed.code()
                }
                c => c,
            })
    }

    /// Group `group`'s key among the coordinators: groups are the namespace's.
    fn group_key(&self, group: &str) -> String {
        format!("{}/{group}", self.namespace)
    }

    /// Whether this connection's role may do `want` with group `group`
    /// here: allowed in the namespace, and this broker coordinates it.
    async fn group_allowed(&mut self, want: Want, group: &str) -> Result<(), i16> {
        self.namespace_allowed(want).await?;
        let key = self.group_key(group);
        self.coordinates(&key).await
    }

    /// Each group's coordinator ([`super::nodes`]): this broker, standalone.
    pub(super) async fn find_coordinator(
        &mut self,
        r: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        // Version 4 asks for several keys; before, for one.
        let keys: Vec<StrBytes> = match version {
            v if v >= 4 => r.coordinator_keys.clone(),
            _ => vec![r.key.clone()],
        };
        let mut coordinators = Vec::with_capacity(keys.len());
        for k in keys {
            let found = match r.key_type {
                0 => {
                    let key = self.group_key(&k);
                    self.coordinator_of(&key).await
                }
                // Transactions are not served.
                _ => Err(ResponseError::CoordinatorNotAvailable.code()),
            };
            coordinators.push(match found {
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
            });
        }
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

    pub(super) async fn join_group(
        &mut self,
        r: JoinGroupRequest,
        version: i16,
    ) -> Later<JoinGroupResponse> {
        if let Err(code) = self.group_allowed(Want::Consume, &r.group_id.0).await {
            let refused = JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1);
            return Box::pin(std::future::ready(refused));
        }
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
            client_id: self.client_id.to_string(),
            client_host: format!("/{}", self.peer.ip()),
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
        let answer = self.groups.join(join, Instant::now());
        self.broker.metrics().kafka().count_join();
        Box::pin(async move {
            let joined = match answer {
                Answer::Now(j) => j,
                Answer::Later(rx) => {
                    match tokio::time::timeout(rebalance + JOIN_MARGIN, rx).await {
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
                    }
                }
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

    pub(super) async fn sync_group(&mut self, r: SyncGroupRequest) -> Later<SyncGroupResponse> {
        if let Err(code) = self.group_allowed(Want::Consume, &r.group_id.0).await {
            return Box::pin(std::future::ready(
                SyncGroupResponse::default().with_error_code(code),
            ));
        }
        let assignments: Vec<(String, Bytes)> = r
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect();
        let answer = self.groups.sync(
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

    pub(super) async fn heartbeat(&mut self, r: HeartbeatRequest) -> HeartbeatResponse {
        if let Err(code) = self.group_allowed(Want::Consume, &r.group_id.0).await {
            return HeartbeatResponse::default().with_error_code(code);
        }
        let error =
            self.groups
                .heartbeat(&r.group_id.0, r.generation_id, &r.member_id, Instant::now());
        HeartbeatResponse::default().with_error_code(error)
    }

    pub(super) async fn leave_group(
        &mut self,
        r: LeaveGroupRequest,
        version: i16,
    ) -> LeaveGroupResponse {
        if let Err(code) = self.group_allowed(Want::Consume, &r.group_id.0).await {
            return LeaveGroupResponse::default().with_error_code(code);
        }
        // Version 3 and later name several members; before, one.
        let ids: Vec<String> = match version {
            v if v >= 3 => r.members.iter().map(|m| m.member_id.to_string()).collect(),
            _ => vec![r.member_id.to_string()],
        };
        let errors = self.groups.leave(&r.group_id.0, &ids, Instant::now());
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

    pub(super) async fn offset_commit(&mut self, r: OffsetCommitRequest) -> OffsetCommitResponse {
        let group = r.group_id.0.to_string();
        let allowed = match self.group_allowed(Want::Consume, &group).await {
            Ok(()) => {
                self.groups
                    .commit_allowed(&group, r.generation_id_or_member_epoch, &r.member_id)
            }
            Err(code) => code,
        };
        let error = match (allowed, self.namespace()) {
            (0, Ok(ns)) => {
                let now_ms = self.broker.clock().now_ms();
                let commits: Vec<(String, i32, CommittedOffset)> = r
                    .topics
                    .iter()
                    .flat_map(|t| {
                        t.partitions.iter().map(move |p| {
                            (
                                t.name.0.to_string(),
                                p.partition_index,
                                CommittedOffset {
                                    offset: p.committed_offset,
                                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                                    committed_ms: now_ms,
                                },
                            )
                        })
                    })
                    .collect();
                match self
                    .broker
                    .resources()
                    .commit_kafka_offsets(&ns, &group, &commits)
                    .await
                {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::warn!(group, error = %e, "Kafka offsets not committed");
                        ResponseError::CoordinatorNotAvailable.code()
                    }
                }
            }
            (0, Err(code)) => code,
            (code, _) => code,
        };
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

    pub(super) async fn offset_fetch(&mut self, r: OffsetFetchRequest) -> OffsetFetchResponse {
        if let Err(code) = self.group_allowed(Want::Consume, &r.group_id.0).await {
            return OffsetFetchResponse::default().with_error_code(code);
        }
        let group = r.group_id.0.to_string();
        let stored = match self.namespace() {
            Ok(ns) => {
                self.broker
                    .resources()
                    .kafka_group_offsets(&ns, &group)
                    .await
            }
            Err(_) => {
                return OffsetFetchResponse::default()
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            }
        };
        let stored = match stored {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(group, error = %e, "Kafka offsets not read");
                return OffsetFetchResponse::default()
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code());
            }
        };
        // The partitions asked for, or (none named) every one committed.
        let asked: Vec<(String, Vec<i32>)> = match &r.topics {
            Some(ts) => ts
                .iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                .collect(),
            None => stored
                .topics
                .iter()
                .map(|(t, ps)| (t.clone(), ps.keys().copied().collect()))
                .collect(),
        };
        let topics = asked
            .into_iter()
            .map(|(name, partitions)| {
                let committed = stored.topics.get(&name);
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(str_bytes(&name)))
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|p| {
                                let c = committed.and_then(|c| c.get(&p));
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(c.map_or(-1, |c| c.offset))
                                    .with_committed_leader_epoch(-1)
                                    .with_metadata(Some(str_bytes(
                                        c.and_then(|c| c.metadata.as_deref()).unwrap_or(""),
                                    )))
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetFetchResponse::default().with_topics(topics)
    }

    pub(super) async fn describe_groups(
        &mut self,
        r: DescribeGroupsRequest,
    ) -> DescribeGroupsResponse {
        let mut allowed = Vec::with_capacity(r.groups.len());
        for id in &r.groups {
            allowed.push(self.group_allowed(Want::Lookup, &id.0).await);
        }
        let groups = r
            .groups
            .iter()
            .zip(allowed)
            .map(|(id, allowed)| {
                let g = DescribedGroup::default().with_group_id(id.clone());
                if let Err(code) = allowed {
                    return g.with_error_code(code);
                }
                let Some(d) = self.groups.describe(&id.0) else {
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
        DescribeGroupsResponse::default().with_groups(groups)
    }

    /// Deletes groups with no members: their committed offsets go.
    pub(super) async fn delete_groups(&mut self, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(r.groups_names.len());
        for id in &r.groups_names {
            let allowed = self.group_allowed(Want::Consume, &id.0).await;
            let code = match (allowed, self.namespace()) {
                (Err(code), _) | (Ok(()), Err(code)) => code,
                (Ok(()), Ok(ns)) if self.groups.forget_if_empty(&id.0) => {
                    match self.broker.resources().delete_kafka_group(&ns, &id.0).await {
                        Ok(true) => 0,
                        Ok(false) => ResponseError::GroupIdNotFound.code(),
                        Err(e) => {
                            tracing::warn!(group = %id.0.as_str(), error = %e, "Kafka group not deleted");
                            ResponseError::CoordinatorNotAvailable.code()
                        }
                    }
                }
                (Ok(()), Ok(_)) => ResponseError::NonEmptyGroup.code(),
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(id.clone())
                    .with_error_code(code),
            );
        }
        DeleteGroupsResponse::default().with_results(results)
    }

    pub(super) async fn list_groups(&self) -> ListGroupsResponse {
        if let Err(code) = self.namespace_allowed(Want::Lookup).await {
            return ListGroupsResponse::default().with_error_code(code);
        }
        let groups = self
            .groups
            .list()
            .into_iter()
            .map(|(name, state, _, protocol_type)| {
                ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(&name)))
                    .with_protocol_type(str_bytes(protocol_type.as_deref().unwrap_or("")))
                    .with_group_state(str_bytes(state_name(state)))
            })
            .collect();
        ListGroupsResponse::default().with_groups(groups)
    }
}
