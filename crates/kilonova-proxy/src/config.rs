//! `kilonova proxy`'s settings: a TOML file (config/proxy.toml, every option
//! commented), overridden by flags. Every option is in docs/proxy.md with
//! its default.

use serde::Deserialize;

use kilonova_auth::tls::TlsConfig;
use kilonova_auth::AuthConfig;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address the Pulsar and HTTP ports listen on.
    pub bind_address: String,
    /// Pulsar binary protocol port clients connect to.
    pub pulsar_port: u16,
    /// HTTP port: `/admin/*` and `/lookup/*` forwarded, `/metrics`.
    pub http_port: u16,
    /// Pulsar protocol over TLS (`pulsar+ssl://`), when `[tls]` has a
    /// certificate.
    pub pulsar_tls_port: u16,
    /// HTTPS port, when `[tls]` has a certificate.
    pub https_port: u16,
    /// Whether the plain ports listen (false: only the TLS ports; needs
    /// `[tls]`).
    pub plain_ports_enabled: bool,
    /// The brokers' Pulsar service URLs (`pulsar://host:port`): where
    /// lookups go (in turn), and brokers relays may go to.
    pub broker_service_urls: Vec<String>,
    /// The brokers' web service URLs (`http://host:port`): where admin
    /// requests go (the first that answers).
    pub broker_web_service_urls: Vec<String>,
    /// Client connections served at once on the Pulsar ports (plain and
    /// TLS together); more are refused (closed at once).
    pub max_connections: usize,
    /// HTTP(S) connections served at once; at the cap the server stops
    /// accepting and new connections wait in the listen backlog.
    pub max_http_connections: usize,
    /// An HTTP connection that has not sent a whole request head within this
    /// (of opening, or of its previous answer) is closed.
    pub http_header_read_timeout_secs: u64,
    /// Lookup-connection requests (LOOKUP, PARTITIONED_METADATA,
    /// GET_TOPICS_OF_NAMESPACE, GET_SCHEMA) in flight at once over all
    /// clients; a client with requests waiting is not read from (Pulsar's
    /// `maxConcurrentLookupRequests`).
    pub max_concurrent_lookup_requests: usize,
    /// Redirects followed for one lookup.
    pub max_lookup_redirects: u32,
    /// Connections the proxy keeps to brokers for lookups (one per broker
    /// and client role).
    pub max_lookup_links: usize,
    /// Brokers learned from lookup answers that relays may go to, beside
    /// `broker_service_urls`.
    pub max_learned_brokers: usize,
    /// The largest frame a client may send on a lookup connection, and the
    /// largest CONNECT.
    pub max_client_frame_bytes: usize,
    /// The largest frame a broker may send on the proxy's own connections
    /// (a namespace's topic list, a schema).
    pub max_broker_frame_bytes: usize,
    /// Per direction of a relay connection: bytes read from one side before
    /// they are written to the other. A side that does not read stops the
    /// other side being read from.
    pub relay_buffer_bytes: usize,
    /// A relay whose write makes no progress for this long is closed.
    pub relay_write_timeout_secs: u64,
    /// Connecting to a broker and its CONNECTED answer, and each forwarded
    /// request, time out after this.
    pub broker_timeout_secs: u64,
    /// A client must send CONNECT within this, or it is closed; a lookup
    /// connection idle this long is pinged, and closed if idle twice as long
    /// (relayed connections are kept alive by the broker's own PINGs).
    pub keep_alive_secs: u64,
    /// Send the client's credentials to the broker too
    /// (`original_auth_data`, `original_auth_method`; Pulsar's
    /// `forwardAuthorizationCredentials`).
    pub forward_authorization_credentials: bool,
    /// The largest admin request body forwarded (it is kept to resend on a
    /// redirect).
    pub max_http_body_bytes: usize,
    /// The TLS ports' certificate (the broker's `[tls]` options).
    pub tls: TlsConfig,
    /// Client authentication (the broker's `[auth]` options); the proxy's
    /// own token to brokers is `broker_client_auth_token`, its role must be
    /// in the brokers' `proxy_roles`.
    pub auth: AuthConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            bind_address: "127.0.0.1".into(),
            pulsar_port: 6650,
            http_port: 8080,
            pulsar_tls_port: 6651,
            https_port: 8443,
            plain_ports_enabled: true,
            broker_service_urls: Vec::new(),
            broker_web_service_urls: Vec::new(),
            max_connections: 10_000,
            max_http_connections: 1_024,
            http_header_read_timeout_secs: 30,
            max_concurrent_lookup_requests: 50_000,
            max_lookup_redirects: 10,
            max_lookup_links: 64,
            max_learned_brokers: 1_024,
            max_client_frame_bytes: 64 << 10,
            max_broker_frame_bytes: kilonova_pulsar_protocol::frame::DEFAULT_MAX_FRAME_BYTES,
            relay_buffer_bytes: 64 << 10,
            relay_write_timeout_secs: 60,
            broker_timeout_secs: 30,
            keep_alive_secs: 30,
            forward_authorization_credentials: false,
            max_http_body_bytes: 8 << 20,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
        }
    }
}
