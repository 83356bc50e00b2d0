//! Local training throughput of the 2NN (784-200-200-10, batch 32) in samples per second:
//! (a) a bare candle-nn loop (`Linear`, `cross_entropy`, `candle_nn::SGD`), (b) Cohort's candle
//! autograd path (`train_model_autograd`, what `train_local` ran before the fast path), (c)
//! `train_local`, which takes the hand-written MLP pass of `model::fast`, and (d) `train_model`
//! with a progress callback, which also copies the parameters into the model after every step.
//! DP-SGD (`--dp`, or `--only` naming a `dp` row): (e) `train_local` with `TrainConfig::dp_sgd` at
//! `clip:1,noise:1,rate:B/N`, so that the expected Poisson batch is the `--batch` B, for one
//! expected epoch (`round(1/q)` steps, N samples in expectation); (f) the same on the per-example
//! autograd path (`train_model_autograd_dp`, for the CNN; about batch-1 speed). It also prints
//! the time the Gaussian noise alone takes per step (one ChaCha20 ziggurat draw per parameter).
//!
//! ```sh
//! cargo run --release -p model --example train_speed -- [--samples N] [--threads T] [--repeat R]
//!     [--batch B] [--mnist DIR] [--csv FILE] [--only IMPL] [--dp]
//! ```
//!
//! Threads: candle's CPU matmul (the `gemm` crate) calls `candle_core::utils::get_num_threads()`
//! on every product: `RAYON_NUM_THREADS` if set, else the physical core count, which it works out
//! again each time by reading `/proc/cpuinfo` (about 35 us, several times a step). candle has no
//! setter. `--threads T` sets `RAYON_NUM_THREADS=T` before anything starts: T = 1 is a
//! single-threaded gemm, comparable with PyTorch under `torch.set_num_threads(1)`; leaving it out
//! measures the default a `cohort` process gets today. Everything else in these loops runs on the
//! calling thread. Each figure is the best of `--repeat` runs of one epoch over `--samples`
//! synthetic samples (or the first MNIST training images), after a short warm-up. `--csv` writes
//! `impl,model,batch,optimizer,threads,samples_per_sec` lines.

use std::io::Write as _;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer as _, VarBuilder, VarMap};
use model::data::Dataset;
use model::dpsgd::{DpSgdConfig, NoiseSource};
use model::net::{Model, ModelSpec};
use model::rng::Rng;
use model::train::{
    Optimizer, TrainConfig, Work, train_local, train_local_with_noise, train_model,
    train_model_autograd,
};

