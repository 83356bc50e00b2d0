//! The simulator as a test suite: seeded runs over every scenario (CI), and one test per
//! promise the node makes, each a scenario that failed before its fix.

use super::*;

fn run(scenario: Scenario, seed: u64, nodes: usize) -> Outcome {
    Sim::new(SimConfig::new(scenario, seed, nodes))
        .expect("sim")
        .run()
}

fn assert_clean(what: &str, seed: u64, out: &Outcome) {
    assert!(
        out.violations.is_empty(),
        "{what} seed {seed}: {:?}",
        out.violations
    );
    assert!(
        out.liveness.is_none(),
        "{what} seed {seed}: {:?}",
        out.liveness
    );
}

/// CI's seeded runs: every scenario of `All` (network faults, crashes, Byzantine nodes, late
/// joiners, quorum loss, a node down, membership), 4 and 7 validators. Join floods here send
/// 10 fresh keys a round (signature checks dominate a run); the join-flood test and
/// `cohort netsim --scenario join-flood` send 100.
#[test]
fn seeded_runs_across_all_scenarios_keep_every_invariant() {
    let run = |seed: u64, nodes: usize| {
        let mut c = SimConfig::new(Scenario::All, seed, nodes);
        c.flood_per_round = c.flood_per_round.min(10);
        Sim::new(c).expect("sim").run()
    };
    let jobs: Vec<(u64, usize)> = (0..450)
        .map(|seed| (seed, 4))
        .chain((1_000..1_050).map(|seed| (seed, 7)))
        .collect();
    // Two workers (CI's machine has two cores), each every other run; every run is still one
    // seeded, single-threaded simulation, and a failure names its seed.
    std::thread::scope(|scope| {
        for worker in 0..2 {
            let (jobs, run) = (&jobs, &run);
            scope.spawn(move || {
                for &(seed, nodes) in jobs.iter().skip(worker).step_by(2) {
                    assert_clean(&format!("n={nodes}"), seed, &run(seed, nodes));
                }
            });
        }
    });
}

/// Seeds that once failed, kept as regressions (see the commit that fixed each).
#[test]
fn seeds_that_once_failed() {
    // Partition: deltas sent during the split were never sent again; the round never committed.
    assert_clean("partition", 1, &run(Scenario::Partition, 1, 4));
    // Crash: a validator restarted mid-round signed a second delta (fresh DP noise) and was
    // banned as an equivocator by its honest peers.
    for seed in [27, 36, 39] {
        assert_clean("crash", seed, &run(Scenario::Crash, seed, 4));
    }
    // Crash: a training result in flight across a restart produced a second delta.
    assert_clean("lossy", 409, &run(Scenario::Lossy, 409, 4));
    // Byzantine: once committed evidence removed a vote-forging validator, honest peers still
    // forwarding that evidence were rejected as sending "bad evidence".
    for seed in [27, 36, 50] {
        let out = run(Scenario::Byzantine, seed, 4);
        assert_clean("byzantine", seed, &out);
        assert!(
            !out.membership.removed.is_empty(),
            "seed {seed}: the offender stayed"
        );
    }
}

/// Kill 2 of 4, restart one (its state torn one round behind its ledger): every run is clean
/// and live (a re-broadcast vote is a new gossip message; gossip drops repeated bytes), and the
/// height resumes within a few vote timeouts of the restart, not a propose timeout per step:
/// the survivors' nil prevotes leave view 0 no polka, so the restarted node prevotes nil at
/// once and a quorum of precommits no value can win starts the next view at once (PROTOCOL.md
/// 3.12); in a view whose proposer is the validator still down, the propose timeout is the
/// retry one (view 0's covers training). The slowest of these 40 seeds (simulated ms): 1,562;
/// 3,946 with neither change, 3,424 with the retry timeout alone, 2,093 with 3.12 alone.
#[test]
fn a_network_that_lost_quorum_resumes_when_it_is_back() {
    let mut slowest = (0, 0);
    for seed in 0..40 {
        let out = run(Scenario::QuorumLoss, seed, 4);
        assert_clean("quorum-loss", seed, &out);
        let took = out.resumed_after_ms.expect("resumed");
        slowest = slowest.max((took, seed));
    }
    assert!(
        slowest.0 <= 1_800,
        "seed {}: resumed {} simulated ms after the restart",
        slowest.1,
        slowest.0
    );
}

