//! A model of one's own compiled into `cohort` through the library: the example binary
//! (`examples/custom_model.rs`, `node::Cohort` with `custom:skipnet` registered) runs a 4-node
//! testnet of its own processes to equal hashes, and a binary without the registration refuses a
//! genesis that names the model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{cohort, stderr, stdout, tempdir};

/// The example binary, which `cargo test` and nextest build beside the test binaries
/// (`target/PROFILE/examples/custom_model`); absent, the test fails.
fn example_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/deps/TEST");
    let p = profile
        .join("examples")
        .join(format!("custom_model{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.is_file(),
        "{} is missing: `cargo build --workspace --all-targets` builds it",
        p.display()
    );
    p
}

fn example(args: &[&str]) -> Output {
    Command::new(example_exe())
        .args(args)
        .output()
        .expect("the example runs")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Four `run` processes of the example binary train `custom:skipnet` on shards of the embedded
/// digits; every node ends with the same model hash and the model learned.
#[test]
fn four_nodes_train_a_registered_custom_model_to_equal_hashes() {
    let o = example(&[
        "testnet",
        "--nodes",
        "4",
        "--model",
        "custom:skipnet",
        "--dataset",
        "digits",
        "--rounds",
        "5",
        "--local-epochs",
        "1",
        "--batch",
        "16",
        "--optimizer",
        "sgd:0.05,0.9",
        "--rule",
        "mean",
        "--eval-every",
        "5",
        "--timeout",
        "180",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("model custom:skipnet on digits"), "{out}");
    assert!(out.contains("all hashes equal"), "{out}");
    let hashes: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("node"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(hashes.len(), 4, "{out}");
    assert!(
        hashes.iter().all(|h| *h == hashes[0] && h.len() == 64),
        "{out}"
    );
    let last = out
        .lines()
        .rfind(|l| l.split_whitespace().next() == Some("5"))
        .expect("round 5");
    let acc: f64 = last
        .split_whitespace()
        .nth(1)
        .and_then(|a| a.trim_end_matches('%').parse().ok())
        .expect("accuracy");
    eprintln!("custom model, 4-node testnet, round 5: {acc}%");
    assert!(acc > 70.0, "{out}");
}

/// The name is part of the genesis: the plain `cohort` binary, which registers no model, refuses
/// the name in every command and refuses to run a network whose genesis names it; the example
/// binary names what it does register, and a registered model takes no declared layers.
#[test]
fn a_binary_without_the_registration_refuses_the_model() {
    let d = tempdir("custom", "refuse");
    // A refusal: a non-zero exit, no panic, the needles in its error (one line, or the genesis
    // check's header and one line per invalid setting).
    let refused = |o: &Output, lines: usize, needles: &[&str]| {
        let err = stderr(o);
        assert!(!o.status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim().lines().count(), lines, "{lines} lines:\n{err}");
        for n in needles {
            assert!(err.contains(n), "no {n:?} in:\n{err}");
        }
    };
    let one_line = |o: &Output, needles: &[&str]| refused(o, 1, needles);
    let o = cohort(&["simulate", "--model", "custom:skipnet", "--rounds", "1"]);
    one_line(
        &o,
        &["does not know the custom model 'skipnet'", "registers none"],
    );
    let o = example(&["simulate", "--model", "custom:nope", "--rounds", "1"]);
    one_line(
        &o,
        &[
            "does not know the custom model 'nope'",
            "it registers skipnet",
        ],
    );

    let key = d.join("node.key");
    let o = cohort(&["keygen", "--out", s(&key)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pubkey = d.join("node.key.pub");
    let genesis = d.join("genesis.toml");
    let write = |extra: &[&str]| {
        let mut args = vec![
            "genesis",
            "--validators",
            s(&pubkey),
            "--model",
            "custom:skipnet",
            "--out",
            s(&genesis),
        ];
        args.extend(extra);
        example(&args)
    };
    refused(
        &write(&["--layers", "dense:8"]),
        2,
        &[
            "genesis has 1 invalid setting",
            "custom model 'skipnet' declares its own layers",
        ],
    );
    let o = write(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&genesis).expect("genesis");
    assert!(text.contains("kind = \"custom:skipnet\""), "{text}");
    let o = cohort(&[
        "run",
        "--key",
        s(&key),
        "--genesis",
        s(&genesis),
        "--data-dir",
        s(&d.join("data")),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    refused(
        &o,
        2,
        &[
            "genesis.toml",
            "model.kind = \"custom:skipnet\"",
            "does not know the custom model 'skipnet'",
        ],
    );
    let _ = std::fs::remove_dir_all(&d);
}
