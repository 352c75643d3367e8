//! The storage layer's decoders of disk bytes: journal records
//! ([`record::decode`] walking a file as recovery does), the `CHECKPOINT` and
//! `.idx` files, the managed log's state files (segment list, cursors), and
//! whole-store recovery ([`SegmentStore::open`] on a directory of fuzzed
//! files).

use bytes::BytesMut;

use kilonova_storage::fuzzing;
use kilonova_storage::record::{self, RecordHeader, RecordKind, ALIGN, HEADER_LEN};
use kilonova_storage::{SegmentStore, StoreConfig};

use super::{scratch_dir, Target};
use crate::mutate::Input;
use crate::rng::Rng;

/// Largest record the record target accepts (the store's is 8 MiB + header).
const MAX_RECORD_BYTES: usize = 64 << 10;

fn proportional(input_len: usize) -> usize {
    64 * input_len + (64 << 10)
}

fn kind(rng: &mut Rng) -> RecordKind {
    *rng.pick(&[
        RecordKind::Entry,
        RecordKind::Entry,
        RecordKind::Entry,
        RecordKind::Moved,
        RecordKind::Create,
        RecordKind::Seal,
        RecordKind::Delete,
    ])
    .unwrap_or(&RecordKind::Entry)
}

/// A run of records as the journal writer lays them out: increasing lsns,
/// dense entry ids per segment; length, segment and entry fields marked.
fn records(rng: &mut Rng, input: &mut Input, first_lsn: u64, count: usize) {
    let mut next_entry = [0u64; 3];
    for i in 0..count {
        let lsn = first_lsn + i as u64;
        let segment = rng.below(3);
        let kind = kind(rng);
        let entry = match kind {
            RecordKind::Entry | RecordKind::Moved => {
                let e = next_entry[segment];
                next_entry[segment] += 1;
                e
            }
            RecordKind::Seal => next_entry[segment],
            _ => 0,
        };
        let h = RecordHeader {
            kind,
            lsn,
            durable_lsn: lsn.saturating_sub(rng.between(1, 3) as u64),
            segment: segment as u64,
            entry,
        };
        let payload = if matches!(kind, RecordKind::Entry | RecordKind::Moved) {
            let n = rng.below(100);
            rng.bytes(n)
        } else {
            Vec::new()
        };
        let at = input.bytes.len();
        let mut b = BytesMut::new();
        record::encode(&h, &payload, &mut b);
        input.bytes.extend_from_slice(&b);
        input.le_at(at + 4, 4);
        input.le_at(at + 32, 8);
        input.le_at(at + 40, 8);
    }
}

/// Recomputes the CRC of every record found at 8-byte boundaries.
fn fix_record_checksums(b: &mut [u8], max_record: usize) {
    let mut at = 0usize;
    while at + HEADER_LEN <= b.len() {
        let rest = &mut b[at..];
        let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        if rest[..4] == record::MAGIC.to_le_bytes() && len >= HEADER_LEN && len <= rest.len() {
            let mut crc = crc32c::crc32c(&rest[4..8]);
            crc = crc32c::crc32c_append(crc, &rest[12..len]);
            rest[8..12].copy_from_slice(&crc.to_le_bytes());
            at += record::encoded_len(len.min(max_record).saturating_sub(HEADER_LEN)).max(ALIGN);
        } else {
            at += ALIGN;
        }
    }
}

/// Journal bytes walked record by record.
pub struct RecordTarget;

