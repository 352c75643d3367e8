//! Which addresses the proxy relays to: the cluster's brokers only, never an
//! arbitrary host a client names (an open relay would let anyone reach any
//! port behind the firewall). A broker is known from the configuration
//! (`broker_service_urls`) or because a broker named it in a lookup answer
//! (the owner of a topic, a redirect's target); learned addresses are kept
//! up to a bound, the oldest forgotten first.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::sync::Mutex;

use crate::error::ProxyError;

/// The longest broker URL accepted (a host name is at most 253 bytes).
const MAX_URL_BYTES: usize = 300;
const PLAIN_SCHEME: &str = "pulsar://";
const TLS_SCHEME: &str = "pulsar+ssl://";
const DEFAULT_PORT: u16 = 6650;
const DEFAULT_TLS_PORT: u16 = 6651;

/// A broker's Pulsar service address, normalised so two spellings of one
/// URL compare equal (host in lower case, the default port made explicit).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerAddress {
    pub tls: bool,
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
}

impl BrokerAddress {
    /// Parses `pulsar://host[:port][/]`, `pulsar+ssl://…`, or `host:port`
    /// (how clients name the broker in CONNECT's `proxy_to_broker_url`:
    /// Pulsar's Java and C++ clients send the lookup's URL without its
    /// scheme).
    pub fn parse(url: &str) -> Result<Self, ProxyError> {
        let bad = |why| ProxyError::BadUrl {
            url: url.chars().take(MAX_URL_BYTES).collect(),
            why,
        };
        if url.len() > MAX_URL_BYTES {
            return Err(bad("too long"));
        }
        let (tls, rest) = if let Some(r) = strip_prefix_ignore_case(url, PLAIN_SCHEME) {
            (false, r)
        } else if let Some(r) = strip_prefix_ignore_case(url, TLS_SCHEME) {
            (true, r)
        } else if url.contains("://") {
            return Err(bad("not a pulsar:// or pulsar+ssl:// URL"));
        } else if url
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && !p.ends_with(']'))
        {
            (false, url)
        } else {
            return Err(bad("neither a pulsar:// URL nor host:port"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#', ',']) || rest.chars().any(char::is_whitespace) {
            return Err(bad("a broker URL is scheme://host:port only"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("invalid IPv6 address"));
            }
            let port = match after {
                "" => None,
                a => Some(a.strip_prefix(':').ok_or_else(|| bad("invalid port"))?),
            };
            (host, port)
        } else {
            if rest.matches(':').count() > 1 {
                return Err(bad("an IPv6 address is written in brackets"));
            }
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => {
                if tls {
                    DEFAULT_TLS_PORT
                } else {
                    DEFAULT_PORT
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("invalid port"))?,
        };
        Ok(BrokerAddress {
            tls,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// `host:port`, as a socket address to connect to.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { TLS_SCHEME } else { PLAIN_SCHEME };
        write!(f, "{scheme}{}", self.authority())
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The brokers the proxy may relay to.
#[derive(Debug)]
pub struct AllowList {
    configured: BTreeSet<BrokerAddress>,
    learned: Mutex<Learned>,
    max_learned: usize,
}

#[derive(Debug, Default)]
struct Learned {
    set: HashSet<BrokerAddress>,
    /// Oldest first: the one forgotten when the bound is reached.
    order: VecDeque<BrokerAddress>,
}

impl AllowList {
    pub fn new(configured: impl IntoIterator<Item = BrokerAddress>, max_learned: usize) -> Self {
        AllowList {
            configured: configured.into_iter().collect(),
            learned: Mutex::new(Learned::default()),
            max_learned: max_learned.max(1),
        }
    }

    /// Whether `addr` is a broker of the cluster as far as the proxy knows.
    pub fn allows(&self, addr: &BrokerAddress) -> bool {
        self.configured.contains(addr) || self.lock().set.contains(addr)
    }

    /// Remembers `addr`, which a broker named (a lookup's owner or
    /// redirect target).
    pub fn learn(&self, addr: &BrokerAddress) {
        if self.configured.contains(addr) {
            return;
        }
        let mut l = self.lock();
        if l.set.contains(addr) {
            return;
        }
        while l.order.len() >= self.max_learned {
            if let Some(old) = l.order.pop_front() {
                l.set.remove(&old);
            }
        }
        l.set.insert(addr.clone());
        l.order.push_back(addr.clone());
    }

    pub fn learned_count(&self) -> usize {
        self.lock().set.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Learned> {
        // A panic while holding this lock cannot leave the set half-updated
        // in a way that matters (a set and its order): keep serving.
        self.learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(url: &str) -> BrokerAddress {
        match BrokerAddress::parse(url) {
            Ok(a) => a,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn spellings_of_one_broker_compare_equal() {
        assert_eq!(
            a("pulsar://Broker-1.example:6650"),
            a("pulsar://broker-1.example")
        );
        assert_eq!(a("PULSAR://127.0.0.1:6650/"), a("pulsar://127.0.0.1"));
        assert_eq!(a("pulsar+ssl://h"), a("pulsar+ssl://h:6651"));
        assert_ne!(a("pulsar://h:6651"), a("pulsar+ssl://h:6651"));
        assert_eq!(a("pulsar://[::1]:7000").authority(), "[::1]:7000");
        assert_eq!(a("pulsar://[::1]").port, 6650);
        assert_eq!(a("pulsar://h:7000").to_string(), "pulsar://h:7000");
        // What clients send in proxy_to_broker_url.
        assert_eq!(a("127.0.0.1:41303"), a("pulsar://127.0.0.1:41303"));
        assert_eq!(a("[::1]:7000"), a("pulsar://[::1]:7000"));
    }

    #[test]
    fn urls_that_are_not_a_broker_address_are_refused() {
        for url in [
            "",
            "http://h:8080",
            "h",
            "h:",
            "[::1]",
            "user@h:6650",
            "pulsar://",
            "pulsar://:6650",
            "pulsar://h:0",
            "pulsar://h:65536",
            "pulsar://h:port",
            "pulsar://user@h:6650",
            "pulsar://h:6650/path",
            "pulsar://h1:6650,h2:6650",
            "pulsar://h :6650",
            "pulsar://[::1",
            "pulsar://[nonsense]:6650",
            "pulsar://::1:6650",
        ] {
            assert!(BrokerAddress::parse(url).is_err(), "{url:?} accepted");
        }
        let long = format!("pulsar://{}:6650", "h".repeat(400));
        assert!(BrokerAddress::parse(&long).is_err());
    }

    #[test]
    fn only_configured_and_learned_brokers_are_allowed() {
        let list = AllowList::new([a("pulsar://b1:6650")], 2);
        assert!(list.allows(&a("pulsar://B1")));
        assert!(!list.allows(&a("pulsar://b2:6650")));
        assert!(
            !list.allows(&a("pulsar://b1:22")),
            "another port of a broker's host"
        );
        list.learn(&a("pulsar://b2:6650"));
        assert!(list.allows(&a("pulsar://b2:6650")));
    }

    #[test]
    fn learned_brokers_are_bounded_and_the_oldest_is_forgotten() {
        let list = AllowList::new([a("pulsar://b0")], 2);
        for b in ["pulsar://b1", "pulsar://b2", "pulsar://b1", "pulsar://b3"] {
            list.learn(&a(b));
        }
        assert_eq!(list.learned_count(), 2);
        assert!(!list.allows(&a("pulsar://b1")));
        assert!(list.allows(&a("pulsar://b2")));
        assert!(list.allows(&a("pulsar://b3")));
        list.learn(&a("pulsar://b0"));
        assert_eq!(
            list.learned_count(),
            2,
            "configured brokers take no learned slot"
        );
    }

    proptest! {
        #[test]
        fn any_string_parses_or_is_refused_without_panicking(s in ".{0,80}") {
            let _ = BrokerAddress::parse(&s);
            let _ = BrokerAddress::parse(&format!("pulsar://{s}"));
        }

        #[test]
        fn a_parsed_address_round_trips_through_its_display(
            host in "[a-z][a-z0-9.-]{0,30}", port in 1u16.., tls: bool,
        ) {
            let scheme = if tls { "pulsar+ssl" } else { "pulsar" };
            let addr = a(&format!("{scheme}://{host}:{port}"));
            prop_assert_eq!(a(&addr.to_string()), addr);
        }
    }
}
