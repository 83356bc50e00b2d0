//! `cohort testnet`: keys and a genesis in a temp dir, N `cohort run` processes on loopback with
//! real libp2p, one line per committed round, and every node's final model hash.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::genesis::TrainingArgs;

/// Flags of `cohort testnet`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of validator processes.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Rounds to commit.
    #[arg(long, default_value_t = 10)]
    pub rounds: u64,
    /// Working directory (default: a new temp dir, removed at the end unless --keep).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the working directory.
    #[arg(long)]
    pub keep: bool,
    /// Make node I Byzantine: I:KIND, e.g. 3:sign-flip (repeatable).
    #[arg(long)]
    pub byzantine: Vec<String>,
    /// Directory with the dataset's IDX files (--dataset mnist) or the Shakespeare plays
    /// (--model transformer), given to every node.
    #[arg(long)]
    pub dataset_dir: Option<PathBuf>,
    /// Node I's own data, given once per node in order (csv:PATH, images:DIR or idx:DIR; with
    /// --schema): node I runs `cohort run --own-data` with the I-th instead of a shard.
    #[arg(long)]
    pub own_data: Vec<String>,
    /// Evaluation data given to every node with --own-data (default: each node holds out 10% of
    /// its own).
    #[arg(long)]
    pub eval: Option<String>,
    /// Evaluate the model every N rounds on every node (always at the last round).
    #[arg(long, default_value_t = 1)]
    pub eval_every: u64,
    /// Write every node's commit events here, one row per (round, node) with cumulative byte counters.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write one row per node at the end: Byzantine kind, final hash, peak RSS.
    #[arg(long)]
    pub nodes_csv: Option<PathBuf>,
    /// Model, data and training settings written into the genesis.
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

