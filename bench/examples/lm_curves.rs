//! Draws the language model's validation curves (BENCHMARKS.md section 9.5) from the CSVs that
//! `cohort lm-train --csv` and `cohort simulate --csv` write, as one PNG over tokens processed.
//!
//! ```text
//! cargo run -p cohort-bench --example lm_curves -- --out bench/plots/lm.png \
//!   'centralized=bench/results/lm-central.csv:step:val_loss:768' \
//!   '8 nodes by role=bench/results/lm-by-role.csv:round:loss:1024'
//! ```
//!
//! Each series is `LABEL=PATH:X_COLUMN:Y_COLUMN:TOKENS_PER_X`: the x of a row is its X_COLUMN
//! times TOKENS_PER_X (tokens per step or per round), rows with an empty Y_COLUMN are skipped.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cohort_bench::{LineChart, Series, line_chart};

fn series(spec: &str) -> Result<Series> {
    let (label, rest) = spec
        .split_once('=')
        .with_context(|| format!("{spec}: expected LABEL=PATH:X:Y:TOKENS_PER_X"))?;
    let parts: Vec<&str> = rest.rsplitn(4, ':').collect();
    let [per, y, x, path] = parts[..] else {
        bail!("{spec}: expected LABEL=PATH:X:Y:TOKENS_PER_X");
    };
    let per: f64 = per
        .parse()
        .with_context(|| format!("{spec}: tokens per x"))?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{path}: no column {name}"))
    };
    let (xi, yi) = (col(x)?, col(y)?);
    let mut points = Vec::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let (Some(xs), Some(ys)) = (cells.get(xi), cells.get(yi)) else {
            continue;
        };
        if ys.is_empty() {
            continue;
        }
        let xv: f64 = xs.parse().with_context(|| format!("{path}: {x} {xs}"))?;
        let yv: f64 = ys.parse().with_context(|| format!("{path}: {y} {ys}"))?;
        points.push((xv * per, yv));
    }
    if points.is_empty() {
        bail!("{path}: no rows with {y}");
    }
    Ok(Series {
        label: label.to_string(),
        points,
    })
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out = PathBuf::from("bench/plots/lm.png");
    let mut all = Vec::new();
    while let Some(a) = args.next() {
        if a == "--out" {
            out = args.next().context("--out PATH")?.into();
        } else {
            all.push(series(&a)?);
        }
    }
    if all.is_empty() {
        bail!("usage: lm_curves [--out PNG] LABEL=PATH:X:Y:TOKENS_PER_X ...");
    }
    line_chart(
        &out,
        &LineChart {
            title: "Character transformer on Shakespeare: validation loss",
            x_label: "tokens processed",
            y_label: "validation loss (nats/char)",
            series: &all,
            log_x: false,
            y_range: None,
            markers: true,
        },
    )?;
    println!("wrote {}", out.display());
    Ok(())
}
