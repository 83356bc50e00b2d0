//! The one task that owns the swarm: a `select!` over commands, swarm events, answers from the
//! node to inbound requests, and a housekeeping tick. Nothing in here blocks on the node: events
//! go out with `try_send`, and a full queue drops the event (counted) instead of stalling.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use libp2p::{
    Multiaddr, PeerId, Swarm,
    futures::{StreamExt, stream::FuturesUnordered},
    gossipsub, identify,
    identity::Keypair,
    kad, mdns,
    multiaddr::Protocol,
    request_response::{self, OutboundRequestId, ResponseChannel},
    swarm::SwarmEvent,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, trace, warn};

use crate::{
    Digest, Error, MessageId, Topic,
    behaviour::{self, Behaviour, BehaviourEvent},
    blobs::BlobCache,
    config::{NetworkConfig, Transfer},
    counters::{NetworkCounters, Outcome, TaskCounters, WireCounters},
    handle::{Checkpoint, Command, NetworkEvent, PeerAction, StateSnapshot, Verdict},
    wire::{
        Announcement, BlobRequest, BlobResponse, CheckpointManifest, StateManifest, StateRequest,
        StateResponse,
    },
};

mod fetch;
mod gossip;
mod listeners;
mod swarm;
mod sync;

/// Checkpoints kept whole for serving their chunks (the latest ones served).
const SERVED_CHECKPOINTS: usize = 2;
/// Peers remembered as banned.
const MAX_BANNED: usize = 4096;
/// Checkpoint chunks fetched at once during a state sync.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Application scores remembered.
const MAX_APP_SCORES: usize = 4096;
/// Per housekeeping tick, application scores move this fraction back toward zero.
const APP_SCORE_DECAY: f64 = 0.99;

type AnswerFuture = Pin<Box<dyn Future<Output = (u64, Answer)> + Send>>;

/// The node's answer to an inbound request (None: not found, refused, or timed out).
enum Answer {
    Blob(Option<Bytes>),
    State(Option<StateSnapshot>),
}

enum InboundChannel {
    Blob(ResponseChannel<BlobResponse>),
    State(ResponseChannel<StateResponse>),
}

/// A received message waiting for the node's verdict.
struct Pending {
    topic: Topic,
    propagation_source: PeerId,
    /// The fetched payload of an announce-fetch message (dropped from the cache on reject).
    blob: Option<Digest>,
    since: Instant,
}

/// Who waits for a blob fetch.
enum FetchPurpose {
    Caller(oneshot::Sender<Result<Bytes, Error>>),
    Announced {
        topic: Topic,
        message_id: MessageId,
        propagation_source: PeerId,
        source: Option<PeerId>,
    },
    StateChunk {
        sync: u64,
        index: usize,
    },
}

struct Fetch {
    digest: Digest,
    expected_len: Option<u64>,
    candidates: VecDeque<PeerId>,
    asked: usize,
    purpose: FetchPurpose,
    started: Instant,
}

struct StateSync {
    peer: PeerId,
    from_height: u64,
    reply: oneshot::Sender<Result<StateSnapshot, Error>>,
    manifest: Option<StateManifest>,
    /// Chunks received so far, by index.
    chunks: Vec<Option<Vec<u8>>>,
    /// Next chunk index to request.
    next: usize,
    /// Chunk fetches in flight.
    in_flight: usize,
}

struct ServedCheckpoint {
    bytes: Arc<Vec<u8>>,
    chunks: HashMap<Digest, (usize, usize)>,
}

