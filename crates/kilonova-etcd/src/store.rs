//! [`EtcdStore`]: the `MetadataStore` trait on etcd.
//!
//! The trait maps onto etcd one to one:
//! - a key's version is its `mod_revision`, the store's revision counter is
//!   etcd's (versions only grow, also across delete and re-create);
//! - `Expect::Absent` is a transaction comparing `create_revision == 0`,
//!   `Expect::Version(v)` one comparing `mod_revision == v`; the failure
//!   branch reads the key, so a conflict says what it found;
//! - a put, a delete and a multi-key transaction are each one etcd `Txn`:
//!   the compares of every operation's `expect`, the writes as the success
//!   branch (etcd gives them one revision and its watches report them in
//!   operation order). etcd does not say which compare failed, so the
//!   failure branch reads every key that has a condition (keys only), at
//!   the revision the compares saw, and the conditions are evaluated again
//!   here on what it read: the first that fails, in the caller's order, is
//!   the one reported (no race with later writes: it is the same snapshot);
//! - children are range scans over the key layout of [`crate::key`];
//! - a watch is an etcd watch over the prefix's key range (see [`crate::watch`]);
//! - a session is a lease: ephemeral keys are put with it, keep-alive renews
//!   it, closing revokes it (etcd deletes its keys in one revision), and a
//!   lease that expired is reported as [`MetadataError::SessionExpired`] by
//!   `keep_alive` and by writes bound to it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kilonova_metadata::{
    check_children, check_key, check_txn, Expect, MetadataError, MetadataStore, Page, Result,
    SessionId, Stored, TxnOp, Watch,
};
use tonic::Code;

use crate::config::EtcdConfig;
use crate::key::{ChildScan, Layout};
use crate::rpc::pb::kv_client::KvClient;
use crate::rpc::pb::lease_client::LeaseClient;
use crate::rpc::pb::{self, compare, request_op, response_op};
use crate::rpc::{Rpc, RpcError};

/// The metadata store on an etcd cluster.
pub struct EtcdStore {
    rpc: Arc<Rpc>,
    layout: Layout,
    /// Where watch tasks run (the runtime that connected the store).
    runtime: tokio::runtime::Handle,
    /// Dropped with the store, which ends its watches.
    alive: tokio::sync::watch::Sender<()>,
}

fn unavailable_or_backend(e: RpcError) -> MetadataError {
    match e {
        RpcError::Config(m) => MetadataError::Invalid(m),
        RpcError::Unreachable(m) => MetadataError::Unavailable(m),
        // What etcd refuses as the caller's fault: a request over its size
        // limit (`--max-request-bytes`, 1.5 MiB by default: InvalidArgument;
        // 512 KiB more and gRPC itself refuses it: ResourceExhausted).
        RpcError::Status {
            code: Code::InvalidArgument | Code::ResourceExhausted,
            message,
        } => MetadataError::Invalid(format!("etcd refused the request: {message}")),
        e @ RpcError::Status { .. } => MetadataError::Backend(e.to_string()),
    }
}

/// As [`unavailable_or_backend`], but etcd's "lease not found" is the session's end.
fn session_error(e: RpcError, session: Option<SessionId>) -> MetadataError {
    match (&e, session) {
        (
            RpcError::Status {
                code: Code::NotFound,
                message,
            },
            Some(s),
        ) if message.contains("lease not found") => MetadataError::SessionExpired(s.0),
        _ => unavailable_or_backend(e),
    }
}

fn revision_of(header: Option<&pb::ResponseHeader>) -> Result<u64> {
    header
        .and_then(|h| u64::try_from(h.revision).ok())
        .filter(|&r| r > 0)
        .ok_or_else(|| MetadataError::Backend("an etcd answer without a revision".into()))
}

fn version(kv: &pb::KeyValue) -> Result<u64> {
    u64::try_from(kv.mod_revision)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| MetadataError::Backend(format!("a key at revision {}", kv.mod_revision)))
}

