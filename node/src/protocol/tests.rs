//! Unit tests of the core's parts, driven through `Core::handle` with hand-made peer input.

use consensus::{
    Height, Message, Signer, ValidatorId, Value, View, Vote, VoteKind, encode_message,
};
use ed25519_dalek::SigningKey;
use gossip::{MessageId, Topic, Verdict};

use super::committed::{ACTIVITY_WINDOW, Committed, RECENT};
use super::pool::{Admission, DeltaPool, Held};
use super::*;
use crate::store::Recovered;
use crate::wire::{DeltaMsg, Included, LedgerEntry, RoundValue};

fn keys() -> Vec<SigningKey> {
    (1..=4u8)
        .map(|b| SigningKey::from_bytes(&[b; 32]))
        .collect()
}

fn genesis(keys: &[SigningKey]) -> crate::genesis::Genesis {
    let ids: Vec<ValidatorId> = keys
        .iter()
        .map(|k| ValidatorId(k.verifying_key().to_bytes()))
        .collect();
    let mut g = crate::genesis::demo("core-test", &ids);
    g.membership.downtime_window = 16;
    // Hand-made join requests here carry no proof of work; one test sets the bits itself.
    g.membership.join_work_bits = 0;
    g.check().expect("genesis")
}

fn empty_store() -> Recovered {
    Recovered {
        ledger: Vec::new(),
        wal: Vec::new(),
        state: None,
        residual: Vec::new(),
        own_delta: None,
        releases: 0,
    }
}

fn core(keys: &[SigningKey]) -> Core {
    let cfg = CoreConfig {
        key: keys[0].clone(),
        genesis: genesis(keys),
        byzantine: None,
        join: false,
        instance: 9,
    };
    let mut c = Core::new(cfg, empty_store()).expect("core");
    c.handle(0, Event::Start).expect("start");
    c
}

fn peer() -> gossip::PeerId {
    crate::keys::peer_id_of(&ValidatorId(keys()[1].verifying_key().to_bytes())).expect("peer")
}

/// Everything the core does with one gossip message from a validator peer.
fn deliver(c: &mut Core, topic: Topic, data: Vec<u8>) -> Vec<Action> {
    c.handle(
        10,
        Event::Gossip {
            topic,
            from: peer(),
            id: MessageId::of(&data),
            data: data.into(),
        },
    )
    .expect("handle")
}

/// Why the core stopped, if it did.
fn fatal_of(actions: Vec<Action>) -> Option<String> {
    actions.into_iter().find_map(|a| match a {
        Action::Fatal(why) => Some(why),
        _ => None,
    })
}

fn gossip(c: &mut Core, topic: Topic, data: Vec<u8>) -> Verdict {
    deliver(c, topic, data)
        .into_iter()
        .find_map(|a| match a {
            Action::Report { verdict, .. } => Some(verdict),
            _ => None,
        })
        .expect("a verdict")
}

fn envelope(m: &Message) -> Vec<u8> {
    let mut b = 1u64.to_le_bytes().to_vec();
    b.extend(encode_message(m).expect("encode"));
    b
}

fn chain() -> consensus::ChainId {
    genesis(&keys()).chain_id
}

fn vote(key: &SigningKey, height: u64, view: u32) -> Message {
    let s = consensus::Ed25519Signer::new(key.clone());
    let v = Vote {
        height: Height(height),
        view: View(view),
        kind: VoteKind::Prevote,
        value: Some(Value(vec![view as u8]).id()),
        validator: s.id(),
    };
    Message::Vote(v.sign(&chain(), &s))
}

#[test]
fn future_messages_are_buffered_only_when_signed_and_at_most_64_per_signer() {
    let k = keys();
    let mut c = core(&k);
    // A vote for height 2 signed by a key outside the set, then a forged signature.
    let outsider = SigningKey::from_bytes(&[99; 32]);
    assert_eq!(
        gossip(&mut c, Topic::Consensus, envelope(&vote(&outsider, 2, 0))),
        Verdict::Reject("bad signature")
    );
    let Message::Vote(mut forged) = vote(&k[1], 2, 0) else {
        unreachable!()
    };
    forged.signature = consensus::Signature([0; 64]);
    assert_eq!(
        gossip(&mut c, Topic::Consensus, envelope(&Message::Vote(forged))),
        Verdict::Reject("bad signature")
    );
    assert_eq!(c.buffered_messages(), 0);
    for view in 0..100 {
        gossip(&mut c, Topic::Consensus, envelope(&vote(&k[1], 2, view)));
    }
    assert_eq!(c.buffered_messages(), height::BUFFER_PER_SIGNER);
}

