//! Unit tests of secure aggregation in the core (`secure`), driven through `Core::handle` with
//! hand-made peer messages.

use consensus::ValidatorId;
use ed25519_dalek::SigningKey;
use gossip::{MessageId, Topic, Verdict};
use model::secagg::{Advert, Domain, MemberSecrets, Quantizer};

use super::secure::Entropy;
use super::*;
use crate::store::Recovered;
use crate::wire::secagg::{
    AckBody, AdvertBody, MaskedPayload, SecAggMsg, SelectionBody, SignedAck, SignedAdvert,
    SignedReveal, SignedSelection, selection_digest,
};
use crate::wire::{DeltaMsg, Included, SignedDelta};

pub(super) fn keys() -> Vec<SigningKey> {
    (1..=4u8)
        .map(|b| SigningKey::from_bytes(&[b; 32]))
        .collect()
}

pub(super) fn id(k: &SigningKey) -> [u8; 32] {
    k.verifying_key().to_bytes()
}

/// A genesis of the four keys with secure aggregation and the mean rule.
pub(super) fn genesis(keys: &[SigningKey]) -> crate::genesis::Genesis {
    let ids: Vec<ValidatorId> = keys.iter().map(|k| ValidatorId(id(k))).collect();
    let mut g = crate::genesis::demo("secagg-test", &ids);
    g.training.rule = "mean".into();
    g.training.error_feedback = false;
    g.training.max_samples = 2000;
    g.membership.policy = "closed".into();
    g.privacy.secure_aggregation = true;
    g.check().expect("genesis")
}

pub(super) fn core_with(key: SigningKey, g: &crate::genesis::Genesis) -> Core {
    core_recovered(key, g, Vec::new())
}

/// A core restarted from a store that holds only `wal`.
fn core_recovered(key: SigningKey, g: &crate::genesis::Genesis, wal: Vec<Vec<u8>>) -> Core {
    let cfg = CoreConfig {
        key,
        genesis: g.clone(),
        byzantine: None,
        join: false,
        instance: 9,
    };
    let store = Recovered {
        ledger: Vec::new(),
        wal,
        state: None,
        residual: Vec::new(),
        own_delta: None,
        releases: 0,
    };
    let mut c = Core::new(cfg, store).expect("core");
    c.handle(0, Event::Start).expect("start");
    c
}

pub(super) fn verdict_of(actions: Vec<Action>) -> Verdict {
    actions
        .into_iter()
        .find_map(|a| match a {
            Action::Report { verdict, .. } => Some(verdict),
            _ => None,
        })
        .expect("a verdict")
}

pub(super) fn gossip(c: &mut Core, data: Vec<u8>) -> Vec<Action> {
    let from = crate::keys::peer_id_of(&ValidatorId(id(&keys()[1]))).expect("peer");
    c.handle(
        10,
        Event::Gossip {
            topic: Topic::Deltas,
            from,
            id: MessageId::of(&data),
            data: data.into(),
        },
    )
    .expect("handle")
}

/// The core's secrets for round 1 (fixed entropy): the actions that follow (its advert).
pub(super) fn draw_secrets(c: &mut Core) -> Vec<Action> {
    c.handle(
        1,
        Event::Secrets {
            round: 1,
            entropy: Entropy([5; 64]),
        },
    )
    .expect("secrets")
}

/// Round 1's selection of `included`, signed by the proposer `key`, as gossiped.
pub(super) fn selection(
    g: &crate::genesis::Genesis,
    key: &SigningKey,
    included: Vec<Included>,
) -> Vec<u8> {
    let s = SignedSelection::new(
        SelectionBody {
            chain_id: g.chain_id.as_str().into(),
            round: 1,
            proposer: id(key),
            included,
        },
        key,
    )
    .unwrap();
    SecAggMsg::Selection(s).encode(3).unwrap()
}

