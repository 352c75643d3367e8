//! Kafka records as Kilonova stores them, and back.
//!
//! A topic's entries are in Pulsar's format (metadata, then one message or
//! a batch of them), so a Kafka record batch is stored as one batched entry:
//! each record a message whose key is its partition key (base64 with the
//! flag Pulsar defines when the key is not UTF-8), whose headers are its
//! properties, whose timestamp is its event time, and a null value Pulsar's
//! `null_value`. A Kafka offset is the topic's message index: the entry's
//! first message index plus the record's place in the batch. Reading goes
//! the other way for entries from either protocol; an entry's compression
//! (a Pulsar producer's) is undone, bounded.

use crate::records;
use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Record;
use kilonova_pulsar_protocol::compression;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{
    CompressionType, KeyValue, MessageMetadata, SingleMessageMetadata,
};

/// Why a stored entry could not be read as Kafka records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("entry cannot be read as Kafka records: {0}")]
pub struct EntryError(pub String);

/// Who stored an entry: the name and sequence id its metadata carries, and
/// when it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub producer_name: String,
    pub sequence_id: u64,
    pub publish_time_ms: u64,
}

/// Kafka records as one entry's payload (Pulsar's batch format,
/// uncompressed), as a client would send it.
pub fn to_entry(records: &[Record], stamp: &Stamp) -> frame::Payload {
    // Room for every record at once: growing the buffer record by record
    // copied the batch over and over.
    let room: usize = records
        .iter()
        .map(|r| {
            let headers: usize = r
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 8)
                .sum();
            r.value.as_ref().map_or(0, |v| v.len())
                + r.key.as_ref().map_or(0, |k| k.len() * 2)
                + headers
                + 32
        })
        .sum();
    let mut batch = BytesMut::with_capacity(room);
    for r in records {
        let mut meta = SingleMessageMetadata::default();
        if let Some(k) = &r.key {
            match std::str::from_utf8(k) {
                Ok(s) => meta.partition_key = Some(s.to_string()),
                Err(_) => {
                    meta.partition_key = Some(base64(k));
                    meta.partition_key_b64_encoded = Some(true);
                }
            }
        }
        meta.properties = r
            .headers
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.as_str().to_string(),
                value: v
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            })
            .collect();
        if r.timestamp >= 0 {
            meta.event_time = Some(r.timestamp as u64);
        }
        if r.value.is_none() {
            meta.null_value = Some(true);
        }
        frame::push_batch_message(&mut batch, &meta, r.value.as_deref().unwrap_or_default());
    }
    let metadata = MessageMetadata {
        producer_name: stamp.producer_name.clone(),
        sequence_id: stamp.sequence_id,
        publish_time: stamp.publish_time_ms,
        num_messages_in_batch: Some(i32::try_from(records.len()).unwrap_or(i32::MAX)),
        uncompressed_size: Some(u32::try_from(batch.len()).unwrap_or(u32::MAX)),
        ..Default::default()
    };
    frame::built_payload(metadata, &batch)
}

