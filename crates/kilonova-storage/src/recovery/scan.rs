//! Reading a journal file record by record, for recovery.
//!
//! A damaged record ends the log (torn tail: the write was never acknowledged)
//! unless a later valid record's `durable_lsn` proves it was once durable; then
//! it is mid-file corruption: logged, skipped, and the entries it held read as
//! `Corrupt`.
//!
//! Files are read through one bounded buffer ([`JournalReader`]), never whole:
//! a record larger than the buffer has its checksum computed piece by piece.
//! What the file system reports as a hole (preallocated space never written)
//! reads as zeros and holds no record, so a search for the next record skips
//! it without reading it: the zero tail of a preallocated file costs nothing.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::error::{Result, StorageError};
use crate::record::{self, RecordError, RecordHeader, ALIGN, HEADER_LEN};

/// The most of a journal file recovery holds in memory at once.
const READ_CHUNK: usize = 1 << 20;

/// A journal file read through one buffer of at most `chunk` bytes.
pub(super) struct JournalReader {
    file: File,
    len: u64,
    chunk: usize,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
    /// Bytes read from the file so far.
    read_bytes: u64,
}

impl JournalReader {
    pub(super) fn new(path: &std::path::Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| StorageError::io("opening a journal file", e))?;
        // Recovery reads front to back: let the kernel read ahead.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential);
        Self::with_chunk(file, READ_CHUNK)
    }

    fn with_chunk(file: File, chunk: usize) -> Result<Self> {
        debug_assert!(chunk >= HEADER_LEN && chunk % ALIGN == 0);
        let len = file
            .metadata()
            .map_err(|e| StorageError::io("reading a journal file's size", e))?
            .len();
        Ok(JournalReader {
            file,
            len,
            chunk,
            buf: Vec::with_capacity(chunk),
            start: 0,
            read_bytes: 0,
        })
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// `want` bytes (at most `chunk`) at `off`, fewer only at the end of the file.
    fn at(&mut self, off: u64, want: usize) -> Result<&[u8]> {
        let end = off
            .saturating_add(want.min(self.chunk) as u64)
            .min(self.len);
        let off = off.min(end);
        let cached_end = self.start + self.buf.len() as u64;
        if off < self.start || end > cached_end {
            let n = (self.len - off).min(self.chunk as u64) as usize;
            self.buf.resize(n, 0);
            self.file
                .read_exact_at(&mut self.buf, off)
                .map_err(|e| StorageError::io("reading a journal file", e))?;
            self.start = off;
            self.read_bytes += n as u64;
        }
        let (from, to) = ((off - self.start) as usize, (end - self.start) as usize);
        Ok(self.buf.get(from..to).unwrap_or_default())
    }

    /// The first offset at or after `off` the file system says may hold data
    /// (`off` itself when it cannot tell); `None`: only a hole follows.
    fn next_data(&self, off: u64) -> Option<u64> {
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(off)) {
            Ok(d) => Some(d.max(off)),
            Err(rustix::io::Errno::NXIO) => None,
            Err(_) => Some(off),
        }
    }

    /// Decodes and verifies the record at `pos`, as [`record::decode`] does on
    /// the rest of the file (a record may be as long as its file).
    fn decode_at(&mut self, pos: u64) -> Result<Result<ValidRecord, RecordError>> {
        let available = usize::try_from(self.len.saturating_sub(pos)).unwrap_or(usize::MAX);
        let max = usize::try_from(self.len).unwrap_or(usize::MAX);
        let mut head = [0u8; HEADER_LEN];
        let got = self.at(pos, HEADER_LEN)?;
        let n = got.len().min(HEADER_LEN);
        if let (Some(dst), Some(src)) = (head.get_mut(..n), got.get(..n)) {
            dst.copy_from_slice(src);
        }
        let extend = |from: usize, to: usize, mut crc: u32| {
            let mut at = from;
            while at < to {
                let piece = self.at(pos + at as u64, to - at)?;
                if piece.is_empty() {
                    return Err(StorageError::io(
                        "reading a journal file",
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                crc = crc32c::crc32c_append(crc, piece);
                at += piece.len();
            }
            Ok(crc)
        };
        let decoded =
            record::decode_streamed(head.get(..n).unwrap_or_default(), available, max, extend)?;
        Ok(decoded.map(|(header, payload, total)| ValidRecord {
            header,
            payload_len: payload.len() as u64,
            total: total as u64,
        }))
    }
}

/// A valid record: its header, payload length and padded size.
struct ValidRecord {
    header: RecordHeader,
    payload_len: u64,
    total: u64,
}

/// Walks the records of one journal file in order, calling `apply` for each valid
/// record with an lsn above `last_lsn`, and stops at the end of the log.
pub(super) fn scan(
    no: u32,
    r: &mut JournalReader,
    last_lsn: &mut u64,
    mut apply: impl FnMut(&RecordHeader, u64, u64),
) -> Result<()> {
    let mut pos = 0u64;
    while pos + HEADER_LEN as u64 <= r.len() {
        let err = match r.decode_at(pos)? {
            Ok(d) if d.header.lsn > *last_lsn => {
                apply(&d.header, pos, d.payload_len);
                *last_lsn = d.header.lsn;
                pos += d.total;
                continue;
            }
            // An older record: leftovers beyond the end of the log.
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        match resume_point(r, pos + ALIGN as u64, *last_lsn)? {
            Some(q) => {
                tracing::error!(
                    file = no,
                    offset = pos,
                    bytes = q - pos,
                    error = %err,
                    "corrupt region in the journal: entries stored there read as corrupt"
                );
                pos = q;
            }
            _ => {
                let zero = r.at(pos, 4096)?.iter().all(|b| *b == 0);
                if !(zero && err == RecordError::NoMagic) {
                    tracing::warn!(
                        file = no,
                        offset = pos,
                        error = %err,
                        "torn tail in the journal (an unacknowledged write): log truncated here"
                    );
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Where to resume after damage at `from`: the first later valid record, if some
/// later valid record was written after the damaged one was durable
/// (`durable_lsn > last_lsn`); `None` means the damage is a torn tail.
fn resume_point(r: &mut JournalReader, from: u64, last_lsn: u64) -> Result<Option<u64>> {
    let Some((first, _)) = next_valid(r, from, last_lsn)? else {
        return Ok(None);
    };
    let mut q = first;
    while let Some((at, h)) = next_valid(r, q, last_lsn)? {
        if h.durable_lsn > last_lsn {
            return Ok(Some(first));
        }
        q = at + ALIGN as u64;
    }
    Ok(None)
}

/// The next offset at or after `from` (8-aligned) holding a valid record newer than `last_lsn`.
fn next_valid(
    r: &mut JournalReader,
    from: u64,
    last_lsn: u64,
) -> Result<Option<(u64, RecordHeader)>> {
    let magic = record::MAGIC.to_le_bytes();
    let align = ALIGN as u64;
    let fits = |q: u64, r: &JournalReader| q + HEADER_LEN as u64 <= r.len();
    let mut q = from.next_multiple_of(align);
    while fits(q, r) {
        // A hole reads as zeros and holds no record: skip it unread.
        match r.next_data(q) {
            Some(d) => q = q.max(d / align * align),
            None => return Ok(None),
        }
        if !fits(q, r) {
            break;
        }
        let chunk = r.chunk;
        let window = r.at(q, chunk)?;
        let slots = window.len() / ALIGN;
        let found = window
            .chunks_exact(ALIGN)
            .position(|slot| slot.get(..4) == Some(&magic[..]));
        let Some(k) = found else {
            q += (slots.max(1) * ALIGN) as u64;
            continue;
        };
        let at = q + (k * ALIGN) as u64;
        if !fits(at, r) {
            break;
        }
        if let Ok(d) = r.decode_at(at)? {
            if d.header.lsn > last_lsn {
                return Ok(Some((at, d.header)));
            }
        }
        q = at + align;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn rec(buf: &mut BytesMut, lsn: u64, durable_lsn: u64, entry: u64) {
        let h = RecordHeader {
            kind: RecordKind::Entry,
            lsn,
            durable_lsn,
            segment: 1,
            entry,
        };
        record::encode(&h, &[7u8; 100], buf);
    }

    /// What `scan` applies from `data` read through a buffer of `chunk` bytes:
    /// (lsn, offset, payload length) of each record, and the last lsn.
    fn streamed(data: &[u8], mut last: u64, chunk: usize) -> (Vec<(u64, u64, u64)>, u64) {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, data).unwrap();
        let mut reader = JournalReader::with_chunk(file, chunk).unwrap();
        let mut seen = Vec::new();
        scan(0, &mut reader, &mut last, |h, offset, len| {
            seen.push((h.lsn, offset, len))
        })
        .unwrap();
        (seen, last)
    }

    fn scanned(data: &[u8], last: u64) -> Vec<u64> {
        let (seen, _) = streamed(data, last, READ_CHUNK);
        seen.into_iter().map(|(lsn, _, _)| lsn).collect()
    }

    /// The scan as it was when recovery read each file whole: what the
    /// streaming scan must match exactly, whatever its buffer size.
    mod whole_file {
        use super::super::*;

        pub fn scan(data: &[u8], last_lsn: &mut u64) -> Vec<(u64, u64, u64)> {
            let mut out = Vec::new();
            let max = data.len();
            let mut pos = 0usize;
            while pos + HEADER_LEN <= data.len() {
                let rest = data.get(pos..).unwrap_or_default();
                match record::decode(rest, max) {
                    Ok((h, range, total)) if h.lsn > *last_lsn => {
                        out.push((h.lsn, pos as u64, range.len() as u64));
                        *last_lsn = h.lsn;
                        pos += total;
                        continue;
                    }
                    Ok(_) => return out,
                    Err(_) => {}
                }
                match resume_point(data, pos + ALIGN, *last_lsn) {
                    Some(q) => pos = q,
                    None => return out,
                }
            }
            out
        }

        fn resume_point(data: &[u8], from: usize, last_lsn: u64) -> Option<usize> {
            let (first, _) = next_valid(data, from, last_lsn)?;
            let mut q = first;
            while let Some((at, h)) = next_valid(data, q, last_lsn) {
                if h.durable_lsn > last_lsn {
                    return Some(first);
                }
                q = at + ALIGN;
            }
            None
        }

        fn next_valid(data: &[u8], from: usize, last_lsn: u64) -> Option<(usize, RecordHeader)> {
            let magic = record::MAGIC.to_le_bytes();
            let mut q = from.next_multiple_of(ALIGN);
            while q + HEADER_LEN <= data.len() {
                if data.get(q..q + 4) == Some(&magic[..]) {
                    if let Ok((h, _, _)) = record::decode(&data[q..], data.len()) {
                        if h.lsn > last_lsn {
                            return Some((q, h));
                        }
                    }
                }
                q += ALIGN;
            }
            None
        }
    }

    /// Damage done to a journal file's bytes.
    #[derive(Clone, Debug)]
    enum Damage {
        Flip { at: usize, bit: u8 },
        Zero { at: usize, len: usize },
        Truncate { at: usize },
    }

    fn journal() -> impl Strategy<Value = (Vec<u8>, u64)> {
        let records = proptest::collection::vec((0usize..400, 0u64..4, any::<bool>()), 0..24);
        let damage = proptest::collection::vec(
            prop_oneof![
                (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
                (any::<usize>(), 1usize..300).prop_map(|(at, len)| Damage::Zero { at, len }),
                any::<usize>().prop_map(|at| Damage::Truncate { at }),
            ],
            0..3,
        );
        let tail = (0usize..5000, proptest::collection::vec(1u64..9, 0..4));
        (records, damage, tail, 0u64..12).prop_map(|(records, damage, (zeros, stale), last)| {
            let mut b = BytesMut::new();
            let (mut lsn, mut durable) = (10u64, 9u64);
            for (i, (len, lag, big)) in records.into_iter().enumerate() {
                let h = RecordHeader {
                    kind: RecordKind::Entry,
                    lsn,
                    durable_lsn: durable.saturating_sub(lag),
                    segment: 1,
                    entry: i as u64,
                };
                // Some records larger than the smallest read buffers.
                let len = if big { len * 7 } else { len };
                record::encode(&h, &vec![(i % 251) as u8; len], &mut b);
                durable = lsn;
                lsn += 1;
            }
            let mut data = b.to_vec();
            // What a recycled file holds beyond the log, or preallocated zeros.
            for old in stale {
                let h = RecordHeader {
                    kind: RecordKind::Entry,
                    lsn: old,
                    durable_lsn: old - 1,
                    segment: 1,
                    entry: 0,
                };
                let mut r = BytesMut::new();
                record::encode(&h, b"stale", &mut r);
                data.extend_from_slice(&r);
            }
            data.resize(data.len() + zeros, 0);
            for d in damage {
                if data.is_empty() {
                    break;
                }
                match d {
                    Damage::Flip { at, bit } => {
                        let at = at % data.len();
                        data[at] ^= 1 << bit;
                    }
                    Damage::Zero { at, len } => {
                        let at = at % data.len();
                        let end = (at + len).min(data.len());
                        data[at..end].fill(0);
                    }
                    Damage::Truncate { at } => data.truncate(at % data.len()),
                }
            }
            (data, last)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn streaming_scan_applies_exactly_what_a_whole_file_scan_applies(
            (data, last) in journal(),
            chunk in prop_oneof![Just(48usize), Just(64), Just(136), Just(4096), Just(READ_CHUNK)],
        ) {
            let mut expected_last = last;
            let expected = whole_file::scan(&data, &mut expected_last);
            let (got, got_last) = streamed(&data, last, chunk);
            prop_assert_eq!(got, expected);
            prop_assert_eq!(got_last, expected_last);
        }
    }

    #[test]
    fn a_preallocated_zero_tail_is_skipped_without_reading_it() {
        let mut b = BytesMut::new();
        for (i, lsn) in [10, 11, 12].into_iter().enumerate() {
            rec(&mut b, lsn, lsn - 1, i as u64);
        }
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&b, 0).unwrap();
        // 64 MiB never written: a hole (or unwritten extents) on most file systems.
        file.set_len(64 << 20).unwrap();
        let mut reader = JournalReader::with_chunk(file, READ_CHUNK).unwrap();
        let mut last = 9;
        let mut seen = Vec::new();
        scan(0, &mut reader, &mut last, |h, _, _| seen.push(h.lsn)).unwrap();
        assert_eq!(seen, [10, 11, 12]);
        // The buffer never grew beyond its bound...
        assert!(reader.buf.capacity() <= READ_CHUNK);
        // ...and where the file system reports the hole, the tail is not read
        // (a few buffers' worth around the end of the log, not 64 MiB).
        if reader.next_data(1 << 20).is_none() {
            assert!(
                reader.read_bytes <= 4 * READ_CHUNK as u64,
                "read {} bytes",
                reader.read_bytes
            );
        }
    }

    #[test]
    fn a_recycled_files_stale_records_end_the_scan() {
        let mut b = BytesMut::new();
        for (i, lsn) in [10, 11, 12].into_iter().enumerate() {
            rec(&mut b, lsn, lsn - 1, i as u64);
        }
        // What the file held in its previous life: valid records with older lsns.
        for (i, lsn) in [3, 4, 5].into_iter().enumerate() {
            rec(&mut b, lsn, lsn - 1, 3 + i as u64);
        }
        assert_eq!(scanned(&b, 9), vec![10, 11, 12]);
    }

    #[test]
    fn damage_is_skipped_only_when_a_later_record_proves_it_durable() {
        let mut b = BytesMut::new();
        rec(&mut b, 10, 9, 0);
        let damaged_at = b.len();
        rec(&mut b, 11, 10, 1);
        rec(&mut b, 12, 10, 2); // written before 11 was known durable
        let mut torn = b.clone();
        torn[damaged_at + 60] ^= 0xff;
        // Nothing after the damage proves lsn 11 durable: a torn tail.
        assert_eq!(scanned(&torn, 9), vec![10]);

        rec(&mut b, 13, 12, 3); // written after 11 and 12 were fsync'd
        let mut corrupt = b.clone();
        corrupt[damaged_at + 60] ^= 0xff;
        assert_eq!(scanned(&corrupt, 9), vec![10, 12, 13]);
    }
}
