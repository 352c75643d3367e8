#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The entry cache's eviction settings at the broker: entries a consumer
//! read leave the cache at once by default, stay with `time-only` eviction
//! until they are older than the time threshold.

mod common;

use std::time::Duration;

use kilonova_broker::{Broker, BrokerConfig, CacheEviction};
use kilonova_pulsar_protocol::proto::{base_command::Type, command_subscribe::SubType};

use common::{start, Raw, WAIT};

/// Entries the broker's cache holds (its `pulsar_ml_cache_entries`).
fn cached(broker: &Broker) -> u64 {
    let metrics = broker.render_metrics();
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("pulsar_ml_cache_entries{")?
                .split(' ')
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no pulsar_ml_cache_entries in:\n{metrics}"))
}

/// Publishes 5 messages to a topic a consumer reads, and receives them.
async fn publish_and_read(c: &mut Raw, topic: &str) {
    c.subscribe(topic, "s", SubType::Exclusive, 1).await;
    c.producer(topic, 1).await;
    for seq in 0..5 {
        c.send_message(1, seq, b"payload").await;
        c.recv_type(Type::SendReceipt).await;
    }
    c.flow(1, 10).await;
    for _ in 0..5 {
        c.recv_type(Type::Message).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_entries_leave_at_once_by_default_and_by_age_only_with_time_only_eviction() {
    // Default: before the slowest reader's position, at once.
    let s = start(BrokerConfig::default()).await;
    let mut c = Raw::connect(s.addr).await;
    publish_and_read(&mut c, "persistent://public/default/by-reader").await;
    tokio::time::timeout(WAIT, async {
        while cached(&s.broker) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("read entries leave the cache");

    // Time only: the read entries stay, until they are older than the
    // threshold.
    let s = start(BrokerConfig {
        cache_eviction: CacheEviction::TimeOnly,
        cache_eviction_time_threshold_ms: 2_000,
        ..BrokerConfig::default()
    })
    .await;
    let mut c = Raw::connect(s.addr).await;
    publish_and_read(&mut c, "persistent://public/default/by-time").await;
    s.broker.evict_old_cached_entries();
    assert_eq!(cached(&s.broker), 5, "read but not old: kept");
    tokio::time::timeout(WAIT, async {
        loop {
            s.broker.evict_old_cached_entries();
            if cached(&s.broker) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("entries older than the threshold leave the cache");
}