/// The secure-aggregation messages `actions` publish, decoded.
pub(super) fn secagg_out(actions: &[Action]) -> Vec<SecAggMsg> {
    published(actions)
        .iter()
        .filter_map(|b| SecAggMsg::decode(b)?.ok())
        .collect()
}

/// The advert among what `actions` publish.
pub(super) fn advert_in(actions: &[Action]) -> SignedAdvert {
    secagg_out(actions)
        .into_iter()
        .find_map(|m| match m {
            SecAggMsg::Advert(a) => Some(a),
            _ => None,
        })
        .expect("our advert")
}

pub(super) fn published(actions: &[Action]) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish {
                topic: Topic::Deltas,
                bytes,
            } => Some(bytes.to_vec()),
            _ => None,
        })
        .collect()
}

/// Member `i`'s secrets and signed advert for round 1.
pub(super) fn member(
    g: &crate::genesis::Genesis,
    k: &SigningKey,
    i: u64,
) -> (MemberSecrets, SignedAdvert) {
    let s = MemberSecrets::reproducible(7, 1, i);
    let a = SignedAdvert::new(
        AdvertBody {
            chain_id: g.chain_id.as_str().into(),
            round: 1,
            member: id(k),
            public_key: s.public_key(),
        },
        k,
    )
    .expect("advert");
    (s, a)
}

/// Member `me`'s signed masked delta for round 1 against `roster`, as `try_mask` builds it.
pub(super) fn masked_delta(
    c: &Core,
    key: &SigningKey,
    secrets: &MemberSecrets,
    roster: &[SignedAdvert],
    delta: &[f32],
    samples: u64,
) -> MaskedPayload {
    let g = c.genesis();
    let sa = g.privacy.secure.expect("secure");
    let ads: Vec<Advert> = roster
        .iter()
        .map(|a| Advert {
            member: a.body.member,
            public_key: a.body.public_key,
        })
        .collect();
    let q = Quantizer::new(sa.bound, ads.len()).expect("quantizer");
    let w = samples as f64 / g.max_samples as f64;
    let scaled: Vec<f32> = delta.iter().map(|x| (f64::from(*x) * w) as f32).collect();
    let enc = q.encode(&scaled).expect("encode");
    let domain = Domain::new(g.chain_id.as_str(), 1);
    let m = model::secagg::mask(&domain, &ads, &id(key), secrets, &enc.values).expect("mask");
    let t = c.recovery_threshold(1, ads.len());
    let shares =
        model::secagg::share_self_seed(&domain, &ads, &id(key), secrets, t).expect("share");
    MaskedPayload {
        roster: roster.to_vec(),
        values: m.values,
        self_commit: m.self_commit,
        pair_commits: m.pair_commits,
        shares,
    }
}

pub(super) fn sign_delta(c: &Core, key: &SigningKey, samples: u64, payload: Vec<u8>) -> Vec<u8> {
    DeltaMsg {
        chain_id: c.genesis().chain_id.as_str().into(),
        round: 1,
        base_hash: c.model_hash(),
        author: id(key),
        samples,
        train_loss: 0.0,
        payload,
    }
    .sign(key)
    .expect("sign")
    .encode()
    .expect("encode")
}

