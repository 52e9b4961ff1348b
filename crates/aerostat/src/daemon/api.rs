//! HTTP API (axum): `GET /metrics` (Prometheus text), `GET /status` (JSON) and `GET /admit`
//! (may one more guest start here? JSON). Loopback by default; read-only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;

use serde_json::{Value, json};

use super::Status;
use super::admission::{AdmissionInputs, Pending, answer, parse_request};
use super::config::Config;
use super::metrics::Metrics;

/// What the handlers read: the control loop writes the first three every tick.
#[derive(Clone)]
pub struct Shared {
    pub status: Arc<RwLock<Status>>,
    pub metrics: Arc<Metrics>,
    /// The last tick's observation, targets and capacity (`None` before the first tick).
    pub admission: Arc<RwLock<Option<AdmissionInputs>>>,
    /// Guests admitted by name and not running yet (`/admit` counts them).
    pub pending: Arc<std::sync::Mutex<Pending>>,
    pub config: Arc<Config>,
}

/// Binds and serves in the background; the handle stops it.
pub async fn serve(
    addr: SocketAddr,
    shared: Shared,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .route("/admit", get(admit_handler))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding api.listen {addr}"))?;
    tracing::info!(%addr, "serving /metrics, /status and /admit");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }))
}

async fn metrics_handler(State(s): State<Shared>) -> impl IntoResponse {
    // The middle of the content type prometheus-client documents for its text format.
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn status_handler(State(s): State<Shared>) -> Json<Status> {
    Json(s.status.read().unwrap_or_else(|p| p.into_inner()).clone())
}

/// 200 with the answer (admitted or not: `admit` says), 400 for a bad question (the error
/// names the parameter), 503 before the first tick.
async fn admit_handler(
    State(s): State<Shared>,
    Query(query): Query<BTreeMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let guest = match parse_request(&query, &s.config) {
        Ok(g) => g,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))),
    };
    let inputs = s
        .admission
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match inputs {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": "no tick yet: nothing observed to answer from" })),
        ),
        Some(inputs) if let Some(age) = inputs.stale(s.config.interval) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": format!("the last observation is {:.0} s old: the control loop is not ticking", age.as_secs_f64())
            })),
        ),
        Some(inputs) => {
            let mut pending = s.pending.lock().unwrap_or_else(|p| p.into_inner());
            let a = answer(
                &inputs,
                guest,
                query.get("name").map(String::as_str),
                &mut pending,
                s.config.max_ratio,
            );
            drop(pending);
            (
                StatusCode::OK,
                Json(
                    serde_json::to_value(&a).unwrap_or_else(|e| json!({ "error": e.to_string() })),
                ),
            )
        }
    }
}
