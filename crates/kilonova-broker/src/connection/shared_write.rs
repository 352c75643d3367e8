//! A plain TCP connection's write half, shared between the connection's
//! writer task and the journal's thread, which writes receipts to it
//! directly (`crate::outbound`, ADR 0028) — one socket, no duplicate
//! descriptor.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

/// The writer's handle: writes when the socket is ready, like the half
/// itself. Shutting it down does nothing; the half shuts the socket's
/// sending side when its last holder drops it.
pub(super) struct SharedWriteHalf(pub(super) Arc<OwnedWriteHalf>);

impl SharedWriteHalf {
    fn stream(&self) -> &TcpStream {
        (*self.0).as_ref()
    }

    /// Waits until the socket is ready, then `write`s (again after a
    /// readiness that turned out stale: the `try_` call cleared it).
    fn poll_ready_then(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream().poll_write_ready(cx))?;
            match write(self.stream()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl AsyncWrite for SharedWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_ready_then(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_ready_then(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
