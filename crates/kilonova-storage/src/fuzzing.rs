//! The decoders of the store's small files as pure functions over bytes, for
//! the fuzz harness (`kilonova-fuzz`); compiled only with the `fuzzing`
//! feature. Each takes a whole file as it is on disk (the state files and
//! checkpoint files end with their CRC32C) and checks what it can of the
//! decoded value with `assert!`: a panic here is a finding. The `*_bytes`
//! functions build valid files to start mutating from.

use std::path::Path;

use bytes::{BufMut, BytesMut};

use crate::checkpoint::{self, Checkpoint, IdxRecord, SegmentRow};
use crate::error::Result;
use crate::managed_log::meta::{self, StoredCursors};
use crate::managed_log::{cursor, SegmentMeta};
use crate::position::Position;

fn with_crc(mut body: BytesMut) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.put_u32_le(crc);
    body.to_vec()
}

/// Decodes a `CHECKPOINT` file; returns its segment count.
pub fn checkpoint_file(file: &[u8]) -> Result<usize> {
    let path = Path::new("CHECKPOINT");
    let cp = checkpoint::decode_checkpoint(checkpoint::verified_body(file, path)?, path)?;
    // Every row took 17 bytes of the file.
    assert!(cp.segments.len().saturating_mul(17) <= file.len());
    // What it decoded encodes to a file that decodes the same.
    let again = checkpoint::decode_checkpoint(checkpoint::encode_checkpoint(&cp).freeze(), path)?;
    assert_eq!(again, cp, "a checkpoint does not survive re-encoding");
    Ok(cp.segments.len())
}

/// A valid `CHECKPOINT` file: segments are (id, sealed, entries).
pub fn checkpoint_file_bytes(
    replay_from_file: u32,
    next_segment_id: u64,
    next_lsn: u64,
    segments: &[(u64, bool, u64)],
) -> Vec<u8> {
    let cp = Checkpoint {
        replay_from_file,
        next_segment_id,
        next_lsn,
        segments: segments
            .iter()
            .map(|&(id, sealed, entries)| SegmentRow {
                id,
                sealed,
                entries,
            })
            .collect(),
    };
    with_crc(checkpoint::encode_checkpoint(&cp))
}

/// Decodes a journal file's `.idx` file; returns its record count.
pub fn idx_file(file: &[u8]) -> Result<usize> {
    let path = Path::new("0000000000.idx");
    let records = checkpoint::decode_idx(checkpoint::verified_body(file, path)?, path)?;
    assert!(records.len().saturating_mul(32) <= file.len());
    let again = checkpoint::decode_idx(checkpoint::encode_idx(&records).freeze(), path)?;
    assert_eq!(again, records, "an index does not survive re-encoding");
    Ok(records.len())
}

/// A valid `.idx` file: records are (segment, entry, offset, payload length).
pub fn idx_file_bytes(records: &[(u64, u64, u64, u64)]) -> Vec<u8> {
    let records: Vec<IdxRecord> = records
        .iter()
        .map(|&(segment, entry, offset, payload_len)| IdxRecord {
            segment,
            entry,
            offset,
            payload_len,
        })
        .collect();
    with_crc(checkpoint::encode_idx(&records))
}

/// Decodes a managed log's metadata file (a state-store value and its CRC,
/// either version); returns its segment and cursor counts.
pub fn log_meta(file: &[u8]) -> Result<(usize, usize)> {
    let body = checkpoint::verified_body(file, Path::new("logs/1/meta"))?;
    let meta = meta::decode_meta(body.clone())?;
    let cursors = match &meta.cursors {
        // A cursor name takes at least 4 bytes, an id 8.
        StoredCursors::ByName(names) => names.len().saturating_mul(4),
        StoredCursors::ById { ids, .. } => ids.len().saturating_mul(8),
    };
    // A segment takes 24 bytes.
    assert!(meta.segments.len().saturating_mul(24) + cursors <= body.len());
    let count = match meta.cursors {
        StoredCursors::ByName(names) => names.len(),
        StoredCursors::ById { ids, .. } => ids.len(),
    };
    Ok((meta.segments.len(), count))
}

/// Segments given as (id, first message index, created ms).
fn segment_table(segments: &[(u64, u64, u64)]) -> Vec<SegmentMeta> {
    segments
        .iter()
        .map(|&(id, first_message_index, created_ms)| SegmentMeta {
            id,
            first_message_index,
            created_ms,
        })
        .collect()
}

/// A valid managed log metadata file of the current version: segments are
/// (id, first message index, created ms), cursors their ids.
pub fn log_meta_bytes(
    next_index: u64,
    segments: &[(u64, u64, u64)],
    cursor_ids: &[u64],
) -> Vec<u8> {
    let next_id = cursor_ids.iter().max().map_or(0, |m| m.saturating_add(1));
    with_crc(meta::encode_meta(
        next_index,
        &segment_table(segments),
        next_id,
        cursor_ids,
        &Default::default(),
    ))
}

/// A valid metadata file of version 1 (cursors listed by name), which a log
/// migrates when it opens.
pub fn log_meta_v1_bytes(
    next_index: u64,
    segments: &[(u64, u64, u64)],
    cursors: &[&str],
) -> Vec<u8> {
    let segments = segment_table(segments);
    let mut b = meta::encode_head(meta::META_VERSION_NAMES, next_index, &segments);
    b.put_u32_le(cursors.len() as u32);
    for c in cursors {
        b.put_u32_le(c.len() as u32);
        b.put_slice(c.as_bytes());
    }
    with_crc(b)
}

/// Decodes a durable cursor's state file (stored by id: version byte and
/// name first; stored by name: the body alone); returns its number of
/// acknowledged ranges.
pub fn cursor_state(file: &[u8]) -> Result<usize> {
    let body = checkpoint::verified_body(file, Path::new("logs/1/cursors/c"))?;
    let acked = match cursor::decode_cursor(&body) {
        Ok(record) => record.acked,
        Err(_) => cursor::decode_cursor_body(body.clone())?.1,
    };
    assert!(acked.range_count().saturating_mul(24) <= body.len());
    Ok(acked.range_count())
}

/// A valid cursor state file as stored by id: its name, the ack floor and
/// ranges (segment, first, last entry).
pub fn cursor_state_bytes(name: &str, floor: (u64, u64), ranges: &[(u64, u64, u64)]) -> Vec<u8> {
    let ranges: Vec<(Position, Position)> = ranges
        .iter()
        .map(|&(segment, first, last)| {
            (Position::new(segment, first), Position::new(segment, last))
        })
        .collect();
    with_crc(cursor::encode_cursor(
        name,
        Position::new(floor.0, floor.1),
        &ranges,
        None,
        false,
    ))
}
