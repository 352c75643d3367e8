//! Kafka's compression codecs, decompression bounded: gzip, snappy (raw, or
//! in the xerial framing the Java client writes), LZ4 (the frame format) and
//! zstd. A batch that would decompress to more than the caller's limit is
//! refused as soon as the limit is passed, never allocated in full.

use std::io::Read;

use kafka_protocol::records::Compression;

/// Why a compressed batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("a {codec:?} batch decompresses to more than {max} bytes")]
    TooLarge { codec: Compression, max: usize },
    #[error("cannot decompress a {codec:?} batch: {reason}")]
    Corrupt { codec: Compression, reason: String },
}

/// The xerial snappy framing's magic (Java's `SnappyOutputStream`).
const XERIAL_MAGIC: &[u8] = &[0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];

/// Decompresses `data`, at most `max` bytes out.
pub fn decompress(codec: Compression, data: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    let corrupt = |e: &dyn std::fmt::Display| CodecError::Corrupt {
        codec,
        reason: e.to_string(),
    };
    let bounded = |r: &mut dyn Read| -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        r.take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| corrupt(&e))?;
        if out.len() > max {
            return Err(CodecError::TooLarge { codec, max });
        }
        Ok(out)
    };
    match codec {
        Compression::None => {
            if data.len() > max {
                return Err(CodecError::TooLarge { codec, max });
            }
            Ok(data.to_vec())
        }
        Compression::Gzip => bounded(&mut flate2::read::GzDecoder::new(data)),
        Compression::Lz4 => bounded(&mut lz4_flex::frame::FrameDecoder::new(data)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(data).map_err(|e| corrupt(&e))?;
            bounded(&mut d)
        }
        Compression::Snappy => snappy(data, max),
    }
}

fn snappy(data: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    let codec = Compression::Snappy;
    let corrupt = |e: &dyn std::fmt::Display| CodecError::Corrupt {
        codec,
        reason: e.to_string(),
    };
    let raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), CodecError> {
        let len = snap::raw::decompress_len(block).map_err(|e| corrupt(&e))?;
        if out.len() + len > max {
            return Err(CodecError::TooLarge { codec, max });
        }
        let at = out.len();
        out.resize(at + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[at..])
            .map_err(|e| corrupt(&e))?;
        Ok(())
    };
    let mut out = Vec::new();
    if !data.starts_with(XERIAL_MAGIC) {
        raw(data, &mut out)?;
        return Ok(out);
    }
    // Magic, version and compatible version (4 bytes each), then blocks of
    // `[u32 size][raw snappy]`.
    let mut rest = data.get(XERIAL_MAGIC.len() + 8..).unwrap_or_default();
    while !rest.is_empty() {
        let (size, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt(&"truncated xerial block size"))?;
        let size = u32::from_be_bytes(*size) as usize;
        let block = tail
            .get(..size)
            .ok_or_else(|| corrupt(&"truncated xerial block"))?;
        raw(block, &mut out)?;
        rest = &tail[size..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn lz4(data: &[u8]) -> Vec<u8> {
        let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn xerial(data: &[u8]) -> Vec<u8> {
        let mut out = XERIAL_MAGIC.to_vec();
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&1u32.to_be_bytes());
        for chunk in data.chunks(7) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&block);
        }
        out
    }

    #[test]
    fn every_codec_round_trips_and_stops_at_the_limit() {
        let data = b"kafka records, kafka records, kafka records".repeat(10);
        let cases = [
            (Compression::None, data.clone()),
            (Compression::Gzip, gzip(&data)),
            (Compression::Lz4, lz4(&data)),
            (Compression::Zstd, zstd::bulk::compress(&data, 3).unwrap()),
            (
                Compression::Snappy,
                snap::raw::Encoder::new().compress_vec(&data).unwrap(),
            ),
            (Compression::Snappy, xerial(&data)),
        ];
        for (codec, packed) in cases {
            assert_eq!(
                decompress(codec, &packed, data.len()).unwrap(),
                data,
                "{codec:?}"
            );
            assert_eq!(
                decompress(codec, &packed, data.len() - 1),
                Err(CodecError::TooLarge {
                    codec,
                    max: data.len() - 1
                }),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [
            Compression::Gzip,
            Compression::Lz4,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            assert!(
                decompress(codec, &[0xff; 40], 1 << 20).is_err(),
                "{codec:?}"
            );
        }
        // A xerial block announcing more bytes than follow.
        let mut cut = XERIAL_MAGIC.to_vec();
        cut.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0x10, b'a', b'b']);
        assert!(decompress(Compression::Snappy, &cut, 1 << 20).is_err());
    }
}
