//! Geo-replication's sending half: one task per topic (or partition) and
//! remote cluster, producing what the topic feeds it to the same topic on
//! the remote cluster with Kilonova's own client
//! ([ADR 0010](../../../docs/adr/0010-geo-replication-without-a-shared-store.md)).
//!
//! The topic owns the replicator's durable cursor (`pulsar.repl.<remote>`)
//! and feeds it entries ([`crate::topic`]'s `replication.rs`); this task
//! connects to the remote cluster's broker URL (from the cluster's record in
//! the local metadata), creates the producer `pulsar.repl.<local>` and sends
//! each entry as it is stored — metadata intact, plus `replicated_from` —
//! reporting back, in order, each entry the remote has made durable (or that
//! is not for it), so the topic moves the cursor.
//!
//! **Exactly once.** Each entry goes out under a sequence id made of its
//! source position ([`sequence_id`]), and the remote deduplicates producers
//! named `pulsar.repl.*` whatever its deduplication policy: after a
//! reconnect or a crash on either side, the topic rewinds the cursor to what
//! was confirmed and the task skips what the remote says it already has
//! (PRODUCER_SUCCESS's `last_sequence_id`); what still goes twice is dropped
//! by the remote. The remote keeps that state across its own crashes by
//! reading the source position back from the stored message's
//! `__MSG_PROP_REPL_SOURCE_POSITION` property (Pulsar's name for it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{self, BoxFuture, FutureExt};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;

use kilonova_client::{Client, ClientError, ConnectOptions, Producer, ProducerOptions};
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{KeyValue, MessageMetadata};
use kilonova_storage::{Entry, Position};

use crate::broker::Broker;

/// The prefix of replicator names: a cursor `pulsar.repl.<remote>` on the
/// source, a producer `pulsar.repl.<source>` on the remote.
pub(crate) const REPLICATOR_PREFIX: &str = "pulsar.repl.";

/// The property that carries a replicated message's position in its source
/// topic, `ledgerId:entryId` (Pulsar's name).
pub(crate) const SOURCE_POSITION_PROPERTY: &str = "__MSG_PROP_REPL_SOURCE_POSITION";

/// Entries sent and not yet confirmed by the remote, per replicator.
pub(crate) const WINDOW_ENTRIES: usize = 1000;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off between attempts: doubles from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The name of the replicator towards `cluster`: its cursor on the source,
/// its producer on the remote (named after the source cluster).
pub(crate) fn replicator_name(cluster: &str) -> String {
    format!("{REPLICATOR_PREFIX}{cluster}")
}

/// Whether a cursor or producer name is a replicator's.
pub(crate) fn is_replicator(name: &str) -> bool {
    name.starts_with(REPLICATOR_PREFIX)
}

/// The sequence id an entry at `p` is replicated under: ascending with the
/// position (segment in the high 32 bits, entry in the low 32), so the
/// remote's deduplication drops anything at or before what it stored.
/// Segments and entries beyond 2³² saturate (never reached: a segment id is
/// taken per segment, an entry id per entry of one segment).
pub(crate) fn sequence_id(p: Position) -> u64 {
    let segment = p.segment.min(u64::from(u32::MAX));
    let entry = p.entry.min(u64::from(u32::MAX));
    (segment << 32) | entry
}

/// Where a replicated message came from and its sequence id there, from its
/// stored metadata: the remote's deduplication state, rebuilt from its log.
pub(crate) fn replicated_source(meta: &MessageMetadata) -> Option<(String, u64)> {
    let from = meta.replicated_from.as_ref()?;
    let value = meta
        .properties
        .iter()
        .find(|kv| kv.key == SOURCE_POSITION_PROPERTY)?;
    let (segment, entry) = value.value.split_once(':')?;
    let p = Position::new(segment.parse().ok()?, entry.parse().ok()?);
    Some((replicator_name(from), sequence_id(p)))
}

/// What becomes of one stored entry for one remote cluster.
#[derive(Debug, PartialEq)]
pub(crate) enum Copy {
    /// Send this metadata and payload under this sequence id.
    Send {
        sequence_id: u64,
        metadata: Box<MessageMetadata>,
        payload: Bytes,
    },
    /// Not for this remote: it came by replication (never sent on, so a full
    /// mesh has no loops), its `replicate_to` leaves the remote out, it is a
    /// marker that stays local, or it cannot be decoded.
    Skip,
}

