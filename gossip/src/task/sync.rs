//! State sync: the manifest, chunk fetches (a few at once), assembly and the final digest check.

use super::*;

impl Task {
    pub(super) fn on_state_response(
        &mut self,
        request: OutboundRequestId,
        response: Result<StateResponse, String>,
    ) {
        let Some(id) = self.state_requests.remove(&request) else {
            return;
        };
        let Some(sync) = self.syncs.get_mut(&id) else {
            return;
        };
        let peer = sync.peer;
        match response {
            Err(reason) => self.finish_sync(id, Err(reason)),
            Ok(StateResponse::Unavailable) => {
                if let Some(sync) = self.syncs.remove(&id) {
                    let _ = sync.reply.send(Err(Error::StateUnavailable {
                        peer,
                        from_height: sync.from_height,
                    }));
                }
            }
            Ok(StateResponse::Manifest(manifest)) => {
                if let Some(cp) = &manifest.checkpoint
                    && let Err(reason) =
                        cp.check(self.config.max_state_bytes, self.config.max_blob_bytes())
                {
                    self.penalize(peer, PeerAction::MidTolerance);
                    self.finish_sync(id, Err(format!("bad manifest: {reason}")));
                    return;
                }
                // Memory grows with the chunks actually received, not the announced length.
                let chunks = manifest.checkpoint.as_ref().map_or(0, |cp| cp.chunks.len());
                sync.chunks = vec![None; chunks];
                sync.manifest = Some(manifest);
                self.request_chunks(id);
            }
        }
    }

    /// Keeps up to [`CHUNKS_IN_FLIGHT`] chunk fetches going; completes the sync when every
    /// chunk is in.
    pub(super) fn request_chunks(&mut self, id: u64) {
        loop {
            let Some(sync) = self.syncs.get_mut(&id) else {
                return;
            };
            let Some(cp) = sync.manifest.as_ref().and_then(|m| m.checkpoint.as_ref()) else {
                self.finish_sync(id, Ok(()));
                return;
            };
            if sync.next >= cp.chunks.len() {
                if sync.in_flight == 0 {
                    self.finish_sync(id, Ok(()));
                }
                return;
            }
            if sync.in_flight >= CHUNKS_IN_FLIGHT {
                return;
            }
            let index = sync.next;
            let digest = cp.chunks[index];
            let expected = cp.chunk_len(index);
            sync.next += 1;
            sync.in_flight += 1;
            let peer = sync.peer;
            let candidates = self.candidates(vec![peer]);
            self.start_fetch(
                digest,
                Some(expected),
                candidates,
                FetchPurpose::StateChunk { sync: id, index },
            );
        }
    }

    pub(super) fn on_chunk(&mut self, id: u64, index: usize, bytes: Vec<u8>) {
        let Some(sync) = self.syncs.get_mut(&id) else {
            return;
        };
        sync.in_flight -= 1;
        if let Some(slot) = sync.chunks.get_mut(index) {
            *slot = Some(bytes);
        }
        self.request_chunks(id);
    }

    /// Completes a sync: on success, assembles the checkpoint and checks it against its digest.
    pub(super) fn finish_sync(&mut self, id: u64, result: Result<(), String>) {
        let Some(sync) = self.syncs.remove(&id) else {
            return;
        };
        let peer = sync.peer;
        let fail = |reason: String| Error::StateSync { peer, reason };
        let outcome = result.map_err(fail).and_then(|()| {
            let manifest = sync.manifest.ok_or_else(|| fail("no manifest".into()))?;
            let checkpoint = match manifest.checkpoint {
                None => None,
                Some(cp) => {
                    let mut bytes = Vec::with_capacity(cp.total_len as usize);
                    for chunk in sync.chunks {
                        bytes.extend(chunk.ok_or_else(|| fail("missing chunk".into()))?);
                    }
                    if bytes.len() as u64 != cp.total_len || Digest::of(&bytes) != cp.digest {
                        // Every chunk matched its digest, so the manifest itself lied.
                        self.penalize(peer, PeerAction::LowTolerance);
                        return Err(fail("checkpoint does not match its digest".into()));
                    }
                    Some(Checkpoint {
                        meta: cp.meta,
                        bytes,
                    })
                }
            };
            Ok(StateSnapshot {
                checkpoint,
                certificates: manifest.certificates,
            })
        });
        let _ = sync.reply.send(outcome);
    }
}
