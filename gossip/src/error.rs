//! The crate's error type.

use libp2p::{Multiaddr, PeerId};

use crate::{Digest, Topic};

/// Errors of the network layer. "The peer misbehaved" never surfaces here as a panic; failed
/// exchanges are reported as the variants below, and the misbehaving peer loses score.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid network config: {reason}")]
    Config { reason: String },
    /// Building the transport or a behaviour failed.
    #[error("failed to build the swarm: {reason}")]
    Build { reason: String },
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    /// Dialing an address failed immediately.
    #[error("cannot dial {addr}: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    /// The network task has stopped (shutdown or crash); the handle is dead.
    #[error("the network task has stopped")]
    Stopped,
    /// A payload is larger than the topic allows.
    #[error("message of {size} bytes exceeds the {max}-byte limit of topic {topic}")]
    MessageTooLarge {
        topic: Topic,
        size: usize,
        max: usize,
    },
    /// Gossipsub refused to publish.
    #[error("publish on {topic} failed: {reason}")]
    Publish { topic: Topic, reason: String },
    /// No peer delivered a blob whose bytes hash to the digest.
    #[error("blob {digest} not found after asking {asked} peer(s)")]
    BlobNotFound { digest: Digest, asked: usize },
    /// No peer to ask.
    #[error("no connected peer to ask")]
    NoPeers,
    /// The peer has no state to offer from that height.
    #[error("peer {peer} has no state from height {from_height}")]
    StateUnavailable { peer: PeerId, from_height: u64 },
    /// The state request failed or the peer's answer did not check out.
    #[error("state sync from {peer} failed: {reason}")]
    StateSync { peer: PeerId, reason: String },
}
