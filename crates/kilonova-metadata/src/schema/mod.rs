//! Schema compatibility: Pulsar's strategies (a namespace policy) and the
//! checks a new schema version (a producer's, an upload) and a consumer's
//! schema pass against a topic's versions.
//!
//! AVRO and JSON schemas (Pulsar's JSON schema is an Avro record definition)
//! are compared with Avro's schema resolution ([`avro`]); other types, as
//! Pulsar's default checker does, are compatible unless the strategy is
//! `ALWAYS_INCOMPATIBLE`. A schema of another type than the versions it is
//! checked against is incompatible, unless the strategy is
//! `ALWAYS_COMPATIBLE`.

pub mod avro;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::resources::SchemaRecord;
use avro::{AvroSchema, InvalidSchema};

/// Pulsar's `SchemaCompatibilityStrategy`, set per namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityStrategy {
    /// Not set: the broker's default, [`CompatibilityStrategy::Full`] (as Pulsar's).
    #[default]
    Undefined,
    /// No new version may be registered.
    AlwaysIncompatible,
    /// Any new version, of any type, is registered.
    AlwaysCompatible,
    /// The new schema can read data written with the latest version.
    Backward,
    /// The latest version can read data written with the new schema.
    Forward,
    /// Both, with the latest version.
    Full,
    /// The new schema can read data written with every version.
    BackwardTransitive,
    /// Every version can read data written with the new schema.
    ForwardTransitive,
    /// Both, with every version.
    FullTransitive,
}

impl CompatibilityStrategy {
    pub const ALL: [CompatibilityStrategy; 9] = [
        CompatibilityStrategy::Undefined,
        CompatibilityStrategy::AlwaysIncompatible,
        CompatibilityStrategy::AlwaysCompatible,
        CompatibilityStrategy::Backward,
        CompatibilityStrategy::Forward,
        CompatibilityStrategy::Full,
        CompatibilityStrategy::BackwardTransitive,
        CompatibilityStrategy::ForwardTransitive,
        CompatibilityStrategy::FullTransitive,
    ];

    /// The strategy that applies: `Undefined` is the broker default, `Full`.
    pub fn effective(self) -> CompatibilityStrategy {
        match self {
            CompatibilityStrategy::Undefined => CompatibilityStrategy::Full,
            s => s,
        }
    }

    pub fn is_undefined(&self) -> bool {
        *self == CompatibilityStrategy::Undefined
    }

