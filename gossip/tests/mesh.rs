//! Several swarms in one process on 127.0.0.1: mesh formation, delivery, large deltas,
//! rejection, discovery and sync.

mod common;

use std::{collections::HashMap, sync::Arc};

use common::*;
use gossip::{
    Checkpoint, Digest, Error, NetworkConfig, Outcome, StateSnapshot, Topic, Transfer, Verdict,
};

/// 8 nodes from one bootstrap address form a mesh; a vote from one reaches all; a 4 MiB delta
/// from another reaches all, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_mesh_deliver_votes_and_4mib_deltas() -> anyhow::Result<()> {
    let mut nodes = spawn_star(8, "mesh8").await;
    // Every node finds the others (Kademlia), not only the bootstrap node.
    for node in &nodes {
        let handle = node.handle.clone();
        eventually("every node connects to all 7 others", || {
            let handle = handle.clone();
            async move { handle.peers().await.map(|p| p.len()).unwrap_or(0) == 7 }
        })
        .await;
    }
    wait_for_mesh(&nodes, Topic::Consensus, 3).await;
    wait_for_mesh(&nodes, Topic::Deltas, 3).await;

    let vote = b"prevote round 7".to_vec();
    nodes[3]
        .handle
        .publish(Topic::Consensus, vote.clone())
        .await?;
    for (i, node) in nodes.iter_mut().enumerate() {
        if i == 3 {
            continue;
        }
        let got = next_message(node).await;
        assert_eq!(got.topic, Topic::Consensus);
        assert_eq!(got.data, vote, "node {i}");
    }

    let delta = payload(4 << 20, 5);
    let digest = Digest::of(&delta);
    nodes[5]
        .handle
        .publish(Topic::Deltas, delta.clone())
        .await?;
    for (i, node) in nodes.iter_mut().enumerate() {
        if i == 5 {
            continue;
        }
        let got = next_message(node).await;
        assert_eq!(got.topic, Topic::Deltas);
        assert_eq!(got.data.len(), 4 << 20, "node {i}");
        assert_eq!(Digest::of(&got.data), digest, "node {i}");
    }
    let c = nodes[0].handle.counters().await?;
    assert_eq!(c.topic(Topic::Deltas).received_messages, 1);
    assert_eq!(c.topic(Topic::Deltas).received_bytes, 4 << 20);
    assert_eq!(c.verdicts_for(Topic::Deltas, Outcome::Accepted), 1);
    assert!(c.transport.bytes_in >= 4 << 20, "{c:?}");
    assert_eq!(c.peers_connected, 7);
    for node in &nodes {
        node.handle.shutdown().await?;
    }
    Ok(())
}

/// A line A - B - C without discovery: B rejects what A publishes, so C never sees it and B
/// scores A down; a valid message still crosses the same path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_message_is_not_forwarded_and_lowers_score() -> anyhow::Result<()> {
    let line = |boot: Option<gossip::Multiaddr>| {
        let mut cfg = config("reject");
        cfg.kademlia = false;
        cfg.bootstrap = boot.into_iter().collect();
        cfg
    };
    let a = spawn(line(None), Behaviour::default()).await;
    let b = spawn(
        line(Some(a.addr.clone())),
        Behaviour {
            verdict: Arc::new(|_, data: &[u8]| {
                if data.starts_with(b"bad") {
                    Verdict::Reject("bad_signature")
                } else {
                    Verdict::Accept
                }
            }),
            ..Behaviour::default()
        },
    )
    .await;
    let mut c = spawn(line(Some(b.addr.clone())), Behaviour::default()).await;
    let nodes = [a, b];
    wait_for_mesh(&nodes, Topic::Consensus, 1).await;
    let [a, b] = nodes;
    let b_handle = b.handle.clone();
    let (a_peer, c_peer) = (a.peer, c.peer);
    eventually("B meshes with A and C", || {
        let h = b_handle.clone();
        async move {
            let mesh = h.mesh_peers(Topic::Consensus).await.unwrap_or_default();
            mesh.contains(&a_peer) && mesh.contains(&c_peer)
        }
    })
    .await;
    assert!(!c.handle.peers().await?.contains(&a.peer), "C knows only B");
    let score_before = b.handle.peer_score(a.peer).await?.unwrap_or(0.0);

    a.handle
        .publish(Topic::Consensus, b"bad vote".to_vec())
        .await?;
    a.handle
        .publish(Topic::Consensus, b"good vote".to_vec())
        .await?;
    let got = next_message(&mut c).await;
    assert_eq!(
        got.data, b"good vote",
        "the rejected message never reaches C"
    );
    assert_eq!(got.from, b.peer);

    let cb = b.handle.counters().await?;
    assert_eq!(cb.verdicts_for(Topic::Consensus, Outcome::Rejected), 1);
    assert!(
        cb.verdicts
            .iter()
            .any(|v| v.reason == "bad_signature" && v.count == 1)
    );
    let cc = c.handle.counters().await?;
    assert_eq!(cc.topic(Topic::Consensus).received_messages, 1);
    let score_after = b.handle.peer_score(a.peer).await?.unwrap_or(0.0);
    assert!(
        score_after < score_before && score_after < 0.0,
        "A's score at B: {score_before} -> {score_after}"
    );
    Ok(())
}