/// One of four validators down costs at most half the rounds per second.
#[test]
fn a_down_validator_costs_the_others_little() {
    let rate = |o: &Outcome| o.height as f64 / o.end_ms as f64;
    let up = run(Scenario::Calm, 3, 4);
    let down = run(Scenario::OneDown, 3, 4);
    assert_clean("one-down", 3, &down);
    assert!(
        rate(&down) >= rate(&up) / 2.0,
        "one down: {} rounds in {} ms; all up: {} in {} ms",
        down.height,
        down.end_ms,
        up.height,
        up.end_ms
    );
}

/// The slow validator (node 1 trains four times longer) is waited for: its delta is in at least
/// 80% of the rounds.
#[test]
fn a_slow_honest_validator_is_not_left_out() {
    let out = run(Scenario::Calm, 5, 4);
    assert_clean("calm", 5, &out);
    for (i, n) in out.inclusions.iter().enumerate() {
        assert!(
            *n * 5 >= out.height * 4,
            "node {i} included in {n} of {} rounds",
            out.height
        );
    }
}

/// A late joiner's snapshot does not grow with the round it joins at.
#[test]
fn snapshot_size_does_not_grow_with_rounds() {
    let late = |at: Millis| {
        let mut c = SimConfig::new(Scenario::LateJoiner, 11, 4);
        c.late = Some((0, at));
        c.faults_until = at + 1_000;
        let out = Sim::new(c).expect("sim").run();
        assert_clean("late", at, &out);
        (out.height, out.max_snapshot_bytes)
    };
    // Both past the 32 recent entries kept; the absent validator is removed for downtime in
    // both (one set-changing entry each).
    let (h1, early) = late(15_000);
    let (h2, later) = late(45_000);
    assert!(h2 > 2 * h1, "rounds {h1} and {h2}");
    let diff = early.abs_diff(later) as f64 / early as f64;
    assert!(
        diff < 0.05,
        "snapshot {early} bytes at round {h1}, {later} at round {h2}"
    );
}

/// A flood of join requests from 100 fresh keys per round, besides joiners that stay up: the
/// chain goes on, newcomers never exceed f of the voting set (checked after every step), and
/// the flood keys, admitted as contributors at most 16 at a time, are never promoted (they send
/// no delta). They can delay the honest joiners (README says so).
#[test]
fn join_floods_of_fresh_keys_keep_the_chain_going_within_the_admission_bound() {
    for seed in 0..3 {
        let out = run(Scenario::JoinFlood, seed, 4);
        assert_clean("join-flood", seed, &out);
        assert!(out.height >= 10, "seed {seed}: {} rounds", out.height);
        assert!(
            out.flooded >= scenario::FLOOD_PER_ROUND * 10,
            "seed {seed}: {} fresh keys",
            out.flooded
        );
        // Under `open` the flood takes contributor slots (joins cost nothing), but a fresh key
        // that never sends a delta is never promoted: only the joiners that train can be.
        let c = SimConfig::new(Scenario::JoinFlood, seed, 4);
        let joiners = Sim::new(c).expect("sim").joiner_ids();
        assert!(
            out.membership.admitted.iter().all(|a| joiners.contains(a)),
            "seed {seed}: a flood key was promoted"
        );
        assert!(
            !out.membership.contributors.is_empty(),
            "seed {seed}: no contributor admitted"
        );
    }
}