#[test]
fn consensus_broadcasts_are_new_bytes_each_time() {
    let k = keys();
    let mut c = core(&k);
    // Prevote/precommit timeouts make the machine re-broadcast; each carries a new nonce.
    let mut sent = Vec::new();
    for t in (0..60_000).step_by(500) {
        for a in c.handle(t, Event::Tick).expect("tick") {
            if let Action::Publish {
                topic: Topic::Consensus,
                bytes,
            } = a
            {
                sent.push(bytes);
            }
        }
    }
    assert!(sent.len() >= 4, "{} broadcasts", sent.len());
    let distinct: std::collections::BTreeSet<_> = sent.iter().collect();
    assert_eq!(distinct.len(), sent.len());
}

fn signed_delta(key: &SigningKey, round: u64, samples: u64, base: [u8; 32], n: usize) -> Vec<u8> {
    DeltaMsg {
        chain_id: chain().as_str().into(),
        round,
        base_hash: base,
        author: key.verifying_key().to_bytes(),
        samples,
        train_loss: 0.0,
        payload: model::codec::encode(model::codec::Compression::Dense, &vec![0.01; n]),
    }
    .sign(key)
    .expect("sign")
    .encode()
    .expect("encode")
}

#[test]
fn far_future_deltas_need_signatures_from_f_plus_one_validators_to_mean_we_are_behind() {
    let k = keys();
    let mut c = core(&k);
    let n = c.params().len();
    let base = c.model_hash();
    let mut bad = signed_delta(&k[1], 50, 10, base, n);
    let last = bad.len() - 1;
    bad[last - 100] ^= 1;
    assert!(matches!(
        gossip(&mut c, Topic::Deltas, bad),
        Verdict::Reject(_)
    ));
    assert!(!c.is_syncing());
    gossip(&mut c, Topic::Deltas, signed_delta(&k[1], 50, 10, base, n));
    gossip(&mut c, Topic::Deltas, signed_delta(&k[1], 51, 10, base, n));
    assert!(!c.is_syncing(), "one validator (f = 1) is not enough");
    gossip(&mut c, Topic::Deltas, signed_delta(&k[2], 50, 10, base, n));
    assert!(c.is_syncing());
}

#[test]
fn far_future_deltas_of_contributors_never_mean_we_are_behind() {
    // Contributors (open policy) cost nothing to create: two of them claiming round 50 must not
    // push this node into a state sync, as two validators (f + 1) would.
    let k = keys();
    let mut c = core(&k);
    let n = c.params().len();
    let base = c.model_hash();
    let sybils: Vec<SigningKey> = (60..62u8)
        .map(|b| SigningKey::from_bytes(&[b; 32]))
        .collect();
    for s in &sybils {
        c.committed
            .chain
            .tenure
            .contributors
            .insert(s.verifying_key().to_bytes(), 0);
        gossip(&mut c, Topic::Deltas, signed_delta(s, 50, 10, base, n));
    }
    assert!(
        !c.is_syncing(),
        "contributors' far-future rounds started a sync"
    );
}

#[test]
fn sample_claims_are_bounded_by_the_genesis() {
    let k = keys();
    let mut c = core(&k);
    let n = c.params().len();
    let base = c.model_hash();
    assert_eq!(
        gossip(
            &mut c,
            Topic::Deltas,
            signed_delta(&k[1], 1, u64::MAX, base, n)
        ),
        Verdict::Reject("samples")
    );
    assert_eq!(
        gossip(&mut c, Topic::Deltas, signed_delta(&k[1], 1, 0, base, n)),
        Verdict::Reject("samples")
    );
    assert_eq!(
        gossip(&mut c, Topic::Deltas, signed_delta(&k[1], 1, 100, base, n)),
        Verdict::Accept
    );
    assert_eq!(c.held_deltas(), 1);
}

fn held(digest: u8, round: u64) -> Held {
    Held {
        raw: vec![digest, round as u8].into(),
        digest: [digest; 32],
        samples: 1,
        base_hash: [0; 32],
        decoded: std::sync::Arc::new(vec![0.0]),
        masked: None,
        signed: crate::wire::SignedHeader {
            header: crate::wire::DeltaHeader {
                chain_id: "c".into(),
                round,
                base_hash: [0; 32],
                author: [1; 32],
                samples: 1,
                train_loss: 0.0,
                payload_hash: [digest; 32],
            },
            signature: vec![0; 64],
        },
    }
}