/// A node that joins later finds every peer through Kademlia from one bootstrap address, fetches
/// a blob by digest from the one peer that has it, and syncs a three-chunk state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_discovers_all_and_syncs_blob_and_state() -> anyhow::Result<()> {
    let checkpoint = payload(2_500_000, 11);
    let certs: Vec<Vec<u8>> = (0..20u8).map(|h| vec![h; 100]).collect();
    let state = {
        let checkpoint = checkpoint.clone();
        let certs = certs.clone();
        move |from: u64| {
            Some(StateSnapshot {
                checkpoint: Some(Checkpoint {
                    meta: b"height=19".to_vec(),
                    bytes: checkpoint.clone(),
                }),
                certificates: certs[from as usize..].to_vec(),
            })
        }
    };
    let chain = "joiner";
    let mut nodes = spawn_star(7, chain).await;
    let mut cfg = config(chain);
    cfg.bootstrap = vec![nodes[0].addr.clone()];
    cfg.state_chunk_size = 1 << 20;
    nodes.push(
        spawn(
            cfg,
            Behaviour {
                state: Some(Arc::new(state)),
                ..Behaviour::default()
            },
        )
        .await,
    );
    let blob = payload(300_000, 3);
    let digest = nodes[6].handle.provide_blob(blob.clone()).await?;
    assert_eq!(digest, Digest::of(&blob));

    let mut cfg = config(chain);
    cfg.bootstrap = vec![nodes[0].addr.clone()];
    let joiner = spawn(cfg, Behaviour::default()).await;
    let everyone: Vec<_> = nodes.iter().map(|n| n.peer).collect();
    let handle = joiner.handle.clone();
    eventually("the joiner connects to all 8 peers", || {
        let handle = handle.clone();
        let everyone = everyone.clone();
        async move {
            let peers = handle.peers().await.unwrap_or_default();
            everyone.iter().all(|p| peers.contains(p))
        }
    })
    .await;

    let got = joiner
        .handle
        .request_blob(Some(nodes[6].peer), digest)
        .await?;
    assert_eq!(got, blob);
    // Without a hint the joiner asks peers until one has it (or gives up after fetch_attempts).
    let unknown = Digest::of(b"nobody has this");
    let err = joiner.handle.request_blob(None, unknown).await.unwrap_err();
    assert!(
        matches!(err, Error::BlobNotFound { asked, .. } if asked >= 1),
        "{err}"
    );

    let synced = joiner.handle.request_state(nodes[7].peer, 5).await?;
    let cp = synced.checkpoint.expect("checkpoint offered");
    assert_eq!(cp.meta, b"height=19");
    assert_eq!(cp.bytes, checkpoint);
    assert_eq!(synced.certificates, certs[5..].to_vec());
    let c = joiner.handle.counters().await?;
    // Three chunks of at most 1 MiB plus the blob came over the blob protocol.
    assert!(c.blob_protocol.bytes_in >= 2_500_000 + 300_000, "{c:?}");
    assert!(c.state_protocol.bytes_in > 0);

    // A peer with nothing to offer says so.
    let err = joiner
        .handle
        .request_state(nodes[1].peer, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StateUnavailable { .. }), "{err}");
    Ok(())
}

