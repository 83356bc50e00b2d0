//! Long soak of the deterministic simulator.
//!
//! `cargo run -p consensus --release --example soak --features sim -- --runs 100000`
//!
//! Options: `--runs N` (default 10000), `--first-seed S` (0), `--heights H` (3),
//! `--sizes 4,7,10,31` (validator counts, cycled), `--threads T` (1), `--hostile` (every
//! Byzantine validator an equivocator, 30% loss, slow sync), `--max-events N` (step bound of
//! one run; default `sim::default_max_events(n, heights)`). Each run uses
//! `SimConfig::adversarial(n, heights, seed)`: f = floor((n-1)/3) Byzantine validators of mixed
//! behaviours, drops, duplicates, reordering, partitions and crashes. Exits non-zero on any
//! safety violation or non-terminating run (undecided at the virtual time limit, or stopped
//! at the step bound, so a livelocked run cannot hang the soak) and prints the failing seeds.

use std::time::Instant;

use consensus::sim::{SimConfig, default_max_events, run};

struct Args {
    runs: u64,
    first_seed: u64,
    heights: u64,
    sizes: Vec<usize>,
    threads: u64,
    hostile: bool,
    max_events: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        runs: 10_000,
        first_seed: 0,
        heights: 3,
        sizes: vec![4, 7, 10, 31],
        threads: 1,
        hostile: false,
        max_events: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => args.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--first-seed" => {
                args.first_seed = value()?.parse().map_err(|e| format!("--first-seed: {e}"))?
            }
            "--heights" => {
                args.heights = value()?.parse().map_err(|e| format!("--heights: {e}"))?
            }
            "--threads" => {
                args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?
            }
            "--sizes" => {
                args.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--sizes: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--hostile" => args.hostile = true,
            "--max-events" => {
                args.max_events = Some(value()?.parse().map_err(|e| format!("--max-events: {e}"))?)
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.sizes.is_empty() || args.sizes.contains(&0) || args.threads == 0 {
        return Err("sizes must be positive and threads at least 1".into());
    }
    Ok(args)
}

#[derive(Default)]
struct Totals {
    runs: u64,
    failures: Vec<String>,
    heights: u64,
    views_sum: u64,
    max_view: u32,
    evidence: u64,
    /// Sum over runs of the virtual time the last honest node decided the last height.
    decided_ms: u64,
    split_heights: u64,
    with_partition: u64,
    with_crash: u64,
    events: u64,
    max_run_events: u64,
    max_run_secs: f64,
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let totals: Vec<Totals> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let args = &args;
                scope.spawn(move || {
                    let mut totals = Totals::default();
                    // Whole cycles of sizes per thread, so every thread gets every n.
                    let cycle = args.sizes.len() as u64;
                    for k in (0..args.runs).filter(|k| (k / cycle) % args.threads == t) {
                        let seed = args.first_seed + k;
                        let n = args.sizes[(k % args.sizes.len() as u64) as usize];
                        let mut config = if args.hostile {
                            SimConfig::hostile(n, args.heights, seed)
                        } else {
                            SimConfig::adversarial(n, args.heights, seed)
                        };
                        config.max_events = args
                            .max_events
                            .unwrap_or_else(|| default_max_events(n, args.heights));
                        totals.with_partition += u64::from(config.partition.is_some());
                        totals.with_crash += u64::from(!config.crashes.is_empty());
                        let run_started = Instant::now();
                        let report = run(&config);
                        totals.max_run_secs =
                            totals.max_run_secs.max(run_started.elapsed().as_secs_f64());
                        totals.events += report.events;
                        totals.max_run_events = totals.max_run_events.max(report.events);
                        totals.runs += 1;
                        totals.evidence += report.evidence;
                        totals.decided_ms += report.last_decision_ms;
                        totals.split_heights += report.split_heights;
                        for v in &report.decision_views {
                            totals.heights += 1;
                            totals.views_sum += u64::from(*v) + 1;
                            totals.max_view = totals.max_view.max(*v);
                        }
                        if !report.violations.is_empty() || !report.terminated {
                            totals.failures.push(format!(
                                "n={n} seed={seed} violations={:?} terminated={} step_bound_hit={} events={} stuck={:?}",
                                report.violations,
                                report.terminated,
                                report.event_bound_hit,
                                report.events,
                                report.stuck
                            ));
                        }
                        if t == 0 && totals.runs % 1000 == 0 {
                            eprintln!(
                                "soak: thread 0 at run {}, {:.0}s",
                                k + 1,
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    totals
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("soak worker panicked"))
            .collect()
    });
    let mut all = Totals::default();
    for t in totals {
        all.runs += t.runs;
        all.failures.extend(t.failures);
        all.heights += t.heights;
        all.views_sum += t.views_sum;
        all.max_view = all.max_view.max(t.max_view);
        all.evidence += t.evidence;
        all.decided_ms += t.decided_ms;
        all.split_heights += t.split_heights;
        all.with_partition += t.with_partition;
        all.with_crash += t.with_crash;
        all.events += t.events;
        all.max_run_events = all.max_run_events.max(t.max_run_events);
        all.max_run_secs = all.max_run_secs.max(t.max_run_secs);
    }
    println!(
        "soak: runs={} sizes={:?} heights/run={} hostile={} seeds={}..{}",
        all.runs,
        args.sizes,
        args.heights,
        args.hostile,
        args.first_seed,
        args.first_seed + args.runs
    );
    println!(
        "soak: runs with a partition={} with crashes={} evidence seen={} heights decided in >1 view={}",
        all.with_partition, all.with_crash, all.evidence, all.split_heights
    );
    println!(
        "soak: decided heights={} mean views/height={:.3} max decision view={} mean virtual ms to the last decision={:.0}",
        all.heights,
        all.views_sum as f64 / all.heights.max(1) as f64,
        all.max_view,
        all.decided_ms as f64 / all.runs.max(1) as f64
    );
    println!(
        "soak: events={} max events in a run={} slowest run={:.2}s",
        all.events, all.max_run_events, all.max_run_secs
    );
    println!(
        "soak: failures={} wall={:.1}s",
        all.failures.len(),
        started.elapsed().as_secs_f64()
    );
    for f in all.failures.iter().take(20) {
        println!("FAIL {f}");
    }
    if !all.failures.is_empty() {
        std::process::exit(1);
    }
}
