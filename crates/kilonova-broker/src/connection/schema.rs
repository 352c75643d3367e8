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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::schema_version_bytes;
    use kilonova_pulsar_protocol::proto::{KeyValue, ServerError};

    #[test]
    fn a_schema_version_is_8_big_endian_bytes_and_other_lengths_name_none() {
        let v = 0x0102_0304_0506_0708;
        let wire = schema_version_bytes(v);
        assert_eq!(&wire[..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(requested_version(&wire), Some(v));
        assert_eq!(requested_version(&wire[..7]), None);
        assert_eq!(requested_version(&[0; 9]), None);
        assert_eq!(requested_version(&[]), None);
    }

    #[test]
    fn a_wire_schema_is_stored_with_its_name_type_data_and_properties() {
        let wire = Schema {
            name: "orders".into(),
            schema_data: bytes::Bytes::from_static(b"{\"type\":\"record\"}"),
            r#type: 4,
            properties: vec![KeyValue {
                key: "k".into(),
                value: "v".into(),
            }],
        };
        let r = schema_record(&wire);
        assert_eq!(r.name, "orders");
        assert_eq!(r.kind, 4);
        assert_eq!(r.data, b"{\"type\":\"record\"}");
        assert_eq!(r.properties, vec![("k".to_string(), "v".to_string())]);
    }

    #[test]
    fn an_incompatible_schema_is_refused_with_incompatible_schema() {
        let why = || "not compatible".to_string();
        assert_eq!(
            created_version(SchemaOutcome::Version(3), why).ok(),
            Some(3)
        );
        let e = created_version(SchemaOutcome::Incompatible, why).err();
        assert_eq!(
            e.as_ref().map(|e| e.server_error()),
            Some(ServerError::IncompatibleSchema)
        );
        assert_eq!(e.map(|e| e.to_string()).as_deref(), Some("not compatible"));
    }
}
