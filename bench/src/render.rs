//! Turns `bench/results/*.csv` into the tables, plots and goal checks of `BENCHMARKS.md`.
//! Only the marked blocks are rewritten; the prose around them is kept.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use cohort_bench::plot::{LineChart, Series, StackedBars, line_chart, stacked_bars};
use cohort_bench::table::{Table, replace_block};

/// Suites in document order.
pub const SUITES: [&str; 9] = [
    "parity",
    "attacks",
    "bandwidth",
    "overhead",
    "train-speed",
    "scale",
    "consensus",
    "privacy",
    "mia",
];

fn num(s: &str) -> Option<f64> {
    s.trim().trim_start_matches('+').parse().ok()
}

/// Long-format curves (`series,x,y`) grouped by series, in first-seen order.
fn series(t: &Table, keep: impl Fn(&str) -> bool) -> Vec<Series> {
    let mut order: Vec<String> = Vec::new();
    let mut pts: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for row in &t.rows {
        let (Some(name), Some(x), Some(y)) = (
            row.first(),
            row.get(1).and_then(|v| num(v)),
            row.get(2).and_then(|v| num(v)),
        ) else {
            continue;
        };
        if !keep(name) {
            continue;
        }
        if !pts.contains_key(name) {
            order.push(name.clone());
        }
        pts.entry(name.clone()).or_default().push((x, y));
    }
    order
        .into_iter()
        .map(|label| Series {
            points: pts.remove(&label).unwrap_or_default(),
            label: if label.is_empty() {
                "no dp".into()
            } else {
                label
            },
        })
        .collect()
}

fn load(results: &Path, name: &str) -> Option<Table> {
    Table::read_csv(&results.join(name)).ok()
}

/// Renders every plot it has data for into `plots`; returns (suite, markdown image line).
fn plots(results: &Path, plots: &Path) -> Result<Vec<(&'static str, String)>> {
    let mut out = Vec::new();
    let mut line = |suite: &'static str, file: &str, chart: LineChart<'_>| -> Result<()> {
        if chart.series.iter().all(|s| s.points.is_empty()) {
            return Ok(());
        }
        let path = plots.join(file);
        line_chart(&path, &chart)?;
        out.push((suite, format!("![{}](bench/plots/{file})", chart.title)));
        Ok(())
    };
    if let Some(t) = load(results, "parity-curves.csv") {
        for model in ["mlp", "cnn"] {
            let s = series(&t, |n| n.starts_with(model) && !n.contains("B=10"));
            line(
                "parity",
                &format!("parity-{model}.png"),
                LineChart {
                    title: &format!("MNIST {model}: accuracy vs sample passes"),
                    x_label: "epochs of MNIST (sample passes / 60,000)",
                    y_label: "test accuracy %",
                    series: &s,
                    log_x: false,
                    y_range: None,
                    markers: true,
                },
            )?;
        }
        let s = series(&t, |n| n.contains("B=10"));
        line(
            "parity",
            "parity-mcmahan.png",
            LineChart {
                title: "2NN, E=1, B=10 (McMahan et al. setting): accuracy vs round",
                x_label: "round",
                y_label: "test accuracy %",
                series: &s,
                log_x: false,
                y_range: None,
                markers: true,
            },
        )?;
    }
    if let Some(t) = load(results, "attacks-curves.csv") {
        let s = series(&t, |_| true);
        line(
            "attacks",
            "attacks-sign-flip.png",
            LineChart {
                title: "7 validators, 2 sign-flipping (x10): accuracy vs round per rule",
                x_label: "round",
                y_label: "test accuracy %",
                series: &s,
                log_x: false,
                y_range: Some((0.0, 100.0)),
                markers: false,
            },
        )?;
    }
    if let Some(t) = load(results, "bandwidth-curves.csv") {
        let s = series(&t, |_| true);
        line(
            "bandwidth",
            "bandwidth.png",
            LineChart {
                title: "Accuracy vs bytes sent per node (wire counters)",
                x_label: "bytes sent by one node, cumulative (log)",
                y_label: "test accuracy %",
                series: &s,
                log_x: true,
                y_range: None,
                markers: true,
            },
        )?;
    }
    if let Some(t) = load(results, "privacy-curves.csv") {
        let s = series(&t, |n| !n.is_empty());
        line(
            "privacy",
            "privacy.png",
            LineChart {
                title: "Accuracy vs epsilon (delta = 1e-5) as rounds go by",
                x_label: "epsilon",
                y_label: "test accuracy %",
                series: &s,
                log_x: true,
                y_range: None,
                markers: true,
            },
        )?;
    }
    if let Some(t) = load(results, "overhead.csv") {
        let cats: Vec<String> = t
            .rows
            .iter()
            .map(|r| {
                let steps = r
                    .get(1)
                    .and_then(|w| w.split_whitespace().next())
                    .unwrap_or("?");
                format!("n={} {steps} st", r.first().map_or("?", |v| v.as_str()))
            })
            .collect();
        let stacks: Vec<(String, Vec<f64>)> = [
            "train s",
            "gossip s",
            "consensus s",
            "aggregate s",
            "other s",
        ]
        .iter()
        .filter_map(|c| {
            let i = t.column(c)?;
            Some((
                c.trim_end_matches(" s").to_string(),
                t.rows
                    .iter()
                    .map(|r| r.get(i).and_then(|v| num(v)).unwrap_or(0.0))
                    .collect(),
            ))
        })
        .collect();
        if !cats.is_empty() {
            let path = plots.join("overhead.png");
            stacked_bars(
                &path,
                &StackedBars {
                    title: "Round wall time by phase (MNIST 2NN, loopback)",
                    y_label: "seconds per round",
                    categories: &cats,
                    stacks: &stacks,
                },
            )?;
            out.push((
                "overhead",
                "![round time by phase](bench/plots/overhead.png)".into(),
            ));
        }
    }
    Ok(out)
}

