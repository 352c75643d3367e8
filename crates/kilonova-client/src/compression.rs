//! Payload compression, as Pulsar clients do it: the producer compresses an
//! entry's payload (a single message, or a whole batch) and writes the codec
//! and the uncompressed size into the message metadata; the consumer undoes it
//! before splitting a batch.
//!
//! The formats are the ones the Java and C++ clients write, so their messages
//! read here and ours there: LZ4 as a raw block (no frame), ZLIB as a zlib
//! stream, ZSTD as a zstd frame, SNAPPY as raw snappy (no framing).

use std::io::{Read, Write};

use kilonova_pulsar_protocol::proto::CompressionType;

use crate::ClientError;

/// The zstd level the Java client uses by default.
const ZSTD_LEVEL: i32 = 3;

/// A payload codec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zlib,
    Zstd,
    Snappy,
}

impl std::str::FromStr for Compression {
    type Err = String;

    /// `none`, `lz4`, `zlib`, `zstd`, `snappy` (any case), as pulsar-perf's `-z`.
    fn from_str(s: &str) -> Result<Compression, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "none" => Compression::None,
            "lz4" => Compression::Lz4,
            "zlib" => Compression::Zlib,
            "zstd" => Compression::Zstd,
            "snappy" => Compression::Snappy,
            other => {
                return Err(format!(
                    "unknown compression '{other}': expected none, lz4, zlib, zstd or snappy"
                ))
            }
        })
    }
}

impl Compression {
    pub(crate) fn wire(self) -> CompressionType {
        match self {
            Compression::None => CompressionType::None,
            Compression::Lz4 => CompressionType::Lz4,
            Compression::Zlib => CompressionType::Zlib,
            Compression::Zstd => CompressionType::Zstd,
            Compression::Snappy => CompressionType::Snappy,
        }
    }

    /// Compresses `data`. Compression of bytes in memory cannot fail; an
    /// error from a codec is reported as a protocol error all the same.
    pub(crate) fn compress(self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        let failed = |e: &dyn std::fmt::Display| ClientError::Protocol(format!("{self:?}: {e}"));
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Lz4 => Ok(lz4_flex::block::compress(data)),
            Compression::Zlib => {
                let mut w = flate2::write::ZlibEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::default(),
                );
                w.write_all(data).map_err(|e| failed(&e))?;
                w.finish().map_err(|e| failed(&e))
            }
            Compression::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|e| failed(&e)),
            Compression::Snappy => snap::raw::Encoder::new()
                .compress_vec(data)
                .map_err(|e| failed(&e)),
        }
    }
}

/// Undoes the producer's compression of an entry's payload: `uncompressed_size`
/// is the metadata's word for the result, checked against `max_bytes` before
/// anything is allocated, and the result must have exactly that size.
pub(crate) fn decompress(
    kind: CompressionType,
    data: &[u8],
    uncompressed_size: u32,
    max_bytes: usize,
) -> Result<Vec<u8>, ClientError> {
    let size = uncompressed_size as usize;
    if size > max_bytes {
        return Err(ClientError::Protocol(format!(
            "uncompressed size {size} is over the limit of {max_bytes} bytes"
        )));
    }
    let failed = |e: &dyn std::fmt::Display| {
        ClientError::Protocol(format!("cannot decompress a {kind:?} payload: {e}"))
    };
    let out = match kind {
        CompressionType::None => data.to_vec(),
        CompressionType::Lz4 => lz4_flex::block::decompress(data, size).map_err(|e| failed(&e))?,
        CompressionType::Zlib => {
            let mut out = Vec::with_capacity(size);
            // One byte more than announced is enough to see a lie.
            flate2::read::ZlibDecoder::new(data)
                .take(size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| failed(&e))?;
            out
        }
        CompressionType::Zstd => zstd::bulk::decompress(data, size).map_err(|e| failed(&e))?,
        CompressionType::Snappy => {
            let announced = snap::raw::decompress_len(data).map_err(|e| failed(&e))?;
            if announced != size {
                return Err(failed(&format!(
                    "snappy says {announced} bytes, the metadata {size}"
                )));
            }
            snap::raw::Decoder::new()
                .decompress_vec(data)
                .map_err(|e| failed(&e))?
        }
    };
    if out.len() != size {
        return Err(failed(&format!(
            "{} bytes, the metadata says {size}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Lz4,
        Compression::Zlib,
        Compression::Zstd,
        Compression::Snappy,
    ];

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
        for c in ALL {
            let packed = c.compress(&data).unwrap();
            if c != Compression::None {
                assert!(packed.len() < data.len() / 4, "{c:?} compresses");
            }
            let back = decompress(c.wire(), &packed, data.len() as u32, 1 << 20).unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }

    #[test]
    fn a_wrong_uncompressed_size_is_an_error_not_a_panic() {
        let data = vec![7u8; 4096];
        for c in ALL {
            let packed = c.compress(&data).unwrap();
            for size in [0, 100, 4095, 4097] {
                assert!(
                    decompress(c.wire(), &packed, size, 1 << 20).is_err(),
                    "{c:?} with size {size}"
                );
            }
            assert!(
                decompress(c.wire(), &packed, 4096, 1000).is_err(),
                "{c:?} over the limit"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let garbage: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
        for c in ALL.into_iter().skip(1) {
            let _ = decompress(c.wire(), &garbage, 1000, 1 << 20);
        }
    }

    #[test]
    fn names_parse_as_pulsar_perf_writes_them() {
        assert_eq!("LZ4".parse::<Compression>(), Ok(Compression::Lz4));
        assert_eq!("zstd".parse::<Compression>(), Ok(Compression::Zstd));
        assert!("brotli".parse::<Compression>().is_err());
    }
}
