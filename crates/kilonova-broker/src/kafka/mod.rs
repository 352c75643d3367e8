//! The Kafka listener: Kafka clients produce to and fetch from the same
//! topics Pulsar clients use (docs/kafka.md).
//!
//! The protocol's bytes are `kilonova-kafka`'s (sans IO); here a connection
//! reads requests in order and answers them in that order, as Kafka
//! requires, with produces in flight while it reads on. A Kafka topic `t` is `persistent://<namespace>/t`, its
//! partition `i` the topic's partition `i` (a non-partitioned topic has the
//! one partition 0), and an offset the topic's message index.
//!
//! * Produce: each partition's record batch becomes one entry, sent through
//!   a producer this connection opens on the topic — the same path, checks,
//!   rates and receipts as a Pulsar producer's; the answer (acks 1 or all)
//!   goes once every entry is durable, with the entry's first index as the
//!   base offset.
//! * Fetch and ListOffsets: entries read by message index from the topic's
//!   task ([`crate::topic::by_index`]), long-polled up to `max_wait_ms`.
//! * Consumer groups: the classic protocol's state machine
//!   (`kilonova_kafka_groups::groups`),
//!   committed offsets in the metadata store (`group_api.rs`).

mod configs;
mod connection;
mod errors;
mod fetch;
mod group_api;
mod metadata;
pub(crate) mod metrics;
mod nodes;
mod produce;
mod routes;
mod sasl;
mod topics;

use std::sync::Arc;

use tokio::sync::watch;

use kilonova_kafka_groups::groups;

use crate::Broker;

/// How the Kafka listener presents itself.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Where Kafka topic names live (`tenant/namespace`).
    pub namespace: String,
    /// The host Metadata names as this broker (the leader of every
    /// partition), with the port of the listener a client came in by.
    pub advertised_host: String,
    /// The retention a topic created through the Kafka listener gets as its
    /// own policy (Kafka keeps records for a time whether or not anyone
    /// reads them; a Kilonova topic without a subscription keeps nothing
    /// unless retention says so). `None`: the namespace's policy applies.
    pub retention_minutes: Option<i32>,
    /// How long an empty consumer group's first rebalance waits for more
    /// members (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay: std::time::Duration,
}

/// The Kafka listener's state, shared by its plain and TLS ports: its
/// settings and its consumer groups (a ticker expires members while the
/// service lives).
pub struct KafkaService {
    settings: Arc<KafkaSettings>,
    groups: Arc<groups::Coordinator>,
}

impl KafkaService {
    /// Starts the service for `broker` (its group ticker runs on the
    /// current runtime; the broker's admin API sees its groups).
    pub fn start(broker: &Broker, settings: KafkaSettings) -> Arc<KafkaService> {
        let groups = Arc::new(groups::Coordinator::new(
            settings.group_initial_rebalance_delay,
            broker.metrics().kafka().rebalances.clone(),
        ));
        if broker.kafka_groups().set(groups.clone()).is_err() {
            tracing::warn!(
                "a Kafka service was started already: the admin API sees the first one's groups"
            );
        }
        tokio::spawn(tick_groups(Arc::downgrade(&groups)));
        Arc::new(KafkaService {
            settings: Arc::new(settings),
            groups,
        })
    }
}

/// Serves the Kafka protocol on `listener` (over TLS with `tls`; clients are
/// told to come back to `advertised_port`) until `stop_accepting` changes
/// (connections close when `close_connections` changes), within the
/// broker's connection limits, which Kafka and Pulsar connections share.
pub async fn kafka_accept_loop(
    broker: Broker,
    listener: tokio::net::TcpListener,
    advertised_port: u16,
    service: Arc<KafkaService>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    stop_accepting: watch::Receiver<bool>,
    close_connections: watch::Receiver<bool>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let what = if tls.is_some() { "Kafka TLS" } else { "Kafka" };
    crate::accept::accept_connections(
        broker,
        listener,
        what,
        stop_accepting,
        close_connections,
        move |b, stream, peer, close| {
            let (settings, groups) = (service.settings.clone(), service.groups.clone());
            let listener = connection::Listener {
                settings,
                groups,
                advertised_port,
                tls: tls.clone(),
            };
            connection::serve(b, stream, peer, listener, close)
        },
    )
    .await;
}

/// Expires silent group members and completes overdue rebalances, until
/// the service is gone.
async fn tick_groups(groups: std::sync::Weak<groups::Coordinator>) {
    let mut every = tokio::time::interval(groups::TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(groups) = groups.upgrade() else {
            return;
        };
        groups.tick(std::time::Instant::now());
    }
}

/// Idempotent producers' ids: the clock's milliseconds times 4,096 plus a
/// count, so ids handed out after a restart are above the ones before (the
/// topics deduplicate by id) as long as the clock does not step back.
fn next_producer_id(now_ms: u64) -> i64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let floor = now_ms.saturating_mul(4096);
    let id = LAST
        .fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |last| Some(last.max(floor - 1) + 1),
        )
        .map_or(floor, |last| last.max(floor - 1) + 1);
    i64::try_from(id).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn producer_ids_grow_within_a_millisecond_and_across_them() {
        let a = super::next_producer_id(1_000);
        let b = super::next_producer_id(1_000);
        let c = super::next_producer_id(2_000);
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(c >= 2_000 * 4096);
    }
}

/// A Kafka consumer group as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KafkaGroupState {
    /// Kafka's name for its state (`Empty` for a group the listener does
    /// not know: only committed offsets are left).
    pub state: &'static str,
    pub members: usize,
}

impl Broker {
    /// Group `group`'s live state in the Kafka listener.
    pub fn kafka_group_state(&self, group: &str) -> KafkaGroupState {
        let described = self.kafka_groups().get().and_then(|g| g.describe(group));
        match described {
            Some(d) => KafkaGroupState {
                state: groups::state_name(d.state),
                members: d.members.len(),
            },
            None => KafkaGroupState {
                state: "Empty",
                members: 0,
            },
        }
    }

    /// The first stored message index of `topic` and the one after the
    /// last durable message (a Kafka partition's log start and end offsets).
    pub async fn message_index_bounds(
        &self,
        topic: &kilonova_metadata::names::TopicName,
    ) -> Result<(u64, u64), crate::BrokerError> {
        let handle = self.topic(topic).await?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let query = crate::topic::by_index::IndexQuery::Bounds;
        handle
            .send(crate::topic::TopicCommand::ByIndex { query, reply })
            .await
            .map_err(|_| crate::BrokerError::Unavailable("the topic closed".into()))?;
        let answer = rx
            .await
            .map_err(|_| crate::BrokerError::Unavailable("the topic closed".into()))??;
        Ok((answer.start, answer.end))
    }
}
