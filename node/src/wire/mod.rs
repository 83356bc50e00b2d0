//! The node's own signed and stored formats: deltas, round values, ledger entries, checkpoints.
//!
//! All use bincode 2 with one fixed configuration (little-endian, fixed-width integers) and an
//! explicit size limit, so signed bytes are canonical and a peer cannot make us allocate more
//! than the limit.

use anyhow::{Context, Result, bail};
use consensus::ChainId;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod secagg;

/// Largest signed delta accepted (the CNN dense is 6.7 MB).
pub const MAX_DELTA_BYTES: usize = 32 << 20;
/// Largest checkpoint accepted.
pub const MAX_CHECKPOINT_BYTES: usize = 64 << 20;
/// Largest ledger entry.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

type Cfg<const L: usize> = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::Limit<L>,
>;

fn cfg<const L: usize>() -> Cfg<L> {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<L>()
}

pub(crate) fn encode<T: Serialize, const L: usize>(v: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(v, cfg::<L>()).context("encoding")
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>, const L: usize>(bytes: &[u8]) -> Result<T> {
    if bytes.len() > L {
        bail!("{} bytes exceed the limit of {L}", bytes.len());
    }
    let (v, used) = bincode::serde::decode_from_slice(bytes, cfg::<L>()).context("decoding")?;
    if used != bytes.len() {
        bail!("{} trailing bytes", bytes.len() - used);
    }
    Ok(v)
}

/// Strict ed25519 verification of `signature` by `key` over `msg` (the same rule on every node).
pub(crate) fn verify_ed25519(key: &[u8; 32], msg: &[u8], signature: &[u8]) -> Result<()> {
    let key = VerifyingKey::from_bytes(key).context("public key")?;
    let sig: [u8; 64] = signature.try_into().context("signature length")?;
    key.verify_strict(msg, &Signature::from_bytes(&sig))
        .context("bad signature")
}

/// SHA-256.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A node's update for one round, before signing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaMsg {
    /// Network.
    pub chain_id: String,
    /// Training round (= consensus height).
    pub round: u64,
    /// Hash of the parameters it was trained from.
    pub base_hash: [u8; 32],
    /// Author's public key.
    pub author: [u8; 32],
    /// Local training samples (the FedAvg weight).
    pub samples: u64,
    /// Mean local training loss (informational).
    pub train_loss: f32,
    /// The encoded delta (`model::codec`; the encoding is its first byte).
    pub payload: Vec<u8>,
}

/// A delta with its ed25519 signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedDelta {
    /// The message.
    pub msg: DeltaMsg,
    /// 64-byte ed25519 signature over [`DeltaMsg::sign_bytes`].
    pub signature: Vec<u8>,
}

impl DeltaMsg {
    /// What is signed: every field, with the payload by its hash (so equivocation evidence is
    /// two headers and two signatures, a few hundred bytes, whatever the model size).
    pub fn header(&self) -> DeltaHeader {
        DeltaHeader {
            chain_id: self.chain_id.clone(),
            round: self.round,
            base_hash: self.base_hash,
            author: self.author,
            samples: self.samples,
            train_loss: self.train_loss,
            payload_hash: sha256(&self.payload),
        }
    }

    /// Domain-separated bytes that are signed.
    pub fn sign_bytes(&self) -> Result<Vec<u8>> {
        self.header().sign_bytes()
    }

    /// Signs with `key`.
    pub fn sign(self, key: &SigningKey) -> Result<SignedDelta> {
        let sig = key.sign(&self.sign_bytes()?);
        Ok(SignedDelta {
            msg: self,
            signature: sig.to_bytes().to_vec(),
        })
    }
}

/// The signed part of a delta: its fields with the payload replaced by its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaHeader {
    /// Network.
    pub chain_id: String,
    /// Training round.
    pub round: u64,
    /// Hash of the parameters it was trained from.
    pub base_hash: [u8; 32],
    /// Author's public key.
    pub author: [u8; 32],
    /// Samples claimed.
    pub samples: u64,
    /// Mean local training loss (0 unless released).
    pub train_loss: f32,
    /// SHA-256 of the encoded delta.
    pub payload_hash: [u8; 32],
}

impl DeltaHeader {
    /// Domain-separated bytes that are signed.
    pub fn sign_bytes(&self) -> Result<Vec<u8>> {
        let mut out = b"cohort/delta/v2\0".to_vec();
        out.extend(encode::<_, 4096>(self)?);
        Ok(out)
    }

