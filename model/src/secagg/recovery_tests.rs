//! Tests of self-seed recovery ([`super::recovery`]).

use chacha20poly1305::aead::AeadInPlace as _;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit as _, Nonce, Tag};

use super::tests::round;
use super::*;

/// Every member's sealed shares with threshold `t`.
fn sealed_all(r: &tests::Round, t: usize) -> Vec<Vec<SealedShare>> {
    (0..r.ids.len())
        .map(|i| share_self_seed(&r.domain, &r.roster, &r.ids[i], &r.secrets[i], t).unwrap())
        .collect()
}

/// Holder `j` opens its share of member `i`.
fn opened(r: &tests::Round, sealed: &[Vec<SealedShare>], i: usize, j: usize) -> [u8; 32] {
    let s = sealed[i].iter().find(|s| s.holder == r.ids[j]).unwrap();
    open_share(&r.domain, &r.roster, &r.ids[j], &r.secrets[j], &r.ids[i], s).unwrap()
}

#[test]
fn a_dropped_included_members_self_seed_is_recovered_from_t_shares_and_the_sum_unmasks() {
    let r = round(5);
    let t = 3;
    let sealed = sealed_all(&r, t);
    assert!(
        sealed.iter().all(|s| s.len() == 4),
        "one share per other member"
    );
    let all = [0, 1, 2, 3, 4];
    // Member 2 is included, then drops before revealing: the others reveal, and holders 0, 3
    // and 4 publish their shares of its self seed.
    let mut reveals: Vec<Reveal> = r
        .reveals(&all)
        .into_iter()
        .filter(|x| x.member != r.ids[2])
        .collect();
    assert!(matches!(
        r.unmask(&all, &reveals),
        Err(SecAggError::MissingReveal { .. })
    ));
    let shares: Vec<(MemberId, [u8; 32])> = [0, 3, 4]
        .iter()
        .map(|&j| (r.ids[j], opened(&r, &sealed, 2, j)))
        .collect();
    let commit = r.masked[2].self_commit;
    let recover = |shares: &[(MemberId, [u8; 32])]| {
        recover_self_seed(
            &r.domain, &r.roster, &r.ids[2], &commit, &sealed[2], shares, t,
        )
    };
    // t - 1 shares are not enough.
    assert!(matches!(
        recover(&shares[..2]),
        Err(SecAggError::TooFewShares {
            got: 2,
            need: 3,
            ..
        })
    ));
    let seed = recover(&shares).unwrap();
    reveals.push(Reveal {
        member: r.ids[2],
        self_seed: seed,
        pair_seeds: Vec::new(),
    });
    let sum = r.unmask(&all, &reveals).unwrap();
    r.check_sum(&all, &sum);
}

#[test]
fn a_changed_misaddressed_or_wrongly_keyed_share_does_not_open() {
    let r = round(4);
    let sealed = sealed_all(&r, 2);
    let open = |j: usize, s: &SealedShare| {
        open_share(&r.domain, &r.roster, &r.ids[j], &r.secrets[j], &r.ids[0], s)
    };
    let to1 = sealed[0].iter().find(|s| s.holder == r.ids[1]).unwrap();
    assert!(open(1, to1).is_ok());
    let bad = |s: &SealedShare, j: usize| matches!(open(j, s), Err(SecAggError::BadShare { .. }));
    for k in 0..3 {
        let mut x = to1.clone();
        match k {
            0 => x.ciphertext[5] ^= 1,
            1 => x.tag[0] ^= 1,
            _ => x.commit[0] ^= 1,
        }
        assert!(bad(&x, 1), "change {k}");
    }
    // Holder 2 cannot open holder 1's share, even relabelled as its own.
    assert!(bad(to1, 2));
    let mut relabelled = to1.clone();
    relabelled.holder = r.ids[2];
    assert!(bad(&relabelled, 2));
    // Sealed in another round's domain: the key differs.
    let other = Domain::new(tests::CHAIN, 4);
    let s = share_self_seed(&other, &r.roster, &r.ids[0], &r.secrets[0], 2).unwrap();
    assert!(bad(&s[0], 1));
}

#[test]
fn a_published_share_must_match_its_commitment_and_the_seed_the_self_commitment() {
    let r = round(4);
    let sealed = sealed_all(&r, 2);
    let commit = r.masked[0].self_commit;
    let mut shares: Vec<(MemberId, [u8; 32])> = [1, 2]
        .iter()
        .map(|&j| (r.ids[j], opened(&r, &sealed, 0, j)))
        .collect();
    let recover = |sealed: &[SealedShare], shares: &[(MemberId, [u8; 32])]| {
        recover_self_seed(&r.domain, &r.roster, &r.ids[0], &commit, sealed, shares, 2)
    };
    assert!(recover(&sealed[0], &shares).is_ok());
    // A holder publishing a changed share is caught by the share's commitment.
    shares[1].1[0] ^= 1;
    assert!(matches!(
        recover(&sealed[0], &shares),
        Err(SecAggError::BadShare { .. })
    ));
    shares[1].1[0] ^= 1;
    // A share named twice, or from the member itself, is refused.
    let twice = [shares[0], shares[0]];
    assert!(matches!(
        recover(&sealed[0], &twice),
        Err(SecAggError::Duplicate { .. })
    ));
    // A member that shared another secret than the one it committed to: every share matches
    // its commitment, the recovered seed does not match the self commitment.
    let liar = MemberSecrets {
        dh: r.secrets[0].dh,
        self_seed: [9; 32],
    };
    let lies = share_self_seed(&r.domain, &r.roster, &r.ids[0], &liar, 2).unwrap();
    let lied: Vec<(MemberId, [u8; 32])> = [1, 2]
        .iter()
        .map(|&j| {
            let s = lies.iter().find(|s| s.holder == r.ids[j]).unwrap();
            let v = open_share(&r.domain, &r.roster, &r.ids[j], &r.secrets[j], &r.ids[0], s);
            (r.ids[j], v.unwrap())
        })
        .collect();
    assert!(matches!(
        recover(&lies, &lied),
        Err(SecAggError::BadSelfSeed { .. })
    ));
}

#[test]
fn a_revealed_pair_seed_does_not_open_the_share_and_thresholds_are_bounded() {
    let r = round(4);
    let sealed = sealed_all(&r, 2);
    // Member 0 is excluded: member 1 reveals its pair seed with member 0 in the clear. Used
    // as the key it opens neither direction's share.
    let rv = reveal(
        &r.domain,
        &r.roster,
        &r.ids[1],
        &r.secrets[1],
        &r.included(&[1, 2, 3]),
    )
    .unwrap();
    let (_, pair) = rv.pair_seeds.iter().find(|(m, _)| *m == r.ids[0]).unwrap();
    for (from, to) in [(0, 1), (1, 0)] {
        let s = sealed[from].iter().find(|s| s.holder == r.ids[to]).unwrap();
        let mut buf = s.ciphertext;
        let opened = ChaCha20Poly1305::new(Key::from_slice(pair)).decrypt_in_place_detached(
            &Nonce::default(),
            &[r.ids[from], r.ids[to]].concat(),
            &mut buf,
            Tag::from_slice(&s.tag),
        );
        assert!(opened.is_err());
    }
    for t in [0, 4] {
        assert!(matches!(
            share_self_seed(&r.domain, &r.roster, &r.ids[0], &r.secrets[0], t),
            Err(SecAggError::BadThreshold { .. })
        ));
    }
}
