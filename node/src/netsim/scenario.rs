//! Named scenarios: which faults a run injects, and the genesis it runs.

use anyhow::Result;
use consensus::ValidatorId;

use super::node::Fault;
use crate::genesis::Genesis;
use crate::protocol::Millis;

/// A named set of faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// No faults.
    Calm,
    /// Message loss, duplication and reordering.
    Lossy,
    /// Partitions that heal.
    Partition,
    /// Crashes and restarts from the store.
    Crash,
    /// f Byzantine validators, each with a behaviour drawn from the seed.
    Byzantine,
    /// A validator that starts late with an empty store and must sync.
    LateJoiner,
    /// All of the above at once.
    Mixed,
    /// Two of the validators crash, one comes back: a quorum again (n = 4).
    QuorumLoss,
    /// One validator is down from the start and never comes back.
    OneDown,
    /// Each run one of the above, by run index.
    All,
    /// Secure aggregation (mean of masked deltas) with crashes, delays and reordering.
    SecureAggregation,
    /// Secure aggregation with f validators that, as proposer, show one member a selection
    /// that includes it and everyone else one that does not (`Fault::SplitSelections`).
    SplitSelections,
    /// Membership: fresh keys flood join requests (they stay up).
    JoinFlood,
    /// Membership: fresh keys join, are admitted, then go silent for good.
    SilentJoiners,
    /// Membership: silent joiners, and a Byzantine validator replaying every join request it saw.
    ReplayedJoins,
    /// Membership: silent joiners, and a Byzantine proposer that leaves their removal out and
    /// removes an honest validator instead.
    LyingRemovals,
    /// Membership under the `approve` policy: three joiners that stay up, approved by every
    /// validator's operator, by one short of a quorum, and by none.
    ApprovedJoins,
    /// Membership under the `open` policy: four joiners start as contributors; three of them
    /// send poisoned deltas (sign-flipped, 10x), as contributors and once promoted.
    PoisonedContributors,
}

impl Scenario {
    /// The scenarios `All` cycles over.
    pub const CYCLE: [Scenario; 15] = [
        Scenario::Calm,
        Scenario::Lossy,
        Scenario::Partition,
        Scenario::Crash,
        Scenario::Byzantine,
        Scenario::LateJoiner,
        Scenario::Mixed,
        Scenario::QuorumLoss,
        Scenario::OneDown,
        Scenario::JoinFlood,
        Scenario::SilentJoiners,
        Scenario::ReplayedJoins,
        Scenario::LyingRemovals,
        Scenario::ApprovedJoins,
        Scenario::PoisonedContributors,
    ];
}

/// Network and machine faults of a run's faulty phase.
#[derive(Debug, Clone)]
pub struct NetFaults {
    /// Message loss while faulty.
    pub loss: f64,
    /// Duplication while faulty.
    pub duplicate: f64,
    /// Delay range after the faults stop, ms.
    pub delay: (Millis, Millis),
    /// Delay range while faulty (wide: reordering), ms.
    pub delay_faulty: (Millis, Millis),
    /// Partitions while faulty.
    pub partitions: bool,
    /// Crashes while faulty.
    pub crashes: bool,
    /// How long each joiner's local training takes, if not the default (slower than every
    /// validator's, say).
    pub joiner_train_ms: Option<Millis>,
    /// Under secure aggregation, while faulty: a node about to publish its reveal crashes
    /// instead (selected, then gone before revealing), once a round, back after 2 s.
    pub crash_on_reveal: bool,
    /// Every crash lands inside the node's last commit: after the ledger append, before the
    /// state write, so it restarts with its state one round behind its ledger.
    pub torn_crashes: bool,
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed of everything.
    pub seed: u64,
    /// Genesis validators.
    pub nodes: usize,
    /// Extra nodes that ask to join.
    pub joiners: usize,
    /// Byzantine behaviour per node index.
    pub faults: Vec<Option<Fault>>,
    /// What the network and the machines do while faulty.
    pub net: NetFaults,
    /// When faults stop.
    pub faults_until: Millis,
    /// Liveness bound after that.
    pub liveness_ms: Millis,
    /// Rounds every honest node must commit after the faults stop.
    pub rounds_after: u64,
    /// Node started late (with an empty store), and when.
    pub late: Option<(usize, Millis)>,
    /// Joiners crash for good at this time.
    pub joiners_silent_at: Option<Millis>,
    /// Crashes at fixed times: (node, crash at, back at; None = never).
    pub outages: Vec<(usize, Millis, Option<Millis>)>,
    /// What the genesis sets: rule, membership policy, secure aggregation.
    pub setup: Setup,
    /// Per joiner, how many validators (the first ones) approve its key.
    pub approved_by: Vec<usize>,
    /// Fresh-key join requests a flooding node sends per committed round.
    pub flood_per_round: usize,
    /// End the run as soon as node 0 commits this height (comparisons at one height).
    pub stop_at: Option<u64>,
}

