//! Who may do what: a pure decision over a role, what the operation needs,
//! the tenant's admin roles and the namespace's grants (the caller reads
//! them from wherever it keeps them; this crate reads nothing).
//!
//! As in Pulsar: super-users may do everything; a tenant's admin roles may do
//! everything in the tenant; other roles need a grant of `produce` or
//! `consume` on the namespace or on the topic (a partition is covered by its
//! partitioned topic's grant). Looking a topic up needs either.

use std::collections::BTreeSet;
use std::fmt;

use crate::grants::{AuthAction, AuthPolicies};

/// A topic as grants name it: `Display` gives its full name, the key of its
/// topic-level grants. Implemented by the metadata layer's topic name, which
/// owns the syntax of names and partitions.
pub trait GrantedTopic: fmt::Display + fmt::Debug + Sync {
    /// For a partition, the full name of its partitioned topic, whose grants
    /// cover the partition; `None` for any other topic.
    fn partitioned_name(&self) -> Option<String>;
}

/// The permission an operation on a namespace or topic needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Produce,
    Consume,
    /// Produce or consume (LOOKUP, metadata, stats).
    Lookup,
}

impl Want {
    fn granted_by(self, actions: &BTreeSet<AuthAction>) -> bool {
        match self {
            Want::Produce => actions.contains(&AuthAction::Produce),
            Want::Consume => actions.contains(&AuthAction::Consume),
            Want::Lookup => {
                actions.contains(&AuthAction::Produce) || actions.contains(&AuthAction::Consume)
            }
        }
    }
}

/// What an operation needs.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    /// Any authenticated role.
    Authenticated,
    SuperUser,
    /// A super-user or an admin role of the tenant.
    TenantAdmin,
    /// ... or a role granted `Want` on the namespace.
    Namespace(Want),
    /// ... or a role granted `Want` on the namespace or on this topic.
    Topic(&'a dyn GrantedTopic, Want),
}

impl Need<'_> {
    /// Whether deciding needs the tenant's admin roles.
    pub fn reads_tenant(&self) -> bool {
        !matches!(self, Need::Authenticated | Need::SuperUser)
    }

    /// Whether deciding needs the namespace's permissions.
    pub fn reads_namespace(&self) -> bool {
        matches!(self, Need::Namespace(_) | Need::Topic(..))
    }
}

/// Decides with the broker's super-user roles.
#[derive(Clone, Debug, Default)]
pub struct Authorizer {
    enabled: bool,
    super_users: BTreeSet<String>,
}

impl Authorizer {
    pub fn new(enabled: bool, super_users: BTreeSet<String>) -> Self {
        Authorizer {
            enabled,
            super_users,
        }
    }

