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
    AdvertBody, MaskedPayload, SecAggMsg, SelectionBody, SignedAdvert, SignedReveal,
    SignedSelection,
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
    let cfg = CoreConfig {
        key,
        genesis: g.clone(),
        byzantine: None,
        join: false,
        instance: 9,
    };
    let store = Recovered {
        ledger: Vec::new(),
        wal: Vec::new(),
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

/// The advert among what `actions` publish.
pub(super) fn advert_in(actions: &[Action]) -> SignedAdvert {
    published(actions)
        .iter()
        .find_map(|b| match SecAggMsg::decode(b) {
            Some(Ok(SecAggMsg::Advert(a))) => Some(a),
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

#[test]
fn a_member_reveals_once_for_its_first_selection_and_never_pair_seeds_with_included_members() {
    let k = keys();
    let g = genesis(&k);
    let mut c = core_with(k[0].clone(), &g);
    let n = c.params().len();
    let mut actions = draw_secrets(&mut c);
    for (i, key) in k.iter().enumerate().skip(1) {
        let (_, a) = member(&g, key, i as u64);
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
    let sd = SignedDelta::decode(&own).unwrap();
    let p = MaskedPayload::decode(&sd.msg.payload).expect("a masked payload leaves the node");
    assert_eq!(p.roster.len(), 4, "all four adverts were known");
    assert!(
        model::codec::decode(&sd.msg.payload, n).is_err(),
        "no plain delta leaves the node"
    );
    let inc = |i: usize, digest: [u8; 32]| Included {
        author: id(&k[i]),
        digest,
        samples: 100,
    };
    let mut first = vec![
        inc(0, crate::wire::sha256(&own)),
        inc(1, [1; 32]),
        inc(2, [2; 32]),
    ];
    first.sort();
    let reveals = |actions: &[Action]| -> Vec<SignedReveal> {
        published(actions)
            .iter()
            .filter_map(|b| match SecAggMsg::decode(b) {
                Some(Ok(SecAggMsg::Reveal(r))) => Some(r),
                _ => None,
            })
            .collect()
    };
    let a = gossip(&mut c, selection(&g, &k[1], first.clone()));
    let r = reveals(&a);
    assert_eq!(r.len(), 1, "one reveal for the selection");
    let excluded = id(&k[3]);
    let named: Vec<[u8; 32]> = r[0].body.pair_seeds.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        named,
        vec![excluded],
        "pair seeds with the excluded member only"
    );
    // A second, different selection (another proposer, everyone included): no second reveal,
    // which would reveal the pair seeds with member 3 for a set that includes it.
    let mut all = first.clone();
    all.push(inc(3, [3; 32]));
    all.sort();
    let a = gossip(&mut c, selection(&g, &k[2], all));
    assert!(reveals(&a).is_empty(), "never a reveal for a second set");
    let a = c.handle(5_000, Event::Tick).expect("tick");
    assert!(
        reveals(&a)
            .iter()
            .all(|x| x.body.selection == r[0].body.selection),
        "re-sent reveals are the first one"
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
