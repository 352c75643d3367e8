//! Checkpoint files: what lets recovery skip everything but the journal's tail.
//!
//! * `NNNNNNNNNN.idx` beside each sealed journal file: every entry record the
//!   file holds, as (segment, entry, offset). Loading it replaces scanning the file.
//! * `CHECKPOINT`: the segment table (live segments, sealed flag, entry count),
//!   the next segment id and lsn, and the first journal file to replay. Written
//!   atomically (temp file, fsync, rename, fsync directory).
//!
//! Both end with a CRC32C of everything before it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{Result, StorageError};

const IDX_MAGIC: u32 = u32::from_le_bytes(*b"KNIX");
const CP_MAGIC: u32 = u32::from_le_bytes(*b"KNCP");
const VERSION: u32 = 1;

pub(crate) fn log_path(dir: &Path, no: u32) -> PathBuf {
    dir.join(format!("{no:010}.log"))
}
pub(crate) fn idx_path(dir: &Path, no: u32) -> PathBuf {
    dir.join(format!("{no:010}.idx"))
}
pub(crate) fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("CHECKPOINT")
}

/// One entry record of a journal file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IdxRecord {
    pub segment: u64,
    pub entry: u64,
    pub offset: u64,
    pub payload_len: u64,
}

/// A segment's row in the checkpoint's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentRow {
    pub id: u64,
    pub sealed: bool,
    pub entries: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Journal files numbered below this have index files and need no replay.
    pub replay_from_file: u32,
    pub next_segment_id: u64,
    pub next_lsn: u64,
    pub segments: Vec<SegmentRow>,
}

fn invalid(path: &Path, detail: impl Into<String>) -> StorageError {
    StorageError::InvalidFile {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// Writes `bytes` + CRC to `path` durably and atomically.
pub(crate) fn write_atomic(path: &Path, mut bytes: BytesMut) -> Result<()> {
    let crc = crc32c::crc32c(&bytes);
    bytes.put_u32_le(crc);
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| StorageError::io("creating a checkpoint file", e))?;
    f.write_all(&bytes)
        .map_err(|e| StorageError::io("writing a checkpoint file", e))?;
    f.sync_all()
        .map_err(|e| StorageError::io("syncing a checkpoint file", e))?;
    fs::rename(&tmp, path).map_err(|e| StorageError::io("renaming a checkpoint file", e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("syncing the store directory", e))
}

/// Reads a file written by [`write_atomic`], verifying its CRC; returns the body.
pub(crate) fn read_verified(path: &Path) -> Result<Option<bytes::Bytes>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("reading a checkpoint file", e)),
    };
    verified_body(&data, path).map(Some)
}