/// A revision as etcd's signed field; above `i64::MAX` is no revision etcd has.
fn signed(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

/// The compare clause of a transaction expecting `expect` of `key`.
fn compare(key: &Bytes, expect: Expect) -> Option<pb::Compare> {
    let (target, union) = match expect {
        Expect::Any => return None,
        Expect::Absent => (
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(0),
        ),
        Expect::Version(v) => (
            compare::CompareTarget::Mod,
            compare::TargetUnion::ModRevision(signed(v)),
        ),
    };
    Some(pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: target as i32,
        key: key.clone(),
        target_union: Some(union),
        range_end: Bytes::new(),
    })
}

/// The etcd transaction of `ops` (checked by `check_txn`): the compares of
/// every condition, the writes as the success branch, and as the failure
/// branch a keys-only read of every key with a condition, each once.
fn request(layout: &Layout, ops: &[TxnOp]) -> pb::TxnRequest {
    let mut req = pb::TxnRequest::default();
    let mut read = std::collections::HashSet::new();
    for op in ops {
        let key = Bytes::from(layout.encode(op.key()));
        if let Some(c) = compare(&key, op.expect()) {
            req.compare.push(c);
            if read.insert(key.clone()) {
                req.failure.push(pb::RequestOp {
                    request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                        key: key.clone(),
                        keys_only: true,
                        ..pb::RangeRequest::default()
                    })),
                });
            }
        }
        let write = match op {
            TxnOp::Check { .. } => continue,
            TxnOp::Put { value, session, .. } => request_op::Request::RequestPut(pb::PutRequest {
                key,
                value: value.clone(),
                lease: session.map_or(0, |s| signed(s.0)),
                prev_kv: false,
            }),
            TxnOp::Delete { .. } => {
                request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key,
                    ..pb::DeleteRangeRequest::default()
                })
            }
        };
        req.success.push(pb::RequestOp {
            request: Some(write),
        });
    }
    req
}

/// The conflict a failed transaction reports: its conditions evaluated, in
/// order, on what its failure branch read (the snapshot the compares saw).
fn first_conflict(layout: &Layout, ops: &[TxnOp], r: &pb::TxnResponse) -> MetadataError {
    let found: std::collections::HashMap<&[u8], u64> = r
        .responses
        .iter()
        .filter_map(|op| match &op.response {
            Some(response_op::Response::ResponseRange(range)) => range.kvs.first(),
            _ => None,
        })
        .map(|kv| {
            let version = u64::try_from(kv.mod_revision).unwrap_or(0);
            (kv.key.as_ref(), version)
        })
        .collect();
    for op in ops {
        let key = layout.encode(op.key());
        if let Err(e) = op
            .expect()
            .check(op.key(), found.get(key.as_slice()).copied())
        {
            return e;
        }
    }
    MetadataError::Backend(
        "etcd refused a transaction whose conditions all hold on what it read".into(),
    )
}

/// The session a transaction's "lease not found" is about: its first put's.
fn first_session(ops: &[TxnOp]) -> Option<SessionId> {
    ops.iter().find_map(|op| match op {
        TxnOp::Put { session, .. } => *session,
        _ => None,
    })
}

/// A lease's time-to-live in etcd's whole seconds, rounded up (etcd raises
/// it further to its own minimum, 1.5 election timeouts).
fn lease_ttl_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis().div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

impl EtcdStore {
    /// Connects to the etcd cluster of `config`, checking that it answers.
    pub async fn connect(config: &EtcdConfig) -> Result<Self> {
        config.check().map_err(MetadataError::Invalid)?;
        let rpc = Rpc::new(config).map_err(unavailable_or_backend)?;
        let store = EtcdStore {
            rpc: Arc::new(rpc),
            layout: Layout::new(&config.root),
            runtime: tokio::runtime::Handle::current(),
            alive: tokio::sync::watch::Sender::new(()),
        };
        store.revision().await?;
        Ok(store)
    }

    /// etcd's current revision (every change of any key raises it).
    pub async fn revision(&self) -> Result<u64> {
        let root = Bytes::from(self.layout.encode(""));
        let r = self.range(root, Bytes::new(), 1, true, 0).await?;
        revision_of(r.header.as_ref())
    }