/// A peer that answers a blob request with other bytes is refused and loses score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_not_matching_its_digest_is_refused() -> anyhow::Result<()> {
    let wanted = payload(10_000, 1);
    let digest = Digest::of(&wanted);
    let mut lies = HashMap::new();
    lies.insert(digest, payload(10_000, 2));
    let liar = spawn(
        config("liar"),
        Behaviour {
            blobs: Arc::new(lies),
            ..Behaviour::default()
        },
    )
    .await;
    let mut cfg = config("liar");
    cfg.bootstrap = vec![liar.addr.clone()];
    let asker = spawn(cfg, Behaviour::default()).await;
    let handle = asker.handle.clone();
    let liar_peer = liar.peer;
    eventually("connected", || {
        let handle = handle.clone();
        async move {
            handle
                .peers()
                .await
                .unwrap_or_default()
                .contains(&liar_peer)
        }
    })
    .await;

    let err = asker
        .handle
        .request_blob(Some(liar.peer), digest)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BlobNotFound { asked: 1, .. }), "{err}");
    let c = asker.handle.counters().await?;
    assert_eq!(c.digest_mismatches, 1);
    let score = asker.handle.peer_score(liar.peer).await?.unwrap_or(0.0);
    assert!(score < 0.0, "liar's score {score}");
    Ok(())
}

/// Oversized input: publishing over a topic's limit is refused locally, and a peer configured
/// with a larger limit cannot push an oversized message through: it is dropped and costs score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_refused_and_cost_score() -> anyhow::Result<()> {
    let strict = spawn(config("size"), Behaviour::default()).await;
    let mut loose_cfg: NetworkConfig = config("size");
    loose_cfg.bootstrap = vec![strict.addr.clone()];
    loose_cfg.membership.max_message_size = 64 << 10;
    loose_cfg.membership.transfer = Transfer::Inline;
    let mut loose = spawn(loose_cfg, Behaviour::default()).await;
    let nodes = [strict, loose];
    wait_for_mesh(&nodes, Topic::Membership, 1).await;
    let [mut strict, l] = nodes;
    loose = l;

    let err = strict
        .handle
        .publish(Topic::Membership, vec![0; 17 << 10])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MessageTooLarge { .. }), "{err}");

    loose
        .handle
        .publish(Topic::Membership, payload(40 << 10, 9))
        .await?;
    loose
        .handle
        .publish(Topic::Membership, b"join request".to_vec())
        .await?;
    let got = next_message(&mut strict).await;
    assert_eq!(
        got.data, b"join request",
        "the oversized message was dropped"
    );
    let loose_peer = loose.peer;
    let handle = strict.handle.clone();
    eventually("the sender's score drops", || {
        let handle = handle.clone();
        async move {
            handle
                .peer_score(loose_peer)
                .await
                .ok()
                .flatten()
                .unwrap_or(0.0)
                < 0.0
        }
    })
    .await;
    Ok(())
}

/// A response frame over the protocol's size limit is refused on its length prefix and costs
/// the sender score.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_frame_is_refused_and_costs_score() -> anyhow::Result<()> {
    let digest = Digest::of(b"small");
    let mut answers = HashMap::new();
    answers.insert(digest, payload(3 << 20, 4));
    let server = spawn(
        config("frames"),
        Behaviour {
            blobs: Arc::new(answers),
            ..Behaviour::default()
        },
    )
    .await;
    let mut cfg = config("frames");
    cfg.deltas.max_message_size = 1 << 20;
    cfg.state_chunk_size = 1 << 20;
    cfg.bootstrap = vec![server.addr.clone()];
    let asker = spawn(cfg, Behaviour::default()).await;
    let (handle, server_peer) = (asker.handle.clone(), server.peer);
    eventually("connected", || {
        let handle = handle.clone();
        async move {
            handle
                .peers()
                .await
                .unwrap_or_default()
                .contains(&server_peer)
        }
    })
    .await;
    let err = asker
        .handle
        .request_blob(Some(server.peer), digest)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BlobNotFound { .. }), "{err}");
    let c = asker.handle.counters().await?;
    assert_eq!(c.digest_mismatches, 0, "refused before hashing");
    assert!(
        c.blob_protocol.bytes_in < 1 << 20,
        "the oversized body was not read: {c:?}"
    );
    let score = asker.handle.peer_score(server.peer).await?.unwrap_or(0.0);
    assert!(score < 0.0, "server's score {score}");
    Ok(())
}

