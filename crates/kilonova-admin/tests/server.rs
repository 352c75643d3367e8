#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The admin server's bounds: idle connections are closed, connections are capped.

use std::time::Duration;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use kilonova_admin::server::AdminServer;
use kilonova_broker::BrokerConfig;

const WAIT: Duration = Duration::from_secs(10);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: kilonova\r\n\r\n";

async fn serve(config: BrokerConfig) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let router = axum::Router::new().route("/", get(|| async { "ok" }));
    let server = AdminServer::new(router, &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(async move { server.serve(listener, None, "HTTP", stop_rx).await });
    (addr, stop)
}

/// Whether the server closes `s` within `WAIT` (what it sends is skipped).
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn answered(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

#[tokio::test]
async fn connections_without_a_request_head_in_time_are_closed() {
    let config = BrokerConfig {
        http_header_read_timeout_secs: 1,
        ..BrokerConfig::default()
    };
    let (addr, _stop) = serve(config).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(&REQUEST[..20]).await.unwrap();
    let mut kept_alive = TcpStream::connect(addr).await.unwrap();
    kept_alive.write_all(REQUEST).await.unwrap();
    assert!(answered(&mut kept_alive, WAIT).await);
    assert!(closed(&mut silent).await, "a silent connection stayed open");
    assert!(
        closed(&mut partial).await,
        "a partial request head stayed open"
    );
    assert!(
        closed(&mut kept_alive).await,
        "an idle keep-alive connection stayed open"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_to_be_accepted() {
    let config = BrokerConfig {
        max_http_connections: 2,
        ..BrokerConfig::default()
    };
    let (addr, _stop) = serve(config).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(REQUEST).await.unwrap();
    assert!(answered(&mut first, WAIT).await);
    let _second = TcpStream::connect(addr).await.unwrap();
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(REQUEST).await.unwrap();
    assert!(
        !answered(&mut third, Duration::from_millis(500)).await,
        "a third connection was served"
    );
    drop(first);
    assert!(
        answered(&mut third, WAIT).await,
        "the waiting connection was not served"
    );
}
