//! Table-driven tests of each rule of the state machine (PROTOCOL.md section 3), the WAL
//! recovery, certificates, evidence and input rejection. No async, no clock: each case is a
//! list of inputs and the expected outputs and state.

use crate::*;

const N: usize = 4;

struct Net {
    chain: ChainId,
    set: ValidatorSet,
}

fn vid(i: u8) -> ValidatorId {
    ValidatorId([i + 1; 32])
}

impl Net {
    fn new() -> Self {
        Net {
            chain: ChainId::new("table").unwrap(),
            set: ValidatorSet::new((0..N as u8).map(vid).collect()).unwrap(),
        }
    }

    fn params(&self) -> Params {
        Params {
            chain_id: self.chain.clone(),
            timeouts: Timeouts::default(),
            skip_proposers: Vec::new(),
        }
    }

    /// Validator by position in the sorted set.
    fn member(&self, i: usize) -> ValidatorId {
        self.set.members()[i]
    }

    fn signer(&self, id: ValidatorId) -> InsecureTestSigner {
        InsecureTestSigner::new(id)
    }

    fn machine(&self, me: usize) -> Consensus {
        Consensus::new(
            self.params(),
            Height(1),
            self.set.clone(),
            Box::new(self.signer(self.member(me))),
            Box::new(InsecureTestVerifier),
        )
    }

    fn vote(&self, who: usize, view: u32, kind: VoteKind, value: Option<&Value>) -> SignedVote {
        let id = self.member(who);
        Vote {
            height: Height(1),
            view: View(view),
            kind,
            value: value.map(Value::id),
            validator: id,
        }
        .sign(&self.chain, &self.signer(id))
    }

    fn proposal(&self, view: u32, value: &Value, valid_round: Option<u32>) -> SignedProposal {
        let proposer = self.set.proposer(Height(1), View(view));
        Proposal {
            height: Height(1),
            view: View(view),
            value: value.clone(),
            valid_round: valid_round.map(View),
            proposer,
        }
        .sign(&self.chain, &self.signer(proposer))
    }
}

fn value(tag: u8) -> Value {
    Value(vec![tag; 8])
}

fn apply_all(m: &mut Consensus, inputs: Vec<Input>) -> Vec<Output> {
    let mut out = Vec::new();
    for input in inputs {
        match m.apply(input.clone()) {
            Ok(o) => out.extend(o),
            Err(e) => panic!("input {input:?} refused: {e}"),
        }
    }
    out
}

fn own_votes(out: &[Output]) -> Vec<(VoteKind, View, Option<ValueId>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Broadcast(Message::Vote(sv)) => {
                Some((sv.vote.kind, sv.vote.view, sv.vote.value))
            }
            _ => None,
        })
        .collect()
}

fn timeouts(out: &[Output]) -> Vec<(TimeoutStep, View)> {
    out.iter()
        .filter_map(|o| match o {
            Output::ScheduleTimeout { timeout, .. } => Some((timeout.step, timeout.view)),
            _ => None,
        })
        .collect()
}

/// Every Broadcast of an own signed message is preceded by its Persist.
fn assert_persist_before_broadcast(out: &[Output], me: ValidatorId) {
    for (i, o) in out.iter().enumerate() {
        let entry = match o {
            Output::Broadcast(Message::Vote(sv)) if sv.vote.validator == me => WalEntry::Vote(*sv),
            Output::Broadcast(Message::Proposal(sp)) if sp.proposal.proposer == me => {
                WalEntry::Proposal(sp.clone())
            }
            _ => continue,
        };
        assert!(
            out[..i].contains(&Output::Persist(entry)),
            "broadcast {i} not persisted first: {out:?}"
        );
    }
}

/// Node 0 (not the proposer of view 0) moved to view 0, then `inputs`.
fn started(net: &Net, inputs: Vec<Input>) -> (Consensus, Vec<Output>) {
    let mut m = net.machine(0);
    let mut out = apply_all(&mut m, vec![Input::StartHeight]);
    out.extend(apply_all(&mut m, inputs));
    (m, out)
}

fn verdict(v: &Value, valid: bool) -> Input {
    Input::ValueVerdict { id: v.id(), valid }
}

fn timeout(view: u32, step: TimeoutStep) -> Input {
    Input::TimeoutElapsed(Timeout {
        height: Height(1),
        view: View(view),
        step,
    })
}

/// Inputs that make node 0 lock on `a` in view 0 and move to view 1 (precommit timeout).
fn locked_on_a_then_view_1(net: &Net, a: &Value) -> Vec<Input> {
    use VoteKind::*;
    vec![
        Input::Proposal(net.proposal(0, a, None)),
        verdict(a, true),
        Input::Vote(net.vote(1, 0, Prevote, Some(a))),
        Input::Vote(net.vote(2, 0, Prevote, Some(a))),
        Input::Vote(net.vote(1, 0, Precommit, None)),
        Input::Vote(net.vote(2, 0, Precommit, None)),
        timeout(0, TimeoutStep::Precommit),
    ]
}