impl Target for RecordTarget {
    fn name(&self) -> &'static str {
        "record"
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let mut input = Input::default();
        let n = rng.between(1, 6);
        let first_lsn = 1 + rng.below(100) as u64;
        records(rng, &mut input, first_lsn, n);
        if rng.chance(1, 4) {
            // A recycled file's zeroed or stale tail.
            input.bytes.extend(std::iter::repeat_n(0, rng.below(128)));
        }
        input
    }

    fn fix_up(&self, bytes: &mut Vec<u8>) {
        fix_record_checksums(bytes, MAX_RECORD_BYTES);
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        proportional(input_len)
    }

    fn run(&mut self, input: &[u8]) {
        let mut pos = 0usize;
        while pos + HEADER_LEN <= input.len() {
            let rest = &input[pos..];
            match record::decode(rest, MAX_RECORD_BYTES) {
                Ok((h, range, total)) => {
                    assert_eq!(range.start, HEADER_LEN);
                    assert!(range.end <= rest.len() && range.end <= MAX_RECORD_BYTES);
                    assert!(total >= range.end && total % ALIGN == 0 && total - range.end < ALIGN);
                    assert_eq!(record::peek_len(rest, MAX_RECORD_BYTES), Ok(total));
                    // Encoding what was decoded gives the same bytes, but for
                    // the reserved bytes (nothing reads them; the checksum
                    // covers them, so it differs too when they are not zero).
                    let mut again = BytesMut::new();
                    record::encode(&h, &rest[range.clone()], &mut again);
                    let mut original = rest[..range.end].to_vec();
                    if original[13..16] != [0, 0, 0] {
                        original[13..16].fill(0);
                        original[8..12].copy_from_slice(&again[8..12]);
                    }
                    assert_eq!(
                        &again[..range.end],
                        &original[..],
                        "a record does not survive re-encoding"
                    );
                    let whole = bytes::Bytes::copy_from_slice(rest);
                    let (h2, payload) = record::decode_bytes(&whole, MAX_RECORD_BYTES)
                        .unwrap_or_else(|e| panic!("decode_bytes disagrees with decode: {e}"));
                    assert_eq!((h2, &payload[..]), (h, &rest[range]));
                    pos += total;
                }
                Err(_) => pos += ALIGN,
            }
        }
    }
}

/// `[kind][file]`: one of two kinds of small checksummed file (kind even: the
/// first), decoded by the store's own decoder of that file.
pub struct SmallFileTarget {
    name: &'static str,
    /// Appends a valid file of each kind to the input, its fields marked.
    generate: [fn(&mut Rng, &mut Input); 2],
    decode: [fn(&[u8]); 2],
}

impl SmallFileTarget {
    /// `CHECKPOINT` and `.idx` files.
    pub fn checkpoint() -> Self {
        SmallFileTarget {
            name: "checkpoint",
            generate: [checkpoint_file, idx_file],
            decode: [
                |f| drop(fuzzing::checkpoint_file(f)),
                |f| drop(fuzzing::idx_file(f)),
            ],
        }
    }

    /// A managed log's segment list and a cursor.
    pub fn log_state() -> Self {
        SmallFileTarget {
            name: "log-state",
            generate: [log_meta_file, cursor_file],
            decode: [
                |f| drop(fuzzing::log_meta(f)),
                |f| drop(fuzzing::cursor_state(f)),
            ],
        }
    }
}

fn checkpoint_file(rng: &mut Rng, input: &mut Input) {
    let segments: Vec<(u64, bool, u64)> = (0..rng.below(5))
        .map(|i| (i as u64 * 3, rng.chance(1, 2), rng.below(1000) as u64))
        .collect();
    let mut file = Input::new(fuzzing::checkpoint_file_bytes(
        rng.below(4) as u32,
        rng.below(100) as u64,
        rng.interesting_u64(),
        &segments,
    ));
    file.le_at(28, 8);
    for i in 0..segments.len() {
        file.le_at(36 + i * 17 + 9, 8);
    }
    input.extend(&file.bytes, &file.fields);
}

fn idx_file(rng: &mut Rng, input: &mut Input) {
    let records: Vec<(u64, u64, u64, u64)> = (0..rng.below(5))
        .map(|i| {
            (
                rng.below(3) as u64,
                i as u64,
                48 * i as u64,
                rng.below(100) as u64,
            )
        })
        .collect();
    let mut file = Input::new(fuzzing::idx_file_bytes(&records));
    file.le_at(8, 8);
    input.extend(&file.bytes, &file.fields);
}