/// One goal line: what, the figure, met or not.
fn goals(results: &Path) -> Table {
    let mut t = Table::new(&["goal", "measured", "met"]);
    let mut push = |goal: &str, measured: Option<(String, bool)>| {
        let (m, ok) = measured.unwrap_or_else(|| ("not measured".into(), false));
        t.push(vec![
            goal.into(),
            m,
            if ok { "yes" } else { "**no**" }.into(),
        ]);
    };
    let cell = |t: &Table, row: &[String], col: &str| -> Option<f64> {
        row.get(t.column(col)?).and_then(|v| num(v))
    };
    push(
        "gap to centralized <= 0.5 pp (2NN, 8 nodes, Dirichlet 0.5, same sample passes)",
        load(results, "parity.csv").and_then(|t| {
            let row = t.rows.iter().find(|r| {
                r.first().is_some_and(|m| m == "mlp")
                    && r.get(1).is_some_and(|s| s == "8 nodes, dirichlet:0.5")
            })?;
            let gap = cell(&t, row, "gap to centralized pp")?;
            Some((format!("{gap:+.2} pp"), gap >= -0.5))
        }),
    );
    let bw = load(results, "bandwidth.csv");
    push(
        ">= 10x fewer bytes than dense at <= 0.5 pp accuracy loss",
        bw.as_ref().and_then(|t| {
            let best = t
                .rows
                .iter()
                .filter(|r| cell(t, r, "change pp").is_some_and(|c| c >= -0.5))
                .filter_map(|r| Some((cell(t, r, "x fewer than dense")?, r)))
                .max_by(|a, b| a.0.total_cmp(&b.0))?;
            Some((
                format!(
                    "{:.1}x ({}, error feedback {})",
                    best.0,
                    best.1.first()?,
                    best.1.get(1)?
                ),
                best.0 >= 10.0,
            ))
        }),
    );
    push(
        "gossip amplification <= 1.5x",
        bw.as_ref().and_then(|t| {
            let worst = t
                .rows
                .iter()
                .filter_map(|r| cell(t, r, "delta amplification"))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))?;
            Some((format!("{worst:.3}x (worst config)"), worst <= 1.5))
        }),
    );
    push(
        "non-training share of a round <= 10% at 8 nodes",
        load(results, "overhead.csv").and_then(|t| {
            let shares: Vec<(String, f64)> = t
                .rows
                .iter()
                .filter(|r| r.first().is_some_and(|n| n == "8"))
                .filter_map(|r| Some((r.get(1)?.clone(), cell(&t, r, "not training %")?)))
                .collect();
            let best = shares
                .iter()
                .map(|s| s.1)
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))?;
            Some((
                shares
                    .iter()
                    .map(|(w, v)| format!("{v:.1}% ({w})"))
                    .collect::<Vec<_>>()
                    .join("; "),
                best <= 10.0,
            ))
        }),
    );
    let attacks = load(results, "attacks.csv");
    for (goal, data_loss) in [
        (
            "each robust rule within 2 pp of its clean run under 2 of 7 Byzantine \
             (model attacks: sign flip, Gaussian, ALIE, label flip)",
            false,
        ),
        (
            "the same under equivocation and silence (the 2 nodes' data is lost to every rule; \
             mean shows the cost of that alone)",
            true,
        ),
    ] {
        push(
            goal,
            attacks.as_ref().and_then(|t| worst_drops(t, data_loss)),
        );
    }
    push(
        "local training >= PyTorch's ~60k samples/s (2NN, B=32, SGD, 1 thread)",
        load(results, "train-speed.csv").and_then(|t| {
            let (ii, ti, si) = (
                t.column("impl")?,
                t.column("threads")?,
                t.column("samples_per_sec")?,
            );
            let best = t
                .rows
                .iter()
                .filter(|r| {
                    r.get(ii).is_some_and(|i| i == "train_local")
                        && r.get(ti).is_some_and(|n| n == "1")
                })
                .filter_map(|r| r.get(si).and_then(|v| num(v)))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))?;
            Some((format!("{best:.0} samples/s"), best >= 60_000.0))
        }),
    );
    t
}

