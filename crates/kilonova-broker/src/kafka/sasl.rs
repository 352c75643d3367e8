//! SASL/PLAIN with a Kilonova token as the password: how a Kafka client
//! authenticates when the broker's authentication is on. The username
//! names the namespace the client's Kafka topics live in
//! (`tenant/namespace`, as KoP does); any other username leaves the
//! listener's namespace. After SaslHandshake v1 the credentials come in a
//! SaslAuthenticate; after v0, as the next frame on their own (answered
//! with an empty frame), as old clients send them. Until a connection has
//! authenticated, every other request but ApiVersions closes it.

use kilonova_kafka::kafka_protocol::error::ResponseError;
use kilonova_kafka::kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kilonova_kafka::kafka_protocol::protocol::StrBytes;
use kilonova_kafka::sasl::{plain_credentials, PLAIN};
use kilonova_metadata::names::NamespaceName;

use super::connection::KafkaConnection;

impl KafkaConnection {
    pub(super) fn sasl_handshake(
        &mut self,
        r: SaslHandshakeRequest,
        version: i16,
    ) -> SaslHandshakeResponse {
        let ok = r.mechanism.as_str() == PLAIN;
        self.sasl_mechanism_ok = ok;
        // Version 0: the credentials follow as a frame of their own.
        self.raw_sasl_next = ok && version == 0;
        SaslHandshakeResponse::default()
            .with_error_code(match ok {
                true => 0,
                false => ResponseError::UnsupportedSaslMechanism.code(),
            })
            .with_mechanisms(vec![StrBytes::from_static_str(PLAIN)])
    }

    /// Checks credentials sent raw after a SaslHandshake v0: an empty
    /// frame if they hold, else nothing and the connection closes.
    pub(super) fn sasl_raw(&mut self, auth_bytes: bytes::Bytes) -> Option<bytes::Bytes> {
        self.raw_sasl_next = false;
        let r = SaslAuthenticateRequest::default().with_auth_bytes(auth_bytes);
        match self.sasl_authenticate(r).error_code {
            0 => Some(bytes::Bytes::from_static(&[0, 0, 0, 0])),
            _ => None,
        }
    }

    /// Checks the token; on failure the connection closes after the answer.
    pub(super) fn sasl_authenticate(
        &mut self,
        r: SaslAuthenticateRequest,
    ) -> SaslAuthenticateResponse {
        let failed = |why: &str| {
            SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                .with_error_message(Some(StrBytes::from_string(why.to_string())))
        };
        if !self.sasl_mechanism_ok {
            self.closing = true;
            return failed("SaslHandshake with mechanism PLAIN must come first");
        }
        let Some((user, token)) = plain_credentials(&r.auth_bytes) else {
            self.closing = true;
            return failed("malformed PLAIN credentials");
        };
        match self
            .broker
            .authenticate(Some("token"), Some(token.as_bytes()))
        {
            Ok(principal) => {
                if let Ok(ns) = NamespaceName::parse(user) {
                    self.namespace = ns.to_string();
                }
                tracing::debug!(
                    conn = self.id,
                    role = principal.as_ref().map(|p| p.role.as_str()),
                    "Kafka client authenticated"
                );
                self.principal = principal;
                self.authenticated = true;
                SaslAuthenticateResponse::default()
            }
            Err(e) => {
                tracing::info!(conn = self.id, peer = %self.peer, error = %e, "Kafka authentication failed");
                self.closing = true;
                failed(&format!("authentication failed: {e}"))
            }
        }
    }
}
