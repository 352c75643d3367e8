//! Topic compaction's decisions, as Pulsar's two-phase compactor makes them,
//! as pure functions over entries (the topic's task does the reading and
//! writing: `topic/compaction.rs`).
//!
//! Phase one reads the topic up to the horizon and keeps, per message key
//! (the partition key), where its latest message is; a message with a null
//! value (`null_value`, or an empty payload) deletes its key. Messages without
//! a key are left out of the compacted view. Phase two keeps the entries
//! holding a latest message; a batch is rewritten with the other messages
//! marked `compacted_out` (empty, the batch's indexes unchanged), as Pulsar's
//! compactor does (`RawBatchConverter.rebatchMessage`). A compressed batch is
//! decompressed to be looked into (its declared uncompressed size bounded
//! before anything is allocated) and rewritten compressed with its own codec.
//! An encrypted batch, or one that cannot be decoded, is kept whole, as
//! Pulsar keeps a batch it cannot read.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::{Bytes, BytesMut};

use kilonova_pulsar_protocol::compression::{self, CompressionError};
use kilonova_pulsar_protocol::frame::{self, DecodeError, Payload};
use kilonova_pulsar_protocol::proto::{CompressionType, SingleMessageMetadata};
use kilonova_storage::{Entry, Position};

/// Why a compaction stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CompactionError {
    #[error("more than {0} distinct keys: raise compaction_max_keys")]
    TooManyKeys(usize),
}

/// Why a batch cannot be looked into, so it is kept whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unreadable {
    #[error("invalid entry: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Compression(#[from] CompressionError),
    #[error("the batch is encrypted")]
    Encrypted,
}

/// Where an entry read in phase one is, so phase two reads it again from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The `i`-th entry of the previous compacted view.
    View(usize),
    /// The topic's log.
    Log,
}

/// What phase two keeps of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// All of it (a message, or a batch that cannot be looked into).
    Whole,
    /// These messages of a batch (by batch index).
    Messages(BTreeSet<u32>),
}

/// One message of an entry, as compaction sees it.
struct Message {
    key: Option<Bytes>,
    deletes: bool,
    batch_index: Option<u32>,
}

/// A batch's messages, `[size][SingleMessageMetadata][payload]` each, in
/// clear: decompressed, with a declared uncompressed size over
/// `max_batch_bytes` refused before anything is allocated.
fn batch_in_clear(payload: &Payload, max_batch_bytes: usize) -> Result<Bytes, Unreadable> {
    let md = &payload.metadata;
    if !md.encryption_keys.is_empty() {
        return Err(Unreadable::Encrypted);
    }
    Ok(match md.compression() {
        CompressionType::None => payload.data.clone(),
        codec => Bytes::from(compression::decompress(
            codec,
            &payload.data,
            md.uncompressed_size.unwrap_or(0),
            max_batch_bytes,
        )?),
    })
}

/// What an entry holds: its messages, or why it cannot be looked into.
fn messages(entry: &Entry, max_batch_bytes: usize) -> Result<Vec<Message>, Unreadable> {
    let payload = frame::decode_payload(entry.data.clone())?;
    let md = &payload.metadata;
    if md.num_messages_in_batch.is_none() {
        // A compressed message's size is its declared uncompressed size
        // (Pulsar's `extractKeyAndSize`): an empty value compresses to bytes.
        let empty = match md.compression() {
            CompressionType::None => payload.data.is_empty(),
            _ => md.uncompressed_size == Some(0),
        };
        return Ok(vec![Message {
            key: md.partition_key.as_ref().map(|k| Bytes::from(k.clone())),
            deletes: md.null_value.unwrap_or(false) || empty,
            batch_index: None,
        }]);
    }
    let data = batch_in_clear(&payload, max_batch_bytes)?;
    let batch = frame::parse_batch(&data, payload.message_count())?;
    Ok(batch
        .into_iter()
        .enumerate()
        .filter(|(_, (m, _))| !m.compacted_out.unwrap_or(false))
        .map(|(i, (m, data))| Message {
            key: m.partition_key.map(Bytes::from),
            deletes: m.null_value.unwrap_or(false) || data.is_empty(),
            batch_index: u32::try_from(i).ok(),
        })
        .collect())
}

#[derive(Clone, Copy, Debug)]
struct Latest {
    position: Position,
    batch_index: Option<u32>,
    source: Source,
}

