//! `kilonova standalone`: the broker with embedded storage and metadata in
//! one process; and `kilonova broker`: the same broker as one of a cluster,
//! with its metadata in etcd (`[metadata]`), shared with the other brokers
//! (see `kilonova_broker::cluster`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio::sync::watch;

use kilonova_admin::server::AdminServer;
use kilonova_auth::tls::TlsConfig;
use kilonova_auth::{AuthConfig, Security};
use kilonova_broker::import_old_catalog;
use kilonova_broker::listeners::parse_listener_list;
use kilonova_broker::{
    accept_loop, AdvertisedListeners, Broker, BrokerConfig, ClusterSettings, ServiceUrls,
};
use kilonova_metadata::brokers::BrokerRecord;
use kilonova_metadata::policies::ClusterData;
use kilonova_metadata::{EmbeddedStore, Resources, SessionId, DEFAULT_SESSION_TTL};
use kilonova_storage::{DirLock, DirStateStore, SegmentStore, StoreConfig};

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
    /// Pulsar protocol over TLS (`pulsar+ssl://`), when `[tls]` has a certificate [default: 6651].
    #[arg(long, env = "KILONOVA_PULSAR_TLS_PORT")]
    pulsar_tls_port: Option<u16>,
    /// HTTPS port, when `[tls]` has a certificate [default: 8443].
    #[arg(long, env = "KILONOVA_HTTPS_PORT")]
    https_port: Option<u16>,
    /// Host name clients are told to connect to [default: the bind address].
    #[arg(long, env = "KILONOVA_ADVERTISED_ADDRESS")]
    advertised_address: Option<String>,
    /// Advertised listeners as Pulsar writes them,
    /// `name:pulsar://host:port[,name:pulsar+ssl://host:port…]`: a client
    /// naming a listener is told its URLs (replaces the file's
    /// `[advertised_listeners]`; the first name is the internal listener
    /// unless --internal-listener-name).
    #[arg(long, env = "KILONOVA_ADVERTISED_LISTENERS")]
    advertised_listeners: Option<String>,
    /// The advertised listener clients naming none are told [default: the
    /// only, or first listed, listener].
    #[arg(long, env = "KILONOVA_INTERNAL_LISTENER_NAME")]
    internal_listener_name: Option<String>,
    /// Kafka protocol port [default: 9092].
    #[arg(long, env = "KILONOVA_KAFKA_PORT")]
    kafka_port: Option<u16>,
    /// Kafka protocol over TLS, when `[tls]` has a certificate [default: 9093].
    #[arg(long, env = "KILONOVA_KAFKA_TLS_PORT")]
    kafka_tls_port: Option<u16>,
    /// Once serving, write the ports it listens on to this file as JSON
    /// (`{"pulsar":N,"http":N,"pulsar_tls":N|null,"https":N|null,"kafka":N|null,"kafka_tls":N|null}`), atomically:
    /// with ports given as 0 the system chooses them, and this says which.
    #[arg(long, env = "KILONOVA_PORTS_FILE")]
    ports_file: Option<PathBuf>,
}

/// Storage settings of the standalone process.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Data directories beside `<data_dir>/storage`, each with a journal of
    /// its own (one per disk): topics are spread over all of them.
    pub more_dirs: Vec<PathBuf>,
    /// Size each journal file is preallocated to.
    pub log_file_mib: u64,
    /// How long a group commit may wait for more appends (0: write at once).
    pub group_commit_max_delay_us: u64,
    /// How often GC compacts mostly-dead journal files and reclaims dead
    /// ones (the journal also reclaims dead files at each roll).
    pub gc_interval_secs: u64,
    /// Dead journal files kept for reuse (0: deleted at once, so disk space returns).
    pub recycle_files: usize,
    /// The most GC's compaction copies per second (0: unlimited).
    pub gc_max_bytes_per_sec: u64,
    /// Journal writes bypass the page cache (`O_DIRECT`) where the file
    /// system allows it.
    pub direct_io: bool,
    /// A journal file made ahead of need is written with zeros when the one
    /// before it lasted at least this many seconds (0: never).
    pub zero_fill_after_secs: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            more_dirs: Vec::new(),
            log_file_mib: 128,
            group_commit_max_delay_us: 0,
            gc_interval_secs: 30,
            recycle_files: 16,
            gc_max_bytes_per_sec: 64 << 20,
            direct_io: true,
            zero_fill_after_secs: 10,
        }
    }
}

