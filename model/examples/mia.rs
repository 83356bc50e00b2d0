//! Membership inference against the same model trained three ways (issue 13 item 5, "measure
//! what an attacker learns"): no DP, node-level DP on the released delta, and record-level
//! DP-SGD at epsilon about 2. The attack is the loss threshold of Yeom et al. 2018
//! ([`model::mia`]); the table gives test accuracy, the attack's ROC AUC and its true-positive
//! rate at 1% false positives, and epsilon at delta 1e-5.
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo run --release -p model --example mia -- \
//!     [--quick | --digits] [--seeds K] [--data-dir DIR] [--members N] [--epochs E] [--seed S] [--optimizer OPT]
//!     [--dp-optimizer OPT] [--dp-rate Q] [--dp-epochs E] [--dp-clip C] [--epsilon EPS] [--csv FILE]
//! ```
//!
//! It trains the 2NN on 1,000 MNIST members (`--quick`: 500), from IDX files in `--data-dir`
//! (default `../shared/data/mnist`, relative to the working directory), and fails if they are
//! not there; `--digits` trains the digits MLP on 100 members of the embedded 8x8 digits
//! instead. `--seeds K` repeats the experiment for seeds S..S+K-1 (new initial model, member
//! draw, batch order and noise) and reports mean ± standard deviation. The DP noise comes from seeded,
//! reproducible sources (`model::dp::privatise` with the crate's `Rng`, DP-SGD's
//! `NoiseSource::reproducible`): an experiment, so the epsilons describe the mechanisms, not
//! secret noise. `--csv` writes the table as CSV too.

use std::io::Write as _;
use std::path::PathBuf;

use model::mia::{Row, Setup, run_experiment};
use model::train::{Optimizer, Work};

