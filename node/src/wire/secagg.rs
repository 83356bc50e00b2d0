//! Secure aggregation's messages (`protocol::secure`): a member's signed X25519 advert, its
//! masked delta's payload, the signed selection of a round's included set, a validator's signed
//! acknowledgement of one selection, a member's signed
//! reveal for that set, and a holder's signed share of a silent included member's self seed. Each signed message is a body and the ed25519 signature of its author
//! over a domain-separated encoding of the body; all are decoded with a size limit.

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signer, SigningKey};
use model::secagg::SealedShare;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Included, decode, encode, verify_ed25519};

/// Largest secure-aggregation gossip message (a selection or reveal names at most
/// `consensus::MAX_VALIDATORS` members).
pub const MAX_SECAGG_BYTES: usize = 256 << 10;

/// A signed body: who signs it, and its signature domain.
pub trait Body: Serialize {
    /// Domain of the signature.
    const DOMAIN: &'static [u8];
    /// The signer's ed25519 key.
    fn signer(&self) -> [u8; 32];
    /// The body's chain.
    fn chain(&self) -> &str;
}

/// A body with its author's ed25519 signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed<B> {
    /// What is signed.
    pub body: B,
    /// 64-byte ed25519 signature over `DOMAIN || encode(body)`.
    pub signature: Vec<u8>,
}

impl<B: Body> Signed<B> {
    fn sign_bytes(body: &B) -> Result<Vec<u8>> {
        let mut out = B::DOMAIN.to_vec();
        out.extend(encode::<_, MAX_SECAGG_BYTES>(body)?);
        Ok(out)
    }

    /// Signs `body` with `key` (which must be the body's signer).
    pub fn new(body: B, key: &SigningKey) -> Result<Self> {
        let sig = key.sign(&Self::sign_bytes(&body)?);
        Ok(Signed {
            body,
            signature: sig.to_bytes().to_vec(),
        })
    }

    /// Checks the chain and the signer's signature (strict).
    pub fn verify(&self, chain_id: &str) -> Result<()> {
        if self.body.chain() != chain_id {
            bail!("secure aggregation message for another chain");
        }
        verify_ed25519(
            &self.body.signer(),
            &Self::sign_bytes(&self.body)?,
            &self.signature,
        )
    }
}

/// A member's X25519 public key for one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvertBody {
    /// Network.
    pub chain_id: String,
    /// Round.
    pub round: u64,
    /// The validator.
    pub member: [u8; 32],
    /// Its fresh X25519 public key for this round.
    pub public_key: [u8; 32],
}

impl Body for AdvertBody {
    const DOMAIN: &'static [u8] = b"cohort/secagg/advert/v1\0";
    fn signer(&self) -> [u8; 32] {
        self.member
    }
    fn chain(&self) -> &str {
        &self.chain_id
    }
}

/// The included set a proposer fixed for a round, before any member reveals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionBody {
    /// Network.
    pub chain_id: String,
    /// Round.
    pub round: u64,
    /// The validator that fixed it.
    pub proposer: [u8; 32],
    /// The included masked deltas, sorted by author.
    pub included: Vec<Included>,
}

impl Body for SelectionBody {
    const DOMAIN: &'static [u8] = b"cohort/secagg/selection/v1\0";
    fn signer(&self) -> [u8; 32] {
        self.proposer
    }
    fn chain(&self) -> &str {
        &self.chain_id
    }
}

impl SelectionBody {
    /// What reveals name: SHA-256 of the chain, round and included set (not the proposer, so
    /// two proposers selecting the same set get the same reveals).
    pub fn digest(&self) -> [u8; 32] {
        selection_digest(&self.chain_id, self.round, &self.included)
    }
}

/// The digest of an included set (see [`SelectionBody::digest`]).
pub fn selection_digest(chain_id: &str, round: u64, included: &[Included]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cohort/secagg/included/v1\0");
    h.update((chain_id.len() as u32).to_le_bytes());
    h.update(chain_id.as_bytes());
    h.update(round.to_le_bytes());
    for i in included {
        h.update(i.author);
        h.update(i.digest);
        h.update(i.samples.to_le_bytes());
    }
    h.finalize().into()
}

/// A validator's acknowledgement of the one selection it accepts for a round (the consistency
/// step of `protocol::agreement`): an honest validator signs one per round, for the first
/// well-formed selection it sees, and no member reveals anything for a selection until a quorum
/// acknowledged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckBody {
    /// Network.
    pub chain_id: String,
    /// Round.
    pub round: u64,
    /// The acknowledging validator.
    pub member: [u8; 32],
    /// The selection it accepts ([`SelectionBody::digest`]).
    pub selection: [u8; 32],
}

