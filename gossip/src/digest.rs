//! Content digests and message ids (sha256).

use std::fmt;

use sha2::{Digest as _, Sha256};

/// sha256 of a byte string: names blobs, checkpoint chunks and (for announce-fetch topics) the
/// payload behind an announcement.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits are enough to tell digests apart in logs.
        write!(f, "{}..", hex::encode(&self.0[..4]))
    }
}

/// Id of a gossip message: the sha256 of the gossiped bytes (content addressing, so the same
/// bytes published twice, by anyone, are one message and deduplicated).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 32]);

impl MessageId {
    /// The id of gossiped bytes `data`.
    pub fn of(data: &[u8]) -> MessageId {
        MessageId(Digest::of(data).0)
    }

    pub(crate) fn to_gossipsub(self) -> libp2p::gossipsub::MessageId {
        libp2p::gossipsub::MessageId::new(&self.0)
    }

    pub(crate) fn from_gossipsub(id: &libp2p::gossipsub::MessageId) -> Option<MessageId> {
        <[u8; 32]>::try_from(id.0.as_slice()).ok().map(MessageId)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Digest(self.0), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&Digest(self.0), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_sha256() {
        // sha256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            Digest::of(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(format!("{:?}", Digest::of(b"abc")), "ba7816bf..");
    }

    #[test]
    fn message_id_round_trips_through_gossipsub() {
        let id = MessageId::of(b"vote");
        assert_eq!(MessageId::from_gossipsub(&id.to_gossipsub()), Some(id));
        assert_eq!(
            MessageId::from_gossipsub(&libp2p::gossipsub::MessageId::new(b"short")),
            None
        );
    }
}
