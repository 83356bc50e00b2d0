//! Every member of a round in one process: the whole protocol (keys, masking, the included set,
//! reveals, unmasking) as `cohort simulate --secure-aggregation` runs it, with **reproducible,
//! not secret** member secrets derived from the simulation's seed.

use super::{
    Advert, Domain, MemberId, MemberSecrets, Quantizer, SecAggError, mask, reveal, unmask,
};

/// Secure aggregation's settings in a simulation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SecAggConfig {
    /// `t`, the number of honest members assumed to add their share of the DP noise: each adds
    /// `sigma / sqrt(t)` so that `t` of them give the sum noise `sigma` (1..=nodes).
    pub honest: usize,
    /// Per-coordinate bound of a member's weighted delta in fixed point (larger values are
    /// clamped and counted).
    pub bound: f32,
}

/// A round's result.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedMean {
    /// The sample-weighted mean of the included members' vectors.
    pub mean: Vec<f32>,
    /// Coordinates clamped to the bound, over all members.
    pub clamped: usize,
    /// What one member publishes: its masked vector and its commitments.
    pub bytes_per_member: usize,
}

/// The simulated id of member `i` (ids order like indices).
pub fn member_id(i: usize) -> MemberId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    id
}

/// One round among `vectors.len()` members: member `i` scales its vector by its FedAvg weight
/// (the claims bounded as the plain mean bounds them, [`crate::aggregate::bounded_weights`]),
/// encodes and masks it; the members in `included` (indices) are summed, reveal and
/// are unmasked; the sum is divided by the included weight. With everyone included this is the
/// FedAvg mean, up to the quantisation error.
pub fn masked_mean(
    domain: &Domain,
    seed: u64,
    vectors: &[Vec<f32>],
    samples: &[u64],
    included: &[usize],
    bound: f32,
) -> Result<MaskedMean, SecAggError> {
    let n = vectors.len();
    if samples.len() != n {
        return Err(SecAggError::WrongLength {
            member: "samples".into(),
            got: samples.len(),
            expected: n,
        });
    }
    let q = Quantizer::new(bound, n)?;
    let secrets: Vec<MemberSecrets> = (0..n)
        .map(|i| MemberSecrets::reproducible(seed, domain.round(), i as u64))
        .collect();
    let roster: Vec<Advert> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| Advert {
            member: member_id(i),
            public_key: s.public_key(),
        })
        .collect();
    let weights = crate::aggregate::bounded_weights(samples);
    let mut clamped = 0;
    let mut masked = Vec::with_capacity(n);
    for (i, (v, &w)) in vectors.iter().zip(&weights).enumerate() {
        let scaled: Vec<f32> = v.iter().map(|x| (f64::from(*x) * w) as f32).collect();
        let enc = q.encode(&scaled)?;
        clamped += enc.clamped;
        masked.push(mask(
            domain,
            &roster,
            &member_id(i),
            &secrets[i],
            &enc.values,
        )?);
    }
    let bytes_per_member = masked
        .first()
        .map_or(0, |m| 4 * m.values.len() + 32 * (1 + m.pair_commits.len()));
    let ids: Vec<MemberId> = included.iter().map(|&i| member_id(i)).collect();
    let mut inputs = Vec::with_capacity(included.len());
    let mut reveals = Vec::with_capacity(included.len());
    let mut weight = 0.0f64;
    for &i in included {
        let m = masked.get(i).ok_or(SecAggError::NotOnRoster {
            member: format!("#{i}"),
        })?;
        inputs.push(m.clone());
        reveals.push(reveal(domain, &roster, &member_id(i), &secrets[i], &ids)?);
        weight += weights[i];
    }
    let sum = q.decode_sum(&unmask(domain, &roster, &inputs, &reveals)?, included.len())?;
    let weight = if weight > 0.0 { weight } else { 1.0 };
    Ok(MaskedMean {
        mean: sum.iter().map(|s| (s / weight) as f32).collect(),
        clamped,
        bytes_per_member,
    })
}
