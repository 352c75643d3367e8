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
//! The buffer is aligned without `unsafe`: a `Vec` a block longer than needed,
//! used from its first aligned byte.

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

/// The writer's aligned buffer and the tail of the file it writes.
#[derive(Default)]
pub(super) struct DirectWriter {
    mem: Vec<u8>,
    /// The bytes of the block holding the file's end, before the end:
    /// `tail_at` is that block's offset.
    tail: Vec<u8>,
    tail_at: u64,
}

impl DirectWriter {
    /// Writes `data` at `pos` of `file` (opened with `O_DIRECT`); `buffered`
    /// is a handle of the same file that reads the block's earlier bytes when
    /// they are not the tail kept from the last write (a file's first write
    /// at an offset inside a block).
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
        if head > 0 && (self.tail_at != start || self.tail.len() != head) {
            let mut earlier = vec![0u8; head];
            buffered.read_exact_at(&mut earlier, start)?;
            self.tail = earlier;
        }
        let used = head + data.len();
        let padded = used.div_ceil(BLOCK) * BLOCK;
        let buf = aligned(&mut self.mem, padded);
        buf[..head].copy_from_slice(&self.tail[..head]);
        buf[head..used].copy_from_slice(data);
        buf[used..].fill(0);
        // On failure the tail is unknown: the caller never writes this file again.
        file.write_all_at(buf, start)?;
        let last_block = used - used % BLOCK;
        self.tail_at = start + last_block as u64;
        self.tail.clear();
        self.tail.extend_from_slice(&buf[last_block..used]);
        Ok(())
    }
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

    #[test]
    fn unaligned_writes_leave_the_bytes_a_buffered_write_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, vec![0xAAu8; 5 * BLOCK]).unwrap();
        let buffered = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let Some(direct) = open(&path) else {
            eprintln!("O_DIRECT unsupported here: nothing to test");
            return;
        };
        let mut w = DirectWriter::default();
        let mut expect = vec![0xAAu8; 5 * BLOCK];
        let mut pos = 0usize;
        // Sizes that cross, fill and stop short of block ends.
        for (i, len) in [100usize, 3996, 1, 5000, 4096, 7].into_iter().enumerate() {
            let data = vec![i as u8 + 1; len];
            w.write_at(&direct, &buffered, &data, pos as u64).unwrap();
            expect[pos..pos + len].copy_from_slice(&data);
            pos += len;
            // Past the end, up to the end of its block: zeros.
            let pad_end = pos.div_ceil(BLOCK) * BLOCK;
            expect[pos..pad_end].fill(0);
            assert_eq!(contents(&path, 5 * BLOCK), expect, "after write {i}");
        }
        // A fresh writer (a restart) reads the block's earlier bytes back.
        let mut again = DirectWriter::default();
        again
            .write_at(&direct, &buffered, b"xyz", pos as u64)
            .unwrap();
        expect[pos..pos + 3].copy_from_slice(b"xyz");
        assert_eq!(contents(&path, 5 * BLOCK), expect);
    }
}
