//! Secure aggregation with dropouts: the sum of the members' vectors is revealed, each member's
//! vector stays hidden (Bonawitz et al. 2017, "Practical secure aggregation for
//! privacy-preserving machine learning", CCS, the double-masking protocol).
//!
//! **Threat model.** Members follow the protocol but read everything they receive
//! (honest-but-curious), and may drop out at any point. A member that deviates (masks with other
//! seeds, reveals what it must not, withholds reveals) can break privacy or the round; this
//! module detects wrong or missing reveals (commitments) but is not a defence against an active
//! adversary (Bonawitz et al.'s signatures and consistency checks belong to the node).
//!
//! **One round.** Every member `i` of the roster draws fresh secrets from the OS CSPRNG
//! ([`MemberSecrets`]: an X25519 key and a self-mask seed `b_i`) and publishes its X25519 public
//! key ([`Advert`]; the node signs it with the validator's ed25519 key, which binds it to the
//! identity). Then:
//! 1. **Mask** ([`mask`]): for every other member `j`, the pair seed `s_ij` = SHA-256 of the
//!    domain, both identities and public keys, and the X25519 shared secret; the member adds
//!    `PRG(b_i)` and, per pair, `+PRG(s_ij)` if its id is the lower one, `-PRG(s_ij)` otherwise,
//!    all in wrapping `u32`. It publishes the masked vector with SHA-256 commitments to `b_i`
//!    and to every `s_ij`. `PRG` is ChaCha20 keyed by SHA-256(label, chain, round, seed).
//! 2. **Fix the included set** (the node's committed value): the members whose masked vectors
//!    are summed; the rest of the roster is excluded (dropped out or late).
//! 3. **Reveal** ([`reveal`]): every included member reveals `b_i` and its pair seeds with the
//!    *excluded* members, never with included ones; an excluded member reveals nothing.
//! 4. **Unmask** ([`unmask`]): sum the included vectors; pair masks between included members
//!    cancel; subtract every included self mask and the pair masks shared with excluded members,
//!    each checked against the member's commitment first.
//!
//! 5. **Recover** ([`share_self_seed`], [`open_share`], [`recover_self_seed`]): an included
//!    member that drops before revealing. Each member also Shamir-shares `b_i` ([`shamir`]),
//!    one share sealed to every other member; holders publish their shares of a silent included
//!    member's `b_i`, and `t` of them recombine to it (checked against its commitment). Its
//!    pair seeds with excluded members come from those members ([`excluded_pair_seed`]),
//!    checked against its pair commitments; an excluded member that is gone leaves them missing.
//!
//! **Why double masking.** An excluded member's masked vector may still reach someone late.
//! Its pair seeds with the included members are revealed in step 3, so pair masks alone would
//! then hide nothing; its self mask `PRG(b_j)` is never revealed (an excluded member never
//! reveals `b_j`), so the vector stays hidden. An included member's `b_i` is revealed, but its
//! pair masks with the other included members are not, and those hide it unless it is the only
//! included member (a sum of one is that member's vector: callers require a quorum).
//!
//! **Why fresh X25519 keys, not the ed25519 key converted to X25519.** The conversion would bind
//! the key to the identity without an extra message, but the pair seed would then be the same
//! every round: once revealed because of one dropout, every later round's mask of that pair would
//! be known. Fresh keys per round confine a reveal to its round; the signature on the advert
//! binds them to the validator.
//!
//! Values enter as `u32` from [`Quantizer`] (fixed point, no wrap for the sum of the members).
//! This module is pure: secrets come in as bytes.

pub mod local;
mod quant;
mod recovery;
pub mod shamir;

pub use quant::{Encoded, MAX_MEMBERS, Quantizer};
pub use recovery::{
    SealedShare, excluded_pair_seed, open_share, recover_self_seed, seed_matches, share_commit,
    share_self_seed,
};

use rand::{RngCore as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest as _, Sha256};
use x25519_dalek::{X25519_BASEPOINT_BYTES, x25519};