fn log_meta_file(rng: &mut Rng, input: &mut Input) {
    let segments: Vec<(u64, u64, u64)> = (0..rng.below(4))
        .map(|i| (i as u64, rng.below(1000) as u64, rng.interesting_u64()))
        .collect();
    let next_index = rng.below(1000) as u64;
    let mut at = 13 + 24 * segments.len();
    let file = if rng.below(2) == 0 {
        // Version 1: cursors listed by name (migrated when a log opens).
        let names: Vec<String> = (0..rng.below(4)).map(|_| rng.text(12)).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut file = Input::new(fuzzing::log_meta_v1_bytes(next_index, &segments, &names));
        file.le_at(9, 4);
        file.le_at(at, 4);
        at += 4;
        for n in &names {
            file.le_at(at, 4);
            at += 4 + n.len();
        }
        file
    } else {
        // Version 2: cursors listed by id.
        let ids: Vec<u64> = (0..rng.below(4)).map(|_| rng.below(100) as u64).collect();
        let mut file = Input::new(fuzzing::log_meta_bytes(next_index, &segments, &ids));
        file.le_at(9, 4);
        file.le_at(at, 8);
        file.le_at(at + 8, 4);
        file
    };
    input.extend(&file.bytes, &file.fields);
}

fn cursor_file(rng: &mut Rng, input: &mut Input) {
    let ranges: Vec<(u64, u64, u64)> = (0..rng.below(5))
        .map(|i| {
            let s = rng.below(50) as u64;
            (i as u64 % 2, s, s + rng.below(10) as u64)
        })
        .collect();
    let name = rng.text(12);
    let mut file = Input::new(fuzzing::cursor_state_bytes(
        &name,
        (0, rng.below(100) as u64),
        &ranges,
    ));
    file.le_at(1, 4);
    file.le_at(5 + name.len() + 16, 4);
    input.extend(&file.bytes, &file.fields);
}

impl Target for SmallFileTarget {
    fn name(&self) -> &'static str {
        self.name
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let kind = rng.below(2);
        let mut input = Input::new(vec![kind as u8]);
        (self.generate[kind])(rng, &mut input);
        input
    }

    fn fix_up(&self, bytes: &mut Vec<u8>) {
        fix_trailing_crc(bytes, 1);
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        proportional(input_len)
    }

    fn run(&mut self, input: &[u8]) {
        if let Some((kind, file)) = input.split_first() {
            (self.decode[usize::from(kind % 2)])(file);
        }
    }
}

