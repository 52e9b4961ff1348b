//! HTTP API (axum): `GET /metrics` (Prometheus text), `GET /status` (JSON) and `GET /admit`
//! (may one more guest start here? JSON). Loopback by default; read-only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

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

/// How many HTTP connections are served at once. More wait in the kernel's listen queue:
/// each one open holds a file descriptor, and a daemon out of them cannot read
/// `/proc/meminfo` or its QMP sockets — idle connections kept open by anyone on the host
/// would blind the control loop (about 20,000 did, session 34).
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request's headers within this long ...
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// ... and a connection, kept alive or not, is closed after this long (a scraper reconnects).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The bounds above, as one value so a test can shrink them.
#[derive(Clone, Copy, Debug)]
struct ConnectionLimits {
    max: usize,
    header_timeout: Duration,
    lifetime: Duration,
}

const LIMITS: ConnectionLimits = ConnectionLimits {
    max: MAX_CONNECTIONS,
    header_timeout: HEADER_TIMEOUT,
    lifetime: CONNECTION_LIFETIME,
};

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
    Ok(tokio::spawn(serve_bounded(listener, app, LIMITS)))
}

/// Serves `app` on `listener` with at most `limits.max` connections open, each bounded in
/// time (`axum::serve` has neither bound: it accepts while descriptors last and keeps an
/// idle connection forever). HTTP/1.1 only: what Prometheus and `aerostat status` speak.
async fn serve_bounded(listener: tokio::net::TcpListener, app: Router, limits: ConnectionLimits) {
    let slots = Arc::new(Semaphore::new(limits.max));
    loop {
        // A slot first: past the bound, clients wait in the listen queue, not in the daemon.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: not the server's
                // end. A pause keeps a persistent error from spinning.
                tracing::warn!(error = %e, "accepting an HTTP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            // An error is the client's (a bad request, a reset, a timeout): hyper has
            // answered it where HTTP allows; nothing is left to do but close.
            let _ = tokio::time::timeout(limits.lifetime, connection).await;
            drop(slot);
        });
    }
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
            let name = query.get("name");
            if name.is_some_and(|n| !pending.holds(n)) && pending.full(&inputs.obs) {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({
                        "error": format!("{} guests admitted by name are not running yet: ask again once some start (or in {} s)", super::admission::MAX_PENDING, super::admission::PENDING_FOR.as_secs())
                    })),
                );
            }
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    async fn get_ok(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.expect("read");
        reply
    }

    /// Clients that open connections and send nothing (or half a request) hold the
    /// server's slots only until the header timeout: a real request behind twice as many
    /// of them as there are slots is answered, and the server closes every idle one.
    #[tokio::test]
    async fn idle_connections_cannot_starve_the_api() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().route("/", get(|| async { "ok" }));
        let limits = ConnectionLimits {
            max: 4,
            header_timeout: Duration::from_millis(300),
            lifetime: Duration::from_secs(5),
        };
        let server = tokio::spawn(serve_bounded(listener, app, limits));

        // Eight idle clients, half of them with a request started and never finished.
        let mut idle = Vec::new();
        for i in 0..8 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            if i % 2 == 0 {
                s.write_all(b"GET / HTTP/1.1\r\nhost:")
                    .await
                    .expect("write");
            }
            idle.push(s);
        }
        let t0 = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(5), get_ok(addr))
            .await
            .expect("answered while the idle clients are still connected");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("ok"), "{reply}");
        // It waited for two rounds of header timeouts at most (8 idle clients, 4 slots).
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // The idle clients were closed by the server: each reads end-of-stream.
        for mut s in idle {
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
                .await
                .expect("closed by the server");
            assert!(n.is_ok(), "{n:?}");
        }
        server.abort();
    }
}
