//! The Kafka wire protocol, sans IO: what the broker's Kafka listener needs
//! to read Kafka clients' requests and answer them, without sockets.
//!
//! * [`frame`]: the 4-byte size prefix that delimits requests, bounded.
//! * [`request`]: a request's header and body, decoded with the
//!   `kafka-protocol` crate; unknown APIs and unsupported versions are typed
//!   errors that still carry what an answer needs.
//! * [`response`]: a response framed for the wire, with the header version
//!   its API and version call for.
//! * [`versions`]: the APIs and versions Kilonova serves (what ApiVersions
//!   answers).
//! * [`records`]: record batches (v2) in produce requests and fetch
//!   responses; [`codec`]: Kafka's compression codecs, bounded.
//! * [`entries`]: Kafka records as Kilonova stores entries (Pulsar's batch
//!   format), and back: the same topic serves both protocols.
//! * [`names`]: Kafka topic names ↔ Kilonova topic names.
//! * [`sasl`]: SASL/PLAIN credentials; [`metadata`]: a Metadata answer's
//!   partitions and brokers.

pub mod codec;
pub mod entries;
pub mod frame;
pub mod metadata;
pub mod names;
pub mod records;
pub mod request;
pub mod response;
pub mod sasl;
pub mod versions;

pub use kafka_protocol;
