//! `kilonova admin brokers …` → `/admin/v2/brokers`.

use clap::Subcommand;

use super::client::{AdminClient, AdminError, ApiPath};
use super::Output;

#[derive(Subcommand)]
pub enum BrokersCmd {
    /// List a cluster's active brokers (host:web-port).
    List { cluster: String },
    /// Check that the broker is healthy; prints `ok`.
    Healthcheck,
    /// The broker's version.
    Version,
    /// The cluster's leader broker.
    LeaderBroker,
    /// The broker's configuration in effect (option → value).
    GetRuntimeConfig,
    /// A broker's load report: the broker asked (none given), or the one
    /// BROKER (host:port) stored in the cluster's metadata.
    LoadReport { broker: Option<String> },
    /// Run one shedding round now on the load manager's leader; prints the
    /// bundles moved.
    Shed,
}

pub async fn run(client: &AdminClient, cmd: BrokersCmd) -> Result<Output, AdminError> {
    let path = match &cmd {
        BrokersCmd::List { cluster } => ApiPath::new(["brokers", cluster]),
        BrokersCmd::Healthcheck => ApiPath::new(["brokers", "health"]),
        BrokersCmd::Version => ApiPath::new(["brokers", "version"]),
        BrokersCmd::LeaderBroker => ApiPath::new(["brokers", "leaderBroker"]),
        BrokersCmd::GetRuntimeConfig => ApiPath::new(["brokers", "configuration", "runtime"]),
        BrokersCmd::LoadReport { broker: None } => ApiPath::new(["broker-stats", "load-report"]),
        BrokersCmd::LoadReport {
            broker: Some(broker),
        } => ApiPath::new(["broker-stats", "load-report", broker.as_str()]),
        BrokersCmd::Shed => {
            let path = ApiPath::new(["brokers", "shed"]);
            return Ok(Output::Document(client.post(&path, None).await?));
        }
    };
    Ok(Output::Document(client.get(&path).await?))
}
