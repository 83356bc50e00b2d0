//! Signing and verifying through two small traits: real ed25519 keys for the node, a cheap
//! insecure scheme for tests and the simulator.

use ed25519_dalek::Signer as _;
use sha2::{Digest, Sha256};

use crate::types::{Signature, ValidatorId};

/// Signs sign bytes with this node's validator key.
pub trait Signer: Send {
    /// The public key, i.e. this node's validator id.
    fn id(&self) -> ValidatorId;
    /// Signs `bytes` (already domain separated by the caller).
    fn sign(&self, bytes: &[u8]) -> Signature;
}

/// Verifies signatures of any validator.
pub trait Verifier: Send {
    /// True when `signature` is `validator`'s signature of `bytes`.
    fn verify(&self, validator: &ValidatorId, bytes: &[u8], signature: &Signature) -> bool;
}

/// An ed25519 signing key (ed25519-dalek).
pub struct Ed25519Signer {
    key: ed25519_dalek::SigningKey,
}

impl Ed25519Signer {
    /// Wraps a signing key.
    pub fn new(key: ed25519_dalek::SigningKey) -> Self {
        Ed25519Signer { key }
    }

    /// From the 32 secret seed bytes.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Ed25519Signer {
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        }
    }
}

impl Signer for Ed25519Signer {
    fn id(&self) -> ValidatorId {
        ValidatorId(self.key.verifying_key().to_bytes())
    }

    fn sign(&self, bytes: &[u8]) -> Signature {
        Signature(self.key.sign(bytes).to_bytes())
    }
}

/// ed25519 verification with `verify_strict`, so every honest node accepts exactly the same
/// signatures (no malleable or small-order-key signatures).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ed25519Verifier;

impl Verifier for Ed25519Verifier {
    fn verify(&self, validator: &ValidatorId, bytes: &[u8], signature: &Signature) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&validator.0) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(bytes, &signature).is_ok()
    }
}

/// [`Ed25519Verifier`] with the validators' public keys decompressed once: the same
/// `verify_strict` check, without decompressing the signer's key (a curve square root) on
/// every message. Keys not in the cache are decompressed per call as by `Ed25519Verifier`.
/// Cloning shares the cache, so one per validator set serves every node and height.
#[derive(Clone, Debug, Default)]
pub struct Ed25519KeyCache {
    keys: std::sync::Arc<std::collections::BTreeMap<ValidatorId, ed25519_dalek::VerifyingKey>>,
}

impl Ed25519KeyCache {
    /// A cache of these validators' keys (ids that are not valid keys are left out; they
    /// never verify).
    pub fn new(validators: impl IntoIterator<Item = ValidatorId>) -> Self {
        let keys = validators
            .into_iter()
            .filter_map(|id| {
                ed25519_dalek::VerifyingKey::from_bytes(&id.0)
                    .ok()
                    .map(|key| (id, key))
            })
            .collect();
        Ed25519KeyCache {
            keys: std::sync::Arc::new(keys),
        }
    }
}

impl Verifier for Ed25519KeyCache {
    fn verify(&self, validator: &ValidatorId, bytes: &[u8], signature: &Signature) -> bool {
        match self.keys.get(validator) {
            Some(key) => key
                .verify_strict(bytes, &ed25519_dalek::Signature::from_bytes(&signature.0))
                .is_ok(),
            None => Ed25519Verifier.verify(validator, bytes, signature),
        }
    }
}

/// INSECURE test scheme: the "signature" is `SHA-256("insecure" | id | bytes)` twice. Anyone
/// can forge it; it exists so the simulator can run millions of messages cheaply. Never use
/// it outside tests and simulation.
#[derive(Clone, Copy, Debug)]
pub struct InsecureTestSigner {
    id: ValidatorId,
}

impl InsecureTestSigner {
    /// A test signer for validator `id`.
    pub fn new(id: ValidatorId) -> Self {
        InsecureTestSigner { id }
    }
}

fn insecure_signature(id: &ValidatorId, bytes: &[u8]) -> Signature {
    let digest: [u8; 32] = Sha256::new()
        .chain_update(b"insecure-test-signature")
        .chain_update(id.0)
        .chain_update(bytes)
        .finalize()
        .into();
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&digest);
    out[32..].copy_from_slice(&digest);
    Signature(out)
}

impl Signer for InsecureTestSigner {
    fn id(&self) -> ValidatorId {
        self.id
    }

    fn sign(&self, bytes: &[u8]) -> Signature {
        insecure_signature(&self.id, bytes)
    }
}

/// Verifier of [`InsecureTestSigner`] signatures (tests and simulation only).
#[derive(Clone, Copy, Debug, Default)]
pub struct InsecureTestVerifier;

impl Verifier for InsecureTestVerifier {
    fn verify(&self, validator: &ValidatorId, bytes: &[u8], signature: &Signature) -> bool {
        insecure_signature(validator, bytes) == *signature
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_signs_and_verifies_strictly() {
        let signer = Ed25519Signer::from_seed(&[7u8; 32]);
        let sig = signer.sign(b"hello");
        assert!(Ed25519Verifier.verify(&signer.id(), b"hello", &sig));
        assert!(!Ed25519Verifier.verify(&signer.id(), b"hellp", &sig));
        let other = Ed25519Signer::from_seed(&[8u8; 32]);
        assert!(!Ed25519Verifier.verify(&other.id(), b"hello", &sig));
        // A key that is not a valid curve point never verifies (and does not panic).
        assert!(!Ed25519Verifier.verify(&ValidatorId([0xff; 32]), b"hello", &sig));
    }

    #[test]
    fn key_cache_verifies_like_ed25519_verifier() {
        let signer = Ed25519Signer::from_seed(&[7u8; 32]);
        let stranger = Ed25519Signer::from_seed(&[9u8; 32]);
        let cache = Ed25519KeyCache::new([signer.id(), ValidatorId([0xff; 32])]);
        let sig = signer.sign(b"hello");
        let stranger_sig = stranger.sign(b"hello");
        for (id, bytes, sig) in [
            (signer.id(), &b"hello"[..], sig),
            (signer.id(), &b"hellp"[..], sig),
            (stranger.id(), &b"hello"[..], stranger_sig),
            (stranger.id(), &b"hello"[..], sig),
            (ValidatorId([0xff; 32]), &b"hello"[..], sig),
        ] {
            assert_eq!(
                cache.verify(&id, bytes, &sig),
                Ed25519Verifier.verify(&id, bytes, &sig)
            );
        }
        assert!(cache.clone().verify(&signer.id(), b"hello", &sig));
        assert!(cache.verify(&stranger.id(), b"hello", &stranger_sig));
    }

    #[test]
    fn insecure_scheme_binds_key_and_bytes() {
        let a = InsecureTestSigner::new(ValidatorId([1; 32]));
        let sig = a.sign(b"x");
        assert!(InsecureTestVerifier.verify(&a.id(), b"x", &sig));
        assert!(!InsecureTestVerifier.verify(&ValidatorId([2; 32]), b"x", &sig));
        assert!(!InsecureTestVerifier.verify(&a.id(), b"y", &sig));
    }
}
