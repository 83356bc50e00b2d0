//! Shamir secret sharing of a 32-byte secret over GF(2^16) (Shamir 1979): the secret is 16
//! field elements, each the constant term of its own polynomial of degree `threshold - 1`; a
//! share is the 16 polynomials evaluated at the holder's x (1 to 65535). Any `threshold`
//! shares give the secret back (Lagrange interpolation at 0); fewer give no information when
//! the coefficients are uniform.
//!
//! **Why GF(2^16) and not a crate.** The Rust crates for this (`sharks`, its fork `blahaj`)
//! work over GF(2^8), which admits at most 255 shares; a round's roster may hold up to
//! `consensus::MAX_VALIDATORS` (1024) members. `vsss-rs` shares scalars of elliptic-curve
//! groups (generic machinery over a curve crate) for verifiable schemes that this use does not
//! need. The field here is `x^16 + x^12 + x^3 + x + 1` (0x1100B, the GF(2^16) polynomial of
//! Jerasure and other erasure codes); the tests check that every non-zero element has its
//! inverse, which holds only if the polynomial is irreducible.
//!
//! Multiplication is a branch-free shift-and-add loop (no tables indexed by secrets).

/// The reduction polynomial without its x^16 term.
const POLY: u32 = 0x100B;

/// Product in GF(2^16).
pub fn mul(a: u16, b: u16) -> u16 {
    let mut a = u32::from(a);
    let b = u32::from(b);
    let mut out = 0u32;
    for i in 0..16 {
        // Add `a` when bit i of b is set, without a branch on the (secret) bit.
        out ^= a & 0u32.wrapping_sub((b >> i) & 1);
        let carry = (a >> 15) & 1;
        a = ((a << 1) & 0xFFFF) ^ (POLY & 0u32.wrapping_sub(carry));
    }
    out as u16
}

/// `a^(2^16 - 2)`: the inverse of a non-zero `a` (0 for 0).
pub fn inv(a: u16) -> u16 {
    let mut result = 1u16;
    let mut base = a;
    let mut e: u32 = 0xFFFE;
    while e > 0 {
        if e & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    result
}

fn to_elems(bytes: &[u8; 32]) -> [u16; 16] {
    let mut out = [0u16; 16];
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = u16::from_le_bytes([c[0], c[1]]);
    }
    out
}

fn to_bytes(elems: &[u16; 16]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (c, e) in out.chunks_exact_mut(2).zip(elems) {
        c.copy_from_slice(&e.to_le_bytes());
    }
    out
}

/// Shares of `secret` at the points `xs` (each non-zero) with polynomials whose coefficients of
/// degree 1 to `coefficients.len()` are given (32 bytes each: one element per polynomial); the
/// threshold is `coefficients.len() + 1`. The caller draws the coefficients (secret, uniform).
pub fn split(secret: &[u8; 32], coefficients: &[[u8; 32]], xs: &[u16]) -> Vec<[u8; 32]> {
    let coeffs: Vec<[u16; 16]> = coefficients.iter().map(to_elems).collect();
    let s = to_elems(secret);
    xs.iter()
        .map(|&x| {
            // Horner: ((c_k x + c_{k-1}) x + ...) x + s.
            let mut acc = [0u16; 16];
            for c in coeffs.iter().rev() {
                for (a, ci) in acc.iter_mut().zip(c) {
                    *a = mul(*a, x) ^ ci;
                }
            }
            for (a, si) in acc.iter_mut().zip(&s) {
                *a = mul(*a, x) ^ si;
            }
            to_bytes(&acc)
        })
        .collect()
}

