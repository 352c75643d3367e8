//! The HTTP plumbing of `kilonova admin`: REST paths under `/admin/v2`, one
//! request function, and the error a failed request becomes (the server's
//! `{"reason": …}` when it gave one).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use kilonova_metadata::{Domain, NamespaceName, TopicName};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Why a command failed. `Display` is the line printed after `error: `.
#[derive(Debug)]
pub enum AdminError {
    /// The server answered with a non-2xx status.
    Http { status: StatusCode, reason: String },
    /// No usable answer: connection refused, timeout, a body this CLI
    /// cannot use.
    Transport(String),
    /// An argument refused before any request was sent.
    InvalidArgument(String),
    /// This process failed: its runtime, or writing the output.
    Local(String),
}

impl AdminError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, AdminError::Http { status, .. } if *status == StatusCode::NOT_FOUND)
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Http { reason, .. } => f.write_str(reason),
            AdminError::Transport(why)
            | AdminError::InvalidArgument(why)
            | AdminError::Local(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for AdminError {}

/// A path under `/admin/v2` (or `/lookup/v2`), its segments kept apart so
/// each is percent-encoded on its own (a topic's local name may hold any
/// character).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiPath {
    root: [&'static str; 2],
    segments: Vec<String>,
    query: Vec<(&'static str, String)>,
}

impl ApiPath {
    pub fn new<'a>(segments: impl IntoIterator<Item = &'a str>) -> Self {
        ApiPath {
            root: ["admin", "v2"],
            segments: segments.into_iter().map(str::to_owned).collect(),
            query: Vec::new(),
        }
    }

    /// `/lookup/v2/topic/{domain}/{tenant}/{ns}/{topic}`: Pulsar's HTTP lookup.
    pub fn lookup(topic: &TopicName) -> Self {
        let ns = topic.namespace();
        ApiPath {
            root: ["lookup", "v2"],
            segments: [
                "topic",
                topic.domain.as_str(),
                &ns.tenant,
                &ns.namespace,
                &topic.local,
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            query: Vec::new(),
        }
    }

    pub fn join(mut self, segment: impl ToString) -> Self {
        self.segments.push(segment.to_string());
        self
    }

    pub fn query(mut self, key: &'static str, value: impl ToString) -> Self {
        self.query.push((key, value.to_string()));
        self
    }

    /// `?force=true` when `force`, nothing otherwise (Pulsar's delete verbs).
    pub fn force(self, force: bool) -> Self {
        if force {
            self.query("force", true)
        } else {
            self
        }
    }

    /// The full URL under `base` (which may itself have a path prefix).
    fn url(&self, base: &Url) -> Result<Url, AdminError> {
        let mut url = base.clone();
        url.path_segments_mut()
            .map_err(|()| AdminError::InvalidArgument(format!("invalid admin URL {base}")))?
            .pop_if_empty()
            .extend(self.root)
            .extend(&self.segments);
        if !self.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&self.query);
        }
        Ok(url)
    }
}

/// Where the admin API serves a named resource.
pub trait ResourcePath {
    fn path(&self) -> ApiPath;
}

/// `/admin/v2/namespaces/{tenant}/{ns}`: the namespace and its policies.
impl ResourcePath for NamespaceName {
    fn path(&self) -> ApiPath {
        ApiPath::new(["namespaces", &self.tenant, &self.namespace])
    }
}

/// `/admin/v2/{domain}/{tenant}/{ns}/{topic}`.
impl ResourcePath for TopicName {
    fn path(&self) -> ApiPath {
        ApiPath::topics(&self.namespace(), self.domain).join(&self.local)
    }
}

impl ApiPath {
    /// `/admin/v2/{domain}/{tenant}/{ns}`: the namespace's topics of one domain.
    pub fn topics(ns: &NamespaceName, domain: Domain) -> ApiPath {
        ApiPath::new([domain.as_str(), &ns.tenant, &ns.namespace])
    }
}

/// `/admin/v2/a/b?k=v`, unencoded: for people, not for requests.
impl fmt::Display for ApiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}/{}", self.root[0], self.root[1])?;
        for segment in &self.segments {
            write!(f, "/{segment}")?;
        }
        for (i, (key, value)) in self.query.iter().enumerate() {
            write!(f, "{}{key}={value}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// `--admin-url`: an `http://` or `https://` URL.
pub fn parse_admin_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err(format!("invalid URL {s:?}: no host")),
        other => Err(format!(
            "unsupported URL scheme {other:?}: expected http or https"
        )),
    }
}

/// The TLS client configuration for an `https://` admin URL: the server's
/// certificate must chain to a CA in `trust_certs` (PEM).
fn tls_config(trust_certs: Option<&Path>) -> Result<rustls::ClientConfig, AdminError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let Some(path) = trust_certs else {
        return Err(AdminError::InvalidArgument(
            "an https admin URL needs --tls-trust-cert-path (the CA that signed the broker's certificate)"
                .into(),
        ));
    };
    let bad = |e: &dyn fmt::Display| {
        AdminError::InvalidArgument(format!("--tls-trust-cert-path {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `--auth-token`, kept out of `Debug` output.
#[derive(Clone)]
pub struct AuthToken(String);

impl FromStr for AuthToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(AuthToken(s.to_owned()))
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(***)")
    }
}

/// A successful answer.
pub struct Reply {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as a document: JSON when it parses, an empty body as `null`,
    /// anything else as a string (the health check answers plain `ok`).
    pub fn document(&self) -> Value {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.body).into_owned()))
    }
}