/// Whether a message with this metadata goes to `remote`. Of markers,
/// only the replicated-subscription ones travel (to the clusters they name).
fn goes_to(meta: &MessageMetadata, remote: &str) -> bool {
    meta.replicated_from.is_none()
        && meta.marker_type.is_none_or(travels)
        && (meta.replicate_to.is_empty() || meta.replicate_to.iter().any(|c| c == remote))
}

/// Marker types sent to other clusters: requests, responses and updates
/// (a completed snapshot stays local; it names the local cluster only).
fn travels(marker_type: i32) -> bool {
    use kilonova_pulsar_protocol::proto::MarkerType as M;
    matches!(
        M::try_from(marker_type),
        Ok(M::ReplicatedSubscriptionSnapshotRequest
            | M::ReplicatedSubscriptionSnapshotResponse
            | M::ReplicatedSubscriptionUpdate)
    )
}

/// Whether the stored entry `data` is to be sent to `remote` (see [`copy_for`]).
pub(crate) fn is_for(data: &Bytes, remote: &str) -> bool {
    frame::decode_payload(data.clone()).is_ok_and(|p| goes_to(&p.metadata, remote))
}

/// The copy of the entry at `position` (its stored bytes `data`) that goes
/// from `local` to `remote`.
pub(crate) fn copy_for(position: Position, data: &Bytes, local: &str, remote: &str) -> Copy {
    let Ok(p) = frame::decode_payload(data.clone()) else {
        tracing::warn!(%position, "replication: an entry without readable metadata is not sent");
        return Copy::Skip;
    };
    let mut meta = p.metadata;
    if !goes_to(&meta, remote) {
        return Copy::Skip;
    }
    meta.replicated_from = Some(local.to_string());
    meta.properties.push(KeyValue {
        key: SOURCE_POSITION_PROPERTY.into(),
        value: format!("{}:{}", position.segment, position.entry),
    });
    Copy::Send {
        sequence_id: sequence_id(position),
        metadata: Box::new(meta),
        payload: p.data,
    }
}

/// What a replicator reports to its topic. `epoch` names the connection it
/// is about: reports of an older one are stale.
#[derive(Debug)]
pub(crate) enum Report {
    /// Connected: the topic rewinds the cursor to what was confirmed and
    /// feeds from there under this epoch.
    Ready { cluster: String, epoch: u64 },
    /// The remote has every entry up to `upto` (`entries` of them since the
    /// last report) or they were not for it.
    Done {
        cluster: String,
        epoch: u64,
        upto: Position,
        entries: usize,
    },
    /// The connection is gone: stop feeding until the next `Ready`.
    Lost { cluster: String, epoch: u64 },
}

/// What the topic sends its replicator.
pub(crate) enum Feed {
    /// There is something to send: connect (if not connected).
    Connect,
    /// An entry to send, fed under an epoch.
    Entry { epoch: u64, entry: Entry },
}

/// What a replicator shows in stats and metrics.
#[derive(Debug, Default)]
pub(crate) struct ReplicatorStats {
    pub connected: AtomicBool,
    pub msg_out: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Publish time (ms) of the last entry the remote confirmed.
    pub last_confirmed_publish_ms: AtomicU64,
}

/// Who a replicator is.
pub(crate) struct Spec {
    pub broker: Broker,
    /// The topic (or partition) it copies, by full name: the same on the remote.
    pub topic: String,
    pub remote: String,
}

