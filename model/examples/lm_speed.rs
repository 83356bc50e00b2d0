//! Training throughput of the character transformer ([`model::transformer`]) in tokens per second:
//! one step is a forward pass over `batch` windows of `context` tokens, the backward pass and the
//! AdamW update, on synthetic token ids (the speed does not depend on the values), for two
//! implementations: `autograd` (candle's autograd and `AdamW`, `model::lm::train_lm_autograd`) and
//! `fast` (the hand-written CPU pass that `model::lm::train_lm` takes on the CPU). Prints the best
//! of `--repeat` runs of `--steps` steps after a warm-up for each, and for autograd the split of one
//! step into forward, backward and optimiser time.
//!
//! ```sh
//! cargo run -p model --example lm_speed -- [--threads T] [--batch B] [--steps S] [--repeat R]
//!     [--model transformer:layers=4,heads=4,dim=128,context=64] [--vocab V] [--only autograd|fast]
//! ```
//!
//! Times are this thread's CPU time (`/proc/thread-self/schedstat`, nanoseconds) when it can be
//! read, else wall-clock time: on a shared machine the wall clock also counts the time other
//! processes hold the core, and with one candle thread the CPU time is the step's own cost. Both
//! are printed for the whole-step figure, and the CPU-time one again as
//! `RESULT candle-<autograd|fast> transformer <batch> tokens/s <rate> <ms per step>` for
//! `scripts/speed-vs-torch.sh`.
//!
//! `--threads T` sets `RAYON_NUM_THREADS` before anything runs (candle's CPU matmul reads it on
//! every product; see `train_speed.rs`); T = 1 is comparable with PyTorch under
//! `torch.set_num_threads(1)`.

use std::time::Instant;

use candle_core::Device;
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW};
use model::lm::{LmTrainConfig, random_batch, train_lm, train_lm_autograd};
use model::rng::Rng;
use model::transformer::{Transformer, TransformerConfig};

struct Args {
    threads: Option<usize>,
    batch: usize,
    steps: usize,
    repeat: usize,
    model: TransformerConfig,
    vocab: usize,
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        threads: None,
        batch: 12,
        steps: 20,
        repeat: 3,
        model: TransformerConfig::default(),
        vocab: 80,
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
            "--vocab" => a.vocab = num(value()?)?.max(1),
            "--model" => a.model = value()?.parse().map_err(|e| format!("{e}"))?,
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    if let Some(t) = args.threads {
        // SAFETY: no other thread exists yet; candle and rayon read this variable later.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", t.to_string()) };
    }
    let dev = Device::Cpu;
    let cfg = args.model;
    let v = args.vocab;
    let mut rng = Rng::seed(3);
    let data: Vec<u32> = (0..200_000).map(|_| rng.below(v) as u32).collect();
    let init = cfg.init(v, 1);
    let tc = LmTrainConfig {
        steps: args.steps,
        batch: args.batch,
        ..LmTrainConfig::default()
    };
    let tokens_per_step = args.batch * cfg.context;
    println!(
        "{cfg} ({} params, vocabulary {v}), batch {} ({tokens_per_step} tokens a step), \
         candle threads {}, best of {} runs of {} steps",
        cfg.num_params(v),
        args.batch,
        candle_core::utils::get_num_threads(),
        args.repeat,
        args.steps
    );
    let m = Transformer::new(cfg, v, &init, &dev)?;
    type Train = fn(
        &Transformer,
        &[u32],
        &LmTrainConfig,
        &mut Rng,
        Option<&mut dyn FnMut(usize, usize, f32)>,
    ) -> model::Result<f32>;
    let all: [(&str, Train); 2] = [("autograd", train_lm_autograd), ("fast", train_lm)];
    let wanted: Vec<_> = match args.only.as_deref() {
        None => all.to_vec(),
        Some(o) => {
            let one: Vec<_> = all.iter().filter(|(n, _)| *n == o).cloned().collect();
            if one.is_empty() {
                return Err(format!("--only {o}: expected autograd or fast").into());
            }
            one
        }
    };
    let origin = Instant::now();
    for &(name, train) in &wanted {
        m.set_flat(&init)?;
        train(&m, &data, &LmTrainConfig { steps: 3, ..tc }, &mut rng, None)?;
        let (mut best_wall, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..args.repeat {
            m.set_flat(&init)?;
            let (w0, c0) = (Instant::now(), now(origin));
            train(&m, &data, &tc, &mut rng, None)?;
            best_cpu = best_cpu.min(now(origin) - c0);
            best_wall = best_wall.min(w0.elapsed().as_secs_f64());
        }
        for (what, best) in [("cpu time", best_cpu), ("wall time", best_wall)] {
            let per_step = best / args.steps as f64;
            println!(
                "{name} ({what}): {:.1} ms a step, {:.0} tokens/s, {:.1} windows/s",
                per_step * 1e3,
                tokens_per_step as f64 / per_step,
                args.batch as f64 / per_step
            );
        }
        let per_step = best_cpu / args.steps as f64;
        println!(
            "RESULT candle-{name} transformer {} tokens/s {:.1} {:.2}",
            args.batch,
            tokens_per_step as f64 / per_step,
            per_step * 1e3
        );
    }
    if !wanted.iter().any(|(n, _)| *n == "autograd") {
        return Ok(());
    }
    // candle's step, timed by phase.
    let mut opt = AdamW::new(
        m.vars().to_vec(),
        ParamsAdamW {
            lr: 1e-3,
            ..ParamsAdamW::default()
        },
    )?;
    let (mut fwd, mut bwd, mut upd) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..args.steps.max(5) {
        let (xs, ys) = random_batch(&data, args.batch, cfg.context, &mut rng, &dev)?;
        let t0 = now(origin);
        let (loss, _) = m.loss(&xs, &ys)?;
        loss.to_scalar::<f32>()?;
        let t1 = now(origin);
        let grads = loss.backward()?;
        let t2 = now(origin);
        opt.step(&grads)?;
        let t3 = now(origin);
        fwd = fwd.min(t1 - t0);
        bwd = bwd.min(t2 - t1);
        upd = upd.min(t3 - t2);
    }
    println!(
        "best phases (cpu time): forward {:.1} ms, backward {:.1} ms, AdamW {:.1} ms",
        fwd * 1e3,
        bwd * 1e3,
        upd * 1e3
    );
    Ok(())
}
