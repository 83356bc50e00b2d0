//! Benchmark (not a timed test) of the consensus simulator alone: messages, bytes and CPU
//! time per decided height, and views per height under message loss, for n up to 300.
//!
//! `cargo run -p consensus --release --example bench --features sim -- [options]`
//!
//! Options:
//! * `--sizes 4,31,100,300`: validator counts (default `4,31,100,300`);
//! * `--losses 0,10,30`: percent of all transmissions lost for the whole run (default);
//! * `--heights N`: heights per run for every n (default 30, 10, 4, 2 for n <= 4, 31, 100,
//!   above; `--quick`: 10, 3, 2, 1);
//! * `--seeds K`: runs per (n, loss), seeds 1..=K (default 3; `--quick`: 1);
//! * `--quick`: small heights and one seed, a minute or two on 2 cores;
//! * `--insecure`: the cheap insecure test signatures instead of ed25519 (`verify_strict`);
//! * `--csv FILE`: also write one row per (n, loss) with columns `n,loss_pct,heights,
//!   mean_views_per_height,max_views,broadcasts_per_height,transmissions_per_height,
//!   kib_per_height,cpu_ms_per_node_per_height,wall_s`.
//!
//! Every run is an honest network (`SimConfig::calm`) with delays of 1-50 ms; with loss the
//! network never stabilises (`gst_ms = u64::MAX`). "heights" counts decided heights over all
//! seeds. "views per height" is the highest decision view among the nodes plus one. CPU time
//! is this thread's time on CPU (Linux `/proc/thread-self/schedstat`, wall time elsewhere)
//! for simulating all n nodes, including the simulator's own work (event queue, encoding one
//! copy of every broadcast, checking every decision's certificate), divided by the decided
//! heights; "per node" divides that by n. `wall_s` is the wall time of all seeds of the row.

use std::fmt::Write as _;
use std::time::Instant;

use consensus::sim::{SimConfig, SimReport, run};

fn cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Runs one simulation; returns its report, CPU (or wall) milliseconds and wall seconds.
fn measure(config: &SimConfig) -> (SimReport, f64, f64, &'static str) {
    let wall = Instant::now();
    let cpu = cpu_ns();
    let report = run(config);
    let wall_s = wall.elapsed().as_secs_f64();
    match (cpu, cpu_ns()) {
        (Some(a), Some(b)) => (report, (b - a) as f64 / 1e6, wall_s, "cpu"),
        _ => (report, wall_s * 1e3, wall_s, "wall"),
    }
}

struct Args {
    sizes: Vec<usize>,
    losses: Vec<u32>,
    heights: Option<u64>,
    seeds: Option<u64>,
    quick: bool,
    ed25519: bool,
    csv: Option<String>,
}

fn list<T: std::str::FromStr>(flag: &str, text: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    text.split(',')
        .map(|s| s.trim().parse().map_err(|e| format!("{flag}: {e}")))
        .collect()
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        sizes: vec![4, 31, 100, 300],
        losses: vec![0, 10, 30],
        heights: None,
        seeds: None,
        quick: false,
        ed25519: true,
        csv: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => args.sizes = list("--sizes", &value()?)?,
            "--losses" => args.losses = list("--losses", &value()?)?,
            "--heights" => {
                args.heights = Some(value()?.parse().map_err(|e| format!("--heights: {e}"))?)
            }
            "--seeds" => args.seeds = Some(value()?.parse().map_err(|e| format!("--seeds: {e}"))?),
            "--csv" => args.csv = Some(value()?),
            "--quick" => args.quick = true,
            "--insecure" => args.ed25519 = false,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.sizes.is_empty() || args.sizes.contains(&0) || args.sizes.iter().any(|&n| n > 1024) {
        return Err("sizes must be in 1..=1024".into());
    }
    if args.losses.is_empty() || args.losses.iter().any(|&l| l >= 100) {
        return Err("losses must be percentages below 100".into());
    }
    if args.heights == Some(0) || args.seeds == Some(0) {
        return Err("--heights and --seeds must be at least 1".into());
    }
    Ok(args)
}

