//! The composed libp2p behaviour and the swarm construction.

use std::{collections::HashSet, net::IpAddr, sync::Arc, time::Duration};

use libp2p::{
    PeerId, StreamProtocol, Swarm, SwarmBuilder, allow_block_list, autonat, connection_limits,
    core::{Transport as _, muxing::StreamMuxerBox, upgrade},
    dcutr, gossipsub, identify,
    identity::Keypair,
    kad, mdns, noise, quic, relay, request_response,
    swarm::{NetworkBehaviour, behaviour::toggle::Toggle},
    tcp, yamux,
};

use crate::{
    Error, MessageId, Topic,
    config::{NetworkConfig, Transfer},
    counters::{CountingMuxer, WireCounters},
    wire::{
        self, Announcement, BlobRequest, BlobResponse, FrameCodec, StateRequest, StateResponse,
    },
};

/// Room for the gossipsub envelope around a payload (topic, sequence number, key, signature,
/// protobuf framing, control messages in the same RPC).
const GOSSIP_ENVELOPE: usize = 64 << 10;

/// Gossip bytes allowed on an announce-fetch topic: the announcement, with room to spare.
const ANNOUNCE_MAX: usize = 1024;

pub(crate) type BlobBehaviour = request_response::Behaviour<FrameCodec<BlobRequest, BlobResponse>>;
pub(crate) type StateBehaviour =
    request_response::Behaviour<FrameCodec<StateRequest, StateResponse>>;

/// Every protocol the node speaks. The block list and connection limits come first so a banned
/// peer or a connection over the limit is refused before any other behaviour sees it.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub blob: BlobBehaviour,
    pub state: StateBehaviour,
    pub identify: identify::Behaviour,
    pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub relay_client: Toggle<relay::client::Behaviour>,
    pub dcutr: Toggle<dcutr::Behaviour>,
    pub autonat: Toggle<autonat::Behaviour>,
    pub relay_server: Toggle<relay::Behaviour>,
}

/// Gossip bytes a topic may carry on the wire.
pub(crate) fn gossip_limit(config: &NetworkConfig, topic: Topic) -> usize {
    let tc = config.topic(topic);
    match tc.transfer {
        Transfer::Inline => tc.max_message_size,
        Transfer::AnnounceFetch => ANNOUNCE_MAX.max(Announcement::LEN),
    }
}

fn gossipsub_config(config: &NetworkConfig) -> Result<gossipsub::Config, Error> {
    let heartbeat = config.heartbeat_interval;
    // Messages stay in the cache (and may be validated) for the whole validation timeout.
    let history =
        (config.validation_timeout.as_secs_f64() / heartbeat.as_secs_f64()).ceil() as usize;
    let history = history.clamp(5, 600);
    let d = config.mesh_n;
    let mut b = gossipsub::ConfigBuilder::default();
    b.heartbeat_interval(heartbeat)
        .heartbeat_initial_delay(heartbeat)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(|m: &gossipsub::Message| MessageId::of(&m.data).to_gossipsub())
        .mesh_n(d)
        .mesh_n_low((d * 2 / 3).max(2))
        .mesh_n_high(d * 2)
        .mesh_outbound_min((d / 3).max(1))
        .gossip_lazy(d)
        .history_length(history)
        .history_gossip(3.min(history))
        .flood_publish(config.flood_publish)
        .duplicate_cache_time(
            config
                .duplicate_cache_time
                .max(config.validation_timeout * 2),
        )
        .window_capacity(config.window_messages)
        // Large inline messages need longer than the 5 s / 1 s defaults to leave the queue.
        .publish_queue_duration(Duration::from_secs(30))
        .forward_queue_duration(Duration::from_secs(10))
        .max_transmit_size(
            Topic::ALL
                .into_iter()
                .map(|t| gossip_limit(config, t))
                .max()
                .unwrap_or(ANNOUNCE_MAX)
                + GOSSIP_ENVELOPE,
        );
    for topic in Topic::ALL {
        b.max_transmit_size_for_topic(gossip_limit(config, topic), topic.hash(&config.chain_id));
    }
    b.build().map_err(|e| Error::Config {
        reason: format!("gossipsub: {e}"),
    })
}

