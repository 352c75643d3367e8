//! The offloaded segment format (docs/adr/0013-offloaded-segment-format.md):
//! pure encoders and decoders, no I/O.
//!
//! One object per sealed segment, all integers little-endian:
//!
//! ```text
//! header   48 bytes   magic "KNOFFSEG", version, flags, log id, segment id,
//!                     entry count, CRC32C of the header
//! entries  ...        each entry's stored bytes, back to back, in entry-id order
//! index    16 × n     per entry: offset in the object (u64), length (u32), CRC32C (u32)
//! footer   56 bytes   index offset, entry count, log id, segment id, index CRC32C,
//!                     version, flags, CRC32C of the footer, magic "KNOFFEND"
//! ```
//!
//! The index and footer come last so a segment streams out in one pass; a
//! reader fetches the tail (footer + index) with one suffix range request,
//! then any run of entries with one range request.

use bytes::{BufMut, Bytes, BytesMut};

/// Magic at the start of every offloaded segment object.
pub const HEADER_MAGIC: &[u8; 8] = b"KNOFFSEG";
/// Magic at the very end of every offloaded segment object.
pub const FOOTER_MAGIC: &[u8; 8] = b"KNOFFEND";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
pub const HEADER_LEN: u64 = 48;
pub const INDEX_RECORD_LEN: u64 = 16;
pub const FOOTER_LEN: u64 = 56;
/// The most entries one object may list: bounds the index a reader
/// allocates from a footer it has not yet verified against its index.
pub const MAX_ENTRIES: u64 = 1 << 26;

/// Why bytes are not a valid offloaded segment.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("bad magic (not an offloaded segment)")]
    BadMagic,
    #[error("unsupported format version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u16),
    #[error("{what} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{0}")]
    Malformed(String),
}

/// The segment an object holds, as its header and footer describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub log_id: u64,
    pub segment_id: u64,
    pub entry_count: u64,
}

impl Header {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN as usize);
        b.put_slice(HEADER_MAGIC);
        b.put_u16_le(VERSION);
        b.put_u16_le(0); // flags
        b.put_u32_le(0); // reserved
        b.put_u64_le(self.log_id);
        b.put_u64_le(self.segment_id);
        b.put_u64_le(self.entry_count);
        b.put_u32_le(0); // reserved
        let crc = crc32c::crc32c(&b);
        b.put_u32_le(crc);
        debug_assert_eq!(b.len() as u64, HEADER_LEN);
        b.freeze()
    }

    pub fn decode(b: &[u8]) -> Result<Header, FormatError> {
        let b = b
            .get(..HEADER_LEN as usize)
            .ok_or_else(|| FormatError::Malformed("header shorter than 48 bytes".into()))?;
        if &b[..8] != HEADER_MAGIC {
            return Err(FormatError::BadMagic);
        }
        check_crc("header", &b[..44], u32_at(b, 44))?;
        let version = u16_at(b, 8);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        Ok(Header {
            log_id: u64_at(b, 16),
            segment_id: u64_at(b, 24),
            entry_count: u64_at(b, 32),
        })
    }
}

/// Where one entry is in the object, and its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    pub offset: u64,
    pub length: u32,
    pub crc: u32,
}

impl IndexRecord {
    /// The offset just past the entry.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.length)
    }
}

/// The last 56 bytes of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub index_offset: u64,
    pub entry_count: u64,
    pub log_id: u64,
    pub segment_id: u64,
    pub index_crc: u32,
}

