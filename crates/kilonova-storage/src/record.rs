//! The journal's on-disk record: one entry (or one segment lifecycle event).
//!
//! Layout, little-endian, every record padded to a multiple of 8 bytes:
//!
//! ```text
//! 0  magic        u32  "KNLG"
//! 4  len          u32  header + payload, before padding
//! 8  crc          u32  CRC32C of bytes [4..8) and [12..len)
//! 12 kind         u8   + 3 reserved bytes (zero)
//! 16 lsn          u64  journal sequence number, strictly increasing
//! 24 durable_lsn  u64  highest lsn known fsync'd when this record was written
//! 32 segment      u64
//! 40 entry        u64  entry id (Entry/Moved), entry count (Seal), 0 otherwise
//! 48 payload
//! ```
//!
//! `durable_lsn` is what lets recovery tell a torn tail from mid-file corruption:
//! a damaged record followed by a valid record whose `durable_lsn` covers it was
//! once durable, so it is corruption; otherwise it belonged to a write that was
//! never acknowledged and is a torn tail (ADR 0001).

use bytes::{BufMut, Bytes};

pub const MAGIC: u32 = u32::from_le_bytes(*b"KNLG");
pub const HEADER_LEN: usize = 48;
pub const ALIGN: usize = 8;

/// What a record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// An appended entry.
    Entry = 1,
    /// An existing entry copied to a newer file by compaction.
    Moved = 2,
    /// A segment was created.
    Create = 3,
    /// A segment was sealed; `entry` holds its entry count.
    Seal = 4,
    /// A segment was deleted.
    Delete = 5,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => RecordKind::Entry,
            2 => RecordKind::Moved,
            3 => RecordKind::Create,
            4 => RecordKind::Seal,
            5 => RecordKind::Delete,
            _ => return None,
        })
    }
}

/// A record's fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub lsn: u64,
    pub durable_lsn: u64,
    pub segment: u64,
    pub entry: u64,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no record here (zero or foreign bytes)")]
    NoMagic,
    #[error("record is truncated: needs {needed} bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("record length {0} is invalid")]
    BadLength(u32),
    #[error("record checksum mismatch")]
    BadChecksum,
    #[error("unknown record kind {0}")]
    BadKind(u8),
}

/// Total on-disk size of a record with `payload_len` payload bytes, padding included.
pub fn encoded_len(payload_len: usize) -> usize {
    (HEADER_LEN + payload_len).div_ceil(ALIGN) * ALIGN
}

/// Appends one record to `dst`.
pub fn encode<B: BufMut + AsMut<[u8]>>(header: &RecordHeader, payload: &[u8], dst: &mut B) {
    encode_parts(header, &[], payload, dst)
}