    pub fn name(self) -> &'static str {
        match self {
            CompatibilityStrategy::Undefined => "UNDEFINED",
            CompatibilityStrategy::AlwaysIncompatible => "ALWAYS_INCOMPATIBLE",
            CompatibilityStrategy::AlwaysCompatible => "ALWAYS_COMPATIBLE",
            CompatibilityStrategy::Backward => "BACKWARD",
            CompatibilityStrategy::Forward => "FORWARD",
            CompatibilityStrategy::Full => "FULL",
            CompatibilityStrategy::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityStrategy::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityStrategy::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            CompatibilityStrategy::BackwardTransitive
                | CompatibilityStrategy::ForwardTransitive
                | CompatibilityStrategy::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a name is not a strategy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown schema compatibility strategy {0:?}: one of UNDEFINED, ALWAYS_INCOMPATIBLE, ALWAYS_COMPATIBLE, BACKWARD, FORWARD, FULL, BACKWARD_TRANSITIVE, FORWARD_TRANSITIVE, FULL_TRANSITIVE")]
pub struct UnknownStrategy(pub String);

impl FromStr for CompatibilityStrategy {
    type Err = UnknownStrategy;

    /// Pulsar's names, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompatibilityStrategy::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

/// Pulsar's schema type names by their protocol number (`Schema.Type`).
const TYPE_NAMES: &[(i32, &str)] = &[
    (1, "STRING"),
    (2, "JSON"),
    (3, "PROTOBUF"),
    (4, "AVRO"),
    (5, "BOOLEAN"),
    (6, "INT8"),
    (7, "INT16"),
    (8, "INT32"),
    (9, "INT64"),
    (10, "FLOAT"),
    (11, "DOUBLE"),
    (12, "DATE"),
    (13, "TIME"),
    (14, "TIMESTAMP"),
    (15, "KEY_VALUE"),
    (16, "INSTANT"),
    (17, "LOCAL_DATE"),
    (18, "LOCAL_TIME"),
    (19, "LOCAL_DATE_TIME"),
    (20, "PROTOBUF_NATIVE"),
];

pub const JSON: i32 = 2;
pub const AVRO: i32 = 4;

/// The name of schema type `kind` (`"AVRO"`); `None` for no schema type.
pub fn type_name(kind: i32) -> Option<&'static str> {
    TYPE_NAMES.iter().find(|(k, _)| *k == kind).map(|(_, n)| *n)
}

/// The protocol number of the schema type named `name` (any case).
pub fn type_of(name: &str) -> Option<i32> {
    TYPE_NAMES
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(k, _)| *k)
}

fn describe(kind: i32) -> String {
    type_name(kind).map_or_else(|| format!("type {kind}"), str::to_owned)
}

/// Whether schemas of `kind` are Avro definitions, compared by resolution.
fn is_avro_based(kind: i32) -> bool {
    kind == AVRO || kind == JSON
}

/// Checks that a definition of `kind` is valid: an AVRO or JSON schema must
/// be an Avro definition; other types' data is not interpreted.
pub fn validate(kind: i32, data: &[u8]) -> Result<(), InvalidSchema> {
    if is_avro_based(kind) {
        AvroSchema::parse(data)?;
    }
    Ok(())
}

/// Whether `new` may become the next version after `existing` (the live
/// versions, oldest first, with their version numbers) under `strategy`.
/// `Err` says why not.
pub fn check_new_version(
    existing: &[(u64, &SchemaRecord)],
    new: &SchemaRecord,
    strategy: CompatibilityStrategy,
) -> Result<(), String> {
    let strategy = strategy.effective();
    let Some(against) = compared(existing, strategy) else {
        return Ok(());
    };
    match strategy {
        CompatibilityStrategy::AlwaysCompatible => return Ok(()),
        CompatibilityStrategy::AlwaysIncompatible => {
            return Err(
                "the schema compatibility strategy is ALWAYS_INCOMPATIBLE: no new version may be registered"
                    .into(),
            )
        }
        _ => {}
    }
    let (backward, forward) = match strategy {
        CompatibilityStrategy::Backward | CompatibilityStrategy::BackwardTransitive => {
            (true, false)
        }
        CompatibilityStrategy::Forward | CompatibilityStrategy::ForwardTransitive => (false, true),
        _ => (true, true),
    };
    check_each(against, new, strategy, backward, forward)
}

/// Whether a consumer with schema `reader` may read a topic whose live
/// versions are `existing` under `strategy` (PIP-44: it must read the latest
/// version, or every version under `BACKWARD_TRANSITIVE` and
/// `FULL_TRANSITIVE`). A schema identical to a version is always accepted.
pub fn check_reader(
    existing: &[(u64, &SchemaRecord)],
    reader: &SchemaRecord,
    strategy: CompatibilityStrategy,
) -> Result<(), String> {
    if existing
        .iter()
        .any(|(_, s)| s.kind == reader.kind && s.data == reader.data)
    {
        return Ok(());
    }
    let strategy = strategy.effective();
    let all = matches!(
        strategy,
        CompatibilityStrategy::BackwardTransitive | CompatibilityStrategy::FullTransitive
    );
    let against = match (existing.last(), all) {
        (None, _) => return Ok(()),
        (Some(_), true) => existing,
        (Some(_), false) => &existing[existing.len() - 1..],
    };
    match strategy {
        CompatibilityStrategy::AlwaysCompatible => Ok(()),
        CompatibilityStrategy::AlwaysIncompatible => Err(
            "the schema compatibility strategy is ALWAYS_INCOMPATIBLE: only a registered schema may be used"
                .into(),
        ),
        _ => check_each(against, reader, strategy, true, false),
    }
}

/// The versions a strategy compares with: the latest, or all; `None` when
/// there are none.
fn compared<'a, 'r>(
    existing: &'a [(u64, &'r SchemaRecord)],
    strategy: CompatibilityStrategy,
) -> Option<&'a [(u64, &'r SchemaRecord)]> {
    let n = existing.len();
    match (n, strategy.transitive()) {
        (0, _) => None,
        (_, true) => Some(existing),
        (_, false) => existing.get(n - 1..),
    }
}