/// A node of another chain is disconnected as soon as identify tells us so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_another_chain_are_disconnected() -> anyhow::Result<()> {
    let mut ours = spawn(config("chain-a"), Behaviour::default()).await;
    let mut cfg = config("chain-b");
    cfg.bootstrap = vec![ours.addr.clone()];
    let theirs = spawn(cfg, Behaviour::default()).await;
    assert_eq!(next_connection(&mut ours).await, (theirs.peer, true));
    assert_eq!(next_connection(&mut ours).await, (theirs.peer, false));
    assert!(ours.handle.mesh_peers(Topic::Consensus).await?.is_empty());
    Ok(())
}

/// A flood of invalid messages drives the sender's score below the graylist threshold (-80),
/// after which gossipsub ignores everything it sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_invalid_messages_graylists_the_sender() -> anyhow::Result<()> {
    let judge = spawn(
        config("flood"),
        Behaviour {
            verdict: Arc::new(|_, _| Verdict::Reject("garbage")),
            ..Behaviour::default()
        },
    )
    .await;
    let mut cfg = config("flood");
    cfg.bootstrap = vec![judge.addr.clone()];
    let flooder = spawn(cfg, Behaviour::default()).await;
    let nodes = [judge, flooder];
    wait_for_mesh(&nodes, Topic::Consensus, 1).await;
    let [judge, flooder] = nodes;
    for i in 0..5u8 {
        flooder
            .handle
            .publish(Topic::Consensus, vec![i; 100])
            .await?;
    }
    let (handle, peer) = (judge.handle.clone(), flooder.peer);
    eventually("the flooder is graylisted", || {
        let handle = handle.clone();
        async move { handle.peer_score(peer).await.ok().flatten().unwrap_or(0.0) < -80.0 }
    })
    .await;
    let c = judge.handle.counters().await?;
    assert!(
        c.verdicts_for(Topic::Consensus, Outcome::Rejected) >= 3,
        "{c:?}"
    );
    assert_eq!(c.verdicts_for(Topic::Consensus, Outcome::Accepted), 0);
    Ok(())
}

/// A message the node never gives a verdict on is dropped (ignored, counted) after
/// `validation_timeout`, and a late verdict is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_messages_time_out() -> anyhow::Result<()> {
    let mut cfg = config("silent");
    cfg.validation_timeout = std::time::Duration::from_secs(1);
    let mut silent = spawn(
        cfg,
        Behaviour {
            answer: false,
            ..Behaviour::default()
        },
    )
    .await;
    let mut cfg = config("silent");
    cfg.bootstrap = vec![silent.addr.clone()];
    let talker = spawn(cfg, Behaviour::default()).await;
    let nodes = [silent, talker];
    wait_for_mesh(&nodes, Topic::Consensus, 1).await;
    let [s, talker] = nodes;
    silent = s;
    let id = talker
        .handle
        .publish(Topic::Consensus, b"anyone?".to_vec())
        .await?;
    let got = next_message(&mut silent).await;
    assert_eq!(got.data, b"anyone?");
    let handle = silent.handle.clone();
    eventually("the verdict times out", || {
        let handle = handle.clone();
        async move {
            handle.counters().await.is_ok_and(|c| {
                c.verdicts
                    .iter()
                    .any(|v| v.reason == "validation_timeout" && v.outcome == Outcome::Ignored)
            })
        }
    })
    .await;
    let late = silent
        .handle
        .report_validation(id, talker.peer, Verdict::Accept)
        .await?;
    assert!(!late, "a verdict after the timeout is refused");
    Ok(())
}