/// The genesis settings a scenario chooses.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Aggregation rule.
    pub rule: String,
    /// Membership policy (genesis `[membership] policy`).
    pub policy: String,
    /// Genesis `[privacy] secure_aggregation`.
    pub secure_aggregation: bool,
    /// Node-level DP noise on every plain delta (tiny; makes a retrained delta differ).
    pub node_noise: bool,
    /// The data partition (default: the demo's Dirichlet 0.5).
    pub partition: Option<String>,
    /// Genesis `[training] lowpass_first_layer` (default: off).
    pub lowpass: Option<usize>,
}

impl Setup {
    /// Secure aggregation: only the mean can be unmasked, and contributors are not on a
    /// roster (the closed policy).
    fn secure() -> Setup {
        Setup {
            rule: "mean".into(),
            policy: "closed".into(),
            secure_aggregation: true,
            node_noise: false,
            partition: None,
            lowpass: None,
        }
    }
}

/// The join-flood scenario's fresh keys per round.
pub const FLOOD_PER_ROUND: usize = 100;

impl SimConfig {
    /// The settings of `scenario` for run `seed` with `nodes` validators. `All` picks by seed.
    pub fn new(scenario: Scenario, seed: u64, nodes: usize) -> SimConfig {
        let scenario = match scenario {
            Scenario::All => Scenario::CYCLE[(seed % Scenario::CYCLE.len() as u64) as usize],
            s => s,
        };
        let f = (nodes.saturating_sub(1)) / 3;
        let mut c = SimConfig {
            seed,
            nodes,
            joiners: 0,
            faults: vec![None; nodes],
            net: NetFaults {
                loss: 0.0,
                duplicate: 0.0,
                delay: (2, 30),
                delay_faulty: (2, 30),
                partitions: false,
                crashes: false,
                joiner_train_ms: None,
                crash_on_reveal: false,
                torn_crashes: false,
            },
            faults_until: 4_000,
            liveness_ms: 40_000,
            rounds_after: 3,
            late: None,
            joiners_silent_at: None,
            outages: Vec::new(),
            setup: Setup {
                // Sample-weighted and not: inflated claims must stay bounded under both.
                rule: if seed.is_multiple_of(2) {
                    "nnm+median"
                } else {
                    "mean"
                }
                .into(),
                policy: "open".into(),
                secure_aggregation: false,
                node_noise: true,
                partition: None,
                lowpass: None,
            },
            stop_at: None,
            approved_by: Vec::new(),
            flood_per_round: 0,
        };
        let mut rng = model::rng::Rng::derive(seed, 0xFA17);
        let byzantine = |c: &mut SimConfig, rng: &mut model::rng::Rng| {
            for i in nodes - f..nodes {
                c.faults[i] = Some(Fault::ALL[rng.below(Fault::ALL.len())]);
            }
        };
        match scenario {
            Scenario::Calm | Scenario::All => {}
            Scenario::Lossy => {
                c.net.loss = 0.2;
                c.net.duplicate = 0.1;
                c.net.delay_faulty = (1, 400);
            }
            Scenario::Partition => c.net.partitions = true,
            Scenario::Crash => {
                c.net.crashes = true;
                // Every other run's crashes land inside a commit (state behind the ledger).
                c.net.torn_crashes = seed % 2 == 1;
            }
            Scenario::Byzantine => byzantine(&mut c, &mut rng),
            Scenario::LateJoiner => c.late = Some((0, 3_000)),
            Scenario::SplitSelections => {
                c.setup = Setup::secure();
                for i in nodes - f..nodes {
                    c.faults[i] = Some(Fault::SplitSelections);
                }
            }
            Scenario::SecureAggregation => {
                c.setup = Setup::secure();
                c.net.crashes = true;
                c.net.crash_on_reveal = true;
                c.net.delay_faulty = (1, 300);
                c.faults_until = 8_000;
            }
            Scenario::Mixed => {
                c.net.loss = 0.1;
                c.net.duplicate = 0.05;
                c.net.delay_faulty = (1, 300);
                c.net.partitions = true;
                c.net.crashes = true;
                c.net.torn_crashes = seed % 2 == 1;
                byzantine(&mut c, &mut rng);
            }
            Scenario::QuorumLoss => {
                let (a, b) = (nodes - 1, nodes - 2);
                c.outages = vec![(a, 1_000, None), (b, 1_000, Some(3_000))];
                c.faults_until = 3_000;
                // The restarted node's state is behind its ledger, and the others are stuck at
                // its height: they must still serve it their state.
                c.net.torn_crashes = true;
                // Back within a few timeouts once 2f + 1 are up again.
                c.liveness_ms = 10_000;
            }
            Scenario::OneDown => {
                // Long enough that the steady state (the down node skipped) dominates.
                c.outages = vec![(nodes - 1, 0, None)];
                c.faults_until = 15_000;
            }
            Scenario::JoinFlood => {
                c.joiners = 4;
                c.faults.resize(nodes + 4, None);
                // The first joiner floods fresh keys (an outsider: the admission bound assumes
                // the older validators are up).
                c.faults[nodes] = Some(Fault::FloodJoins);
                c.flood_per_round = FLOOD_PER_ROUND;
                c.faults_until = 12_000;
            }
            Scenario::PoisonedContributors => {
                c.joiners = 4;
                c.faults.resize(nodes + 4, None);
                for i in nodes..nodes + 3 {
                    c.faults[i] = Some(Fault::Poison);
                }
                c.faults_until = 12_000;
            }
            Scenario::ApprovedJoins => {
                c.joiners = 3;
                c.setup.policy = "approve".into();
                let quorum = nodes - f;
                c.approved_by = vec![nodes, quorum - 1, 0];
                c.faults_until = 10_000;
            }
            Scenario::SilentJoiners | Scenario::ReplayedJoins | Scenario::LyingRemovals => {
                c.joiners = 2;
                c.faults.resize(nodes + 2, None);
                c.joiners_silent_at = Some(3_000);
                // Long enough for admitted joiners to be removed (W = 32 rounds).
                c.faults_until = 25_000;
                match scenario {
                    Scenario::ReplayedJoins => c.faults[nodes - 1] = Some(Fault::ReplayJoins),
                    Scenario::LyingRemovals => {
                        c.faults[nodes - 1] = Some(Fault::LyingRemovals);
                        // Its turns cost a view change each: more time to reach the removal.
                        c.faults_until = 45_000;
                    }
                    _ => {}
                }
            }
        }
        c.faults.resize(nodes + c.joiners, None);
        if c.joiners > 0 && c.setup.policy == "open" {
            // Contributors are included (and promoted) only under a robust rule.
            c.setup.rule = "nnm+median".into();
        }
        c
    }

