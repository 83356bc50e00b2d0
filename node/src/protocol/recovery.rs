//! Recovery of a silent included member's self seed under secure aggregation (see the
//! module doc of [`super::secure`], **Dropouts**, and `model::secagg`'s recovery).
//!
//! Every masked payload carries the author's self seed split with threshold
//! [`Core::recovery_threshold`] into one share sealed to every other roster member. Once a
//! node has known the round's agreed selection ([`super::agreement`]) for half of
//! `round::max_wait` and an included member's reveal for it is still missing, the node opens
//! its share of that member's seed and publishes it signed ([`SignedRecovery`]), once per
//! member, and only for members of that agreed selection. With the threshold's number of shares that match their commitments, the
//! proposer puts them in the value in place of the missing reveal ([`RecoveredSeed`]); every
//! validator recombines them, checks the seed against the member's commitment and unmasks.
//!
//! The silent member would also have revealed its pair seeds with the roster members outside
//! the selection. A node outside the selection therefore adds to its share its own pair seed
//! with the silent member (checked against that member's pair commitment); the value carries
//! one from each of them. An excluded member's own vector stays hidden by its self seed, which
//! nobody reveals or recovers while it is excluded.

use std::collections::BTreeMap;

use anyhow::Result;
use consensus::ValidatorId;
use gossip::Verdict;
use model::secagg::{Advert, Reveal};

use super::round::max_wait;
use super::{Action, Core, Millis};
use crate::wire::Included;
use crate::wire::secagg::{
    MaskedPayload, RecoveredSeed, RecoveryBody, SecAggMsg, SignedRecovery, selection_digest,
};

/// Verified shares of one round: (member, holder) -> the holder's signed share.
pub type Shares = BTreeMap<([u8; 32], [u8; 32]), SignedRecovery>;

impl Core {
    /// The self-seed sharing threshold of a round whose roster has `roster` members: one less
    /// than the round's quorum (so that a selection of a bare quorum that loses one member
    /// still holds enough shares), at least 1 and at most the other roster members. Fewer
    /// colluding holders learn nothing about a seed.
    pub(super) fn recovery_threshold(&self, round: u64, roster: usize) -> usize {
        let quorum = self.committed.chain.set_for(round).quorum();
        quorum
            .saturating_sub(1)
            .min(roster.saturating_sub(1))
            .max(1)
    }

    /// Whether the self-seed share `author` sealed to us opens and matches its commitment
    /// (true when we hold no share or no secrets of the roster's key: nothing to check).
    pub(super) fn our_share_opens(&self, round: u64, author: &[u8; 32], p: &MaskedPayload) -> bool {
        let Some(sealed) = p.shares.iter().find(|s| s.holder == self.me.0) else {
            return true;
        };
        let Some((_, secrets)) = self.secure.secrets.as_ref().filter(|(r, _)| *r == round) else {
            return true;
        };
        let ads = super::secure::adverts_of(p);
        let ours = ads.iter().find(|a| a.member == self.me.0);
        if ours.is_none_or(|a| a.public_key != secrets.public_key()) {
            return true;
        }
        model::secagg::open_share(
            &self.domain(round),
            &ads,
            &self.me.0,
            secrets,
            author,
            sealed,
        )
        .is_ok()
    }

    /// The masked payload of an included delta, when held.
    fn payload_of(&self, round: u64, inc: &Included) -> Option<std::sync::Arc<MaskedPayload>> {
        self.pool.held(round, inc).and_then(|d| d.masked.clone())
    }