/// Where the metadata lives: `embedded` (standalone) or `etcd` (a cluster).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetadataBackend {
    #[default]
    Embedded,
    Etcd,
}

/// The `[metadata]` table.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataSettings {
    pub backend: MetadataBackend,
    /// How long the broker's session outlives its last keep-alive: a broker
    /// that dies loses its bundles (and its registration) after this long.
    pub session_ttl_secs: u64,
    /// The etcd cluster (`backend = "etcd"`), as `[metadata.etcd]`.
    pub etcd: kilonova_etcd::EtcdConfig,
}

impl Default for MetadataSettings {
    fn default() -> Self {
        MetadataSettings {
            backend: MetadataBackend::Embedded,
            session_ttl_secs: 10,
            etcd: kilonova_etcd::EtcdConfig::default(),
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
    pub pulsar_tls_port: u16,
    pub https_port: u16,
    /// Serve the plain (non-TLS) ports too; with TLS, `false` leaves only the TLS ones.
    pub plain_ports_enabled: bool,
    pub advertised_address: Option<String>,
    /// Advertised listeners: name → its `pulsar://host:port` and/or
    /// `pulsar+ssl://host:port` URL (Pulsar's `advertisedListeners`).
    pub advertised_listeners: BTreeMap<String, Vec<String>>,
    /// The listener clients naming none are told (Pulsar's `internalListenerName`).
    pub internal_listener_name: Option<String>,
    /// Where to write the ports once serving (see `--ports-file`).
    pub ports_file: Option<PathBuf>,
    pub broker: BrokerConfig,
    pub metadata: MetadataSettings,
    pub storage: StorageSettings,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    /// Tiered storage: the object store sealed segments are offloaded to.
    pub offload: kilonova_broker::tiering::OffloadSettings,
    /// The Kafka listener.
    pub kafka: KafkaConfig,
}

/// The `[kafka]` table: the Kafka protocol over the same topics (docs/kafka.md).
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Serve the Kafka protocol (standalone and cluster brokers; with authentication on,
    /// clients authenticate with SASL/PLAIN, a token as the password).
    pub enabled: bool,
    pub port: u16,
    /// Kafka over TLS, when `[tls]` has a certificate.
    pub tls_port: u16,
    /// Where Kafka topic names live: Kafka topic `t` is
    /// `persistent://<namespace>/t`.
    pub namespace: String,
    /// The retention (minutes, -1 forever) a topic created by a Kafka client
    /// gets as its own policy: Kafka's `log.retention.hours=168` by default;
    /// 0 leaves such topics to the namespace's retention.
    pub retention_minutes: i32,
    /// How long an empty consumer group's first rebalance waits for more
    /// members (Kafka's `group.initial.rebalance.delay.ms`).
    pub group_initial_rebalance_delay_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            enabled: true,
            port: 9092,
            tls_port: 9093,
            namespace: "public/default".into(),
            retention_minutes: 7 * 24 * 60,
            group_initial_rebalance_delay_ms: 3000,
        }
    }
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig {
            data_dir: PathBuf::from("./data"),
            bind_address: "127.0.0.1".into(),
            pulsar_port: 6650,
            http_port: 8080,
            pulsar_tls_port: 6651,
            https_port: 8443,
            plain_ports_enabled: true,
            advertised_address: None,
            advertised_listeners: BTreeMap::new(),
            internal_listener_name: None,
            ports_file: None,
            broker: BrokerConfig::default(),
            metadata: MetadataSettings::default(),
            storage: StorageSettings::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            offload: Default::default(),
            kafka: KafkaConfig::default(),
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
    if let Some(p) = args.pulsar_tls_port {
        c.pulsar_tls_port = p;
    }
    if let Some(p) = args.https_port {
        c.https_port = p;
    }
    if let Some(a) = &args.advertised_address {
        c.advertised_address = Some(a.clone());
    }
    if let Some(list) = &args.advertised_listeners {
        let (table, first) = parse_listener_list(list).context("--advertised-listeners")?;
        c.advertised_listeners = table;
        c.internal_listener_name = first;
    }
    if let Some(n) = &args.internal_listener_name {
        c.internal_listener_name = Some(n.clone());
    }
    if let Some(p) = &args.ports_file {
        c.ports_file = Some(p.clone());
    }
    if let Some(p) = args.kafka_port {
        c.kafka.port = p;
    }
    if let Some(p) = args.kafka_tls_port {
        c.kafka.tls_port = p;
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

/// Which process this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything embedded; serves every topic.
    Standalone,
    /// One broker of a cluster: metadata in etcd, serving the bundles it owns.
    ClusterBroker,
}

pub fn run(args: StandaloneArgs, role: Role) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    match (role, config.metadata.backend) {
        (Role::Standalone, MetadataBackend::Etcd) => anyhow::bail!(
            "[metadata] backend = \"etcd\" is for the brokers of a cluster: run `kilonova broker`"
        ),
        (Role::ClusterBroker, MetadataBackend::Embedded) => anyhow::bail!(
            "a cluster broker keeps its metadata in etcd: set [metadata] backend = \"etcd\" and [metadata.etcd] endpoints (see config/cluster-broker.toml)"
        ),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kilonova")
        .build()?;
    runtime.block_on(serve(config, role))
}

/// A listener bound to `host:port`, with what it is for in errors.
async fn bind(host: &str, port: u16, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let a = addr(host, port)?;
    tokio::net::TcpListener::bind(a)
        .await
        .with_context(|| format!("binding the {what} port {a}"))
}

/// The listeners of the ports the configuration serves.
struct Listeners {
    pulsar: Option<tokio::net::TcpListener>,
    http: Option<tokio::net::TcpListener>,
    pulsar_tls: Option<tokio::net::TcpListener>,
    https: Option<tokio::net::TcpListener>,
    kafka: Option<tokio::net::TcpListener>,
    kafka_tls: Option<tokio::net::TcpListener>,
}

async fn listen(config: &StandaloneConfig) -> anyhow::Result<Listeners> {
    let host = &config.bind_address;
    let tls = config.tls.enabled();
    if !tls && !config.plain_ports_enabled {
        anyhow::bail!(
            "plain_ports_enabled = false needs [tls] with a certificate: no port would serve"
        );
    }
    let plain = config.plain_ports_enabled;
    Ok(Listeners {
        pulsar: match plain {
            true => Some(bind(host, config.pulsar_port, "Pulsar").await?),
            false => None,
        },
        http: match plain {
            true => Some(bind(host, config.http_port, "HTTP").await?),
            false => None,
        },
        pulsar_tls: match tls {
            true => Some(bind(host, config.pulsar_tls_port, "Pulsar TLS").await?),
            false => None,
        },
        https: match tls {
            true => Some(bind(host, config.https_port, "HTTPS").await?),
            false => None,
        },
        kafka: match plain && config.kafka.enabled {
            true => Some(bind(host, config.kafka.port, "Kafka").await?),
            false => None,
        },
        kafka_tls: match tls && config.kafka.enabled {
            true => Some(bind(host, config.kafka.tls_port, "Kafka TLS").await?),
            false => None,
        },
    })
}

fn port_of(l: &Option<tokio::net::TcpListener>) -> anyhow::Result<Option<u16>> {
    Ok(match l {
        Some(l) => Some(l.local_addr()?.port()),
        None => None,
    })
}

/// The ports a standalone listens on (`None`: that listener is off), as the
/// ports file holds them.
#[derive(Debug, serde::Serialize)]
struct Ports {
    pulsar: Option<u16>,
    http: Option<u16>,
    pulsar_tls: Option<u16>,
    https: Option<u16>,
    kafka: Option<u16>,
    kafka_tls: Option<u16>,
}

/// Writes `ports` to `path` atomically (a temporary file beside it, then a
/// rename): a reader sees no file or the whole of it, never a part.
pub(crate) fn write_ports_file(path: &Path, ports: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_string(ports)?;
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing the ports file {}", path.display()))
}

async fn serve(config: StandaloneConfig, role: Role) -> anyhow::Result<()> {
    // Before anything in the data directory is read or written, and before any
    // port is bound: a second process on a live data dir would rewrite the
    // first one's storage checkpoint and lose what it acknowledged.
    let _data_dir_lock = DirLock::acquire(&config.data_dir)?;
    // Keys and certificates first: a bad one stops the start before anything opens.
    let security = Security::from_config(&config.auth).context("the [auth] settings")?;
    let tls = match config.tls.enabled() {
        true => Some(
            kilonova_auth::tls::server_config(&config.tls, &[]).context("the [tls] settings")?,
        ),
        false => None,
    };
    let https_tls = match config.tls.enabled() {
        true => Some(
            kilonova_auth::tls::server_config(&config.tls, &[b"http/1.1"])
                .context("the [tls] settings")?,
        ),
        false => None,
    };
    let listener_urls = advertised_listeners(&config)?;
    // An entry is a whole message plus its headers.
    let max_entry_bytes = config.broker.max_frame_bytes();
    let store = open_store(&config.data_dir, &config.storage, max_entry_bytes)?;
    let state = Arc::new(DirStateStore::open(config.data_dir.join("state"))?);
    reclaim_orphans(&store, &state).await;
    let listeners = listen(&config).await?;
    let advertised = config
        .advertised_address
        .clone()
        .unwrap_or_else(|| config.bind_address.clone());
    let (pulsar_port, http_port) = (port_of(&listeners.pulsar)?, port_of(&listeners.http)?);
    let (pulsar_tls_port, https_port) =
        (port_of(&listeners.pulsar_tls)?, port_of(&listeners.https)?);
    let http_url = http_port.map(|p| format!("http://{advertised}:{p}"));
    let https_url = https_port.map(|p| format!("https://{advertised}:{p}"));
    let (kafka_port, kafka_tls_port) = (port_of(&listeners.kafka)?, port_of(&listeners.kafka_tls)?);
    let urls = ServiceUrls {
        kafka: kafka_port.map(|p| format!("{advertised}:{p}")),
        kafka_tls: kafka_tls_port.map(|p| format!("{advertised}:{p}")),
        plain: pulsar_port.map(|p| format!("pulsar://{advertised}:{p}")),
        tls: pulsar_tls_port.map(|p| format!("pulsar+ssl://{advertised}:{p}")),
        http: http_url.clone(),
        https: https_url.clone(),
        listeners: listener_urls,
    };
    // What clients naming no listener are told: the internal listener's
    // URLs when listeners are configured.
    let default_urls = urls.broker_urls(None)?;
    let cluster_data = ClusterData {
        service_url: http_url.clone().or(https_url.clone()).unwrap_or_default(),
        service_url_tls: https_url.clone(),
        broker_service_url: default_urls
            .plain
            .clone()
            .or(default_urls.tls.clone())
            .unwrap_or_default(),
        broker_service_url_tls: default_urls.tls.clone(),
    };
    let web_port = http_port.or(https_port).unwrap_or_default();
    let broker_id = format!("{advertised}:{web_port}");
    let (resources, session) = match role {
        Role::Standalone => {
            let resources =
                open_metadata(&config.data_dir, &config.broker.cluster_name, &cluster_data).await?;
            import_old_catalog(state.as_ref(), &resources, &config.broker.cluster_name).await?;
            // This broker's liveness: an ephemeral key kept alive by a session.
            let session = resources.store().open_session(DEFAULT_SESSION_TTL).await?;
            let record = BrokerRecord {
                session: session.0,
                ..BrokerRecord::default()
            };
            resources
                .register_broker(&config.broker.cluster_name, &broker_id, &record, session)
                .await?;
            (resources, Some(session))
        }
        Role::ClusterBroker => {
            let resources = open_etcd(&config.metadata.etcd).await?;
            resources
                .bootstrap(&config.broker.cluster_name, &cluster_data)
                .await
                .context("creating the cluster, tenant public and namespace public/default")?;
            (resources, None)
        }
    };
    let keep_alive = session.map(|s| tokio::spawn(keep_session_alive(resources.clone(), s)));
    let broker = Broker::new(
        config.broker,
        store.clone(),
        state,
        resources.clone(),
        urls.clone(),
        security,
        kilonova_broker::clock::system(),
    )?;

    if role == Role::ClusterBroker {
        let ttl = Duration::from_secs(config.metadata.session_ttl_secs.max(1));
        broker
            .join_cluster(ClusterSettings {
                broker_id: broker_id.clone(),
                session_ttl: ttl,
            })
            .await
            .context("joining the cluster")?;
    }
    // Measures the load (standalone too: `pulsar_lb_*`, the load report);
    // in a cluster, reports it and takes part in the leader's election.
    tokio::spawn(kilonova_broker::cluster::load_manager::run(broker.clone()));

    match kilonova_broker::tiering::Tiering::open(&config.offload) {
        Ok(Some(t)) => {
            if role == Role::ClusterBroker {
                broker
                    .enable_shared_log(t.bucket().clone())
                    .context("the shared data path")?;
            }
            broker.enable_tiering(t)
        }
        Ok(None) if role == Role::ClusterBroker => tracing::warn!(
            "no [offload] object store: this cluster broker keeps its topics' data in its own \
             journal, so a topic that moves to another broker starts empty there (docs/cluster.md)"
        ),
        Ok(None) => {}
        Err(e) => anyhow::bail!("the [offload] object store: {e}"),
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let (close_tx, close_rx) = watch::channel(false);
    let mut servers = Vec::new();
    if kafka_port.or(kafka_tls_port).is_some() {
        let settings = kilonova_broker::KafkaSettings {
            namespace: config.kafka.namespace.clone(),
            advertised_host: advertised.clone(),
            retention_minutes: (config.kafka.retention_minutes != 0)
                .then_some(config.kafka.retention_minutes),
            group_initial_rebalance_delay: Duration::from_millis(
                config.kafka.group_initial_rebalance_delay_ms,
            ),
        };
        tracing::info!(
            port = kafka_port,
            tls_port = kafka_tls_port,
            namespace = %settings.namespace,
            "serving Kafka"
        );
        let service = kilonova_broker::KafkaService::start(&broker, settings);
        let kafka_listeners = [
            (listeners.kafka, kafka_port, None),
            (listeners.kafka_tls, kafka_tls_port, tls.clone()),
        ];
        for (listener, port, tls) in kafka_listeners {
            if let (Some(l), Some(port)) = (listener, port) {
                servers.push(tokio::spawn(kilonova_broker::kafka_accept_loop(
                    broker.clone(),
                    l,
                    port,
                    service.clone(),
                    tls,
                    stop_rx.clone(),
                    close_rx.clone(),
                )));
            }
        }
    }
    let pulsar_listeners = [(listeners.pulsar, None), (listeners.pulsar_tls, tls)];
    for (listener, tls) in pulsar_listeners {
        if let Some(l) = listener {
            servers.push(tokio::spawn(accept_loop(
                broker.clone(),
                l,
                tls,
                stop_rx.clone(),
                close_rx.clone(),
            )));
        }
    }
    let admin = AdminServer::new(kilonova_admin::router(broker.clone()), broker.config());
    if let Some(http) = listeners.http {
        servers.push(tokio::spawn(serve_admin(
            admin.clone(),
            http,
            None,
            stop_rx.clone(),
            "HTTP",
        )));
    }
    if let (Some(https), Some(tls)) = (listeners.https, https_tls) {
        servers.push(tokio::spawn(serve_admin(
            admin,
            https,
            Some(tls),
            stop_rx.clone(),
            "HTTPS",
        )));
    }
    if broker.config().cache_eviction_time_threshold_ms > 0 {
        let every = Duration::from_millis(broker.config().cache_eviction_interval_ms.max(1));
        tokio::spawn(cache_eviction_loop(broker.clone(), every, stop_rx.clone()));
    }
    let gc = tokio::spawn(gc_loop(
        store,
        Duration::from_secs(config.storage.gc_interval_secs.max(1)),
        stop_rx,
    ));
    let stop = StopSignals::listen();
    if let Some(path) = &config.ports_file {
        let ports = Ports {
            pulsar: pulsar_port,
            http: http_port,
            pulsar_tls: pulsar_tls_port,
            https: https_port,
            kafka: kafka_port,
            kafka_tls: kafka_tls_port,
        };
        write_ports_file(path, &ports)?;
    }
    for (name, l) in broker.service_urls().listeners.iter() {
        tracing::info!(
            listener = name,
            pulsar = l.plain.as_deref().unwrap_or("none"),
            pulsar_tls = l.tls.as_deref().unwrap_or("none"),
            internal = broker.service_urls().listeners.internal().map(|(n, _)| n) == Some(name),
            "advertised listener"
        );
    }
    tracing::info!(
        pulsar = urls.plain.as_deref().unwrap_or("off"),
        pulsar_tls = urls.tls.as_deref().unwrap_or("off"),
        http = http_url.as_deref().unwrap_or("off"),
        https = https_url.as_deref().unwrap_or("off"),
        authentication = broker.security().authentication_enabled(),
        authorization = broker.security().authorizer().enabled(),
        data_dir = %config.data_dir.display(),
        role = match role {
            Role::Standalone => "standalone",
            Role::ClusterBroker => "cluster broker",
        },
        "kilonova is serving"
    );

    stop.recv().await;
    tracing::info!("shutting down: closing producers and consumers, persisting cursors");
    broker.withdraw_from_cluster().await;
    let _ = stop_tx.send(true);
    let shutdown = broker.shutdown().await;
    let _ = close_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    let _ = gc.await;
    broker.leave_cluster().await;
    if let (Some(keep_alive), Some(session)) = (keep_alive, session) {
        keep_alive.abort();
        if let Err(e) = resources.store().close_session(session).await {
            tracing::warn!(error = %e, "closing the metadata session failed");
        }
    }
    shutdown.context("shutting down")?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// The configuration's advertised listeners, checked against the ports it
/// serves (a listener's URL for a port not served is refused).
fn advertised_listeners(config: &StandaloneConfig) -> anyhow::Result<AdvertisedListeners> {
    let listeners = AdvertisedListeners::new(
        &config.advertised_listeners,
        config.internal_listener_name.as_deref(),
    )
    .context("the advertised listeners")?;
    listeners
        .check_served(config.plain_ports_enabled, config.tls.enabled())
        .context("the advertised listeners")?;
    Ok(listeners)
}

/// Serves the admin API on `listener` (over TLS with `tls`) until `stop`
/// changes, within the admin server's connection cap and timeouts.
async fn serve_admin(
    admin: AdminServer,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: watch::Receiver<bool>,
    what: &'static str,
) {
    admin.serve(listener, tls, what, stop).await;
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

/// Connects to etcd, where a cluster's brokers share their metadata.
async fn open_etcd(config: &kilonova_etcd::EtcdConfig) -> anyhow::Result<Resources> {
    let store = kilonova_etcd::EtcdStore::connect(config)
        .await
        .with_context(|| format!("connecting to etcd at {}", config.endpoints.join(",")))?;
    Ok(Resources::new(Arc::new(store)))
}

fn open_store(
    data_dir: &Path,
    s: &StorageSettings,
    max_entry_bytes: usize,
) -> anyhow::Result<SegmentStore> {
    let mut sc = StoreConfig::new(data_dir.join("storage"));
    sc.more_dirs = s.more_dirs.clone();
    sc.max_entry_bytes = sc.max_entry_bytes.max(max_entry_bytes);
    sc.log_file_bytes = s.log_file_mib.max(1) << 20;
    sc.recycle_files = s.recycle_files;
    sc.gc_max_bytes_per_sec = s.gc_max_bytes_per_sec;
    sc.group_commit_max_delay_us = s.group_commit_max_delay_us;
    sc.direct_io = s.direct_io;
    sc.zero_fill_after =
        (s.zero_fill_after_secs > 0).then(|| Duration::from_secs(s.zero_fill_after_secs));
    let started = std::time::Instant::now();
    let store = SegmentStore::open(sc).context("opening storage")?;
    let stats = store.stats();
    tracing::info!(
        dirs = store.dirs().len(),
        replayed_files = stats.recovery_replayed_files,
        replayed_bytes = stats.recovery_replayed_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "storage opened"
    );
    Ok(store)
}

/// Deletes segments no log lists (a crash between creating a segment and
/// saving its log's metadata), before any log opens. What is reclaimed is
/// logged by the storage layer; a failure reclaims nothing and stops nothing.
async fn reclaim_orphans(store: &SegmentStore, state: &Arc<DirStateStore>) {
    let (store, state) = (store.clone(), state.clone());
    let reclaimed =
        tokio::task::spawn_blocking(move || kilonova_storage::reclaim_orphans(&store, &*state))
            .await;
    match reclaimed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "storage not reconciled with the logs: nothing reclaimed")
        }
        Err(e) => tracing::warn!(error = %e, "storage reconciliation did not finish"),
    }
}

/// Reclaims dead journal files now and then (off the async workers: it does file I/O).
/// Evicts cached entries by age (`cache_eviction_time_threshold_ms`) every `every`.
async fn cache_eviction_loop(broker: Broker, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => broker.evict_old_cached_entries(),
            _ = stop.changed() => return,
        }
    }
}

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