#[test]
fn start_round_lines_11_to_21() {
    let net = Net::new();
    // Non-proposer: timers only.
    let (m, out) = started(&net, vec![]);
    assert_eq!(
        timeouts(&out),
        vec![
            (TimeoutStep::Rebroadcast, View(0)),
            (TimeoutStep::Propose, View(0))
        ]
    );
    assert!(!out.iter().any(|o| matches!(o, Output::GetValue { .. })));
    assert_eq!((m.view(), m.step()), (View(0), Step::Propose));

    // Proposer of view 0 (member 1 at height 1): asks for a value, then proposes it,
    // persisting first, with valid_round -1.
    let me = net.member(1);
    let mut p = net.machine(1);
    let out = apply_all(&mut p, vec![Input::StartHeight]);
    assert!(out.contains(&Output::GetValue {
        height: Height(1),
        view: View(0)
    }));
    // A stale answer (other view) is ignored.
    let stale = apply_all(
        &mut p,
        vec![Input::ProposeValue {
            height: Height(1),
            view: View(3),
            value: value(9),
        }],
    );
    assert!(stale.is_empty());
    let out = apply_all(
        &mut p,
        vec![Input::ProposeValue {
            height: Height(1),
            view: View(0),
            value: value(7),
        }],
    );
    assert_persist_before_broadcast(&out, me);
    let proposed: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Broadcast(Message::Proposal(sp)) => Some(sp.proposal.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(proposed.len(), 1);
    assert_eq!(proposed[0].valid_round, None);
    assert_eq!(proposed[0].value, value(7));
    // The proposer prevotes its own proposal at once (line 22).
    assert_eq!(
        own_votes(&out),
        vec![(VoteKind::Prevote, View(0), Some(value(7).id()))]
    );
}

#[test]
fn prevote_rules_lines_22_to_33_table() {
    use VoteKind::*;
    let net = Net::new();
    let (a, b) = (value(0xa), value(0xb));
    // (case, inputs after start, expected prevotes of node 0 in the last view, skip lock)
    type Case<'a> = (
        &'a str,
        Vec<Input>,
        Vec<(VoteKind, View, Option<ValueId>)>,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            "22: fresh valid proposal, unlocked -> prevote id",
            vec![
                Input::Proposal(net.proposal(0, &a, None)),
                verdict(&a, true),
            ],
            vec![(Prevote, View(0), Some(a.id()))],
            false,
        ),
        (
            "22: fresh invalid proposal -> prevote nil",
            vec![
                Input::Proposal(net.proposal(0, &a, None)),
                verdict(&a, false),
            ],
            vec![(Prevote, View(0), None)],
            false,
        ),
        (
            "22: verdict pending -> no prevote yet",
            vec![Input::Proposal(net.proposal(0, &a, None))],
            vec![],
            false,
        ),
        (
            "22: locked on a, fresh b -> prevote nil",
            [
                locked_on_a_then_view_1(&net, &a),
                vec![
                    Input::Proposal(net.proposal(1, &b, None)),
                    verdict(&b, true),
                ],
            ]
            .concat(),
            vec![(Prevote, View(1), None)],
            false,
        ),
        (
            "22: locked on a, fresh a -> prevote a",
            [
                locked_on_a_then_view_1(&net, &a),
                vec![Input::Proposal(net.proposal(1, &a, None))],
            ]
            .concat(),
            vec![(Prevote, View(1), Some(a.id()))],
            false,
        ),
        (
            "broken variant: locked on a, fresh b -> prevote b",
            [
                locked_on_a_then_view_1(&net, &a),
                vec![
                    Input::Proposal(net.proposal(1, &b, None)),
                    verdict(&b, true),
                ],
            ]
            .concat(),
            vec![(Prevote, View(1), Some(b.id()))],
            true,
        ),
        (
            "28: locked on a at 0, polka b at 1, b re-proposed with vr 1 -> prevote b (unlock)",
            [
                locked_on_a_then_view_1(&net, &a),
                vec![
                    Input::Proposal(net.proposal(1, &b, None)),
                    verdict(&b, true),
                    Input::Vote(net.vote(1, 1, Prevote, Some(&b))),
                    Input::Vote(net.vote(2, 1, Prevote, Some(&b))),
                    Input::Vote(net.vote(3, 1, Prevote, Some(&b))),
                    Input::Vote(net.vote(1, 1, Precommit, None)),
                    Input::Vote(net.vote(2, 1, Precommit, None)),
                    timeout(1, TimeoutStep::Precommit),
                    Input::Proposal(net.proposal(2, &b, Some(1))),
                ],
            ]
            .concat(),
            vec![(Prevote, View(2), Some(b.id()))],
            false,
        ),
        (
            "28: re-proposal without the polka at vr -> no prevote yet",
            vec![
                timeout(0, TimeoutStep::Precommit),
                Input::Proposal(net.proposal(1, &b, Some(0))),
                verdict(&b, true),
            ],
            vec![],
            false,
        ),
        (
            "28: locked on a at 1, b re-proposed with older polka at 0 -> prevote nil",
            vec![
                // polka for b in view 0 (seen while in view 0, but b arrives late)
                Input::Vote(net.vote(1, 0, Prevote, Some(&b))),
                Input::Vote(net.vote(2, 0, Prevote, Some(&b))),
                Input::Vote(net.vote(3, 0, Prevote, Some(&b))),
                timeout(0, TimeoutStep::Propose),
                timeout(0, TimeoutStep::Prevote),
                Input::Vote(net.vote(1, 0, Precommit, None)),
                Input::Vote(net.vote(2, 0, Precommit, None)),
                timeout(0, TimeoutStep::Precommit),
                // lock on a in view 1
                Input::Proposal(net.proposal(1, &a, None)),
                verdict(&a, true),
                Input::Vote(net.vote(1, 1, Prevote, Some(&a))),
                Input::Vote(net.vote(2, 1, Prevote, Some(&a))),
                Input::Vote(net.vote(1, 1, Precommit, None)),
                Input::Vote(net.vote(2, 1, Precommit, None)),
                timeout(1, TimeoutStep::Precommit),
                Input::Proposal(net.proposal(2, &b, Some(0))),
                verdict(&b, true),
            ],
            vec![(Prevote, View(2), None)],
            false,
        ),
    ];
    for (name, inputs, want, broken) in cases {
        let mut m = net.machine(0);
        if broken {
            m.break_locking_rule_for_testing();
        }
        let mut out = apply_all(&mut m, vec![Input::StartHeight]);
        out.extend(apply_all(&mut m, inputs));
        let last_view = m.view();
        let got: Vec<_> = own_votes(&out)
            .into_iter()
            .filter(|(k, v, _)| *k == Prevote && *v == last_view)
            .collect();
        assert_eq!(got, want, "{name}");
        assert_persist_before_broadcast(&out, net.member(0));
    }
}

