//! Kafka topic names ↔ Kilonova topic names.
//!
//! A Kafka topic `t` is `persistent://<namespace>/t`, the namespace being the
//! listener's default (`public/default` unless configured). A Kafka name is
//! 1–249 characters of `[a-zA-Z0-9._-]`, which Kilonova takes as they are —
//! except a name ending in `-partition-<n>`, which in Kilonova names one
//! partition of a partitioned topic: refused, with a clear error.

/// Why a Kafka topic name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name is longer than 249 characters")]
    TooLong,
    #[error("topic name {0:?} has characters other than ASCII letters, digits, '.', '_' and '-'")]
    Characters(String),
    #[error("topic name {0:?} is '.' or '..'")]
    Dots(String),
    #[error("topic name {0:?} ends like a partition of a partitioned topic (-partition-N)")]
    PartitionSuffix(String),
}

/// Kafka's longest topic name.
pub const MAX_NAME_CHARS: usize = 249;

/// The Kilonova topic a Kafka topic name stands for in `namespace`
/// (`tenant/namespace`).
pub fn to_topic(namespace: &str, kafka_name: &str) -> Result<String, NameError> {
    check(kafka_name)?;
    Ok(format!("persistent://{namespace}/{kafka_name}"))
}

/// Checks a name as Kafka does, plus the partition suffix Kilonova reserves.
pub fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots(name.to_string()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(NameError::Characters(name.to_string()));
    }
    if let Some((_, n)) = name.rsplit_once("-partition-") {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NameError::PartitionSuffix(name.to_string()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_names_map_into_the_namespace_and_bad_ones_are_refused() {
        assert_eq!(
            to_topic("public/default", "orders.v1_x-y").as_deref(),
            Ok("persistent://public/default/orders.v1_x-y")
        );
        assert_eq!(check(""), Err(NameError::Empty));
        assert_eq!(check(&"a".repeat(250)), Err(NameError::TooLong));
        assert!(check(&"a".repeat(249)).is_ok());
        assert!(matches!(check("a/b"), Err(NameError::Characters(_))));
        assert!(matches!(check("é"), Err(NameError::Characters(_))));
        assert!(matches!(check(".."), Err(NameError::Dots(_))));
        assert!(matches!(
            check("t-partition-3"),
            Err(NameError::PartitionSuffix(_))
        ));
        assert!(check("t-partition-x").is_ok());
    }
}
