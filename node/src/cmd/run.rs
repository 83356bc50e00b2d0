//! `cohort run`: a node. Settings come from `--config FILE` (TOML) with flags overriding it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use model::data::Dataset;
use model::shard::EvalSet;
use model::source::DataSource;
use serde::Deserialize;
use tokio::sync::watch;

use crate::driver::{Byzantine, DriverConfig};
use crate::genesis::{DataPlan, Genesis};
use crate::keys::NodeKey;
use crate::metrics::{Metrics, Status};
use crate::store::Store;

/// Flags of `cohort run` (each overrides the same key of `--config`).
#[derive(clap::Args, Debug, Default)]
pub struct Args {
    /// TOML file with any of the keys below (flags override it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node's key file (from `cohort keygen`).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The network's genesis file.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// Where the ledger, WAL, state and checkpoints live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use shard I of the genesis dataset (with --shards N).
    #[arg(long)]
    pub shard: Option<usize>,
    /// How many shards the genesis dataset is split into.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Train on this node's own data instead of a shard: csv:PATH, images:DIR or idx:DIR, read
    /// against the genesis [data] schema (a bare DIR is an IDX directory whose t10k files are
    /// the evaluation data, as before).
    #[arg(long, visible_alias = "dataset")]
    pub own_data: Option<String>,
    /// Evaluation data for --own-data (csv:PATH, images:DIR, idx:DIR); default: 10% of the
    /// node's own data held out (seeded by the genesis seed).
    #[arg(long)]
    pub eval: Option<DataSource>,
    /// IDX directory for the mnist/fashion-mnist genesis dataset (for --shard).
    #[arg(long)]
    pub dataset_dir: Option<PathBuf>,
    /// Demonstration misbehaviour: sign-flip[:S], gaussian[:S], alie, label-flip, zeros,
    /// equivocate, silent, lying-removals, crash-before-reveal (secure aggregation: the process
    /// stops once it is selected, before its reveal).
    #[arg(long)]
    pub byzantine: Option<String>,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Ask the validators to admit this node (a signed join request). Under the `open` policy it
    /// becomes a contributor (its deltas may be included) and is promoted to validator after
    /// `promote_after` included rounds; under `approve`, once a quorum of operators approved it.
    #[arg(long)]
    pub join: bool,
    /// Accept a key file that group or others may read (refused by default, as ssh does).
    #[arg(long)]
    pub allow_open_key: bool,
    /// Network: listen addresses, bootstrap peers, the HTTP API, mDNS.
    #[command(flatten)]
    pub net: NetArgs,
}

/// What the node reports of the rounds it commits, and when it stops.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReportArgs {
    /// Exit-free stop marker: report "done" after this round (testnets).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Print one JSON line per committed round on stdout.
    #[arg(long)]
    pub json: bool,
    /// Evaluate the model on the test set every N committed rounds (and at --rounds); 0 never.
    #[arg(long, default_value_t = 1)]
    pub eval_every: u64,
}

/// `cohort run`'s network flags.
#[derive(clap::Args, Debug, Default)]
pub struct NetArgs {
    /// Listen multiaddr (repeatable). Default /ip4/0.0.0.0/tcp/9000.
    #[arg(long)]
    pub listen: Vec<String>,
    /// Bootstrap peer multiaddr with /p2p/PEERID (repeatable).
    #[arg(long)]
    pub bootstrap: Vec<String>,
    /// HTTP address for /status and /metrics (e.g. 127.0.0.1:8080; port 0 picks one).
    #[arg(long)]
    pub api: Option<String>,
    /// Discover peers on the local network with mDNS.
    #[arg(long)]
    pub mdns: bool,
}

/// The TOML form of the same settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    key: Option<PathBuf>,
    genesis: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    shard: Option<usize>,
    shards: Option<usize>,
    own_data: Option<String>,
    eval: Option<DataSource>,
    dataset_dir: Option<PathBuf>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    bootstrap: Vec<String>,
    api: Option<String>,
    byzantine: Option<String>,
    #[serde(default)]
    mdns: bool,
    rounds: Option<u64>,
    #[serde(default)]
    join: bool,
}

