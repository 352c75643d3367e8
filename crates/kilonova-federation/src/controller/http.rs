//! The controller's HTTP API: routes, handlers, errors as statuses; changes
//! and proxies' watch calls go to the leader (a follower redirects them).

use super::*;

impl IntoResponse for ControllerError {
    fn into_response(self) -> Response {
        let status = match &self {
            ControllerError::Map(MapError::NoCluster(_) | MapError::NoTopic(_)) => {
                StatusCode::NOT_FOUND
            }
            ControllerError::Map(
                MapError::ClusterExists(_)
                | MapError::TopicExists(_)
                | MapError::NotActive(..)
                | MapError::StillActive(_),
            )
            | ControllerError::NotEmpty { .. } => StatusCode::CONFLICT,
            ControllerError::Map(_) | ControllerError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControllerError::Physical { .. } => StatusCode::BAD_GATEWAY,
            ControllerError::Store(_)
            | ControllerError::NoLeader
            | ControllerError::TooManyProxies => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = ErrorBody {
            error: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

impl Controller {
    /// The HTTP API's routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/federation/v1/map", get(get_map))
            .route("/federation/v1/watch", post(watch_call))
            .route("/federation/v1/clusters", post(add_cluster))
            .route("/federation/v1/clusters/{name}/drain", post(drain_cluster))
            .route(
                "/federation/v1/clusters/{name}",
                axum::routing::delete(remove_cluster),
            )
            .route("/federation/v1/topics", post(create_topic))
            .route(
                "/federation/v1/topics/{name}/rebalance",
                post(rebalance_topic),
            )
            .route("/federation/v1/names/{client}", get(get_name).put(set_name))
            .route(
                "/federation/v1/offsets/{group}",
                get(get_offsets).post(commit_offsets).delete(delete_offsets),
            )
            .route("/federation/v1/status", get(get_status))
            .route("/metrics", get(get_metrics))
            .with_state(self.clone())
    }

    /// Serves the HTTP API on `listener` until the process ends.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(addr).await
    }
}

type Answer<T> = Result<Json<T>, ControllerError>;

async fn get_map(State(c): State<Controller>) -> Json<FederationMap> {
    Json((*c.map()).clone())
}

async fn watch_call(
    State(c): State<Controller>,
    uri: Uri,
    Json(hello): Json<ProxyHello>,
) -> Response {
    match c.leader_redirect(&uri) {
        Ok(Some(r)) => return r,
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    match c.watch(hello).await {
        Ok(a) => Json(a).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Runs a change on the leader, or redirects it there.
async fn on_leader<F, Fut>(c: &Controller, uri: &Uri, f: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<u64, ControllerError>>,
{
    match c.leader_redirect(uri) {
        Ok(Some(r)) => r,
        Ok(None) => match f().await {
            Ok(version) => Json(Changed { version }).into_response(),
            Err(e) => e.into_response(),
        },
        Err(e) => e.into_response(),
    }
}

async fn add_cluster(State(c): State<Controller>, uri: Uri, Json(a): Json<AddCluster>) -> Response {
    on_leader(&c, &uri, || c.add_cluster(a)).await
}

async fn drain_cluster(
    State(c): State<Controller>,
    uri: Uri,
    Path(name): Path<String>,
) -> Response {
    on_leader(&c, &uri, || {
        c.change(move |m| {
            m.drain_cluster(&name)?;
            Ok(())
        })
    })
    .await
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove_cluster(
    State(c): State<Controller>,
    uri: Uri,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Response {
    on_leader(&c, &uri, || c.remove_cluster(&name, q.force)).await
}

async fn create_topic(
    State(c): State<Controller>,
    uri: Uri,
    Json(t): Json<CreateTopic>,
) -> Response {
    on_leader(&c, &uri, || c.create_topic(t)).await
}

async fn rebalance_topic(
    State(c): State<Controller>,
    uri: Uri,
    Path(name): Path<String>,
) -> Response {
    on_leader(&c, &uri, || {
        c.change(move |m| {
            m.rebalance_topic(&name)?;
            Ok(())
        })
    })
    .await
}

async fn get_name(State(c): State<Controller>, Path(client): Path<String>) -> Json<NameAnswer> {
    Json(c.name(&client))
}

async fn set_name(
    State(c): State<Controller>,
    uri: Uri,
    Path(client): Path<String>,
    Json(s): Json<SetName>,
) -> Response {
    on_leader(&c, &uri, || {
        c.change(move |m| {
            m.set_name(&client, &s.group)?;
            Ok(())
        })
    })
    .await
}

async fn get_offsets(
    State(c): State<Controller>,
    Path(group): Path<String>,
) -> Answer<Vec<OffsetEntry>> {
    Ok(Json(c.offsets(&group).await?))
}

async fn commit_offsets(
    State(c): State<Controller>,
    Path(group): Path<String>,
    Json(commits): Json<Vec<OffsetEntry>>,
) -> Answer<serde_json::Value> {
    c.commit(&group, commits).await?;
    Ok(Json(serde_json::json!({})))
}

async fn delete_offsets(
    State(c): State<Controller>,
    Path(group): Path<String>,
) -> Answer<serde_json::Value> {
    let existed = c.delete_offsets(&group).await?;
    Ok(Json(serde_json::json!({ "existed": existed })))
}

async fn get_status(State(c): State<Controller>) -> Json<Status> {
    Json(c.status().await)
}

async fn get_metrics(State(c): State<Controller>) -> String {
    c.metrics_text()
}