/// Phase one: the latest message of every key, within a bound on keys.
pub(crate) struct KeyTable {
    latest: HashMap<Bytes, Latest>,
    /// Entries that cannot be looked into, kept whole.
    opaque: BTreeMap<Position, Source>,
    /// Of those, the ones that are not merely encrypted (corrupt, or over
    /// the size bound), and the first one's reason.
    unreadable: Option<(usize, Position, Unreadable)>,
    max_keys: usize,
    max_batch_bytes: usize,
}

impl KeyTable {
    /// A table of at most `max_keys` keys, decompressing batches of at most
    /// `max_batch_bytes` (uncompressed).
    pub(crate) fn new(max_keys: usize, max_batch_bytes: usize) -> Self {
        KeyTable {
            latest: HashMap::new(),
            opaque: BTreeMap::new(),
            unreadable: None,
            max_keys,
            max_batch_bytes,
        }
    }

    /// Takes in one entry, read in position order.
    pub(crate) fn observe(&mut self, entry: &Entry, source: Source) -> Result<(), CompactionError> {
        let msgs = match messages(entry, self.max_batch_bytes) {
            Ok(msgs) => msgs,
            Err(why) => {
                self.opaque.insert(entry.position, source);
                match (&mut self.unreadable, why) {
                    (_, Unreadable::Encrypted) => {}
                    (Some((n, _, _)), _) => *n += 1,
                    (none, why) => *none = Some((1, entry.position, why)),
                }
                return Ok(());
            }
        };
        for m in msgs {
            let Some(key) = m.key else { continue };
            if m.deletes {
                self.latest.remove(&key);
                continue;
            }
            if !self.latest.contains_key(&key) && self.latest.len() >= self.max_keys {
                return Err(CompactionError::TooManyKeys(self.max_keys));
            }
            self.latest.insert(
                key,
                Latest {
                    position: entry.position,
                    batch_index: m.batch_index,
                    source,
                },
            );
        }
        Ok(())
    }

    /// How many entries (not encrypted ones) could not be looked into and
    /// were kept whole, with the first one's position and reason.
    pub(crate) fn unreadable(&self) -> Option<&(usize, Position, Unreadable)> {
        self.unreadable.as_ref()
    }

    /// Phase two's plan: the entries to keep, in position order.
    pub(crate) fn plan(self) -> Vec<(Position, Source, Keep)> {
        let mut plan: BTreeMap<Position, (Source, Keep)> = self
            .opaque
            .into_iter()
            .map(|(p, s)| (p, (s, Keep::Whole)))
            .collect();
        for l in self.latest.into_values() {
            let slot = plan
                .entry(l.position)
                .or_insert_with(|| (l.source, Keep::Messages(BTreeSet::new())));
            match (&mut slot.1, l.batch_index) {
                (Keep::Messages(set), Some(i)) => {
                    set.insert(i);
                }
                (keep, None) => *keep = Keep::Whole,
                (Keep::Whole, Some(_)) => {}
            }
        }
        plan.into_iter().map(|(p, (s, k))| (p, s, k)).collect()
    }
}

/// The entry phase two writes for `entry`: itself, or its batch with the
/// messages not kept marked `compacted_out` and emptied, compressed again
/// with the batch's codec. A batch that cannot be rewritten (phase one could
/// read it, so only a changed bound or codec failure gets here) is kept whole.
pub(crate) fn rewrite(entry: &Entry, keep: &Keep, max_batch_bytes: usize) -> Entry {
    let Keep::Messages(kept) = keep else {
        return entry.clone();
    };
    match rebatch(entry, kept, max_batch_bytes) {
        Ok(data) => Entry {
            data,
            ..entry.clone()
        },
        Err(_) => entry.clone(),
    }
}

fn rebatch(
    entry: &Entry,
    kept: &BTreeSet<u32>,
    max_batch_bytes: usize,
) -> Result<Bytes, Unreadable> {
    let payload = frame::decode_payload(entry.data.clone())?;
    let clear = batch_in_clear(&payload, max_batch_bytes)?;
    let batch = frame::parse_batch(&clear, payload.message_count())?;
    let mut data = BytesMut::with_capacity(clear.len());
    let dropped = SingleMessageMetadata {
        compacted_out: Some(true),
        ..Default::default()
    };
    for (i, (meta, body)) in batch.iter().enumerate() {
        if u32::try_from(i).is_ok_and(|i| kept.contains(&i)) {
            frame::push_batch_message(&mut data, meta, body);
        } else {
            frame::push_batch_message(&mut data, &dropped, &[]);
        }
    }
    let mut metadata = payload.metadata.clone();
    metadata.uncompressed_size = u32::try_from(data.len()).ok();
    let codec = metadata.compression();
    if codec == CompressionType::None {
        return Ok(frame::build_payload(&metadata, &data));
    }
    let packed = compression::compress(codec, &data)?;
    Ok(frame::build_payload(&metadata, &packed))
}

