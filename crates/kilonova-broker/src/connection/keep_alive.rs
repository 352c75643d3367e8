//! Keep-alive: when a silent client gets a PING and when it is closed. A
//! client paused for the answers it does not read counts as alive while the
//! writer still hands some of them to its socket.

use std::time::{Duration, Instant};

/// Whether a client is alive. A client silent for the keep-alive interval
/// gets a PING; one silent for twice the interval is closed.
#[derive(Debug)]
pub(super) struct KeepAlive {
    every: Duration,
    last_seen: Instant,
    /// What the writer had written at the last tick.
    last_written: u64,
}

/// What a keep-alive tick decides.
#[derive(Debug, PartialEq)]
pub(super) enum Liveness {
    Alive,
    Ping,
    Dead(String),
}

impl KeepAlive {
    pub(super) fn new(every: Duration, now: Instant) -> Self {
        KeepAlive {
            every,
            last_seen: now,
            last_written: 0,
        }
    }

    /// The client sent something, or the broker paused reading it.
    pub(super) fn seen(&mut self, now: Instant) {
        self.last_seen = now;
    }

    /// A tick at `now`; `written` is what the writer has written so far and
    /// `unread` the bytes queued, when reading is paused for unread answers.
    pub(super) fn tick(&mut self, now: Instant, written: u64, unread: Option<usize>) -> Liveness {
        // Paused for its unread answers, a client that reads some of them is
        // alive although its requests wait unread. (Only then: the kernel
        // takes a few pings for a dead peer too.)
        if unread.is_some() && written != self.last_written {
            self.last_seen = now;
        }
        self.last_written = written;
        let silent = now.saturating_duration_since(self.last_seen);
        if silent >= self.every * 2 {
            return Liveness::Dead(match unread {
                Some(queued) => format!(
                    "it read none of its answers ({queued} bytes queued) for {}s",
                    silent.as_secs()
                ),
                None => "keep-alive timed out".into(),
            });
        }
        match silent >= self.every {
            true => Liveness::Ping,
            false => Liveness::Alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::tests::{secs, t0};

    #[test]
    fn a_silent_client_is_pinged_after_the_interval_and_closed_after_twice_it() {
        let t0 = t0();
        let mut k = KeepAlive::new(secs(30), t0);
        assert_eq!(k.tick(t0 + secs(29), 0, None), Liveness::Alive);
        assert_eq!(k.tick(t0 + secs(30), 0, None), Liveness::Ping);
        assert_eq!(k.tick(t0 + secs(59), 0, None), Liveness::Ping);
        assert_eq!(
            k.tick(t0 + secs(60), 0, None),
            Liveness::Dead("keep-alive timed out".into())
        );
    }

    #[test]
    fn what_a_client_sends_restarts_its_silence() {
        let t0 = t0();
        let mut k = KeepAlive::new(secs(30), t0);
        k.seen(t0 + secs(50));
        assert_eq!(k.tick(t0 + secs(60), 0, None), Liveness::Alive);
        assert_eq!(k.tick(t0 + secs(80), 0, None), Liveness::Ping);
    }

    #[test]
    fn pings_written_to_a_silent_client_do_not_keep_it_alive() {
        // The kernel accepts a few pings for a dead peer too: what the writer
        // wrote counts only while the client is paused for unread answers.
        let t0 = t0();
        let mut k = KeepAlive::new(secs(30), t0);
        assert_eq!(k.tick(t0 + secs(30), 100, None), Liveness::Ping);
        assert_eq!(
            k.tick(t0 + secs(60), 200, None),
            Liveness::Dead("keep-alive timed out".into())
        );
    }

    #[test]
    fn a_paused_client_is_alive_while_it_reads_its_answers_and_closed_once_it_stops() {
        let t0 = t0();
        let mut k = KeepAlive::new(secs(30), t0);
        let queued = Some(4 << 20);
        for (i, at) in [30, 60, 90, 120].into_iter().enumerate() {
            let written = 1_000 * (i as u64 + 1);
            assert_eq!(k.tick(t0 + secs(at), written, queued), Liveness::Alive);
        }
        assert_eq!(k.tick(t0 + secs(150), 4_000, queued), Liveness::Ping);
        assert_eq!(
            k.tick(t0 + secs(180), 4_000, queued),
            Liveness::Dead("it read none of its answers (4194304 bytes queued) for 60s".into())
        );
    }
}
