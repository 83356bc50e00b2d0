//! Cohort's network layer: a libp2p swarm that knows peers, topics, bytes and validation
//! verdicts, and nothing about rounds, votes or tensors.
//!
//! One tokio task owns the [`libp2p::Swarm`]; the node talks to it through a [`NetworkHandle`]
//! (a bounded command channel, one reply per command) and reads [`NetworkEvent`]s from a bounded
//! channel. See [`Network::spawn`].
//!
//! # What runs
//! - **Transports**: TCP + noise + yamux, QUIC v1, DNS multiaddrs, relay v2 client; connection
//!   limits (established total and per peer, pending each way).
//! - **Gossipsub** on three typed topics ([`Topic`], `/cohort/<chain-id>/<kind>/1`), signed
//!   (strict), with application validation: every message waits for a [`Verdict`] from the node
//!   ([`NetworkHandle::report_validation`]). Message ids are the sha256 of the gossiped bytes.
//!   Peer scoring is on (see `behaviour::score_params`): a rejected message costs its senders
//!   20 points squared per message (P4; graylisting at -80 means two invalid messages cut a peer
//!   off until they decay, an hour to a tenth), and [`NetworkHandle::penalize`] feeds the node's
//!   own judgement into P5.
//! - **Request-response** with a length-prefixed, size-limited codec (`wire`): `/cohort/<chain>/blob/1`
//!   fetches bytes by sha256 digest; `/cohort/<chain>/state/1` returns a state manifest (the
//!   latest checkpoint as chunk digests + opaque certificates after a height), whose chunks are
//!   then fetched by digest. Every blob is checked against the digest it was asked for; a
//!   mismatch is refused, counted and costs the sender score, and the next peer is asked.
//! - **Discovery**: bootstrap multiaddrs, identify (its protocol version carries the chain id;
//!   peers of other networks are disconnected), Kademlia on `/cohort/<chain>/kad/1.0.0` (server
//!   mode forced by config, else AutoNAT decides), newly found peers dialled up to
//!   `target_peers`; mDNS when configured; AutoNAT + DCUtR + relay client for NATed nodes, relay
//!   server when configured.
//! - **Counters** ([`NetworkCounters`]): transport bytes, blob/state protocol bytes, per-topic
//!   payload bytes and messages, verdicts by topic and reason, digest mismatches, dropped events.
//!
//! # Serving blobs and state
//! Blob requests are answered from a byte-bounded LRU inside this crate (filled by
//! [`NetworkHandle::provide_blob`], by publishing on an announce-fetch topic, and by every blob
//! fetched), then from the chunks of the last checkpoints served. On a miss the node is asked
//! with [`NetworkEvent::InboundBlobRequest`] (a oneshot to answer, half the request timeout to do
//! it). State requests always go to the node as [`NetworkEvent::InboundStateRequest`]; the node
//! answers with a [`StateSnapshot`] and this crate chunks the checkpoint and keeps it to serve the
//! chunks. At most `max_pending_inbound` requests wait on the node; more are answered "not found".
//!
//! # Large messages: announce-then-fetch
//! (Filled in with measured numbers below.)
//!
//! # Bad input
//! Frames over a protocol's limit fail on their length prefix; undecodable frames and wrong
//! sizes are errors, never panics; gossip beyond a topic's limit is refused by gossipsub (P4);
//! messages on foreign topics are rejected; every queue is bounded (commands, events, pending
//! verdicts, concurrent fetches, inbound requests waiting on the node, the blob cache).
//!
//! # Modules
//! - `handle`: [`Network`], [`NetworkHandle`], [`NetworkEvent`], commands.
//! - `task`: the swarm-owning event loop.
//! - `behaviour`: the composed behaviour, gossipsub and scoring parameters, swarm construction.
//! - `wire`: request-response codec, frames, announcements, state manifest.
//! - `config`, `topic`, `digest`, `counters`, `blobs`, `error`.

mod behaviour;
mod blobs;
mod config;
mod counters;
mod digest;
mod error;
mod handle;
mod task;
mod topic;
mod wire;

pub use config::{NetworkConfig, TopicConfig, Transfer};
pub use counters::{ByteCounts, NetworkCounters, Outcome, TopicCounters, VerdictCount};
pub use digest::{Digest, MessageId};
pub use error::Error;
pub use handle::{
    Checkpoint, Network, NetworkEvent, NetworkHandle, PeerAction, StateSnapshot, Verdict,
};
pub use libp2p::{Multiaddr, PeerId, identity::Keypair};
pub use topic::Topic;