    /// A signed share from the network (signature and validator already checked): kept once
    /// per (member, holder); refused when it does not match the member's commitment.
    pub(super) fn on_recovery(&mut self, round: u64, r: SignedRecovery) -> Verdict {
        let b = &r.body;
        let set = self.committed.chain.set_for(round);
        if b.member == b.holder || !set.contains(&ValidatorId(b.member)) {
            self.telemetry.counters.reject("bad_share");
            return Verdict::Reject("bad_share");
        }
        let sel = self
            .secure
            .selections
            .get(&round)
            .and_then(|a| a.by_digest(&b.selection));
        let inc = sel
            .and_then(|s| s.body.included.iter().find(|i| i.author == b.member))
            .cloned();
        let selected = sel.map(|s| s.body.included.iter().any(|i| i.author == b.holder));
        if let Some(p) = inc.and_then(|i| self.payload_of(round, &i)) {
            let domain = self.domain(round);
            let share_ok = p.shares.iter().any(|s| {
                s.holder == b.holder
                    && s.commit
                        == model::secagg::share_commit(&domain, &b.member, &b.holder, &b.share)
            });
            // A pair seed only from a holder outside the selection, matching the commitment.
            let pair_ok = match b.pair_seed {
                None => true,
                Some(seed) => {
                    selected == Some(false)
                        && p.pair_commits.iter().any(|(m, c)| {
                            *m == b.holder && model::secagg::seed_matches(&domain, &seed, c)
                        })
                }
            };
            let ok = share_ok && pair_ok;
            if !ok {
                self.telemetry.counters.reject("bad_share");
                return Verdict::Reject("bad_share");
            }
        }
        let held = self.secure.recoveries.entry(round).or_default();
        let key = (b.member, b.holder);
        if held.contains_key(&key) {
            return Verdict::Ignore("duplicate secagg message");
        }
        held.insert(key, r);
        Verdict::Accept
    }

