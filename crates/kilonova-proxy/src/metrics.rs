//! The proxy's Prometheus metrics, named as Pulsar's proxy names them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Metrics {
    active_connections: AtomicU64,
    new_connections: AtomicU64,
    rejected_connections: AtomicU64,
    binary_bytes: AtomicU64,
    binary_ops: AtomicU64,
    lookup_requests: AtomicU64,
    refused_relays: AtomicU64,
}

impl Metrics {
    /// A client connection was accepted; the guard counts it active until dropped.
    pub fn connection_opened(self: &Arc<Self>) -> ActiveConnection {
        self.new_connections.fetch_add(1, Ordering::Relaxed);
        self.active_connections.fetch_add(1, Ordering::Relaxed);
        ActiveConnection(self.clone())
    }

    /// A client connection was refused (over `max_connections`).
    pub fn connection_rejected(&self) {
        self.rejected_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes relayed (either direction).
    pub fn relayed(&self, bytes: u64) {
        self.binary_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.binary_ops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lookup_request(&self) {
        self.lookup_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A CONNECT asked to be relayed to an address that is not a broker.
    pub fn relay_refused(&self) {
        self.refused_relays.fetch_add(1, Ordering::Relaxed);
    }

    pub fn active_connections(&self) -> u64 {
        self.active_connections.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rows: [(&str, &str, &str, &AtomicU64); 7] = [
            (
                "pulsar_proxy_active_connections",
                "gauge",
                "Client connections open now",
                &self.active_connections,
            ),
            (
                "pulsar_proxy_new_connections",
                "counter",
                "Client connections accepted",
                &self.new_connections,
            ),
            (
                "pulsar_proxy_rejected_connections",
                "counter",
                "Client connections refused over max_connections",
                &self.rejected_connections,
            ),
            (
                "pulsar_proxy_binary_bytes",
                "counter",
                "Bytes relayed between clients and brokers, both directions",
                &self.binary_bytes,
            ),
            (
                "pulsar_proxy_binary_ops",
                "counter",
                "Relay reads forwarded, both directions",
                &self.binary_ops,
            ),
            (
                "pulsar_proxy_lookup_requests",
                "counter",
                "Lookup-connection requests forwarded to brokers",
                &self.lookup_requests,
            ),
            (
                "kilonova_proxy_refused_relays",
                "counter",
                "CONNECTs refused for naming an address that is not a broker",
                &self.refused_relays,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}

/// A client connection counted active while it lives.
pub struct ActiveConnection(Arc<Metrics>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_active_while_their_guard_lives() {
        let m = Arc::new(Metrics::default());
        let a = m.connection_opened();
        let b = m.connection_opened();
        m.connection_rejected();
        assert_eq!(m.active_connections(), 2);
        drop(a);
        drop(b);
        let text = m.render();
        assert!(
            text.contains("\npulsar_proxy_active_connections 0\n"),
            "{text}"
        );
        assert!(
            text.contains("\npulsar_proxy_new_connections 2\n"),
            "{text}"
        );
        assert!(
            text.contains("\npulsar_proxy_rejected_connections 1\n"),
            "{text}"
        );
    }
}
