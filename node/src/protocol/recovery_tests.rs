//! Unit tests of self-seed recovery in the core (`recovery`), driven through `Core::handle`
//! with hand-made peer messages (helpers from `secure_tests`).

use ed25519_dalek::SigningKey;
use gossip::Verdict;
use model::secagg::{Advert, Domain, MemberSecrets, Quantizer};

use super::secure_tests::{
    ack, advert_in, core_with, draw_secrets, genesis, gossip, id, keys, masked_delta, member,
    published, secagg_out, selection, sign_delta, verdict_of,
};
use super::*;
use crate::wire::Included;
use crate::wire::secagg::{
    MaskedPayload, RecoveredSeed, RecoveryBody, RevealBody, SecAggMsg, SignedAdvert,
    SignedRecovery, SignedReveal, selection_digest,
};

type Genesis = crate::genesis::Genesis;

fn ads_of(roster: &[SignedAdvert]) -> Vec<Advert> {
    roster
        .iter()
        .map(|a| Advert {
            member: a.body.member,
            public_key: a.body.public_key,
        })
        .collect()
}

fn reveal_msg(
    g: &Genesis,
    key: &SigningKey,
    secrets: &MemberSecrets,
    roster: &[SignedAdvert],
    included: &[Included],
) -> Vec<u8> {
    let domain = Domain::new(g.chain_id.as_str(), 1);
    let ids: Vec<[u8; 32]> = included.iter().map(|i| i.author).collect();
    let r = model::secagg::reveal(&domain, &ads_of(roster), &id(key), secrets, &ids).unwrap();
    let s = SignedReveal::new(
        RevealBody {
            chain_id: g.chain_id.as_str().into(),
            round: 1,
            member: id(key),
            selection: selection_digest(g.chain_id.as_str(), 1, included),
            self_seed: r.self_seed,
            pair_seeds: r.pair_seeds,
        },
        key,
    )
    .unwrap();
    SecAggMsg::Reveal(s).encode(4).unwrap()
}

/// Holder `key` (with `secrets`) opens its share of `member`'s seed in `p` and signs it.
#[allow(clippy::too_many_arguments)]
fn share_msg(
    g: &Genesis,
    key: &SigningKey,
    secrets: &MemberSecrets,
    member: &SigningKey,
    p: &MaskedPayload,
    included: &[Included],
    change: bool,
) -> SignedRecovery {
    let domain = Domain::new(g.chain_id.as_str(), 1);
    let sealed = p.shares.iter().find(|s| s.holder == id(key)).unwrap();
    let mut share = model::secagg::open_share(
        &domain,
        &ads_of(&p.roster),
        &id(key),
        secrets,
        &id(member),
        sealed,
    )
    .unwrap();
    if change {
        share[0] ^= 1;
    }
    SignedRecovery::new(
        RecoveryBody {
            chain_id: g.chain_id.as_str().into(),
            round: 1,
            holder: id(key),
            member: id(member),
            selection: selection_digest(g.chain_id.as_str(), 1, included),
            share,
            pair_seed: None,
        },
        key,
    )
    .unwrap()
}

/// `r` with `seed` as the holder's pair seed, signed again.
fn with_pair(r: SignedRecovery, key: &SigningKey, seed: [u8; 32]) -> Vec<u8> {
    let mut body = r.body;
    body.pair_seed = Some(seed);
    let r = SignedRecovery::new(body, key).unwrap();
    SecAggMsg::Recovery(r).encode(6).unwrap()
}

