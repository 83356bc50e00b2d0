//! The `cohort` command line: parsed once into typed arguments, each subcommand handed to its
//! module under [`cmd`]. Errors print as one line and exit non-zero.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd;

/// Cohort: decentralized training over libp2p with BFT agreement on every round's aggregate.
#[derive(Parser, Debug)]
#[command(
    name = "cohort",
    version,
    about = "Cohort: decentralized training. Each node trains on its own data; signed model deltas are \
             gossiped over libp2p and every round's robust aggregate is agreed by BFT consensus.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train one model on the whole training set: the centralized baseline.
    Centralized(cmd::centralized::Args),
    /// Train the character transformer on text (the language-model task's centralized baseline).
    LmTrain(cmd::lm::Args),
    /// Generate text from a language-model file.
    Sample(cmd::sample::Args),
    /// Simulate N nodes in one process on the same math as the networked node (no network).
    Simulate(cmd::simulate::Args),
    /// Generate a node key (the libp2p identity and the validator key).
    Keygen(cmd::keygen::Args),
    /// Write a genesis file: chain id, model and training configuration, validators.
    Genesis(cmd::genesis::Args),
    /// Run a node.
    Run(Box<cmd::run::Args>),
    /// Seeded whole-network simulation: node cores, a faulty network, Byzantine nodes, invariants.
    Netsim(cmd::netsim::Args),
    /// Start a local multi-process testnet on loopback and report every round.
    Testnet(cmd::testnet::Args),
    /// Write a local testnet's keys and genesis into one directory (once; the compose init).
    TestnetInit(cmd::testnet_init::Args),
    /// Show a running node's status.
    Status(cmd::admin::StatusArgs),
    /// Re-check a data dir's ledger from genesis and its stored model.
    Verify(cmd::admin::VerifyArgs),
    /// Who contributed what: per participant, from the verified ledger.
    Ledger(cmd::ledger::Args),
    /// Export the committed model as safetensors.
    Export(cmd::admin::ExportArgs),
    /// Approve joining keys (the `approve` membership policy): adds them to the node's allow-list.
    Approve(cmd::admin::ApproveArgs),
}

/// Parses `args` (the program name first) and runs the command.
pub(crate) fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // candle's CPU matmul looks up its thread count on every call: RAYON_NUM_THREADS, or else
    // a re-read of /proc/cpuinfo (~33 us a call), and splitting the 2NN's small matmuls over
    // threads costs more than it saves. One thread per process trains the 2NN ~2x faster
    // (49k -> 103k samples/s here) and suits a testnet of many node processes; set
    // RAYON_NUM_THREADS yourself to use more (e.g. for the CNN on a large machine).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: nothing else runs yet (the tokio runtime and every thread pool start later),
        // so no thread can read the environment while it changes.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    let cli = Cli::parse_from(args);
    tune_malloc(matches!(cli.command, Command::Run(_)));
    // The simulator's Byzantine nodes make honest ones warn all the time: errors only by default.
    let default_filter = match cli.command {
        Command::Netsim(_) => "error",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Centralized(a) => cmd::centralized::run(a),
        Command::LmTrain(a) => cmd::lm::run(a),
        Command::Sample(a) => cmd::sample::run(a),
        Command::Simulate(a) => cmd::simulate::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Genesis(a) => cmd::genesis::run(a),
        Command::Run(a) => cmd::run::run(*a),
        Command::Testnet(a) => cmd::testnet::run(a),
        Command::TestnetInit(a) => cmd::testnet_init::run(a).map(|_| ()),
        Command::Netsim(a) => cmd::netsim::run(a),
        Command::Status(a) => cmd::admin::status(a),
        Command::Verify(a) => cmd::admin::verify(a),
        Command::Export(a) => cmd::admin::export(a),
        Command::Ledger(a) => cmd::ledger::run(a),
        Command::Approve(a) => cmd::admin::approve(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's malloc, set for a node's allocation pattern before any thread starts: blocks from
/// 128 KiB up (deltas, models, evaluation batches, data) are mapped and unmapped on their own
/// instead of raising the threshold as they are freed (glibc's default, after which such blocks
/// stay in the heap and fragment it). That lowered a 2NN node's peak RSS on MNIST by about a
/// tenth (BENCHMARKS.md section 8).
///
/// A node (`run`) allocates from one arena. With two, live data moved from one arena to the
/// other as rounds went (the main arena's bytes in use rose while the second's fell; most
/// likely as the two tokio workers take turns polling the driver), and the arena it left kept
/// the pages its remaining blocks pinned: a digits
/// validator's peak RSS rose by 1.06 MB from round 100 to round 5,000, against 0.27-0.39 MB
/// with one arena, all of it before round ~600 (BENCHMARKS.md section 8). Other commands (the
/// simulator, training runs) keep two. An operator's own glibc tunables
/// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`) win over these.
fn tune_malloc(node: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread runs yet.
    unsafe {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            libc::mallopt(libc::M_ARENA_MAX, if node { 1 } else { 2 });
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = node;
}

/// Hands the allocator's free pages back to the kernel every `every`, for as long as the process
/// runs. glibc returns memory only from the top of its heap on `free`, so a burst of small blocks
/// (gossip messages, deltas of a small model) that are freed out of order leaves free pages
/// resident: RSS stays at the burst's high-water mark while the live heap falls back.
/// `malloc_trim(0)` releases every whole free page in every arena (`madvise(MADV_DONTNEED)`);
/// pages that still hold a live block stay (BENCHMARKS.md section 8, the digits validator from
/// round 100 to 5,000). Its cost per call was not measured.
pub(crate) async fn trim_malloc_every(every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim takes the arenas' locks itself; it is safe from any thread.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the whole command line (unique flag names and aliases, e.g. a
    /// `--dataset` alias beside another `--dataset`), which otherwise fire only when a user runs
    /// the subcommand.
    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
