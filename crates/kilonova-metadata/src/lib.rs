//! Kilonova's metadata layer: the [`MetadataStore`] trait (get, versioned put,
//! delete, multi-key transactions, paged children, watches, ephemeral keys
//! bound to sessions), its embedded backend ([`EmbeddedStore`], one `redb`
//! file with group commit), the conformance suite every backend must pass, and typed resources on top
//! (clusters, tenants, namespaces with policies, topics with ids), and
//! bundles with their ownership for a cluster of brokers ([`bundles`]), and
//! the flush index of brokers' write-ahead objects ([`wal_index`]).
//!
//! This crate knows nothing of storage files, sockets or protocols.

pub mod brokers;
pub mod bundles;
pub mod conformance;
pub mod cursors;
mod embedded;
mod error;
pub mod kafka_groups;
pub mod load;
pub mod names;
pub mod policies;
mod resources;
pub mod schema;
mod store;
pub mod wal_index;

pub use embedded::EmbeddedStore;
pub use error::{MetadataError, Result};
pub use names::{Domain, NamespaceName, TopicName, TopicNameError};
pub use resources::{
    Resources, SchemaOutcome, SchemaRecord, TopicRecord, MAX_PARTITIONS, MAX_SCHEMA_VERSIONS,
};
pub use store::{
    check_children, check_key, check_txn, under, Expect, MetadataStore, Page, SessionId, Stored,
    TxnOp, Watch, WatchEvent, Watched, DEFAULT_SESSION_TTL, MAX_TXN_OPS,
};
