//! Pulsar's HTTP lookup, which clients created with an `http://` or
//! `https://` service URL call instead of the binary LOOKUP:
//! `GET /lookup/v2/topic/{domain}/{tenant}/{namespace}/{topic}` answers where
//! the topic is served as Pulsar's `LookupData` (the partition count comes
//! from the topic routes' `…/partitions`). A client picks an advertised
//! listener with `?listenerName=` or the `X-Pulsar-ListenerName` header (the
//! query wins, as in Pulsar). `…/{topic}/bundle` answers the namespace
//! bundle the topic belongs to (`0x40000000_0x80000000`, pulsar-admin's
//! `topics bundle-range`). Authorization is the binary lookup's: the
//! `lookup` permission on the topic or its namespace.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde::{Deserialize, Serialize};

use kilonova_auth::Want;
use kilonova_broker::{Broker, LookupAnswer};

use crate::api::{Access, Api};
use crate::error::{ApiError, ApiResult};
use crate::topics::{topic_name, TopicPath};

/// The header naming a listener (Pulsar's `X-Pulsar-ListenerName`).
const LISTENER_HEADER: &str = "x-pulsar-listenername";

pub fn routes(api: Api) -> Api {
    api.route(
        "/lookup/v2/topic/{domain}/{tenant}/{namespace}/{topic}",
        get(lookup),
        &[(
            "GET",
            Access::Topic(Want::Lookup),
            "Where the topic is served: {brokerUrl, brokerUrlTls, httpUrl, httpUrlTls, nativeUrl}; ?listenerName= or X-Pulsar-ListenerName picks an advertised listener; in a cluster, a 307 to the broker chosen for a bundle nobody owns (authoritative=true: that broker takes it)",
        )],
    )
    .route(
        "/lookup/v2/topic/{domain}/{tenant}/{namespace}/{topic}/bundle",
        get(bundle),
        &[(
            "GET",
            Access::Topic(Want::Lookup),
            "The namespace bundle the topic belongs to, as text: 0x40000000_0x80000000 (by the CRC-32 of its full name, as Pulsar places it)",
        )],
    )
}

/// The query of a lookup: the listener, and `authoritative` (this broker
/// was chosen to serve the topic: it takes the bundle rather than choose again).
#[derive(Deserialize)]
struct LookupQuery {
    #[serde(rename = "listenerName")]
    listener_name: Option<String>,
    #[serde(default)]
    authoritative: bool,
}

/// Pulsar's `LookupData`. Every field is present, null when the broker has
/// no such URL: the C++ client (and so the Python one) refuses an answer
/// without `brokerUrl` or `brokerUrlTls`. `nativeUrl` is Pulsar's deprecated
/// copy of `brokerUrl`.
#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupData {
    pub broker_url: Option<String>,
    pub broker_url_tls: Option<String>,
    pub http_url: Option<String>,
    pub http_url_tls: Option<String>,
    pub native_url: Option<String>,
}

impl From<LookupAnswer> for LookupData {
    fn from(a: LookupAnswer) -> Self {
        LookupData {
            native_url: a.urls.plain.clone(),
            broker_url: a.urls.plain,
            broker_url_tls: a.urls.tls,
            http_url: a.http,
            http_url_tls: a.https,
        }
    }
}

/// The listener a request names: the query's, else the header's (an empty
/// value is no name).
fn listener_name(query: Option<String>, headers: &HeaderMap) -> ApiResult<Option<String>> {
    if let Some(name) = query.filter(|n| !n.is_empty()) {
        return Ok(Some(name));
    }
    match headers.get(LISTENER_HEADER) {
        None => Ok(None),
        Some(v) => {
            let name = v.to_str().map_err(|_| {
                ApiError::bad_request("the X-Pulsar-ListenerName header is not ASCII text")
            })?;
            Ok(Some(name.to_owned()).filter(|n| !n.is_empty()))
        }
    }
}

