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
    Blob(Option<Vec<u8>>),
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
    Caller(oneshot::Sender<Result<Vec<u8>, Error>>),
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
    listen_waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
    /// Relayed listen addresses waiting for a connection to their relay.
    relay_listens: Vec<(PeerId, Multiaddr)>,
    bootstrapped: bool,
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
                    swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?;
                }
            }
        }
        for addr in &config.external_addrs {
            swarm.add_external_address(addr.clone());
        }
        let mut task = Task {
            swarm,
            blobs: BlobCache::new(config.blob_cache_bytes),
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
            listen_waiters: Vec::new(),
            relay_listens: Vec::new(),
            bootstrapped: false,
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
                self.blobs.insert(digest, data);
                let _ = reply.send(digest);
            }
            Command::Dial { addr, reply } => {
                let _ = reply.send(self.dial(addr));
            }
            Command::ListenAddrs { reply } => {
                let addrs = self.listen_addrs();
                if addrs.is_empty() && !self.config.listen_addrs.is_empty() {
                    self.listen_waiters.push(reply);
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

    fn publish(&mut self, topic: Topic, data: Vec<u8>) -> Result<MessageId, Error> {
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
            Transfer::Inline => data,
            Transfer::AnnounceFetch => {
                let digest = Digest::of(&data);
                self.blobs.insert(digest, data);
                Announcement { digest, len: size }.encode()
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

    // ----- blob fetches ---------------------------------------------------------------------

    /// `preferred` first, then every other connected peer, none twice, no banned peer.
    fn candidates(&self, preferred: Vec<PeerId>) -> VecDeque<PeerId> {
        let mut out = VecDeque::new();
        let mut seen = HashSet::new();
        let others: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in preferred.into_iter().chain(others) {
            if !self.is_banned(&peer) && seen.insert(peer) {
                out.push_back(peer);
            }
        }
        out
    }

    fn start_fetch(
        &mut self,
        digest: Digest,
        expected_len: Option<u64>,
        candidates: VecDeque<PeerId>,
        purpose: FetchPurpose,
    ) {
        let id = self.next_id();
        if matches!(purpose, FetchPurpose::Announced { .. }) {
            self.announce_fetches += 1;
        }
        self.fetches.insert(
            id,
            Fetch {
                digest,
                expected_len,
                candidates,
                asked: 0,
                purpose,
                started: Instant::now(),
            },
        );
        self.next_attempt(id);
    }

    /// Asks the next candidate, or fails the fetch when none is left.
    fn next_attempt(&mut self, id: u64) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        // An announced payload is worthless once gossipsub has forgotten the announcement.
        let expired = matches!(fetch.purpose, FetchPurpose::Announced { .. })
            && fetch.started.elapsed() > self.config.validation_timeout;
        while !expired && fetch.asked < self.config.fetch_attempts {
            let Some(peer) = fetch.candidates.pop_front() else {
                break;
            };
            if !self.swarm.is_connected(&peer) && fetch.asked > 0 {
                continue;
            }
            fetch.asked += 1;
            let digest = fetch.digest;
            let request = self
                .swarm
                .behaviour_mut()
                .blob
                .send_request(&peer, BlobRequest(digest));
            self.blob_requests.insert(request, (id, peer));
            trace!(peer = %peer, digest = ?digest, "blob request sent");
            return;
        }
        if let Some(fetch) = self.fetches.remove(&id) {
            self.fetch_failed(fetch);
        }
    }

    fn on_blob_response(&mut self, request: OutboundRequestId, response: Option<BlobResponse>) {
        let Some((id, peer)) = self.blob_requests.remove(&request) else {
            return;
        };
        let Some(fetch) = self.fetches.get(&id) else {
            return;
        };
        match response {
            Some(BlobResponse::Found(bytes)) => {
                let len_ok = fetch.expected_len.is_none_or(|l| l == bytes.len() as u64);
                if len_ok && Digest::of(&bytes) == fetch.digest {
                    if let Some(fetch) = self.fetches.remove(&id) {
                        self.fetch_done(fetch, peer, bytes);
                    }
                    return;
                }
                warn!(peer = %peer, digest = ?fetch.digest, "blob does not match its digest");
                self.counters.digest_mismatches += 1;
                self.penalize(peer, PeerAction::LowTolerance);
            }
            Some(BlobResponse::NotFound) => {
                trace!(peer = %peer, digest = ?fetch.digest, "peer has no such blob");
            }
            None => {}
        }
        self.next_attempt(id);
    }

    fn fetch_done(&mut self, fetch: Fetch, from: PeerId, bytes: Vec<u8>) {
        match fetch.purpose {
            FetchPurpose::Caller(reply) => {
                self.blobs.insert(fetch.digest, bytes.clone());
                let _ = reply.send(Ok(bytes));
            }
            FetchPurpose::Announced {
                topic,
                message_id,
                propagation_source,
                source,
            } => {
                self.announce_fetches -= 1;
                self.blobs.insert(fetch.digest, bytes.clone());
                debug!(peer = %from, digest = ?fetch.digest, "announced payload fetched");
                self.deliver(
                    topic,
                    source,
                    propagation_source,
                    message_id,
                    bytes,
                    Some(fetch.digest),
                );
            }
            FetchPurpose::StateChunk { sync, index } => self.on_chunk(sync, index, bytes),
        }
    }

    fn fetch_failed(&mut self, fetch: Fetch) {
        match fetch.purpose {
            FetchPurpose::Caller(reply) => {
                let err = if fetch.asked == 0 {
                    Error::NoPeers
                } else {
                    Error::BlobNotFound {
                        digest: fetch.digest,
                        asked: fetch.asked,
                    }
                };
                let _ = reply.send(Err(err));
            }
            FetchPurpose::Announced {
                topic,
                message_id,
                propagation_source,
                ..
            } => {
                self.announce_fetches -= 1;
                self.drop_message(
                    topic,
                    &message_id.to_gossipsub(),
                    &propagation_source,
                    Outcome::Ignored,
                    "fetch_failed",
                );
            }
            FetchPurpose::StateChunk { sync, index } => {
                self.finish_sync(
                    sync,
                    Err(format!(
                        "chunk {index} ({:?}) could not be fetched",
                        fetch.digest
                    )),
                );
            }
        }
    }

    // ----- state sync -----------------------------------------------------------------------

    fn on_state_response(
        &mut self,
        request: OutboundRequestId,
        response: Result<StateResponse, String>,
    ) {
        let Some(id) = self.state_requests.remove(&request) else {
            return;
        };
        let Some(sync) = self.syncs.get_mut(&id) else {
            return;
        };
        let peer = sync.peer;
        match response {
            Err(reason) => self.finish_sync(id, Err(reason)),
            Ok(StateResponse::Unavailable) => {
                if let Some(sync) = self.syncs.remove(&id) {
                    let _ = sync.reply.send(Err(Error::StateUnavailable {
                        peer,
                        from_height: sync.from_height,
                    }));
                }
            }
            Ok(StateResponse::Manifest(manifest)) => {
                if let Some(cp) = &manifest.checkpoint
                    && let Err(reason) =
                        cp.check(self.config.max_state_bytes, self.config.max_blob_bytes())
                {
                    self.penalize(peer, PeerAction::MidTolerance);
                    self.finish_sync(id, Err(format!("bad manifest: {reason}")));
                    return;
                }
                // Memory grows with the chunks actually received, not the announced length.
                let chunks = manifest.checkpoint.as_ref().map_or(0, |cp| cp.chunks.len());
                sync.chunks = vec![None; chunks];
                sync.manifest = Some(manifest);
                self.request_chunks(id);
            }
        }
    }

    /// Keeps up to [`CHUNKS_IN_FLIGHT`] chunk fetches going; completes the sync when every
    /// chunk is in.
    fn request_chunks(&mut self, id: u64) {
        loop {
            let Some(sync) = self.syncs.get_mut(&id) else {
                return;
            };
            let Some(cp) = sync.manifest.as_ref().and_then(|m| m.checkpoint.as_ref()) else {
                self.finish_sync(id, Ok(()));
                return;
            };
            if sync.next >= cp.chunks.len() {
                if sync.in_flight == 0 {
                    self.finish_sync(id, Ok(()));
                }
                return;
            }
            if sync.in_flight >= CHUNKS_IN_FLIGHT {
                return;
            }
            let index = sync.next;
            let digest = cp.chunks[index];
            let expected = cp.chunk_len(index);
            sync.next += 1;
            sync.in_flight += 1;
            let peer = sync.peer;
            let candidates = self.candidates(vec![peer]);
            self.start_fetch(
                digest,
                Some(expected),
                candidates,
                FetchPurpose::StateChunk { sync: id, index },
            );
        }
    }

    fn on_chunk(&mut self, id: u64, index: usize, bytes: Vec<u8>) {
        let Some(sync) = self.syncs.get_mut(&id) else {
            return;
        };
        sync.in_flight -= 1;
        if let Some(slot) = sync.chunks.get_mut(index) {
            *slot = Some(bytes);
        }
        self.request_chunks(id);
    }

    /// Completes a sync: on success, assembles the checkpoint and checks it against its digest.
    fn finish_sync(&mut self, id: u64, result: Result<(), String>) {
        let Some(sync) = self.syncs.remove(&id) else {
            return;
        };
        let peer = sync.peer;
        let fail = |reason: String| Error::StateSync { peer, reason };
        let outcome = result.map_err(fail).and_then(|()| {
            let manifest = sync.manifest.ok_or_else(|| fail("no manifest".into()))?;
            let checkpoint = match manifest.checkpoint {
                None => None,
                Some(cp) => {
                    let mut bytes = Vec::with_capacity(cp.total_len as usize);
                    for chunk in sync.chunks {
                        bytes.extend(chunk.ok_or_else(|| fail("missing chunk".into()))?);
                    }
                    if bytes.len() as u64 != cp.total_len || Digest::of(&bytes) != cp.digest {
                        // Every chunk matched its digest, so the manifest itself lied.
                        self.penalize(peer, PeerAction::LowTolerance);
                        return Err(fail("checkpoint does not match its digest".into()));
                    }
                    Some(Checkpoint {
                        meta: cp.meta,
                        bytes,
                    })
                }
            };
            Ok(StateSnapshot {
                checkpoint,
                certificates: manifest.certificates,
            })
        });
        let _ = sync.reply.send(outcome);
    }

    // ----- inbound requests -----------------------------------------------------------------

    fn lookup_blob(&mut self, digest: &Digest) -> Option<Vec<u8>> {
        if let Some(bytes) = self.blobs.get(digest) {
            return Some(bytes);
        }
        self.served.iter().find_map(|cp| {
            cp.chunks
                .get(digest)
                .map(|&(start, len)| cp.bytes[start..start + len].to_vec())
        })
    }

    fn on_blob_request(
        &mut self,
        peer: PeerId,
        digest: Digest,
        channel: ResponseChannel<BlobResponse>,
    ) {
        if let Some(bytes) = self.lookup_blob(&digest) {
            self.counters.requests_served += 1;
            let _ = self
                .swarm
                .behaviour_mut()
                .blob
                .send_response(channel, BlobResponse::Found(bytes));
            return;
        }
        if self.inbound_channels.len() >= self.config.max_pending_inbound {
            let _ = self
                .swarm
                .behaviour_mut()
                .blob
                .send_response(channel, BlobResponse::NotFound);
            return;
        }
        let (tx, rx) = oneshot::channel();
        if !self.emit(NetworkEvent::InboundBlobRequest {
            peer,
            digest,
            respond: tx,
        }) {
            let _ = self
                .swarm
                .behaviour_mut()
                .blob
                .send_response(channel, BlobResponse::NotFound);
            return;
        }
        let key = self.next_id();
        self.inbound_channels
            .insert(key, InboundChannel::Blob(channel));
        let wait = self.config.request_timeout / 2;
        self.inbound.push(Box::pin(async move {
            let answer = tokio::time::timeout(wait, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            (key, Answer::Blob(answer))
        }));
    }

    fn on_state_request(
        &mut self,
        peer: PeerId,
        from_height: u64,
        channel: ResponseChannel<StateResponse>,
    ) {
        let (tx, rx) = oneshot::channel();
        if self.inbound_channels.len() >= self.config.max_pending_inbound
            || !self.emit(NetworkEvent::InboundStateRequest {
                peer,
                from_height,
                respond: tx,
            })
        {
            let _ = self
                .swarm
                .behaviour_mut()
                .state
                .send_response(channel, StateResponse::Unavailable);
            return;
        }
        let key = self.next_id();
        self.inbound_channels
            .insert(key, InboundChannel::State(channel));
        let wait = self.config.request_timeout / 2;
        self.inbound.push(Box::pin(async move {
            let answer = tokio::time::timeout(wait, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            (key, Answer::State(answer))
        }));
    }

    fn on_answer(&mut self, key: u64, answer: Answer) {
        let Some(channel) = self.inbound_channels.remove(&key) else {
            return;
        };
        match (channel, answer) {
            (InboundChannel::Blob(channel), Answer::Blob(bytes)) => {
                let response = match bytes {
                    Some(bytes) if bytes.len() <= self.config.max_blob_bytes() => {
                        self.counters.requests_served += 1;
                        BlobResponse::Found(bytes)
                    }
                    _ => BlobResponse::NotFound,
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blob
                    .send_response(channel, response);
            }
            (InboundChannel::State(channel), Answer::State(snapshot)) => {
                let response = match snapshot {
                    None => StateResponse::Unavailable,
                    Some(snapshot) => {
                        self.counters.requests_served += 1;
                        StateResponse::Manifest(self.serve_snapshot(snapshot))
                    }
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_response(channel, response);
            }
            // Keys are unique per channel kind; a mismatch cannot happen.
            (InboundChannel::Blob(channel), Answer::State(_)) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blob
                    .send_response(channel, BlobResponse::NotFound);
            }
            (InboundChannel::State(channel), Answer::Blob(_)) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_response(channel, StateResponse::Unavailable);
            }
        }
    }

    /// Cuts the node's checkpoint into chunks, keeps it for serving them, returns the manifest.
    fn serve_snapshot(&mut self, snapshot: StateSnapshot) -> StateManifest {
        let checkpoint = snapshot.checkpoint.map(|cp| {
            let (manifest, chunks) =
                CheckpointManifest::build(cp.meta, &cp.bytes, self.config.state_chunk_size);
            let mut index = HashMap::new();
            let mut start = 0;
            for (digest, chunk) in manifest.chunks.iter().zip(&chunks) {
                index.insert(*digest, (start, chunk.len()));
                start += chunk.len();
            }
            if !self.served.iter().any(|s| s.chunks.keys().eq(index.keys())) {
                if self.served.len() >= SERVED_CHECKPOINTS {
                    self.served.pop_front();
                }
                self.served.push_back(ServedCheckpoint {
                    bytes: Arc::new(cp.bytes),
                    chunks: index,
                });
            }
            manifest
        });
        StateManifest {
            checkpoint,
            certificates: snapshot.certificates,
        }
    }

    // ----- gossip ---------------------------------------------------------------------------

    fn on_gossip_message(
        &mut self,
        propagation_source: PeerId,
        gossip_id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let chain = self.config.chain_id.clone();
        let Some(topic) = Topic::from_hash(&message.topic, &chain) else {
            // We subscribe to our topics only; anything else is a protocol violation.
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &gossip_id,
                    &propagation_source,
                    gossipsub::MessageAcceptance::Reject,
                );
            return;
        };
        self.counters.topic(topic).gossip_bytes_in += message.data.len() as u64;
        let Some(id) = MessageId::from_gossipsub(&gossip_id) else {
            self.drop_message(
                topic,
                &gossip_id,
                &propagation_source,
                Outcome::Ignored,
                "bad_id",
            );
            return;
        };
        let tc = self.config.topic(topic);
        match tc.transfer {
            Transfer::Inline => self.deliver(
                topic,
                message.source,
                propagation_source,
                id,
                message.data,
                None,
            ),
            Transfer::AnnounceFetch => {
                let Some(ann) = Announcement::decode(&message.data) else {
                    self.drop_message(
                        topic,
                        &gossip_id,
                        &propagation_source,
                        Outcome::Rejected,
                        "malformed_announcement",
                    );
                    return;
                };
                if ann.len > tc.max_message_size as u64 {
                    self.drop_message(
                        topic,
                        &gossip_id,
                        &propagation_source,
                        Outcome::Rejected,
                        "oversize",
                    );
                    return;
                }
                if let Some(bytes) = self.blobs.get(&ann.digest) {
                    self.deliver(
                        topic,
                        message.source,
                        propagation_source,
                        id,
                        bytes,
                        Some(ann.digest),
                    );
                    return;
                }
                if self.announce_fetches >= self.config.max_concurrent_fetches {
                    self.drop_message(
                        topic,
                        &gossip_id,
                        &propagation_source,
                        Outcome::Ignored,
                        "fetch_queue_full",
                    );
                    return;
                }
                let mut preferred = vec![propagation_source];
                preferred.extend(message.source);
                let candidates = self.candidates(preferred);
                self.start_fetch(
                    ann.digest,
                    Some(ann.len),
                    candidates,
                    FetchPurpose::Announced {
                        topic,
                        message_id: id,
                        propagation_source,
                        source: message.source,
                    },
                );
            }
        }
    }

    /// Hands a message to the node and waits for its verdict.
    fn deliver(
        &mut self,
        topic: Topic,
        source: Option<PeerId>,
        propagation_source: PeerId,
        message_id: MessageId,
        data: Vec<u8>,
        blob: Option<Digest>,
    ) {
        if self.pending.len() >= 4 * self.config.event_buffer {
            self.drop_message(
                topic,
                &message_id.to_gossipsub(),
                &propagation_source,
                Outcome::Ignored,
                "overloaded",
            );
            return;
        }
        let c = self.counters.topic(topic);
        c.received_messages += 1;
        c.received_bytes += data.len() as u64;
        self.pending.insert(
            message_id,
            Pending {
                topic,
                propagation_source,
                blob,
                since: Instant::now(),
            },
        );
        if !self.emit(NetworkEvent::Message {
            topic,
            source,
            propagation_source,
            message_id,
            data,
        }) {
            self.validate(message_id, None, Verdict::Ignore("event_queue_full"));
        }
    }

    // ----- swarm events ---------------------------------------------------------------------

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                let addrs = self.listen_addrs();
                for waiter in self.listen_waiters.drain(..) {
                    let _ = waiter.send(addrs.clone());
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if !endpoint.is_relayed() {
                    self.listen_via_relay(peer_id);
                }
                if num_established.get() == 1 && self.connected.insert(peer_id) {
                    self.emit(NetworkEvent::PeerConnected { peer: peer_id });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.on_disconnected(peer_id),
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "dial failed");
            }
            SwarmEvent::ListenerClosed { .. } | SwarmEvent::ListenerError { .. }
                if self.swarm.listeners().next().is_none() =>
            {
                warn!("no listener left");
                for waiter in self.listen_waiters.drain(..) {
                    let _ = waiter.send(Vec::new());
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "external address confirmed");
            }
            _ => {}
        }
    }

    /// Starts the relayed listeners that waited for a connection to `relay`.
    fn listen_via_relay(&mut self, relay: PeerId) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.relay_listens)
            .into_iter()
            .partition(|(r, _)| *r == relay);
        self.relay_listens = waiting;
        for (_, addr) in ready {
            if let Err(e) = self.swarm.listen_on(addr.clone()) {
                warn!(%addr, error = %e, "cannot listen via relay");
            }
        }
    }

    fn on_disconnected(&mut self, peer: PeerId) {
        if self.connected.remove(&peer) {
            debug!(peer = %peer, "disconnected");
            self.emit(NetworkEvent::PeerDisconnected { peer });
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(event) => self.on_gossipsub(event),
            BehaviourEvent::Blob(event) => self.on_blob_event(event),
            BehaviourEvent::State(event) => self.on_state_event(event),
            BehaviourEvent::Identify(event) => self.on_identify(event),
            BehaviourEvent::Kad(event) => self.on_kad(event),
            BehaviourEvent::Mdns(event) => self.on_mdns(event),
            BehaviourEvent::Autonat(event) => debug!(?event, "autonat"),
            BehaviourEvent::Dcutr(event) => debug!(?event, "dcutr"),
            BehaviourEvent::RelayClient(event) => debug!(?event, "relay client"),
            BehaviourEvent::RelayServer(event) => debug!(?event, "relay server"),
            BehaviourEvent::Limits(never) | BehaviourEvent::Blocked(never) => match never {},
        }
    }

    fn on_gossipsub(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => self.on_gossip_message(propagation_source, message_id, message),
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                debug!(peer = %peer_id, ?failed_messages, "slow gossipsub peer");
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                trace!(peer = %peer_id, %topic, "peer subscribed");
            }
            _ => {}
        }
    }

    fn on_blob_event(&mut self, event: request_response::Event<BlobRequest, BlobResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_blob_request(peer, request.0, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_blob_response(request_id, Some(response)),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(peer = %peer, %error, "blob request failed");
                if is_garbage(&error) {
                    self.penalize(peer, PeerAction::MidTolerance);
                }
                self.on_blob_response(request_id, None);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(peer = %peer, %error, "inbound blob request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_state_event(&mut self, event: request_response::Event<StateRequest, StateResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_state_request(peer, request.from_height, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_state_response(request_id, Ok(response)),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if is_garbage(&error) {
                    self.penalize(peer, PeerAction::MidTolerance);
                }
                self.on_state_response(request_id, Err(error.to_string()));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(peer = %peer, %error, "inbound state request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        if info.protocol_version != crate::wire::identify_version(&self.config.chain_id) {
            info!(peer = %peer_id, version = %info.protocol_version, "peer of another network");
            if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                kad.remove_peer(&peer_id);
            }
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        }
        let chain = self.config.chain_id.clone();
        if !behaviour::speaks_kad(&info.protocols, &chain) {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        for addr in info.listen_addrs {
            kad.add_address(&peer_id, addr);
        }
        if !self.bootstrapped {
            self.bootstrapped = kad.bootstrap().is_ok();
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer, is_new_peer, ..
            } => {
                if is_new_peer {
                    self.maybe_dial(peer);
                }
            }
            kad::Event::OutboundQueryProgressed { result, .. } => {
                trace!(?result, "kad query progressed");
            }
            other => trace!(?other, "kad"),
        }
    }

    fn on_mdns(&mut self, event: mdns::Event) {
        if let mdns::Event::Discovered(found) = event {
            for (peer, addr) in found {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    kad.add_address(&peer, addr.clone());
                }
                if !self.swarm.is_connected(&peer)
                    && self.connected.len() < self.config.target_peers
                {
                    let _ = self.swarm.dial(addr);
                }
            }
        }
    }

    /// Dials a discovered peer while below the target peer count.
    fn maybe_dial(&mut self, peer: PeerId) {
        if peer == *self.swarm.local_peer_id()
            || self.is_banned(&peer)
            || self.swarm.is_connected(&peer)
            || self.connected.len() >= self.config.target_peers
        {
            return;
        }
        if let Err(e) = self.swarm.dial(peer) {
            debug!(peer = %peer, error = %e, "dial of discovered peer failed");
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