pub(crate) struct Task {
    swarm: Swarm<Behaviour>,
    config: NetworkConfig,
    events: mpsc::Sender<NetworkEvent>,
    wire: Arc<WireCounters>,
    counters: TaskCounters,
    blobs: BlobCache,
    /// Announcement nonce: counts publishes from a start that differs per process start.
    announced: u64,
    served: VecDeque<ServedCheckpoint>,
    pending: HashMap<MessageId, Pending>,
    fetches: HashMap<u64, Fetch>,
    announce_fetches: usize,
    blob_requests: HashMap<OutboundRequestId, (u64, PeerId)>,
    state_requests: HashMap<OutboundRequestId, u64>,
    syncs: HashMap<u64, StateSync>,
    inbound: FuturesUnordered<AnswerFuture>,
    inbound_channels: HashMap<u64, InboundChannel>,
    app_scores: HashMap<PeerId, f64>,
    banned: VecDeque<PeerId>,
    connected: HashSet<PeerId>,
    /// Each listener's address (for its warnings), and who waits for the first one.
    listeners: listeners::Listeners,
    /// Relayed listen addresses waiting for a connection to their relay.
    relay_listens: Vec<(PeerId, Multiaddr)>,
    bootstrapped: bool,
    /// Bootstrap addresses already reported unreachable (one warning each, though a node
    /// without peers re-dials them every few seconds).
    unreachable_warned: HashSet<Multiaddr>,
    ticks: u64,
    next_id: u64,
}

impl Task {
    pub fn new(
        config: NetworkConfig,
        keypair: Keypair,
        events: mpsc::Sender<NetworkEvent>,
    ) -> Result<Self, Error> {
        let wire = Arc::new(WireCounters::default());
        let mut swarm = behaviour::build_swarm(&config, keypair, wire.clone())?;
        // Relayed listen addresses (`<relay>/p2p-circuit`) wait until the relay is connected:
        // the relay client's own dial would be refused while a bootstrap dial to the same peer
        // is pending, and the listener would close.
        let mut relay_listens = Vec::new();
        let mut listeners = listeners::Listeners::default();
        for addr in &config.listen_addrs {
            match relay_of(addr) {
                Some(Ok(relay)) => relay_listens.push((relay, addr.clone())),
                Some(Err(())) => {
                    return Err(Error::Listen {
                        addr: addr.clone(),
                        reason: "a relayed address needs /p2p/<relay peer id> before /p2p-circuit"
                            .into(),
                    });
                }
                None => {
                    let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?;
                    listeners.asked(id, addr.clone());
                }
            }
        }
        for addr in &config.external_addrs {
            swarm.add_external_address(addr.clone());
        }
        let mut task = Task {
            swarm,
            blobs: BlobCache::new(config.blob_cache_bytes),
            announced: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            config,
            events,
            wire,
            counters: TaskCounters::default(),
            served: VecDeque::new(),
            pending: HashMap::new(),
            fetches: HashMap::new(),
            announce_fetches: 0,
            blob_requests: HashMap::new(),
            state_requests: HashMap::new(),
            syncs: HashMap::new(),
            inbound: FuturesUnordered::new(),
            inbound_channels: HashMap::new(),
            app_scores: HashMap::new(),
            banned: VecDeque::new(),
            connected: HashSet::new(),
            listeners,
            relay_listens: Vec::new(),
            bootstrapped: false,
            unreachable_warned: HashSet::new(),
            ticks: 0,
            next_id: 0,
        };
        let mut dialled = HashSet::new();
        for addr in task.config.bootstrap.clone() {
            dialled.extend(behaviour::peer_of(&addr));
            if let Err(e) = task.dial(addr) {
                warn!(error = %e, "bootstrap dial failed");
            }
        }
        for (relay, addr) in &relay_listens {
            if dialled.insert(*relay) {
                let relay_addr: Multiaddr = addr
                    .iter()
                    .take_while(|p| !matches!(p, Protocol::P2pCircuit))
                    .collect();
                if let Err(e) = task.dial(relay_addr) {
                    warn!(error = %e, "relay dial failed");
                }
            }
        }
        task.relay_listens = relay_listens;
        Ok(task)
    }

    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some((key, answer)) = self.inbound.next(), if !self.inbound.is_empty() => {
                    self.on_answer(key, answer);
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        info!(peer = %self.swarm.local_peer_id(), "network task stopped");
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends an event to the node without waiting; false (and counted) when the queue is full.
    fn emit(&mut self, event: NetworkEvent) -> bool {
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(_) => {
                self.counters.events_dropped += 1;
                false
            }
        }
    }

