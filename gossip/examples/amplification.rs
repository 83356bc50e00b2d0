//! Amplification benchmark: `n` nodes on loopback, every node publishes one 1 MB delta; reports
//! the bytes each node received (all substreams of all connections, counted by the transport)
//! divided by the ideal (n - 1) x 1 MB.
//!
//! ```text
//! cargo run -q -p gossip --example amplification -- --nodes 8 --mode announce --mesh 6
//! cargo run -q -p gossip --example amplification -- --nodes 16 --mode inline --mesh 6
//! ```
//!
//! Modes: `announce` (deltas as announce-then-fetch, the default, flood publish on),
//! `announce-mesh` (the same with flood publish off), `inline` (deltas whole on
//! gossipsub, flood publish off, IDONTWANT on as in gossipsub v1.2), `inline-flood` (inline with
//! flood publish on). `--mesh D` sets the gossipsub mesh degree.

use std::time::{Duration, Instant};

use gossip::{
    Keypair, Network, NetworkConfig, NetworkEvent, NetworkHandle, Topic, Transfer, Verdict,
};
use tokio::sync::mpsc;

const DELTA: usize = 1_000_000;

struct Args {
    nodes: usize,
    mode: String,
    mesh: usize,
}

fn args() -> Args {
    let mut out = Args {
        nodes: 8,
        mode: "announce".into(),
        mesh: 6,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        match a.as_str() {
            "--nodes" => out.nodes = v.parse().expect("--nodes N"),
            "--mode" => out.mode = v,
            "--mesh" => out.mesh = v.parse().expect("--mesh D"),
            other => panic!("unknown argument {other}"),
        }
    }
    out
}

fn config(args: &Args) -> NetworkConfig {
    let mut cfg = NetworkConfig::for_tests("bench");
    cfg.mesh_n = args.mesh;
    cfg.deltas.max_message_size = 2 << 20;
    match args.mode.as_str() {
        "announce" => cfg.deltas.transfer = Transfer::AnnounceFetch,
        "announce-mesh" => {
            cfg.deltas.transfer = Transfer::AnnounceFetch;
            cfg.flood_publish = false;
        }
        "inline" => {
            cfg.deltas.transfer = Transfer::Inline;
            cfg.flood_publish = false;
        }
        "inline-flood" => {
            cfg.deltas.transfer = Transfer::Inline;
            cfg.flood_publish = true;
        }
        other => panic!("unknown mode {other}"),
    }
    cfg
}

/// Accepts everything and counts deltas received.
fn pump(handle: NetworkHandle, mut events: mpsc::Receiver<NetworkEvent>, done: mpsc::Sender<()>) {
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let NetworkEvent::Message {
                topic,
                propagation_source,
                message_id,
                ..
            } = event
            {
                let _ = handle
                    .report_validation(message_id, propagation_source, Verdict::Accept)
                    .await;
                if topic == Topic::Deltas {
                    let _ = done.send(()).await;
                }
            }
        }
    });
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    let n = args.nodes;
    let (done_tx, mut done_rx) = mpsc::channel(n * n);
    let mut handles = Vec::new();
    let mut boot = None;
    for _ in 0..n {
        let mut cfg = config(&args);
        cfg.bootstrap = boot.iter().cloned().collect();
        let (handle, events) = Network::spawn(cfg, Keypair::generate_ed25519())?;
        pump(handle.clone(), events, done_tx.clone());
        if boot.is_none() {
            boot = handle.listen_addrs().await?.into_iter().next();
        }
        handles.push(handle);
    }
    // Wait for every node to have a full mesh view (bounded).
    let start = Instant::now();
    let want = (args.mesh * 2 / 3).max(2).min(n - 1);
    loop {
        let mut ready = true;
        for h in &handles {
            ready &= h.mesh_peers(Topic::Deltas).await?.len() >= want;
        }
        if ready {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            for h in &handles {
                eprintln!(
                    "peers {} mesh {}",
                    h.peers().await?.len(),
                    h.mesh_peers(Topic::Deltas).await?.len()
                );
            }
            return Err("mesh did not form in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut before = Vec::new();
    for h in &handles {
        before.push(h.counters().await?.transport);
    }
    let t0 = Instant::now();
    for (i, h) in handles.iter().enumerate() {
        let mut delta = vec![0u8; DELTA];
        delta[..8].copy_from_slice(&(i as u64).to_le_bytes());
        for (j, b) in delta.iter_mut().enumerate().skip(8) {
            *b = (j as u64).wrapping_mul(2654435761).wrapping_add(i as u64) as u8;
        }
        h.publish(Topic::Deltas, delta).await?;
    }
    let expected = n * (n - 1);
    for _ in 0..expected {
        tokio::time::timeout(Duration::from_secs(120), done_rx.recv())
            .await
            .map_err(|_| "deltas did not all arrive in 120 s")?;
    }
    let elapsed = t0.elapsed();
    // Let trailing duplicates and IDONTWANTs land before reading the counters.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ideal = ((n - 1) * DELTA) as f64;
    let mut ratios = Vec::new();
    let mut outs = Vec::new();
    for (h, b) in handles.iter().zip(&before) {
        let now = h.counters().await?.transport;
        ratios.push((now.bytes_in - b.bytes_in) as f64 / ideal);
        outs.push((now.bytes_out - b.bytes_out) as f64 / ideal);
    }
    let mean = ratios.iter().sum::<f64>() / n as f64;
    let max = ratios.iter().cloned().fold(0.0, f64::max);
    let min = ratios.iter().cloned().fold(f64::MAX, f64::min);
    let max_out = outs.iter().cloned().fold(0.0, f64::max);
    println!(
        "nodes={n} mode={} mesh={} all {expected} deliveries in {:.2}s; received/ideal: mean {mean:.3} min {min:.3} max {max:.3}; max sent/ideal {max_out:.3}",
        args.mode,
        args.mesh,
        elapsed.as_secs_f64()
    );
    for h in &handles {
        let _ = h.shutdown().await;
    }
    Ok(())
}