    /// Changes to `prefix` and below from revision `revision` on (which may
    /// be in the past: a watcher resuming where it stopped). If etcd has
    /// compacted that revision away, the watch starts with
    /// [`kilonova_metadata::Watched::Lagged`].
    pub fn watch_from(&self, prefix: &str, revision: u64) -> Watch {
        crate::watch::spawn(
            &self.runtime,
            self.alive.subscribe(),
            self.rpc.clone(),
            self.layout.clone(),
            prefix,
            revision,
        )
    }

    /// Discards the history before `revision` (etcd's compaction; operators
    /// usually let etcd's `--auto-compaction-retention` do it).
    pub async fn compact(&self, revision: u64) -> Result<()> {
        let req = pb::CompactionRequest {
            revision: signed(revision),
            physical: true,
        };
        self.rpc
            .call("compact", |ch| async move {
                KvClient::new(ch).compact(req).await
            })
            .await
            .map_err(unavailable_or_backend)?;
        Ok(())
    }

    async fn range(
        &self,
        key: Bytes,
        range_end: Bytes,
        limit: usize,
        keys_only: bool,
        revision: i64,
    ) -> Result<pb::RangeResponse> {
        let req = pb::RangeRequest {
            key,
            range_end,
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            revision,
            keys_only,
            ..pb::RangeRequest::default()
        };
        let r = self
            .rpc
            .call("range", |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).range(req).await }
            })
            .await
            .map_err(unavailable_or_backend)?;
        self.rpc.saw(r.header.as_ref());
        Ok(r)
    }

    /// Runs `ops` (checked) as one etcd transaction; a failed one is the
    /// first condition that does not hold.
    async fn run(&self, ops: &[TxnOp]) -> Result<pb::TxnResponse> {
        let req = request(&self.layout, ops);
        let r = self
            .rpc
            .call("txn", |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).txn(req).await }
            })
            .await
            .map_err(|e| session_error(e, first_session(ops)))?;
        self.rpc.saw(r.header.as_ref());
        if !r.succeeded {
            return Err(first_conflict(&self.layout, ops, &r));
        }
        Ok(r)
    }
}

