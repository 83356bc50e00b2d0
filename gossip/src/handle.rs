//! The public face of the network task: [`Network::spawn`], [`NetworkHandle`], the event enum.

use bytes::Bytes;
use libp2p::{Multiaddr, PeerId, identity::Keypair};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Digest, Error, MessageId, Topic, config::NetworkConfig, counters::NetworkCounters, task,
};

/// The application's verdict on a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it to the mesh.
    Accept,
    /// Malformed, badly signed, equivocating: drop it and penalise every peer that sent it
    /// (gossipsub P4). The reason is a short static label for the counters.
    Reject(&'static str),
    /// Not (yet) relevant, a duplicate in another form, or unknown: drop it without penalty.
    Ignore(&'static str),
}

/// How badly a peer misbehaved, by the node's own judgement (lighthouse's vocabulary). Feeds
/// the application-specific part of the peer score (gossipsub P5); `Fatal` bans the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAction {
    /// Proven malicious (e.g. equivocation): disconnect and ban.
    Fatal,
    /// A few of these make the peer unusable (score -50 each).
    LowTolerance,
    /// Worth noticing (score -20 each).
    MidTolerance,
    /// Could be an honest glitch (score -5 each).
    HighTolerance,
}

impl PeerAction {
    /// Application score added for this action.
    pub(crate) fn penalty(self) -> f64 {
        match self {
            PeerAction::Fatal => -1000.0,
            PeerAction::LowTolerance => -50.0,
            PeerAction::MidTolerance => -20.0,
            PeerAction::HighTolerance => -5.0,
        }
    }
}

/// A checkpoint as the node stores it: opaque metadata (height, parameter hash, ...) and the
/// checkpoint bytes. The network moves it in chunks, each checked against its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Opaque metadata, interpreted by the node.
    pub meta: Vec<u8>,
    /// The checkpoint bytes (e.g. a safetensors file).
    pub bytes: Vec<u8>,
}

/// A state to catch up from: the latest checkpoint (if any) and the opaque commit certificates
/// after the requested height. The node verifies the certificates; this crate only checks that
/// the checkpoint bytes match the digests the serving peer announced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateSnapshot {
    /// The serving peer's latest checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// Commit certificates after the requested height, in order, opaque.
    pub certificates: Vec<Vec<u8>>,
}

/// What the network task reports to the node.
#[derive(Debug)]
pub enum NetworkEvent {
    /// A gossip message waiting for [`NetworkHandle::report_validation`]. It is not forwarded
    /// until then; without a verdict within `validation_timeout` it is dropped.
    Message {
        /// Topic it arrived on.
        topic: Topic,
        /// The libp2p author (signed by its key), when known.
        source: Option<PeerId>,
        /// The peer it came from; pass it back with the verdict.
        propagation_source: PeerId,
        /// Content id (sha256 of the gossiped bytes); pass it back with the verdict.
        message_id: MessageId,
        /// The payload (for announce-fetch topics: the fetched bytes, already checked against
        /// the announced digest). Shared with the blob cache, not copied.
        data: Bytes,
    },
    /// First connection to a peer.
    PeerConnected {
        /// The peer.
        peer: PeerId,
    },
    /// Last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A peer asks for a blob this crate's cache does not hold (an older delta, say). Answer
    /// with the bytes, or `None`; an unanswered request times out and is answered "not found".
    InboundBlobRequest {
        /// Who asks.
        peer: PeerId,
        /// sha256 of the wanted bytes.
        digest: Digest,
        /// Where the answer goes.
        respond: oneshot::Sender<Option<Bytes>>,
    },
    /// A peer asks for state sync: the latest checkpoint and the certificates after
    /// `from_height`. Answer with a snapshot, or `None` when there is nothing to offer.
    InboundStateRequest {
        /// Who asks.
        peer: PeerId,
        /// The requester has everything below this height.
        from_height: u64,
        /// Where the answer goes.
        respond: oneshot::Sender<Option<StateSnapshot>>,
    },
}

