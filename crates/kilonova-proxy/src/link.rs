//! The proxy's own connections to brokers. [`handshake`] opens one (the
//! proxy's CONNECT, the broker's CONNECTED); a relay then owns the socket,
//! while a [`BrokerLink`] multiplexes lookup-connection requests over it: each
//! request gets a link-wide request id, and the broker's answer is routed
//! back by it. [`LinkPool`] keeps a bounded number of links, one per broker
//! and client identity (the broker authorizes each link's requests as the
//! client it was opened for).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use kilonova_pulsar_protocol::frame;
use kilonova_pulsar_protocol::proto::{base_command::Type, BaseCommand, CommandConnected};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::allow_list::BrokerAddress;
use crate::commands::{self, Credentials};
use crate::error::ProxyError;

/// Requests in flight on one link; more are refused `TooManyRequests`
/// (the global lookup bound normally stops clients long before).
const MAX_PENDING_PER_LINK: usize = 10_000;
/// Commands queued for a link's writer.
const LINK_QUEUE: usize = 256;

/// A broker connection after its handshake.
#[derive(Debug)]
pub struct Handshaken {
    pub stream: TcpStream,
    pub connected: CommandConnected,
    /// Bytes the broker sent after CONNECTED (to be relayed or decoded next).
    pub leftover: BytesMut,
}