/// Rewrites the CRC32C that ends a file (after `skip` leading bytes of framing).
fn fix_trailing_crc(bytes: &mut [u8], skip: usize) {
    let Some(file) = bytes.get_mut(skip..) else {
        return;
    };
    if file.len() >= 4 {
        let body = file.len() - 4;
        let crc = crc32c::crc32c(&file[..body]);
        file[body..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Files of a store directory: `[tag][u32 LE length][bytes]…`, tag 0 and 1 the
/// journal files `0000000000.log` / `0000000001.log`, 2 `CHECKPOINT`, 3 the
/// first journal file's `.idx`, 4 a journal file numbered past what a
/// location can hold. The store is opened on them.
pub struct RecoveryTarget {
    dir: tempfile::TempDir,
    runs: u64,
}

const FILE_NAMES: [&str; 5] = [
    "0000000000.log",
    "0000000001.log",
    "CHECKPOINT",
    "0000000000.idx",
    "4294967295.log",
];

impl RecoveryTarget {
    pub fn new() -> anyhow::Result<Self> {
        Ok(RecoveryTarget {
            dir: scratch_dir()?,
            runs: 0,
        })
    }
}

fn push_file(input: &mut Input, tag: u8, file: &Input) {
    input.bytes.push(tag);
    input.le_at(input.bytes.len(), 4);
    input
        .bytes
        .extend_from_slice(&(file.bytes.len() as u32).to_le_bytes());
    input.extend(&file.bytes, &file.fields);
}

/// The files of an input: (tag, bytes), lengths clipped to what is there.
fn files(input: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let (Some(tag), Some(len)) = (input.get(at), input.get(at + 1..at + 5)) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let start = at + 5;
        let end = start.saturating_add(len).min(input.len());
        out.push((*tag, &input[start..end]));
        at = end;
    }
    out
}

impl Target for RecoveryTarget {
    fn name(&self) -> &'static str {
        "recovery"
    }

    fn generate(&mut self, rng: &mut Rng) -> Input {
        let mut input = Input::default();
        let mut lsn = 1 + rng.below(10) as u64;
        let journal_files = rng.between(1, 2);
        for tag in 0..journal_files {
            let mut file = Input::default();
            let n = rng.between(1, 8);
            records(rng, &mut file, lsn, n);
            lsn += n as u64;
            push_file(&mut input, tag as u8, &file);
        }
        if rng.chance(1, 2) {
            let segments: Vec<(u64, bool, u64)> = (0..3)
                .map(|s| (s, rng.chance(1, 3), rng.below(4) as u64))
                .collect();
            let mut file = Input::new(fuzzing::checkpoint_file_bytes(
                rng.below(2) as u32,
                3,
                lsn,
                &segments,
            ));
            for i in 0..segments.len() {
                file.le_at(36 + i * 17 + 9, 8);
            }
            push_file(&mut input, 2, &file);
            let records: Vec<(u64, u64, u64, u64)> = (0..rng.below(4))
                .map(|i| (rng.below(3) as u64, i as u64, 0, 0))
                .collect();
            let mut idx = Input::new(fuzzing::idx_file_bytes(&records));
            for i in 0..records.len() {
                idx.le_at(16 + i * 32 + 8, 8);
            }
            push_file(&mut input, 3, &idx);
        }
        if rng.chance(1, 16) {
            let mut file = Input::default();
            records(rng, &mut file, lsn, 1);
            push_file(&mut input, 4, &file);
        }
        input
    }

    fn fix_up(&self, bytes: &mut Vec<u8>) {
        // Re-checksum each file in place.
        let mut at = 0usize;
        while let (Some(&tag), Some(len)) = (bytes.get(at), bytes.get(at + 1..at + 5)) {
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let start = at + 5;
            let end = start.saturating_add(len).min(bytes.len());
            if let Some(file) = bytes.get_mut(start..end) {
                if matches!(usize::from(tag) % FILE_NAMES.len(), 0 | 1 | 4) {
                    fix_record_checksums(file, usize::MAX);
                } else {
                    fix_trailing_crc(file, 0);
                }
            }
            at = end;
        }
    }

    fn fresh_per_mille(&self) -> u32 {
        50
    }

    fn alloc_limit(&self, input_len: usize) -> usize {
        // Recovery reads each journal file whole, keeps an 8-byte location
        // per entry and opens the store's threads and files.
        (2 << 20) + 64 * input_len
    }

    fn run(&mut self, input: &[u8]) {
        self.runs += 1;
        let dir = self.dir.path().join(format!("store-{}", self.runs));
        // Removed however the run ends (a panic is a finding, not a leak).
        let _remove = RemoveOnDrop(dir.clone());
        let written = std::fs::create_dir_all(&dir).is_ok()
            && files(input).iter().all(|(tag, bytes)| {
                let name = FILE_NAMES[usize::from(*tag) % FILE_NAMES.len()];
                std::fs::write(dir.join(name), bytes).is_ok()
            });
        assert!(
            written,
            "could not write the store's files in {}",
            dir.display()
        );
        let mut config = StoreConfig::new(&dir);
        config.max_entry_bytes = 64 << 10;
        config.log_file_bytes = 1 << 20;
        config.group_commit_max_bytes = 64 << 10;
        config.recycle_files = 0;
        if let Ok(store) = SegmentStore::open(config) {
            // Every segment it recovered reads back: entries or errors, no panic.
            for id in store.segments() {
                if let Some(info) = store.segment(id) {
                    for entry in 0..info.entries.min(64) {
                        let _ = store.read(id, entry);
                    }
                }
            }
            drop(store);
        }
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
