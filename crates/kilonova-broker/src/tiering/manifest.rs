//! A topic's exported metadata in the object store: what restoring the
//! topic needs once its broker's data directory is lost (`topics restore`,
//! [`crate::Broker::restore_topic`]).
//!
//! The objects of offloaded segments are keyed by internal ids, which mean
//! nothing without the local metadata that maps names to them. So each
//! topic with offloaded segments keeps one small JSON object beside them,
//! keyed by its *name*: `<prefix>/topics/<domain>/<tenant>/<namespace>/<topic>/manifest.json`
//! (each name part kept as is in `[A-Za-z0-9_.-]`, other bytes as `%XX`).
//! It lists every offloaded segment (its object, entries, message indexes,
//! times) and the topic's record and schema as they were when it was
//! written. The topic rewrites it whenever its offloaded segments change,
//! before the objects of segments that left are deleted, so it never lists
//! an object that was deleted on purpose; deleting the topic deletes it
//! first. A rename (not built yet) would move this one object; the
//! segments' objects stay where they are.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use kilonova_metadata::names::TopicName;
use kilonova_metadata::policies::TopicPolicies;
use kilonova_metadata::{Domain, NamespaceName, SchemaRecord};
use kilonova_objstore::ObjectStoreError;

use super::Tiering;

/// The manifest's format version.
pub const MANIFEST_VERSION: u32 = 1;

/// A topic's exported metadata.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TopicManifest {
    pub version: u32,
    /// The topic's full name.
    pub topic: String,
    /// Its internal id when exported (its objects' keys hold it).
    pub log_id: u64,
    pub exported_at_ms: u64,
    /// For a partition: its partitioned topic's partition count then.
    #[serde(default)]
    pub partitioned_topic_partitions: u32,
    /// Topic-level policies.
    #[serde(default)]
    pub policies: TopicPolicies,
    /// Every stored version of its schema (deletion markers included).
    #[serde(default)]
    pub schemas: Vec<SchemaRecord>,
    /// The offloaded segments, oldest first.
    pub segments: Vec<ManifestSegment>,
}

/// One offloaded segment.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSegment {
    /// Its id where it was offloaded from (message ids held it).
    pub segment_id: u64,
    /// Its object's key.
    pub object: String,
    pub entries: u64,
    /// Bytes of its entries.
    pub bytes: u64,
    pub first_message_index: u64,
    pub end_message_index: u64,
    pub created_ms: u64,
    pub last_publish_ms: u64,
}

/// A name part as a key part: `[A-Za-z0-9_.-]` as is, other bytes `%XX`
/// (and a part of dots only wholly encoded: `.` and `..` are not keys).
fn key_part(s: &str) -> String {
    let dots_only = s.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) && !dots_only {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The key (under the bucket's prefix) of the namespace's manifests.
fn namespace_dir(domain: Domain, ns: &NamespaceName) -> String {
    format!(
        "topics/{}/{}/{}",
        domain.as_str(),
        key_part(&ns.tenant),
        key_part(&ns.namespace)
    )
}

/// The key (under the bucket's prefix) of `topic`'s manifest.
pub fn manifest_key(topic: &TopicName) -> String {
    format!(
        "{}/{}/manifest.json",
        namespace_dir(topic.domain, &topic.namespace()),
        key_part(&topic.local)
    )
}

impl Tiering {
    /// Writes (replaces) a topic's manifest; with no offloaded segments, deletes it.
    pub async fn export_manifest(
        &self,
        topic: &TopicName,
        manifest: &TopicManifest,
    ) -> Result<(), ObjectStoreError> {
        let result = if manifest.segments.is_empty() {
            self.delete_manifest(topic).await
        } else {
            let key = self.bucket().key(&manifest_key(topic));
            match serde_json::to_vec(manifest) {
                Ok(body) => self.bucket().put(&key, body.into()).await,
                Err(e) => Err(ObjectStoreError::Failed {
                    op: "encoding",
                    key,
                    detail: e.to_string(),
                }),
            }
        };
        let counter = match result {
            Ok(()) => &self.counters.manifest_exports,
            Err(_) => &self.counters.manifest_export_errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    /// A topic's manifest, if it has one.
    pub async fn read_manifest(
        &self,
        topic: &TopicName,
    ) -> Result<Option<TopicManifest>, ObjectStoreError> {
        let key = self.bucket().key(&manifest_key(topic));
        let body = match self.bucket().get(&key).await {
            Ok(b) => b,
            Err(ObjectStoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let manifest: TopicManifest =
            serde_json::from_slice(&body).map_err(|e| ObjectStoreError::Failed {
                op: "decoding",
                key: key.clone(),
                detail: format!("not a topic manifest: {e}"),
            })?;
        if manifest.version != MANIFEST_VERSION {
            return Err(ObjectStoreError::Failed {
                op: "decoding",
                key,
                detail: format!(
                    "manifest version {} (this broker reads {MANIFEST_VERSION})",
                    manifest.version
                ),
            });
        }
        Ok(Some(manifest))
    }

    /// Deletes a topic's manifest (none is fine).
    pub async fn delete_manifest(&self, topic: &TopicName) -> Result<(), ObjectStoreError> {
        self.bucket()
            .delete(&self.bucket().key(&manifest_key(topic)))
            .await
    }

    /// The partitions of `base` that have a manifest, by index.
    pub async fn partition_manifests(
        &self,
        base: &TopicName,
    ) -> Result<Vec<u32>, ObjectStoreError> {
        let dir = self
            .bucket()
            .key(&namespace_dir(base.domain, &base.namespace()));
        let partition_prefix = key_part(&format!("{}-partition-", base.local));
        let mut found = Vec::new();
        for object in self.bucket().list(&dir).await? {
            let Some(rest) = object.key.strip_prefix(&dir) else {
                continue;
            };
            let Some(part) = rest
                .strip_prefix('/')
                .and_then(|r| r.strip_suffix("/manifest.json"))
            else {
                continue;
            };
            if let Some(i) = part
                .strip_prefix(&partition_prefix)
                .and_then(|i| i.parse::<u32>().ok())
            {
                found.push(i);
            }
        }
        found.sort_unstable();
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_keep_plain_names_readable_and_encode_the_rest() {
        let t = TopicName::parse("persistent://acme/ns.1/orders:eu=2%").unwrap();
        assert_eq!(
            manifest_key(&t),
            "topics/persistent/acme/ns.1/orders%3Aeu%3D2%25/manifest.json"
        );
        // Names are never dots only; keys could not be.
        assert_eq!(key_part(".."), "%2E%2E");
        assert_eq!(key_part("a.b"), "a.b");
        // Distinct names, distinct keys.
        let a = TopicName::parse("persistent://t/n/a:b").unwrap();
        let b = TopicName::parse("persistent://t/n/a%3Ab").unwrap();
        assert_ne!(manifest_key(&a), manifest_key(&b));
    }

    #[test]
    fn a_manifest_reads_back_as_written() {
        let m = TopicManifest {
            version: MANIFEST_VERSION,
            topic: "persistent://t/n/x".into(),
            log_id: 7,
            segments: vec![ManifestSegment {
                segment_id: 3,
                object: "kn/logs/7/segments/3/ab.seg".into(),
                entries: 10,
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(serde_json::from_slice::<TopicManifest>(&json).unwrap(), m);
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains("\"logId\":7") && text.contains("\"firstMessageIndex\":0"));
    }
}
