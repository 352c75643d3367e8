//! Payload compression, as Pulsar clients do it: a producer compresses an
//! entry's payload (a single message, or a whole batch) and writes the codec
//! and the uncompressed size into the message metadata; a consumer undoes it
//! before splitting a batch, and the broker's compactor undoes and redoes it
//! to rewrite a batch.
//!
//! The formats are the ones the Java and C++ clients write, so their messages
//! read here and ours there: LZ4 as a raw block (no frame), ZLIB as a zlib
//! stream, ZSTD as a zstd frame, SNAPPY as raw snappy (no framing).
//!
//! Decompression is bounded: the metadata's `uncompressed_size` is the
//! sender's claim, checked against the caller's cap before anything is
//! allocated, and the result must have exactly that size.

use std::io::{Read, Write};

use crate::proto::CompressionType;

/// The zstd level the Java client uses by default.
const ZSTD_LEVEL: i32 = 3;

/// Why a payload could not be compressed or decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    #[error("uncompressed size {size} is over the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("cannot decompress a {codec:?} payload: {reason}")]
    Decompress {
        codec: CompressionType,
        reason: String,
    },
    #[error("cannot compress with {codec:?}: {reason}")]
    Compress {
        codec: CompressionType,
        reason: String,
    },
}

/// Compresses `data` with `codec` (`None` copies it). Compression of bytes in
/// memory does not fail in practice; a codec's error is reported all the same.
pub fn compress(codec: CompressionType, data: &[u8]) -> Result<Vec<u8>, CompressionError> {
    let failed = |e: &dyn std::fmt::Display| CompressionError::Compress {
        codec,
        reason: e.to_string(),
    };
    match codec {
        CompressionType::None => Ok(data.to_vec()),
        CompressionType::Lz4 => Ok(lz4_flex::block::compress(data)),
        CompressionType::Zlib => {
            let mut w = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(data.len() / 2),
                flate2::Compression::default(),
            );
            w.write_all(data).map_err(|e| failed(&e))?;
            w.finish().map_err(|e| failed(&e))
        }
        CompressionType::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|e| failed(&e)),
        CompressionType::Snappy => snap::raw::Encoder::new()
            .compress_vec(data)
            .map_err(|e| failed(&e)),
    }
}

/// Undoes `codec`'s compression of a payload: `uncompressed_size` is the
/// metadata's word for the result, checked against `max_bytes` before
/// anything is allocated, and the result must have exactly that size.
pub fn decompress(
    codec: CompressionType,
    data: &[u8],
    uncompressed_size: u32,
    max_bytes: usize,
) -> Result<Vec<u8>, CompressionError> {
    let size = uncompressed_size as usize;
    if size > max_bytes {
        return Err(CompressionError::TooLarge {
            size,
            max: max_bytes,
        });
    }
    let failed = |e: &dyn std::fmt::Display| CompressionError::Decompress {
        codec,
        reason: e.to_string(),
    };
    let out = match codec {
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ALL: [CompressionType; 5] = [
        CompressionType::None,
        CompressionType::Lz4,
        CompressionType::Zlib,
        CompressionType::Zstd,
        CompressionType::Snappy,
    ];

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
        for c in ALL {
            let packed = compress(c, &data).unwrap();
            if c != CompressionType::None {
                assert!(packed.len() < data.len() / 4, "{c:?} compresses");
            }
            let back = decompress(c, &packed, data.len() as u32, 1 << 20).unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }

    #[test]
    fn an_empty_payload_round_trips() {
        for c in ALL {
            let packed = compress(c, &[]).unwrap();
            assert_eq!(decompress(c, &packed, 0, 1 << 20).unwrap(), b"", "{c:?}");
        }
    }

    #[test]
    fn a_wrong_uncompressed_size_is_an_error_not_a_panic() {
        let data = vec![7u8; 4096];
        for c in ALL {
            let packed = compress(c, &data).unwrap();
            for size in [0, 100, 4095, 4097] {
                assert!(
                    decompress(c, &packed, size, 1 << 20).is_err(),
                    "{c:?} with size {size}"
                );
            }
        }
    }

    #[test]
    fn an_absurd_uncompressed_size_is_refused_before_allocating() {
        let packed = compress(CompressionType::Lz4, b"tiny").unwrap();
        for c in ALL {
            // 4 GiB claimed: refused on the claim alone, whatever the bytes.
            assert_eq!(
                decompress(c, &packed, u32::MAX, 1 << 20),
                Err(CompressionError::TooLarge {
                    size: u32::MAX as usize,
                    max: 1 << 20
                }),
                "{c:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let garbage: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
        for c in ALL.into_iter().skip(1) {
            let _ = decompress(c, &garbage, 1000, 1 << 20);
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(data: Vec<u8>, size in 0u32..70_000, codec in 1usize..5) {
            let _ = decompress(ALL[codec], &data, size, 1 << 16);
        }
    }
}
