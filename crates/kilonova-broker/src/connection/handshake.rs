//! CONNECT and the client's credentials: authentication when the connection
//! opens, and Pulsar's refresh when a token expires (an AUTH_CHALLENGE, which
//! the client answers with an AUTH_RESPONSE for the same role, or the
//! connection closes).

use kilonova_auth::Principal;
use kilonova_pulsar_protocol::proto::{CommandAuthResponse, CommandConnect, ServerError};

use super::{Connection, End};
use crate::commands;
use crate::error::BrokerError;

/// The newest protocol version we speak (v19: the `.proto` we compile).
const PROTOCOL_VERSION: i32 = 19;

/// The first protocol version with REACHED_END_OF_TOPIC (Pulsar sends it
/// from this version on).
const END_OF_TOPIC_VERSION: i32 = 9;

/// How the C++ client (and the Python and Node.js clients built on it) names
/// itself in CONNECT: `Pulsar-CPP-v4.2.0`.
const CPP_CLIENT_PREFIX: &str = "Pulsar-CPP-";

/// Request id of errors that answer no request (a refused CONNECT), as Pulsar
/// sends them (-1).
const NO_REQUEST: u64 = u64::MAX;

impl Connection {
    pub(super) fn connect(&mut self, c: CommandConnect) -> Result<(), End> {
        if self.connected {
            return Err(End::Violation("second CONNECT".into()));
        }
        let method = c.auth_method_name.as_deref();
        match self.broker.authenticate(method, c.auth_data.as_deref()) {
            Ok(p) => self.principal = p,
            Err(e) => return Err(self.refuse_credentials(&e)),
        }
        self.original_principal = self.acting_for(c.original_principal.as_deref())?;
        self.connected = true;
        self.connected_since_ms = self.broker.clock().now_ms();
        self.client_version = std::sync::Arc::from(capped(&c.client_version));
        self.wants_entry_metadata = c
            .feature_flags
            .and_then(|f| f.supports_broker_entry_metadata)
            .unwrap_or(false);
        let version = negotiated_version(c.protocol_version);
        self.protocol_version = version;
        self.hears_end_of_topic = hears_end_of_topic(version, &c.client_version);
        let role = self.principal.as_ref().map(|p| p.role.as_str());
        let for_role = self.original_principal.as_ref().map(|p| p.role.as_str());
        tracing::debug!(conn = self.id, client = %c.client_version, version, role, for_role, "connected");
        let max_message_size = i32::try_from(self.broker.config().max_message_bytes).ok();
        self.out
            .command(commands::connected(version, max_message_size));
        Ok(())
    }

    /// The client a proxy connects for (CONNECT's `original_principal`),
    /// checked as Pulsar's brokers check it with authorization on: only a
    /// proxy role names one, and it must (kilonova_auth::proxy_roles).
    /// `None` for every other connection.
    fn acting_for(&self, original: Option<&str>) -> Result<Option<Principal>, End> {
        let Some(p) = &self.principal else {
            // Authentication is off: nobody is anybody in particular.
            return Ok(None);
        };
        let security = self.broker.security();
        if security.authorizer().enabled() {
            if let Err(e) = security.check_original_principal(&p.role, original) {
                self.out.command(commands::error(
                    NO_REQUEST,
                    ServerError::AuthorizationError,
                    e.to_string(),
                ));
                return Err(End::Violation(format!("role {}: {e}", p.role)));
            }
        }
        let original = original.filter(|o| !o.trim().is_empty());
        Ok(match original {
            Some(o) if security.is_proxy_role(&p.role) => Some(Principal {
                role: o.to_owned(),
                expires_at_secs: None,
                not_before_secs: None,
            }),
            _ => None,
        })
    }

    /// The client's answer to an AUTH_CHALLENGE: new credentials for the same role.
    pub(super) fn auth_response(&mut self, r: CommandAuthResponse) -> Result<(), End> {
        let Some(old) = &self.principal else {
            // Authentication is off: nothing was asked.
            return Ok(());
        };
        let (method, data) = match &r.response {
            Some(d) => (d.auth_method_name.as_deref(), d.auth_data.as_deref()),
            None => (None, None),
        };
        let refreshed = self
            .broker
            .authenticate(method, data)
            .and_then(|new| same_role(old, new));
        let p = refreshed.map_err(|e| self.refuse_credentials(&e))?;
        tracing::debug!(conn = self.id, role = %p.role, "credentials refreshed");
        self.principal = Some(p);
        self.challenged = false;
        Ok(())
    }

