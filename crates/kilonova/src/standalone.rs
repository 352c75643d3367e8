//! `kilonova standalone`: the broker with embedded storage and metadata in one process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio::sync::watch;

use kilonova_broker::import_old_catalog;
use kilonova_broker::{accept_loop, Broker, BrokerConfig};
use kilonova_metadata::policies::ClusterData;
use kilonova_metadata::{EmbeddedStore, Resources, SessionId, DEFAULT_SESSION_TTL};
use kilonova_storage::{DirStateStore, SegmentStore, StoreConfig};

#[derive(clap::Args, Debug)]
pub struct StandaloneArgs {
    /// TOML configuration file (flags and KILONOVA_* variables override it).
    #[arg(long, env = "KILONOVA_CONFIG")]
    config: Option<PathBuf>,
    /// Where storage and metadata live [default: ./data].
    #[arg(long, env = "KILONOVA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "KILONOVA_BIND_ADDRESS")]
    bind_address: Option<String>,
    /// Pulsar binary protocol port [default: 6650].
    #[arg(long, env = "KILONOVA_PULSAR_PORT")]
    pulsar_port: Option<u16>,
    /// HTTP port (admin API, health) [default: 8080].
    #[arg(long, env = "KILONOVA_HTTP_PORT")]
    http_port: Option<u16>,
    /// Host name clients are told to connect to [default: the bind address].
    #[arg(long, env = "KILONOVA_ADVERTISED_ADDRESS")]
    advertised_address: Option<String>,
}

/// Storage settings of the standalone process.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Size each journal file is preallocated to.
    pub log_file_mib: u64,
    /// How long a group commit may wait for more appends (0: write at once).
    pub group_commit_max_delay_us: u64,
    /// How often dead journal files are reclaimed.
    pub gc_interval_secs: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            log_file_mib: 128,
            group_commit_max_delay_us: 0,
            gc_interval_secs: 30,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandaloneConfig {
    pub data_dir: PathBuf,
    pub bind_address: String,
    pub pulsar_port: u16,
    pub http_port: u16,
    pub advertised_address: Option<String>,
    pub broker: BrokerConfig,
    pub storage: StorageSettings,
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig {
            data_dir: PathBuf::from("./data"),
            bind_address: "127.0.0.1".into(),
            pulsar_port: 6650,
            http_port: 8080,
            advertised_address: None,
            broker: BrokerConfig::default(),
            storage: StorageSettings::default(),
        }
    }
}

fn load_config(args: &StandaloneArgs) -> anyhow::Result<StandaloneConfig> {
    let mut c: StandaloneConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => StandaloneConfig::default(),
    };
    if let Some(d) = &args.data_dir {
        c.data_dir = d.clone();
    }
    if let Some(a) = &args.bind_address {
        c.bind_address = a.clone();
    }
    if let Some(p) = args.pulsar_port {
        c.pulsar_port = p;
    }
    if let Some(p) = args.http_port {
        c.http_port = p;
    }
    if let Some(a) = &args.advertised_address {
        c.advertised_address = Some(a.clone());
    }
    Ok(c)
}

fn addr(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {host}"))
}

pub fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kilonova")
        .build()?;
    runtime.block_on(serve(config))
}

