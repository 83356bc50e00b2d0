//! The node's listeners: the address each was asked to listen on, so that a failing one is
//! reported by address and reason, once (libp2p's `ListenerError` carries only the listener id,
//! and a listener that keeps failing to accept would repeat it).

use std::collections::{HashMap, HashSet};

use libp2p::{Multiaddr, core::transport::ListenerId};
use tokio::sync::oneshot;

/// Listener bookkeeping of the network task.
#[derive(Debug, Default)]
pub(super) struct Listeners {
    /// What each listener was asked to listen on.
    asked: HashMap<ListenerId, Multiaddr>,
    /// Listeners whose error was already reported.
    reported: HashSet<ListenerId>,
    /// Callers waiting for the first listen address (`NetworkHandle::listen_addrs`).
    pub waiters: Vec<oneshot::Sender<Vec<Multiaddr>>>,
}

impl Listeners {
    /// Remembers that listener `id` listens on `addr`.
    pub fn asked(&mut self, id: ListenerId, addr: Multiaddr) {
        self.asked.insert(id, addr);
    }

    /// The address to name in the warning for an error of listener `id`: `Some` the first time,
    /// `None` for its later errors.
    pub fn first_error(&mut self, id: ListenerId) -> Option<String> {
        self.reported.insert(id).then(|| self.name(id, &[]))
    }

    /// Forgets listener `id`, which closed while bound to `addresses`; the address to name in
    /// the log line.
    pub fn closed(&mut self, id: ListenerId, addresses: &[Multiaddr]) -> String {
        let name = self.name(id, addresses);
        self.asked.remove(&id);
        self.reported.remove(&id);
        name
    }

    /// The address listener `id` was asked for, else the ones it was bound to.
    fn name(&self, id: ListenerId, addresses: &[Multiaddr]) -> String {
        match self.asked.get(&id) {
            Some(addr) => addr.to_string(),
            None if !addresses.is_empty() => addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            None => format!("{id:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_listener_is_named_by_its_address_once() {
        let mut l = Listeners::default();
        let (a, b) = (ListenerId::next(), ListenerId::next());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().expect("multiaddr");
        l.asked(a, addr.clone());
        l.asked(
            b,
            "/ip4/0.0.0.0/udp/4001/quic-v1".parse().expect("multiaddr"),
        );
        assert_eq!(l.first_error(a).as_deref(), Some("/ip4/127.0.0.1/tcp/4001"));
        // Its later errors are not warned again; another listener's first one is.
        assert_eq!(l.first_error(a), None);
        assert_eq!(l.first_error(a), None);
        assert_eq!(
            l.first_error(b).as_deref(),
            Some("/ip4/0.0.0.0/udp/4001/quic-v1")
        );
        // Closing names it too and forgets it.
        assert_eq!(l.closed(a, &[]), "/ip4/127.0.0.1/tcp/4001");
        assert!(!l.asked.contains_key(&a) && !l.reported.contains(&a));
    }

    #[test]
    fn an_unknown_listener_is_named_by_its_bound_addresses_or_its_id() {
        let mut l = Listeners::default();
        let id = ListenerId::next();
        let bound: Vec<Multiaddr> = vec![
            "/ip4/10.0.0.1/tcp/9000".parse().expect("multiaddr"),
            "/ip4/127.0.0.1/tcp/9000".parse().expect("multiaddr"),
        ];
        assert_eq!(
            l.closed(id, &bound),
            "/ip4/10.0.0.1/tcp/9000, /ip4/127.0.0.1/tcp/9000"
        );
        assert_eq!(l.closed(id, &[]), format!("{id:?}"));
    }
}
