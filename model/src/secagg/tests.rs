use super::*;
use crate::rng::Rng;

pub(super) const CHAIN: &str = "test-chain";
const LEN: usize = 4096;

/// `n` members with ids 10, 20, ... (as the first byte), their secrets and the roster.
pub(super) fn members(n: usize, round: u64) -> (Vec<MemberId>, Vec<MemberSecrets>, Vec<Advert>) {
    let ids: Vec<MemberId> = (0..n)
        .map(|i| {
            let mut id = [0u8; 32];
            id[0] = 10 * (i as u8 + 1);
            id
        })
        .collect();
    let secrets: Vec<MemberSecrets> = (0..n)
        .map(|i| MemberSecrets::reproducible(7, round, i as u64))
        .collect();
    let roster = ids
        .iter()
        .zip(&secrets)
        .map(|(id, s)| Advert {
            member: *id,
            public_key: s.public_key(),
        })
        .collect();
    (ids, secrets, roster)
}

/// `n` plaintext vectors with coordinates uniform in [-1, 1].
pub(super) fn plaintexts(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::seed(seed);
    (0..n)
        .map(|_| (0..LEN).map(|_| rng.uniform(-1.0, 1.0) as f32).collect())
        .collect()
}

pub(super) struct Round {
    pub(super) domain: Domain,
    pub(super) ids: Vec<MemberId>,
    pub(super) secrets: Vec<MemberSecrets>,
    pub(super) roster: Vec<Advert>,
    pub(super) q: Quantizer,
    pub(super) xs: Vec<Vec<f32>>,
    pub(super) masked: Vec<Masked>,
}

pub(super) fn round(n: usize) -> Round {
    let domain = Domain::new(CHAIN, 3);
    let (ids, secrets, roster) = members(n, 3);
    let q = Quantizer::new(1.0, n).unwrap();
    let xs = plaintexts(n, 11);
    let masked = (0..n)
        .map(|i| {
            let enc = q.encode(&xs[i]).unwrap();
            assert_eq!(enc.clamped, 0);
            mask(&domain, &roster, &ids[i], &secrets[i], &enc.values).unwrap()
        })
        .collect();
    Round {
        domain,
        ids,
        secrets,
        roster,
        q,
        xs,
        masked,
    }
}

impl Round {
    pub(super) fn included(&self, idx: &[usize]) -> Vec<MemberId> {
        idx.iter().map(|&i| self.ids[i]).collect()
    }

    pub(super) fn reveals(&self, idx: &[usize]) -> Vec<Reveal> {
        let inc = self.included(idx);
        idx.iter()
            .map(|&i| {
                reveal(
                    &self.domain,
                    &self.roster,
                    &self.ids[i],
                    &self.secrets[i],
                    &inc,
                )
                .unwrap()
            })
            .collect()
    }

    pub(super) fn inputs(&self, idx: &[usize]) -> Vec<Masked> {
        idx.iter().map(|&i| self.masked[i].clone()).collect()
    }

    pub(super) fn unmask(
        &self,
        idx: &[usize],
        reveals: &[Reveal],
    ) -> Result<Vec<u32>, SecAggError> {
        unmask(&self.domain, &self.roster, &self.inputs(idx), reveals)
    }

    /// Checks the decoded sum of `idx` against the plaintext sum, within the quantisation bound.
    pub(super) fn check_sum(&self, idx: &[usize], sum: &[u32]) {
        let got = self.q.decode_sum(sum, idx.len()).unwrap();
        let bound = self.q.sum_error(idx.len());
        for (k, g) in got.iter().enumerate() {
            let want: f64 = idx.iter().map(|&i| f64::from(self.xs[i][k])).sum();
            assert!((g - want).abs() <= bound, "coord {k}: {g} vs {want}");
        }
    }
}

/// Pearson correlation.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn as_signed(v: &[u32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x as i32)).collect()
}

#[test]
fn masks_cancel_and_the_sum_is_the_plaintext_sum() {
    let r = round(5);
    let all = [0, 1, 2, 3, 4];
    let sum = r.unmask(&all, &r.reveals(&all)).unwrap();
    r.check_sum(&all, &sum);
    // Without the unmasking step the plain wrapping sum of the masked vectors is garbage: the
    // self masks are still in it.
    let mut raw = vec![0u32; LEN];
    for m in &r.masked {
        raw.iter_mut()
            .zip(&m.values)
            .for_each(|(s, v)| *s = s.wrapping_add(*v));
    }
    let want: Vec<f64> = (0..LEN)
        .map(|k| all.iter().map(|&i| f64::from(r.xs[i][k])).sum())
        .collect();
    let garbage = r.q.decode_sum(&raw, 5).unwrap();
    assert!(correlation(&garbage, &want).abs() < 0.1);
}

