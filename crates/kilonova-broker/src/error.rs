//! The broker's errors, and their one mapping to the protocol's `ServerError` codes.

use kilonova_metadata::MetadataError;
use kilonova_pulsar_protocol::proto::ServerError;
use kilonova_storage::StorageError;

use kilonova_metadata::names::TopicNameError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    InvalidTopicName(#[from] TopicNameError),
    #[error("namespace {0} does not exist")]
    NamespaceNotFound(String),
    #[error("topic {0} does not exist")]
    TopicNotFound(String),
    #[error("subscription {0} does not exist")]
    SubscriptionNotFound(String),
    #[error("{0}")]
    ConsumerBusy(String),
    #[error("{0}")]
    ProducerBusy(String),
    #[error("{0}")]
    ProducerFenced(String),
    /// The topic was terminated: it takes no more producers or messages.
    #[error("{0}")]
    TopicTerminated(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    IncompatibleSchema(String),
    #[error("{0}")]
    ConsumerAssign(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(String),
    /// The state forbids the change (HTTP 412).
    #[error("{0}")]
    Precondition(String),
    /// A value over a configured limit, as Pulsar's 406 answers (e.g. more
    /// partitions than `max_num_partitions_per_partitioned_topic`).
    #[error("{0}")]
    NotAcceptable(String),
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// A service the request needs (the object store, a remote metadata
    /// store) cannot be reached now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Shutting down could not persist everything.
    #[error("shutdown incomplete: {0}")]
    Shutdown(String),
    /// The topic refuses producers for a moment (fenced after a failed write).
    #[error("{0}")]
    TopicFenced(String),
    /// The client's credentials were refused (HTTP 401).
    #[error("authentication failed: {0}")]
    Authentication(#[from] kilonova_auth::AuthError),
    /// The role lacks the permission (HTTP 403).
    #[error("{0}")]
    Authorization(String),
    /// A backlog quota is exceeded; `hold`: the producer_request_hold policy
    /// (clients retry), else producer_exception (clients give up).
    #[error("{message}")]
    BacklogQuotaExceeded { hold: bool, message: String },
    /// A lookup named an advertised listener this broker does not have
    /// (Pulsar's words, which clients match on).
    #[error("the broker do not have {0} listener")]
    UnknownListener(String),
    /// In a cluster: another broker serves the topic (Pulsar's
    /// ServiceNotReady, so that clients look it up again; the admin API
    /// redirects to `http_url`).
    #[error("{what}")]
    ServedElsewhere {
        what: String,
        http_url: String,
        https_url: Option<String>,
    },
}

impl BrokerError {
    /// The code a client sees for this error.
    pub fn server_error(&self) -> ServerError {
        match self {
            BrokerError::InvalidTopicName(_) => ServerError::InvalidTopicName,
            BrokerError::NamespaceNotFound(_)
            | BrokerError::TopicNotFound(_)
            | BrokerError::NotFound(_) => ServerError::TopicNotFound,
            BrokerError::SubscriptionNotFound(_) => ServerError::SubscriptionNotFound,
            BrokerError::ConsumerBusy(_) => ServerError::ConsumerBusy,
            BrokerError::ProducerBusy(_) => ServerError::ProducerBusy,
            BrokerError::ProducerFenced(_) => ServerError::ProducerFenced,
            BrokerError::TopicTerminated(_) | BrokerError::Storage(StorageError::Terminated) => {
                ServerError::TopicTerminatedError
            }
            BrokerError::NotAllowed(_)
            | BrokerError::Conflict(_)
            | BrokerError::BadRequest(_)
            | BrokerError::Precondition(_)
            | BrokerError::NotAcceptable(_) => ServerError::NotAllowedError,
            BrokerError::IncompatibleSchema(_) => ServerError::IncompatibleSchema,
            BrokerError::ConsumerAssign(_) => ServerError::ConsumerAssignError,
            BrokerError::Metadata(_) => ServerError::MetadataError,
            BrokerError::Storage(_) => ServerError::PersistenceError,
            BrokerError::ShuttingDown
            | BrokerError::Unavailable(_)
            | BrokerError::TopicFenced(_)
            | BrokerError::Shutdown(_)
            | BrokerError::UnknownListener(_)
            | BrokerError::ServedElsewhere { .. } => ServerError::ServiceNotReady,
            BrokerError::Authentication(_) => ServerError::AuthenticationError,
            BrokerError::Authorization(_) => ServerError::AuthorizationError,
            BrokerError::BacklogQuotaExceeded { hold: true, .. } => {
                ServerError::ProducerBlockedQuotaExceededError
            }
            BrokerError::BacklogQuotaExceeded { hold: false, .. } => {
                ServerError::ProducerBlockedQuotaExceededException
            }
        }
    }
}

impl From<MetadataError> for BrokerError {
    fn from(e: MetadataError) -> Self {
        match e {
            MetadataError::NotFound(what) => BrokerError::NotFound(what),
            MetadataError::AlreadyExists(_) | MetadataError::BadVersion { .. } => {
                BrokerError::Conflict(e.to_string())
            }
            MetadataError::Precondition(why) => BrokerError::Precondition(why),
            MetadataError::Invalid(_) | MetadataError::InvalidKey(_) => {
                BrokerError::BadRequest(e.to_string())
            }
            // A remote store that is down: clients retry (ServiceNotReady, HTTP 503).
            MetadataError::Unavailable(_) => BrokerError::Unavailable(e.to_string()),
            MetadataError::SessionExpired(_)
            | MetadataError::Backend(_)
            | MetadataError::Closed => BrokerError::Metadata(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_metadata_store_is_service_not_ready() {
        let e = BrokerError::from(MetadataError::Unavailable("etcd down".into()));
        assert!(matches!(e, BrokerError::Unavailable(_)), "{e:?}");
        assert_eq!(e.server_error(), ServerError::ServiceNotReady);
        let e = BrokerError::from(MetadataError::Backend("corrupt".into()));
        assert_eq!(e.server_error(), ServerError::MetadataError);
    }

    #[test]
    fn each_error_maps_to_its_stable_server_error() {
        let cases = [
            (
                BrokerError::InvalidTopicName(TopicNameError::Empty),
                ServerError::InvalidTopicName,
            ),
            (
                BrokerError::NamespaceNotFound("a/b".into()),
                ServerError::TopicNotFound,
            ),
            (
                BrokerError::TopicNotFound("t".into()),
                ServerError::TopicNotFound,
            ),
            (
                BrokerError::SubscriptionNotFound("s".into()),
                ServerError::SubscriptionNotFound,
            ),
            (
                BrokerError::ConsumerBusy("x".into()),
                ServerError::ConsumerBusy,
            ),
            (
                BrokerError::ProducerBusy("x".into()),
                ServerError::ProducerBusy,
            ),
            (
                BrokerError::ProducerFenced("x".into()),
                ServerError::ProducerFenced,
            ),
            (
                BrokerError::TopicTerminated("x".into()),
                ServerError::TopicTerminatedError,
            ),
            (
                BrokerError::Storage(StorageError::Terminated),
                ServerError::TopicTerminatedError,
            ),
            (
                BrokerError::NotAllowed("x".into()),
                ServerError::NotAllowedError,
            ),
            (
                BrokerError::NotAcceptable("x".into()),
                ServerError::NotAllowedError,
            ),
            (
                BrokerError::IncompatibleSchema("x".into()),
                ServerError::IncompatibleSchema,
            ),
            (
                BrokerError::ConsumerAssign("x".into()),
                ServerError::ConsumerAssignError,
            ),
            (
                BrokerError::Metadata("x".into()),
                ServerError::MetadataError,
            ),
            (
                BrokerError::Storage(StorageError::Closed),
                ServerError::PersistenceError,
            ),
            (BrokerError::ShuttingDown, ServerError::ServiceNotReady),
            (
                BrokerError::UnknownListener("external".into()),
                ServerError::ServiceNotReady,
            ),
            (
                BrokerError::TopicFenced("t".into()),
                ServerError::ServiceNotReady,
            ),
            (
                BrokerError::Authentication(kilonova_auth::AuthError::Expired),
                ServerError::AuthenticationError,
            ),
            (
                BrokerError::Authorization("no".into()),
                ServerError::AuthorizationError,
            ),
            (
                BrokerError::BacklogQuotaExceeded {
                    hold: true,
                    message: "x".into(),
                },
                ServerError::ProducerBlockedQuotaExceededError,
            ),
            (
                BrokerError::BacklogQuotaExceeded {
                    hold: false,
                    message: "x".into(),
                },
                ServerError::ProducerBlockedQuotaExceededException,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.server_error(), code, "{e}");
        }
        // The wire values themselves are part of the protocol.
        assert_eq!(ServerError::TopicNotFound as i32, 11);
        assert_eq!(ServerError::ChecksumError as i32, 9);
        assert_eq!(ServerError::NotAllowedError as i32, 22);
        assert_eq!(ServerError::ProducerBlockedQuotaExceededError as i32, 7);
        assert_eq!(ServerError::ProducerBlockedQuotaExceededException as i32, 8);
    }
}