impl Body for AckBody {
    const DOMAIN: &'static [u8] = b"cohort/secagg/ack/v1\0";
    fn signer(&self) -> [u8; 32] {
        self.member
    }
    fn chain(&self) -> &str {
        &self.chain_id
    }
}

/// What an included member reveals for one selection: its self seed and its pair seeds with
/// the roster members outside the selection.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RevealBody {
    /// Network.
    pub chain_id: String,
    /// Round.
    pub round: u64,
    /// The revealing member.
    pub member: [u8; 32],
    /// The selection it reveals for ([`SelectionBody::digest`]).
    pub selection: [u8; 32],
    /// Its self-mask seed.
    pub self_seed: [u8; 32],
    /// Its pair seeds with the excluded roster members.
    pub pair_seeds: Vec<([u8; 32], [u8; 32])>,
}

impl std::fmt::Debug for RevealBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevealBody")
            .field("round", &self.round)
            .field("pair_seeds", &self.pair_seeds.len())
            .finish_non_exhaustive()
    }
}

impl Body for RevealBody {
    const DOMAIN: &'static [u8] = b"cohort/secagg/reveal/v1\0";
    fn signer(&self) -> [u8; 32] {
        self.member
    }
    fn chain(&self) -> &str {
        &self.chain_id
    }
}

/// A holder's share of an included member's self seed, published when that member's reveal is
/// missing after a wait (`protocol::recovery`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryBody {
    /// Network.
    pub chain_id: String,
    /// Round.
    pub round: u64,
    /// The holder publishing its share (the signer).
    pub holder: [u8; 32],
    /// The included member whose self seed the share is of.
    pub member: [u8; 32],
    /// The selection that includes `member` ([`SelectionBody::digest`]).
    pub selection: [u8; 32],
    /// The plain share (checked against the member's `SealedShare::commit`).
    pub share: [u8; 32],
    /// From a holder outside the selection only: its pair seed with `member` (checked against
    /// the member's pair commitment), which `member` would have revealed itself.
    pub pair_seed: Option<[u8; 32]>,
}

impl std::fmt::Debug for RecoveryBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryBody")
            .field("round", &self.round)
            .finish_non_exhaustive()
    }
}

impl Body for RecoveryBody {
    const DOMAIN: &'static [u8] = b"cohort/secagg/recovery/v1\0";
    fn signer(&self) -> [u8; 32] {
        self.holder
    }
    fn chain(&self) -> &str {
        &self.chain_id
    }
}

/// In a round value, in place of an included member's missing reveal: the signed shares its
/// self seed is recovered from (exactly the threshold's number, sorted by holder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveredSeed {
    /// The included member.
    pub member: [u8; 32],
    /// Signed shares of its self seed.
    pub shares: Vec<SignedRecovery>,
    /// One message with a pair seed from every roster member outside the selection.
    pub pairs: Vec<SignedRecovery>,
}

impl RecoveredSeed {
    /// Prefix that tells these from an encoded [`SignedReveal`] in `Aggregation::reveals`.
    pub const MAGIC: &'static [u8] = b"cohort/secagg/recovered/v1\0";

    /// Canonical bytes (as a round value carries them).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Self::MAGIC.to_vec();
        out.extend(encode::<_, MAX_SECAGG_BYTES>(self)?);
        Ok(out)
    }

    /// Parses (untrusted) bytes; `None` when they are not a recovered seed.
    pub fn decode(bytes: &[u8]) -> Option<Result<Self>> {
        let body = bytes.strip_prefix(Self::MAGIC)?;
        Some(decode::<_, MAX_SECAGG_BYTES>(body))
    }
}

/// A signed advert.
pub type SignedAdvert = Signed<AdvertBody>;
/// A signed selection.
pub type SignedSelection = Signed<SelectionBody>;
/// A signed acknowledgement of a selection.
pub type SignedAck = Signed<AckBody>;
/// A signed reveal.
pub type SignedReveal = Signed<RevealBody>;
/// A signed share of a silent member's self seed.
pub type SignedRecovery = Signed<RecoveryBody>;

impl SignedReveal {
    /// Canonical bytes (as a round value carries them).
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode::<_, MAX_SECAGG_BYTES>(self)
    }

    /// Parses (untrusted) bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode::<_, MAX_SECAGG_BYTES>(bytes)
    }
}

/// A masked delta's payload (in place of the `model::codec` encoding): the roster it was masked
/// against, the masked fixed-point vector and the commitments to its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskedPayload {
    /// The round's roster as the author saw it: signed adverts sorted by member.
    pub roster: Vec<SignedAdvert>,
    /// `encode((samples / max_samples) * delta) + masks`, wrapping.
    pub values: Vec<u32>,
    /// Commitment to the self seed.
    pub self_commit: [u8; 32],
    /// Commitment to the pair seed with every other roster member, in roster order.
    pub pair_commits: Vec<([u8; 32], [u8; 32])>,
    /// The self seed's Shamir shares, one sealed to every other roster member, in roster order
    /// (fixed size each: `model::secagg::SealedShare`).
    pub shares: Vec<SealedShare>,
}