    /// Whether permissions are checked at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_super_user(&self, role: &str) -> bool {
        self.super_users.contains(role)
    }

    /// Whether `role` may do what `need` says. `tenant_admins` are the admin
    /// roles of the tenant concerned and `auth` the grants of the namespace
    /// concerned (`None`: there is no such tenant or namespace, or the need
    /// concerns none).
    pub fn allows(
        &self,
        role: &str,
        need: Need<'_>,
        tenant_admins: Option<&BTreeSet<String>>,
        auth: Option<&AuthPolicies>,
    ) -> bool {
        if !self.enabled || self.is_super_user(role) {
            return true;
        }
        let tenant_admin = tenant_admins.is_some_and(|admins| admins.contains(role));
        match need {
            Need::Authenticated => true,
            Need::SuperUser => false,
            Need::TenantAdmin => tenant_admin,
            Need::Namespace(want) => {
                tenant_admin
                    || auth
                        .and_then(|a| a.namespace_auth.get(role))
                        .is_some_and(|actions| want.granted_by(actions))
            }
            Need::Topic(topic, want) => {
                if tenant_admin {
                    return true;
                }
                let Some(auth) = auth else { return false };
                if auth
                    .namespace_auth
                    .get(role)
                    .is_some_and(|actions| want.granted_by(actions))
                {
                    return true;
                }
                let names = [Some(topic.to_string()), topic.partitioned_name()];
                names.iter().flatten().any(|name| {
                    auth.destination_auth
                        .get(name)
                        .and_then(|roles| roles.get(role))
                        .is_some_and(|actions| want.granted_by(actions))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(a: &[AuthAction]) -> BTreeSet<AuthAction> {
        a.iter().copied().collect()
    }

    /// A topic name as the metadata layer would give it.
    #[derive(Debug)]
    struct Topic {
        name: &'static str,
        partitioned: Option<&'static str>,
    }

    impl fmt::Display for Topic {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.name)
        }
    }

    impl GrantedTopic for Topic {
        fn partitioned_name(&self) -> Option<String> {
            self.partitioned.map(str::to_string)
        }
    }

    fn unpartitioned(name: &'static str) -> Topic {
        Topic {
            name,
            partitioned: None,
        }
    }

    fn setup() -> (Authorizer, BTreeSet<String>, AuthPolicies, Topic) {
        let authz = Authorizer::new(true, ["root".to_string()].into());
        let tenant = ["ops".to_string()].into();
        let topic = unpartitioned("persistent://acme/ns/t");
        let mut auth = AuthPolicies::default();
        auth.namespace_auth
            .insert("writer".into(), actions(&[AuthAction::Produce]));
        auth.destination_auth.insert(
            topic.to_string(),
            [("reader".to_string(), actions(&[AuthAction::Consume]))].into(),
        );
        (authz, tenant, auth, topic)
    }

    #[test]
    fn super_users_and_tenant_admins_and_grants_decide() {
        let (authz, tenant, auth, topic) = setup();
        let t = Some(&tenant);
        let a = Some(&auth);
        let produce = Need::Topic(&topic, Want::Produce);
        let consume = Need::Topic(&topic, Want::Consume);
        let lookup = Need::Topic(&topic, Want::Lookup);
        // Super-user: everything, with or without records.
        for need in [Need::SuperUser, Need::TenantAdmin, produce, consume] {
            assert!(authz.allows("root", need, None, None));
        }
        // Tenant admin: the tenant's everything, not super-user operations.
        assert!(authz.allows("ops", Need::TenantAdmin, t, a));
        assert!(authz.allows("ops", produce, t, a));
        assert!(!authz.allows("ops", Need::SuperUser, t, a));
        // Namespace grant of produce: produce and lookup, not consume.
        assert!(authz.allows("writer", produce, t, a));
        assert!(authz.allows("writer", lookup, t, a));
        assert!(!authz.allows("writer", consume, t, a));
        assert!(!authz.allows("writer", Need::TenantAdmin, t, a));
        // Topic grant of consume: that topic only.
        assert!(authz.allows("reader", consume, t, a));
        assert!(!authz.allows("reader", produce, t, a));
        let other = unpartitioned("persistent://acme/ns/other");
        assert!(!authz.allows("reader", Need::Topic(&other, Want::Consume), t, a));
        assert!(!authz.allows("reader", Need::Namespace(Want::Lookup), t, a));
        // Nobody else, and everyone authenticated.
        assert!(!authz.allows("stranger", lookup, t, a));
        assert!(authz.allows("stranger", Need::Authenticated, t, a));
    }

    #[test]
    fn a_partition_is_covered_by_its_partitioned_topics_grant() {
        let (authz, tenant, auth, topic) = setup();
        let p = Topic {
            name: "persistent://acme/ns/t-partition-3",
            partitioned: Some(topic.name),
        };
        assert!(authz.allows(
            "reader",
            Need::Topic(&p, Want::Consume),
            Some(&tenant),
            Some(&auth)
        ));
    }

    #[test]
    fn disabled_authorization_allows_everything() {
        let authz = Authorizer::new(false, BTreeSet::new());
        assert!(authz.allows("anyone", Need::SuperUser, None, None));
    }
}
