//! `kilonova federation`: one logical Kafka cluster over many physical
//! ones (kilonova_federation; docs/federation.md). `controller` and `proxy`
//! run the two roles; the other verbs talk to a controller's HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kilonova_federation::api::{
    AddCluster, Changed, ControllerClient, CreateTopic, NameAnswer, SetName,
};
use kilonova_federation::controller::{Controller, ControllerConfig, Status};
use kilonova_federation::map::KeyPolicy;
use kilonova_federation::proxy::{Proxy, ProxyConfig};
use kilonova_metadata::{EmbeddedStore, MetadataStore};

#[derive(clap::Subcommand, Debug)]
pub enum FederationCommand {
    /// Run a controller: the federation's map in a metadata store, pushed
    /// to the proxies.
    Controller(ControllerArgs),
    /// Run a proxy: Kafka clients connect to it as to a broker.
    Proxy(ProxyArgs),
    /// Physical clusters: add, drain, remove.
    Clusters {
        #[command(subcommand)]
        verb: ClustersVerb,
        #[command(flatten)]
        at: At,
    },
    /// Logical topics: create, rebalance.
    Topics {
        #[command(subcommand)]
        verb: TopicsVerb,
        #[command(flatten)]
        at: At,
    },
    /// The name service: which proxy group a client id uses.
    Names {
        #[command(subcommand)]
        verb: NamesVerb,
        #[command(flatten)]
        at: At,
    },
    /// Clusters, states, topics and their partition map, proxies, lag.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: At,
    },
}

