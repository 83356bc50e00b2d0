//! The API on loopback, port 0: every endpoint's exact output, and a server that keeps
//! answering while idle, slow and oversized clients pile up.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::history::{History, RoundSummary};
use crate::store::Store;
use crate::wire::{Included, LedgerEntry, RoundValue};

/// A started server and the senders that feed it.
struct Fixture {
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    status: watch::Sender<Status>,
    history: watch::Sender<History>,
    store: Store,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cohort-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

async fn start(name: &str, limits: Limits) -> Fixture {
    let (store, _) = Store::open(&tmp(name)).expect("store");
    let status = watch::Sender::new(Status {
        chain_id: "api-test".into(),
        round: 7,
        ..Status::default()
    });
    let history = watch::Sender::new(History::default());
    let state = ApiState {
        metrics: Arc::new(Metrics::default()),
        status: status.subscribe(),
        history: history.subscribe(),
        net: None,
        ledger: store.ledger_path(),
        index: store.ledger_index(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(serve(listener, state, limits));
    Fixture {
        addr,
        server,
        status,
        history,
        store,
    }
}

/// One request with `Connection: close`; the whole response, head and body.
async fn raw(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered in 5 s")
        .expect("read");
    String::from_utf8(out).expect("utf-8")
}

fn split(resp: &str) -> (&str, &str) {
    resp.split_once("\r\n\r\n").expect("head and body")
}

fn committed_entry(round: u64) -> LedgerEntry {
    let rv = RoundValue {
        version: 3,
        round,
        base_hash: [1; 32],
        included: vec![Included {
            author: [2; 32],
            digest: [3; 32],
            samples: 600,
        }],
        aggregation: crate::wire::Aggregation {
            rule: "mean".into(),
            reveals: Vec::new(),
        },
        model_hash: [4; 32],
        momentum_hash: [5; 32],
        prev_value: [6; 32],
        joins: Vec::new(),
        removals: Vec::new(),
        evidence: Vec::new(),
        delta_evidence: Vec::new(),
        approvals: Vec::new(),
        promotions: Vec::new(),
        rejected: vec![[2; 32]],
    };
    let value = rv.encode().expect("encode");
    let cert = consensus::Certificate {
        height: consensus::Height(round),
        view: consensus::View(1),
        value_id: consensus::Value(value.clone()).id(),
        precommits: Vec::new(),
    };
    LedgerEntry {
        height: round,
        value,
        certificate: consensus::encode_certificate(&cert).expect("certificate"),
    }
}

#[tokio::test]
async fn endpoints_keep_their_paths_status_codes_and_content_types() {
    let mut f = start("endpoints", Limits::default()).await;

    let resp = raw(f.addr, "/status").await;
    let (head, body) = split(&resp);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    let s: Status = serde_json::from_str(body).expect("status JSON");
    assert_eq!((s.chain_id.as_str(), s.round), ("api-test", 7));
    assert_eq!(
        body,
        serde_json::to_string_pretty(&*f.status.borrow()).expect("json")
    );

    let resp = raw(f.addr, "/metrics").await;
    let (head, body) = split(&resp);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(
            "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{head}"
    );
    assert!(body.contains("\ncohort_round 7\n"), "{body}");
    assert!(
        body.contains("\ncohort_rounds_committed_total 0\n"),
        "{body}"
    );
    assert!(body.ends_with("\n# EOF\n"), "{body}");

    for (path, code, text) in [
        (
            "/round/5",
            "404 Not Found",
            "round 5 is not committed here\n",
        ),
        ("/round/x", "400 Bad Request", "expected /round/N\n"),
        ("/round/", "400 Bad Request", "expected /round/N\n"),
        ("/round/1/2", "400 Bad Request", "expected /round/N\n"),
        ("/nothing", "404 Not Found", "try /status or /metrics\n"),
    ] {
        let resp = raw(f.addr, path).await;
        let (head, body) = split(&resp);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {code}\r\n")),
            "{path}: {head}"
        );
        assert!(
            head.contains("content-type: text/plain\r\n"),
            "{path}: {head}"
        );
        assert_eq!(body, text, "{path}");
    }

    // A committed round: its record through the index, with every field the old server gave.
    for r in [3, 5] {
        f.store.append_commit(&committed_entry(r)).expect("commit");
    }
    let resp = raw(f.addr, "/round/5").await;
    let (head, body) = split(&resp);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(body).expect("round JSON");
    assert_eq!(v["round"], 5);
    assert_eq!(v["rule"], "mean");
    assert_eq!(v["model_hash"], "04".repeat(32));
    assert_eq!(v["base_hash"], "01".repeat(32));
    assert_eq!(v["included"][0]["author"], "02".repeat(32));
    assert_eq!(v["included"][0]["delta_digest"], "03".repeat(32));
    assert_eq!(v["included"][0]["samples"], 600);
    assert_eq!(v["rejected"][0], "02".repeat(32));
    // Without secure aggregation no mask is ever recovered.
    assert_eq!(v["recovered"], serde_json::json!([]));
    assert_eq!(v["certificate"]["view"], 1);
    assert_eq!(v["certificate"]["signers"], serde_json::json!([]));
    assert_eq!(
        v["value_id"],
        crate::keys::hex(&consensus::Value(committed_entry(5).value).id().0)
    );
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "base_hash",
            "certificate",
            "included",
            "joins",
            "model_hash",
            "promotions",
            "recovered",
            "rejected",
            "removals",
            "round",
            "rule",
            "value_id"
        ]
    );
    assert!(split(&raw(f.addr, "/round/4").await).0.contains("404"));

