//! The node's metrics (OpenMetrics text by `prometheus-client`) and its status snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

/// Counters and gauges the round driver updates; read by the HTTP task.
#[derive(Default)]
pub struct Metrics {
    /// Rounds committed.
    pub rounds_committed_total: AtomicU64,
    /// Deltas accepted.
    pub deltas_accepted_total: AtomicU64,
    /// Deltas rejected, by reason (fixed small set).
    pub deltas_rejected: [AtomicU64; REJECT_REASONS.len()],
    /// Deltas ignored (old, future, duplicate).
    pub deltas_ignored_total: AtomicU64,
    /// Equivocations seen (two different deltas or votes from one validator).
    pub equivocations_total: AtomicU64,
    /// State syncs completed.
    pub state_syncs_total: AtomicU64,
    /// Last round's phase durations, microseconds: train, gossip, consensus, aggregate, other.
    pub phase_us: [AtomicU64; 5],
    /// Sum of phase durations over all rounds, microseconds.
    pub phase_us_sum: [AtomicU64; 5],
    /// Accuracy of the committed model on held-out data, x 1e6.
    pub accuracy_ppm: AtomicU64,
    /// Loss x 1e6.
    pub loss_micro: AtomicU64,
    /// Bytes of this node's own deltas.
    pub delta_bytes_out_total: AtomicU64,
}

/// Reasons a delta is rejected.
pub const REJECT_REASONS: [&str; 8] = [
    "malformed",
    "wrong_chain",
    "not_validator",
    "wrong_base",
    "bad_signature",
    "equivocation",
    "bad_payload",
    "samples",
];

/// Round phases.
/// "other" is what falls outside the four: checkpoints, evaluation, the gap to the next start.
pub const PHASES: [&str; 5] = ["train", "gossip", "consensus", "aggregate", "other"];

impl Metrics {
    /// Copies the node core's counters (the core counts; the HTTP task reads these).
    pub fn mirror(&self, c: &crate::protocol::Counters) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.rounds_committed_total, c.rounds_committed);
        set(&self.deltas_accepted_total, c.deltas_accepted);
        for (a, v) in self.deltas_rejected.iter().zip(c.deltas_rejected) {
            set(a, v);
        }
        set(&self.deltas_ignored_total, c.deltas_ignored);
        set(&self.equivocations_total, c.equivocations);
        set(&self.state_syncs_total, c.state_syncs);
        set(&self.delta_bytes_out_total, c.delta_bytes_out);
    }

    /// Renders the OpenMetrics text exposition (`prometheus-client`'s registry and encoder) of
    /// these counters, the network's counters and peers, and the status snapshot.
    pub fn render(
        &self,
        net: Option<&gossip::NetworkCounters>,
        peers: usize,
        status: &Status,
    ) -> Result<String, std::fmt::Error> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut reg = Registry::with_prefix("cohort");
        // Counters: the encoder appends `_total` to each name. Help texts: it appends the period.
        let counter = |v: u64| ConstCounter::new(v);
        reg.register(
            "rounds_committed",
            "Rounds committed by this node",
            counter(g(&self.rounds_committed_total)),
        );
        reg.register(
            "round",
            "Last committed round",
            ConstGauge::new(status.round),
        );
        reg.register(
            "deltas_accepted",
            "Peer deltas accepted",
            counter(g(&self.deltas_accepted_total)),
        );
        let rejected = Family::<ReasonLabel, Counter>::default();
        for (reason, v) in REJECT_REASONS.iter().zip(&self.deltas_rejected) {
            rejected.get_or_create(&ReasonLabel { reason }).inc_by(g(v));
        }
        reg.register(
            "deltas_rejected",
            "Peer deltas rejected, by reason",
            rejected,
        );
        reg.register(
            "deltas_ignored",
            "Peer deltas ignored (old, future, duplicate)",
            counter(g(&self.deltas_ignored_total)),
        );
        reg.register(
            "equivocations",
            "Equivocations detected",
            counter(g(&self.equivocations_total)),
        );
        reg.register(
            "state_syncs",
            "State syncs completed",
            counter(g(&self.state_syncs_total)),
        );
        let last = Family::<PhaseLabel, Gauge<f64, AtomicU64>>::default();
        let sum = Family::<PhaseLabel, Counter<f64, AtomicU64>>::default();
        for (i, phase) in PHASES.iter().enumerate() {
            let l = PhaseLabel { phase };
            last.get_or_create(&l)
                .set(g(&self.phase_us[i]) as f64 / 1e6);
            sum.get_or_create(&l)
                .inc_by(g(&self.phase_us_sum[i]) as f64 / 1e6);
        }
        // `last_round_phase`, not `round_phase`: in OpenMetrics the counter's family is
        // `cohort_round_phase_seconds` (samples `_total`), and family names must be unique.
        reg.register_with_unit(
            "last_round_phase",
            "Last round's duration by phase",
            Unit::Seconds,
            last,
        );
        reg.register_with_unit(
            "round_phase",
            "Time spent per phase over all rounds",
            Unit::Seconds,
            sum,
        );
        reg.register(
            "accuracy",
            "Accuracy of the committed model on this node's held-out data",
            ConstGauge::new(g(&self.accuracy_ppm) as f64 / 1e6),
        );
        reg.register(
            "loss",
            "Loss of the committed model on this node's held-out data",
            ConstGauge::new(g(&self.loss_micro) as f64 / 1e6),
        );
        reg.register("peers", "Connected peers", ConstGauge::new(peers as u64));
        reg.register(
            "delta_bytes_out",
            "Bytes of this node's signed deltas",
            counter(g(&self.delta_bytes_out_total)),
        );
        if let Some(c) = net {
            register_network(&mut reg, c);
        }
        let included = Family::<ParticipantLabel, Gauge<u64, AtomicU64>>::default();
        let outliers = Family::<ParticipantLabel, Gauge<u64, AtomicU64>>::default();
        for r in &status.reputation {
            let role = if r.validator {
                "validator"
            } else {
                "contributor"
            };
            let l = ParticipantLabel {
                peer: r.peer_id.clone(),
                role,
            };
            included.get_or_create(&l).set(r.included);
            outliers.get_or_create(&l).set(r.rejected);
        }
        reg.register(
            "validator_included_rounds",
            "Of the last downtime-window rounds, those that included the participant's delta",
            included,
        );
        reg.register(
            "validator_rejected_rounds",
            "Of those, rounds its delta was an outlier against the aggregate (> 3x the median distance)",
            outliers,
        );
        if let Some(eps) = status.epsilon {
            reg.register(
                "dp_epsilon",
                "Record-level epsilon this node has spent under DP-SGD at the genesis delta",
                ConstGauge::new(eps),
            );
        }
        let mut s = String::new();
        encode(&mut s, &reg)?;
        Ok(s)
    }
}

