//! Test harness: nodes on 127.0.0.1 port 0 with an event pump playing the node's part.

#![allow(dead_code)]

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use gossip::{
    Keypair, Multiaddr, Network, NetworkConfig, NetworkEvent, NetworkHandle, PeerId, StateSnapshot,
    Topic, Verdict,
};
use tokio::sync::mpsc;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(30);

/// A message the pump handed to the test after giving its verdict.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: Topic,
    pub from: PeerId,
    pub data: Vec<u8>,
}

/// The verdict the pump gives a message.
pub type VerdictFn = Arc<dyn Fn(Topic, &[u8]) -> Verdict + Send + Sync>;
/// The pump's answer to a state request from a height.
pub type StateFn = Arc<dyn Fn(u64) -> Option<StateSnapshot> + Send + Sync>;

/// How the pump answers.
#[derive(Clone)]
pub struct Behaviour {
    /// Verdict for each message.
    pub verdict: VerdictFn,
    /// Answers to blob requests the network could not serve itself.
    pub blobs: Arc<HashMap<gossip::Digest, Vec<u8>>>,
    /// Answer to state requests.
    pub state: Option<StateFn>,
    /// Give verdicts at all (false: the node never answers, messages time out).
    pub answer: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            verdict: Arc::new(|_, _| Verdict::Accept),
            blobs: Arc::new(HashMap::new()),
            state: None,
            answer: true,
        }
    }
}

pub struct Node {
    pub handle: NetworkHandle,
    pub peer: PeerId,
    pub addr: Multiaddr,
    pub received: mpsc::Receiver<Received>,
    /// `(peer, true)` on connect, `(peer, false)` on disconnect.
    pub connections: mpsc::Receiver<(PeerId, bool)>,
}

pub fn config(chain: &str) -> NetworkConfig {
    NetworkConfig::for_tests(chain)
}

/// Spawns a node and its pump; returns once it listens.
pub async fn spawn(config: NetworkConfig, behaviour: Behaviour) -> Node {
    let keypair = Keypair::generate_ed25519();
    let (handle, mut events) = Network::spawn(config, keypair).expect("network starts");
    let (tx, received) = mpsc::channel(1024);
    let (conn_tx, connections) = mpsc::channel(1024);
    let pump_handle = handle.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                NetworkEvent::Message {
                    topic,
                    propagation_source,
                    message_id,
                    data,
                    ..
                } => {
                    if !behaviour.answer {
                        let _ = tx.try_send(Received {
                            topic,
                            from: propagation_source,
                            data: data.to_vec(),
                        });
                        continue;
                    }
                    let verdict = (behaviour.verdict)(topic, &data);
                    let _ = pump_handle
                        .report_validation(message_id, propagation_source, verdict)
                        .await;
                    if verdict == Verdict::Accept {
                        let _ = tx.try_send(Received {
                            topic,
                            from: propagation_source,
                            data: data.to_vec(),
                        });
                    }
                }
                NetworkEvent::InboundBlobRequest {
                    digest, respond, ..
                } => {
                    let _ = respond.send(behaviour.blobs.get(&digest).cloned().map(Into::into));
                }
                NetworkEvent::InboundStateRequest {
                    from_height,
                    respond,
                    ..
                } => {
                    let _ = respond.send(behaviour.state.as_ref().and_then(|f| f(from_height)));
                }
                NetworkEvent::PeerConnected { peer } => {
                    let _ = conn_tx.try_send((peer, true));
                }
                NetworkEvent::PeerDisconnected { peer } => {
                    let _ = conn_tx.try_send((peer, false));
                }
            }
        }
    });
    let addrs = tokio::time::timeout(WAIT, handle.listen_addrs())
        .await
        .expect("listens in time")
        .expect("task alive");
    let addr = addrs.into_iter().next().expect("one listen address");
    Node {
        peer: handle.local_peer_id(),
        handle,
        addr,
        received,
        connections,
    }
}

/// `n` nodes; every node after the first bootstraps from the first one's address only.
pub async fn spawn_star(n: usize, chain: &str) -> Vec<Node> {
    let first = spawn(config(chain), Behaviour::default()).await;
    let boot = first.addr.clone();
    let mut nodes = vec![first];
    for _ in 1..n {
        let mut cfg = config(chain);
        cfg.bootstrap = vec![boot.clone()];
        nodes.push(spawn(cfg, Behaviour::default()).await);
    }
    nodes
}

/// Polls `check` every 50 ms until it holds; panics after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let result = tokio::time::timeout(WAIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            if check().await {
                return;
            }
        }
    })
    .await;
    assert!(result.is_ok(), "timed out waiting for: {what}");
}

/// The next accepted message on `node` (bounded wait).
pub async fn next_message(node: &mut Node) -> Received {
    tokio::time::timeout(WAIT, node.received.recv())
        .await
        .expect("message arrives in time")
        .expect("pump alive")
}

/// The next connection event on `node` (bounded wait).
pub async fn next_connection(node: &mut Node) -> (PeerId, bool) {
    tokio::time::timeout(WAIT, node.connections.recv())
        .await
        .expect("connection event in time")
        .expect("pump alive")
}

/// Waits until every node has at least `min` peers in its mesh for `topic`.
pub async fn wait_for_mesh(nodes: &[Node], topic: Topic, min: usize) {
    for node in nodes {
        let handle = node.handle.clone();
        eventually("mesh forms", || {
            let handle = handle.clone();
            async move { handle.mesh_peers(topic).await.map(|p| p.len()).unwrap_or(0) >= min }
        })
        .await;
    }
}

/// A deterministic pseudo-random payload (xorshift), so tests need no RNG crate.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
