//! Network configuration, parsed once by the node into this typed struct.

use std::time::Duration;

use libp2p::Multiaddr;

use crate::topic::Topic;

/// How the payload of a topic travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// The payload is the gossipsub message itself (small messages: votes, membership).
    Inline,
    /// Gossipsub carries a small announcement (digest + length); every receiver fetches the bytes
    /// once, by digest, from the peer that announced them, before validation (large payloads:
    /// deltas). Receivers see the full bytes in [`crate::NetworkEvent::Message`] either way.
    AnnounceFetch,
}

/// Per-topic settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfig {
    /// Largest payload accepted or published on this topic, in bytes. Larger messages are
    /// refused before anyone's memory holds them and cost the sender score.
    pub max_message_size: usize,
    /// How the payload travels.
    pub transfer: Transfer,
}

/// Everything [`crate::Network::spawn`] needs.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Chain id; part of every topic and protocol name, so two networks never mix.
    pub chain_id: String,
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/9000`, `/ip4/0.0.0.0/udp/9000/quic-v1`).
    pub listen_addrs: Vec<Multiaddr>,
    /// Peers to dial at start (`--bootstrap`); with a `/p2p/<peer-id>` suffix they also seed
    /// Kademlia directly.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses this node is known to be reachable at (e.g. a public IP with port forwarding);
    /// announced to peers and, being confirmed, switch Kademlia to server mode.
    pub external_addrs: Vec<Multiaddr>,
    /// Settings of [`Topic::Deltas`].
    pub deltas: TopicConfig,
    /// Settings of [`Topic::Consensus`].
    pub consensus: TopicConfig,
    /// Settings of [`Topic::Membership`].
    pub membership: TopicConfig,
    /// Gossipsub heartbeat (mesh maintenance, gossip emission, score decay tick).
    pub heartbeat_interval: Duration,
    /// Gossipsub mesh degree D (D_low = D - 1 ... D_high = 2 D, D_out = D / 3).
    pub mesh_n: usize,
    /// Send our own messages to every subscribed peer, not only the mesh. Only announcements and
    /// small messages travel inline by default, so this costs little and lowers latency.
    pub flood_publish: bool,
    /// How long a message may wait for the application's verdict (and, for announce-fetch
    /// topics, for its bytes) before it is dropped as ignored.
    pub validation_timeout: Duration,
    /// Force Kademlia into server mode (answer DHT queries). Bootstrap and testnet nodes want
    /// this; otherwise the mode follows AutoNAT's view of reachability.
    pub kademlia_server: bool,
    /// Run Kademlia at all (tests of a fixed topology switch it off).
    pub kademlia: bool,
    /// Discover peers on the local network with mDNS (testnets).
    pub mdns: bool,
    /// Relay v2 client + DCUtR hole punching + AutoNAT probing (public networks behind NAT).
    pub nat_traversal: bool,
    /// Act as a relay v2 server for NATed peers (only on publicly reachable nodes).
    pub relay_server: bool,
    /// Dial peers found by discovery until this many are connected.
    pub target_peers: usize,
    /// Connection limits (established, in + out).
    pub max_connections: u32,
    /// Connection limits (established, per peer).
    pub max_connections_per_peer: u32,
    /// Connection limits (pending handshakes, each direction).
    pub max_pending_connections: u32,
    /// Close connections without traffic after this long.
    pub idle_connection_timeout: Duration,
    /// Timeout of one request-response exchange.
    pub request_timeout: Duration,
    /// How many different peers one blob fetch tries before it gives up.
    pub fetch_attempts: usize,
    /// Blobs fetched or fetching at once for announce-fetch topics; more announcements are ignored.
    pub max_concurrent_fetches: usize,
    /// How long gossipsub remembers a message id to drop duplicates (at least twice the
    /// validation timeout), and how long its peer-score delivery records live (the vendored
    /// patch, `vendor/README.md`). Memory grows with messages per second times this.
    pub duplicate_cache_time: Duration,
    /// Gossip messages expected within `duplicate_cache_time` at the busiest. Gossipsub's
    /// duplicate cache, message cache and peer-score delivery records are allocated for that many
    /// at start (the vendored patch, `vendor/README.md`), so their memory does not rise each
    /// time a window is busier than any before; 0 lets them grow as messages come.
    pub window_messages: usize,
    /// Bytes of blobs this node keeps to serve peers (its own and fetched payloads, state chunks).
    pub blob_cache_bytes: usize,
    /// Size of one checkpoint chunk in state sync.
    pub state_chunk_size: usize,
    /// Largest checkpoint a state sync accepts.
    pub max_state_bytes: usize,
    /// Largest state manifest (checkpoint metadata + certificates) a response may carry.
    pub max_state_manifest_bytes: usize,
    /// Capacity of the command channel into the network task.
    pub command_buffer: usize,
    /// Capacity of the event channel out of the network task. When the node falls behind, new
    /// messages are dropped (counted, verdict "ignore") rather than stalling the swarm.
    pub event_buffer: usize,
    /// Inbound requests waiting on the node at once; more are answered "not found".
    pub max_pending_inbound: usize,
}

impl NetworkConfig {
    /// Production defaults for `chain_id`: listen on TCP and QUIC port 9000, no bootstrap peers.
    pub fn new(chain_id: impl Into<String>) -> Self {
        let listen = |s: &str| s.parse().expect("static multiaddr is valid");
        NetworkConfig {
            chain_id: chain_id.into(),
            listen_addrs: vec![
                listen("/ip4/0.0.0.0/tcp/9000"),
                listen("/ip4/0.0.0.0/udp/9000/quic-v1"),
            ],
            bootstrap: Vec::new(),
            external_addrs: Vec::new(),
            deltas: TopicConfig {
                max_message_size: 16 << 20,
                transfer: Transfer::AnnounceFetch,
            },
            consensus: TopicConfig {
                max_message_size: 256 << 10,
                transfer: Transfer::Inline,
            },
            membership: TopicConfig {
                max_message_size: 16 << 10,
                transfer: Transfer::Inline,
            },
            heartbeat_interval: Duration::from_secs(1),
            mesh_n: 6,
            flood_publish: true,
            validation_timeout: Duration::from_secs(30),
            kademlia_server: false,
            kademlia: true,
            mdns: false,
            nat_traversal: true,
            relay_server: false,
            target_peers: 25,
            max_connections: 128,
            max_connections_per_peer: 2,
            max_pending_connections: 32,
            idle_connection_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            fetch_attempts: 6,
            max_concurrent_fetches: 64,
            duplicate_cache_time: Duration::from_secs(120),
            window_messages: 0,
            blob_cache_bytes: 512 << 20,
            state_chunk_size: 1 << 20,
            max_state_bytes: 1 << 30,
            max_state_manifest_bytes: 16 << 20,
            command_buffer: 256,
            event_buffer: 1024,
            max_pending_inbound: 64,
        }
    }

    /// A local testnet: mDNS on, Kademlia in server mode, no NAT traversal.
    pub fn testnet(chain_id: impl Into<String>) -> Self {
        NetworkConfig {
            mdns: true,
            kademlia_server: true,
            nat_traversal: false,
            ..NetworkConfig::new(chain_id)
        }
    }

    /// In-process tests: TCP on `127.0.0.1:0`, fast heartbeats, Kademlia server mode, no mDNS,
    /// no NAT traversal, short timeouts.
    pub fn for_tests(chain_id: impl Into<String>) -> Self {
        NetworkConfig {
            listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr")],
            heartbeat_interval: Duration::from_millis(100),
            validation_timeout: Duration::from_secs(10),
            kademlia_server: true,
            mdns: false,
            nat_traversal: false,
            request_timeout: Duration::from_secs(10),
            duplicate_cache_time: Duration::from_secs(120),
            blob_cache_bytes: 64 << 20,
            ..NetworkConfig::new(chain_id)
        }
    }

    /// Settings of `topic`.
    pub fn topic(&self, topic: Topic) -> TopicConfig {
        match topic {
            Topic::Deltas => self.deltas,
            Topic::Consensus => self.consensus,
            Topic::Membership => self.membership,
        }
    }

    /// Largest payload a blob response may carry: any announce-fetch payload or a state chunk.
    pub(crate) fn max_blob_bytes(&self) -> usize {
        Topic::ALL
            .into_iter()
            .map(|t| self.topic(t))
            .filter(|c| c.transfer == Transfer::AnnounceFetch)
            .map(|c| c.max_message_size)
            .chain(std::iter::once(self.state_chunk_size))
            .max()
            .unwrap_or(self.state_chunk_size)
    }

    /// Checks the settings that would otherwise fail deep inside libp2p.
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        let bad = |reason: &str| {
            Err(crate::Error::Config {
                reason: reason.to_string(),
            })
        };
        if self.chain_id.is_empty() || self.chain_id.contains('/') {
            return bad("chain_id must be non-empty and contain no '/'");
        }
        if self.mesh_n < 3 {
            return bad("mesh_n must be at least 3");
        }
        if self.state_chunk_size == 0 || self.state_chunk_size > 64 << 20 {
            return bad("state_chunk_size must be in 1..=64 MiB");
        }
        if self.fetch_attempts == 0 {
            return bad("fetch_attempts must be at least 1");
        }
        if self.command_buffer == 0 || self.event_buffer == 0 {
            return bad("channel buffers must be non-zero");
        }
        for topic in Topic::ALL {
            if self.topic(topic).max_message_size < 128 {
                return bad("a topic's max_message_size must be at least 128 bytes");
            }
        }
        Ok(())
    }
}
