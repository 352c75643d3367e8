//! The consumer-group requests: FindCoordinator (this broker), JoinGroup,
//! SyncGroup, Heartbeat and LeaveGroup on the listener's coordinator
//! (`kilonova_kafka_groups::groups`, answered by `kilonova_kafka_groups::answers`),
//! OffsetCommit / OffsetFetch on the metadata store (a group's offsets
//! survive restarts), ListGroups.

use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kilonova_kafka::kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse,
};
use kilonova_kafka_groups::answers::{self, Later};
use kilonova_metadata::kafka_groups::CommittedOffset;
use kilonova_metadata::names::NamespaceName;

use super::connection::KafkaConnection;
use kilonova_auth::{Need, Want};

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
        let Some(keys) = answers::coordinator_keys(&r, version) else {
            return answers::coordinators_refused(&r, version);
        };
        let mut found = Vec::with_capacity(keys.len());
        for k in keys {
            let key = self.group_key(&k);
            let node = self.coordinator_of(&key).await.map(|n| answers::Node {
                id: n.id,
                host: n.host,
                port: n.port,
            });
            found.push((k, node));
        }
        answers::coordinators_found(found, version)
    }

    pub(super) async fn join_group(
        &mut self,
        r: JoinGroupRequest,
        version: i16,
    ) -> Later<JoinGroupResponse> {
        if let Err(code) = self.group_allowed(Want::Consume, &r.group_id.0).await {
            return answers::join_refused(code);
        }
        self.broker.metrics().kafka().count_join();
        let host = format!("/{}", self.peer.ip());
        answers::join(&self.groups, r, version, &self.client_id, host)
    }

    pub(super) async fn sync_group(&mut self, r: SyncGroupRequest) -> Later<SyncGroupResponse> {
        if let Err(code) = self.group_allowed(Want::Consume, &r.group_id.0).await {
            return answers::sync_refused(code);
        }
        answers::sync(&self.groups, r)
    }

    pub(super) async fn heartbeat(&mut self, r: HeartbeatRequest) -> HeartbeatResponse {
        if let Err(code) = self.group_allowed(Want::Consume, &r.group_id.0).await {
            return HeartbeatResponse::default().with_error_code(code);
        }
        answers::heartbeat(&self.groups, &r)
    }

    pub(super) async fn leave_group(
        &mut self,
        r: LeaveGroupRequest,
        version: i16,
    ) -> LeaveGroupResponse {
        if let Err(code) = self.group_allowed(Want::Consume, &r.group_id.0).await {
            return LeaveGroupResponse::default().with_error_code(code);
        }
        answers::leave(&self.groups, &r, version)
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
                let commits: Vec<(String, i32, CommittedOffset)> = answers::commits(&r)
                    .into_iter()
                    .map(|c| {
                        let offset = CommittedOffset {
                            offset: c.offset,
                            metadata: c.metadata,
                            committed_ms: now_ms,
                        };
                        (c.topic, c.partition, offset)
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
        answers::committed(&r, error)
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
        let stored: answers::CommittedOffsets = stored
            .topics
            .into_iter()
            .map(|(t, ps)| {
                let ps = ps
                    .into_iter()
                    .map(|(p, c)| (p, (c.offset, c.metadata)))
                    .collect();
                (t, ps)
            })
            .collect();
        answers::offsets_fetched(&r, &stored)
    }

    pub(super) async fn describe_groups(
        &mut self,
        r: DescribeGroupsRequest,
    ) -> DescribeGroupsResponse {
        let mut allowed = Vec::with_capacity(r.groups.len());
        for id in &r.groups {
            allowed.push(self.group_allowed(Want::Lookup, &id.0).await);
        }
        answers::describe(&self.groups, &r.groups, allowed)
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
        answers::list(&self.groups)
    }
}
