//! Shared harness for the end-to-end tests that drive the real `kilonova`
//! binary with third-party Pulsar clients.
//!
//! [`Broker::start`] runs `kilonova standalone` in a fresh temporary directory
//! on loopback ports the system chooses (port 0, read back from
//! `--ports-file`), with its stderr captured to a file, and waits for the
//! health endpoint. Dropping a [`Broker`] kills the process; if the
//! current thread is panicking (a failed assertion) the tail of the broker's
//! log is printed first, so a failure shows what the broker said.

#![allow(dead_code)] // each test binary uses a different subset

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kilonova_auth::issue::{self, SigningKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long the broker may take to answer its health check after spawning.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the broker may take to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Default bound for one client-side step (a receipt, a message, a subscribe).
pub const STEP: Duration = Duration::from_secs(10);

/// Lines of the broker's stderr printed when a test fails.
const TAIL_LINES: usize = 60;

/// A running (or stopped) `kilonova standalone` process and its data directory.
pub struct Broker {
    dir: tempfile::TempDir,
    /// The ports it serves: 0 before the first start, which lets the system
    /// choose them; restarts ask for the same ones again.
    pub pulsar_port: u16,
    pub http_port: u16,
    /// The TLS ports, when the configuration turns TLS on.
    pub pulsar_tls_port: Option<u16>,
    pub https_port: Option<u16>,
    child: Option<Child>,
    log_path: PathBuf,
    starts: u32,
    /// `--config` file, if the test gave one.
    config: Option<PathBuf>,
    /// Presented to the health check (a super-user's, with authentication on).
    admin_token: Option<String>,
    /// The subcommand: `standalone`, or `broker` (one of a cluster).
    role: &'static str,
}

/// What `--ports-file` holds.
#[derive(serde::Deserialize)]
struct Ports {
    pulsar: Option<u16>,
    http: Option<u16>,
    pulsar_tls: Option<u16>,
    https: Option<u16>,
}

impl Broker {
    /// Start a broker on a fresh data directory and wait until it is healthy.
    pub async fn start() -> Broker {
        Self::start_with(None, None).await
    }

    /// Start a broker with `config` (TOML, written to a file for `--config`);
    /// `admin_token` is presented to the health check.
    pub async fn start_with(config: Option<&str>, admin_token: Option<String>) -> Broker {
        Self::start_as("standalone", config, admin_token).await
    }

    /// Start `kilonova broker` (one broker of a cluster) with `config`.
    pub async fn start_cluster_member(config: &str) -> Broker {
        Self::start_as("broker", Some(config), None).await
    }

    async fn start_as(
        role: &'static str,
        config: Option<&str>,
        admin_token: Option<String>,
    ) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("kilonova-e2e-")
            .tempdir()
            .expect("create temp dir for the broker");
        let log_path = dir.path().join("broker.stderr.log");
        let mut broker = Broker {
            dir,
            pulsar_port: 0,
            http_port: 0,
            pulsar_tls_port: None,
            https_port: None,
            child: None,
            log_path,
            starts: 0,
            config: None,
            admin_token,
            role,
        };
        if let Some(text) = config {
            let path = broker.dir.path().join("kilonova.toml");
            std::fs::write(&path, text).expect("write the broker's config file");
            broker.config = Some(path);
        }
        if let Err(e) = broker.spawn_and_wait().await {
            panic!("{e}\n{}", broker.tail_report());
        }
        broker
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ports_file(&self) -> PathBuf {
        self.dir.path().join("ports.json")
    }

    /// `pulsar://127.0.0.1:P`
    pub fn service_url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.pulsar_port)
    }

    /// Spawn the process on the current ports and data dir; wait for health.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "broker already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open broker stderr log");
        writeln!(
            log,
            "===== test harness: start #{} (pulsar {}, http {}) =====",
            self.starts, self.pulsar_port, self.http_port
        )
        .expect("write broker stderr log");
        let stderr: File = log;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kilonova"));
        cmd.arg(self.role);
        // Brokers of parallel tests must not all take Kafka's 9092.
        cmd.env("KILONOVA_KAFKA_PORT", "0");
        cmd.env("KILONOVA_KAFKA_TLS_PORT", "0");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        // TLS ports come from the config at the first start, then are kept.
        if let Some(p) = self.pulsar_tls_port {
            cmd.arg("--pulsar-tls-port").arg(p.to_string());
        }
        if let Some(p) = self.https_port {
            cmd.arg("--https-port").arg(p.to_string());
        }
        let ports_file = self.ports_file();
        match std::fs::remove_file(&ports_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove {}: {e}", ports_file.display())),
        }
        let mut child = cmd
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--bind-address", "127.0.0.1"])
            .arg("--pulsar-port")
            .arg(self.pulsar_port.to_string())
            .arg("--http-port")
            .arg(self.http_port.to_string())
            .arg("--ports-file")
            .arg(&ports_file)
            .env_remove("KILONOVA_CONFIG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", env!("CARGO_BIN_EXE_kilonova")))?;

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut have_ports = false;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| format!("try_wait: {e}"))? {
                let tail = self.stderr_tail(TAIL_LINES).to_lowercase();
                let clash = if tail.contains("address already in use") {
                    " (port clash: address already in use)"
                } else {
                    ""
                };
                return Err(format!("broker exited during startup with {status}{clash}"));
            }
            // The ports file appears (whole: it is renamed into place) once
            // the broker serves; it names the ports it was given or chose.
            if !have_ports {
                if let Ok(text) = std::fs::read_to_string(&ports_file) {
                    let p: Ports = serde_json::from_str(&text)
                        .map_err(|e| format!("ports file {text:?}: {e}"))?;
                    self.pulsar_port = p.pulsar.ok_or("the ports file has no Pulsar port")?;
                    self.http_port = p.http.ok_or("the ports file has no HTTP port")?;
                    self.pulsar_tls_port = p.pulsar_tls;
                    self.https_port = p.https;
                    have_ports = true;
                }
            }
            if have_ports {
                let health = http_request_as(
                    self.http_port,
                    "GET",
                    "/admin/v2/brokers/health",
                    "",
                    self.admin_token.as_deref(),
                );
                if matches!(health.await, Ok((200, body)) if body.trim() == "ok") {
                    break;
                }
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(format!(
                    "broker not healthy (ports file {}, then GET /admin/v2/brokers/health -> 200 ok) within {STARTUP_TIMEOUT:?}",
                    ports_file.display()
                ));
            }
            // Poll interval of the readiness probe (not a synchronisation sleep).
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Send SIGTERM and wait (bounded) for the process to exit; returns its status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("terminate: broker is not running");
        let pid = child.id().expect("running child has a pid");
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"))
            .expect("non-zero pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .expect("send SIGTERM to the broker");
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait()).await {
            Ok(status) => status.expect("wait for broker exit"),
            Err(_) => {
                let _ = child.start_kill();
                panic!(
                    "broker did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM\n{}",
                    self.tail_report()
                );
            }
        }
    }

    /// Kill the process (SIGKILL) and wait for it to be gone.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("kill: broker is not running");
        child.start_kill().expect("send SIGKILL to the broker");
        within(SHUTDOWN_TIMEOUT, "the killed broker exits", child.wait())
            .await
            .expect("wait for the killed broker");
    }

    /// SIGTERM, require a clean exit (status 0), then start again on the same
    /// data directory and ports and wait for health.
    pub async fn restart(&mut self) {
        let status = self.terminate().await;
        assert!(
            status.success(),
            "broker must exit 0 on SIGTERM, got {status}\n{}",
            self.tail_report()
        );
        // The old ports are in the ephemeral range: in the moment between exit
        // and restart a client socket (another test's, or a self-connect of a
        // reconnecting one) may take one. Then let the system choose again;
        // clients are expected to reconnect with `service_url()` after a restart.
        for attempt in 1..=3 {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(e) if attempt < 3 && e.contains("port clash") => {
                    eprintln!("broker restart attempt {attempt} lost its port, retrying: {e}");
                    self.pulsar_port = 0;
                    self.http_port = 0;
                    self.pulsar_tls_port = self.pulsar_tls_port.map(|_| 0);
                    self.https_port = self.https_port.map(|_| 0);
                }
                Err(e) => panic!(
                    "broker did not come back after restart: {e}\n{}",
                    self.tail_report()
                ),
            }
        }
    }

    /// Create a partitioned topic in public/default through the admin API.
    pub async fn create_partitioned_topic(&self, topic: &str, partitions: u32) {
        let path = format!("/admin/v2/persistent/public/default/{topic}/partitions");
        let (status, body) = http_request(self.http_port, "PUT", &path, &partitions.to_string())
            .await
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        assert_eq!(
            status, 204,
            "PUT {path} with body {partitions} must answer 204, got {status}: {body}"
        );
    }

    /// The last `n` lines of the broker's stderr (all starts).
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn tail_report(&self) -> String {
        format!(
            "----- last {TAIL_LINES} lines of broker stderr ({}) -----\n{}\n----- end of broker stderr -----",
            self.log_path.display(),
            self.stderr_tail(TAIL_LINES)
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.tail_report());
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// A token secret key in a file of its own and the `[auth]` section naming
/// it (authentication and authorization on, `admin` a super-user).
pub struct Keys {
    pub key: SigningKey,
    pub config: String,
    _dir: tempfile::TempDir,
}

/// A fresh secret key and its `[auth]` section.
pub fn keys() -> Keys {
    let dir = tempfile::tempdir().expect("a temp dir for the secret key");
    let secret = issue::generate_secret_key().expect("a secret key");
    let path = dir.path().join("secret.key");
    std::fs::write(&path, &secret).expect("write the secret key");
    let config = "[auth]\n\
         authentication_enabled = true\n\
         authorization_enabled = true\n\
         super_user_roles = [\"admin\"]\n\
         token_secret_key = \"file:{path}\"\n"
        .replace("{path}", &path.display().to_string());
    Keys {
        key: SigningKey::from_secret(&secret).expect("the key just made"),
        config,
        _dir: dir,
    }
}

/// A token for `role` signed with `keys`.
pub fn token(keys: &Keys, role: &str) -> String {
    keys.key.token("sub", role, None).expect("a token")
}

/// A broker with authentication on (its secret key in a directory of the
/// test's own, which must exist before the broker starts); `top` is more
/// TOML: top-level keys, then sections.
pub async fn secured_broker(top: &str) -> (Broker, Keys) {
    let k = keys();
    let (head, sections) = match top.find("\n[") {
        Some(i) => top.split_at(i + 1),
        None => (top, ""),
    };
    let config = format!("{head}{}{sections}", k.config);
    let broker = Broker::start_with(Some(&config), Some(token(&k, "admin"))).await;
    (broker, k)
}

/// A minimal HTTP/1.1 exchange over raw TCP: returns (status, body).
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    http_request_as(port, method, path, body, None).await
}

/// [`http_request`] with `Authorization: Bearer token`.
pub async fn http_request_as(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{auth}\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("{method} {path}: no complete response within 5s"))?
}

fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {text:?}"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// Await `fut` for at most `limit`; on timeout panic naming what was awaited.
pub async fn within<T>(limit: Duration, what: impl Display, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Payload of message `i` in a test's numbered sequence.
pub fn numbered(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:04}")
}