    // An HTTP/1.0 client (the smoke test's bash /dev/tcp fallback): a plain body, then close.
    let mut s = TcpStream::connect(f.addr).await.expect("connect");
    s.write_all(b"GET /status HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered and closed")
        .expect("read");
    let resp = String::from_utf8(out).expect("utf-8");
    let (head, body) = split(&resp);
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 OK"),
        "{head}"
    );
    assert!(!head.contains("chunked"), "{head}");
    assert_eq!(serde_json::from_str::<Status>(body).expect("json").round, 7);

    // The CLI's client.
    let body = get(&format!("http://{}", f.addr), "/status")
        .await
        .expect("get");
    assert_eq!(
        serde_json::from_str::<Status>(&body).expect("json").round,
        7
    );
    let err = get(&f.addr.to_string(), "/round/9").await.expect_err("404");
    assert!(
        format!("{err:#}").contains("404 Not Found: round 9 is not committed here"),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_damaged_ledger_record_is_a_500_naming_the_offset() {
    let mut f = start("damaged", Limits::default()).await;
    f.store.append_commit(&committed_entry(1)).expect("commit");
    let path = f.store.ledger_path();
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    let resp = raw(f.addr, "/round/1").await;
    let (head, body) = split(&resp);
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    assert!(body.contains("offset 0: checksum mismatch"), "{body}");
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let f = start("dashboard", Limits::default()).await;
    let resp = raw(f.addr, "/").await;
    let (head, body) = split(&resp);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(head.contains("content-security-policy: default-src 'none'"));
    assert_eq!(body, DASHBOARD);
    assert!(body.starts_with("<!doctype html>"));
    for needed in ["fetch(\"/status\"", "fetch(\"/history\"", "<svg"] {
        assert!(body.contains(needed), "the page has {needed}");
    }
    for external in ["http://", "https://", "src=", "<link", "@import"] {
        assert!(
            !body.contains(external),
            "the page loads nothing: {external}"
        );
    }
}

#[tokio::test]
async fn history_is_valid_json_of_at_most_1000_rounds() {
    let f = start("history", Limits::default()).await;
    let body = get(&f.addr.to_string(), "/history").await.expect("get");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["rounds"], serde_json::json!([]));
    for r in 1..=1500u64 {
        f.history.send_modify(|h| {
            h.push(RoundSummary {
                round: r,
                time_ms: Some(1_700_000_000_000 + r),
                seconds: Some(0.5),
                train_loss: Some(0.25),
                eval_loss: (r % 10 == 0).then_some(0.125),
                accuracy: (r % 10 == 0).then_some(0.875),
                included: (0..4).map(|i| crate::history::Key([i; 32])).collect(),
                phases: Some([0.25, 0.125, 0.0625, 0.03125, 0.03125].into()),
                events: crate::history::RoundEvents {
                    joins: (r == 1500)
                        .then_some(crate::history::Key([9; 32]))
                        .into_iter()
                        .collect(),
                    ..Default::default()
                },
            })
        });
    }
    let resp = raw(f.addr, "/history").await;
    let (head, body) = split(&resp);
    assert!(
        head.contains("content-type: application/json\r\n"),
        "{head}"
    );
    // Four 64-hex-digit authors a round: about 350 bytes each, 1000 rounds.
    assert!(body.len() < 512 << 10, "{} bytes", body.len());
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    let rounds = v["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 1000);
    assert_eq!(rounds[0]["round"], 501);
    assert_eq!(rounds[999]["round"], 1500);
    assert_eq!(rounds[999]["accuracy"], 0.875);
    assert_eq!(rounds[998]["accuracy"], serde_json::Value::Null);
    assert_eq!(
        rounds[999]["included"].as_array().expect("authors").len(),
        4
    );
    assert_eq!(rounds[999]["phases"]["train"], 0.25);
    assert_eq!(rounds[999]["joins"][0], crate::keys::hex(&[9; 32]));
    // Empty event lists are left out (a round without changes costs no bytes for them).
    assert!(rounds[998].get("joins").is_none(), "{}", rounds[998]);
    assert!(rounds[998].get("evidence").is_none(), "{}", rounds[998]);
}

#[tokio::test]
async fn a_keep_alive_connection_serves_several_requests() {
    let f = start("keepalive", Limits::default()).await;
    let mut s = TcpStream::connect(f.addr).await.expect("connect");
    for _ in 0..3 {
        s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Read one response: its head, then Content-Length bytes.
        let body_len = loop {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("answered")
                .expect("read");
            assert!(n > 0, "the server kept the connection open");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("content-length")
                    .parse()
                    .expect("number");
                if body.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
                    break body.len();
                }
            }
        };
        assert!(body_len > 0);
    }
}

