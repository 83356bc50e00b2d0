//! `cohort`: a peer-to-peer decentralized training node. The command line lives in the library
//! ([`node::Cohort`]), so a crate of one's own can build the same binary with its own models.

fn main() -> std::process::ExitCode {
    node::Cohort::new().main()
}
