//! The suites. Each runs real `cohort` commands (simulations in one process, or testnets of
//! real node processes on loopback; `mia` runs `model/examples/mia` instead), reads their CSV
//! output and writes `bench/results/SUITE.csv` (the table) and, where there is a plot,
//! `SUITE-curves.csv` (long format: series, x, y).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cohort_bench::table::Table;

use crate::runner::{Runner, args};

/// MNIST training images.
const MNIST_TRAIN: f64 = 60_000.0;
/// Local steps per round in the matched runs: 23 steps x 32 x 8 nodes ~ 0.1 epoch per round.
const STEPS: usize = 23;
const BATCH: usize = 32;
/// The overhead suite's second workload: about one epoch of a node's shard at n = 8, the same
/// for every node (Dirichlet shards differ in size, so "one epoch" would mostly measure waiting).
const HEAVY: usize = 250;
const OPT: &str = "sgd:0.05,0.9";

/// Column `name` of `t`, parsed as f64, per row (None where empty or not a number).
fn column(t: &Table, name: &str, path: &Path) -> Result<Vec<Option<f64>>> {
    let i = t
        .column(name)
        .with_context(|| format!("{} has no column {name}", path.display()))?;
    Ok(t.rows
        .iter()
        .map(|r| r.get(i).and_then(|v| v.parse::<f64>().ok()))
        .collect())
}

