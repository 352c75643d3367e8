//! Kilonova's errors as Kafka error codes.

use kilonova_kafka::kafka_protocol::error::ResponseError;

use crate::error::BrokerError;

/// A refusal of one topic's or resource's part of a request: the Kafka
/// error code and what to tell the client (the answers with a message).
pub(super) type Refusal = (i16, String);

/// A refusal with Kafka error `e`.
pub(super) fn refusal(e: ResponseError, why: impl Into<String>) -> Refusal {
    (e.code(), why.into())
}

/// A refusal for Kilonova's error `e`.
pub(super) fn refused(e: impl Into<BrokerError>) -> Refusal {
    let e = e.into();
    (code(&e), e.to_string())
}

/// A part's outcome as its answer carries it: an error code and message.
pub(super) fn outcome(
    r: Result<(), Refusal>,
) -> (
    i16,
    Option<kilonova_kafka::kafka_protocol::protocol::StrBytes>,
) {
    match r {
        Ok(()) => (0, None),
        Err((code, why)) => (
            code,
            Some(kilonova_kafka::kafka_protocol::protocol::StrBytes::from_string(why)),
        ),
    }
}

/// The Kafka error code a client acts on for `e`.
pub(super) fn code(e: &BrokerError) -> i16 {
    let r = match e {
        BrokerError::TopicNotFound(_)
        | BrokerError::NamespaceNotFound(_)
        | BrokerError::NotFound(_) => ResponseError::UnknownTopicOrPartition,
        BrokerError::InvalidTopicName(_) => ResponseError::InvalidTopicException,
        BrokerError::Authorization(_) | BrokerError::NotAllowed(_) => {
            ResponseError::TopicAuthorizationFailed
        }
        BrokerError::Authentication(_) => ResponseError::SaslAuthenticationFailed,
        BrokerError::BacklogQuotaExceeded { .. } => ResponseError::PolicyViolation,
        BrokerError::TopicTerminated(_) => ResponseError::InvalidRecord,
        BrokerError::Storage(_) => ResponseError::KafkaStorageError,
        BrokerError::ShuttingDown
        | BrokerError::Unavailable(_)
        | BrokerError::ServedElsewhere { .. }
        | BrokerError::TopicFenced(_)
        | BrokerError::Metadata(_) => ResponseError::NotLeaderOrFollower,
        BrokerError::BadRequest(_) | BrokerError::NotAcceptable(_) => ResponseError::InvalidRequest,
        _ => ResponseError::UnknownServerError,
    };
    r.code()
}

/// A Pulsar SEND_ERROR's server error as a Kafka error code.
pub(super) fn from_server_error(e: i32) -> i16 {
    use kilonova_pulsar_protocol::proto::ServerError as S;
    let r = match S::try_from(e) {
        Ok(S::PersistenceError) => ResponseError::KafkaStorageError,
        Ok(S::NotAllowedError) => ResponseError::MessageTooLarge,
        Ok(S::ChecksumError) => ResponseError::CorruptMessage,
        Ok(S::ServiceNotReady) | Ok(S::TopicNotFound) | Ok(S::ProducerBusy) => {
            ResponseError::NotLeaderOrFollower
        }
        Ok(S::AuthorizationError) => ResponseError::TopicAuthorizationFailed,
        Ok(S::TopicTerminatedError) => ResponseError::InvalidRecord,
        Ok(S::ProducerBlockedQuotaExceededError) | Ok(S::ProducerBlockedQuotaExceededException) => {
            ResponseError::PolicyViolation
        }
        _ => ResponseError::UnknownServerError,
    };
    r.code()
}
