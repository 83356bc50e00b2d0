//! A tiny HTTP/1.1 server for `GET /metrics` (Prometheus text) and `GET /status` (JSON), and the
//! client `cohort status` uses. One short-lived task per connection, bounded by a semaphore.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::metrics::{Metrics, Status};

/// Serves until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    status: watch::Receiver<Status>,
    net: gossip::NetworkHandle,
    data_dir: PathBuf,
) {
    let limit = Arc::new(Semaphore::new(16));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (metrics, status, net, dir) = (
            metrics.clone(),
            status.clone(),
            net.clone(),
            data_dir.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                handle(stream, metrics, status, net, dir),
            )
            .await;
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: Arc<Metrics>,
    status: watch::Receiver<Status>,
    net: gossip::NetworkHandle,
    data_dir: PathBuf,
) -> Result<()> {
    let mut buf = vec![0u8; 2048];
    let mut n = 0;
    // Read until the end of the headers (or 2 KiB).
    while n < buf.len() {
        let k = stream.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let path = req.split_whitespace().nth(1).unwrap_or("/");
    let snapshot = status.borrow().clone();
    let (code, ctype, body) = match path {
        "/metrics" => {
            let counters = net.counters().await.ok();
            let peers = counters
                .as_ref()
                .map(|c| c.peers_connected as usize)
                .unwrap_or(0);
            (
                "200 OK",
                "text/plain; version=0.0.4",
                metrics.render(counters.as_ref(), peers, &snapshot),
            )
        }
        "/status" => (
            "200 OK",
            "application/json",
            serde_json::to_string_pretty(&snapshot)?,
        ),
        p if p.starts_with("/round/") => match p["/round/".len()..].parse::<u64>() {
            Ok(r) => match round_record(&data_dir, r) {
                Some(v) => (
                    "200 OK",
                    "application/json",
                    serde_json::to_string_pretty(&v)?,
                ),
                None => (
                    "404 Not Found",
                    "text/plain",
                    format!("round {r} is not committed here\n"),
                ),
            },
            Err(_) => (
                "400 Bad Request",
                "text/plain",
                "expected /round/N\n".to_string(),
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "try /status or /metrics\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// The audit record of round `r`: who contributed (authors, digests, samples), the rule,
/// the resulting model hash and who signed the commit certificate.
fn round_record(data_dir: &std::path::Path, r: u64) -> Option<serde_json::Value> {
    let ledger = crate::store::read_ledger(data_dir).ok()?;
    // A state sync leaves gaps: find the entry by height.
    let e = ledger.iter().find(|e| e.height == r)?;
    let rv = crate::wire::RoundValue::decode(&e.value).ok()?;
    let cert = consensus::decode_certificate(&e.certificate).ok()?;
    let hex = crate::keys::hex;
    Some(serde_json::json!({
        "round": rv.round,
        "value_id": hex(&consensus::Value(e.value.clone()).id().0),
        "base_hash": hex(&rv.base_hash),
        "model_hash": hex(&rv.model_hash),
        "rule": rv.rule,
        "included": rv.included.iter().map(|i| serde_json::json!({
            "author": hex(&i.author),
            "delta_digest": hex(&i.digest),
            "samples": i.samples,
        })).collect::<Vec<_>>(),
        "certificate": {
            "view": cert.view.0,
            "signers": cert.precommits.iter().map(|p| hex(&p.validator.0)).collect::<Vec<_>>(),
        },
    }))
}

/// `GET path` from `api` (`http://HOST:PORT` or `HOST:PORT`); returns the body.
pub async fn get(api: &str, path: &str) -> Result<String> {
    let hostport = api.trim_start_matches("http://").trim_end_matches('/');
    let addr: SocketAddr = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("no address for {hostport}"))?;
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .with_context(|| format!("{api} did not answer in 5 s"))?
        .with_context(|| format!("connecting to {api}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response from {api}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{api}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}