fn read(path: &Path) -> Result<Table> {
    Table::read_csv(path).with_context(|| format!("reading {}", path.display()))
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn pct(v: f64) -> String {
    format!("{:.2}", v * 100.0)
}

/// First 1-based round whose accuracy reaches `target` (a fraction).
fn first_reaching(acc: &[Option<f64>], target: f64) -> Option<usize> {
    acc.iter()
        .position(|a| a.is_some_and(|a| a >= target))
        .map(|i| i + 1)
}

fn last_some(v: &[Option<f64>]) -> Option<f64> {
    v.iter().rev().find_map(|x| *x)
}

/// Runs `cohort ARGS` that writes its per-round (or per-epoch) CSV to `csv`, adds its accuracy
/// curve to `curves` as series `label` at x = row * `x_per_row`, and returns the accuracies
/// (None where not evaluated) and the last one.
fn run_curve(
    r: &mut Runner,
    label: &str,
    a: &[String],
    csv: &Path,
    curves: &mut Table,
    x_per_row: f64,
) -> Result<(Vec<Option<f64>>, f64)> {
    r.cohort(label, a)?;
    let t = read(csv)?;
    let acc = column(&t, "accuracy", csv)?;
    let fin = last_some(&acc).with_context(|| format!("{label} printed no accuracy"))?;
    for (i, v) in acc.iter().enumerate() {
        if let Some(v) = v {
            curves.push(vec![
                label.to_string(),
                format!("{:.3}", (i + 1) as f64 * x_per_row),
                pct(*v),
            ]);
        }
    }
    Ok((acc, fin))
}

/// The common MNIST flags of `cohort simulate`.
fn sim_base(r: &Runner, model: &str, partition: &str, rounds: usize) -> Vec<String> {
    args(&[
        "simulate",
        "--dataset",
        "mnist",
        "--data-dir",
        &p(&r.data_dir),
        "--model",
        model,
        "--nodes",
        "8",
        "--partition",
        partition,
        "--rounds",
        &rounds.to_string(),
    ])
}

/// `sim_base` with the matched local work: `STEPS` steps of `BATCH` with `OPT`.
fn sim_matched(r: &Runner, model: &str, partition: &str, rounds: usize) -> Vec<String> {
    let mut a = sim_base(r, model, partition, rounds);
    a.extend(args(&[
        "--local-steps",
        &STEPS.to_string(),
        "--batch",
        &BATCH.to_string(),
        "--optimizer",
        OPT,
    ]));
    a
}

/// Suite 1: centralized vs 8 simulated nodes on the same sample passes, and McMahan et al.'s
/// rounds-to-target setting (E = 1, B = 10).
pub fn parity(r: &mut Runner, quick: bool, cnn: bool) -> Result<()> {
    r.begin("parity");
    let mut summary = Table::new(&[
        "model",
        "run",
        "local work",
        "rounds",
        "epochs",
        "accuracy %",
        "gap to centralized pp",
        "target %",
        "rounds to target",
        "epochs to target",
        "McMahan 2017 rounds (C=1.0)",
    ]);
    let mut curves = Table::new(&["series", "x", "y"]);
    let models: &[(&str, usize, f64)] = if quick {
        &[("mlp", 1, 0.97)]
    } else {
        // The CNN costs ~12 s per test-set evaluation on one core: one epoch, evaluated every
        // 5 rounds.
        &[("mlp", 5, 0.97), ("cnn", 1, 0.99)]
    };
    for &(model, epochs, target) in models.iter().filter(|m| cnn || m.0 != "cnn") {
        let csv = r.scratch(&format!("{model}-centralized.csv"));
        let mut a = args(&[
            "centralized",
            "--dataset",
            "mnist",
            "--data-dir",
            &p(&r.data_dir),
            "--model",
            model,
            "--epochs",
            &epochs.to_string(),
            "--batch",
            &BATCH.to_string(),
            "--optimizer",
            OPT,
        ]);
        a.extend(args(&["--csv", &p(&csv)]));
        let label = format!("{model} centralized");
        let (acc, central) = run_curve(r, &label, &a, &csv, &mut curves, 1.0)?;
        let e_to = first_reaching(&acc, target);
        summary.push(vec![
            model.into(),
            "centralized".into(),
            format!("{epochs} epochs, B={BATCH}"),
            "-".into(),
            epochs.to_string(),
            pct(central),
            "0".into(),
            pct(target),
            "-".into(),
            e_to.map_or_else(|| format!("> {epochs}"), |e| e.to_string()),
            "-".into(),
        ]);
        let rounds = epochs * 10;
        let per_round = (STEPS * BATCH * 8) as f64 / MNIST_TRAIN;
        for part in ["iid", "dirichlet:0.5", "shards:2"] {
            let csv = r.scratch(&format!("{model}-{part}.csv"));
            let mut a = sim_matched(r, model, part, rounds);
            a.extend(args(&[
                "--server-momentum",
                "0.5",
                "--eval-every",
                if model == "cnn" { "5" } else { "1" },
                "--csv",
                &p(&csv),
            ]));
            let label = format!("{model} 8 nodes {part}");
            let (acc, fin) = run_curve(r, &label, &a, &csv, &mut curves, per_round)?;
            let to = first_reaching(&acc, target);
            summary.push(vec![
                model.into(),
                format!("8 nodes, {part}"),
                format!("{STEPS} steps, B={BATCH}, server momentum 0.5"),
                rounds.to_string(),
                format!("{:.2}", rounds as f64 * per_round),
                pct(fin),
                format!("{:+.2}", (fin - central) * 100.0),
                pct(target),
                to.map_or_else(|| format!("> {rounds}"), |v| v.to_string()),
                to.map_or_else(|| "-".into(), |v| format!("{:.2}", v as f64 * per_round)),
                "-".into(),
            ]);
        }
    }
    // McMahan et al. 2017, Table 1: 2NN, E = 1, B = 10, C = 1.0: 70 rounds (IID), 380 (non-IID,
    // 2 shards per client); their K = 100 clients of 600 examples, so one round is one epoch of
    // MNIST, as it is here with 8 nodes of 7,500.
    let mcmahan: &[(&str, usize, &str)] = if quick {
        &[("iid", 5, "70")]
    } else {
        &[("iid", 20, "70"), ("shards:2", 30, "380")]
    };
    for &(part, cap, theirs) in mcmahan {
        let csv = r.scratch(&format!("mcmahan-{part}.csv"));
        let mut a = sim_base(r, "mlp", part, cap);
        a.extend(args(&[
            "--local-epochs",
            "1",
            "--batch",
            "10",
            "--optimizer",
            "sgd:0.05",
            "--csv",
            &p(&csv),
        ]));
        let label = format!("mlp E=1 B=10 {part}");
        let (acc, fin) = run_curve(r, &label, &a, &csv, &mut curves, 1.0)?;
        let to = first_reaching(&acc, 0.97);
        summary.push(vec![
            "mlp".into(),
            format!("8 nodes, {part} (McMahan setting)"),
            "E=1, B=10, sgd 0.05".into(),
            cap.to_string(),
            cap.to_string(),
            pct(fin),
            "-".into(),
            "97.00".into(),
            to.map_or_else(|| format!("> {cap}"), |v| v.to_string()),
            to.map_or_else(|| "-".into(), |v| v.to_string()),
            theirs.into(),
        ]);
    }
    summary.write_csv(&r.results.join("parity.csv"))?;
    curves.write_csv(&r.results.join("parity-curves.csv"))?;
    r.finish(if quick { "quick" } else { "full" })
}

/// Settings of a MNIST 2NN testnet.
struct Net<'a> {
    nodes: usize,
    rounds: usize,
    rule: &'a str,
    compress: &'a str,
    error_feedback: bool,
    byzantine: Vec<(usize, &'a str)>,
    partition: &'a str,
    /// Evaluate every this many rounds (the last round always).
    eval_every: usize,
    /// `HEAVY` local steps per round instead of `STEPS`.
    heavy: bool,
}

impl Default for Net<'_> {
    fn default() -> Self {
        Net {
            nodes: 4,
            rounds: 10,
            rule: "mean",
            compress: "dense",
            error_feedback: true,
            byzantine: Vec::new(),
            partition: "dirichlet:0.5",
            eval_every: 1,
            heavy: false,
        }
    }
}

