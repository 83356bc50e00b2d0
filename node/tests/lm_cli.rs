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
