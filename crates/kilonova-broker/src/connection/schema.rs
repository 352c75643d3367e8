//! Schemas: GET_SCHEMA, GET_OR_CREATE_SCHEMA, and the schema a PRODUCER or
//! SUBSCRIBE carries, registered on its topic before the topic sees it.

use kilonova_auth::Want;
use kilonova_metadata::names::TopicName;
use kilonova_metadata::{SchemaOutcome, SchemaRecord};
use kilonova_pulsar_protocol::proto::{CommandGetOrCreateSchema, CommandGetSchema, Schema};

use super::Connection;
use crate::commands;
use crate::error::BrokerError;

impl Connection {
    pub(super) async fn get_schema(&self, g: CommandGetSchema) {
        let version = g.schema_version.as_deref().and_then(requested_version);
        let found = match self.authorized_topic(&g.topic, Want::Lookup).await {
            Ok(t) => self
                .broker
                .resources()
                .schema(&t, version)
                .await
                .ok()
                .flatten(),
            Err(_) => None,
        };
        self.out
            .command(commands::schema_response(g.request_id, &g.topic, found));
    }

    pub(super) async fn get_or_create_schema(&self, g: CommandGetOrCreateSchema) {
        let result = match self.authorized_topic(&g.topic, Want::Produce).await {
            Ok(t) => self
                .broker
                .resources()
                .get_or_create_schema(&t, schema_record(&g.schema))
                .await
                .map_err(BrokerError::from)
                .and_then(|o| created_version(o, || "incompatible schema".into())),
            Err(e) => Err(e),
        };
        self.out.command(commands::get_or_create_schema_response(
            g.request_id,
            result.as_ref().copied(),
        ));
    }

    /// The version of `schema` on topic `name` (registering it if new). `None`: no schema.
    pub(super) async fn register_schema(
        &self,
        name: &TopicName,
        schema: Option<&Schema>,
    ) -> Result<Option<u64>, BrokerError> {
        let Some(s) = schema.filter(|s| s.r#type != 0) else {
            return Ok(None);
        };
        let outcome = self
            .broker
            .resources()
            .get_or_create_schema(name, schema_record(s))
            .await?;
        let version = created_version(outcome, || {
            format!(
                "schema of type {} is incompatible with topic {name}'s schema",
                s.r#type
            )
        })?;
        Ok(Some(version))
    }
}

/// The version a schema was stored with; refused (`incompatible` says why)
/// if the topic's compatibility rules turned it down.
fn created_version(
    outcome: SchemaOutcome,
    incompatible: impl FnOnce() -> String,
) -> Result<u64, BrokerError> {
    match outcome {
        SchemaOutcome::Version(v) => Ok(v),
        SchemaOutcome::Incompatible => Err(BrokerError::IncompatibleSchema(incompatible())),
    }
}

/// The version a GET_SCHEMA names (`None`: the latest); a version that is
/// not 8 bytes names none.
fn requested_version(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

/// A schema from the wire, as the metadata store keeps it.
fn schema_record(s: &Schema) -> SchemaRecord {
    SchemaRecord {
        name: s.name.clone(),
        kind: s.r#type,
        data: s.schema_data.to_vec(),
        properties: s
            .properties
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
    }
}
