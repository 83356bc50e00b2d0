//! Blob fetches by digest (for the caller, for announced payloads, for checkpoint chunks) and
//! serving blob and state requests from peers.

use super::*;

impl Task {
    /// `preferred` first, then every other connected peer, none twice, no banned peer.
    pub(super) fn candidates(&self, preferred: Vec<PeerId>) -> VecDeque<PeerId> {
        let mut out = VecDeque::new();
        let mut seen = HashSet::new();
        let others: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in preferred.into_iter().chain(others) {
            if !self.is_banned(&peer) && seen.insert(peer) {
                out.push_back(peer);
            }
        }
        out
    }

    pub(super) fn start_fetch(
        &mut self,
        digest: Digest,
        expected_len: Option<u64>,
        candidates: VecDeque<PeerId>,
        purpose: FetchPurpose,
    ) {
        let id = self.next_id();
        if matches!(purpose, FetchPurpose::Announced { .. }) {
            self.announce_fetches += 1;
        }
        self.fetches.insert(
            id,
            Fetch {
                digest,
                expected_len,
                candidates,
                asked: 0,
                purpose,
                started: Instant::now(),
            },
        );
        self.next_attempt(id);
    }

    /// Asks the next candidate, or fails the fetch when none is left.
    pub(super) fn next_attempt(&mut self, id: u64) {
        let Some(fetch) = self.fetches.get_mut(&id) else {
            return;
        };
        // An announced payload is worthless once gossipsub has forgotten the announcement.
        let expired = matches!(fetch.purpose, FetchPurpose::Announced { .. })
            && fetch.started.elapsed() > self.config.validation_timeout;
        while !expired && fetch.asked < self.config.fetch_attempts {
            let Some(peer) = fetch.candidates.pop_front() else {
                break;
            };
            if !self.swarm.is_connected(&peer) && fetch.asked > 0 {
                continue;
            }
            fetch.asked += 1;
            let digest = fetch.digest;
            let request = self
                .swarm
                .behaviour_mut()
                .blob
                .send_request(&peer, BlobRequest(digest));
            self.blob_requests.insert(request, (id, peer));
            trace!(peer = %peer, digest = ?digest, "blob request sent");
            return;
        }
        if let Some(fetch) = self.fetches.remove(&id) {
            self.fetch_failed(fetch);
        }
    }

    pub(super) fn on_blob_response(
        &mut self,
        request: OutboundRequestId,
        response: Option<BlobResponse>,
    ) {
        let Some((id, peer)) = self.blob_requests.remove(&request) else {
            return;
        };
        let Some(fetch) = self.fetches.get(&id) else {
            return;
        };
        match response {
            Some(BlobResponse::Found(bytes)) => {
                let len_ok = fetch.expected_len.is_none_or(|l| l == bytes.len() as u64);
                if len_ok && Digest::of(&bytes) == fetch.digest {
                    if let Some(fetch) = self.fetches.remove(&id) {
                        self.fetch_done(fetch, peer, bytes);
                    }
                    return;
                }
                warn!(peer = %peer, digest = ?fetch.digest, "blob does not match its digest");
                self.counters.digest_mismatches += 1;
                self.penalize(peer, PeerAction::LowTolerance);
            }
            Some(BlobResponse::NotFound) => {
                trace!(peer = %peer, digest = ?fetch.digest, "peer has no such blob");
            }
            None => {}
        }
        self.next_attempt(id);
    }

    pub(super) fn fetch_done(&mut self, fetch: Fetch, from: PeerId, bytes: Bytes) {
        match fetch.purpose {
            FetchPurpose::Caller(reply) => {
                self.blobs.insert(fetch.digest, bytes.clone());
                let _ = reply.send(Ok(bytes));
            }
            FetchPurpose::Announced {
                topic,
                message_id,
                propagation_source,
                source,
            } => {
                self.announce_fetches -= 1;
                self.blobs.insert(fetch.digest, bytes.clone());
                debug!(peer = %from, digest = ?fetch.digest, "announced payload fetched");
                self.deliver(
                    topic,
                    source,
                    propagation_source,
                    message_id,
                    bytes,
                    Some(fetch.digest),
                );
            }
            FetchPurpose::StateChunk { sync, index } => self.on_chunk(sync, index, bytes.into()),
        }
    }

    pub(super) fn fetch_failed(&mut self, fetch: Fetch) {
        match fetch.purpose {
            FetchPurpose::Caller(reply) => {
                let err = if fetch.asked == 0 {
                    Error::NoPeers
                } else {
                    Error::BlobNotFound {
                        digest: fetch.digest,
                        asked: fetch.asked,
                    }
                };
                let _ = reply.send(Err(err));
            }
            FetchPurpose::Announced {
                topic,
                message_id,
                propagation_source,
                ..
            } => {
                self.announce_fetches -= 1;
                self.drop_message(
                    topic,
                    &message_id.to_gossipsub(),
                    &propagation_source,
                    Outcome::Ignored,
                    "fetch_failed",
                );
            }
            FetchPurpose::StateChunk { sync, index } => {
                self.finish_sync(
                    sync,
                    Err(format!(
                        "chunk {index} ({:?}) could not be fetched",
                        fetch.digest
                    )),
                );
            }
        }
    }

