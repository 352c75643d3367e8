//! Message deduplication of a topic: Pulsar's "message deduplication" by producer
//! name and sequence id.
//!
//! Per producer name the topic remembers the highest sequence id *pushed* (accepted
//! for appending, maybe not yet durable) and the highest *persisted* (durable) with
//! the position of the entry that carried it. A message or batch whose highest
//! sequence id is at or below what was pushed is a duplicate.
//!
//! [`Dedup`] is a pure core: the topic task calls it around its appends. The state
//! survives a crash through a snapshot in the [`StateStore`] (taken every N persisted
//! entries and at close) plus a replay of the log entries after the position the
//! snapshot covers ([`recover`]). Memory is bounded: at most `max_producers` names
//! are tracked (Pulsar's `brokerDeduplicationMaxNumberOfProducers`); beyond that the
//! producer updated longest ago is forgotten.

// Wired into topic.rs separately; until then only the tests use this module.

use std::collections::{BTreeMap, HashMap};

use bytes::{BufMut, Bytes};
use kilonova_pulsar_protocol::frame;
use kilonova_storage::{ManagedLog, Position, StateStore, StorageError};

/// Pulsar's default `brokerDeduplicationMaxNumberOfProducers` (the broker's
/// `deduplication_max_producers` default).
#[cfg(test)]
pub(crate) const DEFAULT_MAX_PRODUCERS: usize = 10_000;

/// Producer names the Kafka listener gives idempotent Kafka producers
/// (`<prefix><producer id>-<epoch>`).
pub(crate) const KAFKA_IDEMPOTENT_PREFIX: &str = "kafka-idempotent-";

/// How a SEND_ERROR's message begins when an idempotent Kafka producer's
/// batch does not follow its last one (Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER).
pub(crate) const KAFKA_OUT_OF_ORDER: &str = "out-of-order sequence";

/// Producers deduplicated whatever the topic's policy: other clusters'
/// replicators, and idempotent Kafka producers (Kafka promises them no
/// duplicate across retries, reconnects and broker restarts).
pub(crate) fn always_deduplicated(producer: &str) -> bool {
    crate::replicator::is_replicator(producer) || producer.starts_with(KAFKA_IDEMPOTENT_PREFIX)
}

/// Entries read from the log per call while replaying.
const REPLAY_BATCH_ENTRIES: usize = 1024;

const SNAPSHOT_VERSION: u8 = 1;
/// version, flags, covered position, producer count.
const SNAPSHOT_HEADER_BYTES: usize = 1 + 1 + 16 + 4;
/// name length, sequence id, position (the name's bytes come on top).
const SNAPSHOT_RECORD_MIN_BYTES: usize = 4 + 8 + 16;
const SNAPSHOT_CRC_BYTES: usize = 4;
const FLAG_HAS_COVERED: u8 = 1;

/// Errors of loading or storing deduplication state.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DedupError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The stored snapshot is not one this code wrote (truncated, damaged, unknown version).
    #[error("deduplication snapshot is corrupt: {0}")]
    Corrupt(String),
}

/// Whether a message is to be appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    New,
    /// Already pushed: the producer is retrying. It may still be in flight; compare
    /// with [`Dedup::last_persisted`] to know whether it is durable yet.
    Duplicate,
}

#[derive(Clone, Debug)]
struct ProducerState {
    /// Highest sequence id accepted for appending (`None`: nothing since the last failure).
    pushed: Option<u64>,
    /// Highest durable sequence id and the entry that carried it.
    persisted: Option<(u64, Position)>,
    /// Logical time of the last update: the key of this producer in `Dedup::by_age`.
    touched: u64,
}

/// A topic's deduplication state.
#[derive(Debug)]
pub(crate) struct Dedup {
    producers: HashMap<String, ProducerState>,
    /// `touched` → producer name, oldest first: the eviction order.
    by_age: BTreeMap<u64, String>,
    clock: u64,
    max_producers: usize,
    /// The last entry whose effect is in this state (persisted or replayed).
    covered: Option<Position>,
    unsnapshotted: u64,
}

impl Dedup {
    /// Empty state tracking at most `max_producers` names (at least one, at most `u32::MAX`).
    pub(crate) fn new(max_producers: usize) -> Self {
        Dedup {
            producers: HashMap::new(),
            by_age: BTreeMap::new(),
            clock: 0,
            max_producers: max_producers.clamp(1, u32::MAX as usize),
            covered: None,
            unsnapshotted: 0,
        }
    }

