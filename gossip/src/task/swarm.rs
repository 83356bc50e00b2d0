//! Swarm and behaviour events: connections, discovery (identify, Kademlia, mDNS), relays.

use super::*;

impl Task {
    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                let addrs = self.listen_addrs();
                for waiter in self.listeners.waiters.drain(..) {
                    let _ = waiter.send(addrs.clone());
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if !endpoint.is_relayed() {
                    self.listen_via_relay(peer_id);
                }
                if num_established.get() == 1 && self.connected.insert(peer_id) {
                    self.emit(NetworkEvent::PeerConnected { peer: peer_id });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self.on_disconnected(peer_id),
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                // A bootstrap address that cannot be reached is the operator's business.
                let bare = |a: &Multiaddr| -> Multiaddr {
                    a.iter()
                        .filter(|p| !matches!(p, Protocol::P2p(_)))
                        .collect()
                };
                let failed: Vec<String> = match &error {
                    libp2p::swarm::DialError::Transport(errs) => errs
                        .iter()
                        .filter(|(a, _)| self.config.bootstrap.iter().any(|b| bare(b) == bare(a)))
                        .filter(|(a, _)| self.unreachable_warned.insert(bare(a)))
                        .map(|(a, e)| format!("{a}: {e:?}"))
                        .collect(),
                    _ => Vec::new(),
                };
                if failed.is_empty() {
                    debug!(peer = ?peer_id, %error, "dial failed");
                } else {
                    warn!(failed = ?failed, "bootstrap peer unreachable");
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                match self.listeners.first_error(listener_id) {
                    Some(addr) => {
                        warn!(%addr, %error, "listener error (its further errors are logged at debug level)");
                    }
                    None => debug!(?listener_id, %error, "listener error"),
                }
                self.answer_waiters_if_not_listening();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                let addr = self.listeners.closed(listener_id, &addresses);
                let left = self.swarm.listeners().count();
                match reason {
                    Err(error) => {
                        warn!(%addr, %error, addresses_left = left, "listener failed and closed");
                    }
                    Ok(()) if left == 0 => warn!(%addr, "listener closed; no listen address left"),
                    Ok(()) => info!(%addr, "listener closed"),
                }
                self.answer_waiters_if_not_listening();
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "external address confirmed");
            }
            _ => {}
        }
    }

    /// Without any listen address left, those waiting for one get none.
    fn answer_waiters_if_not_listening(&mut self) {
        if self.swarm.listeners().next().is_none() {
            for waiter in self.listeners.waiters.drain(..) {
                let _ = waiter.send(Vec::new());
            }
        }
    }

    /// Starts the relayed listeners that waited for a connection to `relay`.
    pub(super) fn listen_via_relay(&mut self, relay: PeerId) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.relay_listens)
            .into_iter()
            .partition(|(r, _)| *r == relay);
        self.relay_listens = waiting;
        for (_, addr) in ready {
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => self.listeners.asked(id, addr),
                Err(e) => warn!(%addr, error = %e, "cannot listen via relay"),
            }
        }
    }

    pub(super) fn on_disconnected(&mut self, peer: PeerId) {
        if self.connected.remove(&peer) {
            debug!(peer = %peer, "disconnected");
            self.emit(NetworkEvent::PeerDisconnected { peer });
        }
    }

    pub(super) fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(event) => self.on_gossipsub(event),
            BehaviourEvent::Blob(event) => self.on_blob_event(event),
            BehaviourEvent::State(event) => self.on_state_event(event),
            BehaviourEvent::Identify(event) => self.on_identify(event),
            BehaviourEvent::Kad(event) => self.on_kad(event),
            BehaviourEvent::Mdns(event) => self.on_mdns(event),
            BehaviourEvent::Autonat(event) => debug!(?event, "autonat"),
            BehaviourEvent::Dcutr(event) => debug!(?event, "dcutr"),
            BehaviourEvent::RelayClient(event) => debug!(?event, "relay client"),
            BehaviourEvent::RelayServer(event) => debug!(?event, "relay server"),
            BehaviourEvent::Limits(never) | BehaviourEvent::Blocked(never) => match never {},
        }
    }

    pub(super) fn on_gossipsub(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => self.on_gossip_message(propagation_source, message_id, message),
            gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            } => {
                debug!(peer = %peer_id, ?failed_messages, "slow gossipsub peer");
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                trace!(peer = %peer_id, %topic, "peer subscribed");
            }
            _ => {}
        }
    }

    pub(super) fn on_blob_event(
        &mut self,
        event: request_response::Event<BlobRequest, BlobResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_blob_request(peer, request.0, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_blob_response(request_id, Some(response)),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(peer = %peer, %error, "blob request failed");
                if is_garbage(&error) {
                    self.penalize(peer, PeerAction::MidTolerance);
                }
                self.on_blob_response(request_id, None);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(peer = %peer, %error, "inbound blob request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    pub(super) fn on_state_event(
        &mut self,
        event: request_response::Event<StateRequest, StateResponse>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_state_request(peer, request.from_height, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_state_response(request_id, Ok(response)),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if is_garbage(&error) {
                    self.penalize(peer, PeerAction::MidTolerance);
                }
                self.on_state_response(request_id, Err(error.to_string()));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(peer = %peer, %error, "inbound state request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    pub(super) fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        if info.protocol_version != crate::wire::identify_version(&self.config.chain_id) {
            info!(peer = %peer_id, version = %info.protocol_version, "peer of another network");
            if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                kad.remove_peer(&peer_id);
            }
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        }
        let chain = self.config.chain_id.clone();
        if !behaviour::speaks_kad(&info.protocols, &chain) {
            return;
        }
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        for addr in info.listen_addrs {
            kad.add_address(&peer_id, addr);
        }
        if !self.bootstrapped {
            self.bootstrapped = kad.bootstrap().is_ok();
        }
    }

    pub(super) fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer, is_new_peer, ..
            } => {
                if is_new_peer {
                    self.maybe_dial(peer);
                }
            }
            kad::Event::OutboundQueryProgressed { result, .. } => {
                trace!(?result, "kad query progressed");
            }
            other => trace!(?other, "kad"),
        }
    }

    pub(super) fn on_mdns(&mut self, event: mdns::Event) {
        if let mdns::Event::Discovered(found) = event {
            for (peer, addr) in found {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    kad.add_address(&peer, addr.clone());
                }
                if !self.swarm.is_connected(&peer)
                    && self.connected.len() < self.config.target_peers
                {
                    let _ = self.swarm.dial(addr);
                }
            }
        }
    }

    /// Dials a discovered peer while below the target peer count.
    pub(super) fn maybe_dial(&mut self, peer: PeerId) {
        if peer == *self.swarm.local_peer_id()
            || self.is_banned(&peer)
            || self.swarm.is_connected(&peer)
            || self.connected.len() >= self.config.target_peers
        {
            return;
        }
        if let Err(e) = self.swarm.dial(peer) {
            debug!(peer = %peer, error = %e, "dial of discovered peer failed");
        }
    }
}
