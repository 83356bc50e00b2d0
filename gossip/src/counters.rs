//! Counters for the node's metrics.
//!
//! Three layers, each counted where the bytes are visible:
//! - **transport**: every byte read from or written to a substream of any connection (all
//!   protocols together, above the muxer: noise and yamux framing are not included), counted
//!   by a [`CountingMuxer`] wrapped around every connection;
//! - **protocol**: frames of our request-response protocols (blob, state), counted in the codec;
//! - **topic**: payload bytes and messages published and received per gossip topic, and the
//!   verdicts given per topic and reason, counted in the network task.
//!
//! The node maps a [`NetworkCounters`] snapshot to Prometheus (`*_total`, `*_bytes`).

use std::{
    collections::BTreeMap,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use libp2p::{
    core::muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent, SubstreamBox},
    futures::{AsyncRead, AsyncWrite},
};

use crate::Topic;

/// Byte counters shared with a codec or the transport (atomics: they are bumped from connection
/// tasks, read by the network task).
#[derive(Debug, Default)]
pub(crate) struct ProtocolCounters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl ProtocolCounters {
    pub fn received(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn sent(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> ByteCounts {
        ByteCounts {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }
}

/// Bytes in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteCounts {
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// Per-topic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicCounters {
    /// Payload bytes this node published (each message counted once, however many peers got it).
    pub published_bytes: u64,
    /// Messages this node published.
    pub published_messages: u64,
    /// Payload bytes of first deliveries handed to the application (duplicates are dropped by
    /// gossipsub before this point; their cost shows in the transport counters).
    pub received_bytes: u64,
    /// First deliveries handed to the application.
    pub received_messages: u64,
    /// Gossiped bytes on the topic as received (equal to `received_bytes` for inline topics; the
    /// announcements for announce-fetch topics).
    pub gossip_bytes_in: u64,
}

/// What happened to a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Valid, forwarded.
    Accepted,
    /// Invalid, the senders lost score.
    Rejected,
    /// Not forwarded, no penalty.
    Ignored,
}

/// One verdict counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictCount {
    /// Topic of the message.
    pub topic: Topic,
    /// The verdict.
    pub outcome: Outcome,
    /// The reason the application (or this crate) gave.
    pub reason: &'static str,
    /// How many.
    pub count: u64,
}

/// A snapshot of every counter, for the node's metrics endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetworkCounters {
    /// Peers with at least one established connection.
    pub peers_connected: u64,
    /// All substream bytes of all connections.
    pub transport: ByteCounts,
    /// Blob protocol frames (fetches by digest, state chunks).
    pub blob_protocol: ByteCounts,
    /// State protocol frames (manifests).
    pub state_protocol: ByteCounts,
    /// Per topic, indexed by [`Topic::index`].
    pub topics: [TopicCounters; 3],
    /// Verdicts by topic, outcome and reason.
    pub verdicts: Vec<VerdictCount>,
    /// Blobs received whose bytes did not hash to the digest asked for.
    pub digest_mismatches: u64,
    /// Events not delivered because the node's event queue was full.
    pub events_dropped: u64,
    /// Inbound blob or state requests answered.
    pub requests_served: u64,
}

impl NetworkCounters {
    /// Counters of `topic`.
    pub fn topic(&self, topic: Topic) -> &TopicCounters {
        &self.topics[topic.index()]
    }

    /// Sum of the verdict counters for `topic` and `outcome`, over all reasons.
    pub fn verdicts_for(&self, topic: Topic, outcome: Outcome) -> u64 {
        self.verdicts
            .iter()
            .filter(|v| v.topic == topic && v.outcome == outcome)
            .map(|v| v.count)
            .sum()
    }
}

/// Counters owned by the network task.
#[derive(Debug, Default)]
pub(crate) struct TaskCounters {
    pub topics: [TopicCounters; 3],
    pub verdicts: BTreeMap<(Topic, Outcome, &'static str), u64>,
    pub digest_mismatches: u64,
    pub events_dropped: u64,
    pub requests_served: u64,
}

impl TaskCounters {
    pub fn verdict(&mut self, topic: Topic, outcome: Outcome, reason: &'static str) {
        *self.verdicts.entry((topic, outcome, reason)).or_default() += 1;
    }

    pub fn topic(&mut self, topic: Topic) -> &mut TopicCounters {
        &mut self.topics[topic.index()]
    }
}

/// Shared atomic byte counters.
#[derive(Debug, Default)]
pub(crate) struct WireCounters {
    pub transport: ProtocolCounters,
    pub blob: Arc<ProtocolCounters>,
    pub state: Arc<ProtocolCounters>,
}

/// Wraps a connection's muxer so every substream counts its bytes.
pub(crate) struct CountingMuxer {
    inner: StreamMuxerBox,
    counters: Arc<WireCounters>,
}

impl CountingMuxer {
    pub fn new(inner: StreamMuxerBox, counters: Arc<WireCounters>) -> Self {
        CountingMuxer { inner, counters }
    }
}

impl StreamMuxer for CountingMuxer {
    type Substream = CountingStream;
    type Error = io::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let counters = self.counters.clone();
        Pin::new(&mut self.inner)
            .poll_inbound(cx)
            .map_ok(|inner| CountingStream { inner, counters })
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let counters = self.counters.clone();
        Pin::new(&mut self.inner)
            .poll_outbound(cx)
            .map_ok(|inner| CountingStream { inner, counters })
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// A substream that counts the bytes through it.
pub(crate) struct CountingStream {
    inner: SubstreamBox,
    counters: Arc<WireCounters>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.counters.transport.received(n);
        }
        result
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.counters.transport.sent(n);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}