    /// Whether the message (or batch `sequence_id..=highest_sequence_id`) was already pushed.
    pub(crate) fn check(
        &self,
        producer: &str,
        sequence_id: u64,
        highest_sequence_id: u64,
    ) -> Verdict {
        let highest = highest_sequence_id.max(sequence_id);
        match self.producers.get(producer).and_then(|s| s.pushed) {
            Some(pushed) if highest <= pushed => Verdict::Duplicate,
            _ => Verdict::New,
        }
    }

    /// The sequence `producer` must send next, if `sequence_id` is past it:
    /// a gap, for producers whose sequences are dense (Kafka's). Nothing
    /// is known of a producer with nothing pushed (new, or after a fence).
    pub(crate) fn gap(&self, producer: &str, sequence_id: u64) -> Option<u64> {
        let next = self.producers.get(producer)?.pushed?.checked_add(1)?;
        (sequence_id > next).then_some(next)
    }

    /// The message up to `highest_sequence_id` was accepted for appending.
    pub(crate) fn pushed(&mut self, producer: &str, highest_sequence_id: u64) {
        self.update(producer, |s| raise(&mut s.pushed, highest_sequence_id));
    }

    /// The topic was fenced after a failed append and nothing is in flight
    /// any more: every producer's accepted-for-appending mark goes back to
    /// what is known durable, so resends of whatever was answered with an
    /// error are taken as new.
    pub(crate) fn reset_pushed(&mut self) {
        for s in self.producers.values_mut() {
            s.pushed = s.persisted.map(|(seq, _)| seq);
        }
    }

    /// The entry at `at`, carrying the producer's messages up to `highest_sequence_id`,
    /// is durable. Called in append order.
    pub(crate) fn persisted(&mut self, producer: &str, highest_sequence_id: u64, at: Position) {
        debug_assert!(
            self.covered.is_none_or(|c| c < at),
            "entries are persisted in log order: {at} after {:?}",
            self.covered
        );
        self.record(producer, highest_sequence_id, at);
        self.unsnapshotted += 1;
    }

    /// The highest durable sequence id of `producer` and where it is stored. A new
    /// producer of that name gets it as `last_sequence_id` (-1 when `None`).
    pub(crate) fn last_persisted(&self, producer: &str) -> Option<(u64, Position)> {
        self.producers.get(producer).and_then(|s| s.persisted)
    }

    /// The last entry whose effect this state holds.
    #[cfg(test)]
    pub(crate) fn covered(&self) -> Option<Position> {
        self.covered
    }