struct Args {
    samples: usize,
    threads: Option<usize>,
    repeat: usize,
    batch: usize,
    mnist: Option<String>,
    csv: Option<String>,
    only: Option<String>,
    dp: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        samples: 16_384,
        threads: None,
        repeat: 3,
        batch: 32,
        mnist: None,
        csv: None,
        only: None,
        dp: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--samples" => a.samples = num(value()?)?.max(1),
            "--threads" => a.threads = Some(num(value()?)?.max(1)),
            "--repeat" => a.repeat = num(value()?)?.max(1),
            "--batch" => a.batch = num(value()?)?.max(1),
            "--mnist" => a.mnist = Some(value()?),
            "--csv" => a.csv = Some(value()?),
            "--only" => a.only = Some(value()?),
            "--dp" => a.dp = true,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// `n` samples: MNIST's first `n` training images when a directory is given, else uniform noise
/// in [0, 1) with seeded labels (the speed does not depend on the values).
fn dataset(args: &Args) -> Result<Dataset, Box<dyn std::error::Error>> {
    if let Some(dir) = &args.mnist {
        let split = model::data::load_idx_dir(std::path::Path::new(dir))?;
        let n = args.samples.min(split.train.len());
        let idx: Vec<usize> = (0..n).collect();
        return Ok(split.train.subset(&idx));
    }
    let mut rng = Rng::seed(11);
    let f = 784;
    let x = (0..args.samples * f)
        .map(|_| rng.next_f64() as f32)
        .collect();
    let y = (0..args.samples).map(|_| rng.below(10) as u8).collect();
    Ok(Dataset::dense(x, y, f))
}

/// One epoch of the bare candle-nn loop, sequential batches; returns the seconds taken.
fn bare_candle(data: &Dataset, batch: usize, lr: f64) -> candle_core::Result<f64> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let fc1 = candle_nn::linear(784, 200, vb.pp("fc1"))?;
    let fc2 = candle_nn::linear(200, 200, vb.pp("fc2"))?;
    let fc3 = candle_nn::linear(200, 10, vb.pp("fc3"))?;
    let mut opt = candle_nn::SGD::new(varmap.all_vars(), lr)?;
    let n = data.len();
    let xs_all = Tensor::from_vec(data.to_f32(), (n, data.features), &dev)?;
    let ys: Vec<u32> = data.y.iter().map(|&y| u32::from(y)).collect();
    let ys_all = Tensor::from_vec(ys, n, &dev)?;
    let start = Instant::now();
    let mut pos = 0;
    while pos < n {
        let b = batch.min(n - pos);
        let xs = xs_all.narrow(0, pos, b)?;
        let ys = ys_all.narrow(0, pos, b)?;
        let h = fc1.forward(&xs)?.relu()?;
        let h = fc2.forward(&h)?.relu()?;
        let logits = fc3.forward(&h)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &ys)?;
        opt.backward_step(&loss)?;
        pos += b;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn config(batch: usize, optimizer: Optimizer) -> TrainConfig {
    TrainConfig {
        work: Work::Epochs(1),
        batch,
        optimizer,
        prox_mu: 0.0,
        dp_sgd: None,
    }
}

/// One epoch of Cohort's autograd path; returns the seconds taken.
fn autograd(data: &Dataset, cfg: &TrainConfig, init: &[f32]) -> model::Result<f64> {
    let m = Model::new(&ModelSpec::mlp(), init, &Device::Cpu)?;
    let start = Instant::now();
    train_model_autograd(&m, data, cfg, &mut Rng::seed(1), None, None)?;
    Ok(start.elapsed().as_secs_f64())
}

/// DP-SGD settings whose expected batch `q N` is `batch` over `n` samples.
fn dp_config(batch: usize, n: usize, optimizer: Optimizer) -> TrainConfig {
    TrainConfig {
        dp_sgd: Some(DpSgdConfig {
            clip: 1.0,
            noise: 1.0,
            rate: (batch as f64 / n as f64).min(1.0),
        }),
        ..config(batch, optimizer)
    }
}

/// One expected epoch of DP-SGD through `train_local_with_noise` (the fast path for the MLP);
/// returns the seconds taken. The fixed key stands in for 32 secret bytes.
fn fast_dp(data: &Dataset, batch: usize, init: &[f32]) -> model::Result<f64> {
    let cfg = dp_config(batch, data.len(), sgd());
    let mut noise = NoiseSource::from_secret([7; 32]);
    let start = Instant::now();
    train_local_with_noise(
        &ModelSpec::mlp(),
        init,
        data,
        &cfg,
        &mut Rng::seed(1),
        Some(&mut noise),
        &Device::Cpu,
    )?;
    Ok(start.elapsed().as_secs_f64())
}

/// One expected epoch of DP-SGD on the per-example autograd path; returns the seconds taken.
fn autograd_dp(data: &Dataset, batch: usize, init: &[f32]) -> model::Result<f64> {
    let cfg = dp_config(batch, data.len(), sgd());
    let m = Model::new(&ModelSpec::mlp(), init, &Device::Cpu)?;
    let mut noise = NoiseSource::from_secret([7; 32]);
    let start = Instant::now();
    train_model_autograd(&m, data, &cfg, &mut Rng::seed(1), Some(&mut noise), None)?;
    Ok(start.elapsed().as_secs_f64())
}

fn sgd() -> Optimizer {
    Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.0,
    }
}

/// One epoch of `train_model` with a progress callback (the fast path, which then keeps the
/// model's variables current after every step); returns the seconds taken.
fn with_progress(data: &Dataset, cfg: &TrainConfig, init: &[f32]) -> model::Result<f64> {
    let m = Model::new(&ModelSpec::mlp(), init, &Device::Cpu)?;
    let mut last = 0;
    let mut on_step = |step: usize, _total: usize| last = step;
    let start = Instant::now();
    train_model(&m, data, cfg, &mut Rng::seed(1), Some(&mut on_step))?;
    Ok(start.elapsed().as_secs_f64())
}