/// One testnet's per-node per-round rows and per-node summary.
struct NetRun {
    rounds: Table,
    rounds_path: std::path::PathBuf,
    nodes: Table,
    nodes_path: std::path::PathBuf,
}

impl NetRun {
    /// Values of `field` at the last round, per node (node index -> value).
    fn last(&self, field: &str) -> Result<BTreeMap<usize, f64>> {
        self.per_round(field).map(|m| {
            m.into_iter()
                .filter_map(|(n, v)| v.last().map(|x| (n, x.1)))
                .collect()
        })
    }

    /// `field` per node as (round, value), rounds ascending.
    fn per_round(&self, field: &str) -> Result<BTreeMap<usize, Vec<(usize, f64)>>> {
        let round = column(&self.rounds, "round", &self.rounds_path)?;
        let node = column(&self.rounds, "node", &self.rounds_path)?;
        let val = column(&self.rounds, field, &self.rounds_path)?;
        let mut out: BTreeMap<usize, Vec<(usize, f64)>> = BTreeMap::new();
        for ((r, n), v) in round.iter().zip(&node).zip(&val) {
            if let (Some(r), Some(n), Some(v)) = (r, n, v) {
                out.entry(*n as usize).or_default().push((*r as usize, *v));
            }
        }
        for v in out.values_mut() {
            v.sort_by_key(|x| x.0);
        }
        Ok(out)
    }

    /// Mean over honest nodes of `field` over rounds `> skip`, leaving out the last round (it
    /// evaluates the model, which the bench does only there).
    fn mean_over(&self, field: &str, honest: &[usize], skip: usize) -> Result<f64> {
        let per = self.per_round(field)?;
        let last = per
            .values()
            .flat_map(|v| v.iter().map(|x| x.0))
            .max()
            .unwrap_or(0);
        let vals: Vec<f64> = honest
            .iter()
            .filter_map(|n| per.get(n))
            .flat_map(|v| {
                v.iter()
                    .filter(|x| x.0 > skip && (x.0 < last || last <= skip + 1))
                    .map(|x| x.1)
            })
            .collect();
        if vals.is_empty() {
            bail!("no {field} values in {}", self.rounds_path.display());
        }
        Ok(vals.iter().sum::<f64>() / vals.len() as f64)
    }

    /// Peak RSS of every node, MiB.
    fn rss_mib(&self) -> Result<Vec<f64>> {
        Ok(column(&self.nodes, "peak_rss_kib", &self.nodes_path)?
            .into_iter()
            .flatten()
            .map(|k| k / 1024.0)
            .collect())
    }
}

