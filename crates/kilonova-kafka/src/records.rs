//! Record batches (format v2): decoded from produce requests (any codec,
//! bounded by [`crate::codec`]) and encoded, uncompressed, for fetch
//! responses.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, RecordSet,
};

use crate::codec;

/// Why the records of a produce request are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    #[error("could not encode records: {0}")]
    Encode(String),
}

/// Every batch in a partition's `records`, each decompressed to at most
/// `max_uncompressed` bytes.
pub fn decode_batches(
    records: &Bytes,
    max_uncompressed: usize,
) -> Result<Vec<RecordSet>, RecordsError> {
    let mut buf = records.clone();
    let mut sets = Vec::new();
    while !buf.is_empty() {
        let unpack = |packed: &mut Bytes, c: Compression| -> anyhow::Result<Bytes> {
            codec::decompress(c, packed, max_uncompressed)
                .map(Bytes::from)
                .map_err(anyhow::Error::new)
        };
        let set = RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(unpack))
            .map_err(|e| RecordsError::Corrupt(format!("{e:#}")))?;
        sets.push(set);
    }
    Ok(sets)
}

/// A record without a producer (no idempotence, no transaction), stamped
/// with its creation time. `sequence` is -1 for a batch's first record,
/// then counts up (see [`encode_batch`]).
pub fn plain_record(
    offset: i64,
    sequence: i32,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: indexmap::IndexMap<kafka_protocol::protocol::StrBytes, Option<Bytes>>,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset,
        sequence,
        timestamp,
        key,
        value,
        headers,
    }
}

/// Appends `records` (their offsets set) as uncompressed v2 batches: one,
/// if their batch properties agree and `offset - sequence` is the same for
/// all (the encoder's rule; records without a producer have sequences -1,
/// 0, 1, … so the batch's base sequence is -1).
pub fn encode_batch(records: &[Record], out: &mut BytesMut) -> Result<(), RecordsError> {
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(out, records, &options)
        .map_err(|e| RecordsError::Encode(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(offset: i64, sequence: i32, key: Option<&str>, value: &str) -> Record {
        plain_record(
            offset,
            sequence,
            1_700_000_000_000 + offset,
            key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            Some(Bytes::copy_from_slice(value.as_bytes())),
            Default::default(),
        )
    }

    #[test]
    fn batches_round_trip_and_several_in_a_row_decode() {
        let a = vec![record(10, -1, Some("k"), "v0"), record(11, 0, None, "v1")];
        let b = vec![record(12, -1, Some("k2"), "v2")];
        let mut out = BytesMut::new();
        encode_batch(&a, &mut out).unwrap();
        encode_batch(&b, &mut out).unwrap();
        let sets = decode_batches(&out.freeze(), 1 << 20).unwrap();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].records, a);
        assert_eq!(sets[1].records, b);
    }

    proptest! {
        #[test]
        fn garbage_batches_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_batches(&Bytes::from(bytes), 1 << 16);
        }

        #[test]
        fn a_batch_with_flipped_bytes_is_an_error_or_still_whole(at in 0usize..80, bit in 0u8..8) {
            let mut out = BytesMut::new();
            encode_batch(&[record(0, -1, Some("key"), "value")], &mut out).unwrap();
            let mut v = out.to_vec();
            let i = at % v.len();
            v[i] ^= 1 << bit;
            let _ = decode_batches(&Bytes::from(v), 1 << 16);
        }
    }
}
