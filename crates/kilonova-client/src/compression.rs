//! The producer's payload compression option, as pulsar-perf's `-z` names
//! it; the codecs themselves (the formats Pulsar's clients write) are the
//! protocol crate's ([`kilonova_pulsar_protocol::compression`]), shared with
//! the broker's compactor.

use kilonova_pulsar_protocol::compression;
use kilonova_pulsar_protocol::proto::CompressionType;

use crate::ClientError;

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

    /// Compresses `data` (the codecs are the protocol crate's).
    pub(crate) fn compress(self, data: &[u8]) -> Result<Vec<u8>, ClientError> {
        compression::compress(self.wire(), data).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// Undoes the producer's compression of an entry's payload, refusing an
/// `uncompressed_size` over `max_bytes` before allocating
/// ([`compression::decompress`]).
pub(crate) fn decompress(
    kind: CompressionType,
    data: &[u8],
    uncompressed_size: u32,
    max_bytes: usize,
) -> Result<Vec<u8>, ClientError> {
    compression::decompress(kind, data, uncompressed_size, max_bytes)
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_round_trips_under_its_wire_codec() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 7) as u8).collect();
        for name in ["none", "lz4", "zlib", "zstd", "snappy"] {
            let c: Compression = name.parse().unwrap();
            let packed = c.compress(&data).unwrap();
            let back = decompress(c.wire(), &packed, data.len() as u32, 1 << 20).unwrap();
            assert_eq!(back, data, "{c:?}");
        }
    }

    #[test]
    fn names_parse_as_pulsar_perf_writes_them() {
        assert_eq!("LZ4".parse::<Compression>(), Ok(Compression::Lz4));
        assert_eq!("zstd".parse::<Compression>(), Ok(Compression::Zstd));
        assert!("brotli".parse::<Compression>().is_err());
    }
}