pub struct AdminClient {
    base: Url,
    http: reqwest::Client,
    authorization: Option<HeaderValue>,
}

/// Redirects `send` follows at most.
const MAX_REDIRECTS: usize = 5;

/// Where a redirect from `from` points (its `Location`, relative to `from`).
fn redirect_target(from: &Url, headers: &reqwest::header::HeaderMap) -> Result<Url, AdminError> {
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            AdminError::Local(format!("{from} answered a redirect without a Location"))
        })?;
    let to = from
        .join(location)
        .map_err(|e| AdminError::Local(format!("{from} redirected to {location:?}: {e}")))?;
    if from.scheme() == "https" && to.scheme() != "https" {
        return Err(AdminError::Local(format!(
            "{from} redirected to {to}: not following a redirect from https to plain http (credentials would go unencrypted)"
        )));
    }
    Ok(to)
}

impl AdminClient {
    pub fn new(
        base: Url,
        token: Option<&AuthToken>,
        trust_certs: Option<&Path>,
        request_timeout: Duration,
    ) -> Result<Self, AdminError> {
        let authorization = token
            .map(|AuthToken(t)| {
                let mut value = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    AdminError::InvalidArgument(
                        "the auth token holds characters not allowed in an HTTP header".into(),
                    )
                })?;
                value.set_sensitive(true);
                Ok::<_, AdminError>(value)
            })
            .transpose()?;
        // Redirects are followed by `send`, which keeps the credentials (a
        // cluster's brokers redirect to a topic's owner, another host).
        let mut http = reqwest::Client::builder()
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .timeout(request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if base.scheme() == "https" {
            http = http.tls_backend_preconfigured(tls_config(trust_certs)?);
        }
        let http = http
            .build()
            .map_err(|e| AdminError::Local(format!("cannot set up HTTP: {}", root_cause(&e))))?;
        Ok(AdminClient {
            base,
            http,
            authorization,
        })
    }

    /// Whether requests go over TLS (an `https://` admin URL).
    pub fn is_tls(&self) -> bool {
        self.base.scheme() == "https"
    }

    /// Sends one request; a non-2xx answer becomes [`AdminError::Http`].
    /// A 307 or 308 (a cluster broker sending the request to the broker
    /// that serves the topic, as Pulsar's do) is followed with the same
    /// method, body and credentials, up to [`MAX_REDIRECTS`] times; never
    /// from `https://` to `http://`.
    pub async fn send(
        &self,
        method: Method,
        path: &ApiPath,
        body: Option<&Value>,
    ) -> Result<Reply, AdminError> {
        let mut url = path.url(&self.base)?;
        let mut hops = 0;
        let response = loop {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(auth) = &self.authorization {
                request = request.header(AUTHORIZATION, auth.clone());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|e| transport(&method, &url, &e))?;
            let status = response.status();
            if !matches!(status.as_u16(), 307 | 308) || hops == MAX_REDIRECTS {
                break response;
            }
            hops += 1;
            url = redirect_target(&url, response.headers())?;
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport(&method, &url, &e))?;
        if status.is_success() {
            Ok(Reply { headers, body })
        } else {
            Err(AdminError::Http {
                status,
                reason: reason(status, &body),
            })
        }
    }

    /// Sends one request and returns the answer as a document.
    pub async fn call(
        &self,
        method: Method,
        path: &ApiPath,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        Ok(self.send(method, path, body).await?.document())
    }

    pub async fn get(&self, path: &ApiPath) -> Result<Value, AdminError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn put(&self, path: &ApiPath, body: Option<&Value>) -> Result<Value, AdminError> {
        self.call(Method::PUT, path, body).await
    }

    pub async fn post(&self, path: &ApiPath, body: Option<&Value>) -> Result<Value, AdminError> {
        self.call(Method::POST, path, body).await
    }

    pub async fn delete(&self, path: &ApiPath) -> Result<Value, AdminError> {
        self.call(Method::DELETE, path, None).await
    }
}

/// The server's `reason`, or the status and the start of whatever it sent.
fn reason(status: StatusCode, body: &[u8]) -> String {
    if let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(body) {
        if let Some(Value::String(reason)) = doc.get("reason") {
            if !reason.trim().is_empty() {
                return reason.clone();
            }
        }
    }
    const MAX_BODY_CHARS: usize = 200;
    let text: String = String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(MAX_BODY_CHARS)
        .collect();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

fn transport(method: &Method, url: &Url, e: &reqwest::Error) -> AdminError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    AdminError::Transport(format!("{method} {url}: {what}: {}", root_cause(e)))
}