fn recoveries(actions: &[Action]) -> Vec<SignedRecovery> {
    secagg_out(actions)
        .into_iter()
        .filter_map(|m| match m {
            SecAggMsg::Recovery(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Four members' masked deltas (all included) as an observer holds them.
struct Round {
    g: Genesis,
    k: Vec<SigningKey>,
    c: Core,
    members: Vec<(MemberSecrets, SignedAdvert)>,
    roster: Vec<SignedAdvert>,
    payloads: Vec<MaskedPayload>,
    deltas: Vec<Vec<f32>>,
    samples: Vec<u64>,
    included: Vec<Included>,
}

/// `liar`: member 3 shares another seed than the one it masked with.
fn round(liar: bool) -> Round {
    let k = keys();
    let g = genesis(&k);
    let mut c = core_with(SigningKey::from_bytes(&[77; 32]), &g);
    let n = c.params().len();
    let members: Vec<_> = (0..4).map(|i| member(&g, &k[i], i as u64)).collect();
    let mut roster: Vec<SignedAdvert> = members.iter().map(|(_, a)| a.clone()).collect();
    roster.sort_by_key(|a| a.body.member);
    let samples = vec![100u64, 250, 40, 160];
    let deltas: Vec<Vec<f32>> = (0..4)
        .map(|i| {
            (0..n)
                .map(|j| ((i * 7 + j * 3) % 11) as f32 * 1e-3 - 5e-3)
                .collect()
        })
        .collect();
    let mut payloads = Vec::new();
    let mut included = Vec::new();
    for i in 0..4 {
        let mut p = masked_delta(&c, &k[i], &members[i].0, &roster, &deltas[i], samples[i]);
        if liar && i == 3 {
            // The same X25519 key (so the shares open) with another self seed: a changed
            // seed that every share's commitment matches.
            let lie = MemberSecrets::from_bytes(dh_of(&members[3].0), [99; 32]);
            let other = masked_delta(&c, &k[i], &lie, &roster, &deltas[i], samples[i]);
            p.shares = other.shares;
        }
        let bytes = sign_delta(&c, &k[i], samples[i], p.encode().unwrap());
        assert_eq!(verdict_of(gossip(&mut c, bytes.clone())), Verdict::Accept);
        included.push(Included {
            author: id(&k[i]),
            digest: crate::wire::sha256(&bytes),
            samples: samples[i],
        });
        payloads.push(p);
    }
    included.sort();
    Round {
        g,
        k,
        c,
        members,
        roster,
        payloads,
        deltas,
        samples,
        included,
    }
}

/// The X25519 secret of `MemberSecrets::reproducible(7, 1, i)` (its derivation, repeated).
fn dh_of(s: &MemberSecrets) -> [u8; 32] {
    use sha2::Digest as _;
    (0..4u64)
        .map(|i| {
            let mut h = sha2::Sha256::new();
            h.update(b"cohort secagg reproducible ");
            h.update(b"dh");
            h.update(7u64.to_le_bytes());
            h.update(1u64.to_le_bytes());
            h.update(i.to_le_bytes());
            let dh: [u8; 32] = h.finalize().into();
            dh
        })
        .find(|dh| MemberSecrets::from_bytes(*dh, [0; 32]).public_key() == s.public_key())
        .expect("a reproducible member")
}

impl Round {
    /// Members 0 to 2 reveal for the selection of all four; member 3 dies. Holders `holders`
    /// publish their share of member 3's seed.
    fn member_3_dies(&mut self, holders: &[usize]) {
        let sel = selection(&self.g, &self.k[0], self.included.clone());
        assert_eq!(verdict_of(gossip(&mut self.c, sel)), Verdict::Accept);
        for i in 0..3 {
            let m = reveal_msg(
                &self.g,
                &self.k[i],
                &self.members[i].0,
                &self.roster,
                &self.included,
            );
            assert_eq!(verdict_of(gossip(&mut self.c, m)), Verdict::Accept);
        }
        for &j in holders {
            let r = share_msg(
                &self.g,
                &self.k[j],
                &self.members[j].0,
                &self.k[3],
                &self.payloads[3],
                &self.included,
                false,
            );
            let bytes = SecAggMsg::Recovery(r).encode(5).unwrap();
            assert_eq!(verdict_of(gossip(&mut self.c, bytes)), Verdict::Accept);
        }
    }
}

#[test]
fn a_member_that_dies_after_selection_no_longer_voids_the_round() {
    let mut r = round(false);
    assert_eq!(r.c.recovery_threshold(1, 4), 2, "quorum 3 of 4, less one");
    // Without any share the included set cannot be unmasked: today's void.
    r.member_3_dies(&[]);
    assert!(r.c.recovered_for(1, &r.included).is_none());
    let mut r = round(false);
    r.member_3_dies(&[0, 2]);
    let entries = r.c.recovered_for(1, &r.included).expect("recoverable");
    let i3 = r
        .included
        .iter()
        .position(|i| i.author == id(&r.k[3]))
        .unwrap();
    let rec = RecoveredSeed::decode(&entries[i3]).unwrap().unwrap();
    assert_eq!(rec.shares.len(), 2, "exactly the threshold's shares");
    assert!(
        (0..4)
            .filter(|&i| i != i3)
            .all(|i| RecoveredSeed::decode(&entries[i]).is_none()),
        "the others' own reveals"
    );
    let applied =
        r.c.compute_secure(1, &r.included, &entries)
            .unwrap()
            .expect("unmasked with the recovered seed");
    // The plain weighted mean of all four included deltas (the demo's server step adds it).
    let weights = model::aggregate::bounded_weights(&r.samples);
    let q = Quantizer::new(1.0, 4).unwrap();
    let total: f64 = r.samples.iter().map(|s| *s as f64 / 2000.0).sum();
    let tol = q.sum_error(4) / total + 1e-6;
    let base = r.c.params().clone();
    let mut worst = 0.0f64;
    for j in 0..base.len() {
        let mean: f64 = (0..4).map(|i| f64::from(r.deltas[i][j]) * weights[i]).sum();
        let got = f64::from(applied.params[j]) - f64::from(base[j]);
        worst = worst.max((got - mean).abs());
    }
    assert!(worst <= tol, "worst error {worst} > {tol}");
    // A validator given fewer than the threshold's shares refuses the value.
    let mut short = rec.clone();
    short.shares.truncate(1);
    let mut fewer = entries.clone();
    fewer[i3] = short.encode().unwrap();
    assert!(
        r.c.compute_secure(1, &r.included, &fewer)
            .unwrap()
            .is_none()
    );
    // ...and one whose share was changed after signing.
    let mut forged = rec.clone();
    forged.shares[0].body.share[0] ^= 1;
    let mut bad = entries.clone();
    bad[i3] = forged.encode().unwrap();
    assert!(r.c.compute_secure(1, &r.included, &bad).unwrap().is_none());
    // ...and garbage behind the recovered seed's prefix (no panic, no value).
    let mut garbage = entries.clone();
    garbage[i3] = [RecoveredSeed::MAGIC, &[0xff; 40]].concat();
    assert!(
        r.c.compute_secure(1, &r.included, &garbage)
            .unwrap()
            .is_none()
    );
}

#[test]
fn fewer_than_threshold_shares_reveal_nothing_and_leave_the_round_to_void() {
    let mut r = round(false);
    r.member_3_dies(&[1]);
    assert!(
        r.c.recovered_for(1, &r.included).is_none(),
        "one share of a threshold of two"
    );
    // A value carrying the one share in place of member 3's reveal is refused.
    let held = r.c.secure.recoveries.get(&1).unwrap();
    let (_, one) = held.iter().next().unwrap();
    let entry = RecoveredSeed {
        member: id(&r.k[3]),
        shares: vec![one.clone()],
        pairs: Vec::new(),
    };
    let i3 = r
        .included
        .iter()
        .position(|i| i.author == id(&r.k[3]))
        .unwrap();
    let mut entries: Vec<Vec<u8>> = Vec::new();
    for (i, inc) in r.included.iter().enumerate() {
        if i == i3 {
            entries.push(entry.encode().unwrap());
        } else {
            let held = r.c.secure.reveals.get(&1).unwrap();
            entries.push(held.get(&inc.author).unwrap().encode().unwrap());
        }
    }
    assert!(
        r.c.compute_secure(1, &r.included, &entries)
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_recovered_seed_that_does_not_match_the_commitment_is_refused() {
    let mut r = round(true);
    r.member_3_dies(&[0, 2]);
    // Every share matches its commitment (the liar committed to the shares it sent)...
    let entries = r.c.recovered_for(1, &r.included).expect("shares held");
    // ...but the seed they give is not the one member 3 masked with.
    assert!(
        r.c.compute_secure(1, &r.included, &entries)
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_tampered_or_wrongly_sealed_share_is_refused_with_a_peer_penalty() {
    let k = keys();
    let g = genesis(&k);
    let mut c = core_with(k[0].clone(), &g);
    let n = c.params().len();
    let a = draw_secrets(&mut c);
    let ours = advert_in(&a);
    let members: Vec<_> = (1..4).map(|i| member(&g, &k[i], i as u64)).collect();
    let mut roster: Vec<SignedAdvert> = members.iter().map(|(_, a)| a.clone()).collect();
    roster.push(ours);
    roster.sort_by_key(|a| a.body.member);
    let good = masked_delta(&c, &k[1], &members[0].0, &roster, &vec![0.01; n], 100);
    let mine = good
        .shares
        .iter()
        .position(|s| s.holder == id(&k[0]))
        .unwrap();
    let penalised =
        |actions: &[Action]| actions.iter().any(|a| matches!(a, Action::Penalize { .. }));
    // The author sealed our share with the wrong key (as if to member 2), or it was changed:
    // the delta is refused and its sender penalised.
    let other = good
        .shares
        .iter()
        .position(|s| s.holder == id(&k[2]))
        .unwrap();
    for change in 0..2 {
        let mut bad = good.clone();
        if change == 0 {
            bad.shares[mine].ciphertext = good.shares[other].ciphertext;
            bad.shares[mine].tag = good.shares[other].tag;
        } else {
            bad.shares[mine].tag[3] ^= 1;
        }
        let bytes = sign_delta(&c, &k[1], 100, bad.encode().unwrap());
        let a = gossip(&mut c, bytes);
        assert!(penalised(&a), "change {change}");
        assert_eq!(verdict_of(a), Verdict::Reject("bad_payload"));
    }
    // A share for another holder order, or one missing, is refused too.
    let mut missing = good.clone();
    missing.shares.pop();
    let bytes = sign_delta(&c, &k[1], 100, missing.encode().unwrap());
    assert_eq!(
        verdict_of(gossip(&mut c, bytes)),
        Verdict::Reject("bad_payload")
    );
    let bytes = sign_delta(&c, &k[1], 100, good.encode().unwrap());
    assert_eq!(verdict_of(gossip(&mut c, bytes.clone())), Verdict::Accept);
    // A holder that publishes a changed share of member 1's seed is refused (the member's
    // commitment), with the gossip penalty of a rejected message.
    // (A selection names at least a quorum; members 2 and 3 with made-up digests.)
    let mut included: Vec<Included> = (1..4)
        .map(|i| Included {
            author: id(&k[i]),
            digest: if i == 1 {
                crate::wire::sha256(&bytes)
            } else {
                [i as u8; 32]
            },
            samples: 100,
        })
        .collect();
    included.sort();
    assert_eq!(
        verdict_of(gossip(&mut c, selection(&g, &k[1], included.clone()))),
        Verdict::Accept
    );
    let r = share_msg(&g, &k[2], &members[1].0, &k[1], &good, &included, true);
    let bytes = SecAggMsg::Recovery(r).encode(5).unwrap();
    assert_eq!(
        verdict_of(gossip(&mut c, bytes)),
        Verdict::Reject("bad_share")
    );
    let r = share_msg(&g, &k[2], &members[1].0, &k[1], &good, &included, false);
    let bytes = SecAggMsg::Recovery(r).encode(5).unwrap();
    assert_eq!(verdict_of(gossip(&mut c, bytes)), Verdict::Accept);
}

#[test]
fn a_member_never_sends_a_share_for_a_non_included_or_revealed_member() {
    let k = keys();
    let g = genesis(&k);
    let mut c = core_with(k[0].clone(), &g);
    let n = c.params().len();
    let mut actions = draw_secrets(&mut c);
    let ours = advert_in(&actions);
    let members: Vec<_> = (1..4).map(|i| member(&g, &k[i], i as u64)).collect();
    for (_, a) in &members {
        let bytes = SecAggMsg::Advert(a.clone()).encode(1).unwrap();
        assert_eq!(verdict_of(gossip(&mut c, bytes)), Verdict::Accept);
    }
    let mut roster: Vec<SignedAdvert> = members.iter().map(|(_, a)| a.clone()).collect();
    roster.push(ours);
    roster.sort_by_key(|a| a.body.member);
    let out = model::train::TrainOutput {
        delta: vec![0.01; n],
        samples: 100,
        mean_loss: 0.5,
        steps: 1,
    };
    actions.extend(
        c.handle(
            10,
            Event::Trained {
                round: 1,
                out,
                secs: 0.1,
                noise_seed: 1,
            },
        )
        .unwrap(),
    );
    let own = published(&actions)
        .into_iter()
        .find(|b| crate::wire::SignedDelta::decode(b).is_ok())
        .expect("our masked delta");
    let mut included = vec![Included {
        author: id(&k[0]),
        digest: crate::wire::sha256(&own),
        samples: 100,
    }];
    let mut deltas = Vec::new();
    for (i, (s, _)) in members.iter().enumerate() {
        let key = &k[i + 1];
        let p = masked_delta(&c, key, s, &roster, &vec![0.01; n], 100);
        deltas.push(sign_delta(&c, key, 100, p.encode().unwrap()));
    }
    for (i, bytes) in deltas.iter().enumerate().take(2) {
        assert_eq!(verdict_of(gossip(&mut c, bytes.clone())), Verdict::Accept);
        included.push(Included {
            author: id(&k[i + 1]),
            digest: crate::wire::sha256(bytes),
            samples: 100,
        });
    }
    // We, members 1 and 2 are included, member 3 (whose masked delta we hold, with our share
    // of its seed) is not: its delta arrives after the selection. Member 1 reveals; 2 and 3
    // stay silent.
    included.sort();
    assert_eq!(
        verdict_of(gossip(&mut c, selection(&g, &k[1], included.clone()))),
        Verdict::Accept
    );
    for j in [1, 2] {
        assert_eq!(
            verdict_of(gossip(&mut c, ack(&g, &k[j], &included))),
            Verdict::Accept
        );
    }
    assert_eq!(
        verdict_of(gossip(&mut c, deltas[2].clone())),
        Verdict::Accept
    );
    let m = reveal_msg(&g, &k[1], &members[0].0, &roster, &included);
    assert_eq!(verdict_of(gossip(&mut c, m)), Verdict::Accept);
    let wait = super::round::max_wait(&g);
    let early = c.handle(10 + wait / 2 - 1, Event::Tick).unwrap();
    assert!(recoveries(&early).is_empty(), "nothing before the wait");
    let a = c.handle(10 + wait / 2, Event::Tick).unwrap();
    let sent: Vec<[u8; 32]> = recoveries(&a).iter().map(|r| r.body.member).collect();
    assert_eq!(
        sent,
        vec![id(&k[2])],
        "a share for the silent included member only"
    );
    // A second selection (another proposer) that includes member 3: shares follow the agreed
    // selection only, and member 2's share is not sent a second time.
    let mut second = included.clone();
    second.retain(|i| i.author != id(&k[1]));
    let p3 = c
        .pool
        .usable(1, &c.model_hash())
        .into_iter()
        .find(|(a, _)| *a == id(&k[3]))
        .map(|(_, d)| d.digest)
        .expect("member 3's delta");
    second.push(Included {
        author: id(&k[3]),
        digest: p3,
        samples: 100,
    });
    second.sort();
    let _ = gossip(&mut c, selection(&g, &k[2], second));
    let a = c.handle(10 + 3 * wait, Event::Tick).unwrap();
    let fresh: Vec<[u8; 32]> = recoveries(&a)
        .iter()
        .filter(|r| r.body.member != id(&k[2]))
        .map(|r| r.body.member)
        .collect();
    assert!(
        fresh.is_empty(),
        "no share for member 1 or 3: {}",
        fresh.len()
    );
    assert_eq!(c.secure.recovered.len(), 1, "one share published in all");
}

#[test]
fn a_silent_member_is_recovered_with_the_pair_seed_of_an_excluded_member() {
    let Round {
        g,
        k,
        mut c,
        members,
        roster,
        payloads,
        deltas,
        samples,
        included: all,
    } = round(false);
    // Members 0, 1 and 2 are included, 3 (masked too, alive) is excluded; 2 goes silent.
    let included: Vec<Included> = all
        .iter()
        .filter(|i| i.author != id(&k[3]))
        .cloned()
        .collect();
    let sel = selection(&g, &k[0], included.clone());
    assert_eq!(verdict_of(gossip(&mut c, sel)), Verdict::Accept);
    for i in 0..2 {
        let m = reveal_msg(&g, &k[i], &members[i].0, &roster, &included);
        assert_eq!(verdict_of(gossip(&mut c, m)), Verdict::Accept);
    }
    let domain = Domain::new(g.chain_id.as_str(), 1);
    let ads = ads_of(&roster);
    let share = |j: usize| {
        share_msg(
            &g,
            &k[j],
            &members[j].0,
            &k[2],
            &payloads[2],
            &included,
            false,
        )
    };
    // Shares from 0 and 1 reach the threshold, but the pair seed of 2 with 3 is missing.
    for j in 0..2 {
        let bytes = SecAggMsg::Recovery(share(j)).encode(5).unwrap();
        assert_eq!(verdict_of(gossip(&mut c, bytes)), Verdict::Accept);
    }
    assert!(
        c.recovered_for(1, &included).is_none(),
        "no pair seed with 3"
    );
    let seed =
        model::secagg::excluded_pair_seed(&domain, &ads, &id(&k[3]), &members[3].0, &id(&k[2]))
            .unwrap();
    // A pair seed from an included member, or a wrong one, is refused.
    let mut c2 = round(false).c;
    let sel = selection(&g, &k[0], included.clone());
    assert_eq!(verdict_of(gossip(&mut c2, sel)), Verdict::Accept);
    let from_included = with_pair(share(1), &k[1], seed);
    assert_eq!(
        verdict_of(gossip(&mut c2, from_included)),
        Verdict::Reject("bad_share")
    );
    let mut wrong = seed;
    wrong[0] ^= 1;
    let bytes = with_pair(share(3), &k[3], wrong);
    assert_eq!(
        verdict_of(gossip(&mut c2, bytes)),
        Verdict::Reject("bad_share")
    );
    // Member 3 (excluded) publishes its share and its pair seed with 2: the round unmasks.
    let bytes = with_pair(share(3), &k[3], seed);
    assert_eq!(verdict_of(gossip(&mut c, bytes)), Verdict::Accept);
    let entries = c.recovered_for(1, &included).expect("recoverable");
    let applied = c
        .compute_secure(1, &included, &entries)
        .unwrap()
        .expect("unmasked");
    let idx: Vec<usize> = (0..3).collect();
    let s3: Vec<u64> = idx.iter().map(|&i| samples[i]).collect();
    let weights = model::aggregate::bounded_weights(&s3);
    let q = Quantizer::new(1.0, 4).unwrap();
    let total: f64 = s3.iter().map(|s| *s as f64 / 2000.0).sum();
    let tol = q.sum_error(3) / total + 1e-6;
    let base = c.params().clone();
    let mut worst = 0.0f64;
    for j in 0..base.len() {
        let mean: f64 = idx
            .iter()
            .map(|&i| f64::from(deltas[i][j]) * weights[i])
            .sum();
        worst = worst.max((f64::from(applied.params[j]) - f64::from(base[j]) - mean).abs());
    }
    assert!(worst <= tol, "worst error {worst} > {tol}");
    // A value whose pair seed is dropped is refused by a validator.
    let i2 = included.iter().position(|i| i.author == id(&k[2])).unwrap();
    let mut rec = RecoveredSeed::decode(&entries[i2]).unwrap().unwrap();
    rec.pairs.clear();
    let mut bad = entries.clone();
    bad[i2] = rec.encode().unwrap();
    assert!(c.compute_secure(1, &included, &bad).unwrap().is_none());
}
