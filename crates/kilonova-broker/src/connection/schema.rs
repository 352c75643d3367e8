//! Schemas: GET_SCHEMA, GET_OR_CREATE_SCHEMA, and the schema a PRODUCER or
//! SUBSCRIBE carries, registered on its topic before the topic sees it.

use kilonova_auth::Want;
use kilonova_metadata::names::TopicName;
use kilonova_metadata::schema;
use kilonova_metadata::{SchemaOutcome, SchemaRecord};
use kilonova_pulsar_protocol::proto::{CommandGetOrCreateSchema, CommandGetSchema, Schema};

use super::{Connection, Side};
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
            Ok(t) => self.add_schema_version(&t, &g.schema).await,
            Err(e) => Err(e),
        };
        self.out.command(commands::get_or_create_schema_response(
            g.request_id,
            result.as_ref().copied(),
        ));
    }

    /// The version of `schema` on topic `name`: a producer's is registered if
    /// new and the namespace's compatibility strategy allows it; a consumer's
    /// must be able to read the topic's versions (PIP-44), and is registered
    /// only when the topic has no schema. `None`: no schema (none sent, or
    /// a type that names none: BYTES, AUTO_CONSUME).
    pub(super) async fn register_schema(
        &self,
        name: &TopicName,
        schema: Option<&Schema>,
        side: Side,
    ) -> Result<Option<u64>, BrokerError> {
        let Some(s) = schema.filter(|s| schema::type_name(s.r#type).is_some()) else {
            return Ok(None);
        };
        if side == Side::Consumer {
            let record = checked_record(s)?;
            let strategy = self
                .broker
                .schema_compatibility_strategy(&name.namespace())
                .await?;
            let checked = self
                .broker
                .resources()
                .check_reader_schema(name, &record, strategy)
                .await?;
            match checked {
                None => {}
                Some(Ok(())) => return Ok(None),
                Some(Err(why)) => {
                    return Err(BrokerError::IncompatibleSchema(format!(
                        "the consumer's schema cannot read topic {name}'s: {why}"
                    )))
                }
            }
        }
        self.add_schema_version(name, s).await.map(Some)
    }

    /// Finds `schema` among `name`'s versions or registers it under the
    /// namespace's compatibility strategy.
    async fn add_schema_version(&self, name: &TopicName, s: &Schema) -> Result<u64, BrokerError> {
        let mut record = checked_record(s)?;
        record.timestamp = self.broker.clock().now_ms();
        let strategy = self
            .broker
            .schema_compatibility_strategy(&name.namespace())
            .await?;
        let outcome = self
            .broker
            .resources()
            .get_or_create_schema(name, record, strategy)
            .await?;
        created_version(outcome, name)
    }
}

/// The version a schema was stored with; refused with why the topic's
/// compatibility strategy turned it down.
fn created_version(outcome: SchemaOutcome, name: &TopicName) -> Result<u64, BrokerError> {
    match outcome {
        SchemaOutcome::Version(v) => Ok(v),
        SchemaOutcome::Incompatible(why) => Err(BrokerError::IncompatibleSchema(format!(
            "the schema is incompatible with topic {name}'s: {why}"
        ))),
    }
}

/// A wire schema as stored, if its definition is valid for its type (an
/// AVRO or JSON schema must be an Avro definition).
fn checked_record(s: &Schema) -> Result<SchemaRecord, BrokerError> {
    schema::validate(s.r#type, &s.schema_data)
        .map_err(|e| BrokerError::IncompatibleSchema(e.to_string()))?;
    Ok(schema_record(s))
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
        timestamp: 0,
        deleted: false,
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
        let name = TopicName::parse("persistent://public/default/t").unwrap();
        assert_eq!(
            created_version(SchemaOutcome::Version(3), &name).ok(),
            Some(3)
        );
        let e = created_version(SchemaOutcome::Incompatible("not compatible".into()), &name).err();
        assert_eq!(
            e.as_ref().map(|e| e.server_error()),
            Some(ServerError::IncompatibleSchema)
        );
        let why = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            why.contains("not compatible") && why.contains("public/default/t"),
            "{why}"
        );
    }

    #[test]
    fn an_invalid_avro_definition_is_refused_with_incompatible_schema() {
        let wire = Schema {
            name: "orders".into(),
            schema_data: bytes::Bytes::from_static(b"{\"type\":\"record\"}"),
            r#type: schema::AVRO,
            properties: Vec::new(),
        };
        let e = checked_record(&wire).err();
        assert_eq!(
            e.as_ref().map(|e| e.server_error()),
            Some(ServerError::IncompatibleSchema)
        );
        // Other types' data is not interpreted.
        let string = Schema { r#type: 1, ..wire };
        assert!(checked_record(&string).is_ok());
    }
}