/// The innermost error: reqwest's own message only repeats the URL, while
/// the cause (e.g. "Connection refused") is a source.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut root = e;
    while let Some(cause) = root.source() {
        root = cause;
    }
    root.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(l: &str) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::LOCATION, l.parse().unwrap());
        h
    }

    #[test]
    fn a_redirect_goes_to_its_location_but_never_from_https_to_http() {
        let from = Url::parse("http://b1:8080/admin/v2/persistent/t/ns/x/stats").unwrap();
        let to = redirect_target(
            &from,
            &location("http://b2:8081/admin/v2/persistent/t/ns/x/stats"),
        )
        .unwrap();
        assert_eq!(
            to.as_str(),
            "http://b2:8081/admin/v2/persistent/t/ns/x/stats"
        );
        let relative = redirect_target(&from, &location("/admin/v2/other")).unwrap();
        assert_eq!(relative.as_str(), "http://b1:8080/admin/v2/other");
        let secure = Url::parse("https://b1:8443/admin/v2/x").unwrap();
        assert!(redirect_target(&secure, &location("https://b2:8443/admin/v2/x")).is_ok());
        let e = redirect_target(&secure, &location("http://b2:8080/admin/v2/x")).unwrap_err();
        assert!(e.to_string().contains("https to plain http"), "{e}");
        let none = redirect_target(&from, &reqwest::header::HeaderMap::new()).unwrap_err();
        assert!(none.to_string().contains("without a Location"), "{none}");
    }

    fn url(path: &ApiPath, base: &str) -> String {
        path.url(&Url::parse(base).unwrap()).unwrap().to_string()
    }

    #[test]
    fn paths_go_under_admin_v2_with_each_segment_encoded() {
        let p = ApiPath::new(["persistent", "t", "ns", "a b/c?d"]).join("stats");
        assert_eq!(
            url(&p, "http://h:8080"),
            "http://h:8080/admin/v2/persistent/t/ns/a%20b%2Fc%3Fd/stats"
        );
        assert_eq!(
            url(&ApiPath::new(["tenants"]), "http://h:8080/prefix/"),
            "http://h:8080/prefix/admin/v2/tenants"
        );
    }

    #[test]
    fn a_lookup_goes_under_lookup_v2() {
        let topic: TopicName = "non-persistent://t/ns/a%2Fb".parse().unwrap();
        let p = ApiPath::lookup(&topic);
        assert_eq!(
            url(&p, "http://h:8080"),
            "http://h:8080/lookup/v2/topic/non-persistent/t/ns/a%252Fb"
        );
        assert_eq!(p.to_string(), "/lookup/v2/topic/non-persistent/t/ns/a%2Fb");
    }

    #[test]
    fn query_parameters_are_appended_only_when_present() {
        let p = ApiPath::new(["namespaces", "t", "ns"]);
        assert_eq!(
            url(&p.clone().force(false), "http://h"),
            "http://h/admin/v2/namespaces/t/ns"
        );
        assert_eq!(
            url(&p.force(true).query("after", "x&y"), "http://h"),
            "http://h/admin/v2/namespaces/t/ns?force=true&after=x%26y"
        );
    }

    #[test]
    fn the_reason_comes_from_the_json_body_or_else_the_status() {
        let body = br#"{"reason":"Tenant does not exist"}"#;
        assert_eq!(reason(StatusCode::NOT_FOUND, body), "Tenant does not exist");
        assert_eq!(reason(StatusCode::BAD_GATEWAY, b""), "HTTP 502 Bad Gateway");
        assert_eq!(
            reason(StatusCode::INTERNAL_SERVER_ERROR, b"boom\n"),
            "HTTP 500 Internal Server Error: boom"
        );
        assert_eq!(
            reason(StatusCode::CONFLICT, br#"{"reason":""}"#),
            r#"HTTP 409 Conflict: {"reason":""}"#
        );
    }

    #[test]
    fn bodies_become_documents() {
        let doc = |b: &'static [u8]| {
            Reply {
                headers: HeaderMap::new(),
                body: Bytes::from_static(b),
            }
            .document()
        };
        assert_eq!(doc(b""), Value::Null);
        assert_eq!(doc(b"null"), Value::Null);
        assert_eq!(doc(b"3600"), Value::from(3600));
        assert_eq!(doc(b"[\"a\"]"), serde_json::json!(["a"]));
        assert_eq!(doc(b"ok"), Value::from("ok"));
    }

    #[test]
    fn only_http_and_https_admin_urls_are_accepted() {
        assert!(parse_admin_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_admin_url("https://broker:8443").is_ok());
        assert!(parse_admin_url("127.0.0.1:8080").is_err());
        assert!(parse_admin_url("ftp://x").is_err());
        assert!(parse_admin_url("not a url").is_err());
    }

    #[test]
    fn an_https_url_needs_a_readable_trust_file() {
        let url = parse_admin_url("https://broker:8443").unwrap();
        let timeout = Duration::from_secs(1);
        let e = AdminClient::new(url.clone(), None, None, timeout)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--tls-trust-cert-path"), "{e}");
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(AdminClient::new(url, None, Some(missing), timeout).is_err());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let token: AuthToken = "s3cr3t".parse().unwrap();
        assert!(!format!("{token:?}").contains("s3cr3t"));
    }
}