    /// Checks `signature` against the author's key (strict verification).
    pub fn verify(&self, signature: &[u8]) -> Result<()> {
        verify_ed25519(&self.author, &self.sign_bytes()?, signature).context("delta")
    }
}

/// A delta header with its author's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedHeader {
    /// The header.
    pub header: DeltaHeader,
    /// The author's signature over [`DeltaHeader::sign_bytes`].
    pub signature: Vec<u8>,
}

impl SignedDelta {
    /// Wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode::<_, MAX_DELTA_BYTES>(self)
    }

    /// Parses wire bytes (untrusted).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode::<_, MAX_DELTA_BYTES>(bytes)
    }

    /// Checks the signature against the author's key (strict verification, the same rule on
    /// every node).
    pub fn verify(&self) -> Result<()> {
        self.msg.header().verify(&self.signature)
    }

    /// The signed header (what equivocation evidence carries).
    pub fn signed_header(&self) -> SignedHeader {
        SignedHeader {
            header: self.msg.header(),
            signature: self.signature.clone(),
        }
    }
}

/// One included delta in a round value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Included {
    /// Author.
    pub author: [u8; 32],
    /// SHA-256 of the signed delta's wire bytes.
    pub digest: [u8; 32],
    /// Samples claimed (the aggregation weight).
    pub samples: u64,
}

/// What consensus agrees on for a round (the opaque `consensus::Value` bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundValue {
    /// Format version.
    pub version: u8,
    /// Round.
    pub round: u64,
    /// Hash of the parameters the round started from.
    pub base_hash: [u8; 32],
    /// Included deltas, sorted by author.
    pub included: Vec<Included>,
    /// How the round aggregated: the rule and, under secure aggregation, the reveals.
    pub aggregation: Aggregation,
    /// Hash of the parameters after the round.
    pub model_hash: [u8; 32],
    /// Hash of the server momentum buffer after the round.
    pub momentum_hash: [u8; 32],
    /// Id of the previous round's committed value (zeros for round 1).
    pub prev_value: [u8; 32],
    /// Signed join requests admitted by this round (sorted by key): under `approve` each votes
    /// from round + 2; under `open` each becomes a contributor.
    pub joins: Vec<SignedJoin>,
    /// Under `open`: contributors promoted to validator by this round (sorted), voting from
    /// round + 2: exactly those the committed ledger makes due (`Committed::due_promotions`).
    pub promotions: Vec<[u8; 32]>,
    /// Authors of included deltas that the round's outcome marks as outliers (sorted):
    /// `model::aggregate::outliers` of the deltas against the aggregate, recomputed by every
    /// validator. Reputation: an outlier inclusion does not count towards promotion.
    pub rejected: Vec<[u8; 32]>,
    /// Validators removed by this round (sorted), from round + 2: exactly those the committed
    /// ledger makes due (`Committed::due_removals`) and the offenders of `evidence`.
    pub removals: Vec<[u8; 32]>,
    /// Consensus equivocation evidence (`consensus::encode_message(Message::Evidence)` bytes),
    /// one per offender: committed, it removes the offender.
    pub evidence: Vec<Vec<u8>>,
    /// Delta equivocation evidence (two signed delta headers), one per offender, none of them
    /// an offender of `evidence`: committed, it removes the offender.
    pub delta_evidence: Vec<DeltaEvidence>,
    /// Under the `approve` policy: for each join, approvals from a quorum of the current
    /// validators (sorted by joiner, then validator); empty otherwise.
    pub approvals: Vec<SignedApproval>,
}

/// How a round value aggregates its included deltas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregation {
    /// The aggregation rule (its canonical string).
    pub rule: String,
    /// Under secure aggregation: one [`secagg::SignedReveal`] (encoded) per included delta, in
    /// the order of `included`, which unmask their sum, or in place of a silent member's reveal
    /// a [`secagg::RecoveredSeed`] (its self seed's signed shares); empty for a void round (the
    /// model stays as it was). Always empty without secure aggregation.
    pub reveals: Vec<Vec<u8>>,
}

/// A request to become a validator, signed by the joining key. It names the round it was made
/// at and the last round it may be admitted in, so it cannot be replayed later (in particular
/// not after its key was removed: a request made before the removal is refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedJoin {
    /// Network.
    pub chain_id: String,
    /// The joining validator's public key.
    pub validator: [u8; 32],
    /// The joiner's last committed round when it made the request.
    pub round: u64,
    /// The last round whose value may admit it.
    pub expires: u64,
    /// ed25519 signature by `validator` over
    /// `cohort/join/v2 || chain_id || validator || round || expires`.
    pub signature: Vec<u8>,
    /// Proof of work: a nonce for which `sha256(cohort/join-work/v1 || signature || work)`
    /// starts with at least the genesis `membership.join_work_bits` zero bits. The signature
    /// is deterministic over chain, key, round and expiry, so the work is bound to this one
    /// request: a fresh key, or a new request, costs a fresh proof.
    pub work: u64,
}

