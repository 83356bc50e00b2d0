//! Cohort: a peer-to-peer decentralized training node, as a library whose one entry point is
//! [`Cohort`]: the `cohort` binary is `Cohort::new().main()`, and a crate of one's own builds the
//! same command line with its own models registered ([`Cohort::with_model`], see
//! `examples/custom_model.rs`).
//!
//! Modules: `cli` (the command line) hands each subcommand to `cmd`; a node is the sans-IO core
//! in `protocol` driven by the tokio shell in `driver` over the `gossip` crate's network, with
//! its ledger and state in `store`; `netsim` runs many cores in one seeded process.

mod allow;
mod api;
mod chain;
mod cli;
mod cmd;
mod custom;
mod driver;
mod genesis;
mod history;
mod keys;
mod metrics;
mod netsim;
mod protocol;
mod store;
mod wire;

pub use custom::{Cohort, PREFIX as CUSTOM_PREFIX};
