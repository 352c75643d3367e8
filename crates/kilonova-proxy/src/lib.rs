//! `kilonova proxy`: Pulsar's proxy role, the one address clients outside a
//! cluster's network need to reach.
//!
//! - A client's CONNECT without `proxy_to_broker_url` opens a **lookup
//!   connection** ([`lookup`]): the proxy authenticates the client, answers
//!   CONNECTED and PINGs itself, and forwards LOOKUP, PARTITIONED_METADATA,
//!   GET_TOPICS_OF_NAMESPACE and GET_SCHEMA to a broker over its own
//!   connections ([`link`]), following redirects; a LOOKUP is answered
//!   "connect to the owner, through the proxy" (`proxy_through_service_url`).
//! - A CONNECT with `proxy_to_broker_url` opens a **relay connection**
//!   ([`relay`]): to a broker of the cluster only ([`allow_list`]), with the
//!   proxy's own credentials and the client's role as `original_principal`;
//!   once the broker says CONNECTED, bytes flow both ways through bounded
//!   buffers.
//! - The HTTP port ([`http`]) forwards `/admin/*` and `/lookup/*` to a broker's
//!   web service (the client's `Authorization` passes through) and serves the
//!   proxy's own `/metrics` ([`metrics`]).
//!
//! Main types: [`ProxyConfig`], [`Proxy`], [`ProxyError`].
//!
//! The proxy never decides what a client may do: brokers authorize the
//! client's role (`proxy_roles`, kilonova_auth::proxy_roles). It depends on
//! the protocol and auth crates only, never on the broker; it relays to no
//! address that is not one of the cluster's brokers, and every buffer, queue
//! and connection count it keeps has a bound.

pub mod allow_list;
mod commands;
pub mod config;
mod error;
pub mod http;
pub mod link;
pub mod lookup;
pub mod metrics;
pub mod relay;
mod server;

pub use allow_list::{AllowList, BrokerAddress};
pub use config::ProxyConfig;
pub use error::ProxyError;
pub use server::{Proxy, ProxyPorts};
