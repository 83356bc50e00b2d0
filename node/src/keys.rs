//! Node keys: one ed25519 key is both the libp2p identity (so a `PeerId` names a validator) and
//! the key that signs deltas and consensus votes.
//!
//! Files: `node.key` holds the 32-byte secret as hex (mode 0600); `node.key.pub` the public key as
//! hex, which is what a genesis file lists.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use consensus::ValidatorId;
use ed25519_dalek::SigningKey;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Parses 32 bytes of hex (either case; surrounding whitespace ignored).
pub fn parse_hex32(s: &str) -> Result<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        bail!("expected 64 hex characters, got {}", s.len());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| anyhow::anyhow!("bad hex: {e}"))?;
    Ok(out)
}

/// A node's key.
#[derive(Clone)]
pub struct NodeKey {
    secret: [u8; 32],
}

impl NodeKey {
    /// A fresh random key (from the OS RNG, through libp2p's generator).
    pub fn generate() -> Result<Self> {
        let kp = gossip::Keypair::generate_ed25519();
        let ed = kp
            .try_into_ed25519()
            .map_err(|e| anyhow::anyhow!("ed25519 key: {e}"))?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(ed.secret().as_ref());
        Ok(NodeKey { secret })
    }

    /// Reads a key file. On Unix a file that others may read or write is refused (like ssh's
    /// private keys: anyone who reads it can sign as this validator) unless `allow_open` (the
    /// operator said so with `--allow-open-key`).
    pub fn load_with(path: &Path, allow_open: bool) -> Result<Self> {
        #[cfg(unix)]
        if !allow_open {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .with_context(|| format!("reading key file {}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                bail!(
                    "key file {} has mode {:o}: others may read or change it, and whoever reads it \
                     can sign as this validator; run `chmod 600 {}` (or pass --allow-open-key)",
                    path.display(),
                    mode & 0o777,
                    path.display()
                );
            }
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading key file {}", path.display()))?;
        let secret = parse_hex32(&text)
            .with_context(|| format!("key file {} is malformed", path.display()))?;
        Ok(NodeKey { secret })
    }

    /// Writes the key (0600) and its `.pub` beside it.
    pub fn save(&self, path: &Path) -> Result<PathBuf> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "{}", hex(&self.secret))?;
        f.sync_all()?;
        let pub_path = pub_path(path);
        std::fs::write(&pub_path, format!("{}\n", hex(&self.public())))
            .with_context(|| format!("writing {}", pub_path.display()))?;
        Ok(pub_path)
    }

    /// The ed25519-dalek signing key.
    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.secret)
    }

    /// The public key bytes.
    pub fn public(&self) -> [u8; 32] {
        self.signing_key().verifying_key().to_bytes()
    }

    /// The validator id (the public key).
    pub fn validator_id(&self) -> ValidatorId {
        ValidatorId(self.public())
    }

    /// The libp2p keypair for the same key.
    pub fn libp2p(&self) -> Result<gossip::Keypair> {
        let mut copy = self.secret; // libp2p zeroes its input
        gossip::Keypair::ed25519_from_bytes(&mut copy)
            .map_err(|e| anyhow::anyhow!("libp2p key: {e}"))
    }

    /// The libp2p peer id.
    pub fn peer_id(&self) -> Result<gossip::PeerId> {
        Ok(self.libp2p()?.public().to_peer_id())
    }
}

/// `node.key` -> `node.key.pub`.
pub fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// The libp2p peer id of a validator's public key.
pub fn peer_id_of(id: &ValidatorId) -> Option<gossip::PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(&id.0).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

/// Reads a `.pub` file (or a bare hex string).
pub fn load_public(spec: &str) -> Result<ValidatorId> {
    let text = if Path::new(spec).is_file() {
        std::fs::read_to_string(spec).with_context(|| format!("reading {spec}"))?
    } else {
        spec.to_string()
    };
    Ok(ValidatorId(parse_hex32(&text).with_context(|| {
        format!("public key {spec} is malformed")
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_identity() {
        let dir = std::env::temp_dir().join(format!("cohort-keys-{}", std::process::id()));
        let k = NodeKey::generate().unwrap();
        let path = dir.join("node.key");
        let pubp = k.save(&path).unwrap();
        let back = NodeKey::load_with(&path, false).unwrap();
        assert_eq!(back.public(), k.public());
        assert_eq!(
            load_public(pubp.to_str().unwrap()).unwrap(),
            k.validator_id()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The PeerId derives from the same public key.
        assert_eq!(peer_id_of(&k.validator_id()), Some(k.peer_id().unwrap()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let err = NodeKey::load_with(&path, false)
                .err()
                .expect("a 0644 key is refused")
                .to_string();
            assert!(
                err.contains("mode 644") && err.contains("chmod 600"),
                "{err}"
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&path, "zz").unwrap();
        assert!(NodeKey::load_with(&path, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hex_of_32_bytes_round_trips_and_bad_hex_is_named() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let text = hex(&bytes);
        assert_eq!(&text[..8], "00254a6f");
        assert_eq!(parse_hex32(&text).unwrap(), bytes);
        assert_eq!(
            parse_hex32(&format!(" {}\n", text.to_uppercase())).unwrap(),
            bytes
        );
        let err = |s: &str| format!("{:#}", parse_hex32(s).unwrap_err());
        assert!(err(&text[..62]).contains("expected 64 hex characters, got 62"));
        let bad = format!("{}g{}", &text[..10], &text[11..]);
        assert!(
            err(&bad).contains("bad hex: Invalid character 'g' at position 10"),
            "{}",
            err(&bad)
        );
        // `u8::from_str_radix` took "+f" as 15; the hex crate does not.
        let plus = format!("+f{}", &text[2..]);
        assert!(err(&plus).contains("bad hex"));
    }
}