#[test]
fn lock_and_precommit_rules_lines_34_to_48_table() {
    use VoteKind::*;
    let net = Net::new();
    let a = value(0xa);
    let proposal_a = || {
        vec![
            Input::Proposal(net.proposal(0, &a, None)),
            verdict(&a, true),
        ]
    };
    // (case, inputs, expected precommits, expected timeouts scheduled after start,
    //  expected lock)
    type Case<'a> = (
        &'a str,
        Vec<Input>,
        Vec<(VoteKind, View, Option<ValueId>)>,
        Vec<(TimeoutStep, View)>,
        Option<(View, ValueId)>,
    );
    let cases: Vec<Case> = vec![
        (
            "34: quorum of mixed prevotes while prevote -> schedule prevote timeout",
            [
                proposal_a(),
                vec![
                    Input::Vote(net.vote(1, 0, Prevote, None)),
                    Input::Vote(net.vote(2, 0, Prevote, Some(&a))),
                ],
            ]
            .concat(),
            vec![],
            vec![(TimeoutStep::Prevote, View(0))],
            None,
        ),
        (
            "36: polka for the proposal while prevote -> lock, precommit id",
            [
                proposal_a(),
                vec![
                    Input::Vote(net.vote(1, 0, Prevote, Some(&a))),
                    Input::Vote(net.vote(2, 0, Prevote, Some(&a))),
                ],
            ]
            .concat(),
            vec![(Precommit, View(0), Some(a.id()))],
            // Line 36 fires first and leaves the prevote step, so line 34 no longer applies.
            vec![],
            Some((View(0), a.id())),
        ),
        (
            "36: polka without the proposal -> nothing",
            vec![
                Input::Vote(net.vote(1, 0, Prevote, Some(&a))),
                Input::Vote(net.vote(2, 0, Prevote, Some(&a))),
                Input::Vote(net.vote(3, 0, Prevote, Some(&a))),
                timeout(0, TimeoutStep::Propose),
            ],
            vec![],
            vec![(TimeoutStep::Prevote, View(0))],
            None,
        ),
        (
            "36: polka for an invalid value -> no lock",
            vec![
                Input::Proposal(net.proposal(0, &a, None)),
                verdict(&a, false),
                Input::Vote(net.vote(1, 0, Prevote, Some(&a))),
                Input::Vote(net.vote(2, 0, Prevote, Some(&a))),
                Input::Vote(net.vote(3, 0, Prevote, Some(&a))),
            ],
            vec![],
            vec![(TimeoutStep::Prevote, View(0))],
            None,
        ),
        (
            "44: quorum of nil prevotes while prevote -> precommit nil",
            vec![
                timeout(0, TimeoutStep::Propose),
                Input::Vote(net.vote(1, 0, Prevote, None)),
                Input::Vote(net.vote(2, 0, Prevote, None)),
            ],
            vec![(Precommit, View(0), None)],
            // Line 44 fires first and leaves the prevote step, so line 34 no longer applies.
            vec![],
            None,
        ),
        (
            // (a can still win with node 0's precommit; when no value can, 3.12 moves on.)
            "47: quorum of mixed precommits -> schedule precommit timeout",
            vec![
                Input::Vote(net.vote(1, 0, Precommit, Some(&a))),
                Input::Vote(net.vote(2, 0, Precommit, Some(&a))),
                Input::Vote(net.vote(3, 0, Precommit, None)),
            ],
            vec![],
            vec![(TimeoutStep::Precommit, View(0))],
            None,
        ),
        (
            // (a can still get a polka with node 3's prevote; 3.12 covers when none can.)
            "57: timeout propose -> prevote nil; 61: timeout prevote -> precommit nil",
            vec![
                timeout(0, TimeoutStep::Propose),
                Input::Vote(net.vote(1, 0, Prevote, Some(&a))),
                Input::Vote(net.vote(2, 0, Prevote, Some(&a))),
                timeout(0, TimeoutStep::Prevote),
            ],
            vec![(Precommit, View(0), None)],
            vec![(TimeoutStep::Prevote, View(0))],
            None,
        ),
        (
            "57/61: stale timeouts of another view do nothing",
            vec![
                timeout(3, TimeoutStep::Propose),
                timeout(3, TimeoutStep::Prevote),
                timeout(3, TimeoutStep::Precommit),
            ],
            vec![],
            vec![],
            None,
        ),
    ];
    for (name, inputs, want_precommits, want_timeouts, want_lock) in cases {
        let (m, out) = started(&net, inputs);
        let precommits: Vec<_> = own_votes(&out)
            .into_iter()
            .filter(|(k, _, _)| *k == Precommit)
            .collect();
        assert_eq!(precommits, want_precommits, "{name}");
        let scheduled: Vec<_> = timeouts(&out)
            .into_iter()
            .filter(|(s, _)| matches!(s, TimeoutStep::Prevote | TimeoutStep::Precommit))
            .collect();
        assert_eq!(scheduled, want_timeouts, "{name}");
        assert_eq!(m.locked(), want_lock, "{name}");
        if want_lock.is_some() {
            // The lock is persisted before the precommit it implies.
            let lock_at = out
                .iter()
                .position(|o| matches!(o, Output::Persist(WalEntry::Locked { .. })))
                .expect("lock persisted");
            let precommit_at = out
                .iter()
                .position(|o| {
                    matches!(o, Output::Broadcast(Message::Vote(sv)) if sv.vote.kind == Precommit)
                })
                .expect("precommit sent");
            assert!(lock_at < precommit_at, "{name}");
            assert_eq!(
                m.valid(),
                want_lock,
                "{name}: valid value set with the lock"
            );
        }
    }
}