/// Most work bits a genesis may ask of a join request (2^32 hashes: hours on one core).
pub const MAX_JOIN_WORK_BITS: u32 = 32;

impl SignedJoin {
    /// The leading zero bits of this request's work hash.
    pub fn work_bits(&self) -> u32 {
        Self::bits_for(&self.signature, self.work)
    }

    fn bits_for(signature: &[u8], work: u64) -> u32 {
        let mut h = Sha256::new();
        h.update(b"cohort/join-work/v1\0");
        h.update(signature);
        h.update(work.to_le_bytes());
        let d = h.finalize();
        let mut bits = 0;
        for b in d.iter() {
            bits += b.leading_zeros();
            if *b != 0 {
                break;
            }
        }
        bits
    }

    /// Finds the first nonce giving at least `bits` zero bits (about 2^bits hashes; `bits` is
    /// capped at [`MAX_JOIN_WORK_BITS`]).
    pub fn solve(mut self, bits: u32) -> SignedJoin {
        let bits = bits.min(MAX_JOIN_WORK_BITS);
        self.work = (0..=u64::MAX)
            .find(|w| Self::bits_for(&self.signature, *w) >= bits)
            .unwrap_or(0);
        self
    }

    fn sign_bytes(chain_id: &str, validator: &[u8; 32], round: u64, expires: u64) -> Vec<u8> {
        let mut out = b"cohort/join/v2\0".to_vec();
        out.extend_from_slice(&(chain_id.len() as u32).to_le_bytes());
        out.extend_from_slice(chain_id.as_bytes());
        out.extend_from_slice(validator);
        out.extend_from_slice(&round.to_le_bytes());
        out.extend_from_slice(&expires.to_le_bytes());
        out
    }

    /// A join request for `key` on `chain_id`, made at `round`, valid through `expires`.
    pub fn new(chain_id: &str, key: &SigningKey, round: u64, expires: u64) -> SignedJoin {
        let validator = key.verifying_key().to_bytes();
        let sig = key.sign(&Self::sign_bytes(chain_id, &validator, round, expires));
        SignedJoin {
            chain_id: chain_id.to_string(),
            validator,
            round,
            expires,
            signature: sig.to_bytes().to_vec(),
            work: 0,
        }
    }

    /// Checks the chain and the signature.
    pub fn verify(&self, chain_id: &str) -> Result<()> {
        if self.chain_id != chain_id {
            bail!("join request for chain {:?}", self.chain_id);
        }
        let msg = Self::sign_bytes(&self.chain_id, &self.validator, self.round, self.expires);
        verify_ed25519(&self.validator, &msg, &self.signature).context("join request")
    }

    /// Wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode::<_, 4096>(self)
    }

    /// Parses (untrusted) bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode::<_, 4096>(bytes)
    }
}

impl RoundValue {
    /// Canonical bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode::<_, { consensus::MAX_VALUE_BYTES }>(self)
    }

    /// Parses (untrusted) bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode::<_, { consensus::MAX_VALUE_BYTES }>(bytes)
    }
}

/// A validator's approval of a joiner (the `approve` admission policy), made at the validator's
/// committed round `round`: a value may admit the joiner with approvals from a quorum of the
/// current validators, each made within [`crate::protocol::round::JOIN_TTL`] rounds and after
/// any removal of the joiner (so an old approval never re-admits a removed key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedApproval {
    /// Network.
    pub chain_id: String,
    /// The approved joining key.
    pub joiner: [u8; 32],
    /// The approving validator.
    pub validator: [u8; 32],
    /// The validator's last committed round when it approved.
    pub round: u64,
    /// ed25519 signature by `validator` over
    /// `cohort/approve/v1 || chain_id || joiner || validator || round`.
    pub signature: Vec<u8>,
}

impl SignedApproval {
    /// Prefix that tells an approval from a join request on the membership topic.
    pub const MAGIC: &'static [u8] = b"cohort/approve/v1\0";

