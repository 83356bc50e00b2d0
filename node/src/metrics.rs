//! The node's metrics (Prometheus text format) and its status snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

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

    /// Renders Prometheus text, adding the network's counters and peers.
    pub fn render(
        &self,
        net: Option<&gossip::NetworkCounters>,
        peers: usize,
        status: &Status,
    ) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut line = |name: &str, help: &str, kind: &str, body: String| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{body}"
            ));
        };
        line(
            "cohort_rounds_committed_total",
            "Rounds committed by this node.",
            "counter",
            format!(
                "cohort_rounds_committed_total {}\n",
                g(&self.rounds_committed_total)
            ),
        );
        line(
            "cohort_round",
            "Last committed round.",
            "gauge",
            format!("cohort_round {}\n", status.round),
        );
        line(
            "cohort_deltas_accepted_total",
            "Peer deltas accepted.",
            "counter",
            format!(
                "cohort_deltas_accepted_total {}\n",
                g(&self.deltas_accepted_total)
            ),
        );
        let mut body = String::new();
        for (i, r) in REJECT_REASONS.iter().enumerate() {
            body.push_str(&format!(
                "cohort_deltas_rejected_total{{reason=\"{r}\"}} {}\n",
                g(&self.deltas_rejected[i])
            ));
        }
        line(
            "cohort_deltas_rejected_total",
            "Peer deltas rejected, by reason.",
            "counter",
            body,
        );
        line(
            "cohort_deltas_ignored_total",
            "Peer deltas ignored (old, future, duplicate).",
            "counter",
            format!(
                "cohort_deltas_ignored_total {}\n",
                g(&self.deltas_ignored_total)
            ),
        );
        line(
            "cohort_equivocations_total",
            "Equivocations detected.",
            "counter",
            format!(
                "cohort_equivocations_total {}\n",
                g(&self.equivocations_total)
            ),
        );
        line(
            "cohort_state_syncs_total",
            "State syncs completed.",
            "counter",
            format!("cohort_state_syncs_total {}\n", g(&self.state_syncs_total)),
        );
        let mut body = String::new();
        let mut sum = String::new();
        for (i, p) in PHASES.iter().enumerate() {
            body.push_str(&format!(
                "cohort_round_phase_seconds{{phase=\"{p}\"}} {:.6}\n",
                g(&self.phase_us[i]) as f64 / 1e6
            ));
            sum.push_str(&format!(
                "cohort_round_phase_seconds_total{{phase=\"{p}\"}} {:.6}\n",
                g(&self.phase_us_sum[i]) as f64 / 1e6
            ));
        }
        line(
            "cohort_round_phase_seconds",
            "Last round's duration by phase.",
            "gauge",
            body,
        );
        line(
            "cohort_round_phase_seconds_total",
            "Time spent per phase over all rounds.",
            "counter",
            sum,
        );
        line(
            "cohort_accuracy",
            "Accuracy of the committed model on this node's held-out data.",
            "gauge",
            format!(
                "cohort_accuracy {:.6}\n",
                g(&self.accuracy_ppm) as f64 / 1e6
            ),
        );
        line(
            "cohort_loss",
            "Loss of the committed model on this node's held-out data.",
            "gauge",
            format!("cohort_loss {:.6}\n", g(&self.loss_micro) as f64 / 1e6),
        );
        line(
            "cohort_peers",
            "Connected peers.",
            "gauge",
            format!("cohort_peers {peers}\n"),
        );
        line(
            "cohort_delta_bytes_out_total",
            "Bytes of this node's signed deltas.",
            "counter",
            format!(
                "cohort_delta_bytes_out_total {}\n",
                g(&self.delta_bytes_out_total)
            ),
        );
        if let Some(c) = net {
            let mut by_topic = String::new();
            for (t, tc) in gossip::Topic::ALL.iter().zip(&c.topics) {
                let name = t.kind();
                by_topic.push_str(&format!(
                    "cohort_topic_bytes_total{{topic=\"{name}\",direction=\"out\"}} {}\n\
                     cohort_topic_bytes_total{{topic=\"{name}\",direction=\"in\"}} {}\n",
                    tc.published_bytes, tc.received_bytes
                ));
            }
            line(
                "cohort_topic_bytes_total",
                "Gossip payload bytes per topic.",
                "counter",
                by_topic,
            );
            line(
                "cohort_protocol_bytes_total",
                "Bytes per protocol.",
                "counter",
                format!(
                    "cohort_protocol_bytes_total{{protocol=\"transport\",direction=\"in\"}} {}\n\
                     cohort_protocol_bytes_total{{protocol=\"transport\",direction=\"out\"}} {}\n\
                     cohort_protocol_bytes_total{{protocol=\"blob\",direction=\"in\"}} {}\n\
                     cohort_protocol_bytes_total{{protocol=\"blob\",direction=\"out\"}} {}\n\
                     cohort_protocol_bytes_total{{protocol=\"state\",direction=\"in\"}} {}\n\
                     cohort_protocol_bytes_total{{protocol=\"state\",direction=\"out\"}} {}\n",
                    c.transport.bytes_in,
                    c.transport.bytes_out,
                    c.blob_protocol.bytes_in,
                    c.blob_protocol.bytes_out,
                    c.state_protocol.bytes_in,
                    c.state_protocol.bytes_out
                ),
            );
            let mut v = String::new();
            for vc in &c.verdicts {
                v.push_str(&format!(
                    "cohort_gossip_verdicts_total{{topic=\"{}\",outcome=\"{:?}\",reason=\"{}\"}} {}\n",
                    vc.topic.kind(),
                    vc.outcome,
                    vc.reason,
                    vc.count
                ));
            }
            line(
                "cohort_gossip_verdicts_total",
                "Gossip messages by verdict and reason.",
                "counter",
                v,
            );
        }
        let (mut rep, mut rej) = (String::new(), String::new());
        for r in &status.reputation {
            let role = if r.validator {
                "validator"
            } else {
                "contributor"
            };
            rep.push_str(&format!(
                "cohort_validator_included_rounds{{peer=\"{}\",role=\"{role}\"}} {}\n",
                r.peer_id, r.included
            ));
            rej.push_str(&format!(
                "cohort_validator_rejected_rounds{{peer=\"{}\",role=\"{role}\"}} {}\n",
                r.peer_id, r.rejected
            ));
        }
        line(
            "cohort_validator_included_rounds",
            "Of the last downtime-window rounds, those that included the participant's delta.",
            "gauge",
            rep,
        );
        line(
            "cohort_validator_rejected_rounds",
            "Of those, rounds its delta was an outlier against the aggregate (> 3x the median distance).",
            "gauge",
            rej,
        );
        if let Some(eps) = status.epsilon {
            line(
                "cohort_dp_epsilon",
                "Record-level epsilon this node has spent under DP-SGD at the genesis delta.",
                "gauge",
                format!("cohort_dp_epsilon {eps}\n"),
            );
        }
        s
    }
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
    #[test]
    #[cfg(target_os = "linux")]
    fn peak_rss_is_read_on_linux() {
        let kib = super::peak_rss_kib().expect("VmHWM in /proc/self/status");
        // A test process holds at least its code and stack: more than 1 MiB, less than 1 TiB.
        assert!(kib > 1024 && kib < (1 << 30), "{kib}");
    }
}
