//! `kilonova proxy`: the gateway in front of a cluster's brokers
//! (kilonova_proxy; docs/proxy.md). Settings come from `--config`
//! (config/proxy.toml), then flags and `KILONOVA_PROXY_*` variables.

use std::path::PathBuf;

use anyhow::Context;
use kilonova_proxy::{Proxy, ProxyConfig};

#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// TOML configuration file (flags and KILONOVA_PROXY_* variables override it).
    #[arg(long, env = "KILONOVA_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "KILONOVA_PROXY_BIND_ADDRESS")]
    bind_address: Option<String>,
    /// Pulsar binary protocol port clients connect to [default: 6650].
    #[arg(long, env = "KILONOVA_PROXY_PULSAR_PORT")]
    pulsar_port: Option<u16>,
    /// HTTP port: /admin/* and /lookup/* forwarded, /metrics [default: 8080].
    #[arg(long, env = "KILONOVA_PROXY_HTTP_PORT")]
    http_port: Option<u16>,
    /// Pulsar protocol over TLS, when `[tls]` has a certificate [default: 6651].
    #[arg(long, env = "KILONOVA_PROXY_PULSAR_TLS_PORT")]
    pulsar_tls_port: Option<u16>,
    /// HTTPS port, when `[tls]` has a certificate [default: 8443].
    #[arg(long, env = "KILONOVA_PROXY_HTTPS_PORT")]
    https_port: Option<u16>,
    /// A broker's Pulsar service URL, `pulsar://host:port` (repeat for
    /// several; replaces the file's broker_service_urls).
    #[arg(
        long = "broker-url",
        env = "KILONOVA_PROXY_BROKER_URLS",
        value_delimiter = ','
    )]
    broker_urls: Vec<String>,
    /// A broker's web service URL, `http://host:port` (repeat for several;
    /// replaces the file's broker_web_service_urls).
    #[arg(
        long = "broker-web-url",
        env = "KILONOVA_PROXY_BROKER_WEB_URLS",
        value_delimiter = ','
    )]
    broker_web_urls: Vec<String>,
    /// Client connections served at once; more are refused [default: 10000].
    #[arg(long, env = "KILONOVA_PROXY_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Once serving, write the ports it listens on to this file as JSON
    /// (`{"pulsar":N,"http":N,"pulsar_tls":N|null,"https":N|null}`), atomically: with ports given as 0 the
    /// system chooses them, and this says which.
    #[arg(long, env = "KILONOVA_PROXY_PORTS_FILE")]
    ports_file: Option<PathBuf>,
}

fn load_config(args: &ProxyArgs) -> anyhow::Result<ProxyConfig> {
    let mut c: ProxyConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => ProxyConfig::default(),
    };
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
    if !args.broker_urls.is_empty() {
        c.broker_service_urls = args.broker_urls.clone();
    }
    if !args.broker_web_urls.is_empty() {
        c.broker_web_service_urls = args.broker_web_urls.clone();
    }
    if let Some(m) = args.max_connections {
        c.max_connections = m;
    }
    Ok(c)
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kilonova-proxy")
        .build()?;
    runtime.block_on(async {
        let proxy = Proxy::start(config).await?;
        let stop = crate::standalone::StopSignals::listen();
        if let Some(path) = &args.ports_file {
            crate::standalone::write_ports_file(path, &proxy.ports())?;
        }
        stop.recv().await;
        tracing::info!("proxy stopping");
        proxy.shutdown().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    const EXAMPLE: &str = include_str!("../../../config/proxy.toml");

    #[test]
    fn the_example_configuration_parses_and_holds_the_defaults() {
        let parsed: kilonova_proxy::ProxyConfig = match toml::from_str(EXAMPLE) {
            Ok(c) => c,
            Err(e) => panic!("config/proxy.toml: {e}"),
        };
        let defaults = kilonova_proxy::ProxyConfig::default();
        assert_eq!(format!("{parsed:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn the_example_configuration_names_every_option() {
        // The fields of ProxyConfig and of its sections, from their Debug
        // output (4 spaces: top level; 8: [tls] and [auth]).
        let debug = format!("{:#?}", kilonova_proxy::ProxyConfig::default());
        let names: Vec<&str> = debug
            .lines()
            .filter(|l| l.starts_with("    ") && !l.starts_with("            "))
            .filter_map(|l| l.trim_start().split_once(": ").map(|(name, _)| name))
            .collect();
        assert!(names.len() > 30, "{names:?}");
        let missing: Vec<&str> = names
            .into_iter()
            .filter(|n| {
                !EXAMPLE.lines().any(|l| {
                    l.trim_start_matches("# ").starts_with(&format!("{n} = "))
                        || l == format!("[{n}]")
                })
            })
            .collect();
        assert!(
            missing.is_empty(),
            "config/proxy.toml does not name {missing:?}"
        );
    }
}
