//! Kilonova's broker: the stateless serving layer between the protocol edges and
//! the storage layer (connections, topics, producers, subscriptions, dispatchers).
//!
//! Today it holds [`TopicName`], the validated form of every topic name a client
//! sends; the serving layer itself is issue #11's work in progress.
//!
//! It never parses wire bytes (that is `kilonova-pulsar-protocol`) and never
//! touches files (that is `kilonova-storage`).

pub mod topic_name;

pub use topic_name::{Domain, TopicName, TopicNameError};
