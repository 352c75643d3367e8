//! Keeping the broker's metadata session alive, and what losing it means.
//!
//! The session is renewed every third of its ttl. It is lost when the store
//! says so (expired or unknown), or when no renewal has succeeded for a
//! whole ttl (counted from the last successful renewal's sending) — a
//! broker that was paused or cut off cannot know whether the store expired
//! it meanwhile, and another broker may own its bundles already, so it
//! assumes the worst; from that moment it acknowledges no publish
//! ([`Broker::ownership_lapsed`]), even before this task has run.
//!
//! Losing it gives up every bundle: their topics are closed (clients look
//! them up again and reach the new owners), the old session is ended, and
//! a new one is opened, under which the broker registers again. While the
//! store cannot be reached, renewals are retried.

use std::time::{Duration, Instant};

use kilonova_metadata::{MetadataError, SessionId};

use crate::broker::Broker;

/// Runs until the broker shuts down.
pub(super) async fn keep_alive(broker: Broker) {
    let Some(ttl) = broker.membership().map(|m| m.ttl) else {
        return;
    };
    let every = (ttl / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        if broker.is_shutting_down() {
            return;
        }
        let Some(m) = broker.membership() else {
            return;
        };
        // Checked before renewing: after a pause, the renewal might succeed
        // on a session the store already expired and a new one replaced.
        let lapsed = m.lapsed();
        let sent = Instant::now();
        let renewed = match lapsed {
            true => Err(MetadataError::SessionExpired(m.session().0)),
            false => {
                let call = broker.resources().store().keep_alive(m.session());
                match tokio::time::timeout(every, call).await {
                    Ok(r) => r,
                    Err(_) => Err(MetadataError::Unavailable(
                        "renewing the session timed out".into(),
                    )),
                }
            }
        };
        match renewed {
            Ok(()) => m.renewed(sent),
            Err(MetadataError::Unavailable(why)) if !m.lapsed() => {
                tracing::warn!(error = %why, "renewing the metadata session failed; retrying");
            }
            Err(e) => {
                tracing::error!(error = %e, lapsed, "the broker's metadata session is lost: giving up its bundles");
                broker.session_lost().await;
            }
        }
    }
}

impl Broker {
    /// Gives up every bundle (closing their topics), then opens a new
    /// session and registers again, retrying until the store answers.
    async fn session_lost(&self) {
        let Some(m) = self.membership() else {
            return;
        };
        self.metrics().count_session_lost();
        let lost = {
            let mut state = m.state();
            let held: Vec<_> = state.held.drain().collect();
            state.releasing.extend(held.iter().cloned());
            let held: Vec<_> = held.into_iter().map(|(k, _)| k).collect();
            state.record.bundles = 0;
            held
        };
        for key in &lost {
            self.close_bundle_topics(key, None).await;
        }
        {
            let mut state = m.state();
            for key in &lost {
                state.releasing.remove(key);
            }
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.is_shutting_down() {
                return;
            }
            match self.renew_session(m.ttl).await {
                Ok(session) => {
                    tracing::info!(
                        session = session.0,
                        bundles_lost = lost.len(),
                        "registered again with a new metadata session"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "opening a new metadata session failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// A new session, with the registration under it.
    async fn renew_session(&self, ttl: Duration) -> Result<SessionId, MetadataError> {
        let Some(m) = self.membership() else {
            return Err(MetadataError::Closed);
        };
        let store = self.resources().store();
        // The old one may still be alive in the store (renewals only timed
        // out): end it, so that the bundles it owned free now, not after its ttl.
        let old = m.session();
        if let Ok(Err(e)) = tokio::time::timeout(ttl, store.close_session(old)).await {
            tracing::debug!(session = old.0, error = %e, "the lost session was gone already");
        }
        let opened = Instant::now();
        let session = store.open_session(ttl).await?;
        let record = {
            let mut state = m.state();
            state.session = session;
            state.record.session = session.0;
            state.record.clone()
        };
        self.resources()
            .register_broker(&m.cluster, &m.id, &record, session)
            .await?;
        m.renewed(opened);
        Ok(session)
    }
}