async fn serve(config: StandaloneConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    // An entry is a whole message plus its headers.
    let max_entry_bytes = config.broker.max_frame_bytes();
    let store = open_store(&config.data_dir, &config.storage, max_entry_bytes)?;
    let state = Arc::new(DirStateStore::open(config.data_dir.join("state"))?);
    let pulsar_addr = addr(&config.bind_address, config.pulsar_port)?;
    let http_addr = addr(&config.bind_address, config.http_port)?;
    let pulsar = tokio::net::TcpListener::bind(pulsar_addr)
        .await
        .with_context(|| format!("binding the Pulsar port {pulsar_addr}"))?;
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding the HTTP port {http_addr}"))?;
    let advertised = config
        .advertised_address
        .clone()
        .unwrap_or_else(|| config.bind_address.clone());
    let pulsar_port = pulsar.local_addr()?.port();
    let service_url = format!("pulsar://{advertised}:{pulsar_port}");
    let http_port = http.local_addr()?.port();
    let resources = open_metadata(
        &config.data_dir,
        &config.broker.cluster_name,
        &ClusterData {
            service_url: format!("http://{advertised}:{http_port}"),
            broker_service_url: service_url.clone(),
            ..ClusterData::default()
        },
    )
    .await?;
    import_old_catalog(state.as_ref(), &resources, &config.broker.cluster_name).await?;
    // This broker's liveness: an ephemeral key kept alive by a session.
    let session = resources.store().open_session(DEFAULT_SESSION_TTL).await?;
    resources
        .register_broker(
            &config.broker.cluster_name,
            &format!("{advertised}:{http_port}"),
            session,
        )
        .await?;
    let keep_alive = tokio::spawn(keep_session_alive(resources.clone(), session));
    let broker = Broker::new(
        config.broker,
        store.clone(),
        state,
        resources.clone(),
        service_url.clone(),
    )?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (close_tx, close_rx) = watch::channel(false);
    let server = tokio::spawn(accept_loop(
        broker.clone(),
        pulsar,
        stop_rx.clone(),
        close_rx,
    ));
    let mut http_stop = stop_rx.clone();
    let admin = kilonova_admin::router(broker.clone());
    let http_server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = http_stop.changed().await;
        };
        if let Err(e) = axum::serve(http, admin)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    let gc = tokio::spawn(gc_loop(
        store,
        Duration::from_secs(config.storage.gc_interval_secs.max(1)),
        stop_rx,
    ));
    tracing::info!(
        pulsar = %pulsar_addr,
        http = %http_addr,
        %service_url,
        data_dir = %config.data_dir.display(),
        "kilonova standalone is serving"
    );

    wait_for_signal().await;
    tracing::info!("shutting down: closing producers and consumers, persisting cursors");
    let _ = stop_tx.send(true);
    broker.shutdown().await;
    let _ = close_tx.send(true);
    let _ = server.await;
    let _ = http_server.await;
    let _ = gc.await;
    keep_alive.abort();
    if let Err(e) = resources.store().close_session(session).await {
        tracing::warn!(error = %e, "closing the metadata session failed");
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Keeps the broker's metadata session (and so its registration) alive.
async fn keep_session_alive(resources: Resources, session: SessionId) {
    let mut every = tokio::time::interval(DEFAULT_SESSION_TTL / 3);
    loop {
        every.tick().await;
        if let Err(e) = resources.store().keep_alive(session).await {
            tracing::error!(error = %e, "the broker's metadata session expired");
            return;
        }
    }
}

/// Opens the embedded metadata store and creates what a fresh standalone has
/// (this cluster, `public`, `public/default`).
async fn open_metadata(
    data_dir: &Path,
    cluster: &str,
    data: &ClusterData,
) -> anyhow::Result<Resources> {
    let path = data_dir.join("metadata").join("metadata.redb");
    let store = EmbeddedStore::open(&path)
        .with_context(|| format!("opening the metadata store {}", path.display()))?;
    let resources = Resources::new(Arc::new(store));
    resources
        .bootstrap(cluster, data)
        .await
        .context("creating the standalone cluster, tenant and namespace")?;
    Ok(resources)
}

fn open_store(
    data_dir: &Path,
    s: &StorageSettings,
    max_entry_bytes: usize,
) -> anyhow::Result<SegmentStore> {
    let mut sc = StoreConfig::new(data_dir.join("storage"));
    sc.max_entry_bytes = sc.max_entry_bytes.max(max_entry_bytes);
    sc.log_file_bytes = s.log_file_mib.max(1) << 20;
    sc.group_commit_max_delay_us = s.group_commit_max_delay_us;
    let started = std::time::Instant::now();
    let store = SegmentStore::open(sc).context("opening storage")?;
    let stats = store.stats();
    tracing::info!(
        replayed_files = stats.recovery_replayed_files,
        replayed_bytes = stats.recovery_replayed_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "storage opened"
    );
    Ok(store)
}

/// Reclaims dead journal files now and then (off the async workers: it does file I/O).
async fn gc_loop(store: SegmentStore, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.gc()).await {
                    Ok(Ok(r)) if r.files_removed + r.files_recycled > 0 => {
                        tracing::info!(removed = r.files_removed, recycled = r.files_recycled, moved = r.entries_moved, "storage GC");
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "storage GC failed"),
                    _ => {}
                }
            }
            _ = stop.changed() => return,
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
