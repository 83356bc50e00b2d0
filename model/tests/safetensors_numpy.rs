//! A checkpoint loads outside Rust: the Python `safetensors` and `numpy` packages read the 2NN
//! checkpoint of a briefly trained model, and the forward pass done in numpy
//! (`scripts/check_safetensors.py`) classifies the MNIST test images as the Rust evaluation does.
//!
//! Needs `../shared/data/mnist` (fails without it) and `python3` with `numpy` and `safetensors`
//! (skips with a message without them; `.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use model::data::load_idx_dir;
use model::net::{Model, ModelSpec};
use model::params::save_safetensors;
use model::rng::Rng;
use model::train::{Optimizer, TrainConfig, Work, evaluate_params, train_model};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `python3` can import numpy and safetensors.
fn python_has_packages() -> bool {
    Command::new("python3")
        .args(["-c", "import numpy, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn numpy_forward_pass_on_a_checkpoint_matches_the_rust_accuracy() {
    let mnist = repo().join("../shared/data/mnist");
    assert!(
        mnist.is_dir(),
        "{} is missing: this test needs the real MNIST",
        mnist.display()
    );
    if !python_has_packages() {
        eprintln!(
            "SKIPPED: python3 with numpy and safetensors is not available \
             (python3 -m pip install --user numpy safetensors); the checkpoint was not checked in numpy"
        );
        return;
    }

    // A 2NN trained for 300 steps on 6,000 images: well above chance, far from converged.
    let split = load_idx_dir(&mnist).expect("MNIST");
    let first: Vec<usize> = (0..6000).collect();
    let train = split.train.subset(&first);
    let kind = &ModelSpec::mlp();
    let model = Model::new(kind, &kind.init(11), &Device::Cpu).expect("model");
    let cfg = TrainConfig {
        work: Work::Steps(300),
        batch: 32,
        optimizer: Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.0,
        },
        prox_mu: 0.0,
        dp_sgd: None,
    };
    train_model(&model, &train, &cfg, &mut Rng::seed(5), None).expect("training");
    let params = model.flat().expect("parameters");
    let (accuracy, _) = evaluate_params(kind, &params, &split.test).expect("evaluation");
    let n = split.test.len();
    let rust_correct = (f64::from(accuracy) * n as f64).round() as i64;
    assert!(accuracy > 0.8, "the trained model is at {accuracy}");

    let dir = std::env::temp_dir().join(format!("cohort-numpy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let checkpoint = dir.join("round-000001.safetensors");
    save_safetensors(kind, &params, &checkpoint).expect("checkpoint");
    let out = Command::new("python3")
        .arg(repo().join("scripts/check_safetensors.py"))
        .arg(&checkpoint)
        .arg(&mnist)
        .output()
        .expect("running python3");
    std::fs::remove_dir_all(&dir).expect("removing the temp dir");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check_safetensors.py failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `correct C of N accuracy A`
    let words: Vec<&str> = stdout.split_whitespace().collect();
    let (numpy_correct, numpy_n) = match words.as_slice() {
        ["correct", c, "of", n, "accuracy", _] => (
            c.parse::<i64>().expect("count"),
            n.parse::<usize>().expect("total"),
        ),
        _ => panic!("unexpected output of check_safetensors.py: {stdout}"),
    };
    assert_eq!(numpy_n, n, "{stdout}");
    // The same images classified correctly, up to one whose two largest logits are closer than
    // the difference of float32 summation orders (0.01 percentage points of 10,000).
    assert!(
        (numpy_correct - rust_correct).abs() <= 1,
        "numpy: {numpy_correct} of {n}, Rust: {rust_correct} of {n}"
    );
    eprintln!("numpy: {numpy_correct} of {n} correct, Rust: {rust_correct} of {n}");
}