impl MaskedPayload {
    /// Bytes for `DeltaMsg::payload`.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode::<_, { super::MAX_DELTA_BYTES }>(self)
    }

    /// Parses (untrusted) bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode::<_, { super::MAX_DELTA_BYTES }>(bytes)
    }

    /// The roster as (member, X25519 key) pairs.
    pub fn roster_keys(&self) -> Vec<([u8; 32], [u8; 32])> {
        self.roster
            .iter()
            .map(|a| (a.body.member, a.body.public_key))
            .collect()
    }
}

/// A secure-aggregation message on the deltas topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SecAggMsg {
    /// A member's key for a round.
    Advert(SignedAdvert),
    /// A round's included set.
    Selection(SignedSelection),
    /// A member's reveal.
    Reveal(SignedReveal),
    /// A holder's share of a silent included member's self seed.
    Recovery(SignedRecovery),
    /// A validator's acknowledgement of a round's selection.
    Ack(SignedAck),
}

impl SecAggMsg {
    /// Prefix that tells these from signed deltas on the deltas topic.
    pub const MAGIC: &'static [u8] = b"cohort/secagg/v1\0";

    /// Wire bytes (`sent_ms` after the message makes each re-broadcast new bytes for gossip).
    pub fn encode(&self, sent_ms: u64) -> Result<Vec<u8>> {
        let mut out = Self::MAGIC.to_vec();
        out.extend(encode::<_, MAX_SECAGG_BYTES>(&(self, sent_ms)).context("secagg message")?);
        Ok(out)
    }

    /// Parses (untrusted) bytes; `None` when they are not a secure-aggregation message.
    pub fn decode(bytes: &[u8]) -> Option<Result<Self>> {
        let body = bytes.strip_prefix(Self::MAGIC)?;
        Some(decode::<(SecAggMsg, u64), MAX_SECAGG_BYTES>(body).map(|(m, _)| m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secagg_messages_round_trip_refuse_tampering_and_garbage() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let me = key.verifying_key().to_bytes();
        let advert = SignedAdvert::new(
            AdvertBody {
                chain_id: "c".into(),
                round: 4,
                member: me,
                public_key: [3; 32],
            },
            &key,
        )
        .unwrap();
        advert.verify("c").unwrap();
        assert!(advert.verify("d").is_err());
        let mut t = advert.clone();
        t.body.public_key[0] ^= 1;
        assert!(t.verify("c").is_err(), "a changed key breaks the signature");
        let bytes = SecAggMsg::Advert(advert.clone()).encode(7).unwrap();
        let back = SecAggMsg::decode(&bytes).unwrap().unwrap();
        assert_eq!(back, SecAggMsg::Advert(advert));
        for cut in SecAggMsg::MAGIC.len()..bytes.len() {
            assert!(SecAggMsg::decode(&bytes[..cut]).unwrap().is_err());
        }
        assert!(SecAggMsg::decode(b"not ours").is_none());
        let mut huge = SecAggMsg::MAGIC.to_vec();
        huge.extend_from_slice(&[2, 0, 0, 0]);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(SecAggMsg::decode(&huge).unwrap().is_err());
    }

    #[test]
    fn a_recovered_seed_round_trips_and_truncated_or_huge_bytes_are_refused() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let r = SignedRecovery::new(
            RecoveryBody {
                chain_id: "c".into(),
                round: 4,
                holder: key.verifying_key().to_bytes(),
                member: [1; 32],
                selection: [2; 32],
                share: [3; 32],
                pair_seed: None,
            },
            &key,
        )
        .unwrap();
        r.verify("c").unwrap();
        let mut t = r.clone();
        t.body.share[0] ^= 1;
        assert!(
            t.verify("c").is_err(),
            "a changed share breaks the signature"
        );
        let rec = RecoveredSeed {
            member: [1; 32],
            shares: vec![r],
            pairs: Vec::new(),
        };
        let bytes = rec.encode().unwrap();
        assert_eq!(RecoveredSeed::decode(&bytes).unwrap().unwrap(), rec);
        for cut in RecoveredSeed::MAGIC.len()..bytes.len() {
            assert!(RecoveredSeed::decode(&bytes[..cut]).unwrap().is_err());
        }
        // A reveal is not a recovered seed.
        assert!(RecoveredSeed::decode(b"\x01c").is_none());
        let mut huge = RecoveredSeed::MAGIC.to_vec();
        huge.extend_from_slice(&[1; 32]);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(RecoveredSeed::decode(&huge).unwrap().is_err());
    }
}