/// The network task's byte and verdict counters.
fn register_network(reg: &mut Registry, c: &gossip::NetworkCounters) {
    let by_topic = Family::<TopicLabel, Counter>::default();
    for (t, tc) in gossip::Topic::ALL.iter().zip(&c.topics) {
        let topic = t.kind();
        for (direction, v) in [("out", tc.published_bytes), ("in", tc.received_bytes)] {
            by_topic
                .get_or_create(&TopicLabel { topic, direction })
                .inc_by(v);
        }
    }
    reg.register("topic_bytes", "Gossip payload bytes per topic", by_topic);
    let by_protocol = Family::<ProtocolLabel, Counter>::default();
    for (protocol, b) in [
        ("transport", &c.transport),
        ("blob", &c.blob_protocol),
        ("state", &c.state_protocol),
    ] {
        for (direction, v) in [("in", b.bytes_in), ("out", b.bytes_out)] {
            by_protocol
                .get_or_create(&ProtocolLabel {
                    protocol,
                    direction,
                })
                .inc_by(v);
        }
    }
    reg.register("protocol_bytes", "Bytes per protocol", by_protocol);
    let verdicts = Family::<VerdictLabel, Counter>::default();
    for vc in &c.verdicts {
        let l = VerdictLabel {
            topic: vc.topic.kind(),
            outcome: format!("{:?}", vc.outcome),
            reason: vc.reason,
        };
        verdicts.get_or_create(&l).inc_by(vc.count);
    }
    reg.register(
        "gossip_verdicts",
        "Gossip messages by verdict and reason",
        verdicts,
    );
}

/// `reason` of `cohort_deltas_rejected_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// `phase` of the round phase metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

/// `cohort_topic_bytes_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: &'static str,
    direction: &'static str,
}

/// `cohort_protocol_bytes_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabel {
    protocol: &'static str,
    direction: &'static str,
}

