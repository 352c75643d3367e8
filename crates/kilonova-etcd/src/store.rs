//! [`EtcdStore`]: the `MetadataStore` trait on etcd.
//!
//! The trait maps onto etcd one to one:
//! - a key's version is its `mod_revision`, the store's revision counter is
//!   etcd's (versions only grow, also across delete and re-create);
//! - `Expect::Absent` is a transaction comparing `create_revision == 0`,
//!   `Expect::Version(v)` one comparing `mod_revision == v`; the failure
//!   branch reads the key, so a conflict says what it found;
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
    check_key, Expect, MetadataError, MetadataStore, Page, Result, SessionId, Stored, Watch,
};
use serde_json::json;

use crate::config::EtcdConfig;
use crate::gateway::{
    b64, Gateway, GatewayError, KeyValue, LeaseResponse, RangeResponse, TxnResponse,
    DEADLINE_EXCEEDED, NOT_FOUND, UNAVAILABLE,
};
use crate::key::{ChildScan, Layout};

/// The metadata store on an etcd cluster.
pub struct EtcdStore {
    gateway: Arc<Gateway>,
    layout: Layout,
    /// Where watch tasks run (the runtime that connected the store).
    runtime: tokio::runtime::Handle,
}

fn unavailable_or_backend(e: GatewayError) -> MetadataError {
    match e {
        GatewayError::Unreachable(m) => MetadataError::Unavailable(m),
        GatewayError::Status {
            code: UNAVAILABLE | DEADLINE_EXCEEDED,
            message,
        } => MetadataError::Unavailable(format!("etcd: {message}")),
        e @ (GatewayError::Status { .. } | GatewayError::Decode(_)) => {
            MetadataError::Backend(e.to_string())
        }
    }
}

/// As [`unavailable_or_backend`], but etcd's "lease not found" is the session's end.
fn session_error(e: GatewayError, session: Option<SessionId>) -> MetadataError {
    match (&e, session) {
        (GatewayError::Status { code, message }, Some(s))
            if *code == NOT_FOUND && message.contains("lease not found") =>
        {
            MetadataError::SessionExpired(s.0)
        }
        _ => unavailable_or_backend(e),
    }
}

fn version(kv: &KeyValue) -> Result<u64> {
    u64::try_from(kv.mod_revision)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| MetadataError::Backend(format!("a key at revision {}", kv.mod_revision)))
}

/// The compare clauses of a transaction expecting `expect` of `key` (base64).
fn compare(key: &str, expect: Expect) -> serde_json::Value {
    match expect {
        Expect::Any => json!([]),
        Expect::Absent => json!([{
            "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0",
        }]),
        Expect::Version(v) => json!([{
            "key": key, "target": "MOD", "result": "EQUAL", "mod_revision": v.to_string(),
        }]),
    }
}

/// The conflict a failed transaction reports, from its failure branch's read.
fn bad_version(key: &str, expect: Expect, r: &TxnResponse) -> MetadataError {
    let found = r
        .responses
        .first()
        .and_then(|op| op.response_range.as_ref())
        .and_then(|range| range.kvs.first())
        .map_or_else(
            || "no key".to_owned(),
            |kv| format!("version {}", kv.mod_revision),
        );
    MetadataError::BadVersion {
        key: key.to_owned(),
        expected: match expect {
            Expect::Any => "anything".into(),
            Expect::Absent => "no key".into(),
            Expect::Version(v) => format!("version {v}"),
        },
        found,
    }
}