impl Footer {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(FOOTER_LEN as usize);
        b.put_u64_le(self.index_offset);
        b.put_u64_le(self.entry_count);
        b.put_u64_le(self.log_id);
        b.put_u64_le(self.segment_id);
        b.put_u32_le(self.index_crc);
        b.put_u16_le(VERSION);
        b.put_u16_le(0); // flags
        let crc = crc32c::crc32c(&b);
        b.put_u32_le(crc);
        b.put_u32_le(0); // reserved
        b.put_slice(FOOTER_MAGIC);
        debug_assert_eq!(b.len() as u64, FOOTER_LEN);
        b.freeze()
    }

    pub fn decode(b: &[u8]) -> Result<Footer, FormatError> {
        if b.len() as u64 != FOOTER_LEN {
            return Err(FormatError::Malformed(format!(
                "footer of {} bytes (want {FOOTER_LEN})",
                b.len()
            )));
        }
        if &b[48..56] != FOOTER_MAGIC {
            return Err(FormatError::BadMagic);
        }
        check_crc("footer", &b[..40], u32_at(b, 40))?;
        let version = u16_at(b, 36);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        Ok(Footer {
            index_offset: u64_at(b, 0),
            entry_count: u64_at(b, 8),
            log_id: u64_at(b, 16),
            segment_id: u64_at(b, 24),
            index_crc: u32_at(b, 32),
        })
    }

    /// The size of the object this footer ends.
    pub fn object_len(&self) -> Option<u64> {
        self.entry_count
            .checked_mul(INDEX_RECORD_LEN)?
            .checked_add(self.index_offset)?
            .checked_add(FOOTER_LEN)
    }
}

/// A decoded, verified index: where each entry of the segment is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentIndex {
    pub log_id: u64,
    pub segment_id: u64,
    pub records: Vec<IndexRecord>,
    /// Size of the whole object.
    pub object_len: u64,
}

impl SegmentIndex {
    pub fn entry_count(&self) -> u64 {
        self.records.len() as u64
    }

    /// Bytes of entry data (the object less header, index and footer).
    pub fn data_bytes(&self) -> u64 {
        self.records
            .last()
            .map_or(0, |r| r.end().saturating_sub(HEADER_LEN))
    }

    /// Entry `id`'s record.
    pub fn record(&self, id: u64) -> Option<IndexRecord> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.records.get(i))
            .copied()
    }

    /// Memory the index takes (for cache accounting).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.records.len() * std::mem::size_of::<IndexRecord>()
    }
}

/// What an object's tail says: the verified index, or the range still
/// needed before it can be decoded (the index starts before the tail).
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    Index(SegmentIndex),
    /// Fetch `offset..tail_start` of the object, then call
    /// [`decode_tail`] again with it prepended to the tail.
    NeedFrom {
        offset: u64,
    },
}

/// Decodes an object's index from its last `tail.len()` bytes (the object
/// is `object_len` bytes long). Verifies the footer, the index checksum, and
/// that the index describes contiguous entries filling the space between
/// header and index.
pub fn decode_tail(tail: &[u8], object_len: u64) -> Result<Tail, FormatError> {
    let tail_len = tail.len() as u64;
    if tail_len > object_len {
        return Err(FormatError::Malformed(format!(
            "{tail_len} tail bytes of a {object_len}-byte object"
        )));
    }
    if object_len < HEADER_LEN + FOOTER_LEN {
        return Err(FormatError::Malformed(format!(
            "object of {object_len} bytes is shorter than a header and footer"
        )));
    }
    let footer_start = tail
        .len()
        .checked_sub(FOOTER_LEN as usize)
        .ok_or_else(|| FormatError::Malformed("tail shorter than the footer".into()))?;
    let footer = Footer::decode(&tail[footer_start..])?;
    if footer.entry_count > MAX_ENTRIES {
        return Err(FormatError::Malformed(format!(
            "{} entries (more than {MAX_ENTRIES})",
            footer.entry_count
        )));
    }
    if footer.object_len() != Some(object_len) || footer.index_offset < HEADER_LEN {
        return Err(FormatError::Malformed(format!(
            "footer (index at {}, {} entries) does not fit a {object_len}-byte object",
            footer.index_offset, footer.entry_count
        )));
    }
    let tail_start = object_len - tail_len;
    if footer.index_offset < tail_start {
        return Ok(Tail::NeedFrom {
            offset: footer.index_offset,
        });
    }
    let index_from = (footer.index_offset - tail_start) as usize;
    let index = &tail[index_from..footer_start];
    check_crc("index", index, footer.index_crc)?;
    let mut records = Vec::with_capacity(footer.entry_count as usize);
    let mut expected_offset = HEADER_LEN;
    for (i, r) in index.chunks_exact(INDEX_RECORD_LEN as usize).enumerate() {
        let rec = IndexRecord {
            offset: u64_at(r, 0),
            length: u32_at(r, 8),
            crc: u32_at(r, 12),
        };
        if rec.offset != expected_offset {
            return Err(FormatError::Malformed(format!(
                "entry {i} at offset {} (entries are contiguous: expected {expected_offset})",
                rec.offset
            )));
        }
        expected_offset = rec.end();
        records.push(rec);
    }
    if expected_offset != footer.index_offset {
        return Err(FormatError::Malformed(format!(
            "entries end at {expected_offset}, the index starts at {}",
            footer.index_offset
        )));
    }
    Ok(Tail::Index(SegmentIndex {
        log_id: footer.log_id,
        segment_id: footer.segment_id,
        records,
        object_len,
    }))
}

