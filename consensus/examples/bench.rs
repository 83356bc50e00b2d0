//! Benchmark (not a timed test): messages and CPU time per decided height, and views per
//! height under message loss.
//!
//! `cargo run -p consensus --release --example bench --features sim`
//!
//! Part 1: an honest network with real ed25519 keys (`verify_strict`), delays 1-50 ms, no
//! loss, for n = 4, 31, 100. CPU time is this thread's time on CPU (Linux
//! `/proc/thread-self/schedstat`, wall time elsewhere) for simulating all n nodes, including
//! the simulator's own work (event queue, encoding and decoding every transmission), divided
//! by the decided heights; "per node" divides that by n.
//!
//! Part 2: views per height with 0%, 10% and 30% of all transmissions lost for the whole run
//! (never stabilising), delays 1-50 ms, for n = 4, 31, 100 (cheap test signatures).

use std::time::Instant;

use consensus::sim::{SimConfig, SimReport, run};

fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn measure(config: &SimConfig) -> (SimReport, f64, &'static str) {
    let wall = Instant::now();
    let cpu = cpu_ns();
    let report = run(config);
    match (cpu, cpu_ns()) {
        (Some(a), Some(b)) => (report, (b - a) as f64 / 1e6, "cpu"),
        _ => (report, wall.elapsed().as_secs_f64() * 1e3, "wall"),
    }
}

fn main() {
    println!("# Part 1: honest network, ed25519, no loss, delays 1-50 ms");
    println!(
        "{:>4} {:>7} {:>16} {:>20} {:>12} {:>14} {:>18}",
        "n",
        "heights",
        "broadcasts/ht",
        "transmissions/ht",
        "KiB/ht",
        "ms/ht (all)",
        "ms/ht (per node)"
    );
    for (n, heights) in [(4usize, 50u64), (31, 20), (100, 5)] {
        let mut config = SimConfig::calm(n, heights, 7);
        config.ed25519 = true;
        let (report, ms, clock) = measure(&config);
        assert!(
            report.violations.is_empty() && report.terminated,
            "{report:?}"
        );
        let h = heights as f64;
        println!(
            "{:>4} {:>7} {:>16.1} {:>20.1} {:>12.1} {:>11.2} {} {:>18.3}",
            n,
            heights,
            report.broadcasts as f64 / h,
            report.transmissions as f64 / h,
            report.bytes as f64 / h / 1024.0,
            ms / h,
            clock,
            ms / h / n as f64
        );
    }
    println!();
    println!("# Part 2: views per height under loss (whole run), delays 1-50 ms, 3 seeds each");
    println!(
        "{:>4} {:>6} {:>7} {:>16} {:>14} {:>18} {:>20}",
        "n",
        "loss",
        "heights",
        "mean views/ht",
        "max views/ht",
        "virtual ms/ht",
        "transmissions/ht"
    );
    for (n, heights) in [(4usize, 30u64), (31, 10), (100, 4)] {
        for loss in [0.0, 0.1, 0.3] {
            let (mut views, mut max, mut hts, mut ms, mut tx) = (0u64, 0u32, 0u64, 0u64, 0u64);
            for seed in 1..=3 {
                let mut config = SimConfig::calm(n, heights, seed);
                config.drop_rate = loss;
                config.gst_ms = u64::MAX;
                config.time_limit_ms = 36_000_000;
                let report = run(&config);
                assert!(
                    report.violations.is_empty() && report.terminated,
                    "{report:?}"
                );
                for v in &report.decision_views {
                    views += u64::from(*v) + 1;
                    max = max.max(*v + 1);
                    hts += 1;
                }
                ms += report.last_decision_ms;
                tx += report.transmissions;
            }
            println!(
                "{:>4} {:>5.0}% {:>7} {:>16.2} {:>14} {:>18.0} {:>20.0}",
                n,
                loss * 100.0,
                hts,
                views as f64 / hts as f64,
                max,
                ms as f64 / hts as f64,
                tx as f64 / hts as f64
            );
        }
    }
}