struct Args {
    quick: bool,
    digits: bool,
    seeds: u64,
    data_dir: PathBuf,
    members: Option<usize>,
    epochs: Option<usize>,
    seed: Option<u64>,
    csv: Option<PathBuf>,
    optimizer: Option<Optimizer>,
    dp_optimizer: Option<Optimizer>,
    dp_rate: Option<f64>,
    dp_epochs: Option<usize>,
    dp_clip: Option<f64>,
    target_epsilon: Option<f64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        digits: false,
        seeds: 1,
        data_dir: PathBuf::from("../shared/data/mnist"),
        members: None,
        epochs: None,
        seed: None,
        csv: None,
        optimizer: None,
        dp_optimizer: None,
        dp_rate: None,
        dp_epochs: None,
        dp_clip: None,
        target_epsilon: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => a.quick = true,
            "--digits" => a.digits = true,
            "--seeds" => {
                a.seeds = value()?.parse().map_err(|e| format!("--seeds: {e}"))?;
                if a.seeds == 0 {
                    return Err("--seeds must be at least 1".into());
                }
            }
            "--data-dir" => a.data_dir = PathBuf::from(value()?),
            "--members" => {
                a.members = Some(value()?.parse().map_err(|e| format!("--members: {e}"))?)
            }
            "--epochs" => a.epochs = Some(value()?.parse().map_err(|e| format!("--epochs: {e}"))?),
            "--seed" => a.seed = Some(value()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "--csv" => a.csv = Some(PathBuf::from(value()?)),
            "--optimizer" => a.optimizer = Some(value()?.parse().map_err(|e| format!("{e}"))?),
            "--dp-optimizer" => {
                a.dp_optimizer = Some(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--dp-rate" => {
                a.dp_rate = Some(value()?.parse().map_err(|e| format!("--dp-rate: {e}"))?)
            }
            "--dp-epochs" => {
                a.dp_epochs = Some(value()?.parse().map_err(|e| format!("--dp-epochs: {e}"))?)
            }
            "--dp-clip" => {
                a.dp_clip = Some(value()?.parse().map_err(|e| format!("--dp-clip: {e}"))?)
            }
            "--epsilon" => {
                a.target_epsilon = Some(value()?.parse().map_err(|e| format!("--epsilon: {e}"))?)
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// `mean` or, over several seeds, `mean ± sd` (sample standard deviation).
fn stat(v: &[f64], digits: usize) -> String {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    // Fitted members' losses are far below what fixed decimals show.
    let tiny = mean != 0.0 && mean.abs() < 0.5 * 10f64.powi(-(digits as i32));
    let show = |x: f64| {
        if tiny {
            format!("{x:.1e}")
        } else {
            format!("{x:.digits$}")
        }
    };
    if v.len() < 2 {
        return show(mean);
    }
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{} ± {}", show(mean), show(sd))
}

/// One table row from the same row of every seed's run.
fn cells(runs: &[&Row]) -> Vec<String> {
    let r = runs[0];
    let col = |f: &dyn Fn(&Row) -> f64| runs.iter().map(|r| f(r)).collect::<Vec<f64>>();
    vec![
        r.training.clone(),
        if r.dp.is_empty() {
            "-".into()
        } else {
            r.dp.clone()
        },
        r.epsilon
            .map_or_else(|| "inf".into(), |e| format!("{e:.2}")),
        stat(&col(&|r| r.update_norm), 1),
        stat(&col(&|r| r.train_accuracy * 100.0), 1),
        stat(&col(&|r| r.test_accuracy * 100.0), 1),
        stat(&col(&|r| r.attack.auc), 3),
        stat(&col(&|r| r.attack.tpr_at_low_fpr), 3),
        stat(&col(&|r| r.attack.member_loss), 3),
        stat(&col(&|r| r.attack.nonmember_loss), 3),
    ]
}

const HEADER: [&str; 10] = [
    "training",
    "dp",
    "epsilon (delta 1e-5)",
    "update L2 norm",
    "member accuracy %",
    "test accuracy %",
    "attack AUC",
    "TPR at 1% FPR",
    "member loss",
    "non-member loss",
];

fn run() -> Result<(), String> {
    let a = parse_args()?;
    let (split, mut setup, data) = if a.digits {
        let split = model::data::digits().map_err(|e| e.to_string())?;
        (split, Setup::digits(), "embedded 8x8 digits".to_string())
    } else {
        if !a.data_dir.is_dir() {
            return Err(format!(
                "no MNIST directory at {} (pass --data-dir DIR with the IDX files, or --digits for the embedded 8x8 digits)",
                a.data_dir.display()
            ));
        }
        let split = model::data::load_idx_dir(&a.data_dir).map_err(|e| e.to_string())?;
        let setup = if a.quick {
            Setup::quick()
        } else {
            Setup::mnist()
        };
        (split, setup, format!("MNIST from {}", a.data_dir.display()))
    };
    if let Some(m) = a.members {
        setup.members = m;
    }
    if let Some(e) = a.epochs {
        setup.train.work = Work::Epochs(e);
    }
    if let Some(s) = a.seed {
        setup.seed = s;
    }
    if let Some(o) = a.optimizer {
        setup.train.optimizer = o;
    }
    let d = &mut setup.dp_sgd;
    d.optimizer = a.dp_optimizer.unwrap_or(d.optimizer);
    d.rate = a.dp_rate.unwrap_or(d.rate);
    d.epochs = a.dp_epochs.unwrap_or(d.epochs);
    d.clip = a.dp_clip.unwrap_or(d.clip);
    d.target_epsilon = a.target_epsilon.unwrap_or(d.target_epsilon);
    let epochs = match setup.train.work {
        Work::Epochs(e) => e,
        Work::Steps(s) => s,
    };
    println!(
        "membership inference (loss threshold, Yeom et al. 2018): {} on {} members and {} non-members (same labels) of {data}; seeds {}..={}; test accuracy on the whole test split",
        setup.kind,
        setup.members,
        setup.members,
        setup.seed,
        setup.seed + a.seeds - 1
    );
    println!(
        "training: {epochs} epochs, batch {}, {}; DP-SGD: {} epochs at rate {}, clip {}, {}, noise for epsilon {}",
        setup.train.batch,
        setup.train.optimizer,
        setup.dp_sgd.epochs,
        setup.dp_sgd.rate,
        setup.dp_sgd.clip,
        setup.dp_sgd.optimizer,
        setup.dp_sgd.target_epsilon
    );
    println!(
        "DP noise here is seeded and reproducible (an experiment), not secret; node-level epsilon is one release of the node's whole data, record-level is add/remove one record\n"
    );
    let first = setup.seed;
    let mut runs = Vec::new();
    for seed in first..first + a.seeds {
        setup.seed = seed;
        runs.push(run_experiment(&split, &setup).map_err(|e| e.to_string())?);
    }
    let table: Vec<Vec<String>> = (0..runs[0].len())
        .map(|i| cells(&runs.iter().map(|r| &r[i]).collect::<Vec<_>>()))
        .collect();
    if a.seeds > 1 {
        println!("mean ± sample standard deviation over {} seeds\n", a.seeds);
    }
    println!("| {} |", HEADER.join(" | "));
    println!("|{}", "---|".repeat(HEADER.len()));
    for r in &table {
        println!("| {} |", r.join(" | "));
    }
    if let Some(path) = a.csv {
        let line = |cells: &[String]| {
            cells
                .iter()
                .map(|c| {
                    if c.contains(',') {
                        format!("\"{c}\"")
                    } else {
                        c.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
                + "\n"
        };
        let header: Vec<String> = HEADER.iter().map(|h| h.to_string()).collect();
        let mut text = line(&header);
        for r in &table {
            text.push_str(&line(r));
        }
        let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