/// `new` against each of `against`: can it read them (`backward`), can they
/// read it (`forward`).
fn check_each(
    against: &[(u64, &SchemaRecord)],
    new: &SchemaRecord,
    strategy: CompatibilityStrategy,
    backward: bool,
    forward: bool,
) -> Result<(), String> {
    for (version, old) in against {
        if old.kind != new.kind {
            return Err(format!(
                "the schema's type {} differs from version {version}'s, {} (only ALWAYS_COMPATIBLE allows a change of type)",
                describe(new.kind),
                describe(old.kind)
            ));
        }
    }
    if !is_avro_based(new.kind) {
        return Ok(());
    }
    let parsed_new = AvroSchema::parse(&new.data).map_err(|e| e.to_string())?;
    for (version, old) in against {
        let parsed_old = AvroSchema::parse(&old.data)
            .map_err(|e| format!("version {version} of the topic's schema: {e}"))?;
        if backward {
            parsed_new.can_read(&parsed_old).map_err(|e| {
                format!("under {strategy}, the new schema must read data written with version {version}, and cannot: {e}")
            })?;
        }
        if forward {
            parsed_old.can_read(&parsed_new).map_err(|e| {
                format!("under {strategy}, version {version} must read data written with the new schema, and cannot: {e}")
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use CompatibilityStrategy as S;

    fn avro(fields: &str) -> SchemaRecord {
        SchemaRecord {
            name: "t".into(),
            kind: AVRO,
            data: format!(r#"{{"type":"record","name":"User","fields":[{fields}]}}"#).into_bytes(),
            properties: Vec::new(),
            timestamp: 0,
            deleted: false,
        }
    }

    const ID: &str = r#"{"name":"id","type":"long"}"#;
    const EMAIL_DEFAULT: &str = r#"{"name":"email","type":["null","string"],"default":null}"#;
    const EMAIL: &str = r#"{"name":"email","type":"string"}"#;

    fn v1() -> SchemaRecord {
        avro(ID)
    }
    /// v1 + a field with a default: backward and forward compatible.
    fn add_default() -> SchemaRecord {
        avro(&format!("{ID},{EMAIL_DEFAULT}"))
    }
    /// v1 + a field without default: forward compatible only (old readers
    /// ignore it; new readers cannot read old data).
    fn add_required() -> SchemaRecord {
        avro(&format!("{ID},{EMAIL}"))
    }
    /// v1 without `id`, with another field with a default: backward only
    /// (the new reader defaults the field, drops `id`; old readers need `id`).
    fn drop_id() -> SchemaRecord {
        avro(EMAIL_DEFAULT)
    }

    fn ok(existing: &[&SchemaRecord], new: &SchemaRecord, s: S) -> bool {
        let versions: Vec<(u64, &SchemaRecord)> = existing
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u64, *r))
            .collect();
        check_new_version(&versions, new, s).is_ok()
    }

    #[test]
    fn the_strategy_matrix_for_one_previous_version() {
        let (v1, add_default, add_required, drop_id) =
            (v1(), add_default(), add_required(), drop_id());
        // (strategy, accepts add_default, add_required, drop_id)
        let table = [
            (S::AlwaysCompatible, true, true, true),
            (S::AlwaysIncompatible, false, false, false),
            (S::Backward, true, false, true),
            (S::BackwardTransitive, true, false, true),
            (S::Forward, true, true, false),
            (S::ForwardTransitive, true, true, false),
            (S::Full, true, false, false),
            (S::FullTransitive, true, false, false),
            (S::Undefined, true, false, false),
        ];
        for (s, a, b, c) in table {
            assert_eq!(ok(&[&v1], &add_default, s), a, "{s}: add with default");
            assert_eq!(ok(&[&v1], &add_required, s), b, "{s}: add required");
            assert_eq!(ok(&[&v1], &drop_id, s), c, "{s}: drop a field");
        }
    }

    #[test]
    fn transitive_strategies_check_every_version_others_the_latest() {
        // v1 {id}, v2 {id, email}; new {id, email, phone?} reads v2 but not
        // v1 (email has no default).
        let (v1, v2) = (v1(), add_required());
        let new = avro(&format!(
            r#"{ID},{EMAIL},{{"name":"phone","type":["null","string"],"default":null}}"#
        ));
        assert!(ok(&[&v1, &v2], &new, S::Backward));
        assert!(!ok(&[&v1, &v2], &new, S::BackwardTransitive));
        assert!(!ok(&[&v1, &v2], &new, S::FullTransitive));
        // v1 {id}, v2 {email?}; new {email?, phone?} is read by v2, not by
        // v1 (id has no default).
        let dropped = drop_id();
        assert!(ok(&[&v1, &dropped], &drop_id_other(), S::Forward));
        assert!(!ok(
            &[&v1, &dropped],
            &drop_id_other(),
            S::ForwardTransitive
        ));
    }

    /// Like `drop_id`, with a second optional field (a distinct definition).
    fn drop_id_other() -> SchemaRecord {
        avro(&format!(
            r#"{EMAIL_DEFAULT},{{"name":"phone","type":["null","string"],"default":null}}"#
        ))
    }

    #[test]
    fn the_first_version_is_always_accepted() {
        for s in S::ALL {
            assert!(ok(&[], &v1(), s), "{s}");
        }
    }

    #[test]
    fn a_change_of_type_is_refused_unless_always_compatible() {
        let mut json = add_default();
        json.kind = JSON;
        for s in S::ALL {
            assert_eq!(
                ok(&[&v1()], &json, s),
                s == S::AlwaysCompatible,
                "{s}: AVRO → JSON"
            );
        }
    }

    #[test]
    fn json_schemas_follow_avro_resolution() {
        let mut old = v1();
        old.kind = JSON;
        let mut good = add_default();
        good.kind = JSON;
        let mut bad = add_required();
        bad.kind = JSON;
        assert!(ok(&[&old], &good, S::Full));
        let versions = [(0, &old)];
        let why = check_new_version(&versions, &bad, S::Full).unwrap_err();
        assert!(why.contains("email") && why.contains("FULL"), "{why}");
    }

    #[test]
    fn other_types_are_compatible_unless_always_incompatible() {
        let string = |data: &[u8]| SchemaRecord {
            kind: 1,
            data: data.to_vec(),
            ..v1()
        };
        assert!(ok(&[&string(b"")], &string(b"x"), S::Full));
        assert!(!ok(&[&string(b"")], &string(b"x"), S::AlwaysIncompatible));
    }

    #[test]
    fn a_consumer_must_read_the_latest_or_every_version_when_transitive() {
        let (v1, v2) = (v1(), add_required());
        let versions = [(0, &v1), (1, &v2)];
        // A reader {id, email} reads v2, not v1.
        let reader = add_required();
        let other_reader = avro(&format!("{ID},{EMAIL},{EMAIL_DEFAULT_2}"));
        for s in [S::Backward, S::Forward, S::ForwardTransitive, S::Full] {
            assert!(check_reader(&versions, &other_reader, s).is_ok(), "{s}");
        }
        for s in [S::BackwardTransitive, S::FullTransitive] {
            assert!(check_reader(&versions, &other_reader, s).is_err(), "{s}");
        }
        // A registered schema is always accepted, even ALWAYS_INCOMPATIBLE.
        assert!(check_reader(&versions, &reader, S::AlwaysIncompatible).is_ok());
        assert!(check_reader(&versions, &other_reader, S::AlwaysIncompatible).is_err());
        assert!(check_reader(&versions, &other_reader, S::AlwaysCompatible).is_ok());
        // A reader that cannot read the latest is refused.
        let needs_phone = avro(&format!("{ID},{EMAIL},{PHONE}"));
        assert!(check_reader(&versions, &needs_phone, S::Backward).is_err());
    }

    const EMAIL_DEFAULT_2: &str = r#"{"name":"age","type":["null","int"],"default":null}"#;
    const PHONE: &str = r#"{"name":"phone","type":"string"}"#;

    #[test]
    fn strategies_parse_from_pulsars_names_and_undefined_means_full() {
        for s in S::ALL {
            assert_eq!(s.name().parse::<S>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.name())
            );
        }
        assert_eq!("backward".parse::<S>(), Ok(S::Backward));
        assert!("SIDEWAYS".parse::<S>().is_err());
        assert_eq!(S::Undefined.effective(), S::Full);
    }

    #[test]
    fn type_names_are_pulsars() {
        assert_eq!(type_name(AVRO), Some("AVRO"));
        assert_eq!(type_of("json"), Some(JSON));
        assert_eq!(type_of("KEY_VALUE"), Some(15));
        assert_eq!(type_of("NONE"), None);
        assert_eq!(type_name(0), None);
        assert!(validate(AVRO, b"{").is_err());
        assert!(validate(1, b"anything").is_ok());
    }
}
