//! Where connections are accepted: admission against the broker's connection
//! limits (every Pulsar port together, and per client address), and what an
//! accept loop does when accepting fails (it backs off and logs at a bounded
//! rate). The admin server uses the same back-off. [`accept_connections`]
//! is the loop every protocol's listener runs (Pulsar's, Kafka's).
//!
//! Running out of file descriptors makes `accept` fail at once for as long as
//! a connection waits in the listen backlog: without a back-off an accept
//! loop spins and logs as fast as it can. The connection limits are also kept
//! within the process's open-file limit, so that connections alone never use
//! up the descriptors storage and the admin port need.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The first wait after a failed accept; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// At most one line per this interval for each kind of repeated log line.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// At most one log line per interval; counts the lines it held back.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a line may be written at `now`; if so, how many were held back
    /// since the previous one.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// What an accept loop does after `accept` failed: errors of one connection
/// (reset or aborted before it was accepted) are skipped; anything else
/// (no file descriptors, no memory) pauses accepting, 10 ms doubling to 1 s
/// while it lasts, and is logged at most once a second with the count of
/// failures in between.
#[derive(Debug)]
pub struct AcceptBackoff {
    /// What the listener serves, for the log ("Pulsar", "HTTP").
    what: &'static str,
    next: Duration,
    log: LogLimiter,
}

impl AcceptBackoff {
    pub fn new(what: &'static str) -> Self {
        AcceptBackoff {
            what,
            next: FIRST_BACKOFF,
            log: LogLimiter::new(LOG_EVERY),
        }
    }

