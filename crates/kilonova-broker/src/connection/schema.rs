//! Schemas: GET_SCHEMA, GET_OR_CREATE_SCHEMA, and the schema a PRODUCER or
//! SUBSCRIBE carries, registered on its topic before the topic sees it.

use bytes::Bytes;
use kilonova_auth::Want;
use kilonova_metadata::names::TopicName;
use kilonova_metadata::{SchemaOutcome, SchemaRecord};
use kilonova_pulsar_protocol::proto::{
    base_command::Type, CommandGetOrCreateSchema, CommandGetOrCreateSchemaResponse,
    CommandGetSchema, CommandGetSchemaResponse, KeyValue, Schema, ServerError,
};

use super::Connection;
use crate::commands;
use crate::error::BrokerError;
use crate::topic;

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
            .command(commands::with_type(Type::GetSchemaResponse, |b| {
                b.get_schema_response = Some(match found {
                    Some((v, s)) => Box::new(CommandGetSchemaResponse {
                        request_id: g.request_id,
                        schema: Some(Schema {
                            name: s.name,
                            schema_data: Bytes::from(s.data),
                            r#type: s.kind,
                            properties: s
                                .properties
                                .into_iter()
                                .map(|(key, value)| KeyValue { key, value })
                                .collect(),
                        }),
                        schema_version: Some(topic::schema_version_bytes(v)),
                        ..Default::default()
                    }),
                    None => Box::new(CommandGetSchemaResponse {
                        request_id: g.request_id,
                        error_code: Some(ServerError::TopicNotFound as i32),
                        error_message: Some(format!(
                            "topic {} not found or has no schema",
                            g.topic
                        )),
                        ..Default::default()
                    }),
                });
            }));
    }

    pub(super) async fn get_or_create_schema(&self, g: CommandGetOrCreateSchema) {
        let result = match self.authorized_topic(&g.topic, Want::Produce).await {
            Ok(t) => self
                .broker
                .resources()
                .get_or_create_schema(&t, schema_record(&g.schema))
                .await
                .map_err(BrokerError::from),
            Err(e) => Err(e),
        };
        self.out
            .command(commands::with_type(Type::GetOrCreateSchemaResponse, |b| {
                let mut r = CommandGetOrCreateSchemaResponse {
                    request_id: g.request_id,
                    ..Default::default()
                };
                match result {
                    Ok(SchemaOutcome::Version(v)) => {
                        r.schema_version = Some(topic::schema_version_bytes(v))
                    }
                    Ok(SchemaOutcome::Incompatible) => {
                        r.error_code = Some(ServerError::IncompatibleSchema as i32);
                        r.error_message = Some("incompatible schema".into());
                    }
                    Err(e) => {
                        r.error_code = Some(e.server_error() as i32);
                        r.error_message = Some(e.to_string());
                    }
                }
                b.get_or_create_schema_response = Some(Box::new(r));
            }));
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
        match self
            .broker
            .resources()
            .get_or_create_schema(name, schema_record(s))
            .await?
        {
            SchemaOutcome::Version(v) => Ok(Some(v)),
            SchemaOutcome::Incompatible => Err(BrokerError::IncompatibleSchema(format!(
                "schema of type {} is incompatible with topic {name}'s schema",
                s.r#type
            ))),
        }
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