/// A member's identity (the validator's ed25519 public key in the node). Lower ids add pair
/// masks, higher ids subtract them.
pub type MemberId = [u8; 32];

/// What can go wrong in secure aggregation: bad parameters, or a member's message that does
/// not fit the round (reject it).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggError {
    /// The quantiser's bound is not finite and positive.
    #[error("the fixed-point bound must be finite and > 0, got {bound}")]
    BadBound { bound: f32 },
    /// More members than the fixed-point scale allows (their sum could wrap).
    #[error("{members} members: the fixed-point sum admits 1 to {max}")]
    TooManyMembers { members: usize, max: usize },
    /// A value to encode is NaN or infinite.
    #[error("coordinate {index} is not finite")]
    NonFinite { index: usize },
    /// A member is listed twice (roster, included set or reveals).
    #[error("member {member} appears twice")]
    Duplicate { member: String },
    /// A member, or a member named in a reveal, is not on the round's roster.
    #[error("member {member} is not on the round's roster")]
    NotOnRoster { member: String },
    /// The secrets do not belong to the roster's public key for this member.
    #[error("member {member}'s secret key does not match its advertised public key")]
    KeyMismatch { member: String },
    /// A masked vector of the wrong length.
    #[error("member {member} sent {got} values, expected {expected}")]
    WrongLength {
        member: String,
        got: usize,
        expected: usize,
    },
    /// X25519 with this public key gave the all-zero secret (a low-order point).
    #[error("key agreement with member {member} is not contributory (low-order public key)")]
    NonContributory { member: String },
    /// Nothing to sum.
    #[error("the included set is empty")]
    Empty,
    /// An excluded member was asked to reveal (that would unmask its late vector).
    #[error("member {member} is excluded: it reveals nothing")]
    ExcludedReveals { member: String },
    /// An included member's reveal is missing.
    #[error("no reveal from included member {member}")]
    MissingReveal { member: String },
    /// A revealed self seed does not match the member's commitment.
    #[error("member {member} revealed a self seed that does not match its commitment")]
    BadSelfSeed { member: String },
    /// An included member did not reveal its pair seed with an excluded one.
    #[error("member {member} did not reveal its pair seed with excluded member {excluded}")]
    MissingPairSeed { member: String, excluded: String },
    /// A revealed pair seed does not match the member's commitment.
    #[error("member {member}'s pair seed with {other} does not match its commitment")]
    BadPairSeed { member: String, other: String },
    /// A setting that secure aggregation cannot run with (a robust rule, compression, ...).
    #[error("secure aggregation {what}")]
    Unsupported { what: String },
    /// A pair seed between two included members was revealed: it would unmask them.
    #[error("member {member} revealed its pair seed with included member {other}")]
    ForbiddenReveal { member: String, other: String },
    /// A self-seed share threshold outside 1 to the number of holders.
    #[error("self-seed share threshold {threshold} with {holders} holders")]
    BadThreshold { threshold: usize, holders: usize },
    /// A share of a member's self seed that does not open (changed, sealed with another key)
    /// or does not match its commitment.
    #[error("member {member}'s self-seed share for holder {holder} is wrong")]
    BadShare { member: String, holder: String },
    /// Fewer valid shares than the threshold.
    #[error("{got} shares of member {member}'s self seed, {need} needed")]
    TooFewShares {
        member: String,
        got: usize,
        need: usize,
    },
}

fn short(id: &MemberId) -> String {
    hex::encode(&id[..4])
}

/// Where a round's masks belong: seeds and streams are domain-separated by chain and round, so
/// nothing derived for one round means anything in another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Domain {
    /// SHA-256 of the chain id.
    chain: [u8; 32],
    /// The training round.
    round: u64,
}

impl Domain {
    /// The domain of `round` on the chain `chain_id`.
    pub fn new(chain_id: &str, round: u64) -> Self {
        let mut h = Sha256::new();
        h.update(b"cohort secagg chain v1");
        h.update(chain_id.as_bytes());
        Domain {
            chain: h.finalize().into(),
            round,
        }
    }