async fn lookup(
    State(b): State<Broker>,
    Path(p): Path<TopicPath>,
    Query(q): Query<LookupQuery>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let name = topic_name(&p)?;
    let listener = listener_name(q.listener_name, &headers)?;
    let answer = b
        .lookup_topic(&name, listener.as_deref(), q.authoritative)
        .await;
    b.metrics().lookup_answered(answer.as_ref().ok());
    let answer = answer?;
    if !answer.redirect {
        return Ok(Json(LookupData::from(answer)).into_response());
    }
    // As Pulsar: a 307 to the same lookup on the broker chosen for the
    // bundle, authoritative, so that it takes the bundle.
    let Some(base) = answer.http.or(answer.https) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker chosen for the topic advertises no admin URL",
        ));
    };
    let location = format!(
        "{}{}?{}",
        base.trim_end_matches('/'),
        uri.path(),
        redirect_query(uri.query(), listener.as_deref())
    );
    Ok((
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response())
}

/// The query of a redirected lookup: the client's own, with
/// `authoritative=true` (the broker asked takes the bundle) and the listener
/// as `listenerName`, as Pulsar writes it — also when the client named it in
/// the `X-Pulsar-ListenerName` header, which an HTTP client following the
/// redirect may not send again.
fn redirect_query(client: Option<&str>, listener: Option<&str>) -> String {
    let kept = client
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "authoritative" && k != "listenerName");
    let ours = listener
        .map(|l| ("listenerName".to_owned(), l.to_owned()))
        .into_iter()
        .chain([("authoritative".to_owned(), "true".to_owned())]);
    let pairs: Vec<(String, String)> = kept.chain(ours).collect();
    // Encoding a list of string pairs cannot fail.
    serde_urlencoded::to_string(pairs).unwrap_or_else(|_| "authoritative=true".to_owned())
}

async fn bundle(State(b): State<Broker>, Path(p): Path<TopicPath>) -> ApiResult<String> {
    let name = topic_name(&p)?;
    let policies = b.resources().namespace(&name.namespace()).await?;
    Ok(kilonova_metadata::bundles::bundle_of(&policies.bundles, &name)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_query_names_the_listener_before_the_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(listener_name(None, &headers).unwrap(), None);
        headers.insert(LISTENER_HEADER, HeaderValue::from_static("external"));
        assert_eq!(
            listener_name(None, &headers).unwrap().as_deref(),
            Some("external")
        );
        assert_eq!(
            listener_name(Some("internal".into()), &headers)
                .unwrap()
                .as_deref(),
            Some("internal")
        );
        assert_eq!(
            listener_name(Some(String::new()), &headers)
                .unwrap()
                .as_deref(),
            Some("external"),
            "an empty query value names nothing"
        );
        headers.insert(LISTENER_HEADER, HeaderValue::from_static(""));
        assert_eq!(listener_name(None, &headers).unwrap(), None);
        headers.insert(LISTENER_HEADER, HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(listener_name(None, &headers).is_err());
    }

    #[test]
    fn a_redirect_names_the_listener_and_is_authoritative() {
        assert_eq!(redirect_query(None, None), "authoritative=true");
        // The header's listener goes into the query, as Pulsar writes it.
        assert_eq!(
            redirect_query(None, Some("external")),
            "listenerName=external&authoritative=true"
        );
        // The client's other parameters are kept; its own authoritative
        // and listenerName are replaced.
        assert_eq!(
            redirect_query(
                Some("authoritative=false&x=1&listenerName=external"),
                Some("external")
            ),
            "x=1&listenerName=external&authoritative=true"
        );
        assert_eq!(
            redirect_query(Some("x=a%20b"), Some("a&b=c")),
            "x=a+b&listenerName=a%26b%3Dc&authoritative=true"
        );
    }

    #[test]
    fn lookup_data_has_pulsars_field_names_and_keeps_null_fields() {
        let answer = LookupAnswer {
            urls: kilonova_broker::ListenerUrls {
                plain: Some("pulsar://e:1".into()),
                tls: None,
            },
            http: Some("http://h:8080".into()),
            https: None,
            redirect: false,
        };
        let doc = serde_json::to_value(LookupData::from(answer)).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "brokerUrl": "pulsar://e:1",
                "brokerUrlTls": null,
                "httpUrl": "http://h:8080",
                "httpUrlTls": null,
                "nativeUrl": "pulsar://e:1",
            })
        );
    }
}
