//! Local training throughput of McMahan et al.'s CNN (`ModelSpec::cnn`, 1,663,370 parameters) in
//! samples per second: (a) Cohort's candle autograd path (`train_model_autograd`, what
//! `train_local` ran for the CNN before `model::fast_cnn`) and (b) `train_local`, which takes the
//! hand-written pass of `model::fast_cnn`. Plain SGD (lr 0.05), `--batch` samples a step (32),
//! synthetic 28x28 inputs in [0, 1) (the speed does not depend on the values).
//!
//! ```sh
//! cargo run -p model --example cnn_speed -- [--threads T] [--batch B] [--steps S] [--repeat R]
//!     [--only autograd|train_local]
//! ```
//!
//! Times are this thread's CPU time (`/proc/thread-self/schedstat`), as in `lm_speed.rs`, else
//! wall time: with one thread the step's own cost on a shared machine. Each figure is the best of
//! `--repeat` runs of `--steps` steps after a warm-up of two steps. `--threads T` sets
//! `RAYON_NUM_THREADS` before anything runs (see `train_speed.rs`); T = 1 is comparable with
//! PyTorch under `torch.set_num_threads(1)` (`scripts/speed-vs-torch.sh` runs both). Each result
//! is also printed as `RESULT <impl> cnn <batch> samples/s <rate> <ms per step>`.

use std::time::Instant;

use candle_core::Device;
use model::data::Dataset;
use model::net::{Model, ModelSpec};
use model::rng::Rng;
use model::train::{Optimizer, TrainConfig, Work, train_local, train_model_autograd};

struct Args {
    threads: Option<usize>,
    batch: usize,
    steps: usize,
    repeat: usize,
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: None,
        batch: 32,
        steps: 20,
        repeat: 3,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--threads" => a.threads = Some(num(value()?)?.max(1)),
            "--batch" => a.batch = num(value()?)?.max(1),
            "--steps" => a.steps = num(value()?)?.max(1),
            "--repeat" => a.repeat = num(value()?)?.max(1),
            "--only" => a.only = Some(value()?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// This thread's CPU time in seconds (Linux), or `None` where the kernel does not say.
fn thread_cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 * 1e-9)
}

/// A clock: thread CPU time where available, else wall time since `origin`.
fn now(origin: Instant) -> f64 {
    thread_cpu_secs().unwrap_or_else(|| origin.elapsed().as_secs_f64())
}

fn config(batch: usize, steps: usize) -> TrainConfig {
    TrainConfig {
        work: Work::Steps(steps),
        batch,
        optimizer: Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.0,
        },
        prox_mu: 0.0,
        dp_sgd: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    if let Some(t) = args.threads {
        // SAFETY: no other thread exists yet; candle and rayon read this variable later.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", t.to_string()) };
    }
    let kind = ModelSpec::cnn();
    let n = args.batch * args.steps;
    let mut rng = Rng::seed(11);
    let x = (0..n * 784).map(|_| rng.next_f64() as f32).collect();
    let y = (0..n).map(|_| rng.below(10) as u8).collect();
    let data = Dataset::dense(x, y, 784);
    let init = kind.init(1);
    println!(
        "CNN ({} params), batch {}, plain SGD, candle threads {}, best of {} runs of {} steps \
         (CPU time of this thread)",
        kind.num_params(),
        args.batch,
        candle_core::utils::get_num_threads(),
        args.repeat,
        args.steps
    );
    type Run<'a> = Box<dyn Fn(usize) -> model::Result<()> + 'a>;
    let runs: Vec<(&str, Run)> = vec![
        (
            "candle-autograd",
            Box::new(|steps| {
                let m = Model::new(&kind, &init, &Device::Cpu)?;
                let cfg = config(args.batch, steps);
                train_model_autograd(&m, &data, &cfg, &mut Rng::seed(1), None, None)?;
                Ok(())
            }),
        ),
        (
            "candle-fast",
            Box::new(|steps| {
                let cfg = config(args.batch, steps);
                train_local(&kind, &init, &data, &cfg, &mut Rng::seed(1), &Device::Cpu)?;
                Ok(())
            }),
        ),
    ];
    let origin = Instant::now();
    for (name, run) in &runs {
        let wanted = match args.only.as_deref() {
            None => true,
            Some("autograd") => *name == "candle-autograd",
            Some("train_local") => *name == "candle-fast",
            Some(o) => return Err(format!("--only {o}: expected autograd or train_local").into()),
        };
        if !wanted {
            continue;
        }
        run(2)?;
        let mut best = f64::INFINITY;
        for _ in 0..args.repeat {
            let t0 = now(origin);
            run(args.steps)?;
            best = best.min(now(origin) - t0);
        }
        let per_step = best / args.steps as f64;
        let rate = args.batch as f64 / per_step;
        println!(
            "{name:>16}: {:.1} ms a step, {rate:.0} samples/s",
            per_step * 1e3
        );
        println!(
            "RESULT {name} cnn {} samples/s {rate:.1} {:.2}",
            args.batch,
            per_step * 1e3
        );
    }
    Ok(())
}
