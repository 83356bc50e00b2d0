//! Transports and toggles: QUIC, relay server, AutoNAT/DCUtR/relay client; the application
//! score hook and bans; inline transfer of a large delta.

mod common;

use common::*;
use gossip::{Digest, PeerAction, Topic, Transfer};

/// Two nodes over QUIC only, with NAT traversal (relay client, DCUtR, AutoNAT), a relay server
/// and mDNS switched on, exchange a consensus message. (mDNS discovery itself needs a multicast
/// interface, which loopback-only test listeners do not offer; here it must only start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_with_nat_traversal_relay_server_and_mdns() -> anyhow::Result<()> {
    let quic = |boot: Option<gossip::Multiaddr>| {
        let mut cfg = config("quic");
        cfg.listen_addrs = vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("valid")];
        cfg.nat_traversal = true;
        cfg.relay_server = true;
        cfg.mdns = true;
        cfg.bootstrap = boot.into_iter().collect();
        cfg
    };
    let a = spawn(quic(None), Behaviour::default()).await;
    assert!(a.addr.to_string().contains("/quic-v1/"), "{}", a.addr);
    let b = spawn(quic(Some(a.addr.clone())), Behaviour::default()).await;
    let nodes = [a, b];
    wait_for_mesh(&nodes, Topic::Consensus, 1).await;
    let [a, mut b] = nodes;
    a.handle
        .publish(Topic::Consensus, b"over quic".to_vec())
        .await?;
    let got = next_message(&mut b).await;
    assert_eq!(got.data, b"over quic");
    assert_eq!(got.from, a.peer);
    Ok(())
}

/// `penalize` lowers the gossipsub score through the application-specific weight, and `Fatal`
/// disconnects and bans the peer: it cannot come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalties_lower_score_and_fatal_bans() -> anyhow::Result<()> {
    let judge = spawn(config("ban"), Behaviour::default()).await;
    let mut cfg = config("ban");
    cfg.kademlia = false;
    let culprit = spawn(cfg, Behaviour::default()).await;
    culprit.handle.dial(judge.addr.clone()).await?;
    let (jh, cp) = (judge.handle.clone(), culprit.peer);
    eventually("culprit connected", || {
        let jh = jh.clone();
        async move { jh.peers().await.unwrap_or_default().contains(&cp) }
    })
    .await;
    let before = judge.handle.peer_score(culprit.peer).await?.unwrap_or(0.0);
    judge
        .handle
        .penalize(culprit.peer, PeerAction::LowTolerance)
        .await?;
    let after = judge.handle.peer_score(culprit.peer).await?.unwrap_or(0.0);
    assert!(after <= before - 40.0, "{before} -> {after}");

    judge
        .handle
        .penalize(culprit.peer, PeerAction::Fatal)
        .await?;
    eventually("culprit disconnected", || {
        let jh = jh.clone();
        async move { !jh.peers().await.unwrap_or_default().contains(&cp) }
    })
    .await;
    // The judge refuses to connect to it again.
    let err = judge.handle.dial(culprit.addr.clone()).await.unwrap_err();
    assert!(matches!(err, gossip::Error::Dial { .. }), "{err}");
    assert!(!judge.handle.peers().await?.contains(&culprit.peer));
    Ok(())
}

/// With deltas configured inline (raised size limits), a 4 MiB delta still reaches every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_transfer_carries_a_4mib_delta() -> anyhow::Result<()> {
    let inline = || {
        let mut cfg = config("inline");
        cfg.deltas.transfer = Transfer::Inline;
        cfg.deltas.max_message_size = 5 << 20;
        cfg.flood_publish = false;
        cfg
    };
    let first = spawn(inline(), Behaviour::default()).await;
    let mut nodes = vec![first];
    for _ in 0..3 {
        let mut cfg = inline();
        cfg.bootstrap = vec![nodes[0].addr.clone()];
        nodes.push(spawn(cfg, Behaviour::default()).await);
    }
    wait_for_mesh(&nodes, Topic::Deltas, 2).await;
    let delta = payload(4 << 20, 77);
    nodes[2]
        .handle
        .publish(Topic::Deltas, delta.clone())
        .await?;
    for (i, node) in nodes.iter_mut().enumerate() {
        if i == 2 {
            continue;
        }
        let got = next_message(node).await;
        assert_eq!(Digest::of(&got.data), Digest::of(&delta), "node {i}");
    }
    let c = nodes[0].handle.counters().await?;
    assert_eq!(
        c.topic(Topic::Deltas).gossip_bytes_in,
        4 << 20,
        "inline: the gossip carries the payload itself"
    );
    Ok(())
}

/// A node reachable only through a relay: it reserves a slot on a relay server, a third node
/// dials it through the circuit (and DCUtR may upgrade to a direct connection), and gossip
/// flows between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_node_is_reachable_through_a_relay_server() -> anyhow::Result<()> {
    let nat = || {
        let mut cfg = config("relay");
        cfg.nat_traversal = true;
        cfg.kademlia = false;
        cfg
    };
    let mut relay_cfg = nat();
    relay_cfg.relay_server = true;
    let relay = spawn(relay_cfg, Behaviour::default()).await;
    relay.handle.add_external_addr(relay.addr.clone()).await?;
    let circuit: gossip::Multiaddr = format!("{}/p2p-circuit", relay.addr).parse()?;

    let mut hidden_cfg = nat();
    hidden_cfg.listen_addrs = vec![circuit.clone()];
    hidden_cfg.bootstrap = vec![relay.addr.clone()];
    let mut hidden = spawn(hidden_cfg, Behaviour::default()).await;
    assert!(
        hidden.addr.to_string().contains("/p2p-circuit"),
        "{}",
        hidden.addr
    );

    let dialer = spawn(nat(), Behaviour::default()).await;
    dialer
        .handle
        .dial(format!("{circuit}/p2p/{}", hidden.peer).parse()?)
        .await?;
    let nodes = [dialer];
    let hidden_peer = hidden.peer;
    let h = nodes[0].handle.clone();
    eventually("the dialer meshes with the hidden node", || {
        let h = h.clone();
        async move {
            h.mesh_peers(Topic::Consensus)
                .await
                .unwrap_or_default()
                .contains(&hidden_peer)
        }
    })
    .await;
    let [dialer] = nodes;
    dialer
        .handle
        .publish(Topic::Consensus, b"through the relay".to_vec())
        .await?;
    let got = next_message(&mut hidden).await;
    assert_eq!(got.data, b"through the relay");
    // Directly from the dialer, or forwarded by the relay (a gossip peer too).
    assert!(got.from == dialer.peer || got.from == relay.peer);
    assert!(dialer.handle.peers().await?.contains(&hidden.peer));
    Ok(())
}