/// SIGTERM and Ctrl-C (SIGINT), listened for from before the server says
/// it serves (its ports file): a stop that comes any time after is seen. A
/// listener made later could miss one: tokio installs the handler before it
/// subscribes the listener, and drops a signal its driver hands on while no
/// listener is subscribed — a broker stopped right after it started kept
/// serving.
pub(crate) struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Starts listening (inside the runtime).
    pub(crate) fn listen() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(signal = name, error = %e, "cannot listen for this signal");
                None
            }
        };
        StopSignals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Resolves at the first SIGTERM or SIGINT since [`Self::listen`].
    pub(crate) async fn recv(mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => {}
            _ = one(&mut self.int) => {}
        }
    }
}

#[cfg(test)]
mod example_config;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_file_is_json_with_null_for_listeners_that_are_off_and_no_temp_file_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ports.json");
        std::fs::write(&path, "stale").unwrap();
        let ports = Ports {
            pulsar: Some(6650),
            http: Some(8080),
            pulsar_tls: None,
            https: Some(8443),
            kafka: Some(9092),
            kafka_tls: None,
        };
        write_ports_file(&path, &ports).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"pulsar": 6650, "http": 8080, "pulsar_tls": null, "https": 8443, "kafka": 9092, "kafka_tls": null})
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ports.json"]);
    }
}
