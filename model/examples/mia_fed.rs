//! Membership inference against node 0 of a federation (issue 13 item 5), from the committed
//! model and from node 0's delta, without DP, with node-level DP and with record-level DP-SGD
//! at epsilon 2 ([`model::mia_fed`]).
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo run --release -p model --example mia_fed -- \
//!     [--data-dir DIR | --digits] [--rounds R] [--seed S] [--epochs E] [--train-records N] [--members M]
//! ```
//!
//! `--train-records N` deals only the first N training records to the parties (small parties
//! fit their records more tightly: the case an attacker hopes for), `--epochs E` sets the local
//! epochs per round.
//!
//! MNIST's 2NN on 8 IID parties (10 rounds of one local epoch, SGD 0.05 with momentum 0.9),
//! 1,000 of node 0's records attacked with 1,000 test records of the same labels; `--digits`
//! runs the embedded 8x8 digits on 4 parties instead (100 records). It fails if `--data-dir`
//! (default `../shared/data/mnist`) has no MNIST. The DP noise is seeded (an experiment).

use std::path::PathBuf;

use model::dp::DpConfig;
use model::mia_fed::{FedRow, FedSetup, Mechanism, mnist_setup, run_federated};
use model::net::ModelSpec;

fn run() -> Result<(), String> {
    let mut data_dir = PathBuf::from("../shared/data/mnist");
    let mut digits = false;
    let mut rounds = None;
    let mut seed = None;
    let mut epochs = None;
    let mut train_records = None;
    let mut members = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--data-dir" => data_dir = PathBuf::from(value("--data-dir")?),
            "--digits" => digits = true,
            "--rounds" => {
                rounds = Some(
                    value("--rounds")?
                        .parse()
                        .map_err(|e| format!("--rounds: {e}"))?,
                )
            }
            "--epochs" => {
                epochs = Some(
                    value("--epochs")?
                        .parse()
                        .map_err(|e| format!("--epochs: {e}"))?,
                )
            }
            "--train-records" => {
                train_records = Some(
                    value("--train-records")?
                        .parse::<usize>()
                        .map_err(|e| format!("--train-records: {e}"))?,
                )
            }
            "--members" => {
                members = Some(
                    value("--members")?
                        .parse()
                        .map_err(|e| format!("--members: {e}"))?,
                )
            }
            "--seed" => {
                seed = Some(
                    value("--seed")?
                        .parse()
                        .map_err(|e| format!("--seed: {e}"))?,
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let (mut split, mut setup): (_, FedSetup) = if digits {
        let split = model::data::digits().map_err(|e| e.to_string())?;
        let mut s = mnist_setup();
        s.kind = ModelSpec::digits_mlp();
        s.nodes = 4;
        s.members = 100;
        (split, s)
    } else {
        if !data_dir.is_dir() {
            return Err(format!("no MNIST directory at {}", data_dir.display()));
        }
        let split = model::data::load_idx_dir(&data_dir).map_err(|e| e.to_string())?;
        (split, mnist_setup())
    };
    if let Some(r) = rounds {
        setup.rounds = r;
    }
    if let Some(s) = seed {
        setup.seed = s;
    }
    if let Some(e) = epochs {
        setup.train.work = model::train::Work::Epochs(e);
    }
    if let Some(m) = members {
        setup.members = m;
    }
    if let Some(n) = train_records {
        let keep: Vec<usize> = (0..n.min(split.train.len())).collect();
        split.train = split.train.subset(&keep);
    }
    let mechanisms = [
        Mechanism::Plain,
        Mechanism::NodeDp(DpConfig {
            clip: 1.0,
            noise: 0.1,
        }),
        Mechanism::NodeDp(DpConfig {
            clip: 1.0,
            noise: 1.0,
        }),
        Mechanism::DpSgd {
            clip: 1.0,
            rate: 0.04,
            epsilon: 2.0,
        },
    ];
    println!(
        "node 0 of {} parties ({:?}, {} training records in all), {} rounds of {:?}, {} members and as many same-label test records; epsilon at delta {} over the whole run (node-level: node adjacency, {} releases; DP-SGD: add/remove one record)\n",
        setup.nodes,
        setup.partition,
        split.train.len(),
        setup.rounds,
        setup.train.work,
        setup.members,
        setup.delta,
        setup.rounds
    );
    println!(
        "| training | dp | epsilon | test accuracy % | committed model: AUC | TPR at 1% FPR | node 0's delta: AUC | TPR at 1% FPR |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for m in mechanisms {
        let r: FedRow = run_federated(&split, &setup, m).map_err(|e| e.to_string())?;
        let training = match m {
            Mechanism::Plain => "no DP",
            Mechanism::NodeDp(_) => "node-level DP",
            Mechanism::DpSgd { .. } => "record-level DP-SGD",
        };
        println!(
            "| {training} | {} | {} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.dp,
            r.epsilon.map_or("inf".into(), |e| format!("{e:.2}")),
            100.0 * r.test_accuracy,
            r.model.auc,
            r.model.tpr_at_low_fpr,
            r.delta.auc,
            r.delta.tpr_at_low_fpr
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
