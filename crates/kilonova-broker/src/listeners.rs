//! Advertised listeners (Pulsar's `advertisedListeners`): named sets of
//! Pulsar-protocol URLs the broker is reachable at, one per network its
//! clients come from (`internal` → `pulsar://10.0.0.5:6650`, `external` →
//! `pulsar://broker.example.com:6650`). A client names its listener in LOOKUP
//! (`advertised_listener_name`) or in the HTTP lookup (`?listenerName=` or the
//! `X-Pulsar-ListenerName` header) and is told that listener's URLs; a client
//! naming none gets the internal listener's. Listeners change only what
//! lookups answer: the broker listens on its ports as configured.
//!
//! The rules are Pulsar's (its `MultipleListenerValidator`): each listener has
//! at most one `pulsar://` and one `pulsar+ssl://` URL, a host:port belongs to
//! one listener, and the internal listener is one of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::BrokerError;

/// Listeners as configured: name → its URLs.
pub type ListenerTable = BTreeMap<String, Vec<String>>;

/// One listener's Pulsar-protocol URLs: `pulsar://host:port` and/or
/// `pulsar+ssl://host:port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerUrls {
    pub plain: Option<String>,
    pub tls: Option<String>,
}

/// Why a listener configuration is refused (at start, before anything is served).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenerError {
    #[error("an advertised listener has an empty name")]
    EmptyName,
    #[error("advertised listener {listener:?}: {url:?} is not a pulsar://host:port or pulsar+ssl://host:port URL")]
    BadUrl { listener: String, url: String },
    #[error("advertised listener {listener:?} has more than one {scheme}:// URL")]
    Redundant {
        listener: String,
        scheme: &'static str,
    },
    #[error("advertised listener {0:?} has no URL")]
    NoUrl(String),
    #[error("advertised listeners {first:?} and {second:?} both advertise {host_port}: an address belongs to one listener")]
    SharedAddress {
        first: String,
        second: String,
        host_port: String,
    },
    #[error("internal_listener_name {0:?} is not one of advertised_listeners")]
    UnknownInternal(String),
    #[error("advertised_listeners has several listeners: internal_listener_name must say which one clients naming no listener get")]
    NoInternal,
    #[error("advertised listener {listener:?}: {url} needs the {port} port, which this broker does not serve")]
    PortNotServed {
        listener: String,
        url: String,
        port: &'static str,
    },
    #[error("advertised listeners {0:?}: expected name:url[,name:url…]")]
    BadList(String),
}

/// The broker's advertised listeners, by name (empty: none configured).
#[derive(Clone, Debug, Default)]
pub struct AdvertisedListeners {
    by_name: BTreeMap<String, ListenerUrls>,
    internal: Option<String>,
}

impl AdvertisedListeners {
    /// Listeners from `table` (name → its URLs). `internal` names the one a
    /// client naming no listener gets; it may be left out when there is only
    /// one listener.
    pub fn new(table: &ListenerTable, internal: Option<&str>) -> Result<Self, ListenerError> {
        let mut by_name = BTreeMap::new();
        // host:port → the listener advertising it.
        let mut owners: BTreeMap<String, &str> = BTreeMap::new();
        for (name, urls) in table {
            if name.trim().is_empty() {
                return Err(ListenerError::EmptyName);
            }
            let mut listener = ListenerUrls::default();
            for url in urls {
                let bad = || ListenerError::BadUrl {
                    listener: name.clone(),
                    url: url.clone(),
                };
                let (scheme, host_port) = split_url(url).ok_or_else(bad)?;
                let slot = match scheme {
                    "pulsar" => &mut listener.plain,
                    _ => &mut listener.tls,
                };
                if slot.is_some() {
                    return Err(ListenerError::Redundant {
                        listener: name.clone(),
                        scheme,
                    });
                }
                *slot = Some(url.clone());
                let key = host_port.to_ascii_lowercase();
                match owners.get(&key) {
                    Some(other) if *other != name.as_str() => {
                        return Err(ListenerError::SharedAddress {
                            first: (*other).to_owned(),
                            second: name.clone(),
                            host_port: host_port.to_owned(),
                        })
                    }
                    _ => {
                        owners.insert(key, name);
                    }
                }
            }
            if listener.plain.is_none() && listener.tls.is_none() {
                return Err(ListenerError::NoUrl(name.clone()));
            }
            by_name.insert(name.clone(), listener);
        }
        let internal = match internal.filter(|n| !n.is_empty()) {
            Some(n) if by_name.contains_key(n) => Some(n.to_owned()),
            Some(n) => return Err(ListenerError::UnknownInternal(n.to_owned())),
            None if by_name.len() > 1 => return Err(ListenerError::NoInternal),
            None => by_name.keys().next().cloned(),
        };
        Ok(AdvertisedListeners { by_name, internal })
    }

