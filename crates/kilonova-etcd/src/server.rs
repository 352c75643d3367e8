//! A real etcd for tests (feature `test-support`): one member on loopback
//! ports, in a temporary data directory, killed when dropped.
//!
//! The binary is `$KILONOVA_ETCD_BIN`, else `etcd` on `PATH` (Debian's
//! `etcd-server`; `scripts/test` installs it). Without it a test skips with a
//! message, unless `KILONOVA_REQUIRE_ETCD` is set (as `scripts/test` sets
//! it): then the test fails.

// Test support: a server that cannot start is a failed test.
#![allow(clippy::panic)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::EtcdConfig;
use crate::rpc::pb::kv_client::KvClient;

/// How long a start (or restart) may take before it is a failure.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running etcd (killed when dropped).
pub struct EtcdServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// The `etcd` binary, if there is one.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("KILONOVA_ETCD_BIN") {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    }

    /// Starts a server; `None` (after saying why on stderr) when there is no
    /// `etcd` binary and `KILONOVA_REQUIRE_ETCD` is not set. Panics if it
    /// cannot start, or if the binary is missing but required.
    pub async fn start_or_skip(test: &str) -> Option<EtcdServer> {
        let Some(bin) = Self::binary() else {
            if std::env::var_os("KILONOVA_REQUIRE_ETCD").is_some() {
                panic!("{test}: KILONOVA_REQUIRE_ETCD is set but there is no `etcd` binary (apt-get install etcd-server, or set KILONOVA_ETCD_BIN)");
            }
            eprintln!("SKIPPED {test}: no `etcd` binary on PATH (apt-get install etcd-server; set KILONOVA_REQUIRE_ETCD=1 to make this a failure)");
            return None;
        };
        match Self::start(bin).await {
            Ok(s) => Some(s),
            Err(e) => panic!("{test}: etcd did not start: {e}"),
        }
    }

    /// Starts `bin` as a one-member etcd and waits until it serves requests.
    pub async fn start(bin: PathBuf) -> Result<EtcdServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("kilonova-etcd-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let mut server = EtcdServer {
            bin,
            dir,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        let mut last_error = String::new();
        // Ports are free when chosen, but another process may take one before
        // etcd binds it: then etcd exits, and we try other ports.
        for _ in 0..3 {
            [server.client_port, server.peer_port] = free_ports()?;
            // A failed first start may leave a member directory for other ports.
            let _ = std::fs::remove_dir_all(server.data_dir());
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let exited = server.exited();
                    last_error = e;
                    server.kill();
                    if !exited {
                        break; // it ran but never became ready: other ports will not help
                    }
                }
            }
        }
        Err(last_error)
    }

    /// The client URL (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Settings for a store on this server, with short timeouts so tests of
    /// failures end quickly.
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            request_timeout_ms: 2_000,
            connect_timeout_ms: 500,
            ..EtcdConfig::new(self.endpoint())
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the server (SIGKILL) and waits for it to exit; its data stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same ports and data directory.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn_and_wait().await
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .map_err(|e| format!("etcd log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg("kilonova-test")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("kilonova-test={peer}")])
            // Short raft timers: a lone member elects itself at once, and the
            // shortest lease (1.5 election timeouts) is well under a second.
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.exited() {
                return Err(format!("etcd exited; its log: {}", self.log_tail()));
            }
            // Ready once a linearizable read succeeds (a leader is elected).
            if self.answers().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd not ready within {START_TIMEOUT:?}; its log: {}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn answers(&self) -> bool {
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(self.endpoint()) else {
            return false;
        };
        let Ok(channel) = endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(1))
            .connect()
            .await
        else {
            return false;
        };
        let read = crate::rpc::pb::RangeRequest {
            key: bytes::Bytes::from_static(b"\0"),
            ..Default::default()
        };
        KvClient::new(channel).range(read).await.is_ok()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        log.get(start..).unwrap_or(&log).to_owned()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_ports() -> Result<[u16; 2], String> {
    let bind = || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(|e| format!("no free port: {e}"))
    };
    // Both listeners live until both ports are chosen, so they differ.
    let (a, _la) = bind()?;
    let (b, _lb) = bind()?;
    Ok([a, b])
}