struct Node {
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Event {
    Commit {
        node: usize,
        round: u64,
        line: serde_json::Value,
    },
    Done {
        node: usize,
        hash: String,
        peak_rss_kib: Option<u64>,
    },
    Exited {
        node: usize,
    },
}

fn wait_for_file(path: &Path, deadline: Instant) -> Result<String> {
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !a.own_data.is_empty() && a.own_data.len() != a.nodes {
        bail!(
            "{} --own-data sources for --nodes {}: give one per node, in node order",
            a.own_data.len(),
            a.nodes
        );
    }
    if a.eval.is_some() && a.own_data.is_empty() {
        bail!("--eval goes with --own-data (shards are evaluated on the data set's test set)");
    }
    let tmp = a.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cohort-testnet-{}", std::process::id()))
    });
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let (g, _) = crate::cmd::testnet_init::write_keys_and_genesis(
        &tmp,
        a.nodes,
        0,
        "cohort-testnet",
        &a.training,
        a.dataset_dir.as_deref(),
    )?;
    let genesis = tmp.join("genesis.toml");
    let mut byz = vec![None; a.nodes];
    for b in &a.byzantine {
        let (i, kind) = b.split_once(':').context("--byzantine I:KIND")?;
        let i: usize = i.parse().context("--byzantine I:KIND")?;
        *byz.get_mut(i).context("--byzantine index out of range")? = Some(kind.to_string());
    }
    let data = if a.own_data.is_empty() {
        format!("{} ({} partition)", g.model.dataset, g.model.partition)
    } else {
        "each node's own data".to_string()
    };
    println!(
        "testnet: {} validators in {}, {} rounds, model {} on {data}",
        a.nodes,
        tmp.display(),
        a.rounds,
        g.model.kind,
    );
    let exe = std::env::current_exe().context("locating the cohort binary")?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let (tx, rx) = mpsc::channel::<Event>();
    let mut nodes = Vec::new();
    let mut bootstrap: Option<String> = None;
    let start = Instant::now();
    for (i, byz_kind) in byz.iter().enumerate() {
        let dir = tmp.join(format!("node{i}"));
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .arg("--key")
            .arg(dir.join("node.key"))
            .arg("--genesis")
            .arg(&genesis)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0"])
            .args(["--rounds", &a.rounds.to_string(), "--json"])
            .args(["--eval-every", &a.eval_every.to_string()])
            .args(
                a.dataset_dir
                    .iter()
                    .flat_map(|d| [std::ffi::OsStr::new("--dataset-dir"), d.as_os_str()]),
            )
            .stdout(Stdio::piped())
            .stderr(node_log(&dir)?);
        match a.own_data.get(i) {
            Some(own) => {
                cmd.args(["--own-data", own]);
                if let Some(e) = &a.eval {
                    cmd.args(["--eval", e]);
                }
            }
            None => {
                cmd.args(["--shard", &i.to_string(), "--shards", &a.nodes.to_string()]);
            }
        }
        if let Some(b) = &bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        if let Some(k) = byz_kind {
            cmd.args(["--byzantine", k]);
        }
        let mut child = cmd.spawn().context("starting a node")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let ev = match v["event"].as_str() {
                    Some("commit") => Event::Commit {
                        node: i,
                        round: v["round"].as_u64().unwrap_or(0),
                        line: v,
                    },
                    Some("done") => Event::Done {
                        node: i,
                        hash: v["model_hash"].as_str().unwrap_or("").to_string(),
                        peak_rss_kib: v["peak_rss_kib"].as_u64(),
                    },
                    _ => continue,
                };
                if tx.send(ev).is_err() {
                    break;
                }
            }
            let _ = tx.send(Event::Exited { node: i });
        });
        nodes.push(Node { child });
        if i == 0 {
            let addrs = wait_for_file(&dir.join("data/listen.txt"), deadline)?;
            bootstrap = addrs.lines().next().map(str::to_string);
        }
    }
    drop(tx);
    let mut printed = 0u64;
    let mut hashes: Vec<Option<String>> = vec![None; a.nodes];
    let mut rss: Vec<Option<u64>> = vec![None; a.nodes];
    let mut rows = String::from(CSV_HEADER);
    let mut last_round_at = start;
    println!("round  accuracy   loss    deltas  delta bytes/node  seconds");
    // Byzantine nodes may be banned by their peers and fall behind: the run ends when every
    // honest node is done, and only honest hashes must agree.
    let honest = |i: usize| byz[i].is_none();
    while (0..a.nodes).any(|i| honest(i) && hashes[i].is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "testnet timed out after {} s ({printed} rounds printed)",
                a.timeout
            );
        }
        match rx.recv_timeout(left) {
            Ok(Event::Commit { node, round, line }) => {
                rows.push_str(&csv_row(node, &line));
                // Print a round once, from the first node to commit it.
                if round > printed {
                    printed = round;
                    let now = Instant::now();
                    let acc = line["accuracy"]
                        .as_f64()
                        .map_or_else(|| "-".into(), |a| format!("{:.2}%", a * 100.0));
                    let loss = line["loss"]
                        .as_f64()
                        .map_or_else(|| "-".into(), |l| format!("{l:.4}"));
                    println!(
                        "{round:>5}  {acc:>8}  {loss:>6}  {:>6}  {:>16}  {:>7.2}",
                        line["included"].as_u64().unwrap_or(0),
                        line["delta_bytes_out"].as_u64().unwrap_or(0) / round.max(1),
                        (now - last_round_at).as_secs_f64()
                    );
                    last_round_at = now;
                }
            }
            Ok(Event::Done {
                node,
                hash,
                peak_rss_kib,
            }) => {
                hashes[node] = Some(hash);
                rss[node] = peak_rss_kib;
            }
            Ok(Event::Exited { node }) => {
                if hashes[node].is_none() && honest(node) {
                    bail!(
                        "node {node} exited before finishing (see its data dir in {})",
                        tmp.display()
                    );
                }
            }
            Err(_) => bail!("testnet timed out after {} s", a.timeout),
        }
    }
    drop(nodes);
    println!("final model hashes:");
    let mut summary = String::from("node,byzantine,model_hash,peak_rss_kib\n");
    for (i, h) in hashes.iter().enumerate() {
        let h = h.as_deref().unwrap_or("-");
        let mem = rss[i].map(|k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!("  node{i}  {h}  peak RSS {}", mem.as_deref().unwrap_or("-"));
        summary.push_str(&format!(
            "{i},{},{h},{}\n",
            byz[i].as_deref().unwrap_or(""),
            rss[i].map(|k| k.to_string()).unwrap_or_default()
        ));
    }
    if let Some(path) = &a.csv {
        std::fs::write(path, &rows).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.nodes_csv {
        std::fs::write(path, &summary).with_context(|| format!("writing {}", path.display()))?;
    }
    let honest_hashes: Vec<&Option<String>> = (0..a.nodes)
        .filter(|&i| honest(i))
        .map(|i| &hashes[i])
        .collect();
    let all_equal = honest_hashes.windows(2).all(|w| w[0] == w[1]);
    println!(
        "{} after {:.1}s",
        if all_equal {
            "all hashes equal"
        } else {
            "HASHES DIFFER"
        },
        start.elapsed().as_secs_f64()
    );
    if !a.keep && a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if !all_equal {
        bail!("final model hashes differ");
    }
    Ok(())
}

/// Columns of `--csv`: the fields of a node's commit event (byte counters are cumulative).
const CSV_FIELDS: [&str; 17] = [
    "accuracy",
    "loss",
    "included",
    "seconds",
    "train_seconds",
    "gossip_seconds",
    "consensus_seconds",
    "aggregate_seconds",
    "other_seconds",
    "delta_bytes_out",
    "wire_bytes_in",
    "wire_bytes_out",
    "blob_bytes_in",
    "blob_bytes_out",
    "delta_announce_bytes_in",
    "consensus_bytes_in",
    "model_hash",
];
const CSV_HEADER: &str = "round,node,accuracy,loss,included,seconds,train_seconds,gossip_seconds,\
consensus_seconds,aggregate_seconds,other_seconds,delta_bytes_out,wire_bytes_in,wire_bytes_out,blob_bytes_in,\
blob_bytes_out,delta_announce_bytes_in,consensus_bytes_in,model_hash\n";

/// Each node's stderr (its tracing logs, RUST_LOG) goes to `nodeI/node.log`.
fn node_log(dir: &Path) -> Result<Stdio> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("node.log");
    let f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Stdio::from(f))
}

fn csv_row(node: usize, line: &serde_json::Value) -> String {
    let mut row = format!("{},{node}", line["round"].as_u64().unwrap_or(0));
    for f in CSV_FIELDS {
        row.push(',');
        match &line[f] {
            serde_json::Value::String(s) => row.push_str(s),
            serde_json::Value::Null => {}
            v => row.push_str(&v.to_string()),
        }
    }
    row.push('\n');
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_row_matches_header() {
        let line = serde_json::json!({
            "round": 3, "accuracy": 0.5, "loss": 1.25, "included": 4, "seconds": 0.5,
            "wire_bytes_in": 1000, "model_hash": "ab"
        });
        let row = csv_row(2, &line);
        assert_eq!(row, "3,2,0.5,1.25,4,0.5,,,,,,,1000,,,,,,ab\n");
        assert_eq!(
            row.split(',').count(),
            CSV_HEADER.split(',').count(),
            "one field per column"
        );
    }
}
