//! The write-ahead object's layout: entries of many logs in one object,
//! written once, read whole or by range, every entry checked.
//!
//! All integers little-endian; CRC32C as everywhere in Kilonova.
//!
//! | part | size | field |
//! |---|---|---|
//! | header | 8 | magic `KNWALOBJ` |
//! | | 2 | format version (1) |
//! | | 2 | flags (0) |
//! | | 4 | entry count *n* |
//! | | 8 | the writer's sequence number of this object |
//! | | 4 | reserved (0) |
//! | | 4 | CRC32C of header bytes 0..28 |
//! | entries | Σ lengths | back to back, in the order they were appended |
//! | index | 24 × *n* | per entry: log id (u64), offset in the object (u64), length (u32), CRC32C of its bytes (u32) |
//! | footer | 8 | index offset |
//! | | 4 | entry count *n* |
//! | | 4 | CRC32C of the index |
//! | | 8 | sequence number (as in the header) |
//! | | 8 | magic `KNWALEND` |

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Header bytes.
pub const WAL_HEADER_LEN: usize = 32;
/// Bytes of one index record.
pub const WAL_INDEX_RECORD_LEN: usize = 24;
/// Footer bytes.
pub const WAL_FOOTER_LEN: usize = 32;
const MAGIC: &[u8; 8] = b"KNWALOBJ";
const END_MAGIC: &[u8; 8] = b"KNWALEND";
const VERSION: u16 = 1;
/// The most entries one object may hold (a reader's bound).
pub const MAX_WAL_ENTRIES: usize = 1 << 24;

/// One entry of a write-ahead object, as its index describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRecord {
    pub log: u64,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

/// Why bytes are not a write-ahead object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid write-ahead object: {0}")]
pub struct WalFormatError(pub String);

fn bad(why: impl Into<String>) -> WalFormatError {
    WalFormatError(why.into())
}

/// Builds a write-ahead object from `(log, bytes)` entries in order.
pub fn encode_wal(sequence: u64, entries: &[(u64, Bytes)]) -> Result<Vec<Bytes>, WalFormatError> {
    if entries.len() > MAX_WAL_ENTRIES {
        return Err(bad(format!(
            "{} entries, at most {MAX_WAL_ENTRIES}",
            entries.len()
        )));
    }
    let n = entries.len() as u32;
    let mut header = BytesMut::with_capacity(WAL_HEADER_LEN);
    header.put_slice(MAGIC);
    header.put_u16_le(VERSION);
    header.put_u16_le(0);
    header.put_u32_le(n);
    header.put_u64_le(sequence);
    header.put_u32_le(0);
    let crc = crc32c::crc32c(&header);
    header.put_u32_le(crc);
    let mut index = BytesMut::with_capacity(entries.len() * WAL_INDEX_RECORD_LEN);
    let mut offset = WAL_HEADER_LEN as u64;
    let mut parts = Vec::with_capacity(entries.len() + 2);
    parts.push(header.freeze());
    for (log, data) in entries {
        let len = u32::try_from(data.len()).map_err(|_| bad("an entry over 4 GiB"))?;
        index.put_u64_le(*log);
        index.put_u64_le(offset);
        index.put_u32_le(len);
        index.put_u32_le(crc32c::crc32c(data));
        offset += u64::from(len);
        parts.push(data.clone());
    }
    let index_crc = crc32c::crc32c(&index);
    let mut tail = index;
    tail.put_u64_le(offset);
    tail.put_u32_le(n);
    tail.put_u32_le(index_crc);
    tail.put_u64_le(sequence);
    tail.put_slice(END_MAGIC);
    parts.push(tail.freeze());
    Ok(parts)
}

/// A decoded write-ahead object: its sequence number and its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalIndex {
    pub sequence: u64,
    pub records: Vec<WalRecord>,
}

/// What a write-ahead object's footer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalFooter {
    pub index_offset: u64,
    pub entries: usize,
    pub index_crc: u32,
    pub sequence: u64,
}

impl WalFooter {
    /// Where the index is in the object.
    pub fn index_range(&self) -> std::ops::Range<u64> {
        self.index_offset..self.index_offset + (self.entries * WAL_INDEX_RECORD_LEN) as u64
    }
}

/// Reads and checks the footer (the object's last [`WAL_FOOTER_LEN`] bytes)
/// of an object of `object_len` bytes.
pub fn decode_wal_footer(footer: &[u8], object_len: u64) -> Result<WalFooter, WalFormatError> {
    if footer.len() != WAL_FOOTER_LEN || object_len < (WAL_HEADER_LEN + WAL_FOOTER_LEN) as u64 {
        return Err(bad("too short for a header and a footer"));
    }
    let mut f = footer;
    let index_offset = f.get_u64_le();
    let (entries, index_crc, sequence) = (f.get_u32_le() as usize, f.get_u32_le(), f.get_u64_le());
    if f != END_MAGIC {
        return Err(bad("no footer magic"));
    }
    if entries > MAX_WAL_ENTRIES {
        return Err(bad(format!("{entries} entries")));
    }
    let end = index_offset
        .checked_add((entries * WAL_INDEX_RECORD_LEN) as u64)
        .and_then(|e| e.checked_add(WAL_FOOTER_LEN as u64));
    if end != Some(object_len) || index_offset < WAL_HEADER_LEN as u64 {
        return Err(bad("the index does not end where the footer starts"));
    }
    Ok(WalFooter {
        index_offset,
        entries,
        index_crc,
        sequence,
    })
}