#[test]
fn dropped_members_are_unmasked_from_the_survivors_reveals() {
    let r = round(6);
    for included in [vec![0, 2, 3, 5], vec![1, 2], vec![0, 1, 2, 3, 4]] {
        let sum = r.unmask(&included, &r.reveals(&included)).unwrap();
        r.check_sum(&included, &sum);
    }
}

#[test]
fn a_masked_vector_alone_tells_nothing_of_the_plaintext() {
    let r = round(4);
    let y = as_signed(&r.masked[1].values);
    let x: Vec<f64> = r.xs[1].iter().map(|v| f64::from(*v)).collect();
    assert!(correlation(&y, &x).abs() < 0.05, "{}", correlation(&y, &x));
    // Uniform over u32: as i32 its mean is near 0 relative to the range, whatever x is.
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    assert!(mean.abs() < 0.05 * f64::from(i32::MAX), "{mean}");
    let enc = r.q.encode(&r.xs[1]).unwrap().values;
    let equal = r.masked[1]
        .values
        .iter()
        .zip(&enc)
        .filter(|(a, b)| a == b)
        .count();
    assert!(equal < 5, "{equal} coordinates unmasked");
}

#[test]
fn a_dropped_members_late_vector_stays_hidden_by_its_self_mask() {
    // Member 2 drops; the survivors reveal their pair seeds with it. An observer who got member
    // 2's masked vector late strips every pair mask from it: the self mask still hides it.
    let r = round(4);
    let survivors = [0, 1, 3];
    let reveals = r.reveals(&survivors);
    let dropped = r.ids[2];
    let mut stripped = r.masked[2].values.clone();
    for rv in &reveals {
        let (_, seed) = rv.pair_seeds.iter().find(|(o, _)| *o == dropped).unwrap();
        // Member 2 added the mask where its id is lower, so subtract it there.
        apply_stream(
            &mut stripped,
            &r.domain,
            b"pair mask",
            seed,
            dropped > rv.member,
        );
    }
    let x: Vec<f64> = r.xs[2].iter().map(|v| f64::from(*v)).collect();
    let c = correlation(&as_signed(&stripped), &x);
    assert!(c.abs() < 0.05, "{c}");
    // The observer got every pair mask right: with member 2's self seed (never revealed) the
    // plaintext would come out. Single masking would have lost the vector here.
    apply_stream(
        &mut stripped,
        &r.domain,
        b"self mask",
        &r.secrets[2].self_seed,
        false,
    );
    let back = r.q.decode_sum(&stripped, 1).unwrap();
    assert!(
        back.iter()
            .zip(&x)
            .all(|(a, b)| (a - b).abs() <= r.q.sum_error(1))
    );
    // And member 2 refuses to reveal anything once excluded.
    let inc = r.included(&survivors);
    assert!(matches!(
        reveal(&r.domain, &r.roster, &dropped, &r.secrets[2], &inc),
        Err(SecAggError::ExcludedReveals { .. })
    ));
}

