//! Errors as the admin API answers them: Pulsar-style `{"reason": "…"}` with
//! the status a Pulsar admin client expects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use kilonova_broker::BrokerError;
use kilonova_metadata::MetadataError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub reason: String,
    /// The admin URLs of the broker that serves what the request is about
    /// (a 307 to the same path there: [`redirect_to_owner`]).
    pub redirect: Option<RedirectBase>,
}

/// Where a 307 answer sends the client ([`redirect_to_owner`]): the
/// owner's `http://` and `https://` admin URLs.
#[derive(Clone, Debug)]
pub struct RedirectBase {
    pub http: Option<String>,
    pub https: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.into(),
            redirect: None,
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, reason)
    }

    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, reason = %self.reason, "admin request failed");
        }
        let mut response = (
            self.status,
            Json(serde_json::json!({ "reason": self.reason })),
        )
            .into_response();
        if let Some(base) = self.redirect {
            response.extensions_mut().insert(base);
        }
        response
    }
}

/// Completes a redirect to the broker serving a topic (in a cluster): the
/// `Location` of a 307 is the same path and query on that broker, as
/// Pulsar redirects admin requests (`kilonova admin` and Pulsar's admin
/// clients follow it).
pub async fn redirect_to_owner(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    // A request that came over TLS is sent on over TLS only.
    let tls = req.extensions().get::<crate::server::OverTls>().is_some();
    let mut response = next.run(req).await;
    if let Some(to) = response.extensions_mut().remove::<RedirectBase>() {
        let base = match tls {
            true => to.https,
            false => to.http.or(to.https),
        };
        let Some(base) = base else {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return response;
        };
        let location = format!("{}{path}", base.trim_end_matches('/'));
        match axum::http::HeaderValue::from_str(&location) {
            Ok(v) => {
                response
                    .headers_mut()
                    .insert(axum::http::header::LOCATION, v);
            }
            Err(_) => *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
        }
    }
    response
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        if let BrokerError::ServedElsewhere {
            http_url,
            https_url,
            ..
        } = &e
        {
            let to = RedirectBase {
                http: Some(http_url.clone()).filter(|u| !u.is_empty()),
                https: https_url.clone(),
            };
            return ApiError {
                redirect: Some(to),
                ..ApiError::new(StatusCode::TEMPORARY_REDIRECT, e.to_string())
            };
        }
        let status = match &e {
            BrokerError::InvalidTopicName(_) | BrokerError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            BrokerError::NamespaceNotFound(_)
            | BrokerError::TopicNotFound(_)
            | BrokerError::SubscriptionNotFound(_)
            | BrokerError::NotFound(_)
            // Pulsar answers 500; a listener nobody configured is the
            // client's mistake, not the server's.
            | BrokerError::UnknownListener(_) => StatusCode::NOT_FOUND,
            BrokerError::Conflict(_) => StatusCode::CONFLICT,
            BrokerError::Precondition(_) => StatusCode::PRECONDITION_FAILED,
            BrokerError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            BrokerError::NotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            BrokerError::ShuttingDown
            | BrokerError::TopicFenced(_)
            | BrokerError::ServedElsewhere { .. }
            | BrokerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            BrokerError::Authentication(_) => StatusCode::UNAUTHORIZED,
            BrokerError::Authorization(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<MetadataError> for ApiError {
    fn from(e: MetadataError) -> Self {
        BrokerError::from(e).into()
    }
}

impl From<kilonova_auth::UnknownAction> for ApiError {
    fn from(e: kilonova_auth::UnknownAction) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl From<kilonova_metadata::TopicNameError> for ApiError {
    fn from(e: kilonova_metadata::TopicNameError) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

/// Parses a JSON body; malformed or mistyped JSON is a 400 saying why.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_map_to_pulsars_statuses() {
        let cases = [
            (BrokerError::BadRequest("x".into()), StatusCode::BAD_REQUEST),
            (
                BrokerError::TopicNotFound("t".into()),
                StatusCode::NOT_FOUND,
            ),
            (BrokerError::Conflict("x".into()), StatusCode::CONFLICT),
            (
                BrokerError::Precondition("x".into()),
                StatusCode::PRECONDITION_FAILED,
            ),
            (
                BrokerError::NotAcceptable("x".into()),
                StatusCode::NOT_ACCEPTABLE,
            ),
            (
                BrokerError::Authorization("no".into()),
                StatusCode::FORBIDDEN,
            ),
            // A metadata read failing while authorizing is the server's fault.
            (
                BrokerError::Metadata("cannot authorize".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (BrokerError::ShuttingDown, StatusCode::SERVICE_UNAVAILABLE),
            (
                BrokerError::UnknownListener("external".into()),
                StatusCode::NOT_FOUND,
            ),
        ];
        for (e, status) in cases {
            let what = e.to_string();
            let api = ApiError::from(e);
            assert_eq!(api.status, status, "{what}");
            assert_eq!(api.reason, what);
        }
    }
}
