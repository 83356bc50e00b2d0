//! `cohort`: a peer-to-peer decentralized training node.
//!
//! The binary is thin: it parses the command line once into typed arguments and hands each
//! subcommand to its module under [`cmd`]. Errors print as one line and exit non-zero.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Cohort: decentralized training over libp2p with BFT agreement on every round's aggregate.
#[derive(Parser, Debug)]
#[command(name = "cohort", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train one model on the whole training set: the centralized baseline.
    Centralized(cmd::centralized::Args),
    /// Simulate N nodes in one process on the same math as the networked node (no network).
    Simulate(cmd::simulate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Centralized(a) => cmd::centralized::run(a),
        Command::Simulate(a) => cmd::simulate::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
