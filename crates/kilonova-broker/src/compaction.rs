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
//! compactor does. A compressed batch cannot be looked into here: it is kept
//! whole, whatever its keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::{Bytes, BytesMut};

use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{CompressionType, SingleMessageMetadata};
use kilonova_storage::{Entry, Position};

/// Why a compaction stopped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CompactionError {
    #[error("more than {0} distinct keys: raise compaction_max_keys")]
    TooManyKeys(usize),
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

/// What an entry holds: its messages, or `None` when it cannot be looked
/// into (a compressed or undecodable batch).
fn messages(entry: &Entry) -> Option<Vec<Message>> {
    let payload = frame::decode_payload(entry.data.clone()).ok()?;
    let md = &payload.metadata;
    if md.num_messages_in_batch.is_none() {
        return Some(vec![Message {
            key: md.partition_key.as_ref().map(|k| Bytes::from(k.clone())),
            deletes: md.null_value.unwrap_or(false) || payload.data.is_empty(),
            batch_index: None,
        }]);
    }
    if md.compression() != CompressionType::None || !md.encryption_keys.is_empty() {
        return None;
    }
    let batch = frame::parse_batch(&payload.data, payload.message_count()).ok()?;
    Some(
        batch
            .into_iter()
            .enumerate()
            .filter(|(_, (m, _))| !m.compacted_out.unwrap_or(false))
            .map(|(i, (m, data))| Message {
                key: m.partition_key.map(Bytes::from),
                deletes: m.null_value.unwrap_or(false) || data.is_empty(),
                batch_index: u32::try_from(i).ok(),
            })
            .collect(),
    )
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
    max_keys: usize,
}

impl KeyTable {
    pub(crate) fn new(max_keys: usize) -> Self {
        KeyTable {
            latest: HashMap::new(),
            opaque: BTreeMap::new(),
            max_keys,
        }
    }

    /// Takes in one entry, read in position order.
    pub(crate) fn observe(&mut self, entry: &Entry, source: Source) -> Result<(), CompactionError> {
        let Some(msgs) = messages(entry) else {
            self.opaque.insert(entry.position, source);
            return Ok(());
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
/// messages not kept marked `compacted_out` and emptied.
pub(crate) fn rewrite(entry: &Entry, keep: &Keep) -> Entry {
    let Keep::Messages(kept) = keep else {
        return entry.clone();
    };
    let Ok(payload) = frame::decode_payload(entry.data.clone()) else {
        return entry.clone();
    };
    let Ok(batch) = frame::parse_batch(&payload.data, payload.message_count()) else {
        return entry.clone();
    };
    let mut data = BytesMut::with_capacity(payload.data.len());
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
    Entry {
        data: frame::build_payload(&metadata, &data),
        ..entry.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kilonova_pulsar_protocol::proto::MessageMetadata;

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
        let mut t = KeyTable::new(max_keys);
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
        let out = rewrite(&b, &plan[0].1);
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
        let mut t = KeyTable::new(10);
        t.observe(&out, Source::View(0)).unwrap();
        let again = t.plan();
        assert_eq!(again[0].2, Keep::Messages(BTreeSet::from([1, 2])));
        assert_eq!(again[0].1, Source::View(0));
    }

    #[test]
    fn a_compressed_batch_is_kept_whole() {
        let mut e = batch(0, &[("a", "1")]);
        let p = frame::decode_payload(e.data.clone()).unwrap();
        let md = MessageMetadata {
            compression: Some(CompressionType::Lz4 as i32),
            ..p.metadata
        };
        e.data = frame::build_payload(&md, &p.data);
        assert_eq!(kept(&[e], 10).unwrap(), vec![(0, Keep::Whole)]);
    }
}