fn default_heights(n: usize, quick: bool) -> u64 {
    match (n, quick) {
        (..=4, false) => 30,
        (..=31, false) => 10,
        (..=100, false) => 4,
        (_, false) => 2,
        (..=4, true) => 10,
        (..=31, true) => 3,
        (..=100, true) => 2,
        (_, true) => 1,
    }
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let seeds = args.seeds.unwrap_or(if args.quick { 1 } else { 3 });
    let scheme = if args.ed25519 {
        "ed25519 verify_strict"
    } else {
        "insecure test signatures"
    };
    println!(
        "# honest network, {scheme}, delays 1-50 ms, loss for the whole run, seeds 1..={seeds}"
    );
    println!(
        "{:>4} {:>5} {:>7} {:>9} {:>9} {:>13} {:>11} {:>17} {:>9} {:>12} {:>14} {:>9} {:>8}",
        "n",
        "loss",
        "heights",
        "views/ht",
        "max views",
        "broadcasts/ht",
        "transm./ht",
        "KiB/ht",
        "virt ms/ht",
        "ms/ht (all)",
        "ms/ht per node",
        "events/ht",
        "wall s"
    );
    let mut csv = String::from(
        "n,loss_pct,heights,mean_views_per_height,max_views,broadcasts_per_height,\
         transmissions_per_height,kib_per_height,cpu_ms_per_node_per_height,wall_s\n",
    );
    for &n in &args.sizes {
        let heights = args.heights.unwrap_or(default_heights(n, args.quick));
        for &loss in &args.losses {
            let (mut views, mut max, mut hts) = (0u64, 0u32, 0u64);
            let (mut broadcasts, mut transmissions, mut bytes, mut virt, mut events) =
                (0u64, 0u64, 0u64, 0u64, 0u64);
            let (mut ms, mut wall, mut clock) = (0.0f64, 0.0f64, "cpu");
            for seed in 1..=seeds {
                let mut config = SimConfig::calm(n, heights, seed);
                config.ed25519 = args.ed25519;
                config.drop_rate = f64::from(loss) / 100.0;
                config.gst_ms = u64::MAX;
                config.time_limit_ms = 36_000_000;
                let (report, run_ms, run_wall, run_clock) = measure(&config);
                assert!(
                    report.violations.is_empty() && report.terminated,
                    "n={n} loss={loss}% seed={seed}: {:?} {:?}",
                    report.violations,
                    report.stuck
                );
                for v in &report.decision_views {
                    views += u64::from(*v) + 1;
                    max = max.max(*v + 1);
                    hts += 1;
                }
                broadcasts += report.broadcasts;
                transmissions += report.transmissions;
                bytes += report.bytes;
                virt += report.last_decision_ms;
                events += report.events;
                ms += run_ms;
                wall += run_wall;
                clock = run_clock;
            }
            let h = hts as f64;
            let row = [
                views as f64 / h,
                broadcasts as f64 / h,
                transmissions as f64 / h,
                bytes as f64 / h / 1024.0,
                ms / h / n as f64,
            ];
            println!(
                "{:>4} {:>4}% {:>7} {:>9.2} {:>9} {:>13.1} {:>11.0} {:>17.1} {:>9.0} {:>8.1} {} {:>14.3} {:>9.0} {:>8.1}",
                n,
                loss,
                hts,
                row[0],
                max,
                row[1],
                row[2],
                row[3],
                virt as f64 / h,
                ms / h,
                clock,
                row[4],
                events as f64 / h,
                wall
            );
            let _ = writeln!(
                csv,
                "{n},{loss},{hts},{:.3},{max},{:.1},{:.1},{:.1},{:.4},{:.2}",
                row[0], row[1], row[2], row[3], row[4], wall
            );
        }
    }
    if let Some(path) = &args.csv {
        if let Err(e) = std::fs::write(path, csv) {
            eprintln!("bench: cannot write {path}: {e}");
            std::process::exit(1);
        }
        println!("wrote {path}");
    }
}