#[test]
fn the_pool_keeps_usable_rounds_and_one_other_version() {
    let mut p = DeltaPool::default();
    let a = [1; 32];
    assert!(matches!(p.admit(5, a, held(1, 5)), Admission::New));
    assert!(matches!(p.admit(5, a, held(1, 5)), Admission::Duplicate));
    assert!(matches!(
        p.admit(5, a, held(2, 5)),
        Admission::Equivocation(_)
    ));
    assert!(matches!(
        p.admit(5, a, held(3, 5)),
        Admission::Equivocation(_)
    ));
    assert_eq!(p.len(), 2, "a third version is not kept");
    assert!(
        p.usable(5, &[0; 32]).is_empty(),
        "an equivocator is never proposed"
    );
    let inc = Included {
        author: a,
        digest: [2; 32],
        samples: 1,
    };
    assert!(
        p.held(5, &inc).is_some(),
        "a proposal may pin either version"
    );
    for r in 6..20 {
        p.admit(r, a, held(r as u8 + 10, r));
    }
    p.prune(18);
    assert_eq!(p.rounds_held(), 2);
    assert!(p.blob(&[1; 32]).is_none());
}

/// Inclusions of `authors`' deltas (zero digests, one sample each).
fn included_of(authors: impl IntoIterator<Item = [u8; 32]>) -> Vec<Included> {
    authors
        .into_iter()
        .map(|author| Included {
            author,
            digest: [0; 32],
            samples: 1,
        })
        .collect()
}

fn entry(height: u64, joins: bool) -> (LedgerEntry, RoundValue) {
    let rv = RoundValue {
        version: 1,
        round: height,
        base_hash: [0; 32],
        included: vec![Included {
            author: [1; 32],
            digest: [2; 32],
            samples: 1,
        }],
        aggregation: crate::wire::Aggregation {
            rule: "mean".into(),
            reveals: Vec::new(),
        },
        model_hash: [0; 32],
        momentum_hash: [0; 32],
        prev_value: [0; 32],
        removals: Vec::new(),
        evidence: Vec::new(),
        delta_evidence: Vec::new(),
        approvals: Vec::new(),
        promotions: Vec::new(),
        rejected: Vec::new(),
        joins: if joins {
            vec![crate::wire::SignedJoin::new(
                "c",
                &SigningKey::from_bytes(&[7; 32]),
                0,
                10,
            )]
        } else {
            Vec::new()
        },
    };
    let e = LedgerEntry {
        height,
        value: rv.encode().expect("encode"),
        certificate: vec![0; 200],
    };
    (e, rv)
}