#[async_trait]
impl MetadataStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        check_key(key)?;
        let k = Bytes::from(self.layout.encode(key));
        let r = self.range(k, Bytes::new(), 0, false, 0).await?;
        let Some(kv) = r.kvs.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some(Stored {
            version: version(&kv)?,
            session: u64::try_from(kv.lease)
                .ok()
                .filter(|&l| l > 0)
                .map(SessionId),
            value: kv.value,
        }))
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool> {
        check_key(key)?;
        let ops = [TxnOp::Delete {
            key: key.to_owned(),
            expect,
        }];
        let r = self.run(&ops).await?;
        let deleted = r.responses.first().map_or(0, |op| match &op.response {
            Some(response_op::Response::ResponseDeleteRange(d)) => d.deleted,
            _ => 0,
        });
        Ok(deleted > 0)
    }

    async fn txn(&self, ops: Vec<TxnOp>) -> Result<u64> {
        check_txn(&ops)?;
        let r = self.run(&ops).await?;
        revision_of(r.header.as_ref())
    }

    async fn children(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Page> {
        let trimmed = check_children(prefix, start_after)?;
        let mut scan = ChildScan::new(&self.layout, trimmed, start_after, limit);
        // Every scan of one page reads at the first one's revision: a page is
        // one snapshot, as the embedded store's.
        let mut revision = 0;
        loop {
            let (from, end, want) = scan.next_range();
            let r = self
                .range(
                    Bytes::copy_from_slice(from),
                    Bytes::copy_from_slice(end),
                    want,
                    true,
                    revision,
                )
                .await?;
            if revision == 0 {
                revision = r.header.as_ref().map_or(0, |h| h.revision);
            }
            let keys: Vec<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key.to_vec()).collect();
            if let Some(page) = scan.feed(&keys, r.more) {
                return Ok(page);
            }
        }
    }

    fn watch(&self, prefix: &str) -> Watch {
        // From the revision after every answer this store has had: a change a
        // call returned before this is not reported, every later one is.
        self.watch_from(prefix, self.rpc.seen() + 1)
    }

    async fn open_session(&self, ttl: Duration) -> Result<SessionId> {
        let req = pb::LeaseGrantRequest {
            ttl: lease_ttl_seconds(ttl),
            id: 0,
        };
        let r = self
            .rpc
            .call("lease grant", |ch| async move {
                LeaseClient::new(ch).lease_grant(req).await
            })
            .await
            .map_err(unavailable_or_backend)?;
        self.rpc.saw(r.header.as_ref());
        if !r.error.is_empty() {
            return Err(MetadataError::Backend(format!(
                "etcd refused a lease: {}",
                r.error
            )));
        }
        u64::try_from(r.id)
            .ok()
            .filter(|&id| id > 0)
            .map(SessionId)
            .ok_or_else(|| MetadataError::Backend(format!("etcd granted lease {}", r.id)))
    }

    async fn keep_alive(&self, session: SessionId) -> Result<()> {
        // One request on a keep-alive stream, one answer; the end of the
        // request stream then ends it.
        let req = pb::LeaseKeepAliveRequest {
            id: signed(session.0),
        };
        let answer = async {
            let mut stream = self
                .rpc
                .call("lease keep-alive", |ch| async move {
                    LeaseClient::new(ch)
                        .lease_keep_alive(tokio_stream::iter([req]))
                        .await
                })
                .await?;
            Ok::<_, RpcError>(stream.message().await?)
        };
        let answer = tokio::time::timeout(self.rpc.request_timeout(), answer)
            .await
            .map_err(|_| {
                MetadataError::Unavailable(format!(
                    "etcd did not answer a keep-alive within {:?}",
                    self.rpc.request_timeout()
                ))
            })?
            .map_err(|e| session_error(e, Some(session)))?;
        match answer {
            // etcd answers an expired (or unknown) lease with a TTL of 0.
            Some(r) if r.ttl > 0 => {
                self.rpc.saw(r.header.as_ref());
                Ok(())
            }
            Some(_) => Err(MetadataError::SessionExpired(session.0)),
            None => Err(MetadataError::Unavailable(
                "etcd ended a keep-alive unanswered".into(),
            )),
        }
    }

    async fn close_session(&self, session: SessionId) -> Result<()> {
        let req = pb::LeaseRevokeRequest {
            id: signed(session.0),
        };
        let r = self
            .rpc
            .call("lease revoke", |ch| async move {
                LeaseClient::new(ch).lease_revoke(req).await
            })
            .await
            .map_err(|e| session_error(e, Some(session)))?;
        self.rpc.saw(r.header.as_ref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_ttl_seconds(Duration::from_millis(300)), 1);
        assert_eq!(lease_ttl_seconds(Duration::ZERO), 1);
        assert_eq!(lease_ttl_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(lease_ttl_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn lost_leases_are_expired_sessions_and_outages_are_unavailable() {
        let lease = RpcError::Status {
            code: Code::NotFound,
            message: "etcdserver: requested lease not found".into(),
        };
        assert!(matches!(
            session_error(lease, Some(SessionId(7))),
            MetadataError::SessionExpired(7)
        ));
        let down = RpcError::Unreachable("connection refused".into());
        assert!(matches!(
            session_error(down, Some(SessionId(7))),
            MetadataError::Unavailable(_)
        ));
        let no_leader = RpcError::from(tonic::Status::unavailable("etcdserver: no leader"));
        assert!(matches!(
            unavailable_or_backend(no_leader),
            MetadataError::Unavailable(_)
        ));
        let too_large = RpcError::from(tonic::Status::invalid_argument(
            "etcdserver: request is too large",
        ));
        assert!(matches!(
            unavailable_or_backend(too_large),
            MetadataError::Invalid(_)
        ));
        let other = RpcError::from(tonic::Status::internal("mvcc: database space exceeded"));
        assert!(matches!(
            unavailable_or_backend(other),
            MetadataError::Backend(_)
        ));
    }
}
