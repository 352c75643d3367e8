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
    // Sized up front for the answers that carry records (a fetch's can be
    // megabytes): no growing by doubling, no copy per doubling.
    let body_size = match body {
        ResponseKind::Fetch(f) => f.compute_size(version).unwrap_or(0),
        _ => 0,
    };
    let mut b = BytesMut::with_capacity(64 + body_size);
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

/// The answer to a request that was not decoded. ApiVersions at a version
/// not served gets Kafka's answer (version 0, UNSUPPORTED_VERSION and the
/// versions served, `versions`), from which clients pick one; anything
/// else gets the correlation id and an error code; `None` if the request
/// had no header (the connection closes).
pub fn refusal(
    e: crate::request::RequestError,
    versions: impl FnOnce(i16) -> kafka_protocol::messages::ApiVersionsResponse,
) -> Option<Bytes> {
    use crate::request::RequestError;
    use kafka_protocol::error::ResponseError;
    let unsupported = ResponseError::UnsupportedVersion.code();
    match e {
        RequestError::Unsupported {
            api_key: ApiKey::ApiVersions,
            correlation_id,
            ..
        } => encode(
            ApiKey::ApiVersions,
            0,
            correlation_id,
            &ResponseKind::ApiVersions(versions(unsupported)),
        )
        .ok(),
        RequestError::Header(_) => None,
        RequestError::Malformed { correlation_id, .. } => Some(bare_error(
            correlation_id,
            ResponseError::InvalidRequest.code(),
        )),
        e => e.correlation_id().map(|c| bare_error(c, unsupported)),
    }
}

/// Every error code in `body` but NONE, top level and per topic,
/// partition, group or member, as Kafka's per-request error counts take them.
pub fn error_codes(body: &ResponseKind) -> Vec<i16> {
    let mut codes = Vec::new();
    let mut add = |c: i16| {
        if c != 0 {
            codes.push(c)
        }
    };
    match body {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .for_each(|p| add(p.error_code)),
        ResponseKind::Fetch(r) => {
            add(r.error_code);
            r.responses
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| add(p.error_code));
        }
        ResponseKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| add(p.error_code)),
        ResponseKind::Metadata(r) => r.topics.iter().for_each(|t| {
            add(t.error_code);
            t.partitions.iter().for_each(|p| add(p.error_code));
        }),
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .for_each(|p| add(p.error_code)),
        ResponseKind::OffsetFetch(r) => {
            add(r.error_code);
            r.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .for_each(|p| add(p.error_code));
        }
        ResponseKind::FindCoordinator(r) => {
            add(r.error_code);
            r.coordinators.iter().for_each(|c| add(c.error_code));
        }
        ResponseKind::JoinGroup(r) => add(r.error_code),
        ResponseKind::SyncGroup(r) => add(r.error_code),
        ResponseKind::Heartbeat(r) => add(r.error_code),
        ResponseKind::LeaveGroup(r) => {
            add(r.error_code);
            r.members.iter().for_each(|m| add(m.error_code));
        }
        ResponseKind::ListGroups(r) => add(r.error_code),
        ResponseKind::DescribeGroups(r) => r.groups.iter().for_each(|g| add(g.error_code)),
        ResponseKind::DeleteGroups(r) => r.results.iter().for_each(|g| add(g.error_code)),
        ResponseKind::InitProducerId(r) => add(r.error_code),
        ResponseKind::CreateTopics(r) => r.topics.iter().for_each(|t| add(t.error_code)),
        ResponseKind::CreatePartitions(r) => r.results.iter().for_each(|t| add(t.error_code)),
        ResponseKind::DeleteTopics(r) => r.responses.iter().for_each(|t| add(t.error_code)),
        ResponseKind::DescribeConfigs(r) => r.results.iter().for_each(|t| add(t.error_code)),
        ResponseKind::AlterConfigs(r) => r.responses.iter().for_each(|t| add(t.error_code)),
        ResponseKind::IncrementalAlterConfigs(r) => {
            r.responses.iter().for_each(|t| add(t.error_code))
        }
        ResponseKind::SaslHandshake(r) => add(r.error_code),
        ResponseKind::SaslAuthenticate(r) => add(r.error_code),
        ResponseKind::ApiVersions(r) => add(r.error_code),
        _ => {}
    }
    codes
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

    #[test]
    fn error_codes_are_every_nonzero_code_at_every_level() {
        use kafka_protocol::messages::metadata_response::{
            MetadataResponsePartition, MetadataResponseTopic,
        };
        use kafka_protocol::messages::MetadataResponse;
        let partition = |code| MetadataResponsePartition::default().with_error_code(code);
        let body = MetadataResponse::default().with_topics(vec![
            MetadataResponseTopic::default()
                .with_error_code(3)
                .with_partitions(vec![partition(0), partition(6), partition(6)]),
            MetadataResponseTopic::default(),
        ]);
        assert_eq!(error_codes(&ResponseKind::Metadata(body)), vec![3, 6, 6]);
        let fine = crate::versions::api_versions(0);
        assert!(error_codes(&ResponseKind::ApiVersions(fine)).is_empty());
    }
}