#[test]
fn wrong_or_missing_reveals_are_errors_not_wrong_sums() {
    let r = round(5);
    let inc = [0, 1, 3, 4];
    let good = r.reveals(&inc);
    assert!(r.unmask(&inc, &good).is_ok());

    // A missing reveal.
    let err = r.unmask(&inc, &good[1..]).unwrap_err();
    assert!(matches!(err, SecAggError::MissingReveal { .. }), "{err}");
    // A wrong self seed.
    let mut bad = good.clone();
    bad[2].self_seed[0] ^= 1;
    let err = r.unmask(&inc, &bad).unwrap_err();
    assert!(matches!(err, SecAggError::BadSelfSeed { .. }), "{err}");
    // A wrong pair seed with the excluded member.
    let mut bad = good.clone();
    bad[0].pair_seeds[0].1[5] ^= 1;
    let err = r.unmask(&inc, &bad).unwrap_err();
    assert!(matches!(err, SecAggError::BadPairSeed { .. }), "{err}");
    // A missing pair seed.
    let mut bad = good.clone();
    bad[3].pair_seeds.clear();
    let err = r.unmask(&inc, &bad).unwrap_err();
    assert!(matches!(err, SecAggError::MissingPairSeed { .. }), "{err}");
    // A pair seed between two included members would unmask them: refused.
    let mut bad = good.clone();
    bad[0].pair_seeds.push((r.ids[1], [0u8; 32]));
    let err = r.unmask(&inc, &bad).unwrap_err();
    assert!(matches!(err, SecAggError::ForbiddenReveal { .. }), "{err}");
    // A reveal from the excluded member.
    let mut bad = good.clone();
    bad.push(Reveal {
        member: r.ids[2],
        self_seed: [0u8; 32],
        pair_seeds: Vec::new(),
    });
    let err = r.unmask(&inc, &bad).unwrap_err();
    assert!(matches!(err, SecAggError::ExcludedReveals { .. }), "{err}");
    // Reveals made for another included set do not fit this one.
    let other = r.reveals(&[0, 1, 2, 3, 4]);
    let err = r.unmask(&inc, &other[..]).unwrap_err();
    assert!(matches!(err, SecAggError::ExcludedReveals { .. }), "{err}");
    let err = r
        .unmask(
            &inc,
            &[
                other[0].clone(),
                other[1].clone(),
                other[3].clone(),
                other[4].clone(),
            ],
        )
        .unwrap_err();
    assert!(matches!(err, SecAggError::MissingPairSeed { .. }), "{err}");
    // A vector of the wrong length.
    let mut inputs = r.inputs(&inc);
    inputs[1].values.pop();
    let err = unmask(&r.domain, &r.roster, &inputs, &good).unwrap_err();
    assert!(matches!(err, SecAggError::WrongLength { .. }), "{err}");
    // Nothing to sum.
    assert_eq!(
        unmask(&r.domain, &r.roster, &[], &[]),
        Err(SecAggError::Empty)
    );
}

#[test]
fn rosters_and_keys_are_checked() {
    let r = round(3);
    let enc = vec![0u32; 8];
    // A member masking with secrets that are not its advertised key.
    let err = mask(&r.domain, &r.roster, &r.ids[0], &r.secrets[1], &enc).unwrap_err();
    assert!(matches!(err, SecAggError::KeyMismatch { .. }), "{err}");
    // Not on the roster.
    let err = mask(&r.domain, &r.roster, &[99u8; 32], &r.secrets[0], &enc).unwrap_err();
    assert!(matches!(err, SecAggError::NotOnRoster { .. }), "{err}");
    // A duplicate roster entry.
    let mut dup = r.roster.clone();
    dup.push(r.roster[2]);
    let err = mask(&r.domain, &dup, &r.ids[0], &r.secrets[0], &enc).unwrap_err();
    assert!(matches!(err, SecAggError::Duplicate { .. }), "{err}");
    // A low-order public key (here the all-zero point) gives no shared secret.
    let mut weak = r.roster.clone();
    weak[2].public_key = [0u8; 32];
    let err = mask(&r.domain, &weak, &r.ids[0], &r.secrets[0], &enc).unwrap_err();
    assert!(matches!(err, SecAggError::NonContributory { .. }), "{err}");
}

#[test]
fn masks_are_bound_to_chain_and_round() {
    let r = round(3);
    let enc = r.q.encode(&r.xs[0]).unwrap().values;
    let same = mask(&r.domain, &r.roster, &r.ids[0], &r.secrets[0], &enc).unwrap();
    assert_eq!(same, r.masked[0]);
    for domain in [Domain::new(CHAIN, 4), Domain::new("other-chain", 3)] {
        let m = mask(&domain, &r.roster, &r.ids[0], &r.secrets[0], &enc).unwrap();
        let equal = m
            .values
            .iter()
            .zip(&same.values)
            .filter(|(a, b)| a == b)
            .count();
        assert!(equal < 5);
        assert_ne!(m.self_commit, same.self_commit);
    }
    // Reveals of another round (fresh secrets, as every round draws) do not unmask this one.
    let (_, secrets, roster) = members(3, 4);
    let next = Round {
        domain: Domain::new(CHAIN, 4),
        secrets,
        roster,
        ..round(3)
    };
    let got = r.unmask(&[0, 1, 2], &next.reveals(&[0, 1, 2]));
    assert!(
        matches!(got, Err(SecAggError::BadSelfSeed { .. })),
        "{:?}",
        got.err()
    );
}

