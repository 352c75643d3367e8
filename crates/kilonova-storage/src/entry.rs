//! A managed log's entry: the stored bytes behind a small header.
//!
//! Header (20 bytes, little-endian): publish time in ms, the topic's message
//! index of the entry's first message, and its message count (a batch holds
//! several). The bytes after it are exactly what the producer sent.

use bytes::{BufMut, Bytes, BytesMut};

use crate::position::Position;

pub const ENTRY_HEADER_LEN: usize = 20;

/// One entry of a managed log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub position: Position,
    pub publish_time_ms: u64,
    /// Messages in the log before this entry: dense, monotonic (Kafka offsets map onto it).
    pub message_index: u64,
    pub message_count: u32,
    pub data: Bytes,
}

impl Entry {
    /// Bytes the entry occupies in memory (for cache accounting).
    pub fn size(&self) -> usize {
        self.data.len() + ENTRY_HEADER_LEN
    }

    /// The entry whose stored bytes (header, then the producer's bytes) are
    /// `stored`, as a copy of the segment elsewhere returns them (an
    /// offloaded segment); `None` if they are too short for a header.
    pub fn from_stored(position: Position, stored: Bytes) -> Option<Entry> {
        decode(position, stored)
    }

    /// The stored bytes of an entry (header, then `data`): what a managed
    /// log's segment holds, and what copies elsewhere hold of it.
    pub fn encode_stored(
        publish_time_ms: u64,
        message_index: u64,
        message_count: u32,
        data: &[u8],
    ) -> Bytes {
        let mut b = BytesMut::with_capacity(ENTRY_HEADER_LEN + data.len());
        b.put_slice(&encode_header(
            publish_time_ms,
            message_index,
            message_count,
        ));
        b.put_slice(data);
        b.freeze()
    }
}

/// An entry's header, on the stack (one is encoded per append).
pub(crate) fn encode_header(
    publish_time_ms: u64,
    message_index: u64,
    message_count: u32,
) -> [u8; ENTRY_HEADER_LEN] {
    let mut b = [0u8; ENTRY_HEADER_LEN];
    b[..8].copy_from_slice(&publish_time_ms.to_le_bytes());
    b[8..16].copy_from_slice(&message_index.to_le_bytes());
    b[16..].copy_from_slice(&message_count.to_le_bytes());
    b
}

/// Splits stored bytes into an [`Entry`]; `None` if they are too short for a header.
pub(crate) fn decode(position: Position, stored: Bytes) -> Option<Entry> {
    let h = stored.get(..ENTRY_HEADER_LEN)?;
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let mut c = [0u8; 4];
    c.copy_from_slice(&h[16..20]);
    Some(Entry {
        position,
        publish_time_ms: u64_at(0),
        message_index: u64_at(8),
        message_count: u32::from_le_bytes(c),
        data: stored.slice(ENTRY_HEADER_LEN..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(t: u64, i: u64, n: u32, data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = BytesMut::from(&encode_header(t, i, n)[..]);
            b.extend_from_slice(&data);
            prop_assert_eq!(Entry::encode_stored(t, i, n, &data), b.clone().freeze());
            let e = decode(Position::new(1, 2), b.clone().freeze()).unwrap();
            prop_assert_eq!(Entry::from_stored(Position::new(1, 2), b.freeze()), Some(e.clone()));
            prop_assert_eq!((e.publish_time_ms, e.message_index, e.message_count), (t, i, n));
            prop_assert_eq!(&e.data[..], &data[..]);
        }

        #[test]
        fn short_input_is_refused_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..ENTRY_HEADER_LEN)) {
            prop_assert!(decode(Position::default(), Bytes::from(data)).is_none());
        }
    }
}