    /// Challenges credentials that expired; closes the connection if they
    /// expired and the last challenge was not answered (Pulsar's refresh).
    pub(super) fn check_credentials(&mut self) -> Result<(), End> {
        let Some(p) = &self.principal else {
            return Ok(());
        };
        let now_secs = self.broker.clock().now_ms() / 1000;
        match refresh(p, self.challenged, now_secs) {
            Refresh::Valid => Ok(()),
            Refresh::Close => {
                self.out.command(commands::error(
                    NO_REQUEST,
                    ServerError::AuthenticationError,
                    "the token expired and was not refreshed",
                ));
                Err(End::Violation(format!(
                    "role {}'s token expired and was not refreshed",
                    p.role
                )))
            }
            Refresh::Challenge => {
                tracing::debug!(conn = self.id, role = %p.role, "token expired: challenging");
                self.challenged = true;
                self.out
                    .command(commands::auth_challenge(self.protocol_version));
                Ok(())
            }
        }
    }

    /// Refuses the client's credentials: the error, then the connection closes.
    fn refuse_credentials(&self, e: &BrokerError) -> End {
        self.out.command(commands::error(
            NO_REQUEST,
            ServerError::AuthenticationError,
            e.to_string(),
        ));
        End::Violation(e.to_string())
    }
}

/// The protocol version a connection speaks: the client's, up to ours.
fn negotiated_version(client: Option<i32>) -> i32 {
    client.unwrap_or(0).clamp(0, PROTOCOL_VERSION)
}

/// Whether a client is told REACHED_END_OF_TOPIC. Pulsar tells every client
/// of protocol v9 or later. The C++ client announces v20 but has no handler
/// for the command: it takes it for an invalid message and closes the
/// connection, with every producer and consumer on it (the requests in
/// flight fail), then resubscribes and, told again, closes again. So it is
/// not told; it learns nothing it could use (it has no end-of-topic API).
fn hears_end_of_topic(version: i32, client_version: &str) -> bool {
    version >= END_OF_TOPIC_VERSION && !client_version.starts_with(CPP_CLIENT_PREFIX)
}

/// What a credentials check does.
#[derive(Debug, PartialEq)]
enum Refresh {
    Valid,
    /// Expired: ask the client for new credentials.
    Challenge,
    /// Expired, and the challenge went unanswered: close the connection.
    Close,
}

fn refresh(p: &Principal, challenged: bool, now_secs: u64) -> Refresh {
    match (p.expired(now_secs), challenged) {
        (false, _) => Refresh::Valid,
        (true, false) => Refresh::Challenge,
        (true, true) => Refresh::Close,
    }
}

/// Refreshed credentials are taken only for the role the connection has.
fn same_role(old: &Principal, new: Option<Principal>) -> Result<Principal, BrokerError> {
    match new {
        Some(p) if p.role == old.role => Ok(p),
        _ => Err(BrokerError::Authentication(
            kilonova_auth::AuthError::RoleChanged,
        )),
    }
}

/// A client-given label kept for stats: at most 128 bytes, cut at a
/// character boundary.
fn capped(s: &str) -> &str {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: &str, expires_at_secs: Option<u64>) -> Principal {
        Principal {
            role: role.into(),
            expires_at_secs,
            not_before_secs: None,
        }
    }

    #[test]
    fn the_protocol_version_is_the_clients_up_to_ours() {
        assert_eq!(negotiated_version(None), 0);
        assert_eq!(negotiated_version(Some(-3)), 0);
        assert_eq!(negotiated_version(Some(15)), 15);
        assert_eq!(negotiated_version(Some(21)), PROTOCOL_VERSION);
    }

    #[test]
    fn the_end_of_topic_is_told_from_v9_except_to_the_cpp_client() {
        assert!(hears_end_of_topic(19, "Pulsar-Java-v4.0.0"));
        assert!(hears_end_of_topic(9, "Pulsar Go 0.14.0"));
        assert!(!hears_end_of_topic(8, "Pulsar-Java-v1.20"));
        assert!(!hears_end_of_topic(19, "Pulsar-CPP-v4.2.0"));
        assert!(!hears_end_of_topic(19, "Pulsar-CPP-v3.7.0-my-app"));
    }

    #[test]
    fn expired_credentials_are_challenged_once_then_the_connection_closes() {
        let p = principal("alice", Some(1_000));
        assert_eq!(refresh(&p, false, 999), Refresh::Valid);
        assert_eq!(refresh(&p, false, 1_000), Refresh::Challenge);
        assert_eq!(refresh(&p, true, 1_000), Refresh::Close);
        let forever = principal("alice", None);
        assert_eq!(refresh(&forever, false, u64::MAX), Refresh::Valid);
    }

    #[test]
    fn refreshed_credentials_must_be_for_the_same_role() {
        let alice = principal("alice", Some(1_000));
        let renewed = same_role(&alice, Some(principal("alice", Some(2_000))));
        assert_eq!(renewed.ok().and_then(|p| p.expires_at_secs), Some(2_000));
        for new in [Some(principal("bob", Some(2_000))), None] {
            let e = same_role(&alice, new).err();
            assert_eq!(
                e.map(|e| e.server_error()),
                Some(ServerError::AuthenticationError)
            );
        }
    }
}
