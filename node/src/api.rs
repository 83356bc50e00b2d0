//! The node's HTTP API, and the client `cohort status` uses.
//!
//! ```text
//! GET /            the dashboard (one self-contained page that polls /status and /history)
//! GET /status      the status snapshot (JSON)
//! GET /metrics     OpenMetrics text (what Prometheus scrapes)
//! GET /history     the last up to 1,000 committed rounds (JSON)
//! GET /round/N     round N's audit record from the ledger (JSON); one seek through the index
//! ```
//!
//! Routing is axum's; connections are hyper 1's HTTP/1.1 with keep-alive, served by an accept
//! loop that never waits: it holds at most [`Limits::max_connections`] connections and, at the
//! limit, closes the oldest to take the new one, so idle or slow clients cannot lock operators
//! out. A client gets [`Limits::header_timeout`] to send each request head, and a head over
//! [`Limits::max_head_bytes`] is answered `431`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::history::History;
use crate::metrics::{Metrics, Status};
use crate::store::index::{LedgerIndex, read_entry_at};

/// The dashboard page: plain HTML, CSS and JS, no external resources.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The content type of `prometheus-client`'s text encoding.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the API reads. Every field is a read-only view of state another task owns.
#[derive(Clone)]
pub struct ApiState {
    /// Counters the driver updates.
    pub metrics: Arc<Metrics>,
    /// The driver's status snapshot.
    pub status: watch::Receiver<Status>,
    /// The driver's last committed rounds.
    pub history: watch::Receiver<History>,
    /// The network, for its counters in `/metrics` (`None`: no network counters).
    pub net: Option<gossip::NetworkHandle>,
    /// The ledger file.
    pub ledger: PathBuf,
    /// Where each committed round's record starts in `ledger`.
    pub index: watch::Receiver<LedgerIndex>,
}

/// How much a client may hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections held at once; a new one beyond closes the oldest.
    pub max_connections: usize,
    /// Time a client has to send a request head (also how long an idle keep-alive
    /// connection stays open).
    pub header_timeout: Duration,
    /// Largest request head (request line and headers), bytes.
    pub max_head_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            max_head_bytes: 16 << 10,
        }
    }
}

/// How long `/metrics` waits for the network task's counters before rendering without them.
const NET_COUNTERS_WAIT: Duration = Duration::from_secs(2);

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", routing::get(dashboard))
        .route("/status", routing::get(status))
        .route("/metrics", routing::get(metrics))
        .route("/history", routing::get(history))
        .route("/round/{n}", routing::get(round))
        .fallback(not_found)
        .with_state(Arc::new(state))
}

/// Serves until the task is dropped (dropping it closes every connection).
pub async fn serve(listener: TcpListener, state: ApiState, limits: Limits) {
    let app = router(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_head_bytes)
        // hyper's floor is 8 KiB; room for a full head and a little pipelining.
        .max_buf_size((2 * limits.max_head_bytes).max(8192))
        .keep_alive(true);
    let max = limits.max_connections.max(1);
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Live connections by accept order (the first is the oldest), and each task's place in it.
    let mut live: BTreeMap<u64, AbortHandle> = BTreeMap::new();
    let mut order: HashMap<tokio::task::Id, u64> = HashMap::new();
    let mut next: u64 = 0;
    loop {
        tokio::select! {
            biased;
            Some(done) = tasks.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(seq) = order.remove(&id) {
                    live.remove(&seq);
                }
            }
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, typically: wait a little instead of spinning.
                        tracing::warn!(error = %e, "api: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if live.len() >= max
                    && let Some((seq, oldest)) = live.pop_first()
                {
                    tracing::debug!(connection = seq, "api: at the connection limit, closing the oldest");
                    oldest.abort();
                }
                let _ = stream.set_nodelay(true);
                let conn = http.serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(app.clone()),
                );
                let handle = tasks.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "api connection");
                    }
                });
                order.insert(handle.id(), next);
                live.insert(next, handle);
                next += 1;
            }
        }
    }
}

type Shared = State<Arc<ApiState>>;

fn reply(code: StatusCode, content_type: &'static str, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn json(body: serde_json::Result<String>) -> Response {
    match body {
        Ok(b) => reply(StatusCode::OK, "application/json", b),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding JSON: {e}\n"),
        ),
    }
}

async fn dashboard() -> Response {
    let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD.into());
    // The page loads nothing from elsewhere; say so to the browser too.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'",
        ),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn status(State(s): Shared) -> Response {
    let snapshot = s.status.borrow().clone();
    json(serde_json::to_string_pretty(&snapshot))
}