/// The secret from shares `(x, share)`: the interpolating polynomial's value at 0. `None` when
/// there is no share, an x is 0 or two shares have the same x. Shares of another polynomial,
/// or too few, give a wrong secret: the caller checks it against a commitment.
pub fn combine(shares: &[(u16, [u8; 32])]) -> Option<[u8; 32]> {
    if shares.is_empty() {
        return None;
    }
    let mut seen = std::collections::BTreeSet::new();
    if shares.iter().any(|(x, _)| *x == 0 || !seen.insert(*x)) {
        return None;
    }
    let mut out = [0u16; 16];
    for (i, (xi, yi)) in shares.iter().enumerate() {
        // Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i); subtraction is xor.
        let mut num = 1u16;
        let mut den = 1u16;
        for (j, (xj, _)) in shares.iter().enumerate() {
            if i != j {
                num = mul(num, *xj);
                den = mul(den, *xj ^ *xi);
            }
        }
        let l = mul(num, inv(den));
        for (o, y) in out.iter_mut().zip(to_elems(yi)) {
            *o ^= mul(l, y);
        }
    }
    Some(to_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_products_match_hand_computed_values_and_every_element_has_an_inverse() {
        // x * x^15 = x^16 = x^12 + x^3 + x + 1 (the reduction).
        assert_eq!(mul(2, 0x8000), 0x100B);
        // (x + 1)^2 = x^2 + 1 in characteristic 2.
        assert_eq!(mul(3, 3), 5);
        assert_eq!(mul(0x1234, 1), 0x1234);
        assert_eq!(mul(0x1234, 0), 0);
        // x^15 * x^15 = x^30 = x^14 * x^16 = x^14 (x^12 + x^3 + x + 1), reduced by hand:
        // x^26 + x^17 + x^15 + x^14; x^26 = x^10 x^16 = x^22 + x^13 + x^11 + x^10,
        // x^22 = x^6 x^16 = x^18 + x^9 + x^7 + x^6, x^18 = x^14 + x^5 + x^3 + x^2,
        // x^17 = x^13 + x^4 + x^2 + x; summed (xor):
        // x^15 + x^11 + x^10 + x^9 + x^7 + x^6 + x^5 + x^4 + x^3 + x.
        assert_eq!(mul(0x8000, 0x8000), 0x8EFA);
        for a in 1..=u16::MAX {
            assert_eq!(mul(a, inv(a)), 1, "inverse of {a:#x}");
        }
        assert_eq!(inv(0), 0);
    }

    #[test]
    fn threshold_two_shares_are_the_line_through_the_secret_and_recombine() {
        let secret = [7u8; 32];
        let a = [3u8; 32];
        let shares = split(&secret, &[a], &[1, 2, 5]);
        // At x = 1: s + a; at x = 2: s + 2a (per 16-bit element, xor for +).
        let s = u16::from_le_bytes([7, 7]);
        let c = u16::from_le_bytes([3, 3]);
        assert_eq!(to_elems(&shares[0])[0], s ^ c);
        assert_eq!(to_elems(&shares[1])[0], s ^ mul(2, c));
        assert_eq!(to_elems(&shares[2])[5], s ^ mul(5, c));
        assert_eq!(combine(&[(1, shares[0]), (2, shares[1])]), Some(secret));
        assert_eq!(combine(&[(5, shares[2]), (1, shares[0])]), Some(secret));
        // One share of a threshold-2 sharing is not the secret.
        assert_ne!(combine(&[(2, shares[1])]), Some(secret));
        assert_eq!(combine(&[]), None);
        assert_eq!(combine(&[(1, shares[0]), (1, shares[0])]), None);
        assert_eq!(combine(&[(0, secret)]), None);
    }

    #[test]
    fn any_threshold_of_many_shares_recovers_and_fewer_do_not() {
        let secret: [u8; 32] = std::array::from_fn(|i| (i * 37 + 11) as u8);
        let coefficients: Vec<[u8; 32]> = (0..4u8)
            .map(|k| std::array::from_fn(|i| (i as u8).wrapping_mul(91).wrapping_add(k * 13 + 1)))
            .collect();
        let xs: Vec<u16> = vec![1, 2, 3, 700, 1024, 65535, 9];
        let shares = split(&secret, &coefficients, &xs);
        let points: Vec<(u16, [u8; 32])> = xs.iter().copied().zip(shares).collect();
        for start in 0..3 {
            assert_eq!(combine(&points[start..start + 5]), Some(secret));
        }
        assert_eq!(
            combine(&points),
            Some(secret),
            "more than t shares also work"
        );
        assert_ne!(combine(&points[..4]), Some(secret), "t - 1 shares do not");
        let mut bad = points[..5].to_vec();
        bad[2].1[0] ^= 1;
        assert_ne!(
            combine(&bad),
            Some(secret),
            "a changed share changes the result"
        );
    }
}
