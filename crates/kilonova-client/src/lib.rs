//! A lean async Pulsar client over [`kilonova_pulsar_protocol`].
//!
//! One TCP connection per [`Client`], shared by its producers and consumers
//! (Pulsar's default of one connection per broker). Frames from every producer
//! go into one buffer that a writer task flushes with one write per wake-up, so
//! many small sends cost few system calls; a reader task routes responses by
//! request id, receipts by producer id and messages by consumer id.
//!
//! What it does: CONNECT (with a token, over TLS for `pulsar+ssl://`),
//! PARTITIONED_METADATA, producers with batching, keys, properties,
//! compression and an in-flight window ([`Producer`]), consumers and readers
//! (non-durable subscriptions from a message id) with flow control and grouped
//! individual acks ([`Consumer`]). What it leaves out, for now: LOOKUP
//! redirects (it talks to the broker it connected to), reconnection,
//! chunking, schemas, authentication methods other than tokens.
//!
//! It exists because `kilonova perf` must not be limited by its client, and the
//! geo-replicator needs a client inside the broker.

mod compression;
mod connection;
mod consumer;
mod error;
mod producer;
mod tls;

pub use compression::Compression;
pub use connection::{Client, ConnectOptions};
pub use consumer::{
    Consumer, ConsumerOptions, InitialPosition, Message, StartMessageId, SubscriptionType,
};
pub use error::ClientError;
pub use producer::{Batching, OutgoingMessage, Producer, ProducerOptions, Receipt, SendCallback};

/// Where a message is stored: entry `entry_id` of segment (ledger) `ledger_id`,
/// and its index within a batch (-1: not batched).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    pub ledger_id: u64,
    pub entry_id: u64,
    pub partition: i32,
    pub batch_index: i32,
}
