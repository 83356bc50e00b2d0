//! `cohort-bench`: runs Cohort's benchmark suites on real MNIST, writes `bench/results/*.csv`,
//! renders `bench/plots/*.png` and regenerates the tables of `BENCHMARKS.md`.
//! `scripts/bench.sh` builds the programs in release and calls this.

mod render;
mod runner;
mod suites;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use cohort_bench::table::Table;

use crate::runner::Runner;

/// Runs benchmark suites and regenerates BENCHMARKS.md.
#[derive(Parser, Debug)]
#[command(name = "cohort-bench", version)]
struct Cli {
    /// Suites to run: parity, attacks, bandwidth, overhead, scale, privacy, mia, or all (default).
    /// `render` only regenerates BENCHMARKS.md and the plots from the CSVs already there.
    suites: Vec<String>,
    /// Small sizes that finish in minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Leave the CNN out of the full parity suite (it takes ~20 minutes on one core).
    #[arg(long)]
    no_cnn: bool,
    /// The `cohort` binary (build it with `cargo build --release -p node`).
    #[arg(long, default_value = "target/release/cohort")]
    cohort: PathBuf,
    /// The consensus simulator benchmark (`cargo build --release -p consensus --example bench
    /// --features sim`), for the scale suite.
    #[arg(long)]
    consensus_bench: Option<PathBuf>,
    /// The local training speed benchmark (`cargo build --release -p model --example
    /// train_speed`), for the overhead suite.
    #[arg(long)]
    train_speed: Option<PathBuf>,
    /// The membership-inference experiment (`cargo build --release -p model --example mia`),
    /// for the mia suite.
    #[arg(long)]
    mia: Option<PathBuf>,
    /// MNIST IDX directory.
    #[arg(long, default_value = "../shared/data/mnist")]
    data_dir: PathBuf,
    /// Where the CSVs go.
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
    /// The document to regenerate.
    #[arg(long, default_value = "BENCHMARKS.md")]
    doc: PathBuf,
    /// Where the plots go.
    #[arg(long, default_value = "bench/plots")]
    plots: PathBuf,
}

const ALL: [&str; 7] = [
    "parity",
    "attacks",
    "bandwidth",
    "overhead",
    "scale",
    "privacy",
    "mia",
];

/// Suites that run no `cohort` binary.
const WITHOUT_COHORT: [&str; 1] = ["mia"];

fn machine(cli: &Cli) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or_else(|| "?".into(), |k| format!("{:.1} GiB", k / 1024.0 / 1024.0));
    let out = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    let cohort = out(&cli.cohort.display().to_string(), &["--version"]);
    format!(
        "cpu: {cpu} ({cores} cores)\nmemory: {mem}\nos: {}\nrustc: {}\ncohort: {cohort}, commit {}\nload average at the end: {}\n",
        out("uname", &["-sr"]),
        out("rustc", &["--version"]),
        out("git", &["rev-parse", "--short", "HEAD"]),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
    )
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut suites: Vec<String> = if cli.suites.is_empty() || cli.suites.iter().any(|s| s == "all")
    {
        ALL.iter().map(|s| s.to_string()).collect()
    } else {
        cli.suites.clone()
    };
    let render_only = suites.iter().all(|s| s == "render");
    suites.retain(|s| s != "render");
    for s in &suites {
        if !ALL.contains(&s.as_str()) {
            bail!(
                "unknown suite {s:?}: expected one of {} or all, render",
                ALL.join(", ")
            );
        }
    }
    std::fs::create_dir_all(&cli.results)
        .with_context(|| format!("creating {}", cli.results.display()))?;
    if !render_only {
        let needs_cohort = suites.iter().any(|s| !WITHOUT_COHORT.contains(&s.as_str()));
        if needs_cohort && !cli.cohort.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p node` or pass --cohort",
                cli.cohort.display()
            );
        }
        if !cli.data_dir.join("train-images-idx3-ubyte.gz").exists()
            && !cli.data_dir.join("train-images-idx3-ubyte").exists()
        {
            bail!("no MNIST in {} (pass --data-dir)", cli.data_dir.display());
        }
    }
    let mut runner = Runner::new(
        cli.cohort.clone(),
        cli.consensus_bench.clone(),
        cli.train_speed.clone(),
        cli.mia.clone(),
        cli.data_dir.clone(),
        cli.results.clone(),
    );
    let start = Instant::now();
    let mut failed = Vec::new();
    for s in &suites {
        let t = Instant::now();
        let res = match s.as_str() {
            "parity" => suites::parity(&mut runner, cli.quick, !cli.no_cnn),
            "attacks" => suites::attacks(&mut runner, cli.quick),
            "bandwidth" => suites::bandwidth(&mut runner, cli.quick),
            "overhead" => suites::overhead(&mut runner, cli.quick),
            "scale" => suites::scale(&mut runner, cli.quick),
            "privacy" => suites::privacy(&mut runner, cli.quick),
            "mia" => suites::mia(&mut runner, cli.quick),
            _ => unreachable!("checked above"),
        };
        match res {
            Ok(()) => println!("== {s} done in {:.0} s", t.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("== {s} FAILED: {e:#}");
                failed.push(s.clone());
            }
        }
    }
    if !suites.is_empty() {
        std::fs::write(cli.results.join("machine.txt"), machine(&cli))?;
    }
    render::render(&cli.doc, &cli.results, &cli.plots)?;
    println!("\nSummary ({:.0} s):", start.elapsed().as_secs_f64());
    for s in render::SUITES {
        // train-speed comes with the overhead suite, consensus with scale.
        let owner = match s {
            "train-speed" => "overhead",
            "consensus" => "scale",
            other => other,
        };
        if !suites.iter().any(|x| x == owner) {
            continue;
        }
        if let Ok(t) = Table::read_csv(&cli.results.join(format!("{s}.csv"))) {
            println!("\n{s}\n{}", t.to_markdown());
        }
    }
    println!("\nwrote {} and {}", cli.doc.display(), cli.plots.display());
    if !failed.is_empty() {
        bail!("suites failed: {}", failed.join(", "));
    }
    Ok(())
}