#[test]
fn view_change_rules_lines_55_and_65() {
    use VoteKind::*;
    let net = Net::new();
    // 65: OnTimeoutPrecommit -> StartRound(round + 1).
    let (m, out) = started(&net, vec![timeout(0, TimeoutStep::Precommit)]);
    assert_eq!(m.view(), View(1));
    assert!(timeouts(&out).contains(&(TimeoutStep::Propose, View(1))));
    // 55: f + 1 = 2 messages from view 5 -> skip to view 5; one is not enough.
    let (m, _) = started(&net, vec![Input::Vote(net.vote(1, 5, Prevote, None))]);
    assert_eq!(m.view(), View(0));
    let (m, _) = started(
        &net,
        vec![
            Input::Vote(net.vote(1, 5, Prevote, None)),
            Input::Proposal(net.proposal(5, &value(1), None)),
        ],
    );
    // The proposer of view 5 is member (1 + 5) % 4 = 2; with member 1 that is 2 senders.
    assert_eq!(m.view(), View(5));
    assert_eq!(m.step(), Step::Propose);
}

#[test]
fn decide_rule_lines_49_to_54() {
    use VoteKind::*;
    let net = Net::new();
    let a = value(0xa);
    // Precommit quorum for a in an older view decides once the value is known and valid.
    let precommits = vec![
        Input::Vote(net.vote(1, 0, Precommit, Some(&a))),
        Input::Vote(net.vote(2, 0, Precommit, Some(&a))),
        Input::Vote(net.vote(3, 0, Precommit, Some(&a))),
    ];
    let (mut m, out) = started(
        &net,
        [vec![timeout(0, TimeoutStep::Precommit)], precommits.clone()].concat(),
    );
    assert!(m.decision().is_none(), "no proposal yet");
    assert_eq!(m.view(), View(1));
    let out2 = apply_all(&mut m, vec![Input::Proposal(net.proposal(0, &a, None))]);
    assert!(
        out2.iter()
            .any(|o| matches!(o, Output::ValidateValue { id, .. } if *id == a.id()))
    );
    assert!(m.decision().is_none(), "verdict pending");
    let out3 = apply_all(&mut m, vec![verdict(&a, true)]);
    let decided: Vec<_> = out3
        .iter()
        .filter_map(|o| match o {
            Output::Decided {
                height,
                view,
                value,
                certificate,
            } => Some((*height, *view, value.clone(), certificate.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(decided.len(), 1);
    let (height, view, value_got, certificate) = decided[0].clone();
    assert_eq!((height, view, value_got), (Height(1), View(0), a.clone()));
    certificate
        .verify(&net.set, &net.chain, &InsecureTestVerifier)
        .unwrap();
    assert!(!out.iter().any(|o| matches!(o, Output::Decided { .. })));
    // After deciding, messages are refused as no longer needed.
    assert_eq!(
        m.apply(Input::Vote(net.vote(1, 1, Prevote, None))),
        Err(Error::AlreadyDecided { height: Height(1) })
    );
    // An invalid value never decides, even with a precommit quorum.
    let (m, _) = started(
        &net,
        [
            vec![
                Input::Proposal(net.proposal(0, &a, None)),
                verdict(&a, false),
            ],
            precommits,
        ]
        .concat(),
    );
    assert!(m.decision().is_none());
}

#[test]
fn rebroadcast_resends_own_messages() {
    let net = Net::new();
    let a = value(0xa);
    let (mut m, _) = started(
        &net,
        vec![
            Input::Proposal(net.proposal(0, &a, None)),
            verdict(&a, true),
        ],
    );
    let out = apply_all(&mut m, vec![timeout(0, TimeoutStep::Rebroadcast)]);
    assert_eq!(
        own_votes(&out),
        vec![(VoteKind::Prevote, View(0), Some(a.id()))]
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::Persist(_))),
        "no new signature"
    );
    assert_eq!(timeouts(&out), vec![(TimeoutStep::Rebroadcast, View(0))]);
}

#[test]
fn re_proposal_relays_the_polka() {
    use VoteKind::*;
    let net = Net::new();
    let a = value(0xa);
    // Member 3 proposes view 2 (height 1): it locked on a in view 0 (from member 3's seat).
    let mut m = net.machine(3);
    apply_all(&mut m, vec![Input::StartHeight]);
    // The nil precommits of view 1 leave no value a chance there: view 2 at once (3.12).
    let out = apply_all(
        &mut m,
        vec![
            Input::Proposal(net.proposal(0, &a, None)),
            verdict(&a, true),
            Input::Vote(net.vote(0, 0, Prevote, Some(&a))),
            Input::Vote(net.vote(1, 0, Prevote, Some(&a))),
            Input::Vote(net.vote(0, 0, Precommit, None)),
            Input::Vote(net.vote(1, 0, Precommit, None)),
            timeout(0, TimeoutStep::Precommit),
            timeout(1, TimeoutStep::Propose),
            Input::Vote(net.vote(0, 1, Precommit, None)),
            Input::Vote(net.vote(1, 1, Precommit, None)),
            Input::Vote(net.vote(2, 1, Precommit, None)),
        ],
    );
    assert_eq!(m.view(), View(2));
    let proposal = out
        .iter()
        .find_map(|o| match o {
            Output::Broadcast(Message::Proposal(sp)) => Some(sp.proposal.clone()),
            _ => None,
        })
        .expect("proposes its valid value");
    assert_eq!(
        (proposal.value, proposal.valid_round),
        (a.clone(), Some(View(0)))
    );
    let relayed = out
        .iter()
        .filter(|o| matches!(o, Output::Broadcast(Message::Vote(sv)) if sv.vote.view == View(0) && sv.vote.kind == Prevote && sv.vote.value == Some(a.id())))
        .count();
    assert!(relayed >= net.set.quorum(), "relayed {relayed}");
}

#[test]
fn refusals_table() {
    use VoteKind::*;
    let net = Net::new();
    let a = value(0xa);
    let mut bad_sig = net.vote(1, 0, Prevote, None);
    bad_sig.signature.0[0] ^= 1;
    let mut wrong_proposer = net.proposal(0, &a, None);
    wrong_proposer.proposal.proposer = net.member(2);
    let wrong_proposer = wrong_proposer
        .proposal
        .sign(&net.chain, &net.signer(net.member(2)));
    let outsider = ValidatorId([99; 32]);
    let outsider_vote = Vote {
        height: Height(1),
        view: View(0),
        kind: Prevote,
        value: None,
        validator: outsider,
    }
    .sign(&net.chain, &InsecureTestSigner::new(outsider));
    let mut future = net.vote(1, 0, Prevote, None);
    future.vote.height = Height(2);
    let future = future.vote.sign(&net.chain, &net.signer(net.member(1)));
    let mut past = future;
    past.vote.height = Height(0);
    let past = past.vote.sign(&net.chain, &net.signer(net.member(1)));
    let far = net.vote(1, MAX_VIEW_LOOKAHEAD + 1, Prevote, None);
    let bad_vr = net.proposal(1, &a, Some(1));
    let other_chain = Vote {
        height: Height(1),
        view: View(0),
        kind: Prevote,
        value: None,
        validator: net.member(1),
    }
    .sign(&ChainId::new("other").unwrap(), &net.signer(net.member(1)));
    let big = Value(vec![0; MAX_VALUE_BYTES + 1]);
    // (case, input, expected error kind)
    let cases: Vec<(&str, Input, ErrorKind)> = vec![
        (
            "bad signature",
            Input::Vote(bad_sig),
            ErrorKind::Misbehaviour,
        ),
        (
            "signed for another chain",
            Input::Vote(other_chain),
            ErrorKind::Misbehaviour,
        ),
        (
            "non-member",
            Input::Vote(outsider_vote),
            ErrorKind::Misbehaviour,
        ),
        (
            "wrong proposer",
            Input::Proposal(wrong_proposer),
            ErrorKind::Misbehaviour,
        ),
        (
            "valid round not below view",
            Input::Proposal(bad_vr),
            ErrorKind::Misbehaviour,
        ),
        (
            "value too large",
            Input::Proposal(net.proposal(0, &big, None)),
            ErrorKind::Misbehaviour,
        ),
        ("future height", Input::Vote(future), ErrorKind::NotValidYet),
        (
            "view beyond look-ahead",
            Input::Vote(far),
            ErrorKind::NotValidYet,
        ),
        ("past height", Input::Vote(past), ErrorKind::Ignored),
    ];
    for (name, input, kind) in cases {
        let (mut m, _) = started(&net, vec![]);
        let err = m.apply(input).expect_err(name);
        assert_eq!(err.kind(), kind, "{name}: {err}");
        assert_eq!(err.is_misbehaviour(), kind == ErrorKind::Misbehaviour);
    }
    // Duplicates are ignored.
    let (mut m, _) = started(&net, vec![Input::Vote(net.vote(1, 0, Prevote, None))]);
    let err = m
        .apply(Input::Vote(net.vote(1, 0, Prevote, None)))
        .unwrap_err();
    assert_eq!(
        (err.clone(), err.kind()),
        (Error::Duplicate, ErrorKind::Ignored)
    );
}

#[test]
fn equivocation_becomes_verifiable_evidence() {
    use VoteKind::*;
    let net = Net::new();
    let (a, b) = (value(0xa), value(0xb));
    let (mut m, _) = started(&net, vec![Input::Vote(net.vote(1, 0, Prevote, Some(&a)))]);
    let out = apply_all(&mut m, vec![Input::Vote(net.vote(1, 0, Prevote, Some(&b)))]);
    let evidence: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Evidence(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(evidence.len(), 1);
    assert_eq!(evidence[0].offender(), net.member(1));
    evidence[0]
        .verify(&net.set, &net.chain, &InsecureTestVerifier)
        .unwrap();
    // Conflicting proposals by the proposer of view 0 (member 1).
    let out = apply_all(
        &mut m,
        vec![
            Input::Proposal(net.proposal(0, &a, None)),
            Input::Proposal(net.proposal(0, &b, None)),
        ],
    );
    let evidence: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Evidence(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(evidence.len(), 1);
    evidence[0]
        .verify(&net.set, &net.chain, &InsecureTestVerifier)
        .unwrap();
    // Tampered evidence does not verify.
    if let Evidence::ConflictingProposals { first, second } = &evidence[0] {
        let fake = Evidence::ConflictingProposals {
            first: first.clone(),
            second: first.clone(),
        };
        assert!(
            fake.verify(&net.set, &net.chain, &InsecureTestVerifier)
                .is_err()
        );
        let mut forged = (**second).clone();
        forged.signature.0[5] ^= 1;
        let fake = Evidence::ConflictingProposals {
            first: first.clone(),
            second: Box::new(forged),
        };
        assert!(
            fake.verify(&net.set, &net.chain, &InsecureTestVerifier)
                .is_err()
        );
    }
    let not_conflicting = Evidence::ConflictingVotes {
        first: Box::new(net.vote(1, 0, Prevote, Some(&a))),
        second: Box::new(net.vote(1, 0, Prevote, Some(&a))),
    };
    assert!(
        not_conflicting
            .verify(&net.set, &net.chain, &InsecureTestVerifier)
            .is_err()
    );
    let other_step = Evidence::ConflictingVotes {
        first: Box::new(net.vote(1, 0, Prevote, Some(&a))),
        second: Box::new(net.vote(1, 0, Precommit, Some(&b))),
    };
    assert!(
        other_step
            .verify(&net.set, &net.chain, &InsecureTestVerifier)
            .is_err()
    );
}

#[test]
fn certificate_verification_table() {
    use VoteKind::*;
    let net = Net::new();
    let a = value(0xa);
    let votes: Vec<SignedVote> = (0..3)
        .map(|i| net.vote(i, 2, Precommit, Some(&a)))
        .collect();
    let good = Certificate::from_precommits(Height(1), View(2), a.id(), &votes);
    let mut too_few = good.clone();
    too_few.precommits.pop();
    let mut duplicated = good.clone();
    duplicated.precommits[1] = duplicated.precommits[0];
    let mut unsorted = good.clone();
    unsorted.precommits.swap(0, 1);
    let mut wrong_value = good.clone();
    wrong_value.value_id = value(0xb).id();
    let mut wrong_view = good.clone();
    wrong_view.view = View(3);
    let mut bad_sig = good.clone();
    bad_sig.precommits[2].signature.0[0] ^= 1;
    let other_set = ValidatorSet::new((10..14).map(vid).collect()).unwrap();
    let cases: Vec<(&str, &Certificate, &ValidatorSet, &str, bool)> = vec![
        ("good", &good, &net.set, "table", true),
        ("too few", &too_few, &net.set, "table", false),
        ("duplicated signer", &duplicated, &net.set, "table", false),
        ("unsorted", &unsorted, &net.set, "table", false),
        ("wrong value", &wrong_value, &net.set, "table", false),
        ("wrong view", &wrong_view, &net.set, "table", false),
        ("bad signature", &bad_sig, &net.set, "table", false),
        ("other validator set", &good, &other_set, "table", false),
        ("other chain", &good, &net.set, "other", false),
    ];
    for (name, cert, set, chain, ok) in cases {
        let chain = ChainId::new(chain).unwrap();
        let result = cert.verify(set, &chain, &InsecureTestVerifier);
        assert_eq!(result.is_ok(), ok, "{name}: {result:?}");
    }
    assert!(
        good.verify_for_height(Height(2), &net.set, &net.chain, &InsecureTestVerifier)
            .is_err()
    );
    let bytes = encode_certificate(&good).unwrap();
    assert_eq!(decode_certificate(&bytes).unwrap(), good);
}

#[test]
fn commit_input_decides_with_a_valid_certificate_only() {
    use VoteKind::*;
    let net = Net::new();
    let a = value(0xa);
    let votes: Vec<SignedVote> = (1..4)
        .map(|i| net.vote(i, 4, Precommit, Some(&a)))
        .collect();
    let certificate = Certificate::from_precommits(Height(1), View(4), a.id(), &votes);
    let mut short = certificate.clone();
    short.precommits.truncate(2);
    let (mut m, _) = started(&net, vec![]);
    let err = m
        .apply(Input::Commit {
            value: a.clone(),
            certificate: short,
        })
        .unwrap_err();
    assert!(err.is_misbehaviour());
    let err = m
        .apply(Input::Commit {
            value: value(0xb),
            certificate: certificate.clone(),
        })
        .unwrap_err();
    assert!(err.is_misbehaviour());
    let out = apply_all(
        &mut m,
        vec![Input::Commit {
            value: a.clone(),
            certificate: certificate.clone(),
        }],
    );
    assert!(out.contains(&Output::Decided {
        height: Height(1),
        view: View(4),
        value: a,
        certificate
    }));
}

#[test]
fn wal_recovery_never_signs_a_conflicting_vote() {
    use VoteKind::*;
    let net = Net::new();
    let a = value(0xa);
    let me = net.member(0);
    // Before the crash: prevoted a, saw the polka, locked and precommitted a in view 0.
    let (_, out) = started(
        &net,
        vec![
            Input::Proposal(net.proposal(0, &a, None)),
            verdict(&a, true),
            Input::Vote(net.vote(1, 0, Prevote, Some(&a))),
            Input::Vote(net.vote(2, 0, Prevote, Some(&a))),
        ],
    );
    let wal: Vec<WalEntry> = out
        .iter()
        .filter_map(|o| match o {
            Output::Persist(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(wal.len(), 3, "prevote, lock, precommit: {wal:?}");
    // The WAL survives its encoding.
    let wal: Vec<WalEntry> = wal
        .iter()
        .map(|e| decode_wal_entry(&encode_wal_entry(e).unwrap()).unwrap())
        .collect();
    let mut m = Consensus::recover(
        net.params(),
        Height(1),
        net.set.clone(),
        Box::new(net.signer(me)),
        Box::new(InsecureTestVerifier),
        wal.clone(),
    )
    .unwrap();
    assert_eq!(m.locked(), Some((View(0), a.id())));
    assert_eq!((m.view(), m.step()), (View(0), Step::Precommit));
    let out = apply_all(&mut m, vec![Input::StartHeight]);
    // It re-sends exactly what it signed, without new signatures.
    assert_eq!(
        own_votes(&out),
        vec![
            (Prevote, View(0), Some(a.id())),
            (Precommit, View(0), Some(a.id()))
        ]
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Persist(_))));
    // Timeouts that would make a fresh node vote nil in view 0 sign nothing new.
    let out = apply_all(
        &mut m,
        vec![
            timeout(0, TimeoutStep::Propose),
            timeout(0, TimeoutStep::Prevote),
            Input::Vote(net.vote(1, 0, Prevote, None)),
        ],
    );
    assert!(own_votes(&out).is_empty(), "{out:?}");
    // In view 1 the lock holds: a fresh b gets a nil prevote.
    let b = value(0xb);
    let out = apply_all(
        &mut m,
        vec![
            Input::Vote(net.vote(1, 0, Precommit, None)),
            Input::Vote(net.vote(2, 0, Precommit, None)),
            timeout(0, TimeoutStep::Precommit),
            Input::Proposal(net.proposal(1, &b, None)),
            verdict(&b, true),
        ],
    );
    assert_eq!(own_votes(&out), vec![(Prevote, View(1), None)]);
    // A WAL of another signer is refused.
    let err = Consensus::recover(
        net.params(),
        Height(1),
        net.set.clone(),
        Box::new(net.signer(net.member(1))),
        Box::new(InsecureTestVerifier),
        wal,
    )
    .err()
    .expect("foreign WAL refused");
    assert_eq!(err.kind(), ErrorKind::Local);
}

#[test]
fn recovered_proposer_re_sends_its_proposal_instead_of_a_new_one() {
    let net = Net::new();
    let me = net.member(1); // proposer of view 0
    let mut m = net.machine(1);
    apply_all(&mut m, vec![Input::StartHeight]);
    let out = apply_all(
        &mut m,
        vec![Input::ProposeValue {
            height: Height(1),
            view: View(0),
            value: value(3),
        }],
    );
    let wal: Vec<WalEntry> = out
        .iter()
        .filter_map(|o| match o {
            Output::Persist(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let mut r = Consensus::recover(
        net.params(),
        Height(1),
        net.set.clone(),
        Box::new(net.signer(me)),
        Box::new(InsecureTestVerifier),
        wal,
    )
    .unwrap();
    let out = apply_all(&mut r, vec![Input::StartHeight]);
    assert!(!out.iter().any(|o| matches!(o, Output::GetValue { .. })));
    assert!(out.iter().any(
        |o| matches!(o, Output::Broadcast(Message::Proposal(sp)) if sp.proposal.value == value(3))
    ));
}

/// Four machines with real ed25519 keys, messages delivered in order: one height decides in
/// view 0 with a certificate that verifies with `verify_strict`.
#[test]
fn ed25519_network_decides() {
    let chain = ChainId::new("ed25519").unwrap();
    let signers: Vec<Ed25519Signer> = (0..4u8)
        .map(|i| Ed25519Signer::from_seed(&[i + 1; 32]))
        .collect();
    let set = ValidatorSet::new(signers.iter().map(|s| s.id()).collect()).unwrap();
    let params = Params {
        chain_id: chain.clone(),
        timeouts: Timeouts::default(),
        skip_proposers: Vec::new(),
    };
    let mut machines: Vec<Consensus> = (0..4u8)
        .map(|i| {
            Consensus::new(
                params.clone(),
                Height(9),
                set.clone(),
                Box::new(Ed25519Signer::from_seed(&[i + 1; 32])),
                Box::new(Ed25519Verifier),
            )
        })
        .collect();
    let mut queue: std::collections::VecDeque<(usize, Input)> =
        (0..4).map(|i| (i, Input::StartHeight)).collect();
    let mut decided = vec![None; 4];
    while let Some((i, input)) = queue.pop_front() {
        let Ok(outputs) = machines[i].apply(input) else {
            continue;
        };
        for output in outputs {
            match output {
                Output::Broadcast(message) => {
                    let bytes = encode_message(&message).unwrap();
                    for j in (0..4).filter(|&j| j != i) {
                        let decoded = decode_message(&bytes).unwrap();
                        queue.push_back((j, Input::from_message(decoded).unwrap()));
                    }
                }
                Output::GetValue { height, view } => queue.push_back((
                    i,
                    Input::ProposeValue {
                        height,
                        view,
                        value: Value(b"aggregate".to_vec()),
                    },
                )),
                Output::ValidateValue { id, .. } => {
                    queue.push_back((i, Input::ValueVerdict { id, valid: true }))
                }
                Output::Decided {
                    value, certificate, ..
                } => {
                    certificate
                        .verify_for_height(Height(9), &set, &chain, &Ed25519Verifier)
                        .unwrap();
                    decided[i] = Some((value, certificate.view));
                }
                _ => {}
            }
        }
    }
    for d in decided {
        assert_eq!(d, Some((Value(b"aggregate".to_vec()), View(0))));
    }
}

#[test]
fn consensus_is_send_and_followers_never_sign() {
    fn assert_send<T: Send>() {}
    assert_send::<Consensus>();
    let net = Net::new();
    let outsider = ValidatorId([200; 32]);
    let mut follower = Consensus::new(
        net.params(),
        Height(1),
        net.set.clone(),
        Box::new(InsecureTestSigner::new(outsider)),
        Box::new(InsecureTestVerifier),
    );
    assert!(!follower.is_validator());
    let a = value(0xa);
    let out = apply_all(
        &mut follower,
        vec![
            Input::StartHeight,
            Input::Proposal(net.proposal(0, &a, None)),
            verdict(&a, true),
            timeout(0, TimeoutStep::Propose),
            Input::Vote(net.vote(1, 0, VoteKind::Precommit, Some(&a))),
            Input::Vote(net.vote(2, 0, VoteKind::Precommit, Some(&a))),
            Input::Vote(net.vote(3, 0, VoteKind::Precommit, Some(&a))),
        ],
    );
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Persist(_) | Output::Broadcast(_)))
    );
    assert_eq!(follower.decision().map(|d| d.1.clone()), Some(a));
}

#[test]
fn recovered_lock_keeps_its_polka_for_re_proposals() {
    use VoteKind::*;
    let net = Net::new();
    let a = value(0xa);
    let me = net.member(0);
    let (_, out) = started(
        &net,
        vec![
            Input::Proposal(net.proposal(0, &a, None)),
            verdict(&a, true),
            Input::Vote(net.vote(1, 0, Prevote, Some(&a))),
            Input::Vote(net.vote(2, 0, Prevote, Some(&a))),
        ],
    );
    let wal: Vec<WalEntry> = out
        .iter()
        .filter_map(|o| match o {
            Output::Persist(e) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let polka_len = wal
        .iter()
        .find_map(|e| match e {
            WalEntry::Locked { polka, .. } => Some(polka.len()),
            _ => None,
        })
        .expect("lock persisted");
    assert_eq!(polka_len, 3);
    let mut m = Consensus::recover(
        net.params(),
        Height(1),
        net.set.clone(),
        Box::new(net.signer(me)),
        Box::new(InsecureTestVerifier),
        wal,
    )
    .unwrap();
    // After the restart, view 1 re-proposes a with valid round 0: the recovered node still
    // holds the polka of view 0 and prevotes a (line 28), without any vote of view 0 resent.
    let out = apply_all(
        &mut m,
        vec![
            Input::StartHeight,
            Input::Vote(net.vote(1, 0, Precommit, None)),
            Input::Vote(net.vote(2, 0, Precommit, None)),
            timeout(0, TimeoutStep::Precommit),
            Input::Proposal(net.proposal(1, &a, Some(0))),
        ],
    );
    assert_eq!(m.view(), View(1));
    assert!(
        own_votes(&out).contains(&(Prevote, View(1), Some(a.id()))),
        "{out:?}"
    );
}

/// View 0's propose timeout covers the host's once-a-height work; later views start from the
/// retry base, every step grows per view, and the cap holds.
#[test]
fn propose_timeouts_past_view_0_start_from_the_retry_base() {
    let t = Timeouts {
        propose: LinearTimeout {
            base_ms: 3000,
            per_view_ms: 2000,
        },
        propose_retry_ms: 1000,
        max_ms: 8000,
        ..Timeouts::default()
    };
    let propose = |v| t.duration_ms(TimeoutStep::Propose, View(v));
    assert_eq!(
        [propose(0), propose(1), propose(2), propose(3), propose(4)],
        [3000, 3000, 5000, 7000, 8000]
    );
    let prevote = |v| t.duration_ms(TimeoutStep::Prevote, View(v));
    assert_eq!([prevote(0), prevote(1)], [1000, 1500]);
}

/// PROTOCOL.md 3.12: a step whose votes can no longer give any value a quorum is not waited
/// out (n = 4, quorum 3), and a minority does not move views on its own.
#[test]
fn a_step_no_value_can_win_is_not_waited_out() {
    use VoteKind::*;
    let net = Net::new();
    let (a, b) = (value(0xa), value(0xb));
    // One nil prevote: three others may still prevote a value. Node 0 waits for the proposal.
    let (m, out) = started(&net, vec![Input::Vote(net.vote(2, 0, Prevote, None))]);
    assert!(own_votes(&out).is_empty());
    assert_eq!(m.step(), Step::Propose);
    // Two nil prevotes (f + 1, so an honest one): at most two can prevote a value. Node 0
    // prevotes nil at once, and with the nil polka precommits nil.
    let (m, out) = started(
        &net,
        vec![
            Input::Vote(net.vote(2, 0, Prevote, None)),
            Input::Vote(net.vote(3, 0, Prevote, None)),
        ],
    );
    assert_eq!(
        own_votes(&out),
        vec![(Prevote, View(0), None), (Precommit, View(0), None)]
    );
    assert_eq!((m.view(), m.step()), (View(0), Step::Precommit));

    // Split prevotes (node 0 nil after its timeout, a, b): no value can reach three, so node 0
    // precommits nil without waiting for its prevote timeout.
    let (_, out) = started(
        &net,
        vec![
            timeout(0, TimeoutStep::Propose),
            Input::Vote(net.vote(2, 0, Prevote, Some(&a))),
            Input::Vote(net.vote(3, 0, Prevote, Some(&b))),
        ],
    );
    assert_eq!(
        own_votes(&out),
        vec![(Prevote, View(0), None), (Precommit, View(0), None)]
    );
    assert!(!timeouts(&out).contains(&(TimeoutStep::Prevote, View(0))));

    // A quorum of precommits of which no value can win: view 1 at once, no precommit timeout.
    let (m, out) = started(
        &net,
        vec![
            timeout(0, TimeoutStep::Propose),
            Input::Vote(net.vote(2, 0, Prevote, Some(&a))),
            Input::Vote(net.vote(3, 0, Prevote, Some(&b))),
            Input::Vote(net.vote(2, 0, Precommit, None)),
            Input::Vote(net.vote(3, 0, Precommit, Some(&a))),
        ],
    );
    assert_eq!(m.view(), View(1));
    assert!(!timeouts(&out).contains(&(TimeoutStep::Precommit, View(0))));
    assert!(timeouts(&out).contains(&(TimeoutStep::Propose, View(1))));

    // Quorum lost: node 0 and one other are all that is up. Both give up on the proposal, but
    // two precommits are no quorum: node 0 stays in view 0 (it would otherwise race through
    // views, each with a longer timeout, while the others are down).
    let (m, out) = started(
        &net,
        vec![
            timeout(0, TimeoutStep::Propose),
            Input::Vote(net.vote(2, 0, Prevote, None)),
            Input::Vote(net.vote(2, 0, Precommit, None)),
        ],
    );
    assert_eq!(
        own_votes(&out),
        vec![(Prevote, View(0), None), (Precommit, View(0), None)]
    );
    assert_eq!(m.view(), View(0));
}