#[test]
fn a_snapshot_at_round_100000_carries_as_many_entries_as_at_round_100() {
    // Under `approve` a join changes the set: its entry is kept for good.
    let mut f = genesis(&keys()).file;
    f.membership.policy = "approve".into();
    let g = f.check().expect("genesis");
    let (mut c, _) = Committed::recover(&g, &empty_store()).expect("recover");
    // Recent entries kept: enough to see which contributors were silent (W = 16 here).
    let keep = RECENT.max(super::committed::SILENT_CONTRIBUTOR_ROUNDS as usize);
    let mut sizes = Vec::new();
    for h in 1..=100_000 {
        let (e, rv) = entry(h, h % 25_000 == 0);
        c.remember(e, &rv);
        if h == 100 || h == 100_000 {
            sizes.push((c.entries_for_snapshot(0).len(), c.held_entries()));
        }
    }
    // Round 100: the last 32. Round 100,000: the last 32 and the 3 earlier ones that changed
    // the set (the fourth, round 100,000, is among the last 32 and sent once).
    assert_eq!(sizes[0], (keep, keep));
    assert_eq!(sizes[1], (keep + 3, keep + 4));
    let heights: Vec<u64> = c.entries_for_snapshot(0).iter().map(|e| e.height).collect();
    assert!(heights.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(c.entries_for_snapshot(99_990).len(), 10);
    // Under `open` a join admits a contributor (no set change): its entry is forgotten after
    // the contributor's tenure.
    let g = genesis(&keys());
    let (mut c, _) = Committed::recover(&g, &empty_store()).expect("recover");
    for h in 1..=100_000 {
        let (e, rv) = entry(h, h % 25_000 == 0);
        c.remember(e, &rv);
    }
    assert_eq!(c.entries_for_snapshot(0).len(), keep);
    assert_eq!(
        c.held_entries(),
        keep + 1,
        "the join of round 100,000 is still held"
    );
}

/// A join flood's fresh keys never send a delta: each loses its contributor slot
/// SILENT_CONTRIBUTOR_ROUNDS after its admission instead of holding it for its whole tenure,
/// while a contributor whose deltas are included keeps its slot.
#[test]
fn silent_contributors_lose_their_slot_and_included_ones_keep_it() {
    use super::committed::SILENT_CONTRIBUTOR_ROUNDS as SILENT;
    let k = keys();
    let g = genesis(&k);
    let (mut c, _) = Committed::recover(&g, &empty_store()).expect("recover");
    let (silent, active) = ([31u8; 32], [32u8; 32]);
    c.chain.tenure.contributors.insert(silent, 1);
    c.chain.tenure.contributors.insert(active, 1);
    // Rounds 1..=40: the validators' deltas every round; the active contributor's every 16th.
    for h in 1..=40u64 {
        let (e, mut rv) = entry(h, false);
        rv.included = included_of(
            k.iter()
                .map(|key| key.verifying_key().to_bytes())
                .chain((h % 16 == 0).then_some(active)),
        );
        c.remember(e, &rv);
    }
    assert_eq!(c.contributors(1 + SILENT), vec![silent, active]);
    assert_eq!(
        c.contributors(2 + SILENT),
        vec![active],
        "the silent key's slot is free"
    );
    // Last included at round 32: kept through round 32 + SILENT (if still within its tenure).
    assert!(c.contributors(41).contains(&active));
    assert!(
        c.chain.is_contributor(&silent, 2 + SILENT),
        "still within its tenure: it cannot join again until that ends"
    );
}

#[test]
fn contributors_count_against_f_and_are_promoted_after_k_inclusions() {
    // W = 16, promote_after = 8, the default robust rule, `open`.
    let k = keys();
    let g = genesis(&k);
    let (mut c, _) = Committed::recover(&g, &empty_store()).expect("recover");
    // n = 4, f = 1: with the 4 validators' deltas, one contributor delta (2 (1 + 1) < 4 + 1);
    // with 3, none (2 (1 + 1) >= 3 + 1).
    assert_eq!(c.contributor_room(1, 4), 1);
    assert_eq!(c.contributor_room(1, 3), 0);
    let mut mean = g.file.clone();
    mean.training.rule = "mean".into();
    let (m, _) =
        Committed::recover(&mean.check().expect("genesis"), &empty_store()).expect("recover");
    assert_eq!(
        m.contributor_room(1, 4),
        0,
        "a plain mean includes no contributor"
    );
    let (a, b) = ([21u8; 32], [22u8; 32]);
    c.chain.tenure.contributors.insert(a, 1);
    c.chain.tenure.contributors.insert(b, 1);
    assert_eq!(c.contributors(2), vec![a, b]);
    assert!(
        c.contributors(1).is_empty(),
        "not before the round after its admission"
    );
    // a is included in rounds 2..=9 (8 rounds), b in every other one (4).
    for h in 2..=9u64 {
        let (e, mut rv) = entry(h, false);
        rv.included = included_of(
            k.iter()
                .map(|key| key.verifying_key().to_bytes())
                .chain([a])
                .chain((h % 2 == 0).then_some(b)),
        );
        c.remember(e, &rv);
    }
    assert_eq!(c.due_promotions(10, &[]), vec![a]);
    assert!(
        c.due_promotions(10, &[a]).is_empty(),
        "a removed key is not promoted"
    );
    assert!(
        c.due_promotions(9, &[]).is_empty(),
        "7 inclusions before round 9"
    );
    // An inclusion recorded as an outlier does not count: 7 accepted of 8.
    let (mut r, _) = Committed::recover(&g, &empty_store()).expect("recover");
    r.chain.tenure.contributors.insert(a, 1);
    for h in 2..=9u64 {
        let (e, mut rv) = entry(h, false);
        rv.included = included_of(
            k.iter()
                .map(|key| key.verifying_key().to_bytes())
                .chain([a]),
        );
        if h == 5 {
            rv.rejected = vec![a];
        }
        r.remember(e, &rv);
    }
    assert!(
        r.due_promotions(10, &[]).is_empty(),
        "an outlier round counted"
    );
    // Silent since round 9: not promoted once round 9 leaves the activity window.
    for h in 10..=17u64 {
        let (e, rv) = entry(h, false);
        c.remember(e, &rv);
    }
    assert_eq!(
        c.due_promotions(17, &[]),
        vec![a],
        "round 9 is 8 rounds back"
    );
    assert!(
        c.due_promotions(18, &[]).is_empty(),
        "a silent contributor is not promoted"
    );
    // The tenure: at least a join request's lifetime (64 rounds), so its request has expired.
    assert!(c.chain.is_contributor(&a, 65));
    assert!(!c.chain.is_contributor(&a, 66));
}

#[test]
fn a_validator_is_inactive_only_after_a_full_window_without_it() {
    let g = genesis(&keys());
    let (mut c, _) = Committed::recover(&g, &empty_store()).expect("recover");
    for h in 1..ACTIVITY_WINDOW as u64 {
        let (e, rv) = entry(h, false);
        c.remember(e, &rv);
        assert!(c.inactive(&g.validators).is_empty(), "round {h}");
    }
    let (e, rv) = entry(ACTIVITY_WINDOW as u64, false);
    c.remember(e, &rv);
    // Only [1; 32] took part (it is not a member): every member is inactive.
    assert_eq!(c.inactive(&g.validators).len(), 4);
}

#[test]
fn a_node_whose_genesis_differs_from_a_running_network_stops_and_says_what_differs() {
    let k = keys();
    let mut c = core(&k);
    let mut other = genesis(&k).file;
    other.training.rule = "median".into();
    let hello = |file: &crate::genesis::GenesisFile, height| {
        crate::wire::GenesisHello {
            genesis: toml::to_string(file).expect("toml"),
            height,
            sent_ms: 1,
        }
        .encode()
        .expect("encode")
    };
    let fatal = |c: &mut Core, bytes: Vec<u8>| fatal_of(deliver(c, Topic::Membership, bytes));
    // Our own genesis, or another one that has not committed anything: no reason to stop.
    assert_eq!(fatal(&mut c, hello(&genesis(&k).file, 9)), None);
    assert_eq!(fatal(&mut c, hello(&other, 0)), None);
    let why = fatal(&mut c, hello(&other, 9)).expect("stops");
    assert!(why.contains("training.rule"), "{why}");
    // Deltas signed under the other genesis fail the chain check.
    let theirs = other.check().expect("genesis");
    assert_ne!(theirs.chain_id, c.genesis().chain_id);
}

#[test]
fn a_delta_signed_with_our_key_by_another_process_stops_the_node() {
    let k = keys();
    let mut c = core(&k);
    let n = c.params().len();
    let base = c.model_hash();
    let bytes = signed_delta(&k[0], 1, 10, base, n);
    let why = fatal_of(deliver(&mut c, Topic::Deltas, bytes)).expect("stops");
    assert!(
        why.contains("another process signs with this node's key"),
        "{why}"
    );
}

#[test]
fn newcomers_stay_within_f_and_silent_validators_are_due_for_removal_after_the_window() {
    // W = 16 (the tests' genesis). Four genesis validators: k[0..4].
    let k = keys();
    let g = genesis(&k);
    let (mut c, _) = Committed::recover(&g, &empty_store()).expect("recover");
    // Nothing is due before a whole window of history exists.
    assert!(c.due_removals(5).is_empty());
    // f(4 + 1) = 1: one newcomer at a time, none while the genesis set is all there is... plus one.
    assert_eq!(c.admissible_joins(1, 0, 4), 1);
    // A newcomer admitted by round 2 votes from round 4 and counts as new until round 4 + W.
    c.chain.tenure.since.insert([9; 32], 4);
    let with_newcomer = |c: &Committed, h| {
        let mut set: Vec<ValidatorId> = g.validators.members().to_vec();
        set.push(ValidatorId([9; 32]));
        set.iter()
            .filter(|m| {
                c.chain
                    .tenure
                    .since
                    .get(&m.0)
                    .is_some_and(|s| *s > 0 && *s + 16 > h)
            })
            .count()
    };
    assert_eq!(with_newcomer(&c, 19), 1);
    assert_eq!(
        with_newcomer(&c, 20),
        0,
        "old at since + W, when removal may be due"
    );
    // 16 rounds in which only k[1..4] contributed: k[0] is due (tenure since genesis), and
    // never all of the set.
    let g2 = genesis(&k);
    let (mut c2, _) = Committed::recover(&g2, &empty_store()).expect("recover");
    for h in 1..=16u64 {
        let (e, mut rv) = entry(h, false);
        rv.included = included_of(k[1..].iter().map(|key| key.verifying_key().to_bytes()));
        c2.remember(e, &rv);
    }
    assert_eq!(c2.due_removals(17), vec![k[0].verifying_key().to_bytes()]);
    assert!(
        c2.due_removals(18).is_empty(),
        "the window must end at h - 1"
    );
}

#[test]
fn join_requests_are_admissible_only_if_open_fresh_and_not_replayed_after_a_removal() {
    let k = keys();
    let mut c = core(&k);
    let joiner = SigningKey::from_bytes(&[42; 32]);
    let chain = chain();
    let j = |made, expires| crate::wire::SignedJoin::new(chain.as_str(), &joiner, made, expires);
    assert!(c.join_admissible(&j(0, 10), 1));
    assert!(!c.join_admissible(&j(0, 0), 1), "expired");
    assert!(
        !c.join_admissible(&j(1, 10), 1),
        "made ahead of the round it would join"
    );
    assert!(
        !c.join_admissible(&j(0, 1_000), 1),
        "lifetime above the TTL"
    );
    let other = crate::wire::SignedJoin::new("other@00", &joiner, 0, 10);
    assert!(!c.join_admissible(&other, 1), "another chain");
    // Removed at round 5: a request made before that is a replay.
    c.committed
        .chain
        .tenure
        .removed
        .insert(joiner.verifying_key().to_bytes(), 5);
    assert!(!c.join_admissible(&j(4, 20), 9));
    // A closed network admits no one.
    let mut closed = core(&k);
    closed.cfg.genesis.file.membership.policy = "closed".into();
    assert!(!closed.join_admissible(&j(0, 10), 1));
    // A genesis that prices joins: a request without the work is neither admissible in a value
    // nor accepted from gossip (a peer penalty); the same request with the work is both.
    let mut priced = core(&k);
    priced.cfg.genesis.file.membership.join_work_bits = 10;
    let free = j(0, 10);
    let paid = free.clone().solve(10);
    assert!(
        free.work_bits() < 10,
        "this seed's free request has no work by chance"
    );
    assert!(!priced.join_admissible(&free, 1));
    assert!(priced.join_admissible(&paid, 1));
    let verdict = |c: &mut Core, join: &crate::wire::SignedJoin| {
        gossip(c, Topic::Membership, join.encode().expect("encode"))
    };
    assert!(matches!(verdict(&mut priced, &free), Verdict::Reject(_)));
    assert!(matches!(verdict(&mut priced, &paid), Verdict::Accept));
}

/// Our own join requests published by `actions`.
fn own_joins(actions: &[Action]) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish {
                topic: Topic::Membership,
                bytes,
            } if !bytes.starts_with(crate::wire::GenesisHello::MAGIC) => Some(bytes.to_vec()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_joiner_pays_for_its_request_once_and_resends_the_same_one_at_the_retry_rate() {
    let k = keys();
    let joiner = SigningKey::from_bytes(&[42; 32]);
    let mut genesis = genesis(&k);
    genesis.file.membership.join_work_bits = 8;
    let cfg = CoreConfig {
        key: joiner.clone(),
        genesis,
        byzantine: None,
        join: true,
        instance: 9,
    };
    let mut c = Core::new(cfg, empty_store()).expect("core");
    let mut sent = own_joins(&c.handle(0, Event::Start).expect("start"));
    sent.extend(own_joins(&c.handle(1, Event::Tick).expect("tick")));
    assert_eq!(sent.len(), 1, "one request on the first tick");
    let first = crate::wire::SignedJoin::decode(&sent[0]).expect("a join request");
    first
        .verify(chain().as_str())
        .expect("signed by the joiner");
    assert_eq!(first.validator, joiner.verifying_key().to_bytes());
    assert!(
        first.work_bits() >= 8,
        "it carries the genesis proof of work"
    );
    // Within the retry interval nothing more goes out.
    let quiet = c.handle(local::JOIN_RETRY_MS, Event::Tick).expect("tick");
    assert!(
        own_joins(&quiet).is_empty(),
        "re-sent before the retry interval"
    );
    // After it, the very same request (no second proof) goes out again while the chain moves
    // on, as long as more than half of its lifetime is left: a request made now would name the
    // new round, so equal bytes mean the cached one.
    let mut t = 1;
    for height in [1, round::JOIN_TTL / 2 - 1] {
        c.committed.chain.height = height;
        t += local::JOIN_RETRY_MS + 1;
        let later = own_joins(&c.handle(t, Event::Tick).expect("tick"));
        assert_eq!(
            later,
            vec![sent[0].clone()],
            "at round {height}: the cached request"
        );
    }
    // Then a new one, made at the current round, with its own proof.
    let height = round::JOIN_TTL / 2;
    c.committed.chain.height = height;
    t += local::JOIN_RETRY_MS + 1;
    let renewed = own_joins(&c.handle(t, Event::Tick).expect("tick"));
    assert_eq!(renewed.len(), 1);
    let renewed = crate::wire::SignedJoin::decode(&renewed[0]).expect("a join request");
    assert_eq!(renewed.round, height);
    assert!(renewed.work_bits() >= 8);
}

#[test]
fn privacy_noise_differs_between_nodes_and_between_runs_of_one_node() {
    // The same training result, the same round, DP on: the noise is a function of the seed the
    // host draws from the OS for each round, so neither another node nor another run of this
    // node (nor anyone holding the genesis) can regenerate it.
    let k = keys();
    let mut g = genesis(&k);
    g.file.training.dp = "clip:1,noise:1".into();
    let g = g.file.clone().check().expect("genesis");
    let payload = |key: usize, seed: u64| -> Vec<u8> {
        let cfg = CoreConfig {
            key: k[key].clone(),
            genesis: g.clone(),
            byzantine: None,
            join: false,
            instance: 1,
        };
        let mut c = Core::new(cfg, empty_store()).expect("core");
        c.handle(0, Event::Start).expect("start");
        let n = c.params().len();
        let out = model::train::TrainOutput {
            delta: vec![0.001; n],
            samples: 10,
            mean_loss: 0.5,
            steps: 1,
        };
        let actions = c
            .handle(
                1,
                Event::Trained {
                    round: 1,
                    out,
                    secs: 0.1,
                    noise_seed: seed,
                },
            )
            .expect("trained");
        let bytes = actions
            .into_iter()
            .find_map(|a| match a {
                Action::Publish {
                    topic: Topic::Deltas,
                    bytes,
                } => Some(bytes),
                _ => None,
            })
            .expect("a delta");
        let sd = crate::wire::SignedDelta::decode(&bytes).expect("delta");
        assert_eq!(
            sd.msg.train_loss, 0.0,
            "the training loss never leaves the node"
        );
        sd.msg.payload
    };
    let seeds: Vec<u64> = (0..3).map(|_| getrandom::u64().expect("OS RNG")).collect();
    assert_ne!(seeds[0], seeds[1]);
    let a = payload(0, seeds[0]);
    assert_ne!(a, payload(0, seeds[1]), "two runs of one node");
    assert_ne!(a, payload(1, seeds[2]), "two nodes");
}

/// A node with a record-level privacy budget trains while one more release fits and stops
/// (as an observer, no training asked) once it would not; its releases survive a restart
/// (they come from the store), and the epsilon it reports is the accountant's for the
/// same settings.
#[test]
fn the_privacy_budget_stops_training_and_epsilon_is_the_accountants() {
    let keys = keys();
    let ids: Vec<ValidatorId> = keys
        .iter()
        .map(|k| ValidatorId(k.verifying_key().to_bytes()))
        .collect();
    let mut file = crate::genesis::demo("core-privacy", &ids);
    file.training.local_steps = Some(10);
    file.privacy.dp_sgd = "clip:1,noise:1.1,rate:0.05".into();
    let acc = model::dp::Accountant {
        noise: 1.1,
        sampling_rate: 0.05,
    };
    let eps = |releases: u64| acc.epsilon(releases * 10, 1e-5).0;
    // Room for exactly 3 releases.
    file.privacy.epsilon_budget = (eps(3) + eps(4)) / 2.0;
    let g = file.check().expect("genesis");
    let trains = |releases: u64| {
        let cfg = CoreConfig {
            key: keys[0].clone(),
            genesis: g.clone(),
            byzantine: None,
            join: false,
            instance: 9,
        };
        let mut c = Core::new(
            cfg,
            Recovered {
                releases,
                ..empty_store()
            },
        )
        .expect("core");
        let asked = c
            .handle(0, Event::Start)
            .expect("start")
            .iter()
            .any(|a| matches!(a, Action::Train { .. }));
        (asked, c.epsilon())
    };
    for r in 0..3 {
        let (asked, spent) = trains(r);
        assert!(asked, "{r} releases: within the budget, it trains");
        assert_eq!(spent, Some(eps(r)));
    }
    let (asked, spent) = trains(3);
    assert!(!asked, "a 4th release would exceed the budget");
    assert_eq!(spent, Some(eps(3)));
    // Without DP-SGD noise there is no epsilon to report.
    assert_eq!(core(&keys).epsilon(), None);
    // The metric carries the same number.
    let status = crate::metrics::Status {
        epsilon: Some(eps(3)),
        ..Default::default()
    };
    let text = crate::metrics::Metrics::default()
        .render(None, 0, &status)
        .expect("encoding");
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("cohort_dp_epsilon "))
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(value, Some(eps(3)), "{text}");
}

#[test]
fn approvals_count_only_if_recent_by_current_validators_and_made_after_a_removal() {
    // `approve` policy, 4 validators: a join needs approvals from a quorum (3).
    let k = keys();
    let mut f = genesis(&k).file;
    f.membership.policy = "approve".into();
    let cfg = CoreConfig {
        key: k[0].clone(),
        genesis: f.check().expect("genesis"),
        byzantine: None,
        join: false,
        instance: 9,
    };
    let mut c = Core::new(cfg, empty_store()).expect("core");
    c.handle(0, Event::Start).expect("start");
    let chain = c.genesis().chain_id.as_str().to_string();
    let joiner = SigningKey::from_bytes(&[42; 32]);
    let jkey = joiner.verifying_key().to_bytes();
    let join = crate::wire::SignedJoin::new(&chain, &joiner, 4, 60);
    let approvals = |by: &[SigningKey], round: u64| {
        let mut a: Vec<crate::wire::SignedApproval> = by
            .iter()
            .map(|v| crate::wire::SignedApproval::new(&chain, v, jkey, round))
            .collect();
        a.sort_by_key(|a| (a.joiner, a.validator));
        a
    };
    let joins = std::slice::from_ref(&join);
    assert!(
        c.approvals_ok(10, joins, &approvals(&k[..3], 5)),
        "a quorum, recent"
    );
    assert!(
        !c.approvals_ok(10, joins, &approvals(&k[..2], 5)),
        "one short of a quorum"
    );
    // Older than a join request's lifetime: stale.
    let h = 5 + super::round::JOIN_TTL + 1;
    assert!(!c.approvals_ok(h, joins, &approvals(&k[..3], 5)), "too old");
    assert!(
        !c.approvals_ok(5, joins, &approvals(&k[..3], 5)),
        "made at the round itself"
    );
    // Approvals by keys that are not validators do not count.
    let outsiders: Vec<SigningKey> = (50..53u8)
        .map(|b| SigningKey::from_bytes(&[b; 32]))
        .collect();
    assert!(
        !c.approvals_ok(10, joins, &approvals(&outsiders, 5)),
        "not validators"
    );
    // The key was removed at round 7: approvals made before that are replays.
    c.committed.chain.tenure.removed.insert(jkey, 7);
    assert!(
        !c.approvals_ok(10, joins, &approvals(&k[..3], 5)),
        "made before the removal"
    );
    assert!(
        c.approvals_ok(10, joins, &approvals(&k[..3], 8)),
        "made after the removal"
    );
}

/// The proposer keeps the window open for a contributor a little slower than the validators
/// (its usual arrival within `collect_ms` of the slowest validator's) until that arrival with a
/// quarter's margin, but not once it holds a contributor's delta, not past the margin, and
/// never for a contributor always far later: a cheap join key cannot slow every round.
#[test]
fn the_window_waits_for_a_slightly_late_contributor_but_not_an_always_late_one() {
    let k = keys();
    let mut c = core(&k);
    let collect = c.cfg.genesis.file.timeouts.collect_ms;
    let (late, far) = ([40u8; 32], [41u8; 32]);
    // Height 1 starts at 1,000 (the previous at 0); the validators usually arrive at 100 ms.
    c.telemetry.height_started(1_000);
    for key in &k {
        c.telemetry.arrived(key.verifying_key().to_bytes(), 1_100);
    }
    for (who, at) in [(late, 100 + collect / 2), (far, 100 + collect + 1_000)] {
        c.telemetry.heard(who, 1);
        c.telemetry.arrived_late(who, at);
    }
    let u = 100 + collect / 2;
    assert!(c.contributor_due(1_150, &[late], 4, 0));
    assert!(
        !c.contributor_due(1_150, &[late], 4, 1),
        "one contributor delta held fills the room"
    );
    assert!(
        !c.contributor_due(1_000 + u + u / 4, &[late], 4, 0),
        "past its usual arrival and margin"
    );
    assert!(
        !c.contributor_due(1_150, &[far], 4, 0),
        "always later than the validators by more than collect_ms"
    );
    assert!(
        !c.contributor_due(1_150, &[late], 3, 0),
        "no room with a validator's delta missing"
    );
}
