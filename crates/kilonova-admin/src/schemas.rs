//! The schema registry's routes, Pulsar's
//! `/admin/v2/schemas/{tenant}/{namespace}/{topic}/…` (persistent topics;
//! a partitioned topic's partitions share its schema): get the latest, one
//! or all versions, upload, delete, test compatibility, find a version; and
//! the namespace's `schemaCompatibilityStrategy`.
//!
//! Bodies and answers are Pulsar's: a `PostSchemaPayload`
//! `{"type":"AVRO","schema":"…","properties":{}}` in, a
//! `GetSchemaResponse` `{"version","type","timestamp","data","properties"}`
//! out. An incompatible schema is 409, an invalid definition 422, an unknown
//! type or malformed body 400.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use kilonova_auth::Want;
use kilonova_broker::Broker;
use kilonova_metadata::schema::{self, CompatibilityStrategy as Strategy};
use kilonova_metadata::{NamespaceName, SchemaOutcome, SchemaRecord, TopicName};

use crate::api::{Access, Api};
use crate::error::{json_body, ApiError, ApiResult};
use crate::namespaces::Force;

pub fn routes(api: Api) -> Api {
    const S: &str = "/admin/v2/schemas/{tenant}/{namespace}/{topic}";
    api.route(
        &format!("{S}/schema"),
        get(latest).post(upload).delete(delete),
        &[
            ("GET", Access::Topic(Want::Lookup), "The topic's latest schema: {version, type, timestamp, data, properties} (404 if none)"),
            ("POST", Access::TenantAdmin, "Register a schema version; body: {\"type\":\"AVRO\",\"schema\":\"…\",\"properties\":{}}; answers {\"version\": N} (409 if the namespace's compatibility strategy refuses it, 422 if the definition is invalid)"),
            ("DELETE", Access::TenantAdmin, "Delete the topic's schema (a deletion marker, so versions go on; ?force=true removes every version); answers {\"version\": N}"),
        ],
    )
    .route(
        &format!("{S}/schema/{{version}}"),
        get(at_version),
        &[("GET", Access::Topic(Want::Lookup), "One version of the topic's schema (404 if none or deleted)")],
    )
    .route(
        &format!("{S}/schemas"),
        get(all_versions),
        &[("GET", Access::Topic(Want::Lookup), "Every live version of the topic's schema: {\"getSchemaResponses\": […]}")],
    )
    .route(
        &format!("{S}/compatibility"),
        post(compatibility),
        &[("POST", Access::Topic(Want::Lookup), "Whether a schema (the upload body) could be registered: {\"isCompatible\": bool, \"schemaCompatibilityStrategy\": \"…\"}")],
    )
    .route(
        &format!("{S}/version"),
        post(version_of),
        &[("POST", Access::Topic(Want::Lookup), "The version of a schema (the upload body) on the topic: {\"version\": N} (404 if not registered)")],
    )
    .route(
        "/admin/v2/namespaces/{tenant}/{namespace}/schemaCompatibilityStrategy",
        get(get_strategy).put(set_strategy),
        &[
            ("GET", Access::TenantAdmin, "The namespace's schema compatibility strategy (UNDEFINED is answered as the broker default, FULL)"),
            ("PUT", Access::TenantAdmin, "Set the namespace's schema compatibility strategy; body: a JSON string such as \"BACKWARD\""),
        ],
    )
}

#[derive(Deserialize)]
struct SchemaPath {
    tenant: String,
    namespace: String,
    topic: String,
}

#[derive(Deserialize)]
struct VersionPath {
    tenant: String,
    namespace: String,
    topic: String,
    version: String,
}

/// The topic a schema path names (Pulsar's schema routes are persistent).
fn topic(tenant: &str, namespace: &str, local: &str) -> ApiResult<TopicName> {
    Ok(TopicName::parse(&format!(
        "persistent://{tenant}/{namespace}/{local}"
    ))?)
}

/// Pulsar's `PostSchemaPayload`.
#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    schema: String,
    #[serde(default)]
    properties: BTreeMap<String, String>,
}

/// Pulsar's `GetSchemaResponse`.
#[derive(Serialize)]
struct SchemaResponse {
    version: u64,
    #[serde(rename = "type")]
    kind: String,
    timestamp: u64,
    data: String,
    properties: BTreeMap<String, String>,
}

fn response(version: u64, s: &SchemaRecord) -> SchemaResponse {
    SchemaResponse {
        version,
        kind: schema::type_name(s.kind).map_or_else(|| s.kind.to_string(), str::to_owned),
        timestamp: s.timestamp,
        data: String::from_utf8_lossy(&s.data).into_owned(),
        properties: s.properties.iter().cloned().collect(),
    }
}

/// The record an upload body stands for: 400 for a malformed body or an
/// unknown type, 422 for a definition its type refuses.
fn record(name: &TopicName, body: &[u8], timestamp: u64) -> ApiResult<SchemaRecord> {
    let p: Payload = json_body(body)?;
    let Some(kind) = schema::type_of(&p.kind) else {
        return Err(ApiError::bad_request(format!(
            "unknown schema type {:?}: one of STRING, JSON, PROTOBUF, AVRO, BOOLEAN, INT8, INT16, INT32, INT64, FLOAT, DOUBLE, DATE, TIME, TIMESTAMP, KEY_VALUE, INSTANT, LOCAL_DATE, LOCAL_TIME, LOCAL_DATE_TIME, PROTOBUF_NATIVE",
            p.kind
        )));
    };
    schema::validate(kind, p.schema.as_bytes())
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok(SchemaRecord {
        name: name.local.clone(),
        kind,
        data: p.schema.into_bytes(),
        properties: p.properties.into_iter().collect(),
        timestamp,
        deleted: false,
    })
}

