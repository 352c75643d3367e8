//! The broker's settings. Units are in the names; every option is documented in
//! docs/configuration.md with its default.

use serde::{Deserialize, Serialize};

/// Which kind of topic auto-creation makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutoTopicType {
    NonPartitioned,
    Partitioned,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// The cluster's name (in generated producer names).
    pub cluster_name: String,
    /// Largest message (metadata + payload) a producer may send; told to clients in CONNECTED.
    pub max_message_bytes: usize,
    /// Create topics on first use in an existing namespace.
    pub allow_auto_topic_creation: bool,
    pub auto_topic_creation_type: AutoTopicType,
    /// Partitions of an auto-created partitioned topic.
    pub default_num_partitions: u32,
    /// The broker pings a connection silent this long, and closes it after twice as long.
    pub keep_alive_secs: u64,
    /// A topic with no producers or consumers is unloaded (its task ends) after this long.
    pub topic_unload_idle_secs: u64,
    /// Acknowledgements are persisted at least this often (and on close).
    pub cursor_persist_interval_ms: u64,
    /// Memory for recently written entries, shared by all topics.
    pub entry_cache_bytes: usize,
    /// Entries a subscription reads ahead per dispatch round.
    pub dispatch_batch_entries: usize,
    /// Shared / key_shared: entries held for redelivery before reading further stops.
    pub max_redelivery_backlog_entries: usize,
    /// Concurrent connections; more are refused.
    pub max_connections: usize,
    /// Commands queued to one topic before connections wait (backpressure).
    pub topic_queue_depth: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            cluster_name: "standalone".into(),
            max_message_bytes: 5 << 20,
            allow_auto_topic_creation: true,
            auto_topic_creation_type: AutoTopicType::NonPartitioned,
            default_num_partitions: 1,
            keep_alive_secs: 30,
            topic_unload_idle_secs: 60,
            cursor_persist_interval_ms: 1000,
            entry_cache_bytes: 256 << 20,
            dispatch_batch_entries: 100,
            max_redelivery_backlog_entries: 10_000,
            max_connections: 10_000,
            topic_queue_depth: 1024,
        }
    }
}

impl BrokerConfig {
    /// Largest frame accepted: a whole message plus room for the command and headers.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_message_bytes + (10 << 10)
    }
}
