//! Kafka federation (issue #30, ADR 0024): one logical Kafka cluster over
//! many physical ones.
//!
//! * [`map`]: the versioned map — physical clusters and their states,
//!   logical topics and where each logical partition lives, the name
//!   service; the producer's and the consumer's view of a topic.
//! * [`controller`]: `kilonova federation controller` — the map in a
//!   metadata store, changed by compare-and-set, pushed to the proxies by
//!   long poll; proxies by heartbeat; groups' committed offsets; scans of
//!   the physical clusters (health, drained clusters emptied and removed).
//! * [`proxy`]: `kilonova federation proxy` — the Kafka protocol to
//!   clients (a producers' port and a consumers' port), logical partitions
//!   forwarded to physical ones, consumer groups coordinated by proxies.
//! * [`upstream`], [`physical`]: the Kafka client side (pipelined
//!   connections to the physical brokers; what is asked of a cluster).
//! * [`api`]: the controller's HTTP API bodies and its client.

pub mod api;
pub mod controller;
pub mod map;
pub mod metrics;
pub mod physical;
pub mod proxy;
pub mod upstream;

/// The proxy group of a client the name service does not name.
pub const DEFAULT_GROUP: &str = "default";