/// Two joiners admitted and then silent for good: before the admission bound and downtime
/// removal this halted the chain (n = 6, quorum 5, 4 up); now at most f of the set after
/// admission are newcomers, and the silent ones are removed after the downtime window. A
/// Byzantine validator replaying every join request it saw does not get them admitted again.
#[test]
fn silent_joiners_never_stop_the_chain_and_are_removed() {
    for seed in 0..4 {
        for scenario in [Scenario::SilentJoiners, Scenario::ReplayedJoins] {
            let out = run(scenario, seed, 4);
            assert_clean("silent joiners", seed, &out);
            assert!(
                !out.membership.admitted.is_empty(),
                "seed {seed}: nobody admitted"
            );
            assert!(
                out.membership
                    .admitted
                    .iter()
                    .all(|a| out.membership.removed.contains(a))
                    || out.membership.admitted.len() > out.membership.removed.len(),
                "seed {seed}: removed a key never admitted"
            );
            assert!(
                !out.membership.removed.is_empty(),
                "seed {seed}: no silent joiner removed"
            );
            // No key is admitted twice: a replayed request never re-admits a removed key.
            let mut keys = out.membership.admitted.clone();
            keys.sort();
            keys.dedup();
            assert_eq!(
                keys.len(),
                out.membership.admitted.len(),
                "seed {seed}: a key admitted twice"
            );
        }
    }
}

/// A validator that signs two different deltas for a round is removed by committed evidence
/// (two signed delta headers, a few hundred bytes) within a few rounds, long before the
/// downtime window (W = 32 rounds) would remove it for having no delta included; nobody else is
/// removed.
#[test]
fn a_delta_equivocator_is_removed_by_committed_evidence() {
    for seed in 0..4 {
        let mut c = SimConfig::new(Scenario::Calm, seed, 4);
        c.faults[3] = Some(Fault::Equivocate);
        c.faults_until = 8_000;
        let out = Sim::new(c).expect("sim").run();
        assert_clean("equivocator", seed, &out);
        let [(offender, round)] = out.delta_evidence[..] else {
            panic!("seed {seed}: evidence committed {:?}", out.delta_evidence);
        };
        assert!(
            round < 16,
            "seed {seed}: evidence committed at round {round}"
        );
        assert_eq!(out.membership.removed, vec![offender], "seed {seed}");
    }
}

/// An honest contributor that trains slower than every validator (and hears of each commit a
/// hop after them) is waited for, included and promoted. Before the proposer waited for
/// contributors, its delta lost every race against the last validator's: never included,
/// never promoted (the e2e join test timed out that way in one run of eight).
#[test]
fn a_contributor_slower_than_every_validator_is_included_and_promoted() {
    for seed in 0..8 {
        let mut c = SimConfig::new(Scenario::Calm, seed, 4);
        c.joiners = 1;
        c.faults.resize(5, None);
        c.setup.rule = "nnm+median".into();
        c.net.joiner_train_ms = Some(250);
        let joiner = Sim::new(c.clone()).expect("sim").joiner_ids();
        let out = Sim::new(c).expect("sim").run();
        assert_clean("slow contributor", seed, &out);
        assert_eq!(
            out.membership.contributors, joiner,
            "seed {seed}: admitted as a contributor"
        );
        assert_eq!(out.membership.admitted, joiner, "seed {seed}: promoted");
    }
}

/// Under the `approve` policy only the joiner whose key the operators of a quorum of validators
/// approved is admitted; one approved by a quorum less one, and one approved by nobody, never
/// are, though both keep asking.
#[test]
fn only_joiners_a_quorum_of_operators_approved_are_admitted() {
    for seed in 0..4 {
        let c = SimConfig::new(Scenario::ApprovedJoins, seed, 4);
        let approved = Sim::new(c.clone()).expect("sim").joiner_ids()[0];
        let out = Sim::new(c).expect("sim").run();
        assert_clean("approved joins", seed, &out);
        assert_eq!(out.membership.admitted, vec![approved], "seed {seed}");
    }
}

/// A run is a function of its seed.
#[test]
fn a_seed_replays_the_same_run() {
    let a = run(Scenario::Mixed, 77, 4);
    let b = run(Scenario::Mixed, 77, 4);
    assert_eq!(
        (a.height, a.end_ms, a.max_snapshot_bytes),
        (b.height, b.end_ms, b.max_snapshot_bytes)
    );
    assert_eq!(a.inclusions, b.inclusions);
}