fn not_found(name: &TopicName) -> ApiError {
    ApiError::not_found(format!("schema of topic {name} not found"))
}

/// 404 unless the topic's namespace exists.
async fn namespace_exists(b: &Broker, name: &TopicName) -> ApiResult<()> {
    let ns = name.namespace();
    if !b.resources().namespace_exists(&ns).await? {
        return Err(ApiError::not_found(format!("namespace {ns} not found")));
    }
    Ok(())
}

async fn latest(State(b): State<Broker>, Path(p): Path<SchemaPath>) -> ApiResult<Json<Value>> {
    let name = topic(&p.tenant, &p.namespace, &p.topic)?;
    let (v, s) = b
        .resources()
        .schema(&name, None)
        .await?
        .ok_or_else(|| not_found(&name))?;
    Ok(Json(json!(response(v, &s))))
}

async fn at_version(State(b): State<Broker>, Path(p): Path<VersionPath>) -> ApiResult<Json<Value>> {
    let name = topic(&p.tenant, &p.namespace, &p.topic)?;
    let version: u64 = p.version.parse().map_err(|_| {
        ApiError::bad_request(format!("schema version {:?} is not a number", p.version))
    })?;
    let (v, s) = b
        .resources()
        .schema(&name, Some(version))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "version {version} of topic {name}'s schema not found"
            ))
        })?;
    Ok(Json(json!(response(v, &s))))
}

async fn all_versions(
    State(b): State<Broker>,
    Path(p): Path<SchemaPath>,
) -> ApiResult<Json<Value>> {
    let name = topic(&p.tenant, &p.namespace, &p.topic)?;
    let versions = b.resources().schemas(&name).await?;
    let all: Vec<SchemaResponse> = versions.iter().map(|(v, s)| response(*v, s)).collect();
    Ok(Json(json!({ "getSchemaResponses": all })))
}

async fn upload(
    State(b): State<Broker>,
    Path(p): Path<SchemaPath>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let name = topic(&p.tenant, &p.namespace, &p.topic)?;
    let record = record(&name, &body, b.clock().now_ms())?;
    namespace_exists(&b, &name).await?;
    let strategy = b.schema_compatibility_strategy(&name.namespace()).await?;
    match b
        .resources()
        .get_or_create_schema(&name, record, strategy)
        .await?
    {
        SchemaOutcome::Version(v) => {
            tracing::info!(topic = %name, version = v, "schema uploaded");
            Ok(Json(json!({ "version": v })))
        }
        SchemaOutcome::Incompatible(why) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("incompatible schema: {why}"),
        )),
    }
}

async fn delete(
    State(b): State<Broker>,
    Path(p): Path<SchemaPath>,
    Query(q): Query<Force>,
) -> ApiResult<Json<Value>> {
    let name = topic(&p.tenant, &p.namespace, &p.topic)?;
    let version = b
        .resources()
        .delete_schema(&name, q.force, b.clock().now_ms())
        .await?
        .ok_or_else(|| not_found(&name))?;
    tracing::info!(topic = %name, version, force = q.force, "schema deleted");
    Ok(Json(json!({ "version": version })))
}

async fn compatibility(
    State(b): State<Broker>,
    Path(p): Path<SchemaPath>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let name = topic(&p.tenant, &p.namespace, &p.topic)?;
    let record = record(&name, &body, 0)?;
    namespace_exists(&b, &name).await?;
    let strategy = b.schema_compatibility_strategy(&name.namespace()).await?;
    let checked = b
        .resources()
        .check_schema_compatibility(&name, &record, strategy)
        .await?;
    if let Err(why) = &checked {
        tracing::debug!(topic = %name, why, "schema compatibility check failed");
    }
    Ok(Json(json!({
        "isCompatible": checked.is_ok(),
        "schemaCompatibilityStrategy": strategy.effective().name(),
    })))
}

async fn version_of(
    State(b): State<Broker>,
    Path(p): Path<SchemaPath>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let name = topic(&p.tenant, &p.namespace, &p.topic)?;
    let record = record(&name, &body, 0)?;
    let versions = b.resources().schemas(&name).await?;
    let (v, _) = versions
        .iter()
        .find(|(_, s)| s.kind == record.kind && s.data == record.data)
        .ok_or_else(|| ApiError::not_found(format!("the schema is not registered on {name}")))?;
    Ok(Json(json!({ "version": v })))
}

fn namespace(tenant: &str, ns: &str) -> ApiResult<NamespaceName> {
    Ok(NamespaceName::new(tenant, ns)?)
}

async fn get_strategy(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
) -> ApiResult<Json<Strategy>> {
    let policies = b.resources().namespace(&namespace(&t, &n)?).await?;
    Ok(Json(policies.schema_compatibility_strategy.effective()))
}

async fn set_strategy(
    State(b): State<Broker>,
    Path((t, n)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let ns = namespace(&t, &n)?;
    let name: String = json_body(&body)?;
    let strategy: Strategy = name
        .parse()
        .map_err(|e: schema::UnknownStrategy| ApiError::bad_request(e.to_string()))?;
    b.resources()
        .update_namespace(&ns, |p| {
            p.schema_compatibility_strategy = strategy;
            Ok(())
        })
        .await?;
    tracing::info!(namespace = %ns, %strategy, "schema compatibility strategy set");
    Ok(StatusCode::NO_CONTENT)
}
