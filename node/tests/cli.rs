//! The `cohort` binary's training commands, run as a user would.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{cohort, stderr, stdout};

fn final_accuracy(out: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("final:"))
        .expect("a final line");
    let pct = line
        .split_whitespace()
        .nth(2)
        .expect("accuracy field")
        .trim_end_matches('%');
    pct.parse::<f64>().expect("a number")
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cohort-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn default_simulate_reaches_95_percent_on_embedded_digits() {
    let o = cohort(&["simulate"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().filter(|l| l.starts_with("round")).count(), 40);
    let acc = final_accuracy(&out);
    assert!(acc >= 95.0, "accuracy {acc}\n{out}");
}

#[test]
fn simulate_writes_csv_and_is_reproducible() {
    let d = tempdir("csv");
    let csv = d.join("run.csv");
    let args = [
        "simulate",
        "--rounds",
        "3",
        "--compress",
        "topk:0.1+int8",
        "--dp",
        "clip:1.0,noise:0.1",
        "--byzantine",
        "1:alie",
        "--rule",
        "trimmed-mean:0.2",
        "--csv",
        csv.to_str().expect("utf-8 path"),
    ];
    let a = cohort(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    let text = std::fs::read_to_string(&csv).expect("csv written");
    assert_eq!(text.lines().count(), 4);
    assert!(text.starts_with("round,accuracy,loss"));
    // Same seed, same final model hash.
    let b = cohort(&args);
    let hash = |o: &Output| {
        stdout(o)
            .lines()
            .find(|l| l.starts_with("final:"))
            .and_then(|l| l.split("model hash ").nth(1))
            .map(|s| s[..64].to_string())
    };
    assert_eq!(hash(&a), hash(&b));
    assert!(hash(&a).is_some());
}

#[test]
fn bad_input_is_one_clear_error_line() {
    let cases: [(&[&str], &str); 5] = [
        (&["simulate", "--partition", "zipf"], "partition"),
        (&["simulate", "--rule", "geomed"], "rule"),
        (
            &[
                "simulate",
                "--dataset",
                "mnist",
                "--data-dir",
                "/nonexistent/cohort",
            ],
            "/nonexistent/cohort",
        ),
        (&["simulate", "--dataset", "mnist"], "--data-dir"),
        (
            &["simulate", "--nodes", "2", "--byzantine", "2:sign-flip"],
            "fewer",
        ),
    ];
    for (args, needle) in cases {
        let o = cohort(args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn corrupt_idx_file_names_the_file() {
    let d = tempdir("corrupt");
    // A valid-looking header that promises more images than follow.
    let mut imgs = Vec::new();
    for w in [0x0803u32, 10, 28, 28] {
        imgs.extend_from_slice(&w.to_be_bytes());
    }
    imgs.extend_from_slice(&[0u8; 100]);
    std::fs::write(d.join("train-images-idx3-ubyte"), &imgs).expect("write");
    let mut labels = Vec::new();
    for w in [0x0801u32, 10] {
        labels.extend_from_slice(&w.to_be_bytes());
    }
    labels.extend_from_slice(&[1u8; 10]);
    std::fs::write(d.join("train-labels-idx1-ubyte"), &labels).expect("write");
    let o = cohort(&[
        "centralized",
        "--dataset",
        "mnist",
        "--data-dir",
        d.to_str().expect("utf-8"),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    assert!(err.contains("100 bytes follow"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Real MNIST from `../shared/data/mnist` (CI always has it: a missing copy fails the test):
/// one epoch of the 2NN.
#[test]
fn centralized_mnist_one_epoch() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist");
    assert!(dir.is_dir(), "{} is missing", dir.display());
    let o = cohort(&[
        "centralized",
        "--dataset",
        "mnist",
        "--data-dir",
        dir.to_str().expect("utf-8"),
        "--epochs",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("epoch   1"))
        .expect("an epoch line");
    let acc: f64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|s| s.trim_end_matches('%').parse().ok())
        .expect("accuracy");
    assert!(acc > 93.0, "{line}");
}

#[test]
fn help_shows_the_product_line() {
    let o = cohort(&["--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = stdout(&o).lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with("Cohort: decentralized training."),
        "{first}"
    );
}
