//! A response framed for the wire: size, header (correlation id; tagged
//! fields from the API's flexible versions on), body.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Encodable;

/// A response the crate could not encode (a field out of its version's range).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode the {api_key:?} v{version} response: {reason}")]
pub struct EncodeError {
    pub api_key: ApiKey,
    pub version: i16,
    pub reason: String,
}

/// `[size][header][body]` for the request `(api_key, version, correlation_id)`.
pub fn encode(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, EncodeError> {
    let failed = |e: &dyn std::fmt::Display| EncodeError {
        api_key,
        version,
        reason: format!("{e:#}"),
    };
    let mut b = BytesMut::with_capacity(64);
    b.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut b, api_key.response_header_version(version))
        .map_err(|e| failed(&e))?;
    body.encode(&mut b, version).map_err(|e| failed(&e))?;
    let size = i32::try_from(b.len() - 4).map_err(|e| failed(&e))?;
    b[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(b.freeze())
}

/// The answer to a request that could not be decoded for an API whose
/// response cannot be built (an unknown key, a version not served): the
/// correlation id and an error code, which is how a Kafka broker's first
/// response fields begin for most APIs. A client gets an error, not a hang.
pub fn bare_error(correlation_id: i32, error_code: i16) -> Bytes {
    let mut b = BytesMut::with_capacity(10);
    b.put_i32(6);
    b.put_i32(correlation_id);
    b.put_i16(error_code);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsResponse;
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn the_size_prefix_covers_header_and_body_and_the_body_decodes() {
        let body = crate::versions::api_versions(0);
        let out = encode(
            ApiKey::ApiVersions,
            3,
            42,
            &ResponseKind::ApiVersions(body.clone()),
        )
        .unwrap();
        let size = i32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(size, out.len() - 4);
        // ApiVersions' response header is v0 whatever the version: the
        // correlation id only.
        assert_eq!(&out[4..8], &42i32.to_be_bytes());
        let mut rest = out.slice(8..);
        assert_eq!(ApiVersionsResponse::decode(&mut rest, 3).unwrap(), body);
    }
}
