//! `cohort lm-train` and `cohort sample`, run as a user would.

use std::path::Path;

mod common;
use common::{cohort, tempdir, text};

fn val_losses(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.starts_with("step"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == "val").expect("val field");
            f[i + 2].parse().expect("a loss")
        })
        .collect()
}

#[test]
fn lm_train_on_a_text_file_then_sample_from_it() {
    let d = tempdir("lm", "text");
    let corpus = d.join("corpus.txt");
    std::fs::write(
        &corpus,
        "to be or not to be, that is the question.\n".repeat(60),
    )
    .unwrap();
    let model = d.join("lm.safetensors");
    let csv = d.join("lm.csv");
    let o = cohort(&[
        "lm-train",
        "--dataset",
        "text",
        "--text",
        corpus.to_str().unwrap(),
        "--model",
        "transformer:layers=1,heads=2,dim=32,context=16",
        "--steps",
        "200",
        "--batch",
        "8",
        "--lr",
        "0.01",
        "--warmup",
        "5",
        "--eval-every",
        "100",
        "--out",
        model.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let losses = val_losses(&out);
    assert_eq!(losses.len(), 2, "{out}");
    // 16 characters: uniform guessing is ln 16 = 2.77 nats; the repeated line is learnt.
    assert!(losses[0] > losses[1] && losses[1] < 0.3, "{out}");
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3);
    let sample = |seed: &str| {
        let o = cohort(&[
            "sample",
            "--model-file",
            model.to_str().unwrap(),
            "--prompt",
            "to be or",
            "--tokens",
            "30",
            "--temperature",
            "0",
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    let s = sample("1");
    assert!(s.starts_with("to be or not to be"), "{s}");
    assert_eq!(s.trim_end_matches('\n').chars().count(), 38);
    // A prompt character outside the vocabulary is named with its position.
    let o = cohort(&[
        "sample",
        "--model-file",
        model.to_str().unwrap(),
        "--prompt",
        "toQ",
    ]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("'Q'") && e.contains("column 3"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn show_partition_deals_shakespeare_roles_over_eight_nodes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/shakespeare");
    let o = cohort(&[
        "lm-train",
        "--dataset-dir",
        dir.to_str().unwrap(),
        "--nodes",
        "8",
        "--show-partition",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("node")).collect();
    assert_eq!(rows.len(), 8, "{out}");
    // Largest-first dealing keeps every node within a few percent of an eighth.
    for r in &rows {
        let pct: f64 = r
            .split('(')
            .nth(1)
            .and_then(|x| x.split('%').next())
            .and_then(|x| x.trim().parse().ok())
            .expect("a percentage");
        assert!((pct - 12.5).abs() < 0.5, "{r}");
    }
}

/// The Shakespeare plays in the shared data directory (a test that needs them fails without them).
fn plays() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/shakespeare");
    assert!(
        dir.join("shakespeare-texts.tar.gz").is_file(),
        "{} holds no shakespeare-texts.tar.gz",
        dir.display()
    );
    dir.to_str().unwrap().to_string()
}

/// A transformer small enough for a loaded two-core machine.
const TINY: &str = "transformer:layers=1,heads=2,dim=16,context=16";

/// The value after `key` on a line.
fn after(line: &str, key: &str) -> f64 {
    let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|w| w.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("a number after {key} in {line}"))
}

#[test]
fn simulate_trains_the_transformer_on_roles_and_its_loss_falls() {
    let dir = plays();
    let o = cohort(&[
        "simulate",
        "--model",
        TINY,
        "--dataset",
        "shakespeare",
        "--dataset-dir",
        &dir,
        "--partition",
        "by-role",
        "--nodes",
        "4",
        "--rounds",
        "4",
        "--local-steps",
        "10",
        "--batch",
        "8",
        "--optimizer",
        "adam:0.01",
        "--show-partition",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("partition by-role"), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("node")).count(), 4);
    let losses: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("round"))
        .map(|l| after(l, "val loss (nats/char) "))
        .collect();
    assert_eq!(losses.len(), 4, "{out}");
    // The untrained model guesses about uniformly over ~70 characters: ln 70 = 4.25 nats. Four
    // rounds of FedAvg over four roles' shares bring it well below, round after round.
    assert!(losses[0] < 4.0, "{out}");
    assert!(losses[3] < losses[0] - 0.3, "{out}");
    assert!(out.contains("final: next-char accuracy"), "{out}");
}

#[test]
fn simulate_and_genesis_refuse_a_transformer_on_the_wrong_data() {
    let dir = plays();
    for (args, says) in [
        (
            vec!["--dataset", "digits", "--model", TINY],
            "--model transformer trains on --dataset shakespeare",
        ),
        (
            vec![
                "--dataset",
                "shakespeare",
                "--model",
                TINY,
                "--partition",
                "by-role",
            ],
            "the shakespeare data set needs --dataset-dir",
        ),
        (
            vec![
                "--dataset",
                "shakespeare",
                "--dataset-dir",
                &dir,
                "--model",
                TINY,
            ],
            "--partition: invalid text partition 'dirichlet:0.5': expected by-role or iid",
        ),
        (
            vec!["--dataset", "shakespeare", "--dataset-dir", &dir],
            "shakespeare is text: train it with --model transformer",
        ),
        (
            vec!["--model", "transformer:heads=3", "--dataset", "shakespeare"],
            "heads (3) must divide dim (128)",
        ),
        (
            vec!["--dataset", "digits", "--keep-moments"],
            "kept moments are for the transformer",
        ),
        (
            vec![
                "--dataset",
                "shakespeare",
                "--model",
                TINY,
                "--lr-schedule",
                "cosine:20,10",
            ],
            "warm-up must not exceed the total steps",
        ),
    ] {
        let o = cohort(&[&["simulate", "--rounds", "1"], args.as_slice()].concat());
        assert!(!o.status.success(), "{args:?}");
        let e = text(&o.stderr);
        assert!(e.contains(says), "{args:?}: {e}");
    }
    let d = tempdir("lm", "badgenesis");
    let o = cohort(&[
        "testnet-init",
        "--out",
        d.to_str().unwrap(),
        "--model",
        TINY,
        "--dataset",
        "shakespeare",
        "--partition",
        "by-role",
    ]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("needs --dataset-dir"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_four_node_testnet_trains_the_transformer_and_sample_reads_its_model() {
    // With the round levers on: a cosine schedule over the 30 local steps, kept AdamW moments
    // and a Nesterov outer step. Every node must still commit the same model.
    let dir = plays();
    let d = tempdir("lm", "testnet");
    let net = d.join("net");
    let o = cohort(&[
        "testnet",
        "--nodes",
        "4",
        "--rounds",
        "3",
        "--model",
        TINY,
        "--dataset",
        "shakespeare",
        "--partition",
        "by-role",
        "--dataset-dir",
        &dir,
        "--optimizer",
        "adam:0.01",
        "--local-steps",
        "10",
        "--batch",
        "8",
        "--rule",
        "mean",
        "--lr-schedule",
        "cosine:3,30",
        "--keep-moments",
        "--server-lr",
        "0.7",
        "--server-momentum",
        "0.5",
        "--nesterov",
        "--propose-ms",
        "20000",
        "--dir",
        net.to_str().unwrap(),
        "--keep",
        "--timeout",
        "240",
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    assert!(out.contains("all hashes equal"), "{out}");
    let genesis = std::fs::read_to_string(net.join("genesis.toml")).unwrap();
    assert!(
        genesis.contains("kind = \"transformer\"") && genesis.contains("[model.transformer]"),
        "{genesis}"
    );
    for setting in [
        "lr_schedule = \"cosine:3,30\"",
        "keep_moments = true",
        "nesterov = true",
    ] {
        assert!(genesis.contains(setting), "{setting}: {genesis}");
    }
    // `cohort sample` reads a node's committed model straight from its data directory (the
    // genesis beside it gives shape and vocabulary).
    let o = cohort(&[
        "sample",
        "--data-dir",
        net.join("node0/data").to_str().unwrap(),
        "--prompt",
        "ROMEO:",
        "--tokens",
        "60",
        "--temperature",
        "0.8",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    assert!(s.starts_with("ROMEO:"), "{s}");
    assert_eq!(s.trim_end_matches('\n').chars().count(), 66, "{s}");
    let said = text(&o.stderr);
    assert!(
        said.contains("sampling the model of round 3 (model hash"),
        "{said}"
    );
    let file = d.join("lm.safetensors");
    let o = cohort(&[
        "export",
        "--data-dir",
        net.join("node0/data").to_str().unwrap(),
        "--genesis",
        net.join("genesis.toml").to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = cohort(&[
        "sample",
        "--model-file",
        file.to_str().unwrap(),
        "--prompt",
        "ROMEO",
        "--tokens",
        "40",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    assert!(s.starts_with("ROMEO"), "{s}");
    assert_eq!(s.trim_end_matches('\n').chars().count(), 45, "{s}");
    std::fs::remove_dir_all(&d).unwrap();
}
