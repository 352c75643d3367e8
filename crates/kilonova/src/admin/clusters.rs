//! `kilonova admin clusters …` → `/admin/v2/clusters`.

use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::client::{AdminClient, AdminError, ApiPath};
use super::Output;

#[derive(Subcommand)]
pub enum ClustersCmd {
    /// List the clusters.
    List,
    /// Show a cluster's data.
    Get { cluster: String },
    /// Create a cluster.
    Create(ClusterData),
    /// Replace a cluster's data.
    Update(ClusterData),
    /// Delete a cluster.
    Delete { cluster: String },
}

#[derive(Args)]
pub struct ClusterData {
    cluster: String,
    /// The cluster's web service URL (http://host:port).
    #[arg(long)]
    url: Option<String>,
    /// The cluster's web service TLS URL.
    #[arg(long)]
    url_secure: Option<String>,
    /// The cluster's broker service URL (pulsar://host:port).
    #[arg(long)]
    broker_url: Option<String>,
    /// The cluster's broker service TLS URL.
    #[arg(long)]
    broker_url_secure: Option<String>,
}

impl ClusterData {
    /// Pulsar's ClusterData with the fields that were given.
    fn body(&self) -> Value {
        let fields = [
            ("serviceUrl", &self.url),
            ("serviceUrlTls", &self.url_secure),
            ("brokerServiceUrl", &self.broker_url),
            ("brokerServiceUrlTls", &self.broker_url_secure),
        ];
        let map: Map<String, Value> = fields
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), Value::from(v.as_str()))))
            .collect();
        Value::Object(map)
    }
}

fn cluster_path(cluster: &str) -> ApiPath {
    ApiPath::new(["clusters", cluster])
}

pub async fn run(client: &AdminClient, cmd: ClustersCmd) -> Result<Output, AdminError> {
    // A verb that changes something prints whatever the server answered
    // (nothing: 204).
    let doc = match cmd {
        ClustersCmd::List => client.get(&ApiPath::new(["clusters"])).await?,
        ClustersCmd::Get { cluster } => client.get(&cluster_path(&cluster)).await?,
        ClustersCmd::Create(data) => {
            let path = cluster_path(&data.cluster);
            client.put(&path, Some(&data.body())).await?
        }
        ClustersCmd::Update(data) => {
            let path = cluster_path(&data.cluster);
            client.post(&path, Some(&data.body())).await?
        }
        ClustersCmd::Delete { cluster } => client.delete(&cluster_path(&cluster)).await?,
    };
    Ok(Output::Document(doc))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Group;
    use super::*;
    use serde_json::json;

    fn data(args: &[&str]) -> ClusterData {
        match parse(args).unwrap().group {
            Group::Clusters {
                verb: ClustersCmd::Create(d) | ClustersCmd::Update(d),
            } => d,
            _ => panic!("not clusters create/update"),
        }
    }

    #[test]
    fn create_sends_pulsar_cluster_data_with_the_given_urls() {
        let d = data(&[
            "clusters",
            "create",
            "east",
            "--url",
            "http://e:8080",
            "--broker-url",
            "pulsar://e:6650",
        ]);
        assert_eq!(d.cluster, "east");
        assert_eq!(
            d.body(),
            json!({"serviceUrl": "http://e:8080", "brokerServiceUrl": "pulsar://e:6650"})
        );
        let d = data(&[
            "clusters",
            "update",
            "east",
            "--url-secure",
            "https://e:8443",
        ]);
        assert_eq!(d.body(), json!({"serviceUrlTls": "https://e:8443"}));
    }
}