#[derive(clap::Args, Debug)]
pub struct At {
    /// The controller's URL (several, comma-separated: the first that answers).
    #[arg(
        long,
        env = "KILONOVA_FEDERATION_CONTROLLER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    controller: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClustersVerb {
    /// Add a physical cluster: logical topics gain its partitions; no data moves.
    Add {
        name: String,
        /// Its Kafka bootstrap addresses, `host:port[,host:port…]`.
        #[arg(long, value_delimiter = ',', required = true)]
        bootstrap: Vec<String>,
    },
    /// Make a cluster read-only: producers stop writing there at once,
    /// consumers read it until it is consumed or expired, then it is removed.
    Drain { name: String },
    /// Remove a drained cluster now (refused while it holds data, unless --force).
    Remove {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TopicsVerb {
    /// Create a logical topic with partitions on every active cluster.
    Create {
        name: String,
        /// Partitions on each cluster (now and on clusters added later).
        #[arg(long, default_value_t = 1)]
        partitions_per_cluster: u32,
        /// `keyed`: keys keep their partition across an expansion until
        /// `topics rebalance`; `spread`: producers use new partitions at once.
        #[arg(long, default_value = "keyed", value_parser = parse_key_policy)]
        key_policy: KeyPolicy,
    },
    /// Show a keyed topic's producers every partition (keys move now).
    Rebalance { name: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum NamesVerb {
    /// Map a client id (or SASL principal) to a proxy group.
    Set { client: String, group: String },
    /// The proxy group and proxies a client id uses.
    Get { client: String },
}

fn parse_key_policy(s: &str) -> Result<KeyPolicy, String> {
    match s {
        "keyed" => Ok(KeyPolicy::Keyed),
        "spread" => Ok(KeyPolicy::Spread),
        other => Err(format!("{other:?}: keyed or spread")),
    }
}

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// The federation's name (its keys live under /federation/NAME/).
    #[arg(long, env = "KILONOVA_FEDERATION_NAME", default_value = "federation")]
    name: String,
    /// Where the HTTP API listens.
    #[arg(
        long,
        env = "KILONOVA_FEDERATION_LISTEN",
        default_value = "127.0.0.1:7070"
    )]
    listen: SocketAddr,
    /// The URL other instances and proxies reach this one at [default: http://LISTEN].
    #[arg(long, env = "KILONOVA_FEDERATION_ADVERTISED_URL")]
    advertised_url: Option<String>,
    /// The embedded metadata store's directory (one instance); without
    /// --etcd this is where the map lives.
    #[arg(
        long,
        env = "KILONOVA_FEDERATION_DATA_DIR",
        default_value = "data/federation"
    )]
    data_dir: PathBuf,
    /// etcd endpoints (several instances share it; one leads).
    #[arg(long, env = "KILONOVA_FEDERATION_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The root of the keys in etcd.
    #[arg(
        long,
        env = "KILONOVA_FEDERATION_ETCD_ROOT",
        default_value = "/kilonova"
    )]
    etcd_root: String,
    /// How often the physical clusters are scanned (ms).
    #[arg(long, default_value_t = 2000)]
    scan_interval_ms: u64,
    /// Once serving, write `{"http":N}` to this file (with port 0, the
    /// system chose it).
    #[arg(long)]
    ports_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Unique among the federation's proxies [default: proxy-NODE_ID].
    #[arg(long, env = "KILONOVA_FEDERATION_PROXY_ID")]
    id: Option<String>,
    /// Its node id in Metadata answers (unique among the proxies).
    #[arg(long, env = "KILONOVA_FEDERATION_NODE_ID", default_value_t = 1)]
    node_id: i32,
    /// Its proxy group (the name service maps client ids to groups).
    #[arg(long, default_value = kilonova_federation::DEFAULT_GROUP)]
    group: String,
    /// Where producers connect.
    #[arg(long, default_value = "127.0.0.1:19092")]
    producer_listen: SocketAddr,
    /// Where consumers connect.
    #[arg(long, default_value = "127.0.0.1:19093")]
    consumer_listen: SocketAddr,
    /// The host clients are told to reach this proxy at [default: the listen address's].
    #[arg(long)]
    advertised_host: Option<String>,
    /// /metrics and /status.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// The controllers' URLs (the first that answers).
    #[arg(
        long,
        env = "KILONOVA_FEDERATION_CONTROLLER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    controller: Vec<String>,
    /// Kafka's group.initial.rebalance.delay.ms.
    #[arg(long, default_value_t = 3000)]
    group_initial_rebalance_delay_ms: u64,
    /// Client connections served at once; more are closed.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// The largest request accepted (bytes).
    #[arg(long, default_value_t = 8 << 20)]
    max_request_bytes: usize,
    /// The bytes of requests and answers one connection holds at once (a
    /// fetch reserves 16 MiB for its answer); past it the connection stops
    /// reading. Times --max-connections: the most the proxy holds.
    #[arg(long, default_value_t = 32 << 20)]
    max_connection_bytes: usize,
    /// Once bound, write `{"producer":N,"consumer":N,"http":N|null}` here.
    #[arg(long)]
    ports_file: Option<PathBuf>,
    /// Require SASL/PLAIN with a token as the password, checked with this
    /// HS256 secret key (`file:PATH`, `data:;base64,…`, as the broker's
    /// `token_secret_key`).
    #[arg(long, env = "KILONOVA_FEDERATION_TOKEN_SECRET_KEY")]
    token_secret_key: Option<String>,
    /// Require SASL/PLAIN with a token, checked with this RS256/ES256 public key.
    #[arg(long, env = "KILONOVA_FEDERATION_TOKEN_PUBLIC_KEY")]
    token_public_key: Option<String>,
    /// The token claim naming the role (the name service's SASL identity).
    #[arg(long, default_value = "sub")]
    token_auth_claim: String,
    /// The runtime's worker threads [default: one per core]. Where the
    /// proxy shares few cores with brokers or clients, fewer threads cost
    /// fewer hand-offs (docs/benchmarks.md).
    #[arg(long, env = "KILONOVA_FEDERATION_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

pub fn run(command: FederationCommand) -> anyhow::Result<()> {
    let workers = match &command {
        FederationCommand::Proxy(a) => a.worker_threads,
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
    let rt = builder
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        match command {
            FederationCommand::Controller(a) => controller(a).await,
            FederationCommand::Proxy(a) => proxy(a).await,
            FederationCommand::Clusters { verb, at } => clusters(verb, client(&at)).await,
            FederationCommand::Topics { verb, at } => topics(verb, client(&at)).await,
            FederationCommand::Names { verb, at } => names(verb, client(&at)).await,
            FederationCommand::Status { json, at } => status(json, client(&at)).await,
        }
    })
}