    /// Publishes our share of every member of the round's agreed selection
    /// ([`super::agreement`]) whose reveal is still missing half of `max_wait` after we learned
    /// the agreement (once per member).
    pub(super) fn maybe_recover(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<()> {
        let h = self.committed.height() + 1;
        let Some((sel, since)) = self
            .secure
            .selections
            .get(&h)
            .and_then(super::agreement::Agreement::agreed)
        else {
            return Ok(());
        };
        if now.saturating_sub(since) < max_wait(&self.cfg.genesis) / 2
            || sel.body.included.len() < self.validators().quorum()
        {
            return Ok(());
        }
        let Some((_, secrets)) = self.secure.secrets.as_ref().filter(|(r, _)| *r == h) else {
            return Ok(());
        };
        let digest = sel.body.digest();
        let outside = !sel.body.included.iter().any(|i| i.author == self.me.0);
        let revealed = self.secure.reveals.get(&h);
        let mut publish = Vec::new();
        for inc in &sel.body.included {
            let member = inc.author;
            let done = self.secure.recovered.contains(&(h, member));
            let has_reveal = revealed
                .and_then(|r| r.get(&member))
                .is_some_and(|r| r.body.selection == digest);
            if member == self.me.0 || done || has_reveal {
                continue;
            }
            let Some(p) = self.payload_of(h, inc) else {
                continue;
            };
            let Some(sealed) = p.shares.iter().find(|s| s.holder == self.me.0) else {
                continue;
            };
            let ads: Vec<Advert> = super::secure::adverts_of(&p);
            let domain = self.domain(h);
            let opened =
                model::secagg::open_share(&domain, &ads, &self.me.0, secrets, &member, sealed)
                    .and_then(|share| {
                        // Outside the selection: also our pair seed with the silent member.
                        let pair = outside
                            .then(|| {
                                model::secagg::excluded_pair_seed(
                                    &domain, &ads, &self.me.0, secrets, &member,
                                )
                            })
                            .transpose()?;
                        Ok((share, pair))
                    });
            match opened {
                Ok((share, pair)) => publish.push((member, share, pair)),
                Err(e) => tracing::warn!(round = h, error = %e, "cannot open a share"),
            }
        }
        for (member, share, pair_seed) in publish {
            let r = SignedRecovery::new(
                RecoveryBody {
                    chain_id: self.cfg.genesis.chain_id.as_str().to_string(),
                    round: h,
                    holder: self.me.0,
                    member,
                    selection: digest,
                    share,
                    pair_seed,
                },
                &self.cfg.key,
            )?;
            tracing::info!(
                round = h,
                "secure aggregation: publishing a self-seed share"
            );
            self.secure.recovered.insert((h, member));
            self.secure
                .recoveries
                .entry(h)
                .or_default()
                .insert((member, self.me.0), r.clone());
            self.publish_secagg(now, h, SecAggMsg::Recovery(r), out);
        }
        Ok(())
    }

    /// Value entries for `included`: each member's reveal for this set, or for a silent member
    /// the threshold's number of held shares that match its commitments. `None` when a member
    /// has neither, when an included delta is not held, when no member needs recovery, or when
    /// a roster member outside the set has not published its pair seed with the silent member
    /// (gone too: the round voids).
    pub(super) fn recovered_for(&self, h: u64, included: &[Included]) -> Option<Vec<Vec<u8>>> {
        let chain = self.cfg.genesis.chain_id.as_str();
        let digest = selection_digest(chain, h, included);
        let reveals = self.secure.reveals.get(&h);
        let shares = self.secure.recoveries.get(&h)?;
        let domain = self.domain(h);
        let mut entries = Vec::with_capacity(included.len());
        let mut recovered = 0;
        for inc in included {
            // Every included delta held (the proposer tries each set of entries once).
            let p = self.payload_of(h, inc)?;
            if let Some(r) = reveals
                .and_then(|r| r.get(&inc.author))
                .filter(|r| r.body.selection == digest)
            {
                entries.push(r.encode().ok()?);
                continue;
            }
            // The silent member's pair seeds with the roster members outside the set, each
            // from that member.
            let mut pairs = Vec::new();
            for (j, c) in &p.pair_commits {
                if included.iter().any(|i| i.author == *j) {
                    continue;
                }
                let r = shares.get(&(inc.author, *j)).filter(|r| {
                    r.body.selection == digest
                        && r.body
                            .pair_seed
                            .is_some_and(|s| model::secagg::seed_matches(&domain, &s, c))
                })?;
                pairs.push(r.clone());
            }
            let t = self.recovery_threshold(h, p.roster.len());
            let good: Vec<SignedRecovery> = shares
                .range((inc.author, [0; 32])..=(inc.author, [0xff; 32]))
                .map(|(_, r)| r)
                .filter(|r| {
                    let b = &r.body;
                    b.selection == digest
                        && p.shares.iter().any(|s| {
                            s.holder == b.holder
                                && s.commit
                                    == model::secagg::share_commit(
                                        &domain, &b.member, &b.holder, &b.share,
                                    )
                        })
                })
                .take(t)
                .cloned()
                .collect();
            if good.len() < t {
                return None;
            }
            recovered += 1;
            let entry = RecoveredSeed {
                member: inc.author,
                shares: good,
                pairs,
            };
            entries.push(entry.encode().ok()?);
        }
        (recovered > 0).then_some(entries)
    }

    /// A value entry in place of a reveal: the member's self seed from its signed shares, as a
    /// reveal with no pair seeds. `None` when anything does not check out.
    pub(super) fn reveal_from_shares(
        &self,
        round: u64,
        inc: &Included,
        payload: &MaskedPayload,
        digest: &[u8; 32],
        included: &[Included],
        rec: &RecoveredSeed,
    ) -> Option<Reveal> {
        let chain = self.cfg.genesis.chain_id.as_str();
        let set = self.committed.chain.set_for(round);
        let n = payload.roster.len();
        if rec.member != inc.author || rec.shares.len() >= n || rec.pairs.len() >= n {
            return None;
        }
        let signed = |r: &SignedRecovery| {
            let b = &r.body;
            r.verify(chain).is_ok()
                && b.round == round
                && b.member == inc.author
                && b.selection == *digest
                && set.contains(&ValidatorId(b.holder))
        };
        let mut pair_seeds = Vec::with_capacity(rec.pairs.len());
        for r in &rec.pairs {
            let outside = !included.iter().any(|i| i.author == r.body.holder);
            let seed = r.body.pair_seed.filter(|_| outside && signed(r))?;
            pair_seeds.push((r.body.holder, seed));
        }
        let mut shares = Vec::with_capacity(rec.shares.len());
        for r in &rec.shares {
            if !signed(r) {
                return None;
            }
            shares.push((r.body.holder, r.body.share));
        }
        let t = self.recovery_threshold(round, payload.roster.len());
        match model::secagg::recover_self_seed(
            &self.domain(round),
            &super::secure::adverts_of(payload),
            &inc.author,
            &payload.self_commit,
            &payload.shares,
            &shares,
            t,
        ) {
            // `unmask` checks the pair seeds against the commitments and that none is missing.
            Ok(self_seed) => Some(Reveal {
                member: inc.author,
                self_seed,
                pair_seeds,
            }),
            Err(e) => {
                tracing::warn!(round, error = %e, "self-seed recovery refused");
                None
            }
        }
    }
}