/// The body of a file written by [`write_atomic`] (`data`: its whole
/// contents), once its CRC checks out.
pub(crate) fn verified_body(data: &[u8], path: &Path) -> Result<bytes::Bytes> {
    if data.len() < 4 {
        return Err(invalid(path, "shorter than its checksum"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if crc32c::crc32c(body) != u32::from_le_bytes(c) {
        return Err(invalid(path, "checksum mismatch"));
    }
    Ok(bytes::Bytes::copy_from_slice(body))
}

fn need(buf: &impl Buf, n: usize, path: &Path) -> Result<()> {
    if buf.remaining() < n {
        return Err(invalid(path, "truncated"));
    }
    Ok(())
}

pub(crate) fn write_idx(dir: &Path, no: u32, records: &[IdxRecord]) -> Result<u64> {
    let b = encode_idx(records);
    let len = b.len() as u64 + 4;
    write_atomic(&idx_path(dir, no), b)?;
    Ok(len)
}

/// An index file's body (before its CRC).
pub(crate) fn encode_idx(records: &[IdxRecord]) -> BytesMut {
    let mut b = BytesMut::with_capacity(16 + records.len() * 32);
    b.put_u32_le(IDX_MAGIC);
    b.put_u32_le(VERSION);
    b.put_u64_le(records.len() as u64);
    for r in records {
        b.put_u64_le(r.segment);
        b.put_u64_le(r.entry);
        b.put_u64_le(r.offset);
        b.put_u64_le(r.payload_len);
    }
    b
}

/// Reads an index file; `Ok(None)` if it does not exist.
pub(crate) fn read_idx(dir: &Path, no: u32) -> Result<Option<Vec<IdxRecord>>> {
    let path = idx_path(dir, no);
    match read_verified(&path)? {
        Some(b) => decode_idx(b, &path).map(Some),
        None => Ok(None),
    }
}

/// Decodes an index file's body (`path` names it in errors).
pub(crate) fn decode_idx(mut b: Bytes, path: &Path) -> Result<Vec<IdxRecord>> {
    need(&b, 16, path)?;
    if b.get_u32_le() != IDX_MAGIC || b.get_u32_le() != VERSION {
        return Err(invalid(path, "not a version-1 index file"));
    }
    let n = b.get_u64_le();
    let n = usize::try_from(n).map_err(|_| invalid(path, "bad count"))?;
    if b.remaining() != n.saturating_mul(32) {
        return Err(invalid(path, "count does not match length"));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(IdxRecord {
            segment: b.get_u64_le(),
            entry: b.get_u64_le(),
            offset: b.get_u64_le(),
            payload_len: b.get_u64_le(),
        });
    }
    Ok(out)
}

pub(crate) fn write_checkpoint(dir: &Path, cp: &Checkpoint) -> Result<()> {
    write_atomic(&checkpoint_path(dir), encode_checkpoint(cp))
}

/// A checkpoint file's body (before its CRC).
pub(crate) fn encode_checkpoint(cp: &Checkpoint) -> BytesMut {
    let mut b = BytesMut::with_capacity(32 + cp.segments.len() * 17);
    b.put_u32_le(CP_MAGIC);
    b.put_u32_le(VERSION);
    b.put_u32_le(cp.replay_from_file);
    b.put_u64_le(cp.next_segment_id);
    b.put_u64_le(cp.next_lsn);
    b.put_u64_le(cp.segments.len() as u64);
    for s in &cp.segments {
        b.put_u64_le(s.id);
        b.put_u8(u8::from(s.sealed));
        b.put_u64_le(s.entries);
    }
    b
}

pub(crate) fn read_checkpoint(dir: &Path) -> Result<Option<Checkpoint>> {
    let path = checkpoint_path(dir);
    match read_verified(&path)? {
        Some(b) => decode_checkpoint(b, &path).map(Some),
        None => Ok(None),
    }
}

/// Decodes a checkpoint file's body (`path` names it in errors).
pub(crate) fn decode_checkpoint(mut b: Bytes, path: &Path) -> Result<Checkpoint> {
    need(&b, 36, path)?;
    if b.get_u32_le() != CP_MAGIC || b.get_u32_le() != VERSION {
        return Err(invalid(path, "not a version-1 checkpoint"));
    }
    let replay_from_file = b.get_u32_le();
    let next_segment_id = b.get_u64_le();
    let next_lsn = b.get_u64_le();
    let n = b.get_u64_le();
    let n = usize::try_from(n).map_err(|_| invalid(path, "bad count"))?;
    if b.remaining() != n.saturating_mul(17) {
        return Err(invalid(path, "count does not match length"));
    }
    let mut segments = Vec::with_capacity(n);
    for _ in 0..n {
        segments.push(SegmentRow {
            id: b.get_u64_le(),
            sealed: b.get_u8() != 0,
            entries: b.get_u64_le(),
        });
    }
    Ok(Checkpoint {
        replay_from_file,
        next_segment_id,
        next_lsn,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cp = Checkpoint {
            replay_from_file: 4,
            next_segment_id: 10,
            next_lsn: 99,
            segments: vec![
                SegmentRow {
                    id: 1,
                    sealed: true,
                    entries: 5,
                },
                SegmentRow {
                    id: 7,
                    sealed: false,
                    entries: 0,
                },
            ],
        };
        write_checkpoint(dir.path(), &cp).unwrap();
        assert_eq!(read_checkpoint(dir.path()).unwrap(), Some(cp));
        let p = checkpoint_path(dir.path());
        let mut bytes = fs::read(&p).unwrap();
        bytes[13] ^= 0xff;
        fs::write(&p, bytes).unwrap();
        assert!(matches!(
            read_checkpoint(dir.path()),
            Err(StorageError::InvalidFile { .. })
        ));
    }

    #[test]
    fn idx_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let recs = vec![IdxRecord {
            segment: 1,
            entry: 2,
            offset: 48,
            payload_len: 3,
        }];
        write_idx(dir.path(), 3, &recs).unwrap();
        assert_eq!(read_idx(dir.path(), 3).unwrap(), Some(recs));
        assert_eq!(read_idx(dir.path(), 4).unwrap(), None);
    }
}