/// Per robust rule, the largest drop below its own clean run over the chosen attack columns;
/// (summary, all within 2 pp).
fn worst_drops(t: &Table, data_loss: bool) -> Option<(String, bool)> {
    let clean = t.column("none")?;
    let cols: Vec<usize> = t
        .header
        .iter()
        .enumerate()
        .filter(|(_, h)| {
            let dl = h.starts_with("silent") || h.starts_with("equivocat");
            h.as_str() != "rule" && h.as_str() != "none" && !h.contains("drop") && dl == data_loss
        })
        .map(|(i, _)| i)
        .collect();
    let mut misses = Vec::new();
    let mut mean_drop = None;
    let mut rules = 0;
    for r in &t.rows {
        let c = r.get(clean).and_then(|v| num(v))?;
        let drop = cols
            .iter()
            .filter_map(|&i| r.get(i).and_then(|v| num(v)))
            .map(|a| c - a)
            .fold(0.0f64, f64::max);
        if r.first().is_some_and(|n| n == "mean") {
            mean_drop = Some(drop);
            continue;
        }
        rules += 1;
        if drop > 2.0 {
            misses.push(format!("{} (-{drop:.2})", r.first()?));
        }
    }
    let mut text = if misses.is_empty() {
        format!("all {rules} robust rules")
    } else {
        format!("{} of {rules} missed: {}", misses.len(), misses.join(", "))
    };
    if let Some(m) = mean_drop {
        text.push_str(&format!("; plain mean -{m:.2}"));
    }
    Some((text, misses.is_empty() && rules > 0))
}

/// Rewrites the marked blocks of `doc` from `results`, writing plots under `plots`.
pub fn render(doc: &Path, results: &Path, plots_dir: &Path) -> Result<()> {
    let mut text = std::fs::read_to_string(doc).unwrap_or_else(|_| "# Benchmarks\n".into());
    let images = plots(results, plots_dir)?;
    if let Ok(m) = std::fs::read_to_string(results.join("machine.txt")) {
        text = replace_block(&text, "machine", &format!("```\n{}```", m));
    }
    text = replace_block(&text, "goals", &goals(results).to_markdown());
    for suite in SUITES {
        let Some(t) = load(results, &format!("{suite}.csv")) else {
            continue;
        };
        let mut block = t.to_markdown();
        for (_, img) in images.iter().filter(|(s, _)| *s == suite) {
            block.push('\n');
            block.push_str(img);
            block.push('\n');
        }
        let cmd_suite = if suite == "train-speed" {
            "overhead"
        } else if suite == "consensus" {
            "scale"
        } else {
            suite
        };
        if let Ok(cmds) = std::fs::read_to_string(results.join(format!("{cmd_suite}-commands.txt")))
        {
            let size = cmds
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# size: "))
                .unwrap_or("?");
            block.push_str(&format!(
                "\n<details><summary>Size {size}; the commands it ran</summary>\n\n```\n{}```\n</details>\n",
                cmds.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>()
            ));
        }
        text = replace_block(&text, suite, &block);
    }
    std::fs::write(doc, text).with_context(|| format!("writing {}", doc.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_read_the_tables() {
        let dir = std::env::temp_dir().join(format!("cohort-bench-render-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("overhead.csv"),
            "nodes,local work,round s,train s,gossip s,consensus s,aggregate s,not training %,local samples/s\n\
             4,x,1,0.9,0.05,0.04,0.01,10.0,800\n8,x,2,1.5,0.3,0.1,0.1,25.0,500\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("attacks.csv"),
            "rule,none,sign-flip:10,silent,worst drop pp\nmean,96,10,94,86\nmedian,95,94,94,1.0\nnnm+median,96,93,95,3.0\n",
        )
        .unwrap();
        let g = goals(&dir);
        let row = |prefix: &str| {
            g.rows
                .iter()
                .find(|r| r[0].starts_with(prefix))
                .unwrap()
                .clone()
        };
        assert_eq!(row("non-training")[1], "25.0% (x)");
        assert_eq!(row("non-training")[2], "**no**");
        assert_eq!(
            row("each robust")[1],
            "1 of 2 missed: nnm+median (-3.00); plain mean -86.00"
        );
        assert_eq!(
            row("the same under")[1],
            "all 2 robust rules; plain mean -2.00"
        );
        assert_eq!(row("gap to")[1], "not measured");
        render(&dir.join("B.md"), &dir, &dir.join("plots")).unwrap();
        let doc = std::fs::read_to_string(dir.join("B.md")).unwrap();
        assert!(doc.contains("<!-- BEGIN overhead -->"));
        assert!(dir.join("plots/overhead.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