    pub(super) fn lookup_blob(&mut self, digest: &Digest) -> Option<Bytes> {
        if let Some(bytes) = self.blobs.get(digest) {
            return Some(bytes);
        }
        self.served.iter().find_map(|cp| {
            cp.chunks
                .get(digest)
                .map(|&(start, len)| Bytes::copy_from_slice(&cp.bytes[start..start + len]))
        })
    }

    pub(super) fn on_blob_request(
        &mut self,
        peer: PeerId,
        digest: Digest,
        channel: ResponseChannel<BlobResponse>,
    ) {
        if let Some(bytes) = self.lookup_blob(&digest) {
            self.counters.requests_served += 1;
            let _ = self
                .swarm
                .behaviour_mut()
                .blob
                .send_response(channel, BlobResponse::Found(bytes));
            return;
        }
        if self.inbound_channels.len() >= self.config.max_pending_inbound {
            let _ = self
                .swarm
                .behaviour_mut()
                .blob
                .send_response(channel, BlobResponse::NotFound);
            return;
        }
        let (tx, rx) = oneshot::channel();
        if !self.emit(NetworkEvent::InboundBlobRequest {
            peer,
            digest,
            respond: tx,
        }) {
            let _ = self
                .swarm
                .behaviour_mut()
                .blob
                .send_response(channel, BlobResponse::NotFound);
            return;
        }
        let key = self.next_id();
        self.inbound_channels
            .insert(key, InboundChannel::Blob(channel));
        let wait = self.config.request_timeout / 2;
        self.inbound.push(Box::pin(async move {
            let answer = tokio::time::timeout(wait, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            (key, Answer::Blob(answer))
        }));
    }

    pub(super) fn on_state_request(
        &mut self,
        peer: PeerId,
        from_height: u64,
        channel: ResponseChannel<StateResponse>,
    ) {
        let (tx, rx) = oneshot::channel();
        if self.inbound_channels.len() >= self.config.max_pending_inbound
            || !self.emit(NetworkEvent::InboundStateRequest {
                peer,
                from_height,
                respond: tx,
            })
        {
            let _ = self
                .swarm
                .behaviour_mut()
                .state
                .send_response(channel, StateResponse::Unavailable);
            return;
        }
        let key = self.next_id();
        self.inbound_channels
            .insert(key, InboundChannel::State(channel));
        let wait = self.config.request_timeout / 2;
        self.inbound.push(Box::pin(async move {
            let answer = tokio::time::timeout(wait, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            (key, Answer::State(answer))
        }));
    }

    pub(super) fn on_answer(&mut self, key: u64, answer: Answer) {
        let Some(channel) = self.inbound_channels.remove(&key) else {
            return;
        };
        match (channel, answer) {
            (InboundChannel::Blob(channel), Answer::Blob(bytes)) => {
                let response = match bytes {
                    Some(bytes) if bytes.len() <= self.config.max_blob_bytes() => {
                        self.counters.requests_served += 1;
                        BlobResponse::Found(bytes)
                    }
                    _ => BlobResponse::NotFound,
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blob
                    .send_response(channel, response);
            }
            (InboundChannel::State(channel), Answer::State(snapshot)) => {
                let response = match snapshot {
                    None => StateResponse::Unavailable,
                    Some(snapshot) => {
                        self.counters.requests_served += 1;
                        StateResponse::Manifest(self.serve_snapshot(snapshot))
                    }
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_response(channel, response);
            }
            // Keys are unique per channel kind; a mismatch cannot happen.
            (InboundChannel::Blob(channel), Answer::State(_)) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .blob
                    .send_response(channel, BlobResponse::NotFound);
            }
            (InboundChannel::State(channel), Answer::Blob(_)) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .state
                    .send_response(channel, StateResponse::Unavailable);
            }
        }
    }

    /// Cuts the node's checkpoint into chunks, keeps it for serving them, returns the manifest.
    pub(super) fn serve_snapshot(&mut self, snapshot: StateSnapshot) -> StateManifest {
        let checkpoint = snapshot.checkpoint.map(|cp| {
            let (manifest, chunks) =
                CheckpointManifest::build(cp.meta, &cp.bytes, self.config.state_chunk_size);
            let mut index = HashMap::new();
            let mut start = 0;
            for (digest, chunk) in manifest.chunks.iter().zip(&chunks) {
                index.insert(*digest, (start, chunk.len()));
                start += chunk.len();
            }
            if !self.served.iter().any(|s| s.chunks.keys().eq(index.keys())) {
                if self.served.len() >= SERVED_CHECKPOINTS {
                    self.served.pop_front();
                }
                self.served.push_back(ServedCheckpoint {
                    bytes: Arc::new(cp.bytes),
                    chunks: index,
                });
            }
            manifest
        });
        StateManifest {
            checkpoint,
            certificates: snapshot.certificates,
        }
    }
}
