//! What a role may be granted, and the grants a namespace keeps: the inputs
//! of the authorization decision ([`crate::authz`]) besides the tenant's
//! admin roles. Plain data in Pulsar's JSON shapes; the metadata layer stores
//! them in the namespace's record and re-exports them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What a role may be granted (Pulsar's `AuthAction`). `functions`, `sources`,
/// `sinks` and `packages` are accepted and stored; Kilonova checks `produce`
/// and `consume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthAction {
    Produce,
    Consume,
    Functions,
    Sources,
    Sinks,
    Packages,
}

/// An action name that is none of [`AuthAction::ALL`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?}: expected produce, consume, functions, sources, sinks or packages")]
pub struct UnknownAction(pub String);

impl AuthAction {
    pub const ALL: [AuthAction; 6] = [
        AuthAction::Produce,
        AuthAction::Consume,
        AuthAction::Functions,
        AuthAction::Sources,
        AuthAction::Sinks,
        AuthAction::Packages,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AuthAction::Produce => "produce",
            AuthAction::Consume => "consume",
            AuthAction::Functions => "functions",
            AuthAction::Sources => "sources",
            AuthAction::Sinks => "sinks",
            AuthAction::Packages => "packages",
        }
    }

    /// Parses one action name as the admin API and CLI take it.
    pub fn parse(s: &str) -> Result<Self, UnknownAction> {
        AuthAction::ALL
            .into_iter()
            .find(|a| a.name() == s.trim())
            .ok_or_else(|| UnknownAction(s.to_string()))
    }
}

/// Actions granted per role at namespace level, and per topic (full name) and
/// role at topic level (Pulsar's `AuthPolicies`, kept in the namespace's record
/// as Pulsar keeps them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthPolicies {
    pub namespace_auth: BTreeMap<String, BTreeSet<AuthAction>>,
    pub destination_auth: BTreeMap<String, BTreeMap<String, BTreeSet<AuthAction>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_round_trip_and_unknown_names_are_refused() {
        for a in AuthAction::ALL {
            assert_eq!(AuthAction::parse(a.name()), Ok(a));
        }
        assert_eq!(AuthAction::parse(" consume "), Ok(AuthAction::Consume));
        let e = AuthAction::parse("admin").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown action \"admin\": expected produce, consume, functions, sources, sinks or packages"
        );
    }

    #[test]
    fn auth_policies_keep_pulsars_json_shape() {
        let mut p = AuthPolicies::default();
        p.namespace_auth
            .insert("w".into(), [AuthAction::Produce].into());
        p.destination_auth.insert(
            "persistent://a/b/t".into(),
            [("r".to_string(), [AuthAction::Consume].into())].into(),
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "namespace_auth": {"w": ["produce"]},
                "destination_auth": {"persistent://a/b/t": {"r": ["consume"]}}
            })
        );
        let back: AuthPolicies = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
    }
}
