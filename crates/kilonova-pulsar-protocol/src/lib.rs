//! The Pulsar binary protocol, sans-IO: wire types generated from our own
//! `proto/PulsarApi.proto` (compiled by protox, so no `protoc`), and the frame
//! codec ([`frame::decode`] / [`frame::encode_command`] / [`frame::encode_payload_command`]),
//! and the payload codecs ([`compression`]: LZ4, ZLIB, ZSTD, SNAPPY).
//!
//! Main types: [`proto::BaseCommand`], [`frame::Frame`], [`frame::Payload`],
//! [`frame::DecodeError`].
//!
//! This crate never does I/O: no sockets, no tokio, no clock. The broker owns the
//! sockets and feeds bytes in; a decoder can be fuzzed and benchmarked alone.

pub mod compression;
pub mod frame;
pub mod markers;

/// Generated wire types (package `pulsar.proto`).
#[allow(clippy::all, clippy::unwrap_used, clippy::expect_used, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/pulsar.proto.rs"));
}