/// Peer scoring: P1/P2 reward staying in the mesh and delivering first (small, capped), P3 is off
/// (our topics carry a message per validator per round, far below any delivery-rate threshold),
/// P4 punishes rejected messages hard and slowly forgets them, P5 carries the node's own
/// judgement ([`crate::PeerAction`]), P6 ignores loopback (local testnets).
pub(crate) fn score_params(
    config: &NetworkConfig,
) -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut params = gossipsub::PeerScoreParams {
        app_specific_weight: 1.0,
        ip_colocation_factor_whitelist: HashSet::from([
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ]),
        ..Default::default()
    };
    for topic in Topic::ALL {
        let topic_weight = match topic {
            Topic::Consensus | Topic::Deltas => 1.0,
            Topic::Membership => 0.5,
        };
        let tp = gossipsub::TopicScoreParams {
            topic_weight,
            time_in_mesh_weight: 0.01,
            time_in_mesh_quantum: Duration::from_secs(1),
            time_in_mesh_cap: 300.0,
            first_message_deliveries_weight: 0.5,
            first_message_deliveries_decay: gossipsub::score_parameter_decay(Duration::from_secs(
                600,
            )),
            first_message_deliveries_cap: 20.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            invalid_message_deliveries_weight: -20.0,
            invalid_message_deliveries_decay: gossipsub::score_parameter_decay(
                Duration::from_secs(3600),
            ),
            ..Default::default()
        };
        params.topics.insert(topic.hash(&config.chain_id), tp);
    }
    (params, gossipsub::PeerScoreThresholds::default())
}

/// Builds the swarm: TCP + noise + yamux and QUIC (every connection counted), DNS, relay client,
/// and the behaviours enabled in `config`.
pub(crate) fn build_swarm(
    config: &NetworkConfig,
    keypair: Keypair,
    counters: Arc<WireCounters>,
) -> Result<Swarm<Behaviour>, Error> {
    let build_err = |e: &dyn std::fmt::Display| Error::Build {
        reason: e.to_string(),
    };
    let gossip_cfg = gossipsub_config(config)?;
    let transport_counters = counters.clone();
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(move |key| {
            let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .upgrade(upgrade::Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
            let quic = quic::tokio::Transport::new(quic::Config::new(key))
                .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
            let counters = transport_counters;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                tcp.or_transport(quic)
                    .map(|either, _| either.into_inner())
                    .map(move |(peer, muxer), _| {
                        (peer, CountingMuxer::new(muxer, counters.clone()))
                    }),
            )
        })
        .map_err(|e| build_err(&e))?
        .with_dns()
        .map_err(|e| build_err(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| build_err(&e))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_cfg,
            )?;
            let (params, thresholds) = score_params(config);
            gossipsub.with_peer_score(params, thresholds)?;
            for topic in Topic::ALL {
                gossipsub.subscribe(&topic.ident(&config.chain_id))?;
            }

            let rr_cfg = request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(64);
            let blob = request_response::Behaviour::with_codec(
                FrameCodec::new(64, config.max_blob_bytes() + 16, counters.blob.clone()),
                [(
                    wire::blob_protocol(&config.chain_id),
                    request_response::ProtocolSupport::Full,
                )],
                rr_cfg.clone(),
            );
            let state = request_response::Behaviour::with_codec(
                FrameCodec::new(64, config.max_state_manifest_bytes, counters.state.clone()),
                [(
                    wire::state_protocol(&config.chain_id),
                    request_response::ProtocolSupport::Full,
                )],
                rr_cfg,
            );

            let identify = identify::Behaviour::new(
                identify::Config::new(wire::identify_version(&config.chain_id), key.public())
                    .with_push_listen_addr_updates(true),
            );

            let kad = config.kademlia.then(|| {
                let mut kcfg = kad::Config::new(wire::kad_protocol(&config.chain_id));
                kcfg.set_query_timeout(Duration::from_secs(30));
                let mut kad = kad::Behaviour::with_config(
                    peer_id,
                    kad::store::MemoryStore::new(peer_id),
                    kcfg,
                );
                if config.kademlia_server {
                    kad.set_mode(Some(kad::Mode::Server));
                }
                kad
            });

            let mdns = if config.mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };

            let limits = connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_connections))
                .with_max_established_per_peer(Some(config.max_connections_per_peer))
                .with_max_pending_incoming(Some(config.max_pending_connections))
                .with_max_pending_outgoing(Some(config.max_pending_connections));

            let nat = config.nat_traversal;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(limits),
                gossipsub,
                blob,
                state,
                identify,
                kad: kad.into(),
                mdns: mdns.into(),
                relay_client: nat.then_some(relay_client).into(),
                dcutr: nat.then(|| dcutr::Behaviour::new(peer_id)).into(),
                autonat: nat
                    .then(|| autonat::Behaviour::new(peer_id, autonat::Config::default()))
                    .into(),
                relay_server: config
                    .relay_server
                    .then(|| relay::Behaviour::new(peer_id, relay::Config::default()))
                    .into(),
            })
        })
        .map_err(|e| build_err(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();
    Ok(swarm)
}

/// Whether `protocols` (from identify) include our Kademlia protocol.
pub(crate) fn speaks_kad(protocols: &[StreamProtocol], chain_id: &str) -> bool {
    let kad = wire::kad_protocol(chain_id);
    protocols.contains(&kad)
}

/// The peer id at the end of a `/p2p/<id>` multiaddr.
pub(crate) fn peer_of(addr: &libp2p::Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}