/// Runs a replicator until its topic drops the feed.
pub(crate) async fn run(
    spec: Spec,
    mut feed: mpsc::UnboundedReceiver<Feed>,
    reports: mpsc::UnboundedSender<Report>,
    stats: Arc<ReplicatorStats>,
) {
    let local = spec.broker.config().cluster_name.clone();
    let idle = Duration::from_secs(spec.broker.config().replicator_idle_timeout_secs.max(1));
    let mut epoch = 0u64;
    let mut retry = RETRY_FIRST;
    let mut last_error = String::new();
    let mut wanted = false;
    loop {
        // Connected only while there is something to send: an idle
        // replicator holds no producer on the remote, so the remote's copy
        // of the topic can go inactive (and be deleted there).
        while !wanted {
            match feed.recv().await {
                None => return,
                Some(Feed::Connect) => wanted = true,
                Some(Feed::Entry { .. }) => {} // fed for an earlier connection
            }
        }
        let (client, producer) = match connect(&spec).await {
            Ok(c) => c,
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(topic = %spec.topic, remote = %spec.remote, error = %e, "replicator cannot reach the remote cluster; retrying");
                    last_error = e;
                }
                // Sleep, unless the topic lets go meanwhile.
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = reports.closed() => return,
                }
                retry = (retry * 2).min(RETRY_MAX);
                continue;
            }
        };
        retry = RETRY_FIRST;
        last_error.clear();
        epoch += 1;
        let last_stored = producer.last_sequence_id();
        tracing::info!(topic = %spec.topic, remote = %spec.remote, last_stored = ?last_stored, "replicator connected");
        stats.connected.store(true, Ordering::Relaxed);
        if reports
            .send(Report::Ready {
                cluster: spec.remote.clone(),
                epoch,
            })
            .is_err()
        {
            return;
        }
        let end = pump(
            &spec,
            &local,
            Session {
                epoch,
                last_stored,
                idle,
            },
            &producer,
            &mut feed,
            &reports,
            &stats,
        )
        .await;
        stats.connected.store(false, Ordering::Relaxed);
        client.close();
        match end {
            Pump::TopicGone => return,
            Pump::Idle | Pump::Lost(_) => {
                if let Pump::Lost(e) = &end {
                    tracing::warn!(topic = %spec.topic, remote = %spec.remote, error = %e, "replicator lost the remote cluster; reconnecting");
                } else {
                    tracing::debug!(topic = %spec.topic, remote = %spec.remote, "replicator idle: disconnected");
                }
                wanted = matches!(end, Pump::Lost(_));
                if reports
                    .send(Report::Lost {
                        cluster: spec.remote.clone(),
                        epoch,
                    })
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

async fn connect(spec: &Spec) -> Result<(Client, Producer), ClientError> {
    let cluster = spec
        .broker
        .resources()
        .cluster(&spec.remote)
        .await
        .map_err(|e| ClientError::Connect {
            addr: spec.remote.clone(),
            message: format!("cluster record: {e}"),
        })?;
    let options = ConnectOptions {
        token: spec.broker.config().replication_token(&spec.remote),
        tls_trust_certs: spec.broker.config().replication_tls_trust_certs.clone(),
    };
    ensure_remote_partitions(spec, &cluster).await?;
    let url = cluster.broker_service_url;
    let attempt = async {
        // Whichever broker of the remote cluster serves the topic, or through
        // the remote cluster's proxy.
        let client = Client::connect_to_owner(&url, &spec.topic, &options).await?;
        let local = &spec.broker.config().cluster_name;
        let producer = client
            .create_producer(
                &spec.topic,
                ProducerOptions {
                    name: Some(replicator_name(local)),
                    batching: None,
                    max_pending: WINDOW_ENTRIES + 1,
                    ..Default::default()
                },
            )
            .await?;
        Ok((client, producer))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Connect {
                addr: url.clone(),
                message: "timed out".into(),
            })
        })
}

/// For a partition of a partitioned topic: makes sure the remote cluster has
/// the partitioned topic, with this cluster's partition count (Pulsar's
/// `createTopicToRemoteClusterForReplication`), through its admin REST API
/// (the cluster's `serviceUrl`; an existing topic, 409, is fine). Without
/// it the remote would take the partition for a topic of its own.
async fn ensure_remote_partitions(
    spec: &Spec,
    cluster: &kilonova_metadata::policies::ClusterData,
) -> Result<(), ClientError> {
    let Ok(name) = kilonova_metadata::TopicName::parse(&spec.topic) else {
        return Ok(());
    };
    if name.partition().is_none() {
        return Ok(());
    }
    let base = name.partitioned_topic();
    let partitions = match spec.broker.resources().topic(&base).await {
        Ok(Some(t)) if t.partitions > 0 => t.partitions,
        _ => return Ok(()),
    };
    let failed = |message: String| ClientError::Connect {
        addr: cluster.service_url.clone(),
        message,
    };
    let url = format!(
        "{}/admin/v2/{}/partitions",
        cluster.service_url.trim_end_matches('/'),
        base.to_string().replacen("://", "/", 1)
    );
    let mut http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CONNECT_TIMEOUT);
    if url.starts_with("https://") {
        http = http.tls_backend_preconfigured(
            admin_tls(spec.broker.config().replication_tls_trust_certs.as_deref())
                .map_err(failed)?,
        );
    }
    let http = http.build().map_err(|e| failed(e.to_string()))?;
    let mut request = http.put(&url).body(partitions.to_string());
    request = request.header("Content-Type", "application/json");
    if let Some(token) = spec.broker.config().replication_token(&spec.remote) {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| failed(format!("creating the partitioned topic: {e}")))?;
    match response.status().as_u16() {
        200..=299 => {
            tracing::info!(topic = %base, remote = %spec.remote, partitions, "partitioned topic created on the remote cluster");
            Ok(())
        }
        409 => Ok(()),
        status => Err(failed(format!(
            "creating the partitioned topic {base}: HTTP {status}: {}",
            response.text().await.unwrap_or_default()
        ))),
    }
}