/// Reads and checks the index `footer` describes.
pub fn decode_wal_records(
    index: &[u8],
    footer: &WalFooter,
) -> Result<Vec<WalRecord>, WalFormatError> {
    if index.len() != footer.entries * WAL_INDEX_RECORD_LEN {
        return Err(bad("index length"));
    }
    if crc32c::crc32c(index) != footer.index_crc {
        return Err(bad("index checksum"));
    }
    let mut records = Vec::with_capacity(footer.entries);
    let mut next = WAL_HEADER_LEN as u64;
    let mut i = index;
    for _ in 0..footer.entries {
        let r = WalRecord {
            log: i.get_u64_le(),
            offset: i.get_u64_le(),
            len: i.get_u32_le(),
            crc: i.get_u32_le(),
        };
        if r.offset != next {
            return Err(bad("entries are not back to back"));
        }
        next += u64::from(r.len);
        records.push(r);
    }
    if next != footer.index_offset {
        return Err(bad("the entries do not end where the index starts"));
    }
    Ok(records)
}

/// Reads and checks a whole object's header, footer and index (not the
/// entries' checksums: [`entry`] checks each one it returns).
pub fn decode_wal_index(object: &[u8]) -> Result<WalIndex, WalFormatError> {
    let len = object.len();
    if len < WAL_HEADER_LEN + WAL_FOOTER_LEN {
        return Err(bad(format!(
            "{len} bytes is shorter than a header and a footer"
        )));
    }
    let mut h = &object[..WAL_HEADER_LEN];
    if &h[..8] != MAGIC {
        return Err(bad("no header magic"));
    }
    if crc32c::crc32c(&object[..28])
        != u32::from_le_bytes([object[28], object[29], object[30], object[31]])
    {
        return Err(bad("header checksum"));
    }
    h.advance(8);
    let version = h.get_u16_le();
    if version != VERSION {
        return Err(bad(format!("format version {version}")));
    }
    let _flags = h.get_u16_le();
    let n = h.get_u32_le() as usize;
    let sequence = h.get_u64_le();
    let footer = decode_wal_footer(&object[len - WAL_FOOTER_LEN..], len as u64)?;
    if footer.entries != n || footer.sequence != sequence {
        return Err(bad("header and footer disagree"));
    }
    let r = footer.index_range();
    let records = decode_wal_records(&object[r.start as usize..r.end as usize], &footer)?;
    Ok(WalIndex { sequence, records })
}

/// Entry `record`'s bytes from the whole `object`, checked against its CRC.
pub fn entry(object: &Bytes, record: &WalRecord) -> Result<Bytes, WalFormatError> {
    let start = usize::try_from(record.offset).map_err(|_| bad("offset"))?;
    let end = start
        .checked_add(record.len as usize)
        .filter(|e| *e <= object.len())
        .ok_or_else(|| bad("an entry past the object's end"))?;
    let bytes = object.slice(start..end);
    if crc32c::crc32c(&bytes) != record.crc {
        return Err(bad(format!("entry at {start}: checksum")));
    }
    Ok(bytes)
}

/// Every entry of a whole object, checked: `(log, bytes)` in append order.
pub fn decode_wal(object: &Bytes) -> Result<(u64, Vec<(u64, Bytes)>), WalFormatError> {
    let index = decode_wal_index(object)?;
    let entries = index
        .records
        .iter()
        .map(|r| entry(object, r).map(|b| (r.log, b)))
        .collect::<Result<_, _>>()?;
    Ok((index.sequence, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn join(parts: Vec<Bytes>) -> Bytes {
        let mut out = BytesMut::new();
        for p in parts {
            out.put_slice(&p);
        }
        out.freeze()
    }

    #[test]
    fn an_object_reads_back_as_written_and_empty_entries_take_no_bytes() {
        let entries = vec![
            (7, Bytes::from_static(b"first")),
            (3, Bytes::new()),
            (7, Bytes::from_static(b"second")),
        ];
        let object = join(encode_wal(42, &entries).unwrap());
        assert_eq!(
            object.len(),
            WAL_HEADER_LEN + 11 + 3 * WAL_INDEX_RECORD_LEN + WAL_FOOTER_LEN
        );
        assert_eq!(decode_wal(&object).unwrap(), (42, entries));
        let empty = join(encode_wal(1, &[]).unwrap());
        assert_eq!(decode_wal(&empty).unwrap(), (1, vec![]));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let entries = vec![
            (1, Bytes::from_static(b"abc")),
            (2, Bytes::from_static(b"defgh")),
        ];
        let object = join(encode_wal(9, &entries).unwrap());
        for i in 0..object.len() {
            let mut bad = object.to_vec();
            bad[i] ^= 0x40;
            assert!(
                decode_wal(&Bytes::from(bad)).is_err(),
                "byte {i} flipped went unnoticed"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_wal(&Bytes::from(bytes));
        }

        #[test]
        fn any_entries_round_trip(
            seq in any::<u64>(),
            entries in proptest::collection::vec((any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..32),
        ) {
            let entries: Vec<(u64, Bytes)> = entries.into_iter().map(|(l, d)| (l, Bytes::from(d))).collect();
            let object = join(encode_wal(seq, &entries).unwrap());
            prop_assert_eq!(decode_wal(&object).unwrap(), (seq, entries));
        }

        #[test]
        fn arbitrary_footers_and_indexes_never_panic(
            footer in proptest::collection::vec(any::<u8>(), WAL_FOOTER_LEN),
            len in any::<u64>(),
            index in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            if let Ok(f) = decode_wal_footer(&footer, len) {
                let _ = decode_wal_records(&index, &f);
            }
        }

        #[test]
        fn a_truncated_object_is_refused(cut in 1usize..64) {
            let object = join(encode_wal(5, &[(1, Bytes::from_static(b"payload"))]).unwrap());
            let short = object.slice(..object.len().saturating_sub(cut));
            prop_assert!(decode_wal(&short).is_err());
        }
    }
}