fn client(at: &At) -> ControllerClient {
    ControllerClient::new(at.controller.clone())
}

async fn controller(a: ControllerArgs) -> anyhow::Result<()> {
    let store: Arc<dyn MetadataStore> = if a.etcd.is_empty() {
        let path = a.data_dir.join("metadata.redb");
        std::fs::create_dir_all(&a.data_dir)
            .with_context(|| format!("creating {}", a.data_dir.display()))?;
        Arc::new(
            EmbeddedStore::open(&path)
                .with_context(|| format!("opening the metadata store {}", path.display()))?,
        )
    } else {
        let mut config = kilonova_etcd::EtcdConfig::new(a.etcd[0].clone());
        config.endpoints = a.etcd.clone();
        config.root = a.etcd_root.clone();
        Arc::new(
            kilonova_etcd::EtcdStore::connect(&config)
                .await
                .with_context(|| format!("connecting to etcd at {}", a.etcd.join(",")))?,
        )
    };
    let listener = Controller::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    let bound = listener.local_addr()?;
    let url = a
        .advertised_url
        .unwrap_or_else(|| format!("http://{bound}"));
    let config = ControllerConfig {
        name: a.name,
        advertised_url: url.clone(),
        scan_interval: Duration::from_millis(a.scan_interval_ms.max(100)),
    };
    let c = Controller::start(config, store)
        .await
        .context("starting the federation controller")?;
    if let Some(path) = &a.ports_file {
        crate::standalone::write_ports_file(path, &serde_json::json!({ "http": bound.port() }))?;
    }
    tracing::info!(%url, version = c.map().version, "federation controller serving");
    c.serve(listener).await.context("serving the HTTP API")
}

async fn proxy(a: ProxyArgs) -> anyhow::Result<()> {
    let authenticator = match (&a.token_secret_key, &a.token_public_key) {
        (None, None) => None,
        (secret, public) => {
            let auth = kilonova_auth::AuthConfig {
                authentication_enabled: true,
                token_secret_key: secret.clone().map(kilonova_auth::Secret::new),
                token_public_key: public.clone().map(kilonova_auth::Secret::new),
                token_auth_claim: a.token_auth_claim.clone(),
                ..Default::default()
            };
            let checker = kilonova_auth::TokenAuthenticator::from_config(&auth)
                .context("loading the token key")?;
            Some(Arc::new(checker))
        }
    };
    let config = ProxyConfig {
        id: a.id.unwrap_or_else(|| format!("proxy-{}", a.node_id)),
        group: a.group,
        node_id: a.node_id,
        producer_listen: a.producer_listen,
        consumer_listen: a.consumer_listen,
        advertised_host: a
            .advertised_host
            .unwrap_or_else(|| a.consumer_listen.ip().to_string()),
        controllers: a.controller,
        http_listen: a.http_listen,
        group_initial_rebalance_delay: Duration::from_millis(a.group_initial_rebalance_delay_ms),
        max_request_bytes: a.max_request_bytes,
        max_connections: a.max_connections,
        authenticator,
        max_connection_bytes: a.max_connection_bytes,
    };
    let proxy = Proxy::bind(config)
        .await
        .context("binding the proxy's ports")?;
    if let Some(path) = &a.ports_file {
        crate::standalone::write_ports_file(path, &proxy.ports())?;
    }
    proxy.run().await;
    Ok(())
}

fn changed(what: &str, c: Changed) {
    println!("{what} (map version {})", c.version);
}