#[test]
fn a_masked_delta_of_the_wrong_size_unsigned_or_from_a_non_roster_member_is_refused() {
    let k = keys();
    let g = genesis(&k);
    let mut c = core_with(k[0].clone(), &g);
    let n = c.params().len();
    let members: Vec<_> = (0..4).map(|i| member(&g, &k[i], i as u64)).collect();
    let roster: Vec<SignedAdvert> = {
        let mut r: Vec<SignedAdvert> = members.iter().map(|(_, a)| a.clone()).collect();
        r.sort_by_key(|a| a.body.member);
        r
    };
    let good = masked_delta(&c, &k[1], &members[1].0, &roster, &vec![0.01; n], 100);
    let bad = |c: &mut Core, p: MaskedPayload| {
        let bytes = sign_delta(c, &k[1], 100, p.encode().expect("payload"));
        verdict_of(gossip(c, bytes))
    };
    // One value short: the payload must hold exactly one value per parameter.
    let mut short = good.clone();
    short.values.pop();
    assert_eq!(bad(&mut c, short), Verdict::Reject("bad_payload"));
    // An advert on the roster that its member did not sign.
    let mut forged = good.clone();
    forged.roster[2].body.public_key[0] ^= 1;
    assert_eq!(bad(&mut c, forged), Verdict::Reject("bad_payload"));
    // The author is not on the roster it masked against.
    let mut absent = good.clone();
    absent.roster.retain(|a| a.body.member != id(&k[1]));
    absent.pair_commits.pop();
    assert_eq!(bad(&mut c, absent), Verdict::Reject("bad_payload"));
    // A commitment missing.
    let mut fewer = good.clone();
    fewer.pair_commits.pop();
    assert_eq!(bad(&mut c, fewer), Verdict::Reject("bad_payload"));
    // A plain (unmasked) delta is no masked delta.
    let plain = model::codec::encode(model::codec::Compression::Dense, &vec![0.0; n]);
    let bytes = sign_delta(&c, &k[1], 100, plain);
    assert_eq!(
        verdict_of(gossip(&mut c, bytes)),
        Verdict::Reject("bad_payload")
    );
    // Unsigned (the signature of another message).
    let mut sd = SignedDelta::decode(&sign_delta(&c, &k[1], 100, good.encode().unwrap())).unwrap();
    sd.msg.samples = 99;
    let bytes = sd.encode().unwrap();
    assert_eq!(
        verdict_of(gossip(&mut c, bytes)),
        Verdict::Reject("bad_signature")
    );
    // From a key outside the validator set.
    let outsider = SigningKey::from_bytes(&[77; 32]);
    let bytes = sign_delta(&c, &outsider, 100, good.encode().unwrap());
    assert_eq!(
        verdict_of(gossip(&mut c, bytes)),
        Verdict::Reject("not_validator")
    );
    // The good one is accepted.
    let bytes = sign_delta(&c, &k[1], 100, good.encode().unwrap());
    assert_eq!(verdict_of(gossip(&mut c, bytes)), Verdict::Accept);
}

/// Member 0 (`keys()[0]`) with every advert of round 1 and its own masked delta published:
/// the core and its masked delta's bytes.
fn masked_member(k: &[SigningKey], g: &crate::genesis::Genesis) -> (Core, Vec<u8>) {
    let mut c = core_with(k[0].clone(), g);
    let n = c.params().len();
    let mut actions = draw_secrets(&mut c);
    for (i, key) in k.iter().enumerate().skip(1) {
        let (_, a) = member(g, key, i as u64);
        let bytes = SecAggMsg::Advert(a).encode(1).unwrap();
        assert_eq!(verdict_of(gossip(&mut c, bytes)), Verdict::Accept);
    }
    let out = model::train::TrainOutput {
        delta: vec![0.01; n],
        samples: 100,
        mean_loss: 0.5,
        steps: 1,
    };
    actions.extend(
        c.handle(
            20,
            Event::Trained {
                round: 1,
                out,
                secs: 0.1,
                noise_seed: 1,
            },
        )
        .expect("trained"),
    );
    let own = published(&actions)
        .into_iter()
        .find(|b| SignedDelta::decode(b).is_ok())
        .expect("our masked delta");
    (c, own)
}

/// Round 1's acknowledgement by validator `key` of the selection of `included`, as gossiped.
pub(super) fn ack(g: &crate::genesis::Genesis, key: &SigningKey, included: &[Included]) -> Vec<u8> {
    let a = SignedAck::new(
        AckBody {
            chain_id: g.chain_id.as_str().into(),
            round: 1,
            member: id(key),
            selection: selection_digest(g.chain_id.as_str(), 1, included),
        },
        key,
    )
    .unwrap();
    SecAggMsg::Ack(a).encode(3).unwrap()
}