    /// How long to wait before accepting again after `e`.
    pub fn failed(&mut self, e: &io::Error, now: Instant) -> Duration {
        if is_connection_error(e) {
            tracing::debug!(listener = self.what, error = %e, "a connection failed before it was accepted");
            return Duration::ZERO;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        if let Some(suppressed) = self.log.allow(now) {
            tracing::warn!(
                listener = self.what,
                error = %e,
                retry_in_ms = wait.as_millis() as u64,
                suppressed,
                "accepting connections failed"
            );
        }
        wait
    }

    /// A connection was accepted: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

/// Errors that concern one connection, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The process's open-file limit (soft), if it has one.
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// `configured`, lowered to `fraction` of the open-file limit (at least 1).
pub fn within_open_files(configured: usize, fraction: (u64, u64)) -> usize {
    match open_files_limit() {
        Some(n) => {
            let share = (n.saturating_mul(fraction.0) / fraction.1.max(1)).max(1);
            configured.min(usize::try_from(share).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Refusal {
    /// The option that refused it (a metric label, a log field).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// The broker's Pulsar connections, counted across its listeners and per
/// client address. The map holds an entry per address with open connections
/// only, so it is bounded by `max_total`.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max_total: usize,
    /// 0: no limit per address.
    max_per_ip: usize,
    state: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// An admitted connection; it counts until dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            state: Mutex::new(Open::default()),
        })
    }

    pub(crate) fn max_total(&self) -> usize {
        self.max_total
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Open> {
        // Counts are updated whole under the lock: a panicking holder leaves them consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let ip = ip.to_canonical();
        let mut s = self.state();
        if s.total >= self.max_total {
            return Err(Refusal::MaxConnections);
        }
        let from_ip = s.per_ip.get(&ip).copied().unwrap_or(0);
        if self.max_per_ip > 0 && from_ip >= self.max_per_ip {
            return Err(Refusal::MaxConnectionsPerIp);
        }
        s.total += 1;
        s.per_ip.insert(ip, from_ip + 1);
        Ok(Admitted {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.state().total
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut s = self.limits.state();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections on `listener` until `stop_accepting` changes, each
/// admitted against the broker's connection limits (one over a limit is
/// closed at once) and served by `serve` on a task of its own (which must
/// close it when `close_connections` changes); returns once all are closed.
/// Accept errors (out of file descriptors) pause accepting, with a
/// back-off, logged at most once a second. `what` names the protocol in logs.
pub(crate) async fn accept_connections<F, Fut>(
    broker: crate::Broker,
    listener: tokio::net::TcpListener,
    what: &'static str,
    mut stop_accepting: tokio::sync::watch::Receiver<bool>,
    close_connections: tokio::sync::watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(
        crate::Broker,
        tokio::net::TcpStream,
        std::net::SocketAddr,
        tokio::sync::watch::Receiver<bool>,
    ) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    let mut backoff = AcceptBackoff::new(what);
    let mut refusals_log = LogLimiter::new(Duration::from_secs(1));
    let mut paused_until: Option<Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept(), if paused_until.is_none() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        let now = broker.clock().now();
                        let wait = backoff.failed(&e, now);
                        if !wait.is_zero() {
                            paused_until = Some(now + wait);
                        }
                        continue;
                    }
                };
                backoff.succeeded();
                let admitted = match broker.connection_limits().admit(peer.ip()) {
                    Ok(a) => a,
                    Err(why) => {
                        broker.metrics().count_connection_refused(why);
                        if let Some(suppressed) = refusals_log.allow(broker.clock().now()) {
                            tracing::warn!(
                                %peer,
                                protocol = what,
                                limit = why.as_str(),
                                max_connections = broker.connection_limits().max_total(),
                                suppressed,
                                "refusing a connection"
                            );
                        }
                        drop(stream);
                        continue;
                    }
                };
                let served = serve(broker.clone(), stream, peer, close_connections.clone());
                let b = broker.clone();
                tasks.spawn(async move {
                    b.metrics().connection_opened();
                    served.await;
                    b.metrics().connection_closed();
                    drop(admitted);
                });
            }
            _ = crate::topic::sleep_until(paused_until), if paused_until.is_some() => paused_until = None,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = stop_accepting.changed() => break,
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_total_counts_every_address_and_a_closed_connection_frees_its_slot() {
        let limits = ConnectionLimits::new(2, 0);
        let a = limits.admit(ip("10.0.0.1")).ok();
        let b = limits.admit(ip("10.0.0.2")).ok();
        assert!(a.is_some() && b.is_some());
        assert_eq!(
            limits.admit(ip("10.0.0.3")).err(),
            Some(Refusal::MaxConnections)
        );
        drop(a);
        assert!(limits.admit(ip("10.0.0.3")).is_ok());
        assert_eq!(limits.open(), 1, "the admission just made was dropped");
    }

    #[test]
    fn one_address_is_limited_and_its_ipv4_mapped_form_counts_as_itself() {
        let limits = ConnectionLimits::new(100, 2);
        let _a = limits.admit(ip("10.0.0.1")).ok();
        let _b = limits.admit(ip("::ffff:10.0.0.1")).ok();
        assert_eq!(
            limits.admit(ip("10.0.0.1")).err(),
            Some(Refusal::MaxConnectionsPerIp)
        );
        assert!(limits.admit(ip("10.0.0.2")).is_ok());
        drop(_a);
        drop(_b);
        assert!(
            limits.state().per_ip.is_empty(),
            "addresses without connections are forgotten"
        );
    }

    #[test]
    fn the_log_limiter_lets_one_line_a_second_through_and_counts_the_rest() {
        let t0 = SystemClock.now();
        let mut log = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(log.allow(t0), Some(0));
        for ms in 1..1000 {
            assert_eq!(log.allow(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.allow(t0 + Duration::from_secs(1)), Some(999));
    }

    #[test]
    fn accept_failures_back_off_doubling_to_a_second_and_reset_on_success() {
        let mut b = AcceptBackoff::new("test");
        let emfile = io::Error::from_raw_os_error(24);
        let now = SystemClock.now();
        let waits: Vec<u64> = (0..10)
            .map(|_| b.failed(&emfile, now).as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(&emfile, now), FIRST_BACKOFF);
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(b.failed(&reset, now), Duration::ZERO);
    }
}
