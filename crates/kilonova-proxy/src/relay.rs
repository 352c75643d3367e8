//! Relay connections: a client's CONNECT named `proxy_to_broker_url` (a
//! lookup through the proxy told it so). The proxy connects to that broker
//! — only if it is one of the cluster's ([`crate::allow_list`]) — with its
//! own token and the client's role as `original_principal`, answers the
//! client with the broker's CONNECTED, then copies bytes both ways.
//!
//! Each direction reads into one fixed buffer and writes it all out before
//! reading again: a side that does not read stops the other side being read
//! from (TCP's window then stops its sender), and a write that makes no
//! progress for `relay_write_timeout_secs` closes the relay. Memory per
//! relay is two buffers, whatever the peers do.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{base_command::Type, BaseCommand, CommandConnect};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::allow_list::BrokerAddress;
use crate::commands::{self, Credentials, NO_REQUEST};
use crate::error::ProxyError;
use crate::link::handshake;
use crate::metrics::Metrics;
use crate::server::{refuse, Shared};

pub(crate) async fn serve<S>(
    shared: &Arc<Shared>,
    mut client: S,
    client_leftover: BytesMut,
    connect: CommandConnect,
    creds: Credentials,
    url: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let broker = match target(shared, url) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(url, error = %e, "relay refused");
            shared.metrics.relay_refused();
            let refusal = commands::error(NO_REQUEST, e.server_error(), e.to_string());
            refuse(&mut client, refusal).await;
            return;
        }
    };
    let connect = commands::broker_connect(Some(&connect), &creds);
    let h = match handshake(
        &broker,
        &connect,
        shared.config.max_broker_frame_bytes,
        shared.broker_timeout(),
    )
    .await
    {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(broker = %broker, error = %e, "relay: the broker did not accept the proxy");
            let refusal = commands::error(NO_REQUEST, e.server_error(), e.to_string());
            refuse(&mut client, refusal).await;
            return;
        }
    };
    let connected = BaseCommand {
        connected: Some(Box::new(h.connected)),
        ..commands::base(Type::Connected)
    };
    let mut first = BytesMut::new();
    frame::encode_command(&connected, &mut first);
    first.extend_from_slice(&h.leftover);
    let mut upstream = h.stream;
    let (cr, cw) = tokio::io::split(client);
    let (br, bw) = upstream.split();
    let limits = Limits {
        buffer_bytes: shared.config.relay_buffer_bytes.max(1024),
        write_timeout: shared.relay_write_timeout(),
    };
    let metrics = &shared.metrics;
    let end = tokio::select! {
        r = pump(cr, bw, &client_leftover, limits, metrics) => ("client", r),
        r = pump(br, cw, &first, limits, metrics) => ("broker", r),
    };
    tracing::debug!(broker = %broker, side = end.0, result = ?end.1, "relay closed");
}

/// The broker a client asks to be relayed to, if it is one of the cluster's.
fn target(shared: &Shared, url: &str) -> Result<BrokerAddress, ProxyError> {
    let addr = BrokerAddress::parse(url)?;
    if !shared.allow.allows(&addr) {
        return Err(ProxyError::NotABroker(addr.to_string()));
    }
    Ok(addr)
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub buffer_bytes: usize,
    pub write_timeout: Duration,
}

/// Copies `from` to `to` until `from` closes (then shuts `to`'s write side)
/// or either fails; `first` is written before anything is read. Returns the
/// bytes copied.
pub async fn pump<R, W>(
    mut from: R,
    mut to: W,
    first: &[u8],
    limits: Limits,
    metrics: &Metrics,
) -> Result<u64, ProxyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut total = 0u64;
    if !first.is_empty() {
        total += write_within(&mut to, first, limits.write_timeout).await?;
        metrics.relayed(first.len() as u64);
    }
    let mut buf = vec![0u8; limits.buffer_bytes];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
        total += write_within(&mut to, &buf[..n], limits.write_timeout).await?;
        metrics.relayed(n as u64);
    }
}

/// Writes all of `bytes`, or fails if that takes longer than `limit`.
async fn write_within<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    limit: Duration,
) -> Result<u64, ProxyError> {
    match tokio::time::timeout(limit, to.write_all(bytes)).await {
        Ok(r) => r.map(|()| bytes.len() as u64).map_err(ProxyError::from),
        Err(_) => Err(ProxyError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the peer did not read in time",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    const LIMITS: Limits = Limits {
        buffer_bytes: 1024,
        write_timeout: Duration::from_millis(200),
    };

    #[tokio::test]
    async fn bytes_and_the_leftover_arrive_in_order_and_are_counted() {
        let metrics = Metrics::default();
        let (mut src, src_far) = duplex(64);
        let (dst_far, mut dst) = duplex(1 << 16);
        let writer = tokio::spawn(async move {
            let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
            src.write_all(&data).await.ok();
            drop(src);
            data
        });
        let copied = pump(src_far, dst_far, b"first", LIMITS, &metrics).await;
        let data = writer.await.unwrap_or_default();
        assert_eq!(copied.ok(), Some(5 + data.len() as u64));
        let mut got = Vec::new();
        dst.read_to_end(&mut got).await.ok();
        assert_eq!(&got[..5], b"first");
        assert_eq!(&got[5..], &data[..]);
        assert!(metrics.render().contains("pulsar_proxy_binary_bytes 10005"));
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_stops_the_relay_without_buffering_more() {
        let metrics = Metrics::default();
        // The source has far more to send than the destination takes (its
        // pipe holds 4 KiB and nobody reads it).
        let (mut src, src_far) = duplex(1 << 20);
        let (dst_far, _dst_never_read) = duplex(4096);
        src.write_all(&vec![7u8; 1 << 20]).await.ok();
        let r = pump(src_far, dst_far, b"", LIMITS, &metrics).await;
        match r {
            Err(ProxyError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
            other => panic!("expected a write timeout, got {other:?}"),
        }
        // At most what the destination's pipe held plus one buffer was taken.
        let text = metrics.render();
        let copied: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("pulsar_proxy_binary_bytes "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(copied <= 4096 + 1024, "copied {copied}");
    }
}