    /// When node `i` starts.
    pub fn start_at(&self, i: usize) -> Millis {
        match self.late {
            Some((late, at)) if late == i => at,
            _ => 0,
        }
    }
}

/// The genesis of a simulated network: the digits MLP, two local steps of 16, fast timeouts.
pub fn genesis(ids: &[ValidatorId], c: &SimConfig) -> Result<Genesis> {
    let mut g = crate::genesis::demo("cohort-netsim", ids);
    g.seed = c.seed;
    g.checkpoint_every = 0;
    g.training.local_steps = Some(2);
    g.training.batch = 16;
    g.training.rule = c.setup.rule.clone();
    g.training.error_feedback = false;
    // Node-level noise: each delta differs with the secret noise seed, so a node that trained a
    // round twice (a restart) would sign two different deltas. Under secure aggregation the
    // fresh masks do that (node-level DP is refused there).
    if c.setup.secure_aggregation {
        g.privacy.secure_aggregation = true;
        // The fixed-point scale follows samples / max_samples: keep it near the real claims.
        g.training.max_samples = 2_000;
    } else if c.setup.node_noise {
        g.training.dp = "clip:10,noise:0.0001".into();
    }
    g.timeouts.propose_ms = 1_000;
    g.timeouts.propose_per_view_ms = 500;
    g.timeouts.vote_ms = 500;
    g.timeouts.vote_per_view_ms = 250;
    g.timeouts.collect_ms = 100;
    g.timeouts.max_ms = 8_000;
    g.timeouts.min_round_ms = 0;
    g.membership.downtime_window = 32;
    g.membership.policy = c.setup.policy.clone();
    g.training.lowpass_first_layer = c.setup.lowpass;
    if let Some(p) = &c.setup.partition {
        g.model.partition = p.clone();
    }
    g.membership.promote_after = 2;
    // Joins carry real proof of work; 4 bits keeps a flood of 100 keys a round cheap to simulate.
    g.membership.join_work_bits = 4;
    g.check()
}