    /// The round.
    pub fn round(&self) -> u64 {
        self.round
    }

    fn hash(&self, label: &[u8]) -> Sha256 {
        let mut h = Sha256::new();
        h.update(b"cohort secagg v1 ");
        h.update(label);
        h.update(self.chain);
        h.update(self.round.to_le_bytes());
        h
    }
}

/// A member's secrets for one round: an X25519 secret key and the self-mask seed. Both must be
/// fresh and secret (the node draws them from the OS CSPRNG every round). `Debug` prints nothing.
#[derive(Clone)]
pub struct MemberSecrets {
    dh: [u8; 32],
    self_seed: [u8; 32],
}

impl std::fmt::Debug for MemberSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemberSecrets { .. }")
    }
}

impl MemberSecrets {
    /// Secrets from 64 secret bytes (X25519 key, self seed).
    pub fn from_bytes(dh: [u8; 32], self_seed: [u8; 32]) -> Self {
        MemberSecrets { dh, self_seed }
    }

    /// **Reproducible, not secret** secrets for simulations and tests: SHA-256 of a label, the
    /// seed, the round and the member index. Anyone who knows the seed can unmask everything.
    pub fn reproducible(seed: u64, round: u64, member: u64) -> Self {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(b"cohort secagg reproducible ");
            h.update(label);
            h.update(seed.to_le_bytes());
            h.update(round.to_le_bytes());
            h.update(member.to_le_bytes());
            h.finalize().into()
        };
        Self::from_bytes(derive(b"dh"), derive(b"self"))
    }

    /// The X25519 public key to advertise.
    pub fn public_key(&self) -> [u8; 32] {
        x25519(self.dh, X25519_BASEPOINT_BYTES)
    }
}

/// A member's advertised key for one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    /// Who.
    pub member: MemberId,
    /// Its X25519 public key for this round.
    pub public_key: [u8; 32],
}

/// A member's masked vector and its commitments to the seeds it masked with.
#[derive(Debug, Clone, PartialEq)]
pub struct Masked {
    /// Who.
    pub member: MemberId,
    /// `x + PRG(b) +- sum of pair masks`, wrapping.
    pub values: Vec<u32>,
    /// Commitment to the self seed `b`.
    pub self_commit: [u8; 32],
    /// Commitment to the pair seed with every other roster member, in roster order.
    pub pair_commits: Vec<(MemberId, [u8; 32])>,
}

/// What an included member reveals once the included set is fixed.
#[derive(Clone, PartialEq)]
pub struct Reveal {
    /// Who.
    pub member: MemberId,
    /// Its self seed `b`.
    pub self_seed: [u8; 32],
    /// Its pair seeds with the excluded members.
    pub pair_seeds: Vec<(MemberId, [u8; 32])>,
}

impl std::fmt::Debug for Reveal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reveal")
            .field("member", &short(&self.member))
            .field("pair_seeds", &self.pair_seeds.len())
            .finish_non_exhaustive()
    }
}

fn commit(domain: &Domain, seed: &[u8; 32]) -> [u8; 32] {
    let mut h = domain.hash(b"commit");
    h.update(seed);
    h.finalize().into()
}

/// Adds (`sign = true`) or subtracts `PRG(seed)` to `out`, wrapping.
fn apply_stream(out: &mut [u32], domain: &Domain, label: &[u8], seed: &[u8; 32], add: bool) {
    let mut h = domain.hash(label);
    h.update(seed);
    let mut rng = ChaCha20Rng::from_seed(h.finalize().into());
    if add {
        out.iter_mut()
            .for_each(|v| *v = v.wrapping_add(rng.next_u32()));
    } else {
        out.iter_mut()
            .for_each(|v| *v = v.wrapping_sub(rng.next_u32()));
    }
}