/// A Byzantine proposer whose values leave out the due removal of the silent joiners and
/// remove an honest validator instead gets no prevotes: only the silent joiners are ever
/// removed, all of them, and the chain goes on under the honest proposers.
#[test]
fn a_proposer_lying_about_removals_removes_nobody_honest() {
    for seed in 0..4 {
        let out = run(Scenario::LyingRemovals, seed, 4);
        assert_clean("lying removals", seed, &out);
        assert!(
            !out.membership.admitted.is_empty(),
            "seed {seed}: nobody admitted"
        );
        assert!(
            out.membership
                .removed
                .iter()
                .all(|r| out.membership.admitted.contains(r)),
            "seed {seed}: a genesis validator was removed"
        );
        assert!(
            out.membership
                .admitted
                .iter()
                .all(|a| out.membership.removed.contains(a)),
            "seed {seed}: a silent joiner stayed"
        );
    }
}

/// Under the `open` policy joiners start as contributors; two of three send poisoned deltas
/// (their honest delta sign-flipped and scaled by 10). Their deltas are included, but only
/// within what the robust rule tolerates: counted as Byzantine on top of the f validators, the
/// faulty inputs stay fewer than half of every value (checked after every step), and the rule
/// runs with f raised by their number, so the model learns as well as without them. Their
/// deltas are recorded as outliers, so they are never promoted; the honest contributor is, within
/// the admission bound (newcomers <= f, checked after every step).
#[test]
fn poisoned_contributors_are_included_only_within_the_robust_rule() {
    for seed in 0..3 {
        let c = SimConfig::new(Scenario::PoisonedContributors, seed, 4);
        let joiners = Sim::new(c.clone()).expect("sim").joiner_ids();
        let out = Sim::new(c).expect("sim").run();
        assert_clean("poisoned contributors", seed, &out);
        for j in &joiners {
            assert!(
                out.membership.contributors.contains(j),
                "seed {seed}: a joiner never became a contributor"
            );
        }
        assert!(
            out.poisoned_included > 0,
            "seed {seed}: no poisoned delta was ever included (the attack was not tried)"
        );
        // Their deltas are outliers against the aggregate (recorded in every value, recomputed
        // by every validator) and do not count towards promotion: only the honest one is
        // promoted.
        assert_eq!(
            out.membership.admitted,
            vec![joiners[3]],
            "seed {seed}: promoted"
        );
        // The same run with the two poisoners honest.
        let mut clean = SimConfig::new(Scenario::PoisonedContributors, seed, 4);
        clean.faults.iter_mut().for_each(|f| *f = None);
        let calm = Sim::new(clean).expect("sim").run();
        eprintln!(
            "seed {seed}: accuracy {:.3} (all honest {:.3}), {} rounds, {} poisoned deltas included, promoted {}",
            out.accuracy,
            calm.accuracy,
            out.height,
            out.poisoned_included,
            out.membership.admitted.len()
        );
        assert!(
            out.accuracy >= calm.accuracy - 0.05,
            "seed {seed}: accuracy {} with poisoned contributors, {} with honest ones",
            out.accuracy,
            calm.accuracy
        );
    }
}

/// The slowest validator (it trains longest) is down for a while and comes back: the
/// proposers wait for it again once they hear from it, so it is included again and never
/// removed for downtime. Found by the compose smoke test: a validator healed from a partition
/// was never waited for (its late deltas were ignored unheard), never included, and removed
/// after W rounds.
#[test]
fn a_validator_back_from_an_outage_is_waited_for_again() {
    for seed in 0..3 {
        let mut c = SimConfig::new(Scenario::Calm, seed, 4);
        c.outages = vec![(1, 500, Some(3_000))];
        c.faults_until = 20_000;
        let out = Sim::new(c).expect("sim").run();
        assert_clean("outage", seed, &out);
        assert!(
            out.membership.removed.is_empty(),
            "seed {seed}: removed {:?}",
            out.membership.removed
        );
        // inclusions: honest validators 0..4 as node 0 saw them.
        let back = out.inclusions[1];
        assert!(
            back * 2 >= out.height,
            "seed {seed}: node 1 included in {back} of {} rounds",
            out.height
        );
    }
}