fn testnet(r: &mut Runner, label: &str, net: &Net<'_>) -> Result<NetRun> {
    let name = label.replace(['/', ' ', ':', '+'], "_");
    let rounds_path = r.scratch(&format!("{name}-rounds.csv"));
    let nodes_path = r.scratch(&format!("{name}-nodes.csv"));
    let mut a = args(&[
        "testnet",
        "--nodes",
        &net.nodes.to_string(),
        "--rounds",
        &net.rounds.to_string(),
        "--dataset",
        "mnist",
        "--dataset-dir",
        &p(&r.data_dir),
        "--model",
        "mlp",
        "--partition",
        net.partition,
        "--batch",
        &BATCH.to_string(),
        "--optimizer",
        OPT,
        "--server-momentum",
        "0.5",
        "--rule",
        net.rule,
        "--compress",
        net.compress,
        // Covers local training (~0.1-0.5 s here) with room; it is also what a silent or
        // crashed proposer costs per view.
        "--propose-ms",
        "3000",
        "--timeout",
        "3000",
        "--eval-every",
        &net.eval_every.to_string(),
        "--csv",
        &p(&rounds_path),
        "--nodes-csv",
        &p(&nodes_path),
    ]);
    let steps = if net.heavy { HEAVY } else { STEPS };
    a.extend(args(&["--local-steps", &steps.to_string()]));
    if !net.error_feedback {
        a.push("--no-error-feedback".into());
    }
    for (i, kind) in &net.byzantine {
        a.push("--byzantine".into());
        a.push(format!("{i}:{kind}"));
    }
    r.cohort(label, &a)?;
    Ok(NetRun {
        rounds: read(&rounds_path)?,
        rounds_path,
        nodes: read(&nodes_path)?,
        nodes_path,
    })
}

/// Final accuracy of the network (node 0 is always honest).
fn final_accuracy(run: &NetRun) -> Result<f64> {
    run.last("accuracy")?
        .get(&0)
        .copied()
        .context("node 0 committed no round")
}

/// Suite 2: 7 validators, 2 Byzantine, over the network, every rule.
pub fn attacks(r: &mut Runner, quick: bool) -> Result<()> {
    r.begin("attacks");
    let (rounds, rules, attacks): (usize, &[&str], &[&str]) = if quick {
        (
            10,
            &["mean", "nnm+median", "multi-krum:2"],
            &["none", "sign-flip:10", "silent"],
        )
    } else {
        (
            20,
            &[
                "mean",
                "median",
                "trimmed-mean:0.3",
                "multi-krum:2",
                "centered-clip:1.0,3",
                "nnm+median",
                "nnm+trimmed-mean:0.3",
                "nnm+centered-clip:0.1,3",
            ],
            &[
                "none",
                "sign-flip:10",
                "gaussian:1",
                "alie",
                "label-flip",
                "equivocate",
                "silent",
            ],
        )
    };
    let mut header = vec!["rule".to_string()];
    header.extend(attacks.iter().map(|a| a.to_string()));
    header.push("worst drop pp".into());
    let mut table = Table {
        header,
        rows: Vec::new(),
    };
    let mut curves = Table::new(&["series", "x", "y"]);
    for rule in rules {
        let mut row = vec![rule.to_string()];
        let mut clean = None;
        let mut worst: f64 = 0.0;
        for attack in attacks {
            let byz = if *attack == "none" {
                Vec::new()
            } else {
                vec![(5, *attack), (6, *attack)]
            };
            let run = testnet(
                r,
                &format!("{rule} {attack}"),
                &Net {
                    nodes: 7,
                    rounds,
                    rule,
                    byzantine: byz,
                    ..Net::default()
                },
            )?;
            let acc = final_accuracy(&run)?;
            if *attack == "none" {
                clean = Some(acc);
            } else if let Some(c) = clean {
                worst = worst.max((c - acc) * 100.0);
            }
            if attack.starts_with("sign-flip") {
                for (round, a) in run.per_round("accuracy")?.get(&0).into_iter().flatten() {
                    curves.push(vec![rule.to_string(), round.to_string(), pct(*a)]);
                }
            }
            row.push(pct(acc));
        }
        row.push(format!("{worst:.2}"));
        table.push(row);
    }
    table.write_csv(&r.results.join("attacks.csv"))?;
    curves.write_csv(&r.results.join("attacks-curves.csv"))?;
    r.finish(if quick { "quick" } else { "full" })
}