    fn sign_bytes(chain_id: &str, joiner: &[u8; 32], validator: &[u8; 32], round: u64) -> Vec<u8> {
        let mut out = Self::MAGIC.to_vec();
        out.extend_from_slice(&(chain_id.len() as u32).to_le_bytes());
        out.extend_from_slice(chain_id.as_bytes());
        out.extend_from_slice(joiner);
        out.extend_from_slice(validator);
        out.extend_from_slice(&round.to_le_bytes());
        out
    }

    /// `key`'s approval of `joiner` on `chain_id`, made at `round`.
    pub fn new(chain_id: &str, key: &SigningKey, joiner: [u8; 32], round: u64) -> SignedApproval {
        let validator = key.verifying_key().to_bytes();
        let sig = key.sign(&Self::sign_bytes(chain_id, &joiner, &validator, round));
        SignedApproval {
            chain_id: chain_id.to_string(),
            joiner,
            validator,
            round,
            signature: sig.to_bytes().to_vec(),
        }
    }

    /// Checks the chain and the signature.
    pub fn verify(&self, chain_id: &str) -> Result<()> {
        if self.chain_id != chain_id {
            bail!("approval for chain {:?}", self.chain_id);
        }
        let msg = Self::sign_bytes(&self.chain_id, &self.joiner, &self.validator, self.round);
        verify_ed25519(&self.validator, &msg, &self.signature).context("approval")
    }

    /// Wire bytes (with [`Self::MAGIC`] in front, and `sent_ms` after, which makes each
    /// re-broadcast new bytes for gossip).
    pub fn encode(&self, sent_ms: u64) -> Result<Vec<u8>> {
        let mut out = Self::MAGIC.to_vec();
        out.extend(encode::<_, 4096>(&(self, sent_ms))?);
        Ok(out)
    }

    /// Parses (untrusted) bytes; `None` when they are not an approval at all.
    pub fn decode(bytes: &[u8]) -> Option<Result<Self>> {
        let body = bytes.strip_prefix(Self::MAGIC)?;
        Some(decode::<(SignedApproval, u64), 4096>(body).map(|(a, _)| a))
    }
}

/// What a node tells the membership topic now and then: its genesis file and how far it got, so
/// a node started with another genesis under the same chain name learns what differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenesisHello {
    /// The genesis file (canonical TOML).
    pub genesis: String,
    /// The sender's last committed round.
    pub height: u64,
    /// When it was sent (sender's clock, ms): makes each hello new bytes for gossip.
    pub sent_ms: u64,
}

impl GenesisHello {
    /// Prefix that tells a hello from a join request on the membership topic.
    pub const MAGIC: &'static [u8] = b"cohort/hello/v1\0";

    /// Wire bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Self::MAGIC.to_vec();
        out.extend(encode::<_, 65_536>(self)?);
        Ok(out)
    }

    /// Parses (untrusted) bytes; `None` when they are not a hello at all.
    pub fn decode(bytes: &[u8]) -> Option<Result<Self>> {
        let body = bytes.strip_prefix(Self::MAGIC)?;
        Some(decode::<_, 65_536>(body))
    }
}

/// One ledger record: a committed value and its certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Height (= round).
    pub height: u64,
    /// `consensus::Value` bytes (a [`RoundValue`]).
    pub value: Vec<u8>,
    /// `consensus::encode_certificate` bytes.
    pub certificate: Vec<u8>,
}

impl LedgerEntry {
    /// Bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode::<_, MAX_ENTRY_BYTES>(self)
    }

    /// Parses (untrusted) bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode::<_, MAX_ENTRY_BYTES>(bytes)
    }

    /// Checks the certificate against `set`, that it certifies this value, and every join
    /// request in it.
    pub fn verify(&self, chain: &ChainId, set: &consensus::ValidatorSet) -> Result<RoundValue> {
        let cert = consensus::decode_certificate(&self.certificate)
            .map_err(|e| anyhow::anyhow!("certificate of height {}: {e}", self.height))?;
        cert.verify_for_height(
            consensus::Height(self.height),
            set,
            chain,
            &consensus::Ed25519Verifier,
        )
        .map_err(|e| anyhow::anyhow!("certificate of height {}: {e}", self.height))?;
        let value = consensus::Value(self.value.clone());
        if value.id() != cert.value_id {
            bail!("height {}: certificate is for another value", self.height);
        }
        let rv = RoundValue::decode(&self.value)
            .with_context(|| format!("value of height {}", self.height))?;
        if rv.round != self.height {
            bail!(
                "height {} holds a value for round {}",
                self.height,
                rv.round
            );
        }
        Ok(rv)
    }
}

