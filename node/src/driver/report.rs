//! What the shell reports of a committed round: metrics, evaluation, status, `--json` lines.

use std::sync::atomic::Ordering;

use anyhow::Result;
use gossip::{NetworkHandle, Topic};
use tokio::sync::{mpsc, watch};

use super::Shell;
use crate::history::History;
use crate::keys::hex;
use crate::protocol::{CommitReport, Core};

/// What the shell keeps to report committed rounds: the history it serves, the evaluation set
/// and schedule, the `--json` printer.
pub(super) struct Reporter {
    /// The last committed rounds, for `GET /history`.
    history: watch::Sender<History>,
    /// This node's mean training loss of its last trained round: `(round, loss)`.
    pub trained: Option<(u64, f32)>,
    json: Option<mpsc::UnboundedSender<serde_json::Value>>,
    test: model::shard::EvalSet,
    eval_every: u64,
    max_rounds: Option<u64>,
    /// The `done` line was printed.
    announced: bool,
}

impl Reporter {
    pub fn new(
        history: watch::Sender<History>,
        json: Option<mpsc::UnboundedSender<serde_json::Value>>,
        test: model::shard::EvalSet,
        eval_every: u64,
        max_rounds: Option<u64>,
    ) -> Self {
        Reporter {
            history,
            trained: None,
            json,
            test,
            eval_every,
            max_rounds,
            announced: false,
        }
    }
}

impl Shell {
    /// Metrics, evaluation, status and the `--json` line of a committed round.
    pub(super) fn committed(&mut self, core: &Core, r: CommitReport, handled: f64) -> Result<()> {
        let g = core.genesis();
        let last = self.report.max_rounds == Some(r.round);
        let every = self.report.eval_every;
        let (acc, loss) = if last || (every > 0 && r.round.is_multiple_of(every)) {
            let (acc, loss) = self.report.test.evaluate_params(&g.model, &r.params)?;
            let m = &self.metrics;
            m.accuracy_ppm
                .store((acc as f64 * 1e6) as u64, Ordering::Relaxed);
            m.loss_micro
                .store((loss.max(0.0) as f64 * 1e6) as u64, Ordering::Relaxed);
            (Some(acc), Some(loss))
        } else {
            (None, None)
        };
        // The aggregate is computed inside the event that completed the commit.
        let mut phases = r.phases;
        phases[3] = handled.min(phases[2]);
        phases[2] -= phases[3];
        for (i, v) in phases.iter().enumerate() {
            let us = (v * 1e6) as u64;
            self.metrics.phase_us[i].store(us, Ordering::Relaxed);
            self.metrics.phase_us_sum[i].fetch_add(us, Ordering::Relaxed);
        }
        self.status.send_modify(|s| s.last_included = r.included);
        let summary = crate::history::RoundSummary {
            round: r.round,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64),
            seconds: Some(r.seconds),
            train_loss: self
                .report
                .trained
                .and_then(|(round, loss)| (round == r.round).then_some(loss)),
            eval_loss: loss,
            accuracy: acc,
            included: r.authors.iter().copied().map(crate::history::Key).collect(),
            phases: Some(phases.into()),
            events: r.events,
        };
        self.report.history.send_modify(|h| h.push(summary));
        self.publish_status(core);
        tracing::info!(round = r.round, accuracy = ?acc, loss = ?loss, included = r.included, hash = %hex(&r.model_hash), "committed");
        let Some(tx) = &self.report.json else {
            return Ok(());
        };
        let _ = tx.send(serde_json::json!({
            "event": "commit",
            "round": r.round,
            "accuracy": acc,
            "loss": loss,
            "included": r.included,
            "authors": r.authors.iter().map(|a| hex(a)).collect::<Vec<_>>(),
            "model_hash": hex(&r.model_hash),
            "delta_bytes_out": core.counters().delta_bytes_out,
            "seconds": r.seconds,
            "train_seconds": phases[0],
            "gossip_seconds": phases[1],
            "consensus_seconds": phases[2],
            "aggregate_seconds": phases[3],
            "other_seconds": phases[4],
        }));
        if self.report.max_rounds.is_some_and(|m| r.round >= m) && !self.report.announced {
            self.report.announced = true;
            let _ = tx.send(serde_json::json!({
                "event": "done",
                "round": r.round,
                "model_hash": hex(&r.model_hash),
                "peak_rss_kib": crate::metrics::peak_rss_kib(),
            }));
        }
        Ok(())
    }
}

/// Prints the JSON events in order, each commit event with the network's cumulative byte
/// counters added. Asking the swarm task for counters is a round trip, so it happens here, off
/// the driver's path, and does not show in the round's timings.
pub(super) fn spawn_json_printer(net: NetworkHandle) -> mpsc::UnboundedSender<serde_json::Value> {
    let (tx, mut rx) = mpsc::unbounded_channel::<serde_json::Value>();
    tokio::spawn(async move {
        while let Some(mut v) = rx.recv().await {
            if v["event"] == "commit" {
                let c = net.counters().await.unwrap_or_default();
                v["wire_bytes_in"] = c.transport.bytes_in.into();
                v["wire_bytes_out"] = c.transport.bytes_out.into();
                v["blob_bytes_in"] = c.blob_protocol.bytes_in.into();
                v["blob_bytes_out"] = c.blob_protocol.bytes_out.into();
                v["delta_announce_bytes_in"] = c.topic(Topic::Deltas).gossip_bytes_in.into();
                v["consensus_bytes_in"] = c.topic(Topic::Consensus).gossip_bytes_in.into();
            }
            println!("{v}");
        }
    });
    tx
}

impl Shell {
    /// What `/status` serves, from the core and the metrics.
    pub(super) fn publish_status(&self, core: &Core) {
        let acc = self.metrics.accuracy_ppm.load(Ordering::Relaxed) as f32 / 1e6;
        let loss = self.metrics.loss_micro.load(Ordering::Relaxed) as f32 / 1e6;
        self.status.send_modify(|s| {
            s.chain_id = core.genesis().chain_id.as_str().to_string();
            s.peer_id = crate::keys::peer_id_of(&core.id())
                .map(|p| p.to_string())
                .unwrap_or_default();
            s.validator = core.is_validator();
            s.round = core.committed_round();
            s.view = core.view();
            s.validators = core.validators().len();
            s.model_hash = hex(&core.model_hash());
            s.last_value = hex(&core.last_value());
            s.accuracy = acc;
            s.loss = loss;
            s.epsilon = core.epsilon();
            s.reputation = core
                .reputation()
                .into_iter()
                .map(|r| crate::metrics::Reputation {
                    peer_id: crate::keys::peer_id_of(&consensus::ValidatorId(r.key))
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    validator: r.validator,
                    included: r.included,
                    rejected: r.rejected,
                    rounds: r.rounds,
                })
                .collect();
            s.membership = core.membership_status();
        });
    }
}