/// A lease's time-to-live in etcd's whole seconds, rounded up (etcd raises
/// it further to its own minimum, 1.5 election timeouts).
fn lease_ttl_seconds(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

impl EtcdStore {
    /// Connects to the etcd cluster of `config`, checking that it answers.
    pub async fn connect(config: &EtcdConfig) -> Result<Self> {
        config.check().map_err(MetadataError::Invalid)?;
        let gateway = Gateway::new(config).map_err(unavailable_or_backend)?;
        let store = EtcdStore {
            gateway: Arc::new(gateway),
            layout: Layout::new(&config.root),
            runtime: tokio::runtime::Handle::current(),
        };
        store.revision().await?;
        Ok(store)
    }

    /// etcd's current revision (every change of any key raises it).
    pub async fn revision(&self) -> Result<u64> {
        let root = self.layout.encode("");
        let r: RangeResponse = self
            .gateway
            .call(
                "/v3/kv/range",
                &json!({"key": b64(&root), "keys_only": true, "limit": 1}),
            )
            .await
            .map_err(unavailable_or_backend)?;
        self.gateway.saw(&r.header);
        u64::try_from(r.header.revision)
            .map_err(|_| MetadataError::Backend("a negative revision".into()))
    }

    /// Changes to `prefix` and below from revision `revision` on (which may
    /// be in the past: a watcher resuming where it stopped). If etcd has
    /// compacted that revision away, the watch starts with
    /// [`kilonova_metadata::Watched::Lagged`].
    pub fn watch_from(&self, prefix: &str, revision: u64) -> Watch {
        crate::watch::spawn(
            &self.runtime,
            self.gateway.clone(),
            self.layout.clone(),
            prefix,
            revision,
        )
    }

    /// Discards the history before `revision` (etcd's compaction; operators
    /// usually let etcd's `--auto-compaction-retention` do it).
    pub async fn compact(&self, revision: u64) -> Result<()> {
        let _: serde_json::Value = self
            .gateway
            .call(
                "/v3/kv/compaction",
                &json!({"revision": revision.to_string(), "physical": true}),
            )
            .await
            .map_err(unavailable_or_backend)?;
        Ok(())
    }

    async fn txn(
        &self,
        body: &serde_json::Value,
        session: Option<SessionId>,
    ) -> Result<TxnResponse> {
        let r: TxnResponse = self
            .gateway
            .call("/v3/kv/txn", body)
            .await
            .map_err(|e| session_error(e, session))?;
        self.gateway.saw(&r.header);
        Ok(r)
    }

    async fn lease_call(&self, path: &str, session: SessionId) -> Result<LeaseResponse> {
        self.gateway
            .call(path, &json!({"ID": session.0.to_string()}))
            .await
            .map_err(|e| session_error(e, Some(session)))
    }
}

#[async_trait]
impl MetadataStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        check_key(key)?;
        let k = b64(&self.layout.encode(key));
        let r: RangeResponse = self
            .gateway
            .call("/v3/kv/range", &json!({ "key": k }))
            .await
            .map_err(unavailable_or_backend)?;
        self.gateway.saw(&r.header);
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

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        session: Option<SessionId>,
    ) -> Result<u64> {
        check_key(key)?;
        let k = b64(&self.layout.encode(key));
        let mut put = json!({"key": k, "value": b64(&value)});
        if let Some(s) = session {
            put["lease"] = json!(s.0.to_string());
        }
        let body = json!({
            "compare": compare(&k, expect),
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": k, "keys_only": true}}],
        });
        let r = self.txn(&body, session).await?;
        if !r.succeeded {
            return Err(bad_version(key, expect, &r));
        }
        u64::try_from(r.header.revision)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| MetadataError::Backend("a write without a revision".into()))
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<bool> {
        check_key(key)?;
        let k = b64(&self.layout.encode(key));
        let body = json!({
            "compare": compare(&k, expect),
            "success": [{"request_delete_range": {"key": k}}],
            "failure": [{"request_range": {"key": k, "keys_only": true}}],
        });
        let r = self.txn(&body, None).await?;
        if !r.succeeded {
            return Err(bad_version(key, expect, &r));
        }
        let deleted = r
            .responses
            .first()
            .and_then(|op| op.response_delete_range.as_ref())
            .map_or(0, |d| d.deleted);
        Ok(deleted > 0)
    }

    async fn children(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Page> {
        let trimmed = prefix.trim_end_matches('/');
        if !trimmed.is_empty() {
            check_key(trimmed)?;
        }
        if start_after.is_some_and(|s| s.is_empty() || s.contains('/')) {
            return Err(MetadataError::InvalidKey(format!(
                "{prefix}/{}",
                start_after.unwrap_or_default()
            )));
        }
        let mut scan = ChildScan::new(&self.layout, trimmed, start_after, limit);
        // Every scan of one page reads at the first one's revision: a page is
        // one snapshot, as the embedded store's.
        let mut revision: Option<i64> = None;
        loop {
            let (from, end, want) = scan.next_range();
            let mut body = json!({
                "key": b64(from), "range_end": b64(end), "limit": want, "keys_only": true,
            });
            if let Some(rev) = revision {
                body["revision"] = json!(rev.to_string());
            }
            let r: RangeResponse = self
                .gateway
                .call("/v3/kv/range", &body)
                .await
                .map_err(unavailable_or_backend)?;
            self.gateway.saw(&r.header);
            revision.get_or_insert(r.header.revision);
            let keys: Vec<Vec<u8>> = r.kvs.into_iter().map(|kv| kv.key.to_vec()).collect();
            if let Some(page) = scan.feed(&keys, r.more) {
                return Ok(page);
            }
        }
    }

    fn watch(&self, prefix: &str) -> Watch {
        // From the revision after every answer this store has had: a change a
        // call returned before this is not reported, every later one is.
        self.watch_from(prefix, self.gateway.seen() + 1)
    }

    async fn open_session(&self, ttl: Duration) -> Result<SessionId> {
        let r: LeaseResponse = self
            .gateway
            .call(
                "/v3/lease/grant",
                &json!({"TTL": lease_ttl_seconds(ttl).to_string()}),
            )
            .await
            .map_err(unavailable_or_backend)?;
        self.gateway.saw(&r.header);
        u64::try_from(r.id)
            .ok()
            .filter(|&id| id > 0)
            .map(SessionId)
            .ok_or_else(|| MetadataError::Backend(format!("etcd granted lease {}", r.id)))
    }

    async fn keep_alive(&self, session: SessionId) -> Result<()> {
        // The gateway's keep-alive is a stream: one request, one answer, then
        // the end of the request body ends it.
        let mut lines = self
            .gateway
            .stream(
                "/v3/lease/keepalive",
                &json!({"ID": session.0.to_string()}),
                Some(self.gateway.request_timeout()),
            )
            .await
            .map_err(|e| session_error(e, Some(session)))?;
        let message = lines
            .next::<LeaseResponse>()
            .await
            .map_err(|e| session_error(e, Some(session)))?
            .ok_or_else(|| {
                MetadataError::Unavailable("etcd ended a keep-alive unanswered".into())
            })?;
        if let Some(error) = message.error {
            return Err(MetadataError::Unavailable(format!(
                "etcd keep-alive: {error}"
            )));
        }
        match message.result {
            // etcd answers an expired (or unknown) lease with a TTL of 0.
            Some(r) if r.ttl > 0 => {
                self.gateway.saw(&r.header);
                Ok(())
            }
            _ => Err(MetadataError::SessionExpired(session.0)),
        }
    }

    async fn close_session(&self, session: SessionId) -> Result<()> {
        let r = self.lease_call("/v3/lease/revoke", session).await?;
        self.gateway.saw(&r.header);
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
        let lease = GatewayError::Status {
            code: NOT_FOUND,
            message: "etcdserver: requested lease not found".into(),
        };
        assert!(matches!(
            session_error(lease, Some(SessionId(7))),
            MetadataError::SessionExpired(7)
        ));
        let down = GatewayError::Unreachable("connection refused".into());
        assert!(matches!(
            session_error(down, Some(SessionId(7))),
            MetadataError::Unavailable(_)
        ));
        let no_leader = GatewayError::Status {
            code: UNAVAILABLE,
            message: "etcdserver: no leader".into(),
        };
        assert!(matches!(
            unavailable_or_backend(no_leader),
            MetadataError::Unavailable(_)
        ));
    }
}