/// Verifies one entry's bytes against its index record.
pub fn verify_entry(record: &IndexRecord, bytes: &[u8]) -> Result<(), FormatError> {
    if bytes.len() as u64 != u64::from(record.length) {
        return Err(FormatError::Malformed(format!(
            "entry of {} bytes, the index says {}",
            bytes.len(),
            record.length
        )));
    }
    check_crc("entry", bytes, record.crc)
}

/// Builds an object's index and footer while its entries stream out.
#[derive(Debug)]
pub struct IndexBuilder {
    header: Header,
    index: BytesMut,
    next_offset: u64,
    entries: u64,
}

impl IndexBuilder {
    pub fn new(header: Header) -> Self {
        IndexBuilder {
            header,
            index: BytesMut::with_capacity(
                usize::try_from(header.entry_count.min(1 << 16)).unwrap_or(0)
                    * INDEX_RECORD_LEN as usize,
            ),
            next_offset: HEADER_LEN,
            entries: 0,
        }
    }

    /// Records the next entry (`bytes` are written right after the previous one).
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FormatError> {
        self.push_record(bytes.len(), crc32c::crc32c(bytes))
    }

    /// [`IndexBuilder::push`] for an entry of `len` bytes whose CRC32C the
    /// caller computed (on another thread).
    pub fn push_record(&mut self, len: usize, crc: u32) -> Result<(), FormatError> {
        let length = u32::try_from(len).map_err(|_| {
            FormatError::Malformed(format!("entry of {len} bytes (more than 4 GiB)"))
        })?;
        self.index.put_u64_le(self.next_offset);
        self.index.put_u32_le(length);
        self.index.put_u32_le(crc);
        self.next_offset += u64::from(length);
        self.entries += 1;
        Ok(())
    }

    /// Bytes of entries pushed so far.
    pub fn data_bytes(&self) -> u64 {
        self.next_offset - HEADER_LEN
    }

    /// The index and footer that end the object.
    pub fn finish(self) -> Result<Bytes, FormatError> {
        if self.entries != self.header.entry_count {
            return Err(FormatError::Malformed(format!(
                "{} entries written, the header announced {}",
                self.entries, self.header.entry_count
            )));
        }
        let footer = Footer {
            index_offset: self.next_offset,
            entry_count: self.entries,
            log_id: self.header.log_id,
            segment_id: self.header.segment_id,
            index_crc: crc32c::crc32c(&self.index),
        };
        let mut out = self.index;
        out.extend_from_slice(&footer.encode());
        Ok(out.freeze())
    }
}

fn check_crc(what: &'static str, bytes: &[u8], stored: u32) -> Result<(), FormatError> {
    let computed = crc32c::crc32c(bytes);
    if computed != stored {
        return Err(FormatError::Checksum {
            what,
            stored,
            computed,
        });
    }
    Ok(())
}