fn reveals(actions: &[Action]) -> Vec<SignedReveal> {
    secagg_out(actions)
        .into_iter()
        .filter_map(|m| match m {
            SecAggMsg::Reveal(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn acks(actions: &[Action]) -> Vec<[u8; 32]> {
    secagg_out(actions)
        .into_iter()
        .filter_map(|m| match m {
            SecAggMsg::Ack(a) => Some(a.body.selection),
            _ => None,
        })
        .collect()
}

/// Round 1's included set of members 0 (our masked delta `own`), 1 and 2, sorted.
fn with_us(k: &[SigningKey], own: &[u8]) -> Vec<Included> {
    let mut v = vec![
        inc(k, 0, crate::wire::sha256(own)),
        inc(k, 1, [1; 32]),
        inc(k, 2, [2; 32]),
    ];
    v.sort();
    v
}

/// Included entry of member `i` of `keys()`.
fn inc(k: &[SigningKey], i: usize, digest: [u8; 32]) -> Included {
    Included {
        author: id(&k[i]),
        digest,
        samples: 100,
    }
}

#[test]
fn a_member_reveals_once_for_the_agreed_selection_and_never_pair_seeds_with_included_members() {
    let k = keys();
    let g = genesis(&k);
    let (mut c, own) = masked_member(&k, &g);
    let n = c.params().len();
    let sd = SignedDelta::decode(&own).unwrap();
    let p = MaskedPayload::decode(&sd.msg.payload).expect("a masked payload leaves the node");
    assert_eq!(p.roster.len(), 4, "all four adverts were known");
    assert!(
        model::codec::decode(&sd.msg.payload, n).is_err(),
        "no plain delta leaves the node"
    );
    let first = with_us(&k, &own);
    let digest = selection_digest(g.chain_id.as_str(), 1, &first);
    // A selection of fewer than a quorum can never be revealed for: refused, not acknowledged.
    let a = gossip(&mut c, selection(&g, &k[1], first[..2].to_vec()));
    assert!(
        acks(&a).is_empty(),
        "no acknowledgement of a selection below the quorum"
    );
    assert_eq!(verdict_of(a), Verdict::Reject("bad_selection"));
    let a = gossip(&mut c, selection(&g, &k[1], first.clone()));
    assert!(
        reveals(&a).is_empty(),
        "no reveal before a quorum acknowledged it"
    );
    assert_eq!(acks(&a), vec![digest], "our acknowledgement of it");
    let a = gossip(&mut c, ack(&g, &k[1], &first));
    assert!(reveals(&a).is_empty(), "two of the quorum of three");
    let a = gossip(&mut c, ack(&g, &k[2], &first));
    let r = reveals(&a);
    assert_eq!(
        r.len(),
        1,
        "one reveal once three acknowledged the selection"
    );
    assert_eq!(r[0].body.selection, digest);
    let excluded = id(&k[3]);
    let named: Vec<[u8; 32]> = r[0].body.pair_seeds.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        named,
        vec![excluded],
        "pair seeds with the excluded member only"
    );
    // A second, different selection (another proposer, everyone included), even acknowledged
    // by the others: no second reveal, which would reveal the pair seeds with member 3 for a
    // set that includes it.
    let mut all = first.clone();
    all.push(inc(&k, 3, [3; 32]));
    all.sort();
    let a = gossip(&mut c, selection(&g, &k[2], all.clone()));
    assert!(reveals(&a).is_empty(), "never a reveal for a second set");
    assert!(acks(&a).is_empty(), "one acknowledgement a round");
    let a = gossip(&mut c, ack(&g, &k[3], &all));
    assert!(reveals(&a).is_empty(), "never a reveal for a second set");
    let a = c.handle(5_000, Event::Tick).expect("tick");
    assert!(
        reveals(&a)
            .iter()
            .all(|x| x.body.selection == r[0].body.selection),
        "re-sent reveals are the first one"
    );
}

/// The attack of the threat model: validator 1 signs two selections, one that includes member 0
/// (shown to member 0, to collect its self seed) and one that excludes it (shown to members 2
/// and 3, to collect their pair seeds with member 0). Member 0 must not reveal: members 2 and 3
/// acknowledge the other selection, so the one member 0 saw never has a quorum.
#[test]
fn a_split_selection_gets_no_reveal_for_two_sets() {
    let k = keys();
    let g = genesis(&k);
    let (mut c, own) = masked_member(&k, &g);
    let with_0 = with_us(&k, &own);
    let mut without_0 = vec![
        inc(&k, 1, [1; 32]),
        inc(&k, 2, [2; 32]),
        inc(&k, 3, [3; 32]),
    ];
    without_0.sort();
    let mut out = gossip(&mut c, selection(&g, &k[1], with_0.clone()));
    // The faulty validator acknowledges both; the honest members 2 and 3 the one they saw.
    out.extend(gossip(&mut c, ack(&g, &k[1], &with_0)));
    out.extend(gossip(&mut c, ack(&g, &k[2], &without_0)));
    out.extend(gossip(&mut c, ack(&g, &k[3], &without_0)));
    // The other selection reaches member 0 as well (gossip forwards it), signed by the same
    // faulty validator, and by an honest proposer of a later view that adopted it.
    out.extend(gossip(&mut c, selection(&g, &k[1], without_0.clone())));
    out.extend(gossip(&mut c, selection(&g, &k[2], without_0.clone())));
    let wait = super::round::max_wait(&g);
    for t in [1_000, wait, 3 * wait] {
        out.extend(c.handle(10 + t, Event::Tick).expect("tick"));
    }
    assert!(
        reveals(&out).is_empty(),
        "member 0 revealed its self seed while the others acknowledged a set without it"
    );
    let shares = secagg_out(&out)
        .iter()
        .filter(|m| matches!(m, SecAggMsg::Recovery(_)))
        .count();
    assert_eq!(shares, 0, "no share of a seed for the unagreed set");
    // Member 0 is outside the agreed set: what it may publish later (its pair seeds with a
    // silent member of that set) is for that set only, never for the one that includes it.
    let with_0_digest = selection_digest(g.chain_id.as_str(), 1, &with_0);
    assert!(
        acks(&out).iter().all(|d| *d == with_0_digest),
        "it acknowledged only what it saw first"
    );
}

#[test]
fn the_unmasked_mean_equals_the_plain_weighted_mean_with_a_dropout() {
    let k = keys();
    let g = genesis(&k);
    // An observer (not a validator) computes the round: it holds no secrets of its own.
    let mut c = core_with(SigningKey::from_bytes(&[77; 32]), &g);
    let n = c.params().len();
    let members: Vec<_> = (0..4).map(|i| member(&g, &k[i], i as u64)).collect();
    let mut roster: Vec<SignedAdvert> = members.iter().map(|(_, a)| a.clone()).collect();
    roster.sort_by_key(|a| a.body.member);
    let samples = [100u64, 250, 40];
    let deltas: Vec<Vec<f32>> = (0..3)
        .map(|i| {
            (0..n)
                .map(|j| ((i * 7 + j * 3) % 11) as f32 * 1e-3 - 5e-3)
                .collect()
        })
        .collect();
    // Members 0, 1 and 2 are included; member 3 masked too but dropped out.
    let mut included = Vec::new();
    for i in 0..4 {
        let d = if i < 3 {
            deltas[i].clone()
        } else {
            vec![0.3; n]
        };
        let s = if i < 3 { samples[i] } else { 100 };
        let p = masked_delta(&c, &k[i], &members[i].0, &roster, &d, s);
        let bytes = sign_delta(&c, &k[i], s, p.encode().unwrap());
        assert_eq!(verdict_of(gossip(&mut c, bytes.clone())), Verdict::Accept);
        if i < 3 {
            included.push(Included {
                author: id(&k[i]),
                digest: crate::wire::sha256(&bytes),
                samples: s,
            });
        }
    }
    included.sort();
    let ids: Vec<[u8; 32]> = included.iter().map(|i| i.author).collect();
    let ads: Vec<Advert> = roster
        .iter()
        .map(|a| Advert {
            member: a.body.member,
            public_key: a.body.public_key,
        })
        .collect();
    let domain = Domain::new(g.chain_id.as_str(), 1);
    let digest = crate::wire::secagg::selection_digest(g.chain_id.as_str(), 1, &included);
    let reveal = |i: usize, selection: [u8; 32]| -> Vec<u8> {
        let r = model::secagg::reveal(&domain, &ads, &id(&k[i]), &members[i].0, &ids).unwrap();
        SignedReveal::new(
            crate::wire::secagg::RevealBody {
                chain_id: g.chain_id.as_str().into(),
                round: 1,
                member: id(&k[i]),
                selection,
                self_seed: r.self_seed,
                pair_seeds: r.pair_seeds,
            },
            &k[i],
        )
        .unwrap()
        .encode()
        .unwrap()
    };
    let order: Vec<usize> = included
        .iter()
        .map(|inc| (0..3).find(|&i| id(&k[i]) == inc.author).unwrap())
        .collect();
    let reveals: Vec<Vec<u8>> = order.iter().map(|&i| reveal(i, digest)).collect();
    let applied = c
        .compute_secure(1, &included, &reveals)
        .unwrap()
        .expect("unmasked");
    // The plain weighted mean, bounded as `aggregate::bounded_weights` bounds it; the server
    // step of the demo genesis is theta + mean.
    let weights = model::aggregate::bounded_weights(&samples);
    let q = Quantizer::new(1.0, 4).unwrap();
    let total: f64 = samples.iter().map(|s| *s as f64 / 2000.0).sum();
    let tol = q.sum_error(3) / total + 1e-6;
    let base = c.params().clone();
    let mut worst = 0.0f64;
    for j in 0..n {
        let mean: f64 = (0..3).map(|i| f64::from(deltas[i][j]) * weights[i]).sum();
        let got = f64::from(applied.params[j]) - f64::from(base[j]);
        worst = worst.max((got - mean).abs());
    }
    assert!(worst <= tol, "worst error {worst} > {tol}");
    // A reveal for another selection, or one missing, unmasks nothing.
    let mut wrong = reveals.clone();
    wrong[0] = reveal(order[0], [9; 32]);
    assert!(c.compute_secure(1, &included, &wrong).unwrap().is_none());
    assert!(
        c.compute_secure(1, &included, &reveals[..2])
            .unwrap()
            .is_none()
    );
    // A void round leaves the model as it was.
    let void = c.compute_secure(1, &included, &[]).unwrap().expect("void");
    assert_eq!(void.params, base);
}

#[test]
fn the_genesis_refuses_secure_aggregation_with_a_robust_rule_compression_or_node_level_dp() {
    let k = keys();
    let ids: Vec<ValidatorId> = k.iter().map(|k| ValidatorId(id(k))).collect();
    let base = || {
        let mut g = crate::genesis::demo("secagg-test", &ids);
        g.training.rule = "mean".into();
        g.training.error_feedback = false;
        g.membership.policy = "closed".into();
        g.privacy.secure_aggregation = true;
        g
    };
    base().check().expect("mean, dense, no dp: fine");
    type Change = Box<dyn Fn(&mut crate::genesis::GenesisFile)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "training.rule",
            Box::new(|g| g.training.rule = "median".into()),
        ),
        (
            "training.compression",
            Box::new(|g| g.training.compression = "int8".into()),
        ),
        (
            "training.dp",
            Box::new(|g| g.training.dp = "clip:1,noise:1".into()),
        ),
        (
            "membership.policy",
            Box::new(|g| g.membership.policy = "open".into()),
        ),
        (
            "privacy.secagg_bound",
            Box::new(|g| g.privacy.secagg_bound = 0.0),
        ),
        (
            "privacy.secagg_honest",
            Box::new(|g| g.privacy.secagg_honest = 5),
        ),
        (
            "training.local_steps",
            Box::new(|g| g.privacy.dp_sgd = "clip:1,noise:1,rate:0.1".into()),
        ),
    ];
    for (setting, f) in cases {
        let mut g = base();
        f(&mut g);
        let e = format!("{:#}", g.check().expect_err(setting));
        assert!(e.contains(setting), "{setting}: {e}");
    }
    // With DP-SGD each node adds sigma / sqrt(t); the accountant keeps sigma.
    let mut g = base();
    g.training.local_steps = Some(1);
    g.privacy.dp_sgd = "clip:1,noise:2,rate:0.1".into();
    g.privacy.secagg_honest = 4;
    let g = g.check().expect("dp-sgd with one step");
    assert_eq!(g.train.dp_sgd.unwrap().noise, 1.0);
    assert_eq!(g.privacy.dp_sgd.unwrap().noise, 2.0);
    // Off, the file (and its hash) is what it was before the setting existed.
    let plain = crate::genesis::demo("plain-test", &ids);
    let text = toml::to_string(&plain).unwrap();
    assert!(!text.contains("secure_aggregation") && !text.contains("secagg"));
}

/// An advert with a small-order X25519 key (all zero) is refused where it arrives: a secret
/// agreed with it is known to anyone, and masking against it would fail on every honest node
/// of the roster (which stopped the node before this check). A valid advert is accepted.
#[test]
fn an_advert_with_a_low_order_key_is_refused() {
    let k = keys();
    let g = genesis(&k);
    let mut c = core_with(k[0].clone(), &g);
    draw_secrets(&mut c);
    let bad = SignedAdvert::new(
        AdvertBody {
            chain_id: g.chain_id.as_str().into(),
            round: 1,
            member: id(&k[1]),
            public_key: [0; 32],
        },
        &k[1],
    )
    .expect("advert");
    let bytes = SecAggMsg::Advert(bad).encode(1).unwrap();
    assert_eq!(
        verdict_of(gossip(&mut c, bytes)),
        Verdict::Reject("bad_advert")
    );
    let (_, good) = member(&g, &k[1], 1);
    let bytes = SecAggMsg::Advert(good).encode(1).unwrap();
    assert_eq!(verdict_of(gossip(&mut c, bytes)), Verdict::Accept);
    assert!(model::secagg::low_order(&[0; 32]));
    assert!(!model::secagg::low_order(
        &MemberSecrets::reproducible(7, 1, 2).public_key()
    ));
}

/// Reveals grow with the roster; a value over consensus's size limit would make consensus
/// refuse our own proposal with an error that stops the node. The proposer leaves such a
/// value out (the round waits for its timeouts) and proposes the next one normally.
#[test]
fn a_value_over_consensus_size_limit_is_not_proposed() {
    let k = keys();
    let g = genesis(&k);
    let mut c = core_with(k[0].clone(), &g);
    let applied = |c: &Core| super::round::Applied {
        params: c.committed.params.clone(),
        velocity: c.committed.velocity.clone(),
        rejected: Vec::new(),
    };
    let (height, view) = (consensus::Height(1), consensus::View(0));
    let huge = vec![vec![7u8; consensus::MAX_VALUE_BYTES]];
    let a = applied(&c);
    let r = c
        .finish_proposal(height, view, Vec::new(), a, huge)
        .expect("no error");
    assert!(r.is_none(), "a value over the limit is not proposed");
    let a = applied(&c);
    let r = c
        .finish_proposal(height, view, Vec::new(), a, Vec::new())
        .expect("no error");
    match r {
        Some(consensus::Input::ProposeValue { value, .. }) => {
            assert!(value.0.len() <= consensus::MAX_VALUE_BYTES);
        }
        other => panic!("a value within the limit is proposed: {other:?}"),
    }
}

/// An honest validator acknowledges one selection a round, across a crash too: otherwise a
/// restart could give a second selection the quorum the first already had.
#[test]
fn a_restarted_validator_acknowledges_no_second_selection() {
    let k = keys();
    let g = genesis(&k);
    let (mut c, own) = masked_member(&k, &g);
    let first = with_us(&k, &own);
    let digest = selection_digest(g.chain_id.as_str(), 1, &first);
    let a = gossip(&mut c, selection(&g, &k[1], first));
    let is_ack = |b: &[u8]| matches!(SecAggMsg::decode(b), Some(Ok(SecAggMsg::Ack(_))));
    let written = a
        .iter()
        .position(|x| matches!(x, Action::AppendWal(b) if is_ack(b)))
        .expect("the acknowledgement is written to the WAL");
    let sent = a
        .iter()
        .position(|x| matches!(x, Action::Publish { bytes, .. } if is_ack(bytes)))
        .expect("and sent");
    assert!(written < sent, "written before it is sent");
    let wal: Vec<Vec<u8>> = a
        .iter()
        .filter_map(|x| match x {
            Action::AppendWal(b) => Some(b.clone()),
            _ => None,
        })
        .collect();
    let mut c = core_recovered(k[0].clone(), &g, wal);
    let mut other = vec![
        inc(&k, 1, [1; 32]),
        inc(&k, 2, [2; 32]),
        inc(&k, 3, [3; 32]),
    ];
    other.sort();
    let a = gossip(&mut c, selection(&g, &k[2], other));
    assert!(
        acks(&a).is_empty(),
        "a restarted validator acknowledged a second selection of the round"
    );
    let a = c.handle(5_000, Event::Tick).expect("tick");
    assert_eq!(
        acks(&a),
        vec![digest],
        "its first acknowledgement, sent again"
    );
    // As the round's proposer, holding a quorum of masked deltas but not yet the first
    // selection again: it signs no selection of its own (which it would acknowledge too).
    let others: Vec<_> = (1..4).map(|i| member(&g, &k[i], i as u64)).collect();
    let mut roster: Vec<SignedAdvert> = others.iter().map(|(_, a)| a.clone()).collect();
    roster.sort_by_key(|a| a.body.member);
    for (i, (secrets, _)) in others.iter().enumerate() {
        let key = &k[i + 1];
        let p = masked_delta(
            &c,
            key,
            secrets,
            &roster,
            &vec![0.01; c.params().len()],
            100,
        );
        let bytes = sign_delta(&c, key, 100, p.encode().unwrap());
        assert_eq!(verdict_of(gossip(&mut c, bytes)), Verdict::Accept);
    }
    c.height.pending_propose = Some((consensus::Height(1), consensus::View(0)));
    // Long after the propose timeout: it gives the round up (a void value) instead.
    let proposed = c.try_propose_secure(60_000).expect("propose");
    let out = std::mem::take(&mut c.secure.outbox);
    let selections = secagg_out(&out)
        .iter()
        .filter(|m| matches!(m, SecAggMsg::Selection(_)))
        .count();
    assert_eq!(
        selections, 0,
        "a restarted proposer signed a second selection"
    );
    assert!(acks(&out).is_empty(), "and acknowledged it");
    match proposed {
        Some(consensus::Input::ProposeValue { value, .. }) => {
            let rv = crate::wire::RoundValue::decode(&value.0).expect("value");
            assert!(rv.included.is_empty() && rv.aggregation.reveals.is_empty());
        }
        other => panic!("a void proposal: {other:?}"),
    }
}
