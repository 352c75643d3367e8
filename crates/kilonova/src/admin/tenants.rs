//! `kilonova admin tenants …` → `/admin/v2/tenants`.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{AdminClient, AdminError, ApiPath};
use super::Output;

#[derive(Subcommand)]
pub enum TenantsCmd {
    /// List the tenants.
    List,
    /// Show a tenant's info (admin roles, allowed clusters).
    Get { tenant: String },
    /// Create a tenant. Without --allowed-clusters it may use every cluster.
    Create(TenantInfo),
    /// Change a tenant's admin roles and/or allowed clusters; what is not
    /// given is kept.
    Update(TenantInfo),
    /// Delete a tenant (it must have no namespaces).
    Delete { tenant: String },
}

#[derive(Args)]
pub struct TenantInfo {
    tenant: String,
    /// Comma-separated admin roles.
    #[arg(short = 'r', long, value_delimiter = ',')]
    admin_roles: Option<Vec<String>>,
    /// Comma-separated clusters the tenant may use.
    #[arg(short = 'c', long, value_delimiter = ',')]
    allowed_clusters: Option<Vec<String>>,
}

fn tenant_path(tenant: &str) -> ApiPath {
    ApiPath::new(["tenants", tenant])
}

pub async fn run(client: &AdminClient, cmd: TenantsCmd) -> Result<Output, AdminError> {
    let doc = match cmd {
        TenantsCmd::List => client.get(&ApiPath::new(["tenants"])).await?,
        TenantsCmd::Get { tenant } => client.get(&tenant_path(&tenant)).await?,
        TenantsCmd::Create(info) => {
            // As pulsar-admin: no --allowed-clusters means every cluster.
            let clusters = match info.allowed_clusters {
                Some(c) => Value::from(c),
                None => client.get(&ApiPath::new(["clusters"])).await?,
            };
            let body = json!({
                "adminRoles": info.admin_roles.unwrap_or_default(),
                "allowedClusters": clusters,
            });
            client.put(&tenant_path(&info.tenant), Some(&body)).await?
        }
        TenantsCmd::Update(info) => {
            let path = tenant_path(&info.tenant);
            let mut body = client.get(&path).await?;
            if let Value::Object(current) = &mut body {
                if let Some(roles) = info.admin_roles {
                    current.insert("adminRoles".into(), roles.into());
                }
                if let Some(clusters) = info.allowed_clusters {
                    current.insert("allowedClusters".into(), clusters.into());
                }
            } else {
                return Err(AdminError::Transport(format!(
                    "the server's info for tenant {} is not an object: {body}",
                    info.tenant
                )));
            }
            client.post(&path, Some(&body)).await?
        }
        TenantsCmd::Delete { tenant } => client.delete(&tenant_path(&tenant)).await?,
    };
    Ok(Output::Document(doc))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Group;
    use super::*;

    fn info(args: &[&str]) -> TenantInfo {
        match parse(args).unwrap().group {
            Group::Tenants {
                verb: TenantsCmd::Create(i) | TenantsCmd::Update(i),
            } => i,
            _ => panic!("not tenants create/update"),
        }
    }

    #[test]
    fn roles_and_clusters_are_comma_separated_lists() {
        let i = info(&[
            "tenants",
            "create",
            "acme",
            "--admin-roles",
            "r1,r2",
            "--allowed-clusters",
            "standalone",
        ]);
        assert_eq!(i.tenant, "acme");
        assert_eq!(i.admin_roles, Some(vec!["r1".into(), "r2".into()]));
        assert_eq!(i.allowed_clusters, Some(vec!["standalone".into()]));
        let i = info(&["tenants", "update", "acme", "-r", "r3"]);
        assert_eq!(i.admin_roles, Some(vec!["r3".into()]));
        assert_eq!(i.allowed_clusters, None, "not given: kept as it is");
    }
}
