//! Journal writes that bypass the page cache (`O_DIRECT`).
//!
//! A buffered `pwrite` copies every group into the page cache first; at a
//! few hundred MB/s that copy was the broker's largest single cost (a third
//! of its cycles publishing unbatched 1 KiB messages, docs/benchmarks.md).
//! With `O_DIRECT` the device reads the group from the writer's own buffer.
//!
//! `O_DIRECT` wants the buffer, the file offset and the length aligned to the
//! device's block. The journal's records are not: a group is written from
//! the start of the block holding its first byte, that block's earlier bytes
//! (already written, kept here as the *tail*) repeated in front of it, and
//! padded with zeros to the end of its last block. The bytes on disk are the
//! ones a buffered write would leave — records back to back, and after the
//! last one zeros, which recovery reads as the end of the log, as it reads
//! the preallocated space — so the file format does not change. The next
//! group rewrites the padded block with the same bytes plus its own, as the
//! page cache's writeback of a partly written page would.
//!
//! The writer encodes a group straight into a [`GroupBuf`] whose records
//! start as far past a block boundary of its memory as the group's first
//! byte lies past one in the file: the block's earlier bytes go in front of
//! them in place and the group is written from where it was encoded, with
//! no copy (a group that outgrew its buffer while encoded is copied once).
//!
//! Buffers are aligned without `unsafe`: a `Vec` longer than needed, used
//! from its first aligned byte.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// The alignment of buffers, offsets and lengths: 4 KiB covers the logical
/// block size of every device we run on (512 B or 4 KiB).
pub(super) const BLOCK: usize = 4096;

/// Opens `path` a second time for direct writes; `None` where the file
/// system does not support `O_DIRECT` (tmpfs), and the journal writes
/// through the page cache there.
pub(super) fn open(path: &Path) -> Option<File> {
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "O_DIRECT not available: journal writes go through the page cache");
            None
        }
    }
}

/// A group's records as the journal encodes them, placed for a direct write.
#[derive(Default)]
pub(super) struct GroupBuf {
    mem: Vec<u8>,
    /// Where the records start in `mem`.
    at: usize,
}

impl GroupBuf {
    /// Empties the buffer for a group that will be written at file offset
    /// `pos`: its records start `pos % BLOCK` bytes past a block boundary
    /// of the memory, as they will in the file.
    pub(super) fn start(&mut self, pos: u64) {
        let head = (pos % BLOCK as u64) as usize;
        self.mem.clear();
        // Room for the alignment, the block's earlier bytes and the padding.
        self.mem.reserve(3 * BLOCK);
        self.at = offset_to_block(&self.mem) + head;
        self.mem.resize(self.at, 0);
    }

    /// Where records are encoded (appended).
    pub(super) fn encoder(&mut self) -> &mut Vec<u8> {
        &mut self.mem
    }

    /// The records encoded since [`GroupBuf::start`].
    pub(super) fn records(&self) -> &[u8] {
        self.mem.get(self.at..).unwrap_or_default()
    }

    pub(super) fn len(&self) -> usize {
        self.mem.len().saturating_sub(self.at)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn capacity(&self) -> usize {
        self.mem.capacity()
    }

    /// Drops the records (the next group calls [`GroupBuf::start`]).
    pub(super) fn clear(&mut self) {
        self.mem.clear();
        self.at = 0;
    }
}

/// The writer's aligned buffer and the tail of the file it writes.
#[derive(Default)]
pub(super) struct DirectWriter {
    mem: Vec<u8>,
    /// The bytes of the block holding the file's end, before the end:
    /// `tail_at` is that block's offset.
    tail: Vec<u8>,
    tail_at: u64,
    /// Groups that outgrew their buffer and were copied to be written.
    copied: u64,
}

impl DirectWriter {
    /// Writes the group in `group` at `pos` of `file` (opened with
    /// `O_DIRECT`) from where it was encoded, unless it outgrew the memory
    /// [`GroupBuf::start`] aligned (then it is copied, as by
    /// [`DirectWriter::write_at`]). `pos` is the offset `start` was given.
    pub(super) fn write_group(
        &mut self,
        file: &File,
        buffered: &File,
        group: &mut GroupBuf,
        pos: u64,
    ) -> std::io::Result<()> {
        let head = (pos % BLOCK as u64) as usize;
        let used = head + group.len();
        let padded = used.div_ceil(BLOCK) * BLOCK;
        let from = group.at.wrapping_sub(head);
        let in_place = group.at >= head
            && offset_to_block(&group.mem) == from % BLOCK
            && group.mem.capacity() >= from + padded;
        if !in_place {
            self.copied += 1;
            return self.write_at(file, buffered, group.records(), pos);
        }
        let start = pos - head as u64;
        self.load_head(buffered, start, head)?;
        group.mem[from..group.at].copy_from_slice(&self.tail[..head]);
        // Within the capacity checked above: no reallocation, still aligned.
        group.mem.resize(from + padded, 0);
        let buf = &group.mem[from..];
        file.write_all_at(buf, start)?;
        keep_tail(&mut self.tail, &mut self.tail_at, buf, start, used);
        Ok(())
    }