/// TLS for a remote's https admin URL: the configured CA certificates, or
/// none configured, refused (a private CA is the norm between clusters).
pub(crate) fn admin_tls(
    trust_certs: Option<&std::path::Path>,
) -> Result<tokio_rustls::rustls::ClientConfig, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let path = trust_certs.ok_or("an https serviceUrl needs replication_tls_trust_certs")?;
    let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| bad(&e))
}

enum Pump {
    TopicGone,
    Lost(ClientError),
    /// Nothing to send for the idle timeout.
    Idle,
}

/// One connection's terms: its epoch, what the remote already had, how
/// long it may stay idle.
struct Session {
    epoch: u64,
    last_stored: Option<u64>,
    idle: Duration,
}

type Confirmation = BoxFuture<'static, Result<(Position, u64, u32), ClientError>>;

/// Sends what the topic feeds until the connection or the topic goes.
async fn pump(
    spec: &Spec,
    local: &str,
    session: Session,
    producer: &Producer,
    feed: &mut mpsc::UnboundedReceiver<Feed>,
    reports: &mpsc::UnboundedSender<Report>,
    stats: &ReplicatorStats,
) -> Pump {
    let Session {
        epoch,
        last_stored,
        idle,
    } = session;
    let mut confirmations: FuturesOrdered<Confirmation> = FuturesOrdered::new();
    loop {
        tokio::select! {
            fed = feed.recv() => {
                let (e, entry) = match fed {
                    None => return Pump::TopicGone,
                    Some(Feed::Connect) => continue, // connected already
                    Some(Feed::Entry { epoch, entry }) => (epoch, entry),
                };
                if e != epoch {
                    continue; // fed for an earlier connection
                }
                let position = entry.position;
                let publish_ms = entry.publish_time_ms;
                match copy_for(position, &entry.data, local, &spec.remote) {
                    Copy::Send { sequence_id, metadata, payload }
                        if last_stored.is_none_or(|s| sequence_id > s) =>
                    {
                        let count = frame::message_count(&metadata);
                        let bytes = payload.len() as u64;
                        match producer.send_entry(sequence_id, sequence_id, *metadata, payload).await {
                            Ok(receipt) => {
                                stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
                                confirmations.push_back(
                                    receipt.map(move |r| r.map(|_| (position, publish_ms, count))).boxed(),
                                );
                            }
                            Err(e) => return Pump::Lost(e),
                        }
                    }
                    // Not for this remote, or already there.
                    _ => confirmations.push_back(future::ready(Ok((position, publish_ms, 0))).boxed()),
                }
            }
            Some(done) = confirmations.next(), if !confirmations.is_empty() => {
                let (mut upto, mut publish_ms, count) = match done {
                    Ok(d) => d,
                    Err(e) => return Pump::Lost(e),
                };
                let mut entries = 1;
                let mut messages = u64::from(count);
                // Everything else already confirmed goes in the same report.
                while let Some(Some(next)) = confirmations.next().now_or_never() {
                    match next {
                        Ok((p, t, c)) => {
                            upto = p;
                            publish_ms = t;
                            entries += 1;
                            messages += u64::from(c);
                        }
                        Err(e) => return Pump::Lost(e),
                    }
                }
                stats.msg_out.fetch_add(messages, Ordering::Relaxed);
                stats.last_confirmed_publish_ms.store(publish_ms, Ordering::Relaxed);
                let report = Report::Done { cluster: spec.remote.clone(), epoch, upto, entries };
                if reports.send(report).is_err() {
                    return Pump::TopicGone;
                }
            }
            _ = tokio::time::sleep(idle), if confirmations.is_empty() => return Pump::Idle,
        }
    }
}

#[cfg(test)]
mod tests;