/// Suite 3: bytes on the wire per node per round, from the nodes' own counters.
pub fn bandwidth(r: &mut Runner, quick: bool) -> Result<()> {
    r.begin("bandwidth");
    let (nodes, rounds) = if quick { (4, 10) } else { (8, 30) };
    let configs: &[(&str, bool)] = if quick {
        &[
            ("dense", true),
            ("int8", true),
            ("topk:0.1+int8", true),
            ("topk:0.01+int8", true),
        ]
    } else {
        &[
            ("dense", true),
            ("int8", true),
            ("topk:0.1", true),
            ("topk:0.1", false),
            ("topk:0.1+int8", true),
            ("topk:0.1+int8", false),
            ("topk:0.01+int8", true),
            ("topk:0.01+int8", false),
        ]
    };
    let mut table = Table::new(&[
        "compression",
        "error feedback",
        "delta msg bytes",
        "wire out / node / round",
        "wire in / node / round",
        "x fewer than dense",
        "accuracy %",
        "change pp",
        "delta amplification",
    ]);
    let mut curves = Table::new(&["series", "x", "y"]);
    let mut dense_out = None;
    let mut dense_acc = None;
    let honest: Vec<usize> = (0..nodes).collect();
    for &(compress, ef) in configs {
        let label = format!("{compress}{}", if ef { "" } else { " no-EF" });
        let run = testnet(
            r,
            &label,
            &Net {
                nodes,
                rounds,
                compress,
                error_feedback: ef,
                ..Net::default()
            },
        )?;
        let per_round = |field: &str| -> Result<f64> {
            let last = run.last(field)?;
            let rounds_done = run.last("round")?;
            let vals: Vec<f64> = honest
                .iter()
                .filter_map(|n| Some(last.get(n)? / rounds_done.get(n)?.max(1.0)))
                .collect();
            Ok(vals.iter().sum::<f64>() / vals.len().max(1) as f64)
        };
        let delta = per_round("delta_bytes_out")?;
        let out = per_round("wire_bytes_out")?;
        let inn = per_round("wire_bytes_in")?;
        let fetched = per_round("blob_bytes_in")? + per_round("delta_announce_bytes_in")?;
        let ideal = delta * (nodes - 1) as f64;
        let acc = final_accuracy(&run)?;
        if compress == "dense" {
            dense_out = Some(out);
            dense_acc = Some(acc);
        }
        let x = dense_out.map(|d| d / out).unwrap_or(1.0);
        let change = dense_acc.map(|d| (acc - d) * 100.0).unwrap_or(0.0);
        // Accuracy against cumulative bytes sent per node.
        let sent = run.per_round("wire_bytes_out")?;
        let accs = run.per_round("accuracy")?;
        if let (Some(s), Some(a)) = (sent.get(&0), accs.get(&0)) {
            for ((_, b), (_, acc)) in s.iter().zip(a) {
                curves.push(vec![label.clone(), format!("{:.0}", b), pct(*acc)]);
            }
        }
        table.push(vec![
            compress.into(),
            if ef { "yes" } else { "no" }.into(),
            format!("{delta:.0}"),
            format!("{out:.0}"),
            format!("{inn:.0}"),
            format!("{x:.1}"),
            pct(acc),
            format!("{change:+.2}"),
            format!("{:.3}", fetched / ideal.max(1.0)),
        ]);
    }
    table.write_csv(&r.results.join("bandwidth.csv"))?;
    curves.write_csv(&r.results.join("bandwidth-curves.csv"))?;
    r.finish(if quick { "quick" } else { "full" })
}

