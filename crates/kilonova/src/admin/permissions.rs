//! `grant-permission`, `revoke-permission` and `permissions`, shared by
//! `namespaces` and `topics` (pulsar-admin's flags): `…/permissions/{role}`
//! under the namespace's or the topic's path.

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::client::{AdminClient, AdminError, ApiPath};

/// What a role may be granted (`functions`, `sources`, `sinks` and `packages`
/// are stored; the broker checks `produce` and `consume`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Action {
    Produce,
    Consume,
    Functions,
    Sources,
    Sinks,
    Packages,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Functions => "functions",
            Action::Sources => "sources",
            Action::Sinks => "sinks",
            Action::Packages => "packages",
        }
    }
}

#[derive(Args)]
pub struct Grant {
    /// The role (a token's subject).
    #[arg(long)]
    pub role: String,
    /// Actions to grant, comma-separated (replaces the role's actions).
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    pub actions: Vec<Action>,
}

#[derive(Args)]
pub struct Revoke {
    /// The role whose permissions go.
    #[arg(long)]
    pub role: String,
}

/// The request a grant makes: its path under `base` and its body.
pub fn grant_request(base: ApiPath, g: &Grant) -> (ApiPath, Value) {
    let actions: Vec<&str> = g.actions.iter().map(|a| a.name()).collect();
    (base.join("permissions").join(&g.role), json!(actions))
}

pub async fn grant(client: &AdminClient, base: ApiPath, g: &Grant) -> Result<Value, AdminError> {
    let (path, body) = grant_request(base, g);
    client.post(&path, Some(&body)).await
}

pub async fn revoke(client: &AdminClient, base: ApiPath, r: &Revoke) -> Result<Value, AdminError> {
    client.delete(&base.join("permissions").join(&r.role)).await
}

pub async fn list(client: &AdminClient, base: ApiPath) -> Result<Value, AdminError> {
    client.get(&base.join("permissions")).await
}