#[tokio::test]
async fn a_head_over_the_limit_is_refused_with_431() {
    let f = start("bighead", Limits::default()).await;
    let mut s = TcpStream::connect(f.addr).await.expect("connect");
    let big = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 << 10)
    );
    s.write_all(big.as_bytes()).await.expect("write");
    let mut out = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut out))
        .await
        .expect("answered")
        .expect("read");
    let text = String::from_utf8_lossy(&out[..n]);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    // A head just under the limit is served.
    let mut s = TcpStream::connect(f.addr).await.expect("connect");
    let ok = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(15 << 10)
    );
    s.write_all(ok.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered")
        .expect("read");
    assert!(out.starts_with(b"HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    let f = start(
        "headtimeout",
        Limits {
            header_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(f.addr).await.expect("connect");
    s.write_all(b"GET /sta").await.expect("write");
    let mut out = Vec::new();
    // The server closes it (no 200 ever comes): the read ends, well before the test's deadline.
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the server closed the connection");
    assert!(
        read.is_err() || !String::from_utf8_lossy(&out).contains("200 OK"),
        "{read:?} {out:?}"
    );
}

#[tokio::test]
async fn a_head_dripped_byte_by_byte_gets_one_deadline_not_one_per_byte() {
    let f = start(
        "drip",
        Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(f.addr).await.expect("connect");
    let head = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890\r\n\r\n";
    // One byte every 50 ms: the whole head would take 2.9 s, ten times the deadline.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut sent = 0;
    for b in head {
        tick.tick().await;
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        // Stop as soon as the server has closed its side.
        let mut probe = [0u8; 64];
        match s.try_read(&mut probe) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    assert!(
        sent < head.len(),
        "the server waited for the whole dripped head"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let f = start(
        "idlekeepalive",
        Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(f.addr).await.expect("connect");
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // The response, then (the client sending nothing more) the server's close.
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the idle connection was closed")
        .expect("read");
    assert!(out.starts_with(b"HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn beyond_the_connection_limit_the_oldest_connection_is_closed() {
    let f = start(
        "evict",
        Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(600),
            ..Limits::default()
        },
    )
    .await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(TcpStream::connect(f.addr).await.expect("connect"));
    }
    let fifth = TcpStream::connect(f.addr).await.expect("connect");
    // The first is closed to make room for the fifth.
    let mut buf = [0u8; 16];
    let first = tokio::time::timeout(Duration::from_secs(10), conns[0].read(&mut buf))
        .await
        .expect("the oldest connection was closed");
    assert!(matches!(first, Ok(0) | Err(_)), "{first:?}");
    // The others stay open.
    for c in &conns[1..] {
        let mut b = [0u8; 1];
        let r = c.try_read(&mut b);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{r:?}"
        );
    }
    drop(fifth);
    // And a new client is served (closing the second-oldest).
    let body = get(&f.addr.to_string(), "/status").await.expect("status");
    assert!(body.contains("api-test"));
}

/// 1,000 idle connections and 100 that drip a request head one byte every 100 ms, then a
/// `GET /status`: it must be answered while they are all still there. (The hand-written server
/// this replaced held 16 connections and stopped accepting while they were busy: it fails this.)
async fn flood_then_status(addr: SocketAddr) -> Result<String> {
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        idle.push(TcpStream::connect(addr).await?);
    }
    let (dripping_tx, mut dripping) = mpsc::channel::<()>(100);
    let mut drips = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let tx = dripping_tx.clone();
        drips.spawn(async move {
            let Ok(mut s) = TcpStream::connect(addr).await else {
                return;
            };
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for (i, b) in b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
                .iter()
                .enumerate()
            {
                tick.tick().await;
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                if i == 0 {
                    let _ = tx.send(()).await;
                }
            }
            let _ = s.read(&mut [0u8; 1]).await;
        });
    }
    drop(dripping_tx);
    // Every drip has connected and sent its first byte.
    for _ in 0..100 {
        dripping.recv().await.context("a drip connection failed")?;
    }
    let body = get(&addr.to_string(), "/status").await;
    drop(idle);
    drips.abort_all();
    body
}

/// The flood holds about 2,400 descriptors in this process (both ends of each connection the
/// server still holds): lift the soft open-file limit to the hard one, since many systems set
/// the soft one to 1,024.
#[cfg(unix)]
fn lift_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_1000_idle_and_100_slow_connections_are_open() {
    #[cfg(unix)]
    lift_open_file_limit();
    let f = start("flood", Limits::default()).await;
    let body = tokio::time::timeout(Duration::from_secs(30), flood_then_status(f.addr))
        .await
        .expect("the flood and the status request finished within 30 s")
        .expect("GET /status answered during the flood");
    let s: Status = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(s.chain_id, "api-test");
    // And after it.
    assert!(get(&f.addr.to_string(), "/metrics").await.is_ok());
}