/// `cohort_gossip_verdicts_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    topic: &'static str,
    outcome: String,
    reason: &'static str,
}

/// A validator's or contributor's labels in the reputation gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ParticipantLabel {
    peer: String,
    role: &'static str,
}

/// One validator's or contributor's reputation in `/status`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Reputation {
    /// Its libp2p id.
    pub peer_id: String,
    /// A validator (else a contributor, under the `open` policy).
    #[serde(default)]
    pub validator: bool,
    /// In how many of the last `rounds` committed rounds its delta was included.
    pub included: u64,
    /// Of those, in how many its delta was an outlier against the aggregate.
    #[serde(default)]
    pub rejected: u64,
    /// The window (the genesis downtime window, or fewer rounds early on).
    pub rounds: u64,
}

/// The `/status` document.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Status {
    /// Network.
    pub chain_id: String,
    /// This node's libp2p id.
    pub peer_id: String,
    /// Whether this node is a validator.
    pub validator: bool,
    /// Last committed round (0 = genesis).
    pub round: u64,
    /// Current consensus view.
    pub view: u32,
    /// Connected peers.
    pub peers: usize,
    /// Validators in the current set.
    pub validators: usize,
    /// Hash of the committed model (hex).
    pub model_hash: String,
    /// Id of the last committed value (hex).
    pub last_value: String,
    /// Deltas included in the last commit.
    pub last_included: usize,
    /// Each validator's and contributor's recent inclusion and outliers, from committed data
    /// (a validator included in fewer than half of the downtime window is removed).
    #[serde(default)]
    pub reputation: Vec<Reputation>,
    /// Record-level epsilon this node has spent under DP-SGD, at the genesis delta
    /// (add/remove-one-record adjacency); absent without DP-SGD noise.
    #[serde(default)]
    pub epsilon: Option<f64>,
    /// Accuracy of the committed model on held-out data.
    pub accuracy: f32,
    /// Its loss.
    pub loss: f32,
    /// Membership: policy, contributors, pending join requests, newcomers.
    #[serde(default)]
    pub membership: MembershipStatus,
}

/// Membership in `/status`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct MembershipStatus {
    /// The genesis policy: closed, approve or open.
    pub policy: String,
    /// Whether this node is a contributor (under `open`, before its promotion).
    pub contributor: bool,
    /// Contributors whose deltas a value may include now (under `open`).
    pub contributors: usize,
    /// Keys (hex) of the join requests this node holds, waiting for admission (at most 64).
    pub pending_joins: Vec<String>,
    /// Validators admitted within the downtime window (at most f of the set).
    pub newcomers: usize,
}