/// Suite 4: where a round's time goes, and local training speed.
pub fn overhead(r: &mut Runner, quick: bool) -> Result<()> {
    r.begin("overhead");
    let (sizes, rounds): (&[usize], usize) = if quick {
        (&[4, 8], 6)
    } else {
        (&[4, 8, 16], 15)
    };
    let mut table = Table::new(&[
        "nodes",
        "local work",
        "round s",
        "train s",
        "gossip s",
        "consensus s",
        "aggregate s",
        "other s",
        "not training %",
        "local samples/s",
    ]);
    for (n, heavy) in sizes.iter().flat_map(|&n| [(n, false), (n, true)]) {
        let run = testnet(
            r,
            &format!("n={n}{}", if heavy { " heavy" } else { "" }),
            &Net {
                nodes: n,
                rounds: if heavy {
                    rounds.div_ceil(2).max(4)
                } else {
                    rounds
                },
                // Evaluation is observability, not protocol: only at the end here.
                eval_every: rounds,
                heavy,
                ..Net::default()
            },
        )?;
        let steps = if heavy { HEAVY } else { STEPS };
        let samples = (steps * BATCH) as f64;
        let honest: Vec<usize> = (0..n).collect();
        // Round 1 includes connection setup and the first model load: left out.
        let m = |f: &str| run.mean_over(f, &honest, 1);
        let (total, train) = (m("seconds")?, m("train_seconds")?);
        let (gossip, cons, agg, other) = (
            m("gossip_seconds")?,
            m("consensus_seconds")?,
            m("aggregate_seconds")?,
            m("other_seconds")?,
        );
        table.push(vec![
            n.to_string(),
            format!("{steps} steps of {BATCH}"),
            format!("{total:.3}"),
            format!("{train:.3}"),
            format!("{gossip:.3}"),
            format!("{cons:.3}"),
            format!("{agg:.3}"),
            format!("{other:.3}"),
            format!("{:.1}", (1.0 - train / total) * 100.0),
            format!("{:.0}", samples / train),
        ]);
    }
    table.write_csv(&r.results.join("overhead.csv"))?;
    if let Some(bin) = r.train_speed.clone() {
        let csv = r.scratch("train-speed.csv");
        let samples = if quick { "20000" } else { "100000" };
        r.run(
            "train speed",
            &bin,
            // One thread, as PyTorch's reference figure and as `cohort` runs by default.
            &args(&["--threads", "1", "--samples", samples, "--csv", &p(&csv)]),
        )?;
        let t = read(&csv)?;
        t.write_csv(&r.results.join("train-speed.csv"))?;
    }
    r.finish(if quick { "quick" } else { "full" })
}

/// Suite 5: the largest testnet, and the consensus simulator alone.
pub fn scale(r: &mut Runner, quick: bool) -> Result<()> {
    r.begin("scale");
    let sizes: &[usize] = if quick { &[8, 16] } else { &[8, 16, 32] };
    let mut table = Table::new(&[
        "nodes",
        "rounds",
        "round s",
        "peak RSS / node MiB (mean)",
        "peak RSS max MiB",
        "accuracy %",
        "hashes equal",
    ]);
    for &n in sizes {
        let rounds = 5;
        let run = testnet(
            r,
            &format!("n={n}"),
            &Net {
                nodes: n,
                rounds,
                eval_every: rounds,
                ..Net::default()
            },
        )?;
        let honest: Vec<usize> = (0..n).collect();
        let secs = run.mean_over("seconds", &honest, 1)?;
        let rss = run.rss_mib()?;
        let hashes: std::collections::BTreeSet<&str> = {
            let i = run
                .nodes
                .column("model_hash")
                .context("model_hash column")?;
            run.nodes
                .rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(String::as_str)
                .collect()
        };
        table.push(vec![
            n.to_string(),
            rounds.to_string(),
            format!("{secs:.2}"),
            format!("{:.0}", rss.iter().sum::<f64>() / rss.len().max(1) as f64),
            format!("{:.0}", rss.iter().copied().fold(0.0, f64::max)),
            pct(final_accuracy(&run)?),
            if hashes.len() == 1 { "yes" } else { "NO" }.into(),
        ]);
    }
    table.write_csv(&r.results.join("scale.csv"))?;
    if let Some(bin) = r.consensus_bench.clone() {
        let csv = r.scratch("consensus.csv");
        let mut a = args(&["--csv", &p(&csv)]);
        // --quick decides fewer heights; the sizes are the same.
        a.push("--quick".into());
        a.extend(args(&["--sizes", "4,31,100,300"]));
        r.run("consensus simulator", &bin, &a)?;
        read(&csv)?.write_csv(&r.results.join("consensus.csv"))?;
    }
    r.finish(if quick { "quick" } else { "full" })
}