/// Commands into the network task, each with its reply channel.
pub(crate) enum Command {
    Publish {
        topic: Topic,
        data: Bytes,
        reply: oneshot::Sender<Result<MessageId, Error>>,
    },
    Validate {
        message_id: MessageId,
        propagation_source: PeerId,
        verdict: Verdict,
        reply: oneshot::Sender<bool>,
    },
    RequestBlob {
        peer: Option<PeerId>,
        digest: Digest,
        reply: oneshot::Sender<Result<Bytes, Error>>,
    },
    RequestState {
        peer: PeerId,
        from_height: u64,
        reply: oneshot::Sender<Result<StateSnapshot, Error>>,
    },
    ProvideBlob {
        data: Vec<u8>,
        reply: oneshot::Sender<Digest>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    AddExternalAddr {
        addr: Multiaddr,
        reply: oneshot::Sender<()>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    MeshPeers {
        topic: Topic,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    PeerScore {
        peer: PeerId,
        reply: oneshot::Sender<Option<f64>>,
    },
    Counters {
        reply: oneshot::Sender<NetworkCounters>,
    },
    Penalize {
        peer: PeerId,
        action: PeerAction,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Entry point of the crate.
pub struct Network;

impl Network {
    /// Builds the swarm, starts listening and dialing the bootstrap peers, and spawns the one
    /// task that owns the swarm. Must be called inside a tokio runtime.
    ///
    /// Returns the handle (cheap to clone) and the bounded event stream. When every handle is
    /// dropped, or on [`NetworkHandle::shutdown`], the task stops.
    pub fn spawn(
        config: NetworkConfig,
        keypair: Keypair,
    ) -> Result<(NetworkHandle, mpsc::Receiver<NetworkEvent>), Error> {
        config.validate()?;
        let local_peer_id = keypair.public().to_peer_id();
        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_buffer);
        let (event_tx, event_rx) = mpsc::channel(config.event_buffer);
        let task = task::Task::new(config, keypair, event_tx)?;
        tokio::spawn(task.run(cmd_rx));
        Ok((
            NetworkHandle {
                commands: cmd_tx,
                local_peer_id,
            },
            event_rx,
        ))
    }
}

/// Talks to the network task. Every method is one command on a bounded channel and one reply;
/// they fail with [`Error::Stopped`] once the task has ended.
#[derive(Debug, Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
}

impl NetworkHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// This node's peer id (derived from its ed25519 key).
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Publishes `data` on `topic`; returns its message id (sha256 of the gossiped bytes). On an
    /// announce-fetch topic the bytes are kept in the blob cache and an announcement is gossiped.
    pub async fn publish(&self, topic: Topic, data: impl Into<Bytes>) -> Result<MessageId, Error> {
        let data = data.into();
        self.ask(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// The verdict on a [`NetworkEvent::Message`]. Returns false when the message is no longer
    /// known (verdict too late, or unknown id).
    pub async fn report_validation(
        &self,
        message_id: MessageId,
        propagation_source: PeerId,
        verdict: Verdict,
    ) -> Result<bool, Error> {
        self.ask(|reply| Command::Validate {
            message_id,
            propagation_source,
            verdict,
            reply,
        })
        .await
    }

    /// Fetches the blob whose sha256 is `digest`: from `peer` first when given, then from other
    /// connected peers (up to `fetch_attempts` peers). Bytes that do not match the digest are
    /// refused and cost the sender score.
    pub async fn request_blob(&self, peer: Option<PeerId>, digest: Digest) -> Result<Bytes, Error> {
        self.ask(|reply| Command::RequestBlob {
            peer,
            digest,
            reply,
        })
        .await?
    }

    /// State sync from `peer`: its latest checkpoint (fetched chunk by chunk, each chunk and the
    /// whole checked against the manifest's digests) and the certificates after `from_height`.
    pub async fn request_state(
        &self,
        peer: PeerId,
        from_height: u64,
    ) -> Result<StateSnapshot, Error> {
        self.ask(|reply| Command::RequestState {
            peer,
            from_height,
            reply,
        })
        .await?
    }

    /// Puts `data` in the blob cache so peers can fetch it by digest; returns the digest.
    pub async fn provide_blob(&self, data: Vec<u8>) -> Result<Digest, Error> {
        self.ask(|reply| Command::ProvideBlob { data, reply }).await
    }

    /// Dials `addr` (with a `/p2p/<id>` suffix it also seeds Kademlia).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), Error> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// The addresses this node listens on, each ending in `/p2p/<local peer id>`. Waits until at
    /// least one listener is up when any was configured.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Declares `addr` a confirmed external address of this node (a public address the operator
    /// knows, or one learnt after start): peers learn it, Kademlia answers queries, and a relay
    /// server starts accepting reservations.
    pub async fn add_external_addr(&self, addr: Multiaddr) -> Result<(), Error> {
        self.ask(|reply| Command::AddExternalAddr { addr, reply })
            .await
    }

    /// Peers with an established connection.
    pub async fn peers(&self) -> Result<Vec<PeerId>, Error> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Peers in this node's gossipsub mesh for `topic`.
    pub async fn mesh_peers(&self, topic: Topic) -> Result<Vec<PeerId>, Error> {
        self.ask(|reply| Command::MeshPeers { topic, reply }).await
    }

    /// The gossipsub score of `peer` as this node sees it (None unless connected).
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, Error> {
        self.ask(|reply| Command::PeerScore { peer, reply }).await
    }

    /// A snapshot of every counter.
    pub async fn counters(&self) -> Result<NetworkCounters, Error> {
        self.ask(|reply| Command::Counters { reply }).await
    }

    /// The application score hook: lowers `peer`'s score for misbehaviour only the node can see
    /// (a delta the robust rule rejected, an equivocation). `Fatal` bans the peer.
    pub async fn penalize(&self, peer: PeerId, action: PeerAction) -> Result<(), Error> {
        self.ask(|reply| Command::Penalize {
            peer,
            action,
            reply,
        })
        .await
    }

    /// Stops the network task (connections close, pending requests fail).
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }
}
