//! Typed gossipsub topics: `/cohort/<chain-id>/<kind>/1`.
//!
//! Topics are an enum so a typo cannot subscribe a node to a topic nobody publishes on, and so
//! every counter and per-topic limit is indexed by the same small set. Strings from the wire are
//! parsed back with [`Topic::parse`]; anything that is not one of ours for our chain is refused.

use std::fmt;

use libp2p::gossipsub::{IdentTopic, TopicHash};

/// Version suffix of every topic name. Bump it when the bytes carried on a topic change meaning.
const TOPIC_VERSION: &str = "1";

/// The gossip topics a Cohort node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Signed model deltas (large: up to several MiB each, see the crate doc for how they move).
    Deltas,
    /// Consensus messages: proposals, votes, evidence (small, latency-sensitive).
    Consensus,
    /// Membership requests: join and leave requests (small, rare).
    Membership,
}

impl Topic {
    /// Every topic, in a fixed order (the order of counters in snapshots).
    pub const ALL: [Topic; 3] = [Topic::Deltas, Topic::Consensus, Topic::Membership];

    /// The `<kind>` part of the topic name.
    pub fn kind(self) -> &'static str {
        match self {
            Topic::Deltas => "deltas",
            Topic::Consensus => "consensus",
            Topic::Membership => "membership",
        }
    }

    /// Position of this topic in [`Topic::ALL`] (index for per-topic arrays).
    pub fn index(self) -> usize {
        match self {
            Topic::Deltas => 0,
            Topic::Consensus => 1,
            Topic::Membership => 2,
        }
    }

    /// The full topic name for `chain_id`, e.g. `/cohort/testnet-1/deltas/1`.
    pub fn name(self, chain_id: &str) -> String {
        format!("/cohort/{chain_id}/{}/{TOPIC_VERSION}", self.kind())
    }

    /// The gossipsub topic for `chain_id`.
    pub fn ident(self, chain_id: &str) -> IdentTopic {
        IdentTopic::new(self.name(chain_id))
    }

    /// The gossipsub topic hash for `chain_id` (identity hash: the name itself).
    pub fn hash(self, chain_id: &str) -> TopicHash {
        self.ident(chain_id).hash()
    }

    /// Parses a topic name; `None` unless it is one of ours, for `chain_id`, at our version.
    pub fn parse(name: &str, chain_id: &str) -> Option<Topic> {
        let rest = name.strip_prefix("/cohort/")?;
        let rest = rest.strip_prefix(chain_id)?;
        let rest = rest.strip_prefix('/')?;
        let (kind, version) = rest.split_once('/')?;
        if version != TOPIC_VERSION {
            return None;
        }
        Topic::ALL.into_iter().find(|t| t.kind() == kind)
    }

    /// Parses a gossipsub topic hash (see [`Topic::parse`]).
    pub fn from_hash(hash: &TopicHash, chain_id: &str) -> Option<Topic> {
        Topic::parse(hash.as_str(), chain_id)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for topic in Topic::ALL {
            let name = topic.name("net-7");
            assert_eq!(Topic::parse(&name, "net-7"), Some(topic), "{name}");
            assert_eq!(Topic::from_hash(&topic.hash("net-7"), "net-7"), Some(topic));
            assert_eq!(Topic::ALL[topic.index()], topic);
        }
        assert_eq!(Topic::Deltas.name("c"), "/cohort/c/deltas/1");
    }

    #[test]
    fn foreign_names_are_refused() {
        for bad in [
            "/cohort/other/deltas/1",
            "/cohort/net-7/deltas/2",
            "/cohort/net-7/blocks/1",
            "/cohort/net-7x/deltas/1",
            "/eth2/abcd/beacon_block/ssz_snappy",
            "",
            "/cohort/net-7/deltas",
            "/cohort/net-7/deltas/1/extra",
        ] {
            assert_eq!(Topic::parse(bad, "net-7"), None, "{bad}");
        }
    }
}