/// Suite 6: accuracy against the accountant's epsilon.
pub fn privacy(r: &mut Runner, quick: bool) -> Result<()> {
    r.begin("privacy");
    let rounds = if quick { 10 } else { 50 };
    let mut table = Table::new(&[
        "dp",
        "rounds",
        "epsilon (delta 1e-5)",
        "accuracy %",
        "change pp",
    ]);
    let mut curves = Table::new(&["series", "x", "y"]);
    let mut clean = None;
    // Noise is added by each node to its own clipped delta; with 8 nodes there is no sampling
    // amplification, so a noise level that buys a small epsilon leaves nothing of the signal.
    // These levels show where the model breaks.
    for dp in [
        "",
        "clip:1.0,noise:0.01",
        "clip:1.0,noise:0.03",
        "clip:1.0,noise:0.1",
        "clip:1.0,noise:0.3",
    ] {
        let csv = r.scratch(&format!(
            "dp-{}.csv",
            if dp.is_empty() { "none" } else { dp }
        ));
        let mut a = sim_matched(r, "mlp", "iid", rounds);
        a.extend(args(&["--csv", &p(&csv)]));
        if !dp.is_empty() {
            a.extend(args(&["--dp", dp]));
        }
        r.cohort(if dp.is_empty() { "no dp" } else { dp }, &a)?;
        let t = read(&csv)?;
        let acc = column(&t, "accuracy", &csv)?;
        let eps = column(&t, "epsilon", &csv)?;
        let fin = last_some(&acc).context("no accuracy")?;
        if dp.is_empty() {
            clean = Some(fin);
        }
        let e = last_some(&eps);
        for (a, e) in acc.iter().zip(&eps) {
            if let (Some(a), Some(e)) = (a, e) {
                curves.push(vec![dp.to_string(), format!("{e:.4}"), pct(*a)]);
            }
        }
        table.push(vec![
            if dp.is_empty() { "none" } else { dp }.into(),
            rounds.to_string(),
            e.map_or_else(|| "inf".into(), |e| format!("{e:.2}")),
            pct(fin),
            clean.map_or_else(String::new, |c| format!("{:+.2}", (fin - c) * 100.0)),
        ]);
    }
    table.write_csv(&r.results.join("privacy.csv"))?;
    curves.write_csv(&r.results.join("privacy-curves.csv"))?;
    r.finish(if quick { "quick" } else { "full" })
}

/// Suite 7: what a membership-inference attacker learns (issue 13 item 5). Runs
/// `model/examples/mia` (`--mia`): the 2NN trained on MNIST members without DP, with node-level
/// DP on its released delta and with DP-SGD at epsilon 2, each attacked by the loss-threshold
/// test; five seeds (quick: three, on 500 members), mean ± standard deviation.
pub fn mia(r: &mut Runner, quick: bool) -> Result<()> {
    r.begin("mia");
    let bin = r.mia.clone().context(
        "the mia suite needs the membership-inference program: build it with \
         `cargo build --release -p model --example mia` and pass --mia",
    )?;
    let csv = r.scratch("mia.csv");
    let mut a = args(&["--data-dir", &p(&r.data_dir), "--csv", &p(&csv)]);
    a.extend(args(if quick {
        &["--quick", "--seeds", "3"]
    } else {
        &["--seeds", "5"]
    }));
    r.run("membership inference", &bin, &a)?;
    read(&csv)?.write_csv(&r.results.join("mia.csv"))?;
    r.finish(if quick { "quick" } else { "full" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reaching_is_one_based() {
        let acc = [Some(0.5), None, Some(0.97), Some(0.99)];
        assert_eq!(first_reaching(&acc, 0.97), Some(3));
        assert_eq!(first_reaching(&acc, 0.995), None);
        assert_eq!(last_some(&acc), Some(0.99));
    }

    #[test]
    fn netrun_means_skip_warmup_and_byzantine() {
        let dir = std::env::temp_dir().join(format!("cohort-bench-suites-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rp = dir.join("r.csv");
        let np = dir.join("n.csv");
        std::fs::write(
            &rp,
            "round,node,seconds,accuracy\n1,0,9,0.1\n2,0,1,0.5\n2,1,3,0.5\n1,1,9,0.1\n2,2,100,0.5\n\
             3,0,50,0.6\n3,1,50,0.6\n",
        )
        .unwrap();
        std::fs::write(
            &np,
            "node,byzantine,model_hash,peak_rss_kib\n0,,aa,2048\n1,,aa,1024\n",
        )
        .unwrap();
        let run = NetRun {
            rounds: read(&rp).unwrap(),
            rounds_path: rp,
            nodes: read(&np).unwrap(),
            nodes_path: np,
        };
        assert_eq!(run.mean_over("seconds", &[0, 1], 1).unwrap(), 2.0);
        assert_eq!(run.last("accuracy").unwrap()[&1], 0.6);
        assert_eq!(run.rss_mib().unwrap(), vec![2.0, 1.0]);
        assert!(run.mean_over("seconds", &[5], 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
