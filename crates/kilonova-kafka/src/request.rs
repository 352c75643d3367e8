//! A request as a Kafka client sends it: the header (API, version,
//! correlation id, client id) and the body, decoded for the APIs served.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind};
use kafka_protocol::protocol::Decodable;

use crate::versions;

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub body: RequestKind,
}

impl Request {
    pub fn version(&self) -> i16 {
        self.header.request_api_version
    }

    pub fn correlation_id(&self) -> i32 {
        self.header.correlation_id
    }
}

/// Why a request was not decoded. Every variant but `Header` carries what an
/// answer needs: the correlation id, and the API and version it was for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not even the fixed header (API key, version, correlation id) is there.
    #[error("request of {0} bytes has no header")]
    Header(usize),
    #[error("unknown API key {api_key}")]
    UnknownApi { api_key: i16, correlation_id: i32 },
    #[error("{api_key:?} version {version} is not served (served: {served:?})")]
    Unsupported {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        served: Option<(i16, i16)>,
    },
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    Malformed {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        reason: String,
    },
}

impl RequestError {
    /// The correlation id to answer with, if the request had one.
    pub fn correlation_id(&self) -> Option<i32> {
        match self {
            RequestError::Header(_) => None,
            RequestError::UnknownApi { correlation_id, .. }
            | RequestError::Unsupported { correlation_id, .. }
            | RequestError::Malformed { correlation_id, .. } => Some(*correlation_id),
        }
    }
}

/// Whether a framed request (not decoded yet) is a Fetch.
pub fn is_fetch(frame: &Bytes) -> bool {
    frame.len() >= 2 && i16::from_be_bytes([frame[0], frame[1]]) == ApiKey::Fetch as i16
}

/// Decodes one framed request (without its size prefix).
pub fn decode(frame: Bytes) -> Result<Request, RequestError> {
    if frame.len() < 8 {
        return Err(RequestError::Header(frame.len()));
    }
    let mut fixed = &frame[..8];
    let raw_key = fixed.get_i16();
    let version = fixed.get_i16();
    let correlation_id = fixed.get_i32();
    let api_key = ApiKey::try_from(raw_key).map_err(|_| RequestError::UnknownApi {
        api_key: raw_key,
        correlation_id,
    })?;
    let served = versions::served(api_key);
    if !served.is_some_and(|(lo, hi)| (lo..=hi).contains(&version)) {
        return Err(RequestError::Unsupported {
            api_key,
            version,
            correlation_id,
            served,
        });
    }
    let malformed = |e: anyhow_like::Error| RequestError::Malformed {
        api_key,
        version,
        correlation_id,
        reason: e.0,
    };
    let mut rest = frame;
    let header = RequestHeader::decode(&mut rest, api_key.request_header_version(version))
        .map_err(|e| malformed(e.into()))?;
    let body = RequestKind::decode(api_key, &mut rest, version).map_err(|e| malformed(e.into()))?;
    Ok(Request {
        header,
        api_key,
        body,
    })
}

/// The crate's errors are `anyhow::Error`; only their text is kept.
mod anyhow_like {
    pub struct Error(pub String);
    impl<E: std::fmt::Display> From<E> for Error {
        fn from(e: E) -> Self {
            Error(format!("{e:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use proptest::prelude::*;

    fn encode<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Bytes {
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")))
            .encode(&mut b, key.request_header_version(version))
            .unwrap();
        body.encode(&mut b, version).unwrap();
        b.freeze()
    }

    #[test]
    fn a_served_request_decodes_with_its_header() {
        let r = decode(encode(ApiKey::Metadata, 12, &MetadataRequest::default())).unwrap();
        assert_eq!(
            (r.api_key, r.version(), r.correlation_id()),
            (ApiKey::Metadata, 12, 7)
        );
        assert_eq!(r.header.client_id.as_deref(), Some("test"));
        assert!(matches!(r.body, RequestKind::Metadata(_)));
    }

    #[test]
    fn unknown_apis_unserved_versions_and_garbage_are_typed_errors() {
        let mut unknown = encode(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).to_vec();
        unknown[0..2].copy_from_slice(&999i16.to_be_bytes());
        assert_eq!(
            decode(Bytes::from(unknown)).unwrap_err(),
            RequestError::UnknownApi {
                api_key: 999,
                correlation_id: 7
            }
        );
        let e = decode(encode(ApiKey::Produce, 2, &MetadataRequest::default())).unwrap_err();
        assert!(matches!(
            e,
            RequestError::Unsupported {
                version: 2,
                correlation_id: 7,
                ..
            }
        ));
        let mut cut = encode(ApiKey::Metadata, 12, &MetadataRequest::default()).to_vec();
        cut.truncate(12);
        assert!(matches!(
            decode(Bytes::from(cut)),
            Err(RequestError::Malformed { .. })
        ));
        assert_eq!(
            decode(Bytes::from_static(&[0, 1])).unwrap_err(),
            RequestError::Header(2)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(
            key in 0i16..80, version in -1i16..20,
            rest in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut b = BytesMut::new();
            bytes::BufMut::put_i16(&mut b, key);
            bytes::BufMut::put_i16(&mut b, version);
            bytes::BufMut::put_i32(&mut b, 1);
            b.extend_from_slice(&rest);
            let _ = decode(b.freeze());
        }
    }
}
