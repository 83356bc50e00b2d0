//! Received gossip: topic check, announce-fetch, delivery to the node.

use super::*;

impl Task {
    pub(super) fn on_gossip_message(
        &mut self,
        propagation_source: PeerId,
        gossip_id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let chain = self.config.chain_id.clone();
        let Some(topic) = Topic::from_hash(&message.topic, &chain) else {
            // We subscribe to our topics only; anything else is a protocol violation.
            self.swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(
                    &gossip_id,
                    &propagation_source,
                    gossipsub::MessageAcceptance::Reject,
                );
            return;
        };
        self.counters.topic(topic).gossip_bytes_in += message.data.len() as u64;
        let Some(id) = MessageId::from_gossipsub(&gossip_id) else {
            self.drop_message(
                topic,
                &gossip_id,
                &propagation_source,
                Outcome::Ignored,
                "bad_id",
            );
            return;
        };
        let tc = self.config.topic(topic);
        match tc.transfer {
            Transfer::Inline => self.deliver(
                topic,
                message.source,
                propagation_source,
                id,
                message.data.into(),
                None,
            ),
            Transfer::AnnounceFetch => {
                let Some(ann) = Announcement::decode(&message.data) else {
                    self.drop_message(
                        topic,
                        &gossip_id,
                        &propagation_source,
                        Outcome::Rejected,
                        "malformed_announcement",
                    );
                    return;
                };
                if ann.len > tc.max_message_size as u64 {
                    self.drop_message(
                        topic,
                        &gossip_id,
                        &propagation_source,
                        Outcome::Rejected,
                        "oversize",
                    );
                    return;
                }
                if let Some(bytes) = self.blobs.get(&ann.digest) {
                    self.deliver(
                        topic,
                        message.source,
                        propagation_source,
                        id,
                        bytes,
                        Some(ann.digest),
                    );
                    return;
                }
                if self.announce_fetches >= self.config.max_concurrent_fetches {
                    self.drop_message(
                        topic,
                        &gossip_id,
                        &propagation_source,
                        Outcome::Ignored,
                        "fetch_queue_full",
                    );
                    return;
                }
                let mut preferred = vec![propagation_source];
                preferred.extend(message.source);
                let candidates = self.candidates(preferred);
                self.start_fetch(
                    ann.digest,
                    Some(ann.len),
                    candidates,
                    FetchPurpose::Announced {
                        topic,
                        message_id: id,
                        propagation_source,
                        source: message.source,
                    },
                );
            }
        }
    }

    /// Hands a message to the node and waits for its verdict.
    pub(super) fn deliver(
        &mut self,
        topic: Topic,
        source: Option<PeerId>,
        propagation_source: PeerId,
        message_id: MessageId,
        data: Bytes,
        blob: Option<Digest>,
    ) {
        if self.pending.len() >= 4 * self.config.event_buffer {
            self.drop_message(
                topic,
                &message_id.to_gossipsub(),
                &propagation_source,
                Outcome::Ignored,
                "overloaded",
            );
            return;
        }
        let c = self.counters.topic(topic);
        c.received_messages += 1;
        c.received_bytes += data.len() as u64;
        self.pending.insert(
            message_id,
            Pending {
                topic,
                propagation_source,
                blob,
                since: Instant::now(),
            },
        );
        if !self.emit(NetworkEvent::Message {
            topic,
            source,
            propagation_source,
            message_id,
            data,
        }) {
            self.validate(message_id, None, Verdict::Ignore("event_queue_full"));
        }
    }
}