/// One epoch of `train_local` (the fast path for the MLP); returns the seconds taken.
fn fast(data: &Dataset, cfg: &TrainConfig, init: &[f32]) -> model::Result<f64> {
    let start = Instant::now();
    train_local(
        &ModelSpec::mlp(),
        init,
        data,
        cfg,
        &mut Rng::seed(1),
        &Device::Cpu,
    )?;
    Ok(start.elapsed().as_secs_f64())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    if let Some(t) = args.threads {
        // SAFETY: no other thread exists yet; candle and rayon read this variable later.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", t.to_string()) };
    }
    let threads = candle_core::utils::get_num_threads();
    let source = match std::env::var("RAYON_NUM_THREADS") {
        Ok(v) => format!("RAYON_NUM_THREADS={v}"),
        Err(_) => "RAYON_NUM_THREADS unset: /proc/cpuinfo read per matmul".into(),
    };
    let data = dataset(&args)?;
    let warm = data.subset(&(0..data.len().min(2048)).collect::<Vec<_>>());
    let init = ModelSpec::mlp().init(1);
    let mut csv = match &args.csv {
        Some(path) => {
            let mut f = std::fs::File::create(path)?;
            writeln!(f, "impl,model,batch,optimizer,threads,samples_per_sec")?;
            Some(f)
        }
        None => None,
    };
    println!(
        "2NN, batch {}, {} samples per epoch ({}), candle threads {threads} ({source}), best of {}",
        args.batch,
        data.len(),
        if args.mnist.is_some() {
            "MNIST"
        } else {
            "synthetic"
        },
        args.repeat
    );
    let sgd = sgd();
    let momentum = Optimizer::Sgd {
        lr: 0.05,
        momentum: 0.9,
    };
    let adam = Optimizer::Adam { lr: 1e-3 };
    type Run<'a> = Box<dyn Fn(&Dataset) -> Result<f64, Box<dyn std::error::Error>> + 'a>;
    let b = args.batch;
    let runs: Vec<(&str, &str, Run)> = vec![
        (
            "candle-nn",
            "sgd",
            Box::new(|d: &Dataset| Ok(bare_candle(d, b, 0.05)?)),
        ),
        (
            "autograd",
            "sgd",
            Box::new(|d: &Dataset| Ok(autograd(d, &config(b, sgd), &init)?)),
        ),
        (
            "autograd",
            "sgd-m0.9",
            Box::new(|d: &Dataset| Ok(autograd(d, &config(b, momentum), &init)?)),
        ),
        (
            "train_local",
            "sgd",
            Box::new(|d: &Dataset| Ok(fast(d, &config(b, sgd), &init)?)),
        ),
        (
            "train_local",
            "sgd-m0.9",
            Box::new(|d: &Dataset| Ok(fast(d, &config(b, momentum), &init)?)),
        ),
        (
            "train_local",
            "adam",
            Box::new(|d: &Dataset| Ok(fast(d, &config(b, adam), &init)?)),
        ),
        (
            "train_model+progress",
            "sgd-m0.9",
            Box::new(|d: &Dataset| Ok(with_progress(d, &config(b, momentum), &init)?)),
        ),
        (
            "train_local-dp",
            "sgd",
            Box::new(|d: &Dataset| Ok(fast_dp(d, b, &init)?)),
        ),
        (
            "autograd-dp",
            "sgd",
            Box::new(|d: &Dataset| Ok(autograd_dp(d, b, &init)?)),
        ),
    ];
    let wanted = |imp: &str| match args.only.as_deref() {
        Some(o) => o == imp,
        None => args.dp || !imp.ends_with("-dp"),
    };
    if args.dp || args.only.as_deref().is_some_and(|o| o.ends_with("-dp")) {
        // The noise alone: one draw per parameter per step.
        let mut noise = NoiseSource::from_secret([7; 32]);
        let mut grad = vec![0.0f32; ModelSpec::mlp().num_params()];
        let reps = 200;
        let start = Instant::now();
        for _ in 0..reps {
            noise.add_gaussian(&mut grad, 1.0);
        }
        let per_step = start.elapsed().as_secs_f64() / f64::from(reps);
        println!(
            "{:>20} {:>9}: {:>9.0} us per step ({} draws, {:.1} ns each)",
            "noise",
            "",
            per_step * 1e6,
            grad.len(),
            per_step * 1e9 / grad.len() as f64
        );
    }
    for (imp, opt, run) in runs.iter().filter(|r| wanted(r.0)) {
        run(&warm)?;
        let mut best = f64::INFINITY;
        for _ in 0..args.repeat {
            best = best.min(run(&data)?);
        }
        let rate = data.len() as f64 / best;
        println!("{imp:>20} {opt:>9}: {rate:>9.0} samples/s");
        if let Some(f) = csv.as_mut() {
            writeln!(f, "{imp},mlp,{b},{opt},{threads},{rate:.0}")?;
        }
    }
    Ok(())
}
