//! `grant-permission`, `revoke-permission` and `permissions`, shared by
//! `namespaces` and `topics` (pulsar-admin's flags): `…/permissions/{role}`
//! under the namespace's or the topic's path.

use clap::Args;
use kilonova_metadata::policies::AuthAction;
use serde_json::{json, Value};

use super::client::{AdminClient, AdminError, ApiPath};

/// One action name as the broker takes it (`produce`, `consume`, `functions`,
/// `sources`, `sinks`, `packages`).
fn action(s: &str) -> Result<AuthAction, String> {
    AuthAction::parse(s).map_err(|e| e.to_string())
}

#[derive(Args)]
pub struct Grant {
    /// The role (a token's subject).
    #[arg(long)]
    pub role: String,
    /// Actions to grant, comma-separated (replaces the role's actions).
    #[arg(long, value_parser = action, value_delimiter = ',', required = true)]
    pub actions: Vec<AuthAction>,
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
