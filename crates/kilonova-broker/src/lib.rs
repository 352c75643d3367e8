//! Kilonova's serving layer: Pulsar-protocol and Kafka-protocol connections,
//! topics, producers, subscriptions and their dispatchers, over the storage
//! layer's managed logs.
//!
//! Main types: [`Broker`] (shared state: storage, metadata resources, loaded topics),
//! [`accept_loop`] (serves the Pulsar protocol on a listener),
//! [`kafka_accept_loop`] (the Kafka protocol, over the same topics), [`BrokerConfig`],
//! [`TopicName`]. One task per connection, one task per loaded topic owning its
//! state; connections and topics talk through bounded queues.
//!
//! This crate never encodes frames by hand (the protocol crate does) and never
//! writes storage files (the storage crate does).

pub mod accept;
mod broker;
mod cache_metrics;
mod catalog_import;
pub mod clock;
pub mod cluster;
mod commands;
mod compaction;
pub mod config;
mod connection;
mod dedup;
mod entry_source;
mod error;
mod kafka;
pub mod key_shared;
pub mod listeners;
pub mod metrics;
mod outbound;
mod policy_cache;
mod process_metrics;
mod publish_stages;
mod rate_limit;
mod rate_meter;
mod replicator;
mod subscribe_rate;
mod subscription;
pub mod tiering;
mod topic;

pub use broker::{
    check_servable, BacklogAnalysis, Broker, RestoreReport, RestoredTopic, ServiceUrls,
};
pub use catalog_import::import_old_catalog;
pub use cluster::{ClusterSettings, LookupAnswer};
pub use config::{AutoTopicType, BrokerConfig, CacheEviction};
pub use connection::accept_loop;
pub use error::BrokerError;
pub use kafka::{kafka_accept_loop, KafkaGroupState, KafkaService, KafkaSettings};
pub use kilonova_metadata::names::{Domain, TopicName, TopicNameError};
/// A message's place in a topic's log, as admin requests name it
/// ([`ResetTo::Position`]): the broker's callers reach storage only through it.
pub use kilonova_storage::Position;
pub use listeners::{AdvertisedListeners, ListenerError, ListenerUrls};
pub use topic::admin as topic_admin;
pub use topic::{AdminReply, AdminRequest, CompactionStatus, OffloadStatus, Peeked, ResetTo};