/// The records of a stored entry whose first message has offset
/// `first_offset`, decompressing at most `max_uncompressed` bytes. Marker
/// entries (replication and transaction markers) hold no records.
pub fn from_entry(
    data: &Bytes,
    first_offset: i64,
    max_uncompressed: usize,
) -> Result<Vec<Record>, EntryError> {
    let p = frame::decode_payload(data.clone()).map_err(|e| EntryError(e.to_string()))?;
    let m = &p.metadata;
    if m.marker_type.is_some() {
        return Ok(Vec::new());
    }
    let body = match m.compression() {
        CompressionType::None => p.data.clone(),
        codec => Bytes::from(
            compression::decompress(
                codec,
                &p.data,
                m.uncompressed_size.unwrap_or(0),
                max_uncompressed,
            )
            .map_err(|e| EntryError(e.to_string()))?,
        ),
    };
    let publish = i64::try_from(m.publish_time).unwrap_or(i64::MAX);
    let record = |offset: i64, single: Option<&SingleMessageMetadata>, value: Bytes| {
        let (key, b64, props, event, null) = match single {
            Some(s) => (
                s.partition_key.as_deref(),
                s.partition_key_b64_encoded(),
                &s.properties,
                s.event_time,
                s.null_value(),
            ),
            None => (
                m.partition_key.as_deref(),
                m.partition_key_b64_encoded(),
                &m.properties,
                m.event_time,
                m.null_value(),
            ),
        };
        let timestamp = event
            .filter(|t| *t > 0)
            .and_then(|t| i64::try_from(t).ok())
            .unwrap_or(publish);
        records::plain_record(
            offset,
            // -1 for the first, then counting: one batch (`records::encode_batch`).
            (offset - first_offset) as i32 - 1,
            timestamp,
            key.map(|k| match b64 {
                true => {
                    unbase64(k).map_or_else(|| Bytes::copy_from_slice(k.as_bytes()), Bytes::from)
                }
                false => Bytes::copy_from_slice(k.as_bytes()),
            }),
            (!null).then_some(value),
            props
                .iter()
                .map(|kv| {
                    (
                        StrBytes::from_string(kv.key.clone()),
                        Some(Bytes::copy_from_slice(kv.value.as_bytes())),
                    )
                })
                .collect::<IndexMap<_, _>>(),
        )
    };
    if m.num_messages_in_batch.is_none() {
        return Ok(vec![record(first_offset, None, body)]);
    }
    let count = frame::message_count(m);
    let messages = frame::parse_batch(&body, count).map_err(|e| EntryError(e.to_string()))?;
    Ok(messages
        .into_iter()
        .enumerate()
        .map(|(i, (meta, value))| record(first_offset + i as i64, Some(&meta), value))
        .collect())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (Pulsar's `partition_key_b64_encoded` keys).
fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|x| *x == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp() -> Stamp {
        Stamp {
            producer_name: "kafka".into(),
            sequence_id: 3,
            publish_time_ms: 1_700_000_000_999,
        }
    }

    fn rec(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, &str)]) -> Record {
        records::plain_record(
            0,
            -1,
            1_700_000_000_123,
            key.map(Bytes::copy_from_slice),
            value.map(Bytes::copy_from_slice),
            headers
                .iter()
                .map(|(k, v)| {
                    (
                        StrBytes::from_string(k.to_string()),
                        Some(Bytes::copy_from_slice(v.as_bytes())),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn records_survive_the_trip_through_an_entry_with_their_offsets() {
        let records = vec![
            rec(Some(b"user-1"), Some(b"a"), &[("h", "1")]),
            rec(None, Some(b"b"), &[]),
            rec(Some(&[0xff, 0x00, 0x80]), None, &[("x", "y"), ("z", "")]),
        ];
        let entry = to_entry(&records, &stamp()).raw;
        let back = from_entry(&entry, 100, 1 << 20).unwrap();
        assert_eq!(back.len(), 3);
        for (i, (a, b)) in records.iter().zip(&back).enumerate() {
            assert_eq!(b.offset, 100 + i as i64);
            assert_eq!(
                (&a.key, &a.value, &a.headers, a.timestamp),
                (&b.key, &b.value, &b.headers, b.timestamp)
            );
        }
        // Pulsar sees a batch of three, with the non-UTF-8 key in base64.
        let p = frame::decode_payload(entry).unwrap();
        assert_eq!(p.metadata.num_messages_in_batch, Some(3));
        let msgs = frame::parse_batch(&p.data, 3).unwrap();
        assert_eq!(msgs[0].0.partition_key.as_deref(), Some("user-1"));
        assert_eq!(msgs[2].0.partition_key.as_deref(), Some("/wCA"));
        assert_eq!(msgs[2].0.partition_key_b64_encoded, Some(true));
        assert_eq!(msgs[2].0.null_value, Some(true));
    }

    #[test]
    fn a_pulsar_message_reads_as_one_record_stamped_with_its_publish_time() {
        let meta = MessageMetadata {
            producer_name: "p".into(),
            publish_time: 1_700_000_000_555,
            partition_key: Some("k".into()),
            properties: vec![KeyValue {
                key: "a".into(),
                value: "b".into(),
            }],
            ..Default::default()
        };
        let entry = frame::build_payload(&meta, b"hello");
        let r = from_entry(&entry, 7, 1 << 20).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].offset, r[0].timestamp), (7, 1_700_000_000_555));
        assert_eq!(r[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r[0].value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            r[0].headers
                .get(&StrBytes::from_static_str("a"))
                .cloned()
                .flatten()
                .as_deref(),
            Some(&b"b"[..])
        );
    }

    #[test]
    fn a_compressed_pulsar_batch_is_undone_within_the_limit() {
        let mut batch = BytesMut::new();
        for v in [&b"one"[..], b"two"] {
            frame::push_batch_message(&mut batch, &SingleMessageMetadata::default(), v);
        }
        let packed = compression::compress(CompressionType::Zstd, &batch).unwrap();
        let meta = MessageMetadata {
            num_messages_in_batch: Some(2),
            compression: Some(CompressionType::Zstd as i32),
            uncompressed_size: Some(batch.len() as u32),
            ..Default::default()
        };
        let entry = frame::build_payload(&meta, &packed);
        let r = from_entry(&entry, 0, 1 << 20).unwrap();
        assert_eq!(
            r.iter()
                .map(|r| r.value.clone().unwrap())
                .collect::<Vec<_>>(),
            vec!["one", "two"]
        );
        assert!(from_entry(&entry, 0, 4).is_err(), "over the limit");
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(unbase64(&base64(&bytes)), Some(bytes));
        }

        #[test]
        fn any_entry_bytes_read_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = from_entry(&Bytes::from(bytes), 0, 1 << 16);
        }
    }
}