/// Checks the roster has no duplicate member and returns the advert of `me`.
fn find<'a>(roster: &'a [Advert], me: &MemberId) -> Result<&'a Advert, SecAggError> {
    let mut seen = std::collections::BTreeSet::new();
    for a in roster {
        if !seen.insert(a.member) {
            return Err(SecAggError::Duplicate {
                member: short(&a.member),
            });
        }
    }
    roster
        .iter()
        .find(|a| a.member == *me)
        .ok_or_else(|| SecAggError::NotOnRoster { member: short(me) })
}

/// Whether an X25519 public key is of small order (all zero, or another of the few points that
/// every clamped scalar, a multiple of 8, sends to zero): a secret agreed with such a key is
/// known to anyone, so an advert carrying one must be refused where it arrives.
pub fn low_order(public_key: &[u8; 32]) -> bool {
    x25519([9u8; 32], *public_key) == [0u8; 32]
}

/// The X25519 secret our `secrets` share with `other`; a low-order key (an all-zero result) is
/// refused, as it would make the secret known to anyone.
fn shared_secret(secrets: &MemberSecrets, other: &Advert) -> Result<[u8; 32], SecAggError> {
    let shared = x25519(secrets.dh, other.public_key);
    if shared == [0u8; 32] {
        return Err(SecAggError::NonContributory {
            member: short(&other.member),
        });
    }
    Ok(shared)
}

/// The pair seed of `mine` (whose secrets are given) and `other`: SHA-256 over the domain, both
/// (id, public key) in id order and the X25519 shared secret.
fn pair_seed(
    domain: &Domain,
    secrets: &MemberSecrets,
    mine: &Advert,
    other: &Advert,
) -> Result<[u8; 32], SecAggError> {
    let shared = shared_secret(secrets, other)?;
    let (lo, hi) = if mine.member < other.member {
        (mine, other)
    } else {
        (other, mine)
    };
    let mut h = domain.hash(b"pair seed");
    for a in [lo, hi] {
        h.update(a.member);
        h.update(a.public_key);
    }
    h.update(shared);
    Ok(h.finalize().into())
}

/// `me`'s secrets, checked against the roster.
fn own_advert<'a>(
    roster: &'a [Advert],
    me: &MemberId,
    secrets: &MemberSecrets,
) -> Result<&'a Advert, SecAggError> {
    let mine = find(roster, me)?;
    if mine.public_key != secrets.public_key() {
        return Err(SecAggError::KeyMismatch { member: short(me) });
    }
    Ok(mine)
}

/// Masks `me`'s encoded vector for the round (step 1).
pub fn mask(
    domain: &Domain,
    roster: &[Advert],
    me: &MemberId,
    secrets: &MemberSecrets,
    encoded: &[u32],
) -> Result<Masked, SecAggError> {
    let mine = own_advert(roster, me, secrets)?;
    let mut values = encoded.to_vec();
    apply_stream(&mut values, domain, b"self mask", &secrets.self_seed, true);
    let mut pair_commits = Vec::with_capacity(roster.len().saturating_sub(1));
    for other in roster.iter().filter(|a| a.member != *me) {
        let seed = pair_seed(domain, secrets, mine, other)?;
        apply_stream(&mut values, domain, b"pair mask", &seed, *me < other.member);
        pair_commits.push((other.member, commit(domain, &seed)));
    }
    Ok(Masked {
        member: *me,
        values,
        self_commit: commit(domain, &secrets.self_seed),
        pair_commits,
    })
}

/// Checks `included` is a duplicate-free subset of the roster.
fn check_included(roster: &[Advert], included: &[MemberId]) -> Result<(), SecAggError> {
    let mut seen = std::collections::BTreeSet::new();
    for m in included {
        if !roster.iter().any(|a| a.member == *m) {
            return Err(SecAggError::NotOnRoster { member: short(m) });
        }
        if !seen.insert(*m) {
            return Err(SecAggError::Duplicate { member: short(m) });
        }
    }
    Ok(())
}

