//! A real etcd for tests (feature `test-support`): one member, or a cluster
//! of several, on loopback ports, in a temporary directory, killed when
//! dropped; members can be killed and restarted one by one.
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
use crate::rpc::Rpc;

/// How long a start (or restart) may take before it is a failure.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running etcd of one or more members (killed when dropped).
pub struct EtcdServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// Clients speak TLS and present certificates (one CA for everything).
    tls: Option<TlsFiles>,
}

/// PEM files of a test CA, the members' certificate and a client's.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A new CA and certificates signed by it, written to `dir`: the
    /// members' for 127.0.0.1 and localhost, and a client's.
    pub fn create(dir: &std::path::Path) -> Result<TlsFiles, String> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let err = |e: rcgen::Error| format!("test certificates: {e}");
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "kilonova test etcd CA");
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().map_err(err)?;
            let mut params = CertificateParams::new(names).map_err(err)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &issuer).map_err(err)?;
            Ok::<_, String>((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "kilonova test etcd",
        )?;
        let (client_cert, client_key) = leaf(vec!["kilonova".into()], "kilonova")?;
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text)
                .map(|()| p)
                .map_err(|e| format!("writing {name}: {e}"))
        };
        Ok(TlsFiles {
            ca: write("ca.pem", &ca_cert.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server.key", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client.key", &client_key)?,
        })
    }
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    tls: bool,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
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

    /// Starts a one-member etcd; `None` (after saying why on stderr) when
    /// there is no `etcd` binary and `KILONOVA_REQUIRE_ETCD` is not set.
    /// Panics if it cannot start, or if the binary is missing but required.
    pub async fn start_or_skip(test: &str) -> Option<EtcdServer> {
        Self::start_cluster_or_skip(test, 1).await
    }

    /// As [`EtcdServer::start_or_skip`], with clients on TLS presenting
    /// certificates (`--client-cert-auth`); [`EtcdServer::config`] has them.
    pub async fn start_tls_or_skip(test: &str) -> Option<EtcdServer> {
        Self::start_with_or_skip(test, 1, true).await
    }

    /// As [`EtcdServer::start_or_skip`], with `members` members.
    pub async fn start_cluster_or_skip(test: &str, members: usize) -> Option<EtcdServer> {
        Self::start_with_or_skip(test, members, false).await
    }

    async fn start_with_or_skip(test: &str, members: usize, tls: bool) -> Option<EtcdServer> {
        let Some(bin) = Self::binary() else {
            if std::env::var_os("KILONOVA_REQUIRE_ETCD").is_some() {
                panic!("{test}: KILONOVA_REQUIRE_ETCD is set but there is no `etcd` binary (apt-get install etcd-server, or set KILONOVA_ETCD_BIN)");
            }
            eprintln!("SKIPPED {test}: no `etcd` binary on PATH (apt-get install etcd-server; set KILONOVA_REQUIRE_ETCD=1 to make this a failure)");
            return None;
        };
        match Self::start(bin, members, tls).await {
            Ok(s) => Some(s),
            Err(e) => panic!("{test}: etcd did not start: {e}"),
        }
    }

    /// Starts `bin` as an etcd cluster of `members` members (clients on TLS
    /// with certificates if `tls`) and waits until every member serves requests.
    pub async fn start(bin: PathBuf, members: usize, tls: bool) -> Result<EtcdServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("kilonova-etcd-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let tls = if tls {
            Some(TlsFiles::create(dir.path())?)
        } else {
            None
        };
        let mut server = EtcdServer {
            bin,
            dir,
            members: Vec::new(),
            tls,
        };
        let mut last_error = String::new();
        // Ports are free when chosen, but another process may take one before
        // etcd binds it: then a member exits, and we try other ports.
        for _ in 0..3 {
            let ports = free_ports(2 * members.max(1))?;
            server.members = ports
                .chunks(2)
                .enumerate()
                .map(|(i, p)| Member {
                    name: format!("m{i}"),
                    client_port: p.first().copied().unwrap_or_default(),
                    peer_port: p.get(1).copied().unwrap_or_default(),
                    child: None,
                    tls: server.tls.is_some(),
                })
                .collect();
            // A failed start may leave member directories for other ports.
            for i in 0..server.members.len() {
                let _ = std::fs::remove_dir_all(server.data_dir(i));
            }
            match server.spawn_all_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let exited = server.members.iter_mut().any(Member::exited);
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

    /// The first member's client URL (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        self.members
            .first()
            .map(Member::client_url)
            .unwrap_or_default()
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Settings for a store on this etcd (every member), with short timeouts
    /// so tests of failures end quickly, and the client certificate if the
    /// members ask for one.
    pub fn config(&self) -> EtcdConfig {
        self.config_for(self.endpoints())
    }

    fn config_for(&self, endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            request_timeout_ms: 2_000,
            connect_timeout_ms: 500,
            ca_file: self.tls.as_ref().map(|t| t.ca.clone()),
            cert_file: self.tls.as_ref().map(|t| t.client_cert.clone()),
            key_file: self.tls.as_ref().map(|t| t.client_key.clone()),
            ..EtcdConfig::default()
        }
    }

    /// The test certificates, if clients speak TLS.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    fn data_dir(&self, member: usize) -> PathBuf {
        self.dir.path().join(format!("data-m{member}"))
    }

    /// Kills every member (SIGKILL) and waits for them to exit; data stays.
    pub fn kill(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Starts every member again on the same ports and data directories.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn_all_and_wait().await
    }

    /// Pauses every member (SIGSTOP): connections stay open, nothing answers.
    /// Returns once every thread of every member is stopped (a signal is
    /// delivered when its threads next run, not when `kill` returns).
    pub fn pause(&self) -> Result<(), String> {
        self.signal("-STOP", true)
    }

    /// Resumes every member paused by [`EtcdServer::pause`] (SIGCONT), once
    /// none of their threads is stopped any more.
    pub fn resume(&self) -> Result<(), String> {
        self.signal("-CONT", false)
    }

    fn signal(&self, signal: &str, stopped: bool) -> Result<(), String> {
        for m in &self.members {
            if let Some(c) = &m.child {
                let status = Command::new("kill")
                    .args([signal, &c.id().to_string()])
                    .status()
                    .map_err(|e| format!("kill {signal}: {e}"))?;
                if !status.success() {
                    return Err(format!("kill {signal} {} failed", c.id()));
                }
                wait_stopped(c.id(), stopped)?;
            }
        }
        Ok(())
    }

    /// Kills member `i` (SIGKILL); its data stays.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(m) = self.members.get_mut(i) {
            m.kill();
        }
    }

    /// Starts member `i` again and waits until it serves requests.
    pub async fn restart_member(&mut self, i: usize) -> Result<(), String> {
        self.kill_member(i);
        self.spawn(i)?;
        self.wait_ready(i).await
    }

    async fn spawn_all_and_wait(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            self.spawn(i)?;
        }
        for i in 0..self.members.len() {
            self.wait_ready(i).await?;
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let data_dir = self.data_dir(i);
        let log_path = self.dir.path().join(format!("etcd-m{i}.log"));
        let bin = self.bin.clone();
        let mut tls_args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(t) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &t.server_cert),
                ("--key-file", &t.server_key),
                ("--trusted-ca-file", &t.ca),
            ] {
                tls_args.push(flag.into());
                tls_args.push(path.into());
            }
            tls_args.push("--client-cert-auth".into());
        }
        let Some(m) = self.members.get_mut(i) else {
            return Err(format!("no member {i}"));
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| format!("etcd log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let (client, peer) = (m.client_url(), m.peer_url());
        let child = Command::new(&bin)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "kilonova-test"])
            // Short raft timers: a leader is elected at once, and the
            // shortest lease (1.5 election timeouts) is well under a second.
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            // Watch progress reports every 100 ms, not every 10 minutes.
            .args(["--experimental-watch-progress-notify-interval", "100ms"])
            .args(["--log-level", "warn"])
            .args(&tls_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        m.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let Some(m) = self.members.get_mut(i) else {
                return Err(format!("no member {i}"));
            };
            if m.exited() {
                return Err(format!(
                    "etcd member {i} exited; its log: {}",
                    self.log_tail(i)
                ));
            }
            // Ready once a linearizable read succeeds (the member has a leader).
            let url = m.client_url();
            if answers(&self.config_for(vec![url])).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd member {i} not ready within {START_TIMEOUT:?}; its log: {}",
                    self.log_tail(i)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(format!("etcd-m{i}.log")))
            .unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        log.get(start..).unwrap_or(&log).to_owned()
    }
}

/// Whether the member `config` names answers a linearizable read.
async fn answers(config: &EtcdConfig) -> bool {
    let Ok(rpc) = Rpc::new(config) else {
        return false;
    };
    let read = crate::rpc::pb::RangeRequest {
        key: bytes::Bytes::from_static(b"\0"),
        ..Default::default()
    };
    rpc.call("range", |ch| {
        let read = read.clone();
        async move { KvClient::new(ch).range(read).await }
    })
    .await
    .is_ok()
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` distinct free ports (every listener lives until all are chosen).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("no free port: {e}"))?;
        ports.push(l.local_addr().map_err(|e| e.to_string())?.port());
        held.push(l);
    }
    Ok(ports)
}

/// Waits until every thread of process `pid` is stopped (`T` in
/// `/proc/<pid>/task/*/stat`), or none is.
fn wait_stopped(pid: u32, stopped: bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("listing the threads of {pid}: {e}"))?;
        let mut all = true;
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if (state == Some('T')) != stopped {
                all = false;
                break;
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "process {pid} is not {} after 10 s",
                if stopped { "stopped" } else { "running" }
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
