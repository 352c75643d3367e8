//! Kafka's classic consumer-group protocol, coordinated in process.
//!
//! * [`groups`]: the state machine — members join, a generation forms with
//!   a leader, the leader's assignment goes out at SyncGroup, heartbeats
//!   keep members in; time is passed in, so it is tested without a clock.
//! * [`answers`]: the group requests on a [`groups::Coordinator`] in the
//!   protocol's types (FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//!   LeaveGroup, DescribeGroups, ListGroups, and the answers to
//!   OffsetCommit / OffsetFetch).
//!
//! Whoever serves groups adds authorization and keeps committed offsets:
//! the broker's Kafka listener in its metadata store, the federation's
//! proxies with their controller. The wire codec stays in `kilonova-kafka`
//! (sans IO, no runtime); this crate needs tokio's channels and timers.

pub mod answers;
pub mod groups;