    /// Producer names tracked.
    pub(crate) fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Entries persisted since the last snapshot (the caller snapshots when this
    /// reaches its interval).
    pub(crate) fn unsnapshotted(&self) -> u64 {
        self.unsnapshotted
    }

    /// The snapshot of the persisted state; counts from zero again.
    #[cfg(test)]
    pub(crate) fn encode_snapshot(&mut self) -> Vec<u8> {
        let b = self.snapshot_bytes();
        self.unsnapshotted = 0;
        b
    }

    /// Snapshot layout (little-endian): `u8 version`, `u8 flags` (bit 0: a covered
    /// position follows), `u64 segment`, `u64 entry` (covered position, zero if none),
    /// `u32 count`, then per producer, oldest update first: `u32 name length`, name
    /// (UTF-8), `u64 sequence id`, `u64 segment`, `u64 entry`; last a `u32` CRC32C of
    /// everything before it. Producers with nothing persisted are not in it.
    fn snapshot_bytes(&self) -> Vec<u8> {
        let records: Vec<(&str, u32, u64, Position)> = self
            .by_age
            .values()
            .filter_map(|name| {
                let (seq, at) = self.producers.get(name)?.persisted?;
                // A name longer than 4 GiB cannot have come in a frame.
                let len = u32::try_from(name.len()).ok()?;
                Some((name.as_str(), len, seq, at))
            })
            .collect();
        let names: usize = records.iter().map(|(n, ..)| n.len()).sum();
        let mut b = Vec::with_capacity(
            SNAPSHOT_HEADER_BYTES
                + records.len() * SNAPSHOT_RECORD_MIN_BYTES
                + names
                + SNAPSHOT_CRC_BYTES,
        );
        b.put_u8(SNAPSHOT_VERSION);
        b.put_u8(if self.covered.is_some() {
            FLAG_HAS_COVERED
        } else {
            0
        });
        let covered = self.covered.unwrap_or_default();
        b.put_u64_le(covered.segment);
        b.put_u64_le(covered.entry);
        // At most `max_producers` records, which `new` keeps within u32.
        b.put_u32_le(u32::try_from(records.len()).unwrap_or(u32::MAX));
        for (name, len, seq, at) in records {
            b.put_u32_le(len);
            b.put_slice(name.as_bytes());
            b.put_u64_le(seq);
            b.put_u64_le(at.segment);
            b.put_u64_le(at.entry);
        }
        let crc = crc32c::crc32c(&b);
        b.put_u32_le(crc);
        b
    }

    /// The state a snapshot holds, and the position it covers up to.
    pub(crate) fn decode_snapshot(
        bytes: &[u8],
        max_producers: usize,
    ) -> Result<(Self, Option<Position>), DedupError> {
        let corrupt = |what: &str| DedupError::Corrupt(what.to_string());
        let body_len = bytes
            .len()
            .checked_sub(SNAPSHOT_CRC_BYTES)
            .filter(|n| *n >= SNAPSHOT_HEADER_BYTES)
            .ok_or_else(|| corrupt("shorter than a header"))?;
        let (body, crc) = bytes.split_at(body_len);
        let mut r = Reader(body);
        if r.u8()? != SNAPSHOT_VERSION {
            return Err(corrupt("unknown version"));
        }
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err(corrupt("checksum mismatch"));
        }
        let flags = r.u8()?;
        if flags & !FLAG_HAS_COVERED != 0 {
            return Err(corrupt("unknown flags"));
        }
        let covered = r.position()?;
        let covered = (flags & FLAG_HAS_COVERED != 0).then_some(covered);
        let count = r.u32()? as usize;
        if count.saturating_mul(SNAPSHOT_RECORD_MIN_BYTES) > r.0.len() {
            return Err(corrupt("more producers than bytes"));
        }
        let mut d = Dedup::new(max_producers);
        for _ in 0..count {
            let len = r.u32()? as usize;
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| corrupt("producer name is not UTF-8"))?;
            let seq = r.u64()?;
            let at = r.position()?;
            if d.producers.contains_key(name) {
                return Err(corrupt("producer listed twice"));
            }
            if covered.is_none_or(|c| at > c) {
                return Err(corrupt("producer persisted after the covered position"));
            }
            // Oldest first: if the limit shrank, the oldest are evicted as in live use.
            d.update(name, |s| {
                s.pushed = Some(seq);
                s.persisted = Some((seq, at));
            });
        }
        if !r.0.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        d.covered = covered;
        Ok((d, covered))
    }

    /// Replays one stored entry (its payload exactly as stored: optional broker entry
    /// metadata and checksum, then the `MessageMetadata` and data) at `position`.
    /// Entries at or before what this state covers are skipped; an entry that does
    /// not decode is skipped with a warning (it deduplicates nothing).
    pub(crate) fn replay(&mut self, position: Position, payload: &Bytes) {
        if self.covered.is_some_and(|c| position <= c) {
            return;
        }
        self.unsnapshotted += 1;
        let meta = match frame::decode_payload(payload.clone()) {
            Ok(p) => p.metadata,
            Err(e) => {
                tracing::warn!(%position, error = %e, "dedup replay: entry without readable metadata");
                self.covered = Some(position);
                return;
            }
        };
        if meta.producer_name.is_empty() || !completes_message(&meta) {
            // A chunk before the last one does not make its message stored.
            self.covered = Some(position);
            return;
        }
        // A replicated message counts for its replicator, under its source position.
        if let Some((replicator, sequence_id)) = crate::replicator::replicated_source(&meta) {
            self.record(&replicator, sequence_id, position);
            return;
        }
        let highest = meta.highest_sequence_id.unwrap_or_else(|| {
            let n = u64::from(frame::message_count(&meta));
            meta.sequence_id.saturating_add(n.saturating_sub(1))
        });
        self.record(&meta.producer_name, highest.max(meta.sequence_id), position);
    }

    fn record(&mut self, producer: &str, highest_sequence_id: u64, at: Position) {
        self.update(producer, |s| {
            raise(&mut s.pushed, highest_sequence_id);
            if s.persisted.is_none_or(|(seq, _)| seq < highest_sequence_id) {
                s.persisted = Some((highest_sequence_id, at));
            }
        });
        self.covered = Some(self.covered.map_or(at, |c| c.max(at)));
    }

    /// Applies `f` to the producer's state, created if new (evicting the oldest
    /// beyond the limit), and marks it as updated now.
    fn update(&mut self, producer: &str, f: impl FnOnce(&mut ProducerState)) {
        self.clock += 1;
        let now = self.clock;
        if let Some(s) = self.producers.get_mut(producer) {
            let name = self.by_age.remove(&s.touched);
            debug_assert!(name.is_some(), "every tracked producer is in by_age");
            self.by_age
                .insert(now, name.unwrap_or_else(|| producer.to_string()));
            s.touched = now;
            f(s);
            return;
        }
        while self.producers.len() >= self.max_producers {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.producers.remove(&oldest);
        }
        let mut s = ProducerState {
            pushed: None,
            persisted: None,
            touched: now,
        };
        f(&mut s);
        self.producers.insert(producer.to_string(), s);
        self.by_age.insert(now, producer.to_string());
        debug_assert_eq!(self.producers.len(), self.by_age.len());
        debug_assert!(self.producers.len() <= self.max_producers);
    }
}