async fn metrics(State(s): Shared) -> Response {
    let snapshot = s.status.borrow().clone();
    let counters = match &s.net {
        Some(net) => tokio::time::timeout(NET_COUNTERS_WAIT, net.counters())
            .await
            .ok()
            .and_then(|c| c.ok()),
        None => None,
    };
    let peers = counters
        .as_ref()
        .map(|c| c.peers_connected as usize)
        .unwrap_or(0);
    match s.metrics.render(counters.as_ref(), peers, &snapshot) {
        Ok(text) => reply(StatusCode::OK, OPENMETRICS, text),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding metrics: {e}\n"),
        ),
    }
}

async fn history(State(s): Shared) -> Response {
    let body = s.history.borrow().to_json();
    json(body)
}

async fn round(State(s): Shared, UrlPath(n): UrlPath<String>) -> Response {
    let Ok(r) = n.parse::<u64>() else {
        return bad_round();
    };
    let offset = s.index.borrow().offset_of(r);
    let Some(offset) = offset else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("round {r} is not committed here\n"),
        );
    };
    let path = s.ledger.clone();
    match tokio::task::spawn_blocking(move || round_record(&path, offset, r)).await {
        Ok(Ok(v)) => json(serde_json::to_string_pretty(&v)),
        Ok(Err(e)) => {
            tracing::warn!(round = r, error = %format!("{e:#}"), "api: reading a ledger record");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("reading round {r}: {e:#}\n"),
            )
        }
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("reading round {r}: {e}\n"),
        ),
    }
}

fn bad_round() -> Response {
    reply(
        StatusCode::BAD_REQUEST,
        "text/plain",
        "expected /round/N\n".to_string(),
    )
}

async fn not_found(uri: Uri) -> Response {
    if uri.path().starts_with("/round/") {
        return bad_round();
    }
    reply(
        StatusCode::NOT_FOUND,
        "text/plain",
        "try /status or /metrics\n".to_string(),
    )
}

/// The audit record of round `r`, whose ledger record starts at `offset`: who contributed
/// (authors, digests, samples), the rule, the resulting model hash and who signed the commit
/// certificate.
fn round_record(ledger: &Path, offset: u64, r: u64) -> Result<serde_json::Value> {
    let e = read_entry_at(ledger, offset, r)?;
    let rv = crate::wire::RoundValue::decode(&e.value).context("the committed value")?;
    let cert = consensus::decode_certificate(&e.certificate)
        .map_err(|err| anyhow::anyhow!("the commit certificate: {err}"))?;
    let hex = crate::keys::hex;
    Ok(serde_json::json!({
        "round": rv.round,
        "value_id": hex(&consensus::Value(e.value.clone()).id().0),
        "base_hash": hex(&rv.base_hash),
        "model_hash": hex(&rv.model_hash),
        "rule": rv.aggregation.rule,
        "included": rv.included.iter().map(|i| serde_json::json!({
            "author": hex(&i.author),
            "delta_digest": hex(&i.digest),
            "samples": i.samples,
        })).collect::<Vec<_>>(),
        "rejected": rv.rejected.iter().map(|k| hex(k)).collect::<Vec<_>>(),
        "joins": rv.joins.iter().map(|j| hex(&j.validator)).collect::<Vec<_>>(),
        "promotions": rv.promotions.iter().map(|k| hex(k)).collect::<Vec<_>>(),
        "removals": rv.removals.iter().map(|k| hex(k)).collect::<Vec<_>>(),
        // Under secure aggregation: the included members whose self mask was recovered from
        // the others' Shamir shares (they went silent after the selection), not revealed.
        "recovered": rv
            .included
            .iter()
            .zip(&rv.aggregation.reveals)
            .filter(|(_, r)| crate::wire::secagg::RecoveredSeed::decode(r).is_some())
            .map(|(i, _)| hex(&i.author))
            .collect::<Vec<_>>(),
        "certificate": {
            "view": cert.view.0,
            "signers": cert.precommits.iter().map(|p| hex(&p.validator.0)).collect::<Vec<_>>(),
        },
    }))
}

/// Largest response body [`get`] accepts.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// `GET path` from `api` (`http://HOST:PORT` or `HOST:PORT`); returns the body of a `200`.
pub async fn get(api: &str, path: &str) -> Result<String> {
    let hostport = api.trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("no address for {hostport}"))?;
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {api}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {api}"))?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(header::HOST, hostport)
            .body(Empty::<Bytes>::new())
            .with_context(|| format!("building a request for {path}"))?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("GET {api}{path}"))?;
        let code = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the response of {api}{path}: {e}"))?
            .to_bytes();
        conn.abort();
        anyhow::Ok((code, body))
    };
    let (code, body) = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .with_context(|| format!("{api} did not answer in 5 s"))??;
    let text = String::from_utf8_lossy(&body).into_owned();
    if code != StatusCode::OK {
        bail!("{api}{path}: {code}: {}", text.trim());
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