/// Secure aggregation (masked deltas, the selection, reveals, void rounds) under crashes and
/// restarts, delays and reordering: no invariant broken (equal committed values, no honest
/// message refused) and rounds go on once the faults stop (many rounds during the faults are
/// void: masked against different rosters, or a selected member crashed before revealing).
#[test]
fn secure_aggregation_runs_keep_safety_and_liveness() {
    for (nodes, seeds) in [(4, 0..16u64), (7, 100..103)] {
        for seed in seeds {
            let out = run(Scenario::SecureAggregation, seed, nodes);
            assert_clean("secure aggregation", seed, &out);
        }
    }
}

/// The first layer's low-pass filter (genesis `lowpass_first_layer`) runs inside the commit
/// step of every node: with it on, in the plain and the secure round, under crashes, delays,
/// reordering and Byzantine validators, every honest node commits the same values (the filter
/// is deterministic) and the committed first layer moved only within the filter's band.
#[test]
fn low_passed_commits_agree_and_stay_in_the_band() {
    for scenario in [Scenario::Mixed, Scenario::SecureAggregation] {
        for seed in 0..3u64 {
            let mut cfg = SimConfig::new(scenario, seed, 4);
            cfg.setup.lowpass = Some(4);
            let out = Sim::new(cfg).expect("sim").run();
            assert_clean("low-passed first layer", seed, &out);
            let outside = out.first_layer_outside_band.expect("filter on");
            assert!(
                outside < 1e-6,
                "{scenario:?} seed {seed}: {outside} of the change outside the band"
            );
            assert!(
                out.height >= 2,
                "{scenario:?} seed {seed}: {} rounds",
                out.height
            );
        }
    }
}

/// A faulty validator that, as proposer, shows one included member a selection with it and the
/// others the same set without it (and acknowledges each accordingly), to collect the member's
/// self seed from it and the pair seeds with it from the others. No honest node reveals or
/// shares for two selections of a round (the checker's invariant), and rounds go on (those
/// the faulty proposer splits are void or commit without the victim).
#[test]
fn a_split_selection_never_gets_honest_reveals_for_two_sets() {
    let (mut splits, mut height) = (0, 0);
    for (nodes, seeds) in [(4, 0..6u64), (7, 100..102)] {
        for seed in seeds {
            let out = run(Scenario::SplitSelections, seed, nodes);
            assert_clean("split selections", seed, &out);
            splits += out.secure.split_rounds;
            height += out.height;
        }
    }
    eprintln!("split selections, 8 runs: {splits} rounds split, {height} committed");
    assert!(splits >= 8, "the attack ran: {splits} rounds split");
}

/// Selected members crash before revealing (`crash_on_reveal` alone: no other crashes, short
/// delays), once a round while faulty, back 2 s later: the rounds they were selected in commit
/// with their self seed recovered from the others' shares, not void.
#[test]
fn secure_aggregation_rounds_commit_when_a_selected_member_crashes_before_revealing() {
    let (mut crashes, mut recovered, mut void, mut height) = (0, 0, 0, 0);
    for seed in 0..4u64 {
        let mut cfg = SimConfig::new(Scenario::SecureAggregation, seed, 4);
        cfg.net.crashes = false;
        cfg.net.delay_faulty = cfg.net.delay;
        let out = Sim::new(cfg).expect("sim").run();
        assert_clean("crash on reveal", seed, &out);
        assert!(out.secure.reveal_crashes > 0, "seed {seed}: no crash");
        crashes += out.secure.reveal_crashes as u64;
        recovered += out.secure.recovered_rounds;
        void += out.secure.void_rounds;
        height += out.height;
    }
    eprintln!(
        "crash on reveal, 4 seeds: {crashes} crashes, {recovered} rounds recovered, \
         {void} void, {height} committed"
    );
    assert!(
        recovered * 8 >= crashes * 7,
        "{recovered} of {crashes} crash rounds recovered ({void} void)"
    );
    assert!(
        void * 8 <= crashes,
        "{void} void rounds for {crashes} crashes"
    );
}