    // ----- commands -------------------------------------------------------------------------

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { topic, data, reply } => {
                let _ = reply.send(self.publish(topic, data));
            }
            Command::Validate {
                message_id,
                propagation_source,
                verdict,
                reply,
            } => {
                let _ = reply.send(self.validate(message_id, Some(propagation_source), verdict));
            }
            Command::RequestBlob {
                peer,
                digest,
                reply,
            } => {
                if let Some(bytes) = self.blobs.get(&digest) {
                    let _ = reply.send(Ok(bytes));
                    return;
                }
                let candidates = self.candidates(peer.into_iter().collect());
                self.start_fetch(digest, None, candidates, FetchPurpose::Caller(reply));
            }
            Command::RequestState {
                peer,
                from_height,
                reply,
            } => {
                let id = self.next_id();
                let request = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_request(&peer, StateRequest { from_height });
                self.state_requests.insert(request, id);
                self.syncs.insert(
                    id,
                    StateSync {
                        peer,
                        from_height,
                        reply,
                        manifest: None,
                        chunks: Vec::new(),
                        next: 0,
                        in_flight: 0,
                    },
                );
            }
            Command::ProvideBlob { data, reply } => {
                let digest = Digest::of(&data);
                self.blobs.insert(digest, data.into());
                let _ = reply.send(digest);
            }
            Command::Dial { addr, reply } => {
                let _ = reply.send(self.dial(addr));
            }
            Command::ListenAddrs { reply } => {
                let addrs = self.listen_addrs();
                if addrs.is_empty() && !self.config.listen_addrs.is_empty() {
                    self.listeners.waiters.push(reply);
                } else {
                    let _ = reply.send(addrs);
                }
            }
            Command::AddExternalAddr { addr, reply } => {
                self.swarm.add_external_address(addr);
                let _ = reply.send(());
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::MeshPeers { topic, reply } => {
                let hash = topic.hash(&self.config.chain_id);
                let peers = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .mesh_peers(&hash)
                    .copied()
                    .collect();
                let _ = reply.send(peers);
            }
            Command::PeerScore { peer, reply } => {
                // Gossipsub answers 0 for peers it does not know; say "unknown" instead.
                let score = self
                    .swarm
                    .is_connected(&peer)
                    .then(|| self.swarm.behaviour().gossipsub.peer_score(&peer))
                    .flatten();
                let _ = reply.send(score);
            }
            Command::Counters { reply } => {
                let _ = reply.send(self.snapshot());
            }
            Command::Penalize {
                peer,
                action,
                reply,
            } => {
                self.penalize(peer, action);
                let _ = reply.send(());
            }
            Command::Shutdown { reply } => {
                // Handled in `run`; kept exhaustive.
                let _ = reply.send(());
            }
        }
    }

    fn listen_addrs(&self) -> Vec<Multiaddr> {
        let me = *self.swarm.local_peer_id();
        self.swarm
            .listeners()
            .map(|a| a.clone().with_p2p(me).unwrap_or_else(|a| a))
            .collect()
    }

    fn dial(&mut self, addr: Multiaddr) -> Result<(), Error> {
        if let Some(peer) = behaviour::peer_of(&addr)
            && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
        {
            kad.add_address(&peer, addr.clone());
        }
        self.swarm.dial(addr.clone()).map_err(|e| Error::Dial {
            addr,
            reason: e.to_string(),
        })
    }

    fn publish(&mut self, topic: Topic, data: Bytes) -> Result<MessageId, Error> {
        let tc = self.config.topic(topic);
        if data.len() > tc.max_message_size {
            return Err(Error::MessageTooLarge {
                topic,
                size: data.len(),
                max: tc.max_message_size,
            });
        }
        let size = data.len() as u64;
        let gossip = match tc.transfer {
            Transfer::Inline => Vec::from(data),
            Transfer::AnnounceFetch => {
                let digest = Digest::of(&data);
                self.blobs.insert(digest, data);
                self.announced = self.announced.wrapping_add(1);
                Announcement {
                    digest,
                    len: size,
                    nonce: self.announced,
                }
                .encode()
            }
        };
        let id = MessageId::of(&gossip);
        self.swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic.ident(&self.config.chain_id), gossip)
            .map_err(|e| Error::Publish {
                topic,
                reason: e.to_string(),
            })?;
        let c = self.counters.topic(topic);
        c.published_messages += 1;
        c.published_bytes += size;
        Ok(id)
    }

    /// Passes a verdict to gossipsub. `propagation_source` defaults to the one recorded when the
    /// message arrived (the only one gossipsub accepts).
    fn validate(
        &mut self,
        id: MessageId,
        propagation_source: Option<PeerId>,
        verdict: Verdict,
    ) -> bool {
        let Some(pending) = self.pending.remove(&id) else {
            return false;
        };
        if propagation_source.is_some_and(|p| p != pending.propagation_source) {
            debug!(message = %id, "verdict names another propagation source; using the recorded one");
        }
        let (acceptance, outcome, reason) = match verdict {
            Verdict::Accept => (
                gossipsub::MessageAcceptance::Accept,
                Outcome::Accepted,
                "valid",
            ),
            Verdict::Reject(r) => (gossipsub::MessageAcceptance::Reject, Outcome::Rejected, r),
            Verdict::Ignore(r) => (gossipsub::MessageAcceptance::Ignore, Outcome::Ignored, r),
        };
        self.counters.verdict(pending.topic, outcome, reason);
        if outcome == Outcome::Rejected
            && let Some(digest) = pending.blob
        {
            self.blobs.remove(&digest);
        }
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(
                &id.to_gossipsub(),
                &pending.propagation_source,
                acceptance,
            )
    }

    /// Gossipsub verdict for a message the node never saw (bad announcement, failed fetch...).
    fn drop_message(
        &mut self,
        topic: Topic,
        id: &gossipsub::MessageId,
        propagation_source: &PeerId,
        outcome: Outcome,
        reason: &'static str,
    ) {
        let acceptance = match outcome {
            Outcome::Accepted => gossipsub::MessageAcceptance::Accept,
            Outcome::Rejected => gossipsub::MessageAcceptance::Reject,
            Outcome::Ignored => gossipsub::MessageAcceptance::Ignore,
        };
        self.counters.verdict(topic, outcome, reason);
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, propagation_source, acceptance);
    }

    fn is_banned(&self, peer: &PeerId) -> bool {
        self.swarm
            .behaviour()
            .blocked
            .blocked_peers()
            .contains(peer)
    }

    fn penalize(&mut self, peer: PeerId, action: PeerAction) {
        if action == PeerAction::Fatal {
            warn!(peer = %peer, "banning peer");
            if self.is_banned(&peer) {
                return;
            }
            if self.banned.len() >= MAX_BANNED
                && let Some(old) = self.banned.pop_front()
            {
                self.swarm.behaviour_mut().blocked.unblock_peer(old);
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .remove_blacklisted_peer(&old);
            }
            self.banned.push_back(peer);
            // The block list closes its connections and refuses new ones, both ways.
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            self.swarm.behaviour_mut().gossipsub.blacklist_peer(&peer);
            return;
        }
        if self.app_scores.len() >= MAX_APP_SCORES && !self.app_scores.contains_key(&peer) {
            // Forget the mildest memory to make room.
            if let Some(mildest) = self
                .app_scores
                .iter()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(p, _)| *p)
            {
                self.app_scores.remove(&mildest);
            }
        }
        let score = self.app_scores.entry(peer).or_default();
        *score = (*score + action.penalty()).max(-1000.0);
        let score = *score;
        debug!(peer = %peer, ?action, score, "penalised peer");
        self.swarm
            .behaviour_mut()
            .gossipsub
            .set_application_score(&peer, score);
    }

    fn snapshot(&self) -> NetworkCounters {
        NetworkCounters {
            peers_connected: self.connected.len() as u64,
            transport: self.wire.transport.snapshot(),
            blob_protocol: self.wire.blob.snapshot(),
            state_protocol: self.wire.state.snapshot(),
            topics: self.counters.topics,
            verdicts: self
                .counters
                .verdicts
                .iter()
                .map(
                    |(&(topic, outcome, reason), &count)| crate::counters::VerdictCount {
                        topic,
                        outcome,
                        reason,
                        count,
                    },
                )
                .collect(),
            digest_mismatches: self.counters.digest_mismatches,
            events_dropped: self.counters.events_dropped,
            requests_served: self.counters.requests_served,
        }
    }

    // ----- housekeeping ---------------------------------------------------------------------

    fn on_tick(&mut self) {
        self.ticks += 1;
        let timeout = self.config.validation_timeout;
        let expired: Vec<MessageId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.validate(id, None, Verdict::Ignore("validation_timeout"));
        }
        let mut changed = Vec::new();
        for (peer, score) in self.app_scores.iter_mut() {
            *score *= APP_SCORE_DECAY;
            if score.abs() < 0.01 {
                *score = 0.0;
            }
            changed.push((*peer, *score));
        }
        self.app_scores.retain(|_, s| *s != 0.0);
        for (peer, score) in changed {
            self.swarm
                .behaviour_mut()
                .gossipsub
                .set_application_score(&peer, score);
        }
        if self.ticks.is_multiple_of(10) {
            self.top_up_peers();
        }
    }

    /// Below `target_peers`, dials peers Kademlia knows (connections outside the gossipsub mesh
    /// close when idle), and every 30 s walks the DHT for more.
    fn top_up_peers(&mut self) {
        let missing = self
            .config
            .target_peers
            .saturating_sub(self.connected.len());
        if missing == 0 {
            return;
        }
        if self.connected.is_empty() {
            // Alone: the bootstrap peers may have started after us (a compose testnet) or come
            // back from a partition; dial them again.
            for addr in self.config.bootstrap.clone() {
                let _ = self.dial(addr);
            }
        }
        let walk = self.ticks.is_multiple_of(30);
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        if walk {
            let _ = kad.bootstrap();
        }
        let mut known: Vec<PeerId> = kad
            .kbuckets()
            .flat_map(|bucket| {
                bucket
                    .iter()
                    .map(|entry| *entry.node.key.preimage())
                    .collect::<Vec<_>>()
            })
            .collect();
        known.retain(|p| !self.connected.contains(p));
        for peer in known.into_iter().take(missing) {
            self.maybe_dial(peer);
        }
    }
}

/// For a relayed address `<relay addr>/p2p/<relay>/p2p-circuit[...]`: the relay's peer id, or
/// `Err` when it is missing; `None` for a direct address.
fn relay_of(addr: &Multiaddr) -> Option<Result<PeerId, ()>> {
    let circuit = addr
        .iter()
        .position(|p| matches!(p, Protocol::P2pCircuit))?;
    let relay = addr.iter().take(circuit).collect::<Multiaddr>();
    Some(behaviour::peer_of(&relay).ok_or(()))
}

/// Whether a failed request means the peer sent bytes that break our framing.
fn is_garbage(error: &request_response::OutboundFailure) -> bool {
    matches!(error, request_response::OutboundFailure::Io(e) if e.kind() == std::io::ErrorKind::InvalidData)
}