/// Raises `v` to at least `to`.
fn raise(v: &mut Option<u64>, to: u64) {
    *v = Some(v.map_or(to, |x| x.max(to)));
}

/// Bounds-checked little-endian reads over a snapshot.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DedupError> {
        if n > self.0.len() {
            return Err(DedupError::Corrupt("truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DedupError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DedupError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DedupError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DedupError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn position(&mut self) -> Result<Position, DedupError> {
        Ok(Position::new(self.u64()?, self.u64()?))
    }
}

/// Whether an entry with this metadata completes its message: not a chunk, or
/// the last chunk of one. Every chunk of a chunked message carries the
/// message's sequence id, so only the last one may count it as stored (else
/// the chunks after the first would be taken for duplicates).
pub(crate) fn completes_message(meta: &kilonova_pulsar_protocol::proto::MessageMetadata) -> bool {
    chunk_completes(meta.chunk_id, meta.num_chunks_from_msg)
}

/// Whether chunk `chunk_id` of a message of `num_chunks` completes it (a
/// message that is not chunked does).
pub(crate) fn chunk_completes(chunk_id: Option<i32>, num_chunks: Option<i32>) -> bool {
    match (chunk_id, num_chunks) {
        (Some(id), Some(n)) if n > 1 => id.saturating_add(1) >= n,
        _ => true,
    }
}

/// The state key of topic `topic_id`'s snapshot.
pub(crate) fn snapshot_key(topic_id: u64) -> String {
    format!("dedup/{topic_id}")
}

/// Loads the snapshot (if any) from `state` under `key`, then replays every entry of
/// `log` after the position it covers. Reads the disk: run it off the async workers.
pub(crate) fn recover(
    state: &dyn StateStore,
    key: &str,
    log: &ManagedLog,
    max_producers: usize,
) -> Result<Dedup, DedupError> {
    let (mut d, covered) = match state.load(key)? {
        Some(b) => Dedup::decode_snapshot(&b, max_producers)?,
        None => (Dedup::new(max_producers), None),
    };
    // `read_from` moves past segment ends and deleted segments by itself.
    let mut from = covered.map_or_else(
        || log.first_position(),
        |c| Position::new(c.segment, c.entry.saturating_add(1)),
    );
    tracing::debug!(log = log.id(), ?covered, %from, end = %log.end_position(), producers = d.producer_count(), "deduplication: replaying the log after the snapshot");
    loop {
        let entries = log.read_from(from, REPLAY_BATCH_ENTRIES)?;
        let Some(last) = entries.last().map(|e| e.position) else {
            break;
        };
        for e in &entries {
            d.replay(e.position, &e.data);
        }
        from = Position::new(last.segment, last.entry.saturating_add(1));
    }
    Ok(d)
}

/// Stores `d`'s snapshot under `key`; its count of unsnapshotted entries restarts
/// only once the snapshot is durable.
pub(crate) fn store_snapshot(
    state: &dyn StateStore,
    key: &str,
    d: &mut Dedup,
) -> Result<(), DedupError> {
    state.store(key, &d.snapshot_bytes())?;
    d.unsnapshotted = 0;
    Ok(())
}

#[cfg(test)]
mod tests;