/// Appends one record whose payload is `prefix` followed by `payload` to
/// `dst` (a `BytesMut`, or the journal's group buffer).
pub fn encode_parts<B: BufMut + AsMut<[u8]>>(
    header: &RecordHeader,
    prefix: &[u8],
    payload: &[u8],
    dst: &mut B,
) {
    let len = HEADER_LEN + prefix.len() + payload.len();
    let total = encoded_len(prefix.len() + payload.len());
    let start = dst.as_mut().len();
    dst.put_u32_le(MAGIC);
    dst.put_u32_le(len as u32);
    dst.put_u32_le(0); // crc, patched below
    dst.put_u8(header.kind as u8);
    dst.put_bytes(0, 3);
    dst.put_u64_le(header.lsn);
    dst.put_u64_le(header.durable_lsn);
    dst.put_u64_le(header.segment);
    dst.put_u64_le(header.entry);
    dst.put_slice(prefix);
    dst.put_slice(payload);
    dst.put_bytes(0, total - len);
    let rec = &mut dst.as_mut()[start..start + len];
    let crc = checksum(rec);
    rec[8..12].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(rec: &[u8]) -> u32 {
    let crc = crc32c::crc32c(rec.get(4..8).unwrap_or_default());
    crc32c::crc32c_append(crc, rec.get(12..).unwrap_or_default())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Reads the length prefix of a record at the start of `buf` without verifying it:
/// the number of bytes the whole record (with padding) occupies.
pub fn peek_len(buf: &[u8], max_record: usize) -> Result<usize, RecordError> {
    if buf.len() < 8 {
        return Err(RecordError::Truncated {
            needed: 8,
            available: buf.len(),
        });
    }
    if u32_at(buf, 0) != MAGIC {
        return Err(RecordError::NoMagic);
    }
    let len = u32_at(buf, 4);
    if (len as usize) < HEADER_LEN || len as usize > max_record {
        return Err(RecordError::BadLength(len));
    }
    Ok(encoded_len(len as usize - HEADER_LEN))
}

/// A verified record: its header, the payload's range within the record and
/// the padded record size.
pub type Decoded = (RecordHeader, std::ops::Range<usize>, usize);

/// Decodes and verifies the record at the start of `buf`.
/// Returns the header, the payload range within `buf` and the padded record size.
pub fn decode(buf: &[u8], max_record: usize) -> Result<Decoded, RecordError> {
    let head = buf.get(..HEADER_LEN.min(buf.len())).unwrap_or_default();
    let extend = |from: usize, to: usize, crc: u32| {
        Ok::<_, std::convert::Infallible>(crc32c::crc32c_append(
            crc,
            buf.get(from..to).unwrap_or_default(),
        ))
    };
    match decode_streamed(head, buf.len(), max_record, extend) {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// [`decode`] for a record read in pieces, so a reader needs no buffer as large
/// as the record. `head` holds the record's first bytes (`HEADER_LEN` of them,
/// or all that `available` — the bytes from the record's start to the end of
/// what holds it — allows); `extend_crc(from, to, crc)` must extend the CRC32C
/// `crc` over the record's bytes `[from, to)`, which the caller reads. Same
/// checks, same errors as [`decode`]; the outer error is the reader's.
pub fn decode_streamed<E>(
    head: &[u8],
    available: usize,
    max_record: usize,
    extend_crc: impl FnOnce(usize, usize, u32) -> Result<u32, E>,
) -> Result<Result<Decoded, RecordError>, E> {
    let total = match peek_len(head, max_record) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e)),
    };
    let len = u32_at(head, 4) as usize;
    if available < len {
        return Ok(Err(RecordError::Truncated {
            needed: len,
            available,
        }));
    }
    // `len` is at least HEADER_LEN (peek_len) and available: `head` is whole.
    let crc = crc32c::crc32c(head.get(4..8).unwrap_or_default());
    let crc = extend_crc(12, len, crc)?;
    if crc != u32_at(head, 8) {
        return Ok(Err(RecordError::BadChecksum));
    }
    let kind_byte = head.get(12).copied().unwrap_or_default();
    let Some(kind) = RecordKind::from_u8(kind_byte) else {
        return Ok(Err(RecordError::BadKind(kind_byte)));
    };
    let header = RecordHeader {
        kind,
        lsn: u64_at(head, 16),
        durable_lsn: u64_at(head, 24),
        segment: u64_at(head, 32),
        entry: u64_at(head, 40),
    };
    Ok(Ok((header, HEADER_LEN..len, total)))
}

/// Decodes a record held in a `Bytes`, returning the payload without copying.
pub fn decode_bytes(buf: &Bytes, max_record: usize) -> Result<(RecordHeader, Bytes), RecordError> {
    let (header, range, _) = decode(buf, max_record)?;
    Ok((header, buf.slice(range)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn header(kind: RecordKind) -> RecordHeader {
        RecordHeader {
            kind,
            lsn: 7,
            durable_lsn: 6,
            segment: 3,
            entry: 9,
        }
    }

    #[test]
    fn records_are_padded_to_eight_bytes() {
        let mut b = BytesMut::new();
        encode(&header(RecordKind::Entry), b"abc", &mut b);
        assert_eq!(b.len(), 56);
        assert_eq!(encoded_len(3), 56);
        assert_eq!(encoded_len(0), 48);
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_record_is_detected() {
        let mut b = BytesMut::new();
        encode(&header(RecordKind::Entry), b"hello world", &mut b);
        let len = HEADER_LEN + 11;
        for i in 0..len {
            for bit in 0..8 {
                let mut c = b.to_vec();
                c[i] ^= 1 << bit;
                assert!(decode(&c, 1 << 20).is_err(), "flip at byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn zeroed_bytes_are_not_a_record() {
        assert_eq!(decode(&[0u8; 64], 1 << 20), Err(RecordError::NoMagic));
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(
            kind in prop_oneof![Just(RecordKind::Entry), Just(RecordKind::Moved), Just(RecordKind::Create), Just(RecordKind::Seal), Just(RecordKind::Delete)],
            lsn: u64, durable_lsn: u64, segment: u64, entry: u64,
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let h = RecordHeader { kind, lsn, durable_lsn, segment, entry };
            let mut b = BytesMut::new();
            encode(&h, &payload, &mut b);
            prop_assert_eq!(b.len() % ALIGN, 0);
            let (got, range, total) = decode(&b, 1 << 20).unwrap();
            prop_assert_eq!(got, h);
            prop_assert_eq!(&b[range], &payload[..]);
            prop_assert_eq!(total, b.len());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, 1 << 20);
            let _ = peek_len(&bytes, 1 << 20);
        }

        #[test]
        fn random_bytes_behind_a_valid_magic_never_panic(len: u32, rest in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = MAGIC.to_le_bytes().to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&rest);
            let _ = decode(&b, 1 << 20);
        }
    }
}