#[test]
fn encoding_clamps_refuses_non_finite_and_never_wraps() {
    assert!(matches!(
        Quantizer::new(0.0, 4),
        Err(SecAggError::BadBound { .. })
    ));
    assert!(matches!(
        Quantizer::new(f32::NAN, 4),
        Err(SecAggError::BadBound { .. })
    ));
    assert!(matches!(
        Quantizer::new(1.0, 0),
        Err(SecAggError::TooManyMembers { .. })
    ));
    assert!(Quantizer::new(1.0, MAX_MEMBERS + 1).is_err());
    let q = Quantizer::new(2.0, 8).unwrap();
    let enc = q.encode(&[3.0, -2.5, 1.0, f32::MAX, -0.0]).unwrap();
    assert_eq!(enc.clamped, 3);
    let back = q.decode_sum(&enc.values, 1).unwrap();
    assert_eq!(back[0], back[3]);
    assert!((back[0] - 2.0).abs() <= q.sum_error(1));
    assert!((back[1] + 2.0).abs() <= q.sum_error(1));
    assert!(matches!(
        q.encode(&[0.0, f32::NAN]),
        Err(SecAggError::NonFinite { index: 1 })
    ));
    assert!(matches!(
        q.encode(&[f32::INFINITY]),
        Err(SecAggError::NonFinite { index: 0 })
    ));
    // The extreme sums of 8 members, all at +B or all at -B, decode without wrapping.
    for v in [2.0f32, -2.0, 7.5, -1e30] {
        let one = q.encode(&[v]).unwrap().values[0];
        let sum = (0..8).fold(0u32, |s, _| s.wrapping_add(one));
        let got = q.decode_sum(&[sum], 8).unwrap()[0];
        let want = 8.0 * f64::from(v.clamp(-2.0, 2.0));
        assert!((got - want).abs() <= q.sum_error(8), "{v}: {got} vs {want}");
    }
    // A ninth member could wrap, so its sum is refused rather than decoded.
    assert!(matches!(
        q.decode_sum(&[0], 9),
        Err(SecAggError::TooManyMembers { members: 9, max: 8 })
    ));
}

#[test]
fn the_in_process_round_gives_the_weighted_mean_of_the_included_members() {
    let xs = plaintexts(5, 21);
    let samples = [100u64, 300, 50, 200, 350];
    let domain = Domain::new(CHAIN, 9);
    for included in [vec![0, 1, 2, 3, 4], vec![1, 3, 4], vec![2]] {
        let got = local::masked_mean(&domain, 3, &xs, &samples, &included, 1.0).unwrap();
        assert_eq!(got.clamped, 0);
        let w: f64 = included.iter().map(|&i| samples[i] as f64).sum();
        for (k, g) in got.mean.iter().enumerate() {
            let want: f64 = included
                .iter()
                .map(|&i| f64::from(xs[i][k]) * samples[i] as f64 / w)
                .sum();
            assert!(
                (f64::from(*g) - want).abs() < 1e-6,
                "{included:?} coord {k}"
            );
        }
        // The masked vector, its commitments: 4 bytes a value and 32 per seed.
        assert_eq!(got.bytes_per_member, 4 * LEN + 32 * 5);
    }
    // A member index outside the round is an error, not a silent skip.
    assert!(local::masked_mean(&domain, 3, &xs, &samples, &[0, 7], 1.0).is_err());
}

#[test]
fn an_inflated_sample_claim_weighs_in_the_secure_mean_as_in_the_plain_one() {
    let xs = plaintexts(4, 23);
    let samples = [100u64, 120, 80, u64::MAX];
    let domain = Domain::new(CHAIN, 4);
    let got = local::masked_mean(&domain, 5, &xs, &samples, &[0, 1, 2, 3], 1.0).unwrap();
    let w = crate::aggregate::bounded_weights(&samples);
    assert!(w[3] < 0.6, "the claim is capped: weight {}", w[3]);
    for (k, g) in got.mean.iter().enumerate() {
        let want: f64 = (0..4).map(|i| f64::from(xs[i][k]) * w[i]).sum();
        assert!((f64::from(*g) - want).abs() < 1e-6, "coord {k}");
    }
}
