#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An accept loop out of file descriptors. Alone in its test binary: it lowers
//! the process's open-file limit.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kilonova_broker::BrokerConfig;
use kilonova_pulsar_protocol::proto::base_command::Type;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use tracing_subscriber::layer::SubscriberExt;

use common::{cmd, start, Raw};

/// Counts the warnings (and worse) the broker logs.
struct CountWarnings(Arc<AtomicU64>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountWarnings {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *e.metadata().level() <= tracing::Level::WARN
            && e.metadata().target().starts_with("kilonova_broker")
        {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_keeps_serving() {
    let warnings = Arc::new(AtomicU64::new(0));
    let subscriber = tracing_subscriber::registry().with(CountWarnings(warnings.clone()));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let server = start(BrokerConfig::default()).await;
    let mut existing = Raw::connect(server.addr).await;
    let saved = getrlimit(Resource::Nofile);
    let spare = 24;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open_fds() + spare),
            maximum: saved.maximum,
        },
    )
    .unwrap();
    // Both ends are in this process: connect until no descriptor is left, so
    // that connections wait in the listen backlog and accept fails.
    let mut clients = Vec::new();
    while let Ok(Ok(s)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(server.addr),
    )
    .await
    {
        clients.push(s);
        assert!(
            clients.len() < 10 * spare as usize,
            "descriptors never ran out"
        );
    }
    let before = warnings.load(Ordering::Relaxed);
    let started = Instant::now();
    // An open connection is served while accepting fails.
    for _ in 0..3 {
        existing
            .send(cmd(Type::Ping, |c| c.ping = Some(Default::default())))
            .await;
        existing.recv_type(Type::Pong).await;
        tokio::time::sleep(Duration::from_millis(500)).await; // letting the accept loop fail meanwhile
    }
    let logged = warnings.load(Ordering::Relaxed) - before;
    let secs = started.elapsed().as_secs() + 1;
    assert!(
        logged <= 2 * secs,
        "{logged} warnings in {secs}s while out of file descriptors"
    );
    // Descriptors come back: what waited in the backlog is accepted and served.
    let waiting = clients.pop().unwrap();
    clients.truncate(clients.len() / 2);
    drop(waiting);
    setrlimit(Resource::Nofile, saved).unwrap();
    Raw::connect(server.addr).await;
}