/// Proof that an author signed two different deltas for one round: two signed headers (compact,
/// so a round value can carry it and commit it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaEvidence {
    /// One signed delta header.
    pub first: SignedHeader,
    /// Another, different one for the same author and round.
    pub second: SignedHeader,
}

impl DeltaEvidence {
    /// The equivocating author.
    pub fn author(&self) -> [u8; 32] {
        self.first.header.author
    }

    /// Checks that both are validly signed for `chain_id` by the same author for the same round
    /// and differ.
    pub fn check(&self, chain_id: &str) -> Result<()> {
        let (a, b) = (&self.first.header, &self.second.header);
        if a.chain_id != chain_id || b.chain_id != chain_id {
            bail!("evidence for another chain");
        }
        if a.author != b.author || a.round != b.round {
            bail!("evidence deltas are for different authors or rounds");
        }
        if a == b {
            bail!("the two deltas are the same");
        }
        a.verify(&self.first.signature)?;
        b.verify(&self.second.signature)
    }

    /// Bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode::<_, { MAX_EVIDENCE_BYTES }>(self)
    }
}

/// Largest delta equivocation evidence (two headers with a bounded chain id).
pub const MAX_EVIDENCE_BYTES: usize = 4096;

/// The committed state after a round: what a checkpoint carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateBody {
    /// Last committed round (0 = genesis).
    pub round: u64,
    /// Id of that round's value.
    pub value_id: [u8; 32],
    /// Parameters, canonical order.
    pub params: Vec<f32>,
    /// Server momentum buffer (empty when unused).
    pub velocity: Vec<f32>,
}

impl StateBody {
    /// Bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode::<_, MAX_CHECKPOINT_BYTES>(self)
    }

    /// Parses (untrusted) bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode::<_, MAX_CHECKPOINT_BYTES>(bytes)
    }
}

/// Hash of a momentum buffer (all zeros when empty, i.e. momentum unused).
pub fn momentum_hash(velocity: &[f32]) -> [u8; 32] {
    if velocity.is_empty() {
        [0; 32]
    } else {
        model::params::hash_params(velocity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta() -> DeltaMsg {
        DeltaMsg {
            chain_id: "c".into(),
            round: 3,
            base_hash: [1; 32],
            author: [0; 32],
            samples: 10,
            train_loss: 0.5,
            payload: vec![0, 1, 0, 0, 0, 0, 0, 0, 0],
        }
    }

    #[test]
    fn signed_delta_round_trip_and_tamper() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut m = delta();
        m.author = key.verifying_key().to_bytes();
        let s = m.sign(&key).unwrap();
        let bytes = s.encode().unwrap();
        let back = SignedDelta::decode(&bytes).unwrap();
        back.verify().unwrap();
        let mut t = back.clone();
        t.msg.samples = 11;
        assert!(t.verify().is_err());
        let mut t = back;
        t.signature.pop();
        assert!(t.verify().is_err());
        // Garbage and truncations never panic.
        for cut in 0..bytes.len() {
            assert!(SignedDelta::decode(&bytes[..cut]).is_err());
        }
        let mut rng = model::rng::Rng::seed(1);
        for _ in 0..2000 {
            let n = rng.below(200);
            let b: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let _ = SignedDelta::decode(&b);
            let _ = RoundValue::decode(&b);
            let _ = LedgerEntry::decode(&b);
        }
        // A claimed huge length is refused without allocating it.
        let mut huge = vec![1u8];
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(SignedDelta::decode(&huge).is_err());
    }

    #[test]
    fn join_work_is_bound_to_the_request_and_costs_about_two_to_the_bits_hashes() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let j = SignedJoin::new("c@00", &key, 5, 20);
        let solved = j.clone().solve(12);
        assert!(solved.work_bits() >= 12);
        solved.verify("c@00").unwrap();
        // The first nonce with 12 zero bits: geometric with mean 4096, so far below 2^20.
        assert!(solved.work < 1 << 20, "{}", solved.work);
        // The same nonce on another request (another round, another key) is not work for it.
        let other = SignedJoin::new("c@00", &key, 6, 20);
        let reused = SignedJoin {
            work: solved.work,
            ..other
        };
        let stranger = SignedJoin {
            work: solved.work,
            ..SignedJoin::new("c@00", &SigningKey::from_bytes(&[4; 32]), 5, 20)
        };
        // Each has 12 bits only by a 1-in-4096 chance; the seeds here do not.
        assert!(reused.work_bits() < 12 && stranger.work_bits() < 12);
        let back = SignedJoin::decode(&solved.encode().unwrap()).unwrap();
        assert_eq!(back.work_bits(), solved.work_bits());
    }
}