/// Connects to broker `addr`, sends `connect` and waits for its CONNECTED,
/// all within `timeout`. A broker's ERROR (refused credentials) is
/// [`ProxyError::BrokerRefused`] with its code.
pub async fn handshake(
    addr: &BrokerAddress,
    connect: &BaseCommand,
    max_frame_bytes: usize,
    timeout: Duration,
) -> Result<Handshaken, ProxyError> {
    let name = addr.to_string();
    if addr.tls {
        return Err(ProxyError::BadUrl {
            url: name,
            why: "the proxy connects to brokers' plain pulsar:// port only",
        });
    }
    let attempt = async {
        let mut stream = TcpStream::connect(addr.authority())
            .await
            .map_err(|error| ProxyError::Unreachable {
                addr: name.clone(),
                error,
            })?;
        stream.set_nodelay(true)?;
        let mut out = BytesMut::new();
        frame::encode_command(connect, &mut out);
        stream.write_all(&out).await?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            if let Some(f) = frame::decode(&mut buf, max_frame_bytes)? {
                let c = f.command;
                return match Type::try_from(c.r#type) {
                    Ok(Type::Connected) => Ok(Handshaken {
                        stream,
                        connected: c.connected.map(|c| *c).unwrap_or_default(),
                        leftover: buf,
                    }),
                    Ok(Type::Error) => {
                        let e = c.error.map(|e| *e).unwrap_or_default();
                        Err(ProxyError::BrokerRefused {
                            addr: name.clone(),
                            code: kilonova_pulsar_protocol::proto::ServerError::try_from(e.error)
                                .ok(),
                            message: e.message,
                        })
                    }
                    other => Err(ProxyError::Unexpected {
                        addr: name.clone(),
                        what: format!("{other:?} before CONNECTED"),
                    }),
                };
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(ProxyError::LinkClosed(name.clone()));
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ProxyError::Timeout(addr.to_string()))?
}

/// What a link's reader and its users share.
#[derive(Default)]
struct Shared {
    pending: Mutex<HashMap<u64, oneshot::Sender<BaseCommand>>>,
    closed: AtomicBool,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<BaseCommand>>> {
        // The map stays consistent whatever panicked while it was held.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A multiplexed connection to one broker for lookup-connection requests.
/// Cloning shares it; it closes once the pool and every user dropped it.
#[derive(Clone)]
pub struct BrokerLink {
    addr: BrokerAddress,
    tx: mpsc::Sender<BaseCommand>,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for BrokerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerLink")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl BrokerLink {
    /// Serves requests over a connection that completed its handshake.
    pub fn start(addr: BrokerAddress, h: Handshaken, max_frame_bytes: usize) -> Self {
        let (reader, writer) = h.stream.into_split();
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let shared = Arc::new(Shared::default());
        // The reader holds a weak sender (for PONGs): when every user is
        // gone the writer ends and shuts the socket, and the reader sees
        // the broker close.
        tokio::spawn(read_loop(
            reader,
            h.leftover,
            shared.clone(),
            tx.downgrade(),
            max_frame_bytes,
            addr.to_string(),
        ));
        tokio::spawn(write_loop(writer, rx));
        BrokerLink {
            addr,
            tx,
            shared,
            next_id: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn addr(&self) -> &BrokerAddress {
        &self.addr
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Sends `request` (its request id replaced by the link's own) and waits
    /// for the broker's answer, which comes back with the link's id: the
    /// caller puts its client's id back.
    pub async fn request(
        &self,
        mut request: BaseCommand,
        timeout: Duration,
    ) -> Result<BaseCommand, ProxyError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if !commands::set_request_id(&mut request, id) {
            return Err(ProxyError::Unexpected {
                addr: self.addr.to_string(),
                what: "a request without a request id".into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending();
            if self.is_closed() {
                return Err(ProxyError::LinkClosed(self.addr.to_string()));
            }
            if pending.len() >= MAX_PENDING_PER_LINK {
                return Err(ProxyError::TooManyRequests(self.addr.to_string()));
            }
            pending.insert(id, tx);
        }
        let _forget = Forget {
            shared: &self.shared,
            id,
        };
        let exchange = async {
            self.tx
                .send(request)
                .await
                .map_err(|_| ProxyError::LinkClosed(self.addr.to_string()))?;
            rx.await
                .map_err(|_| ProxyError::LinkClosed(self.addr.to_string()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ProxyError::Timeout(self.addr.to_string()))?
    }
}

/// Removes a request from the pending map however its wait ends (answer,
/// timeout, or the waiting task dropped).
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.pending().remove(&self.id);
    }
}

async fn read_loop(
    mut reader: OwnedReadHalf,
    mut buf: BytesMut,
    shared: Arc<Shared>,
    pong: mpsc::WeakSender<BaseCommand>,
    max_frame_bytes: usize,
    addr: String,
) {
    let why = loop {
        match drain(&mut buf, &shared, &pong, max_frame_bytes) {
            Ok(()) => {}
            Err(e) => break e.to_string(),
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break "closed by the broker".to_string(),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    tracing::debug!(broker = %addr, reason = %why, "lookup link closed");
    shared.closed.store(true, Ordering::Release);
    // Waiters learn the link closed (their senders drop).
    shared.pending().clear();
}

/// Handles every whole frame in `buf`.
fn drain(
    buf: &mut BytesMut,
    shared: &Shared,
    pong: &mpsc::WeakSender<BaseCommand>,
    max_frame_bytes: usize,
) -> Result<(), ProxyError> {
    while let Some(f) = frame::decode(buf, max_frame_bytes)? {
        let c = f.command;
        if c.r#type == Type::Ping as i32 {
            if let Some(tx) = pong.upgrade() {
                // A full queue means the link is busy: the broker sees
                // traffic, so a lost PONG is harmless.
                let _ = tx.try_send(commands::pong());
            }
            continue;
        }
        let Some(id) = commands::request_id(&c) else {
            continue;
        };
        if let Some(waiter) = shared.pending().remove(&id) {
            let _ = waiter.send(c);
        }
    }
    Ok(())
}

async fn write_loop(mut writer: OwnedWriteHalf, mut rx: mpsc::Receiver<BaseCommand>) {
    let mut out = BytesMut::new();
    while let Some(c) = rx.recv().await {
        out.clear();
        frame::encode_command(&c, &mut out);
        if writer.write_all(&out).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// A bounded set of lookup links, one per broker and client identity.
pub struct LinkPool {
    links: Mutex<HashMap<(BrokerAddress, Credentials), BrokerLink>>,
    max_links: usize,
    max_frame_bytes: usize,
    timeout: Duration,
}

impl LinkPool {
    pub fn new(max_links: usize, max_frame_bytes: usize, timeout: Duration) -> Self {
        LinkPool {
            links: Mutex::new(HashMap::new()),
            max_links: max_links.max(1),
            max_frame_bytes,
            timeout,
        }
    }

    fn links(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(BrokerAddress, Credentials), BrokerLink>> {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An open link to `addr` for `creds`, opened if there is none.
    pub async fn get(
        &self,
        addr: &BrokerAddress,
        creds: &Credentials,
    ) -> Result<BrokerLink, ProxyError> {
        let key = (addr.clone(), creds.clone());
        if let Some(l) = self.links().get(&key).filter(|l| !l.is_closed()) {
            return Ok(l.clone());
        }
        let connect = commands::broker_connect(None, creds);
        let h = handshake(addr, &connect, self.max_frame_bytes, self.timeout).await?;
        let link = BrokerLink::start(addr.clone(), h, self.max_frame_bytes);
        let mut links = self.links();
        links.retain(|_, l| !l.is_closed());
        while links.len() >= self.max_links {
            // Full of live links: drop any one (its users keep it until done).
            let Some(k) = links.keys().next().cloned() else {
                break;
            };
            links.remove(&k);
        }
        links.insert(key, link.clone());
        Ok(link)
    }

    pub fn len(&self) -> usize {
        self.links().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
