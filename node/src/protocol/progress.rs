//! Whether the committed model still learns. A genesis can pass every range check and the
//! network still commit round after round without moving the model (a learning rate too small
//! to change an `f32`, every delta rejected or left out, every server step refused as
//! non-finite), or end up with a model that is not finite. Consensus is happy either way; this
//! watch is what says so. Pure: it counts committed rounds, it reads no clock.

/// After this many consecutive committed rounds with the same model hash, the model is
/// reported as stalled.
pub const STALL_ROUNDS: u64 = 20;

/// What the watch found in one committed round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// The model hash at `round` is the one of the `rounds` committed rounds before it.
    Stalled {
        /// The committed round that made the count reach [`STALL_ROUNDS`].
        round: u64,
        /// Consecutive committed rounds that left the model unchanged.
        rounds: u64,
    },
    /// A parameter of the model committed at `round` is NaN or infinite.
    NonFinite {
        /// The committed round.
        round: u64,
        /// The first non-finite parameter, in canonical order.
        index: usize,
    },
}

/// See the module documentation. Each finding is reported once: a stall again only after the
/// model moved, a non-finite model again only after a finite one was committed.
#[derive(Debug, Default)]
pub struct ProgressWatch {
    /// The model hash of the last committed round seen.
    last: Option<[u8; 32]>,
    /// Consecutive committed rounds whose hash equalled the one before.
    unchanged: u64,
    /// Whether the current stall was reported.
    stall_reported: bool,
    /// Whether the current non-finite model was reported.
    non_finite_reported: bool,
}

impl ProgressWatch {
    /// A round was committed with this model hash and these parameters. The parameters are
    /// scanned only when the hash changed (or on the first round seen).
    pub fn committed(&mut self, round: u64, hash: [u8; 32], params: &[f32]) -> Vec<Finding> {
        let mut found = Vec::new();
        let same = self.last == Some(hash);
        self.last = Some(hash);
        if same {
            self.unchanged += 1;
            if self.unchanged >= STALL_ROUNDS && !self.stall_reported {
                self.stall_reported = true;
                found.push(Finding::Stalled {
                    round,
                    rounds: self.unchanged,
                });
            }
            return found;
        }
        self.unchanged = 0;
        self.stall_reported = false;
        match params.iter().position(|v| !v.is_finite()) {
            Some(index) if !self.non_finite_reported => {
                self.non_finite_reported = true;
                found.push(Finding::NonFinite { round, index });
            }
            Some(_) => {}
            None => self.non_finite_reported = false,
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINE: [f32; 3] = [0.5, -1.0, 2.0];

    /// Feeds `hashes` (one byte each, rounds 1, 2, ...) with `params`; the findings by round.
    fn feed(w: &mut ProgressWatch, first: u64, hashes: &[u8], params: &[f32]) -> Vec<Finding> {
        hashes
            .iter()
            .enumerate()
            .flat_map(|(i, h)| w.committed(first + i as u64, [*h; 32], params))
            .collect()
    }

    #[test]
    fn a_moving_model_is_never_flagged() {
        let mut w = ProgressWatch::default();
        let hashes: Vec<u8> = (0..=255).collect();
        assert!(feed(&mut w, 1, &hashes, &FINE).is_empty());
    }

    #[test]
    fn a_stall_is_flagged_once_at_the_twentieth_unchanged_round() {
        let mut w = ProgressWatch::default();
        // Round 1 sets the hash; rounds 2..=20 are 19 unchanged rounds: not yet.
        assert!(feed(&mut w, 1, &[7; 20], &FINE).is_empty());
        // Round 21 is the 20th unchanged one.
        assert_eq!(
            w.committed(21, [7; 32], &FINE),
            vec![Finding::Stalled {
                round: 21,
                rounds: 20
            }]
        );
        // Once: a hundred more unchanged rounds say nothing.
        assert!(feed(&mut w, 22, &[7; 100], &FINE).is_empty());
        // The model moves, then stalls again: flagged again, 20 rounds after the move.
        assert!(feed(&mut w, 122, &[8; 20], &FINE).is_empty());
        assert_eq!(
            w.committed(142, [8; 32], &FINE),
            vec![Finding::Stalled {
                round: 142,
                rounds: 20
            }]
        );
    }

    #[test]
    fn a_change_before_the_twentieth_round_resets_the_count() {
        let mut w = ProgressWatch::default();
        let mut hashes = vec![1; 20];
        hashes.push(2);
        hashes.extend([1; 20]);
        assert!(feed(&mut w, 1, &hashes, &FINE).is_empty());
    }

    #[test]
    fn a_non_finite_model_is_flagged_once() {
        let mut w = ProgressWatch::default();
        assert!(w.committed(1, [1; 32], &FINE).is_empty());
        let nan = [0.5, f32::NAN, f32::INFINITY];
        assert_eq!(
            w.committed(2, [2; 32], &nan),
            vec![Finding::NonFinite { round: 2, index: 1 }]
        );
        // Other non-finite models after it: not again.
        assert!(w.committed(3, [3; 32], &[f32::NEG_INFINITY]).is_empty());
        assert!(w.committed(4, [4; 32], &nan).is_empty());
        // A finite model re-arms it.
        assert!(w.committed(5, [5; 32], &FINE).is_empty());
        assert_eq!(
            w.committed(6, [6; 32], &[f32::INFINITY]),
            vec![Finding::NonFinite { round: 6, index: 0 }]
        );
    }

    #[test]
    fn a_non_finite_model_that_stops_moving_is_flagged_for_both() {
        let mut w = ProgressWatch::default();
        let nan = [f32::NAN];
        let found = feed(&mut w, 1, &[9; 21], &nan);
        assert_eq!(
            found,
            vec![
                Finding::NonFinite { round: 1, index: 0 },
                Finding::Stalled {
                    round: 21,
                    rounds: 20
                }
            ]
        );
    }
}
