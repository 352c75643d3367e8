//! The APIs and versions Kilonova serves: what ApiVersions answers, and
//! what a request must be to be decoded at all.
//!
//! Only APIs whose every field Kilonova fills are listed; each range is
//! capped by what the `kafka-protocol` crate can decode. Fetch stops at 12:
//! from 13 on, fetches name topics by id; OffsetFetch at 7: from 8 on it
//! batches groups; JoinGroup at 7 (8 adds a reason, 9 skips assignment).

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// (API, lowest version, highest version) served.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::ApiVersions, 0, 3),
];

/// The range of `key` served, if it is served.
pub fn served(key: ApiKey) -> Option<(i16, i16)> {
    SERVED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(k, lo, hi)| {
            let crate_max = k.valid_versions().max;
            (*lo, (*hi).min(crate_max))
        })
}

/// The ApiVersions answer: every API served with its range, and `error_code`.
pub fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let every: Vec<ApiKey> = SERVED.iter().map(|(k, _, _)| *k).collect();
    api_versions_of(&every, error_code)
}

/// The ApiVersions answer of a server that serves only `keys` (of those
/// Kilonova decodes), each with its range.
pub fn api_versions_of(keys: &[ApiKey], error_code: i16) -> ApiVersionsResponse {
    let api_keys = keys
        .iter()
        .filter_map(|k| {
            served(*k).map(|(lo, hi)| {
                ApiVersion::default()
                    .with_api_key(*k as i16)
                    .with_min_version(lo)
                    .with_max_version(hi)
            })
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_range_is_one_the_crate_decodes() {
        for (k, lo, hi) in SERVED {
            let valid = k.valid_versions();
            assert!(*lo >= valid.min && *lo <= *hi, "{k:?}");
            let (_, served_hi) = served(*k).unwrap_or_default();
            assert!(served_hi <= valid.max && served_hi >= *lo, "{k:?}");
        }
        assert_eq!(api_versions(0).api_keys.len(), SERVED.len());
    }
}
