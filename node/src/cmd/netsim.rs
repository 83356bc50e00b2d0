//! `cohort netsim`: seeded whole-network simulation runs (see `netsim`). The last line is
//! `runs=N safety_violations=V liveness_failures=L max_rounds_held=K runs_per_sec=R`; the exit
//! status is non-zero when V or L is not 0, and each failing seed is printed.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::netsim::{Scenario, Sim, SimConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of runs (seeds SEED, SEED + 1, ...).
    #[arg(long, default_value_t = 100)]
    pub runs: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Genesis validators per run.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Which faults.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// Aggregation rule of the simulated genesis (default: by seed, nnm+median or mean).
    #[arg(long)]
    pub rule: Option<String>,
    /// Print one line per run.
    #[arg(long)]
    pub verbose: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let started = Instant::now();
    let (mut violations, mut liveness, mut max_rounds_held) = (0u64, 0u64, 0usize);
    let mut max_snapshot = 0usize;
    let mut longest_stall = 0;
    for seed in a.seed..a.seed + a.runs {
        let mut cfg = SimConfig::new(a.scenario, seed, a.nodes);
        if let Some(r) = &a.rule {
            cfg.setup.rule = r.clone();
        }
        let out = Sim::new(cfg)?.run();
        max_rounds_held = max_rounds_held.max(out.max_rounds_held);
        max_snapshot = max_snapshot.max(out.max_snapshot_bytes);
        longest_stall = longest_stall.max(out.longest_stall_ms);
        if a.verbose {
            println!(
                "seed={seed} height={} sim_seconds={:.1} rounds_per_sim_second={:.2} snapshot_bytes={} inclusions={:?} longest_stall_s={:.1} flooded_keys={} contributors={} admitted={} removed={} poisoned_included={} accuracy={:.3}",
                out.height,
                out.end_ms as f64 / 1e3,
                out.height as f64 * 1e3 / out.end_ms.max(1) as f64,
                out.max_snapshot_bytes,
                out.inclusions,
                out.longest_stall_ms as f64 / 1e3,
                out.flooded,
                out.membership.contributors.len(),
                out.membership.admitted.len(),
                out.membership.removed.len(),
                out.poisoned_included,
                out.accuracy
            );
        }
        if !out.violations.is_empty() {
            violations += 1;
            println!("FAIL seed={seed} safety: {}", out.violations.join("; "));
        }
        if let Some(l) = out.liveness {
            liveness += 1;
            println!("FAIL seed={seed} liveness: {l}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("max_snapshot_bytes={max_snapshot}");
    println!(
        "longest_stall_s={:.1} (simulated seconds without a new commit, faults included)",
        longest_stall as f64 / 1e3
    );
    println!(
        "runs={} safety_violations={violations} liveness_failures={liveness} max_rounds_held={max_rounds_held} runs_per_sec={:.1}",
        a.runs,
        a.runs as f64 / secs.max(1e-9)
    );
    if violations > 0 || liveness > 0 {
        bail!("{violations} runs with safety violations, {liveness} with liveness failures");
    }
    Ok(())
}
