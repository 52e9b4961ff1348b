//! HTTP API (axum): `GET /metrics` (Prometheus text) and `GET /status` (JSON).
//! Loopback by default; read-only.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;

use super::Status;
use super::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    status: Arc<RwLock<Status>>,
    metrics: Arc<Metrics>,
}

/// Binds and serves in the background; the handle stops it.
pub async fn serve(
    addr: SocketAddr,
    status: Arc<RwLock<Status>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/status", get(status_handler))
        .with_state(AppState { status, metrics });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding api.listen {addr}"))?;
    tracing::info!(%addr, "serving /metrics and /status");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }))
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    // The middle of the content type prometheus-client documents for its text format.
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn status_handler(State(s): State<AppState>) -> Json<Status> {
    Json(s.status.read().unwrap_or_else(|p| p.into_inner()).clone())
}
