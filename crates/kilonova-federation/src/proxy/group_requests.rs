//! Consumer groups through the federation: the proxy a hash of the group
//! id picks among the client's proxies coordinates the group (membership
//! and generations, the state machine the broker's listener runs too);
//! committed offsets go to the controller's store, per logical partition,
//! so they outlive proxies and physical clusters alike.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse,
};
use kilonova_kafka_groups::answers::{self as answers, Later};

use super::routing::{coordinator_of, nodes_for};
use super::Shared;
use crate::api::OffsetEntry;
use crate::map::Side;

/// A group's requests as one client connection makes them.
pub struct GroupClient<'a> {
    pub shared: &'a Arc<Shared>,
    pub client_id: &'a str,
    /// Whom the name service knows the client as (its SASL identity, or
    /// its client id).
    pub identity: &'a str,
    pub client_host: String,
    pub side: Side,
}

impl GroupClient<'_> {
    /// Whether this proxy coordinates `group` (`NOT_COORDINATOR` if not:
    /// the client asks FindCoordinator again).
    fn coordinates(&self, group: &str) -> Result<(), i16> {
        let view = self.shared.view();
        let nodes = nodes_for(self.shared, &view, self.identity, self.side);
        match coordinator_of(&nodes, group) {
            Some(n) if n.id == self.shared.config.node_id => Ok(()),
            _ => Err(ResponseError::NotCoordinator.code()),
        }
    }

    pub fn find_coordinator(
        &self,
        r: &FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let Some(keys) = answers::coordinator_keys(r, version) else {
            return answers::coordinators_refused(r, version);
        };
        let view = self.shared.view();
        let nodes = nodes_for(self.shared, &view, self.identity, self.side);
        let found = keys
            .into_iter()
            .map(|k| {
                let node = coordinator_of(&nodes, &k)
                    .cloned()
                    .ok_or(ResponseError::CoordinatorNotAvailable.code());
                (k, node)
            })
            .collect();
        answers::coordinators_found(found, version)
    }

    pub fn join(&self, r: JoinGroupRequest, version: i16) -> Later<JoinGroupResponse> {
        if let Err(code) = self.coordinates(&r.group_id.0) {
            return answers::join_refused(code);
        }
        answers::join(
            &self.shared.groups,
            r,
            version,
            self.client_id,
            self.client_host.clone(),
        )
    }

    pub fn sync(&self, r: SyncGroupRequest) -> Later<SyncGroupResponse> {
        if let Err(code) = self.coordinates(&r.group_id.0) {
            return answers::sync_refused(code);
        }
        answers::sync(&self.shared.groups, r)
    }

    pub fn heartbeat(&self, r: &HeartbeatRequest) -> HeartbeatResponse {
        if let Err(code) = self.coordinates(&r.group_id.0) {
            return HeartbeatResponse::default().with_error_code(code);
        }
        answers::heartbeat(&self.shared.groups, r)
    }

    pub fn leave(&self, r: &LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        if let Err(code) = self.coordinates(&r.group_id.0) {
            return LeaveGroupResponse::default().with_error_code(code);
        }
        answers::leave(&self.shared.groups, r, version)
    }

    pub fn describe(&self, r: &DescribeGroupsRequest) -> DescribeGroupsResponse {
        let allowed = r.groups.iter().map(|g| self.coordinates(g)).collect();
        answers::describe(&self.shared.groups, &r.groups, allowed)
    }

    pub fn list(&self) -> ListGroupsResponse {
        answers::list(&self.shared.groups)
    }

    /// Commits through the controller (answered once stored there).
    pub async fn offset_commit(&self, r: &OffsetCommitRequest) -> OffsetCommitResponse {
        let group = r.group_id.0.to_string();
        let mut error = match self.coordinates(&group) {
            Ok(()) => self.shared.groups.commit_allowed(
                &group,
                r.generation_id_or_member_epoch,
                &r.member_id,
            ),
            Err(code) => code,
        };
        if error == 0 {
            let commits: Vec<OffsetEntry> = answers::commits(r)
                .into_iter()
                .map(|c| OffsetEntry {
                    topic: c.topic,
                    partition: c.partition,
                    offset: c.offset,
                    metadata: c.metadata,
                })
                .collect();
            let path = format!("/federation/v1/offsets/{}", encode(&group));
            let body = serde_json::to_value(&commits).unwrap_or_default();
            if let Err(e) = self
                .shared
                .controller
                .post::<serde_json::Value>(&path, body)
                .await
            {
                tracing::warn!(group, error = %e, "offsets not committed to the controller");
                error = ResponseError::CoordinatorNotAvailable.code();
            }
        }
        answers::committed(r, error)
    }

    pub async fn offset_fetch(&self, r: &OffsetFetchRequest) -> OffsetFetchResponse {
        let group = r.group_id.0.to_string();
        if let Err(code) = self.coordinates(&group) {
            return OffsetFetchResponse::default().with_error_code(code);
        }
        let path = format!("/federation/v1/offsets/{}", encode(&group));
        let stored: Vec<OffsetEntry> = match self.shared.controller.get(&path).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(group, error = %e, "offsets not read from the controller");
                return OffsetFetchResponse::default()
                    .with_error_code(ResponseError::CoordinatorNotAvailable.code());
            }
        };
        let mut committed = answers::CommittedOffsets::new();
        for o in stored {
            committed
                .entry(o.topic)
                .or_default()
                .insert(o.partition, (o.offset, o.metadata));
        }
        answers::offsets_fetched(r, &committed)
    }

    pub async fn delete_groups(&self, r: &DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(r.groups_names.len());
        for id in &r.groups_names {
            let code = match self.coordinates(id) {
                Err(code) => code,
                Ok(()) if self.shared.groups.forget_if_empty(id) => {
                    let path = format!("/federation/v1/offsets/{}", encode(id));
                    match self
                        .shared
                        .controller
                        .delete::<serde_json::Value>(&path)
                        .await
                    {
                        Ok(v) if v.get("existed") == Some(&serde_json::Value::Bool(true)) => 0,
                        Ok(_) => ResponseError::GroupIdNotFound.code(),
                        Err(e) => {
                            tracing::warn!(group = %id.0.as_str(), error = %e, "group offsets not deleted");
                            ResponseError::CoordinatorNotAvailable.code()
                        }
                    }
                }
                Ok(()) => ResponseError::NonEmptyGroup.code(),
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(id.clone())
                    .with_error_code(code),
            );
        }
        DeleteGroupsResponse::default().with_results(results)
    }
}

/// A group id as one path segment (percent-encoded).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