/// This process's peak resident set size in KiB (`VmHWM` of `/proc/self/status`), where Linux
/// gives it; `None` elsewhere.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::Ordering;

    use gossip::{ByteCounts, NetworkCounters, Outcome, Topic, TopicCounters, VerdictCount};

    use super::{Metrics, Reputation, Status};

    /// A node with every kind of metric set: own counters, network counters, reputation, DP.
    fn rendered() -> String {
        let m = Metrics::default();
        m.rounds_committed_total.store(12, Ordering::Relaxed);
        m.deltas_rejected[4].store(3, Ordering::Relaxed);
        m.phase_us[0].store(1_500_000, Ordering::Relaxed);
        m.phase_us_sum[0].store(9_250_000, Ordering::Relaxed);
        m.accuracy_ppm.store(975_200, Ordering::Relaxed);
        let mut net = NetworkCounters {
            peers_connected: 3,
            transport: ByteCounts {
                bytes_in: 1000,
                bytes_out: 2000,
            },
            verdicts: vec![VerdictCount {
                topic: Topic::Deltas,
                outcome: Outcome::Rejected,
                reason: "bad_signature",
                count: 4,
            }],
            ..Default::default()
        };
        net.topics[Topic::Consensus.index()] = TopicCounters {
            published_bytes: 77,
            ..Default::default()
        };
        let status = Status {
            round: 12,
            epsilon: Some(0.25),
            reputation: vec![Reputation {
                peer_id: "12D3KooWpeer".into(),
                validator: true,
                included: 9,
                rejected: 1,
                rounds: 10,
            }],
            ..Default::default()
        };
        m.render(Some(&net), 3, &status).expect("encoding")
    }

    #[test]
    fn every_metric_keeps_its_sample_name_labels_and_value() {
        let text = rendered();
        for sample in [
            "cohort_rounds_committed_total 12",
            "cohort_round 12",
            "cohort_deltas_accepted_total 0",
            "cohort_deltas_rejected_total{reason=\"bad_signature\"} 3",
            "cohort_deltas_rejected_total{reason=\"samples\"} 0",
            "cohort_deltas_ignored_total 0",
            "cohort_equivocations_total 0",
            "cohort_state_syncs_total 0",
            "cohort_last_round_phase_seconds{phase=\"train\"} 1.5",
            "cohort_round_phase_seconds_total{phase=\"train\"} 9.25",
            "cohort_round_phase_seconds_total{phase=\"other\"} 0.0",
            "cohort_accuracy 0.9752",
            "cohort_loss 0.0",
            "cohort_peers 3",
            "cohort_delta_bytes_out_total 0",
            "cohort_topic_bytes_total{topic=\"consensus\",direction=\"out\"} 77",
            "cohort_topic_bytes_total{topic=\"deltas\",direction=\"in\"} 0",
            "cohort_protocol_bytes_total{protocol=\"transport\",direction=\"in\"} 1000",
            "cohort_protocol_bytes_total{protocol=\"transport\",direction=\"out\"} 2000",
            "cohort_protocol_bytes_total{protocol=\"state\",direction=\"out\"} 0",
            "cohort_gossip_verdicts_total{topic=\"deltas\",outcome=\"Rejected\",reason=\"bad_signature\"} 4",
            "cohort_validator_included_rounds{peer=\"12D3KooWpeer\",role=\"validator\"} 9",
            "cohort_validator_rejected_rounds{peer=\"12D3KooWpeer\",role=\"validator\"} 1",
            "cohort_dp_epsilon 0.25",
        ] {
            assert!(text.lines().any(|l| l == sample), "{sample}\n{text}");
        }
        // 8 rejection reasons, 5 phases twice, 3 topics x 2 directions, 3 protocols x 2.
        let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("cohort_deltas_rejected_total{"), 8);
        assert_eq!(count("cohort_last_round_phase_seconds{"), 5);
        assert_eq!(count("cohort_round_phase_seconds_total{"), 5);
        assert_eq!(count("cohort_topic_bytes_total{"), 6);
        assert_eq!(count("cohort_protocol_bytes_total{"), 6);
    }

    /// The exposition is valid OpenMetrics as far as a scraper cares: each family declared
    /// once, each sample under its family's metadata (a counter's samples end in `_total`), one
    /// `EOF` at the end.
    #[test]
    fn the_exposition_declares_each_family_once_above_its_samples() {
        let text = rendered();
        let mut families = HashSet::new();
        let mut current: Option<(String, String)> = None;
        let mut samples = 0;
        let body = text.strip_suffix("# EOF\n").expect("ends with EOF");
        for line in body.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["#", "TYPE", name, kind] => {
                    assert!(families.insert(name.to_string()), "{name} declared twice");
                    current = Some((name.to_string(), kind.to_string()));
                }
                ["#", "HELP" | "UNIT", ..] => {}
                [sample, _value] => {
                    let name = sample.split('{').next().unwrap_or(sample);
                    let (family, kind) = current.as_ref().expect("a sample before any family");
                    let expected = match kind.as_str() {
                        "counter" => format!("{family}_total"),
                        _ => family.clone(),
                    };
                    assert_eq!(name, expected, "{line}");
                    samples += 1;
                }
                _ => panic!("unexpected line {line:?}"),
            }
        }
        assert!(!body.contains("# EOF"));
        assert_eq!(families.len(), 19);
        assert_eq!(samples, 44);
    }

    #[test]
    fn without_dp_or_network_their_families_are_absent() {
        let text = Metrics::default()
            .render(None, 0, &Status::default())
            .expect("encoding");
        for absent in [
            "cohort_dp_epsilon",
            "cohort_topic_bytes",
            "cohort_gossip_verdicts",
        ] {
            assert!(!text.contains(absent), "{absent}\n{text}");
        }
        assert!(text.lines().any(|l| l == "cohort_peers 0"), "{text}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn peak_rss_is_read_on_linux() {
        let kib = super::peak_rss_kib().expect("VmHWM in /proc/self/status");
        // A test process holds at least its code and stack: more than 1 MiB, less than 1 TiB.
        assert!(kib > 1024 && kib < (1 << 30), "{kib}");
    }
}