/// For a batch of the compacted view with compacted-out messages, the ack
/// set (bit `i` set: message `i` is to be delivered) of the messages it
/// keeps; `None` when every message is kept or the entry cannot be read.
/// Dispatch sends it, so a client that ignores `compacted_out` skips those
/// messages as it skips acknowledged ones instead of showing them as empty.
pub(crate) fn retained_ack_set(entry: &Entry, max_batch_bytes: usize) -> Option<Vec<i64>> {
    let payload = frame::decode_payload(entry.data.clone()).ok()?;
    payload.metadata.num_messages_in_batch?;
    let data = batch_in_clear(&payload, max_batch_bytes).ok()?;
    let batch = frame::parse_batch(&data, payload.message_count()).ok()?;
    if !batch.iter().any(|(m, _)| m.compacted_out.unwrap_or(false)) {
        return None;
    }
    let mut words = vec![0i64; batch.len().div_ceil(64)];
    for (i, (m, _)) in batch.iter().enumerate() {
        if !m.compacted_out.unwrap_or(false) {
            if let Some(w) = words.get_mut(i / 64) {
                *w |= 1i64 << (i % 64);
            }
        }
    }
    Some(words)
}

/// The last message an ack set leaves to deliver (its highest set bit).
pub(crate) fn last_in_ack_set(set: &[i64]) -> Option<i32> {
    let (w, word) = set.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
    let bit = 63 - (*word as u64).leading_zeros();
    i32::try_from(w * 64 + bit as usize).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kilonova_pulsar_protocol::proto::MessageMetadata;

    const MAX: usize = 1 << 20;

    fn meta() -> MessageMetadata {
        MessageMetadata {
            producer_name: "p".into(),
            sequence_id: 0,
            publish_time: 1,
            ..Default::default()
        }
    }

    fn single(entry: u64, key: Option<&str>, value: &str) -> Entry {
        let md = MessageMetadata {
            partition_key: key.map(str::to_owned),
            ..meta()
        };
        Entry {
            position: Position::new(1, entry),
            publish_time_ms: 1,
            message_index: entry,
            message_count: 1,
            data: frame::build_payload(&md, value.as_bytes()),
        }
    }

    fn batch(entry: u64, msgs: &[(&str, &str)]) -> Entry {
        let mut data = BytesMut::new();
        for (k, v) in msgs {
            let m = SingleMessageMetadata {
                partition_key: Some((*k).to_owned()),
                ..Default::default()
            };
            frame::push_batch_message(&mut data, &m, v.as_bytes());
        }
        let md = MessageMetadata {
            num_messages_in_batch: Some(msgs.len() as i32),
            ..meta()
        };
        Entry {
            position: Position::new(1, entry),
            publish_time_ms: 1,
            message_index: entry,
            message_count: msgs.len() as u32,
            data: frame::build_payload(&md, &data),
        }
    }

    fn kept(entries: &[Entry], max_keys: usize) -> Result<Vec<(u64, Keep)>, CompactionError> {
        let mut t = KeyTable::new(max_keys, MAX);
        for e in entries {
            t.observe(e, Source::Log)?;
        }
        Ok(t.plan().into_iter().map(|(p, _, k)| (p.entry, k)).collect())
    }

    #[test]
    fn the_latest_value_of_each_key_is_kept_and_keyless_messages_are_not() {
        let entries = [
            single(0, Some("a"), "1"),
            single(1, Some("b"), "1"),
            single(2, None, "x"),
            single(3, Some("a"), "2"),
        ];
        assert_eq!(
            kept(&entries, 10).unwrap(),
            vec![(1, Keep::Whole), (3, Keep::Whole)]
        );
    }

    #[test]
    fn an_empty_value_deletes_its_key_until_it_is_written_again() {
        let entries = [
            single(0, Some("a"), "1"),
            single(1, Some("b"), "1"),
            single(2, Some("a"), ""),
            single(3, Some("b"), ""),
            single(4, Some("b"), "2"),
        ];
        assert_eq!(kept(&entries, 10).unwrap(), vec![(4, Keep::Whole)]);
    }

    #[test]
    fn keys_beyond_the_bound_stop_the_compaction() {
        let entries = [single(0, Some("a"), "1"), single(1, Some("b"), "1")];
        assert_eq!(kept(&entries, 1), Err(CompactionError::TooManyKeys(1)));
        // An update of a known key is not a new key.
        let entries = [single(0, Some("a"), "1"), single(1, Some("a"), "2")];
        assert!(kept(&entries, 1).is_ok());
    }

    #[test]
    fn a_batch_keeps_its_latest_messages_and_marks_the_rest_compacted_out() {
        let b = batch(0, &[("a", "1"), ("b", "1"), ("a", "2"), ("c", "1")]);
        let entries = [b.clone(), single(1, Some("c"), "2")];
        let plan = kept(&entries, 10).unwrap();
        assert_eq!(plan[0], (0, Keep::Messages(BTreeSet::from([1, 2]))));
        let out = rewrite(&b, &plan[0].1, MAX);
        let p = frame::decode_payload(out.data.clone()).unwrap();
        assert_eq!(p.metadata.num_messages_in_batch, Some(4));
        let msgs = frame::parse_batch(&p.data, 4).unwrap();
        let shown: Vec<(bool, &[u8])> = msgs
            .iter()
            .map(|(m, d)| (m.compacted_out.unwrap_or(false), &d[..]))
            .collect();
        assert_eq!(
            shown,
            vec![(true, &b""[..]), (false, b"1"), (false, b"2"), (true, b"")]
        );
        assert!(p.checksum_ok);
        // Read again by a later compaction, compacted-out messages say nothing.
        let mut t = KeyTable::new(10, MAX);
        t.observe(&out, Source::View(0)).unwrap();
        let again = t.plan();
        assert_eq!(again[0].2, Keep::Messages(BTreeSet::from([1, 2])));
        assert_eq!(again[0].1, Source::View(0));
    }

    /// `e`'s batch compressed with `codec`, its metadata saying so.
    fn compressed(mut e: Entry, codec: CompressionType) -> Entry {
        let p = frame::decode_payload(e.data.clone()).unwrap();
        let md = MessageMetadata {
            compression: Some(codec as i32),
            uncompressed_size: Some(p.data.len() as u32),
            ..p.metadata
        };
        e.data = frame::build_payload(&md, &compression::compress(codec, &p.data).unwrap());
        e
    }

    /// What a consumer reads of a (rewritten) batch: each message's
    /// compacted-out flag and value, decompressed.
    fn read_batch(e: &Entry) -> (CompressionType, Vec<(bool, Bytes)>) {
        let p = frame::decode_payload(e.data.clone()).unwrap();
        assert!(p.checksum_ok);
        let md = &p.metadata;
        let clear = compression::decompress(
            md.compression(),
            &p.data,
            md.uncompressed_size.unwrap(),
            MAX,
        )
        .unwrap();
        let msgs = frame::parse_batch(&Bytes::from(clear), p.message_count()).unwrap();
        let shown = msgs
            .into_iter()
            .map(|(m, d)| (m.compacted_out.unwrap_or(false), d))
            .collect();
        (md.compression(), shown)
    }

    const CODECS: [CompressionType; 4] = [
        CompressionType::Lz4,
        CompressionType::Zlib,
        CompressionType::Zstd,
        CompressionType::Snappy,
    ];

    #[test]
    fn a_compressed_batch_is_compacted_per_message_and_keeps_its_codec() {
        for codec in CODECS {
            let b = compressed(
                batch(0, &[("a", "1"), ("b", "1"), ("a", "2"), ("c", "1")]),
                codec,
            );
            let b2 = compressed(batch(1, &[("c", "2"), ("b", "")]), codec);
            let plan = kept(&[b.clone(), b2.clone()], 10).unwrap();
            // b is deleted by its empty value; c's latest is in the second batch.
            assert_eq!(
                plan,
                vec![
                    (0, Keep::Messages(BTreeSet::from([2]))),
                    (1, Keep::Messages(BTreeSet::from([0])))
                ],
                "{codec:?}"
            );
            let out = rewrite(&b, &plan[0].1, MAX);
            let (kept_codec, shown) = read_batch(&out);
            assert_eq!(kept_codec, codec);
            let want: Vec<(bool, Bytes)> = [(true, ""), (true, ""), (false, "2"), (true, "")]
                .into_iter()
                .map(|(c, v)| (c, Bytes::from(v)))
                .collect();
            assert_eq!(shown, want, "{codec:?}");
            // Dispatch tells clients which messages are left.
            assert_eq!(retained_ack_set(&out, MAX), Some(vec![0b100]));
            assert_eq!(last_in_ack_set(&[0b100]), Some(2));
            assert_eq!(last_in_ack_set(&[0, 1]), Some(64));
            assert_eq!(last_in_ack_set(&[0]), None);
            assert_eq!(retained_ack_set(&b, MAX), None, "nothing compacted out yet");
            // Read again by a later compaction, the rewritten batch says the same.
            let mut t = KeyTable::new(10, MAX);
            t.observe(&out, Source::View(0)).unwrap();
            assert_eq!(t.plan()[0].2, Keep::Messages(BTreeSet::from([2])));
        }
    }

    #[test]
    fn a_null_value_in_a_compressed_batch_deletes_its_key() {
        let mut data = BytesMut::new();
        let a = |null| SingleMessageMetadata {
            partition_key: Some("a".into()),
            null_value: null,
            ..Default::default()
        };
        frame::push_batch_message(&mut data, &a(None), b"1");
        frame::push_batch_message(&mut data, &a(Some(true)), b"");
        let md = MessageMetadata {
            num_messages_in_batch: Some(2),
            ..meta()
        };
        let e = Entry {
            position: Position::new(1, 0),
            publish_time_ms: 1,
            message_index: 0,
            message_count: 2,
            data: frame::build_payload(&md, &data),
        };
        for codec in CODECS {
            let mut deleting = compressed(e.clone(), codec);
            deleting.position = Position::new(1, 1);
            let entries = [single(0, Some("b"), "1"), deleting];
            assert_eq!(
                kept(&entries, 10).unwrap(),
                vec![(0, Keep::Whole)],
                "{codec:?}"
            );
        }
    }

    #[test]
    fn a_compressed_empty_message_deletes_its_key() {
        for codec in CODECS {
            let e = single(1, Some("a"), "");
            let p = frame::decode_payload(e.data.clone()).unwrap();
            let md = MessageMetadata {
                compression: Some(codec as i32),
                uncompressed_size: Some(0),
                ..p.metadata
            };
            let deleted = Entry {
                data: frame::build_payload(&md, &compression::compress(codec, b"").unwrap()),
                ..e
            };
            let entries = [single(0, Some("a"), "1"), deleted];
            assert_eq!(kept(&entries, 10).unwrap(), vec![], "{codec:?}");
        }
    }

    #[test]
    fn a_batch_claiming_an_absurd_uncompressed_size_is_kept_whole_unread() {
        let mut e = compressed(batch(0, &[("a", "1"), ("a", "2")]), CompressionType::Lz4);
        let p = frame::decode_payload(e.data.clone()).unwrap();
        let md = MessageMetadata {
            uncompressed_size: Some(u32::MAX),
            ..p.metadata
        };
        e.data = frame::build_payload(&md, &p.data);
        let mut t = KeyTable::new(10, MAX);
        t.observe(&e, Source::Log).unwrap();
        let (n, at, why) = t.unreadable().unwrap();
        assert_eq!((*n, *at), (1, Position::new(1, 0)));
        assert!(
            matches!(
                why,
                Unreadable::Compression(CompressionError::TooLarge { .. })
            ),
            "{why}"
        );
        assert_eq!(t.plan()[0].2, Keep::Whole);
    }

    #[test]
    fn an_encrypted_batch_is_kept_whole_and_not_reported() {
        let e = batch(0, &[("a", "1")]);
        let p = frame::decode_payload(e.data.clone()).unwrap();
        let md = MessageMetadata {
            encryption_keys: vec![Default::default()],
            ..p.metadata
        };
        let e = Entry {
            data: frame::build_payload(&md, &p.data),
            ..e
        };
        let mut t = KeyTable::new(10, MAX);
        t.observe(&e, Source::Log).unwrap();
        assert!(t.unreadable().is_none());
        assert_eq!(t.plan()[0].2, Keep::Whole);
    }
}
