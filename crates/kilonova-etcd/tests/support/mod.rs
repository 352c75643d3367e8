//! A store on its own real etcd, which lives as long as the store does.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kilonova_etcd::server::EtcdServer;
use kilonova_etcd::EtcdStore;
use kilonova_metadata::{Expect, MetadataStore, Page, Result, SessionId, Stored, TxnOp, Watch};

/// A store that keeps its etcd running: dropped, it stops it.
pub struct WithServer {
    pub store: EtcdStore,
    _server: EtcdServer,
}

pub async fn store_or_skip(test: &str) -> Option<Arc<dyn MetadataStore>> {
    let server = EtcdServer::start_or_skip(test).await?;
    let store = EtcdStore::connect(&server.config())
        .await
        .expect("a store on the etcd just started");
    Some(Arc::new(WithServer {
        store,
        _server: server,
    }))
}

#[async_trait]
impl MetadataStore for WithServer {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        self.store.get(key).await
    }
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expect: Expect,
        session: Option<SessionId>,
    ) -> Result<u64> {
        self.store.put(key, value, expect, session).await
    }
    async fn delete(&self, key: &str, expect: Expect) -> Result<bool> {
        self.store.delete(key, expect).await
    }
    async fn children(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page> {
        self.store.children(prefix, after, limit).await
    }
    fn watch(&self, prefix: &str) -> Watch {
        self.store.watch(prefix)
    }
    async fn open_session(&self, ttl: Duration) -> Result<SessionId> {
        self.store.open_session(ttl).await
    }
    async fn keep_alive(&self, session: SessionId) -> Result<()> {
        self.store.keep_alive(session).await
    }
    async fn close_session(&self, session: SessionId) -> Result<()> {
        self.store.close_session(session).await
    }
    async fn txn(&self, ops: Vec<TxnOp>) -> Result<u64> {
        self.store.txn(ops).await
    }
}