// Callers pass slices whose length they checked: these index within them.
fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(a)
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[i..i + 2]);
    u16::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A whole object of these entries, as the offloader writes it.
    fn object(log_id: u64, segment_id: u64, entries: &[Vec<u8>]) -> Vec<u8> {
        let header = Header {
            log_id,
            segment_id,
            entry_count: entries.len() as u64,
        };
        let mut out = header.encode().to_vec();
        let mut b = IndexBuilder::new(header);
        for e in entries {
            b.push(e).unwrap();
            out.extend_from_slice(e);
        }
        out.extend_from_slice(&b.finish().unwrap());
        out
    }

    fn index_of(obj: &[u8]) -> SegmentIndex {
        match decode_tail(obj, obj.len() as u64).unwrap() {
            Tail::Index(i) => i,
            Tail::NeedFrom { .. } => panic!("whole object given"),
        }
    }

    #[test]
    fn layout_matches_the_adr() {
        let obj = object(7, 9, &[b"ab".to_vec(), Vec::new(), b"cde".to_vec()]);
        assert_eq!(&obj[..8], HEADER_MAGIC);
        assert_eq!(&obj[obj.len() - 8..], FOOTER_MAGIC);
        assert_eq!(
            obj.len() as u64,
            HEADER_LEN + 5 + 3 * INDEX_RECORD_LEN + FOOTER_LEN
        );
        assert_eq!(&obj[48..53], b"abcde");
        let h = Header::decode(&obj).unwrap();
        assert_eq!((h.log_id, h.segment_id, h.entry_count), (7, 9, 3));
        let i = index_of(&obj);
        assert_eq!(
            i.records
                .iter()
                .map(|r| (r.offset, r.length))
                .collect::<Vec<_>>(),
            vec![(48, 2), (50, 0), (50, 3)]
        );
        assert_eq!(i.records[0].crc, crc32c::crc32c(b"ab"));
        assert_eq!(i.data_bytes(), 5);
    }

    #[test]
    fn a_short_tail_asks_for_the_start_of_the_index() {
        let entries: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 10]).collect();
        let obj = object(1, 2, &entries);
        let len = obj.len() as u64;
        let tail = &obj[obj.len() - 100..];
        let Tail::NeedFrom { offset } = decode_tail(tail, len).unwrap() else {
            panic!("100 tail bytes cannot hold 100 index records");
        };
        assert_eq!(offset, HEADER_LEN + 1000);
        let mut joined = obj[offset as usize..obj.len() - 100].to_vec();
        joined.extend_from_slice(tail);
        assert!(
            matches!(decode_tail(&joined, len).unwrap(), Tail::Index(i) if i.records.len() == 100)
        );
    }

    #[test]
    fn a_flipped_byte_in_the_tail_is_a_checksum_error() {
        let obj = object(1, 2, &[b"hello".to_vec(), b"world".to_vec()]);
        for at in HEADER_LEN as usize + 10..obj.len() - 16 {
            let mut bad = obj.clone();
            bad[at] ^= 0x40;
            assert!(
                decode_tail(&bad, bad.len() as u64).is_err(),
                "flip at {at} not noticed"
            );
        }
        let i = index_of(&obj);
        assert!(verify_entry(&i.records[0], b"hellp").is_err());
        assert!(verify_entry(&i.records[0], b"hello").is_ok());
    }

    #[test]
    fn other_versions_are_refused_by_name() {
        let mut h = Header {
            log_id: 1,
            segment_id: 2,
            entry_count: 0,
        }
        .encode()
        .to_vec();
        h[8] = 2;
        let crc = crc32c::crc32c(&h[..44]);
        h[44..48].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Header::decode(&h), Err(FormatError::UnsupportedVersion(2)));
    }

    #[test]
    fn finish_refuses_a_count_other_than_announced() {
        let b = IndexBuilder::new(Header {
            log_id: 1,
            segment_id: 1,
            entry_count: 2,
        });
        assert!(b.finish().is_err());
    }

    proptest! {
        #[test]
        fn objects_round_trip(log in any::<u64>(), seg in any::<u64>(),
                              entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..40)) {
            let obj = object(log, seg, &entries);
            let i = index_of(&obj);
            prop_assert_eq!((i.log_id, i.segment_id), (log, seg));
            prop_assert_eq!(i.records.len(), entries.len());
            for (r, e) in i.records.iter().zip(&entries) {
                let got = &obj[r.offset as usize..r.end() as usize];
                prop_assert_eq!(got, &e[..]);
                prop_assert!(verify_entry(r, got).is_ok());
            }
        }

        #[test]
        fn random_tails_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300), extra in 0u64..1000) {
            let _ = decode_tail(&tail, tail.len() as u64 + extra);
            let _ = Header::decode(&tail);
        }

        #[test]
        fn forged_footers_never_panic(index_offset in any::<u64>(), count in any::<u64>(), len in 0u64..10_000) {
            let f = Footer { index_offset, entry_count: count, log_id: 0, segment_id: 0, index_crc: 0 }.encode();
            let _ = decode_tail(&f, len.max(FOOTER_LEN));
        }
    }
}