fn merge(mut a: Args) -> Result<Args> {
    let Some(path) = a.config.clone() else {
        return Ok(a);
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let f: FileConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    a.key = a.key.or(f.key);
    a.genesis = a.genesis.or(f.genesis);
    a.data_dir = a.data_dir.or(f.data_dir);
    a.shard = a.shard.or(f.shard);
    a.shards = a.shards.or(f.shards);
    a.own_data = a.own_data.or(f.own_data);
    a.eval = a.eval.or(f.eval);
    a.dataset_dir = a.dataset_dir.or(f.dataset_dir);
    if a.net.listen.is_empty() {
        a.net.listen = f.listen;
    }
    if a.net.bootstrap.is_empty() {
        a.net.bootstrap = f.bootstrap;
    }
    a.net.api = a.net.api.or(f.api);
    a.byzantine = a.byzantine.or(f.byzantine);
    a.net.mdns |= f.mdns;
    a.report.rounds = a.report.rounds.or(f.rounds);
    a.join |= f.join;
    Ok(a)
}

pub fn run(a: Args) -> Result<()> {
    let a = merge(a)?;
    let key_path = a.key.clone().context("--key is required")?;
    let genesis_path = a.genesis.clone().context("--genesis is required")?;
    a.data_dir.as_ref().context("--data-dir is required")?;
    let key = NodeKey::load_with(&key_path, a.allow_open_key)?;
    let genesis = Genesis::load(&genesis_path)?;
    let byzantine = a
        .byzantine
        .as_deref()
        .map(|s| {
            s.parse::<Byzantine>()
                .map_err(|e| anyhow::anyhow!("--byzantine: {e}"))
        })
        .transpose()?;
    // Data: this node's own files, or its shard of the genesis dataset.
    let plan = match &genesis.data {
        DataPlan::Samples(plan) => plan,
        DataPlan::Text(text) => {
            if a.own_data.is_some() || a.eval.is_some() {
                bail!(
                    "--own-data and --eval are not supported for the transformer yet: it trains \
                     on its --shard of the genesis text (--dataset-dir)"
                );
            }
            let docs = super::text_data::load_shakespeare(a.dataset_dir.as_deref())?;
            let shards = a.shards.unwrap_or(genesis.validators.len()).max(1);
            let shard = a.shard.unwrap_or(0);
            if shard >= shards {
                bail!("--shard {shard} must be below --shards {shards}");
            }
            let parts = super::text_data::shards(
                &docs,
                shards,
                text.partition,
                genesis.file.seed,
                &text.vocab,
            )
            .context("the text does not fit the genesis vocabulary")?;
            let test = super::text_data::validation(&docs, &text.vocab)?;
            let train = parts.into_iter().nth(shard).context("no shard")?;
            return run_with_data(a, key, genesis, byzantine, train, EvalSet::Memory(test));
        }
    };
    let (train, test) = match (&a.own_data, a.shard) {
        (Some(own), _) => {
            let (train, test) = match own.parse::<DataSource>() {
                Ok(src) => super::data::load_own(
                    &src,
                    a.eval.as_ref(),
                    &plan.schema,
                    &genesis.model,
                    genesis.file.seed,
                )?,
                // A bare directory: IDX files, as before this flag took sources.
                Err(_) if !own.contains(':') => {
                    let s = model::data::load_idx_dir(Path::new(own))?;
                    let test = match &a.eval {
                        Some(e) => super::data::dense(super::data::load_source(e, &plan.schema)?)?,
                        None => s.test,
                    };
                    (s.train, test)
                }
                Err(e) => bail!("--own-data {own}: {e}"),
            };
            (train, EvalSet::Memory(test))
        }
        (None, shard) => {
            let dataset = plan.dataset.context(
                "the genesis names no model.dataset to take a --shard of: give this node its \
                 own data with --own-data csv:PATH, images:DIR or idx:DIR",
            )?;
            if a.eval.is_some() {
                bail!("--eval is for --own-data; a shard is evaluated on {dataset}'s test set");
            }
            let shards = a.shards.unwrap_or(genesis.validators.len()).max(1);
            let shard = shard.unwrap_or(0);
            if shard >= shards {
                bail!("--shard {shard} must be below --shards {shards}");
            }
            // Only this node's shard is kept: the IDX file streams past, and the test file is
            // read again at each evaluation (peak RSS).
            model::shard::load_node_shard(
                dataset,
                a.dataset_dir.as_deref(),
                shards,
                shard,
                plan.partition,
                genesis.file.seed,
            )?
        }
    };
    run_with_data(a, key, genesis, byzantine, train, test)
}

/// The node, once its training and evaluation data are loaded.
fn run_with_data(
    a: Args,
    key: NodeKey,
    genesis: Genesis,
    byzantine: Option<Byzantine>,
    mut train: Dataset,
    test: EvalSet,
) -> Result<()> {
    let data_dir = a.data_dir.clone().context("--data-dir is required")?;
    let sets = [
        ("training", train.features, &train.y[..]),
        ("evaluation", test.features(), test.labels()),
    ];
    for (what, features, labels) in sets {
        if features != genesis.model.input_features() {
            bail!(
                "model {} takes {} features, the {what} data has {features}",
                genesis.model,
                genesis.model.input_features(),
            );
        }
        if let Some(&l) = labels
            .iter()
            .find(|&&l| usize::from(l) >= genesis.model.classes())
        {
            bail!(
                "the {what} data has label {l}, but model {} has {} classes",
                genesis.model,
                genesis.model.classes()
            );
        }
    }
    if matches!(byzantine, Some(Byzantine::Attack(m)) if m.is_data_level()) {
        model::attack::flip_labels(&mut train.y, genesis.model.classes());
    }
    let listen: Vec<gossip::Multiaddr> = if a.net.listen.is_empty() {
        vec!["/ip4/0.0.0.0/tcp/9000".parse()?]
    } else {
        a.net
            .listen
            .iter()
            .map(|s| s.parse().with_context(|| format!("--listen {s}")))
            .collect::<Result<_>>()?
    };
    refuse_ports_in_use(&listen)?;
    let bootstrap: Vec<gossip::Multiaddr> = a
        .net
        .bootstrap
        .iter()
        .map(|s| s.parse().with_context(|| format!("--bootstrap {s}")))
        .collect::<Result<_>>()?;
    let (store, recovered) = Store::open(&data_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    rt.block_on(async move {
        let mut net_cfg = gossip::NetworkConfig::new(&genesis.file.chain_id);
        net_cfg.listen_addrs = listen;
        net_cfg.bootstrap = bootstrap;
        net_cfg.mdns = a.net.mdns;
        net_cfg.kademlia_server = true;
        net_cfg.heartbeat_interval = Duration::from_millis(300);
        net_cfg.request_timeout = Duration::from_secs(20);
        net_cfg.blob_cache_bytes = blob_cache_bytes(&genesis);
        // The core answers every message as it handles it: 10 s is ample. The message cache
        // (history = validation timeout / heartbeat), the duplicate cache and gossipsub's
        // peer-score delivery records (which expire with the duplicate cache: vendor/README.md)
        // hold messages/s times these windows: bounded by the pace, not by the number of rounds.
        net_cfg.validation_timeout = Duration::from_secs(10);
        net_cfg.duplicate_cache_time = net_cfg.validation_timeout * 2;
        net_cfg.window_messages = window_messages(&genesis, net_cfg.duplicate_cache_time);
        tokio::spawn(crate::cli::trim_malloc_every(Duration::from_secs(10)));
        let (net, events) = gossip::Network::spawn(net_cfg, key.libp2p()?)
            .map_err(|e| anyhow::anyhow!("starting the network: {e}"))?;
        // Tell launchers where we listen (after the swarm has bound its sockets).
        let mut addrs = Vec::new();
        for _ in 0..100 {
            addrs = net.listen_addrs().await.unwrap_or_default();
            if !addrs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let peer = key.peer_id()?;
        let lines: Vec<String> = addrs.iter().map(|m| format!("{m}/p2p/{peer}")).collect();
        crate::store::log::write_atomic(&data_dir.join("listen.txt"), lines.join("\n").as_bytes())?;
        let metrics = Arc::new(Metrics::default());
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (history_tx, history_rx) =
            watch::channel(crate::history::History::from_ledger(&recovered.ledger));
        if let Some(api) = &a.net.api {
            let addr: SocketAddr = api.parse().with_context(|| format!("--api {api}"))?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --api {api}"))?;
            let bound = listener.local_addr()?;
            crate::store::log::write_atomic(
                &data_dir.join("api.txt"),
                bound.to_string().as_bytes(),
            )?;
            let state = crate::api::ApiState {
                metrics: metrics.clone(),
                status: status_rx,
                history: history_rx,
                net: Some(net.clone()),
                ledger: store.ledger_path(),
                index: store.ledger_index(),
            };
            tokio::spawn(crate::api::serve(
                listener,
                state,
                crate::api::Limits::default(),
            ));
        }
        tracing::info!(peer = %peer, listen = ?lines, "node started");
        let (stop_tx, stop_rx) = watch::channel(false);
        // SIGINT (Ctrl-C) or SIGTERM (docker stop): stop between two events, so no write is cut.
        tokio::spawn(async move {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
            let _ = stop_tx.send(true);
        });
        let cfg = DriverConfig {
            key,
            genesis,
            train,
            test,
            byzantine,
            max_rounds: a.report.rounds,
            json_events: a.report.json,
            eval_every: a.report.eval_every,
            join: a.join,
            allow_list: data_dir.join(crate::allow::FILE),
        };
        let result = crate::driver::run(
            cfg,
            net.clone(),
            events,
            store,
            recovered,
            metrics,
            status_tx,
            history_tx,
            stop_rx,
        )
        .await;
        let _ = net.shutdown().await;
        result
    })
}

/// What the network keeps to serve peers: the deltas of the rounds the node still uses (three,
/// two versions per validator at most, room for a few joiners) and two state snapshots; between
/// 2 MiB and 512 MiB. Older deltas are evicted, so memory stays flat however many rounds pass.
/// Gossip messages a node sees in `window` at the genesis's fastest pace (one round per
/// `min_round_ms`, at most 20 a second), with half again as margin, at most 8,192: a round carries
/// about three messages per validator (delta announcement, prevote, precommit) and a few more
/// (proposal, joins, approvals). Gossipsub's windowed caches are sized for this at start instead
/// of doubling as busier windows come (BENCHMARKS.md section 8: the digits validator is flat
/// from round 500, not yet from round 100).
fn window_messages(genesis: &Genesis, window: Duration) -> usize {
    let rounds_per_s = 1000.0 / genesis.file.timeouts.min_round_ms.max(50) as f64;
    let per_round = (3 * genesis.validators.len() + 8) as f64;
    let expected = rounds_per_s * per_round * window.as_secs_f64();
    ((expected * 1.5) as usize).min(8192)
}

fn blob_cache_bytes(genesis: &Genesis) -> usize {
    let params = genesis.model.num_params() * 4;
    let deltas = 3 * 2 * (genesis.validators.len() + 4) * (params + 4096);
    // At least two state chunks (a chunk must fit to be served). A floor far above what the
    // formula needs (it was 8 MiB) only makes a small model's node grow for more rounds before
    // its cache is full.
    (deltas + 4 * params).clamp(2 << 20, 512 << 20)
}

/// Refuses a `--listen` address whose fixed TCP or UDP port another process already holds.
/// libp2p binds its listeners with SO_REUSEPORT (for port reuse when dialling), so a second
/// node on the same port would start anyway and take half of the inbound connections; a plain
/// bind (without SO_REUSEPORT) fails on a port in use, which is what this probes. Port 0 (any)
/// is not checked.
fn refuse_ports_in_use(listen: &[gossip::Multiaddr]) -> Result<()> {
    use libp2p::multiaddr::Protocol;
    for addr in listen {
        let mut ip: Option<std::net::IpAddr> = None;
        for p in addr.iter() {
            let in_use = match p {
                Protocol::Ip4(a) => {
                    ip = Some(a.into());
                    None
                }
                Protocol::Ip6(a) => {
                    ip = Some(a.into());
                    None
                }
                Protocol::Tcp(port) if port != 0 => ip.and_then(|ip| {
                    std::net::TcpListener::bind((ip, port))
                        .err()
                        .filter(|e| e.kind() == std::io::ErrorKind::AddrInUse)
                }),
                Protocol::Udp(port) if port != 0 => ip.and_then(|ip| {
                    std::net::UdpSocket::bind((ip, port))
                        .err()
                        .filter(|e| e.kind() == std::io::ErrorKind::AddrInUse)
                }),
                _ => None,
            };
            if let Some(e) = in_use {
                anyhow::bail!(
                    "--listen {addr}: the port is already in use ({e}); is another node running \
                     with this address? Pick another port, or 0 for any"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listen_port_another_process_holds_is_refused() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let taken: gossip::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
        let err = refuse_ports_in_use(&[taken])
            .expect_err("refused")
            .to_string();
        assert!(err.contains("already in use"), "{err}");
        let any: gossip::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("addr");
        refuse_ports_in_use(&[any]).expect("port 0 is never in use");
        drop(held);
        let free: gossip::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
        refuse_ports_in_use(&[free]).expect("free again");
    }
}