async fn clusters(verb: ClustersVerb, c: ControllerClient) -> anyhow::Result<()> {
    match verb {
        ClustersVerb::Add { name, bootstrap } => {
            let body = serde_json::to_value(AddCluster {
                name: name.clone(),
                bootstrap,
            })?;
            let r: Changed = c.post("/federation/v1/clusters", body).await?;
            changed(&format!("cluster {name} added"), r);
        }
        ClustersVerb::Drain { name } => {
            let r: Changed = c
                .post(
                    &format!("/federation/v1/clusters/{name}/drain"),
                    serde_json::json!({}),
                )
                .await?;
            changed(
                &format!("cluster {name} is read-only: producers stop writing there"),
                r,
            );
        }
        ClustersVerb::Remove { name, force } => {
            let r: Changed = c
                .delete(&format!("/federation/v1/clusters/{name}?force={force}"))
                .await?;
            changed(&format!("cluster {name} removed"), r);
        }
    }
    Ok(())
}

async fn topics(verb: TopicsVerb, c: ControllerClient) -> anyhow::Result<()> {
    match verb {
        TopicsVerb::Create {
            name,
            partitions_per_cluster,
            key_policy,
        } => {
            let body = serde_json::to_value(CreateTopic {
                name: name.clone(),
                partitions_per_cluster,
                key_policy,
            })?;
            let r: Changed = c.post("/federation/v1/topics", body).await?;
            changed(&format!("topic {name} created"), r);
        }
        TopicsVerb::Rebalance { name } => {
            let r: Changed = c
                .post(
                    &format!("/federation/v1/topics/{name}/rebalance"),
                    serde_json::json!({}),
                )
                .await?;
            changed(&format!("topic {name}: producers see every partition"), r);
        }
    }
    Ok(())
}

async fn names(verb: NamesVerb, c: ControllerClient) -> anyhow::Result<()> {
    match verb {
        NamesVerb::Set { client, group } => {
            let body = serde_json::to_value(SetName {
                group: group.clone(),
            })?;
            let r: Changed = c
                .put(&format!("/federation/v1/names/{client}"), body)
                .await?;
            changed(&format!("{client} uses proxy group {group}"), r);
        }
        NamesVerb::Get { client } => {
            let r: NameAnswer = c.get(&format!("/federation/v1/names/{client}")).await?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
    }
    Ok(())
}

async fn status(json: bool, c: ControllerClient) -> anyhow::Result<()> {
    let s: Status = c.get("/federation/v1/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "federation {}: map version {}, leader {}",
        s.federation,
        s.version,
        s.leader.as_deref().unwrap_or("(none)")
    );
    println!("clusters:");
    for c in &s.clusters {
        let health = match (&c.health.reachable, &c.health.error) {
            (true, _) => "reachable".to_string(),
            (false, Some(e)) => format!("UNREACHABLE: {e}"),
            (false, None) => "not scanned yet".to_string(),
        };
        println!(
            "  {:<16} {:<10} {:<32} {health}",
            c.name,
            format!("{:?}", c.state).to_lowercase(),
            c.bootstrap.join(",")
        );
    }
    println!("topics:");
    for t in &s.topics {
        println!(
            "  {} ({:?}, producers see {} of {} partitions)",
            t.name,
            t.key_policy,
            t.producer_partitions,
            t.partitions.len()
        );
        for p in &t.partitions {
            let offsets = match (p.retired_at, p.earliest, p.latest) {
                (Some(end), _, _) => format!("retired at {end}"),
                (None, Some(a), Some(b)) => format!("offsets {a}..{b}"),
                _ => "offsets unknown".into(),
            };
            println!(
                "    {:>4} -> {}/{}-{}  {offsets}",
                p.logical, p.cluster, p.topic, p.partition
            );
        }
    }
    println!("proxies:");
    for p in &s.proxies {
        println!(
            "  {} (node {}, group {}) producers {} consumers {} map v{} seen {} ms ago",
            p.id,
            p.node_id,
            p.group,
            p.producer_addr,
            p.consumer_addr,
            p.map_version,
            p.last_seen_ms
        );
    }
    if !s.group_lag.is_empty() {
        println!("group lag:");
        for (g, lag) in &s.group_lag {
            println!("  {g}: {lag}");
        }
    }
    Ok(())
}