    /// Writes `data` at `pos` of `file` (opened with `O_DIRECT`) through
    /// the writer's own aligned buffer; `buffered` is a handle of the same
    /// file that reads the block's earlier bytes when they are not the tail
    /// kept from the last write (a file's first write at an offset inside a
    /// block).
    pub(super) fn write_at(
        &mut self,
        file: &File,
        buffered: &File,
        data: &[u8],
        pos: u64,
    ) -> std::io::Result<()> {
        let block = BLOCK as u64;
        let start = pos - pos % block;
        let head = (pos - start) as usize;
        self.load_head(buffered, start, head)?;
        let used = head + data.len();
        let padded = used.div_ceil(BLOCK) * BLOCK;
        let buf = aligned(&mut self.mem, padded);
        buf[..head].copy_from_slice(&self.tail[..head]);
        buf[head..used].copy_from_slice(data);
        buf[used..].fill(0);
        // On failure the tail is unknown: the caller never writes this file again.
        file.write_all_at(buf, start)?;
        keep_tail(&mut self.tail, &mut self.tail_at, buf, start, used);
        Ok(())
    }

    /// Makes `tail` hold the `head` bytes of the block at `start` that come
    /// before the write, reading them from the file unless kept.
    fn load_head(&mut self, buffered: &File, start: u64, head: usize) -> std::io::Result<()> {
        if head > 0 && (self.tail_at != start || self.tail.len() != head) {
            let mut earlier = vec![0u8; head];
            buffered.read_exact_at(&mut earlier, start)?;
            self.tail = earlier;
        }
        Ok(())
    }
}

/// Keeps the bytes of `buf` (written at `start`, the first `used` of them
/// meant) in its last block as the file's tail, for the next write.
fn keep_tail(tail: &mut Vec<u8>, tail_at: &mut u64, buf: &[u8], start: u64, used: usize) {
    let last_block = used - used % BLOCK;
    *tail_at = start + last_block as u64;
    tail.clear();
    tail.extend_from_slice(&buf[last_block..used]);
}

/// The chunk [`fill_with_zeros`] writes at a time.
const FILL_CHUNK: usize = 1 << 20;

/// Writes zeros over the first `len` bytes of `path` (rounded down to a
/// block) with direct writes, then fdatasyncs it: preallocated space
/// (`fallocate`) is *unwritten* on ext4 and XFS, and the first write into
/// each part of it converts its extent, a metadata change every fdatasync
/// then writes too — on our disk a small append's write + fdatasync took
/// twice as long as into written blocks. `Ok(false)` where the file system
/// has no `O_DIRECT` (tmpfs, which has no unwritten extents either).
pub(super) fn fill_with_zeros(path: &Path, len: u64) -> std::io::Result<bool> {
    let Some(file) = open(path) else {
        return Ok(false);
    };
    let mut mem = Vec::new();
    let end = len - len % BLOCK as u64;
    let mut pos = 0u64;
    while pos < end {
        let n = (end - pos).min(FILL_CHUNK as u64) as usize;
        file.write_all_at(aligned(&mut mem, n), pos)?;
        pos += n as u64;
    }
    file.sync_data()?;
    Ok(true)
}

/// A block-aligned slice of `len` bytes of `mem` (grown as needed).
fn aligned(mem: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if offset_to_block(mem) + len > mem.len() {
        *mem = vec![0u8; len.next_power_of_two().max(BLOCK) + BLOCK];
    }
    let off = offset_to_block(mem);
    &mut mem[off..off + len]
}

/// Bytes from the start of `mem` to its first block-aligned byte (below
/// `BLOCK`), from the address itself: `align_offset` may answer "never".
fn offset_to_block(mem: &[u8]) -> usize {
    let addr = mem.as_ptr() as usize;
    (BLOCK - addr % BLOCK) % BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the file holds, read back through the page cache.
    fn contents(path: &Path, len: usize) -> Vec<u8> {
        let f = File::open(path).unwrap();
        let mut out = vec![0u8; len];
        f.read_exact_at(&mut out, 0).unwrap();
        out
    }

    struct Journal {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        buffered: File,
        direct: File,
    }

    /// A file of `blocks` blocks of 0xAA opened both ways; `None` where
    /// there is no `O_DIRECT` (nothing to test).
    fn journal(blocks: usize) -> Option<Journal> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, vec![0xAAu8; blocks * BLOCK]).unwrap();
        let buffered = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let Some(direct) = open(&path) else {
            eprintln!("O_DIRECT unsupported here: nothing to test");
            return None;
        };
        Some(Journal {
            _dir: dir,
            path,
            buffered,
            direct,
        })
    }

    #[test]
    fn unaligned_writes_leave_the_bytes_a_buffered_write_would() {
        let Some(j) = journal(5) else {
            return;
        };
        let (path, buffered, direct) = (&j.path, &j.buffered, &j.direct);
        let mut w = DirectWriter::default();
        let mut expect = vec![0xAAu8; 5 * BLOCK];
        let mut pos = 0usize;
        // Sizes that cross, fill and stop short of block ends.
        for (i, len) in [100usize, 3996, 1, 5000, 4096, 7].into_iter().enumerate() {
            let data = vec![i as u8 + 1; len];
            w.write_at(direct, buffered, &data, pos as u64).unwrap();
            expect[pos..pos + len].copy_from_slice(&data);
            pos += len;
            // Past the end, up to the end of its block: zeros.
            let pad_end = pos.div_ceil(BLOCK) * BLOCK;
            expect[pos..pad_end].fill(0);
            assert_eq!(contents(path, 5 * BLOCK), expect, "after write {i}");
        }
        // A fresh writer (a restart) reads the block's earlier bytes back.
        let mut again = DirectWriter::default();
        again
            .write_at(direct, buffered, b"xyz", pos as u64)
            .unwrap();
        expect[pos..pos + 3].copy_from_slice(b"xyz");
        assert_eq!(contents(path, 5 * BLOCK), expect);
    }

    #[test]
    fn groups_written_from_where_they_were_encoded_leave_the_same_bytes() {
        let Some(j) = journal(12) else {
            return;
        };
        let (path, buffered, direct) = (&j.path, &j.buffered, &j.direct);
        let mut w = DirectWriter::default();
        let mut group = GroupBuf::default();
        let mut expect = vec![0xAAu8; 12 * BLOCK];
        let mut pos = 0usize;
        // Groups that cross, fill and stop short of block ends, and one
        // (20,000 bytes) that outgrows the buffer while it is encoded.
        for (i, len) in [100usize, 3996, 1, 5000, 4096, 7, 20_000, 300]
            .into_iter()
            .enumerate()
        {
            group.start(pos as u64);
            let data = vec![i as u8 + 1; len];
            group.encoder().extend_from_slice(&data);
            assert_eq!(group.records(), &data[..]);
            w.write_group(direct, buffered, &mut group, pos as u64)
                .unwrap();
            let copied = u64::from(len == 20_000);
            assert_eq!(w.copied, copied, "group {i}: groups copied");
            w.copied = 0;
            group.clear();
            expect[pos..pos + len].copy_from_slice(&data);
            pos += len;
            let pad_end = pos.div_ceil(BLOCK) * BLOCK;
            expect[pos..pad_end].fill(0);
            assert_eq!(contents(path, 12 * BLOCK), expect, "after group {i}");
        }
    }
}