    /// Refuses URLs of a kind of port the broker does not serve (a client
    /// told such a URL could never connect).
    pub fn check_served(&self, plain: bool, tls: bool) -> Result<(), ListenerError> {
        for (name, urls) in &self.by_name {
            let unserved = [
                (&urls.plain, plain, "plain Pulsar"),
                (&urls.tls, tls, "Pulsar TLS"),
            ];
            for (url, served, port) in unserved {
                if let (Some(url), false) = (url, served) {
                    return Err(ListenerError::PortNotServed {
                        listener: name.clone(),
                        url: url.clone(),
                        port,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The listener named `name`.
    pub fn get(&self, name: &str) -> Option<&ListenerUrls> {
        self.by_name.get(name)
    }

    /// The listener clients naming none get, if listeners are configured.
    pub fn internal(&self) -> Option<(&str, &ListenerUrls)> {
        let name = self.internal.as_deref()?;
        Some((name, self.by_name.get(name)?))
    }

    /// Every listener, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ListenerUrls)> {
        self.by_name.iter().map(|(n, u)| (n.as_str(), u))
    }

    /// The listeners as configured (name → its URLs): what
    /// [`AdvertisedListeners::new`] reads, for another broker to rebuild them.
    pub fn table(&self) -> ListenerTable {
        self.iter()
            .map(|(name, urls)| {
                let list = [&urls.plain, &urls.tls].into_iter().flatten().cloned();
                (name.to_owned(), list.collect())
            })
            .collect()
    }

    /// The URLs a client naming `listener` is told, given the broker's own
    /// (`default`, for clients naming none when no listener is configured).
    /// An empty name is no name, as in Pulsar. An unknown one is refused with
    /// Pulsar's error (ServiceNotReady, "the broker do not have … listener").
    pub fn select(
        &self,
        listener: Option<&str>,
        default: &ListenerUrls,
    ) -> Result<ListenerUrls, BrokerError> {
        match listener.filter(|n| !n.trim().is_empty()) {
            Some(name) => self
                .get(name)
                .cloned()
                .ok_or_else(|| BrokerError::UnknownListener(bounded_name(name))),
            None => Ok(self
                .internal()
                .map_or_else(|| default.clone(), |(_, urls)| urls.clone())),
        }
    }
}

/// The advertised listener a connection's client uses, as far as the broker
/// can tell: what its lookups on that connection named. A client often
/// reaches a topic's owner with no lookup there (another broker answered
/// `Connect` to it), and its traffic does not say which URL it dialled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClientListener {
    /// Nothing looked up on this connection.
    #[default]
    Unknown,
    /// Its lookups named this listener (`None`: none, so the internal one).
    Named(Option<Arc<str>>),
}

/// The broker a topic is handed to, as its clients are told it in
/// CLOSE_PRODUCER / CLOSE_CONSUMER (Pulsar's assigned broker URLs), which
/// they reconnect to without looking the topic up.
#[derive(Clone, Debug)]
pub struct NextOwner {
    listeners: AdvertisedListeners,
    /// Its URLs when it has no listeners.
    own: ListenerUrls,
    /// The broker handing the topic over has several listeners, so a
    /// client whose listener is unknown may use any of them.
    several_here: bool,
}

impl NextOwner {
    /// The broker registered with `listeners` and `own` URLs, named by a
    /// broker with `listeners_here`.
    pub fn new(
        listeners: AdvertisedListeners,
        own: ListenerUrls,
        listeners_here: &AdvertisedListeners,
    ) -> Self {
        NextOwner {
            listeners,
            own,
            several_here: listeners_here.iter().nth(1).is_some(),
        }
    }

    /// The URLs named to a client using `listener`: the next owner's URLs
    /// of that listener (as Pulsar names them: the listener of the client's
    /// connection). None when the broker cannot tell which listener the
    /// client uses, or the next owner lacks it: the client then looks the
    /// topic up, naming its listener, rather than be sent to an address it
    /// may not reach.
    pub fn urls_for(&self, listener: &ClientListener) -> Option<ListenerUrls> {
        let name = match listener {
            ClientListener::Named(name) => name.as_deref(),
            ClientListener::Unknown if self.several_here => return None,
            ClientListener::Unknown => None,
        };
        self.listeners.select(name, &self.own).ok()
    }
}

/// A client's listener name as an error repeats it: at most 256 characters.
fn bounded_name(name: &str) -> String {
    const MAX_CHARS: usize = 256;
    name.chars().take(MAX_CHARS).collect()
}

/// `pulsar://host:port` or `pulsar+ssl://host:port` → (scheme, "host:port").
/// The port is required (1..=65535); nothing may follow it.
fn split_url(url: &str) -> Option<(&'static str, &str)> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("pulsar+ssl://") {
        ("pulsar+ssl", rest)
    } else {
        ("pulsar", url.strip_prefix("pulsar://")?)
    };
    let (host, port) = rest.rsplit_once(':')?;
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').is_some_and(|a| !a.is_empty()),
        None => !host.is_empty() && !host.contains(':'),
    };
    let host_ok = host_ok
        && !host
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#'));
    let port_ok = !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p > 0);
    (host_ok && port_ok).then_some((scheme, rest))
}

/// Pulsar's `advertisedListeners` string, `name:url,name:url…` (a name may
/// appear twice, once per scheme), as a table, with the first name listed —
/// Pulsar's internal listener when none is named.
pub fn parse_listener_list(s: &str) -> Result<(ListenerTable, Option<String>), ListenerError> {
    let mut table = ListenerTable::new();
    let mut first = None;
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, url) = item
            .split_once(':')
            .ok_or_else(|| ListenerError::BadList(s.to_owned()))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(ListenerError::EmptyName);
        }
        first.get_or_insert_with(|| name.to_owned());
        table
            .entry(name.to_owned())
            .or_default()
            .push(url.trim().to_owned());
    }
    if table.is_empty() {
        return Err(ListenerError::BadList(s.to_owned()));
    }
    Ok((table, first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &[&str])]) -> ListenerTable {
        entries
            .iter()
            .map(|(n, urls)| (n.to_string(), urls.iter().map(|u| u.to_string()).collect()))
            .collect()
    }

    fn urls(plain: Option<&str>, tls: Option<&str>) -> ListenerUrls {
        ListenerUrls {
            plain: plain.map(String::from),
            tls: tls.map(String::from),
        }
    }

    #[test]
    fn a_named_listener_gets_its_urls_and_no_name_gets_the_internal_ones() {
        let t = table(&[
            (
                "internal",
                &["pulsar://10.0.0.5:6650", "pulsar+ssl://10.0.0.5:6651"],
            ),
            ("external", &["pulsar://broker.example.com:16650"]),
        ]);
        let l = AdvertisedListeners::new(&t, Some("internal")).unwrap();
        let default = urls(Some("pulsar://127.0.0.1:6650"), None);
        assert_eq!(
            l.select(Some("external"), &default).unwrap(),
            urls(Some("pulsar://broker.example.com:16650"), None)
        );
        let internal = urls(
            Some("pulsar://10.0.0.5:6650"),
            Some("pulsar+ssl://10.0.0.5:6651"),
        );
        assert_eq!(l.select(None, &default).unwrap(), internal);
        assert_eq!(l.select(Some(""), &default).unwrap(), internal);
        let none = AdvertisedListeners::default();
        assert_eq!(none.select(None, &default).unwrap(), default);
    }

    #[test]
    fn an_unknown_listener_is_refused_as_pulsar_refuses_it() {
        let l = AdvertisedListeners::new(&table(&[("a", &["pulsar://h:1"])]), None).unwrap();
        let e = l
            .select(Some("nope"), &ListenerUrls::default())
            .unwrap_err();
        assert_eq!(e.to_string(), "the broker do not have nope listener");
        assert_eq!(
            e.server_error(),
            kilonova_pulsar_protocol::proto::ServerError::ServiceNotReady
        );
        // Without listeners configured, any name is unknown.
        let e = AdvertisedListeners::default()
            .select(Some("a"), &ListenerUrls::default())
            .unwrap_err();
        assert!(matches!(e, BrokerError::UnknownListener(_)));
        // A long name is cut in the error.
        let long = "x".repeat(10_000);
        let e = l.select(Some(&long), &ListenerUrls::default()).unwrap_err();
        assert!(e.to_string().len() < 400);
    }

    #[test]
    fn the_only_listener_is_the_internal_one_and_several_need_a_name() {
        let one = AdvertisedListeners::new(&table(&[("only", &["pulsar://h:1"])]), None).unwrap();
        assert_eq!(one.internal().map(|(n, _)| n), Some("only"));
        let two = table(&[("a", &["pulsar://h:1"]), ("b", &["pulsar://h:2"])]);
        assert_eq!(
            AdvertisedListeners::new(&two, None).unwrap_err(),
            ListenerError::NoInternal
        );
        assert_eq!(
            AdvertisedListeners::new(&two, Some("c")).unwrap_err(),
            ListenerError::UnknownInternal("c".into())
        );
    }

    #[test]
    fn listeners_are_refused_as_pulsar_refuses_them() {
        let refused = |t: &[(&str, &[&str])]| AdvertisedListeners::new(&table(t), None);
        assert!(matches!(
            refused(&[("a", &["pulsar://h:1", "pulsar://h:2"])]),
            Err(ListenerError::Redundant {
                scheme: "pulsar",
                ..
            })
        ));
        assert!(matches!(
            refused(&[("a", &[])]),
            Err(ListenerError::NoUrl(_))
        ));
        assert!(matches!(
            refused(&[("", &["pulsar://h:1"])]),
            Err(ListenerError::EmptyName)
        ));
        let shared = AdvertisedListeners::new(
            &table(&[("a", &["pulsar://H:1"]), ("b", &["pulsar+ssl://h:1"])]),
            Some("a"),
        );
        assert!(matches!(shared, Err(ListenerError::SharedAddress { .. })));
        for url in [
            "http://h:1",
            "pulsar://h",
            "pulsar://h:0",
            "pulsar://h:70000",
            "pulsar://:1",
            "pulsar://h:1/path",
            "pulsar://user@h:1",
            "pulsar://::1:1",
            "pulsar+ssl://h:x",
        ] {
            assert!(
                matches!(refused(&[("a", &[url])]), Err(ListenerError::BadUrl { .. })),
                "{url}"
            );
        }
        assert!(refused(&[("a", &["pulsar://[::1]:6650", "pulsar+ssl://[::1]:6651"])]).is_ok());
    }

    #[test]
    fn urls_of_ports_not_served_are_refused() {
        let l = AdvertisedListeners::new(
            &table(&[("a", &["pulsar://h:1", "pulsar+ssl://h:2"])]),
            None,
        )
        .unwrap();
        assert!(l.check_served(true, true).is_ok());
        assert!(matches!(
            l.check_served(true, false),
            Err(ListenerError::PortNotServed {
                port: "Pulsar TLS",
                ..
            })
        ));
        assert!(matches!(
            l.check_served(false, true),
            Err(ListenerError::PortNotServed {
                port: "plain Pulsar",
                ..
            })
        ));
    }

    #[test]
    fn a_handed_over_client_is_named_the_next_owners_urls_of_its_listener_when_known() {
        let next = AdvertisedListeners::new(
            &table(&[
                ("internal", &["pulsar://10.0.0.6:6650"]),
                ("external", &["pulsar://b2.example.com:16650"]),
            ]),
            Some("internal"),
        )
        .unwrap();
        let own = urls(Some("pulsar://10.0.0.6:6650"), None);
        let named = |n: Option<&str>| ClientListener::Named(n.map(Arc::from));
        let several_here = AdvertisedListeners::new(
            &table(&[
                ("internal", &["pulsar://i:1"]),
                ("external", &["pulsar://e:1"]),
            ]),
            Some("internal"),
        )
        .unwrap();
        let to = NextOwner::new(next.clone(), own.clone(), &several_here);
        assert_eq!(
            to.urls_for(&named(Some("external"))),
            Some(urls(Some("pulsar://b2.example.com:16650"), None))
        );
        assert_eq!(
            to.urls_for(&named(None)),
            Some(urls(Some("pulsar://10.0.0.6:6650"), None))
        );
        // Unknown here, where clients may use either listener: none named.
        assert_eq!(to.urls_for(&ClientListener::Unknown), None);
        // A listener the next owner lacks: none (its lookup refuses it).
        assert_eq!(to.urls_for(&named(Some("edge"))), None);
        // Here with no listeners (or one), every client uses the default.
        let to = NextOwner::new(next, own, &AdvertisedListeners::default());
        assert_eq!(
            to.urls_for(&ClientListener::Unknown),
            Some(urls(Some("pulsar://10.0.0.6:6650"), None))
        );
    }

    #[test]
    fn pulsars_listener_list_parses_with_its_first_name() {
        let (t, first) = parse_listener_list(
            "external:pulsar://e:1, internal:pulsar://i:1,external:pulsar+ssl://e:2",
        )
        .unwrap();
        assert_eq!(first.as_deref(), Some("external"));
        assert_eq!(
            t,
            table(&[
                ("external", &["pulsar://e:1", "pulsar+ssl://e:2"]),
                ("internal", &["pulsar://i:1"]),
            ])
        );
        assert!(parse_listener_list("").is_err());
        assert!(parse_listener_list("nourl").is_err());
        assert_eq!(
            parse_listener_list(":pulsar://h:1").unwrap_err(),
            ListenerError::EmptyName
        );
    }
}