/// What `me` reveals once `included` is fixed (step 3): its self seed and its pair seeds with
/// the excluded roster members. An excluded member reveals nothing (an error).
pub fn reveal(
    domain: &Domain,
    roster: &[Advert],
    me: &MemberId,
    secrets: &MemberSecrets,
    included: &[MemberId],
) -> Result<Reveal, SecAggError> {
    let mine = own_advert(roster, me, secrets)?;
    check_included(roster, included)?;
    if !included.contains(me) {
        return Err(SecAggError::ExcludedReveals { member: short(me) });
    }
    let mut pair_seeds = Vec::new();
    for other in roster.iter().filter(|a| !included.contains(&a.member)) {
        pair_seeds.push((other.member, pair_seed(domain, secrets, mine, other)?));
    }
    Ok(Reveal {
        member: *me,
        self_seed: secrets.self_seed,
        pair_seeds,
    })
}

/// The plain (still encoded) sum of the included members' vectors (step 4): `inputs` are the
/// included set's masked vectors, `reveals` one per included member. Every reveal is checked
/// against its member's commitments; anything missing, extra or wrong is an error.
pub fn unmask(
    domain: &Domain,
    roster: &[Advert],
    inputs: &[Masked],
    reveals: &[Reveal],
) -> Result<Vec<u32>, SecAggError> {
    let first = inputs.first().ok_or(SecAggError::Empty)?;
    let included: Vec<MemberId> = inputs.iter().map(|m| m.member).collect();
    check_included(roster, &included)?;
    let len = first.values.len();
    let mut sum = vec![0u32; len];
    for m in inputs {
        if m.values.len() != len {
            return Err(SecAggError::WrongLength {
                member: short(&m.member),
                got: m.values.len(),
                expected: len,
            });
        }
        sum.iter_mut()
            .zip(&m.values)
            .for_each(|(s, v)| *s = s.wrapping_add(*v));
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in reveals {
        if !included.contains(&r.member) {
            return Err(SecAggError::ExcludedReveals {
                member: short(&r.member),
            });
        }
        if !seen.insert(r.member) {
            return Err(SecAggError::Duplicate {
                member: short(&r.member),
            });
        }
    }
    for m in inputs {
        let member = short(&m.member);
        let r = reveals
            .iter()
            .find(|r| r.member == m.member)
            .ok_or_else(|| SecAggError::MissingReveal {
                member: member.clone(),
            })?;
        if commit(domain, &r.self_seed) != m.self_commit {
            return Err(SecAggError::BadSelfSeed { member });
        }
        for (other, _) in &r.pair_seeds {
            if included.contains(other) {
                return Err(SecAggError::ForbiddenReveal {
                    member,
                    other: short(other),
                });
            }
            if !roster.iter().any(|a| a.member == *other) {
                return Err(SecAggError::NotOnRoster {
                    member: short(other),
                });
            }
        }
        apply_stream(&mut sum, domain, b"self mask", &r.self_seed, false);
        for excluded in roster.iter().filter(|a| !included.contains(&a.member)) {
            let other = short(&excluded.member);
            let seeds: Vec<_> = r
                .pair_seeds
                .iter()
                .filter(|(o, _)| *o == excluded.member)
                .collect();
            let seed = match seeds.as_slice() {
                [(_, s)] => s,
                [] => {
                    return Err(SecAggError::MissingPairSeed {
                        member,
                        excluded: other,
                    });
                }
                _ => return Err(SecAggError::Duplicate { member: other }),
            };
            let committed = m
                .pair_commits
                .iter()
                .find(|(o, _)| *o == excluded.member)
                .map(|(_, c)| c);
            if committed != Some(&commit(domain, seed)) {
                return Err(SecAggError::BadPairSeed { member, other });
            }
            // The included member added this pair's mask if its id is the lower one: undo it.
            apply_stream(
                &mut sum,
                domain,
                b"pair mask",
                seed,
                m.member > excluded.member,
            );
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests;
