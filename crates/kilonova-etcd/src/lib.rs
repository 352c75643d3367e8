//! Kilonova's metadata on etcd: [`EtcdStore`], a backend of
//! `kilonova_metadata::MetadataStore` for clusters, speaking etcd's v3 gRPC
//! API (tonic; messages generated from our proto/etcd.proto by protox, so no
//! `protoc`), with [`EtcdConfig`] saying where etcd is.
//!
//! Main types: [`EtcdStore`] (the trait on etcd: revisions as versions,
//! transactions for compare-and-set, watch streams, leases as sessions) and
//! the key layout of `key` that makes a key's children one range scan.
//! With feature `test-support`, `server::EtcdServer` runs a real etcd for tests.
//!
//! This crate must never know topics, storage or the broker: it stores the
//! keys and values the metadata layer gives it. Why gRPC, not etcd's JSON gateway:
//! docs/adr/0014-metadata-on-etcd.md.

mod config;
mod key;
mod rpc;
#[cfg(feature = "test-support")]
pub mod server;
mod store;
mod watch;

pub use config::EtcdConfig;
pub use store::EtcdStore;
