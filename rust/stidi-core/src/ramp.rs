//! Ramp neurons (contract §3a): every spiking layer has its own window of length
//! `tmax`. A neuron integrates its inputs' linear PSPs (slope `1/tmax`) while the
//! window below is open and may not fire before it closes; from then on a ramp
//! current tops its slope up to `1/tmax` whatever its weights, so with
//! `u_j = Σ_i w̃_ji (tmax − t_i)` over the inputs that spiked it fires at
//! `θ·tmax − u_j` of its own window, at 0 if `u_j ≥ θ·tmax` and never if that is
//! `≥ tmax`. Times are relative to each layer's window.

use rayon::prelude::*;

use crate::engine::{avx2_or_portable, ConvGeom, RowWeights, SPLIT_MIN_NEURONS};

/// Spike time of a ramp neuron with drive `u` (`tmax`: no spike).
#[inline]
pub(crate) fn fire_time(u: f64, theta: f64, tmax: f64) -> f64 {
    let t = theta * tmax - u;
    if t >= tmax {
        tmax
    } else {
        t.max(0.0)
    }
}

/// `V` at the end of the neuron's window, `(u + tmax) / tmax`: what the decision
/// rule compares when outputs tie.
pub(crate) fn v_end(u: &[f64], tmax: f64) -> Vec<f64> {
    u.iter().map(|&u| (u + tmax) / tmax).collect()
}

avx2_or_portable! {
    /// Drives `u_j` of a Dense layer (inputs in index order); `scale` multiplies the
    /// weights (binary layers' `±scale`: exact, as `scale·(tmax − t)` only changes sign).
    pub(crate) fn dense_drive(
        x: &[f64],
        w: &RowWeights,
        n_out: usize,
        scale: f64,
        tmax: f64,
    ) -> Vec<f64> = dense_drive_body;
}

#[inline(always)]
fn dense_drive_body(x: &[f64], w: &RowWeights, n_out: usize, scale: f64, tmax: f64) -> Vec<f64> {
    let mut u = vec![0.0; n_out];
    for (i, &t) in x.iter().enumerate() {
        if t < tmax {
            w.axpy(i, scale * (tmax - t), &mut u);
        }
    }
    u
}

/// Drives of a Conv2d, laid out `(C_out, Ho, Wo)`; each position sums its
/// receptive field in weight order. With `parts > 1` (one sample on several
/// threads) the positions are split into that many ranges on the current rayon
/// pool; each position's sum is the same either way.
pub(crate) fn conv_drive(
    x: &[f64],
    g: &ConvGeom,
    w: &RowWeights,
    scale: f64,
    tmax: f64,
    parts: usize,
) -> Vec<f64> {
    let positions = g.positions();
    let parts = parts.min(positions).max(1);
    if parts > 1 && positions * g.cout >= SPLIT_MIN_NEURONS {
        // A fresh copy of the signs, not the thread's own: a thread waiting on
        // the parts may run another sample's drive meanwhile.
        let signs = expand_signs(w, g.rows());
        let real = signs.as_ref().map(|s| RowWeights::real(s, w.out()));
        let w = real.as_ref().unwrap_or(w);
        let per = positions.div_ceil(parts);
        let all: Vec<Vec<f64>> = (0..parts)
            .into_par_iter()
            .map(|k| {
                drive_rows(
                    x,
                    g,
                    w,
                    scale,
                    tmax,
                    k * per..((k + 1) * per).min(positions),
                )
            })
            .collect();
        let mut u = vec![0.0; g.cout * positions];
        for (k, acc) in all.iter().enumerate() {
            scatter(acc, g, k * per, &mut u);
        }
        return u;
    }
    let mut u = vec![0.0; g.cout * positions];
    let acc = if matches!(w, RowWeights::Bits { .. }) {
        SIGNS.with(|signs| {
            let mut signs = signs.borrow_mut();
            fill_signs(w, g.rows(), &mut signs);
            drive_rows(
                x,
                g,
                &RowWeights::real(&signs, w.out()),
                scale,
                tmax,
                0..positions,
            )
        })
    } else {
        drive_rows(x, g, w, scale, tmax, 0..positions)
    };
    scatter(&acc, g, 0, &mut u);
    u
}

thread_local! {
    /// A binary conv layer's signs as `±1.0` rows, reused across calls.
    static SIGNS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A binary layer's first `rows` sign rows as `±1.0` (`None` for real weights).
/// A float row is cheaper to add than one decoded from bits, and a conv layer's
/// signs are few; the sums are bit-identical (`a · ±1.0` is `±a`, as the bits'
/// sign flip gives).
pub(crate) fn expand_signs(w: &RowWeights, rows: usize) -> Option<Vec<f64>> {
    let mut signs = Vec::new();
    matches!(w, RowWeights::Bits { .. }).then(|| {
        fill_signs(w, rows, &mut signs);
        signs
    })
}

fn fill_signs(w: &RowWeights, rows: usize, signs: &mut Vec<f64>) {
    let RowWeights::Bits { packed, wpr, out } = *w else {
        unreachable!("signs of a binary layer")
    };
    signs.clear();
    for words in packed.chunks_exact(wpr).take(rows) {
        signs.extend((0..out).map(|j| {
            if (words[j / 64] >> (j % 64)) & 1 == 1 {
                1.0
            } else {
                -1.0
            }
        }));
    }
}

/// Writes position-major drives of the positions from `start` into `u`,
/// `(C_out, Ho, Wo)` order.
fn scatter(acc: &[f64], g: &ConvGeom, start: usize, u: &mut [f64]) {
    let positions = g.positions();
    for (i, row) in acc.chunks_exact(g.cout).enumerate() {
        for (o, &a) in row.iter().enumerate() {
            u[o * positions + start + i] = a;
        }
    }
}

avx2_or_portable! {
    /// Drives of the positions `range`, position-major (`cout` per position).
    fn drive_rows(
        x: &[f64],
        g: &ConvGeom,
        w: &RowWeights,
        scale: f64,
        tmax: f64,
        range: std::ops::Range<usize>,
    ) -> Vec<f64> = drive_rows_body;
}

#[inline(always)]
fn drive_rows_body(
    x: &[f64],
    g: &ConvGeom,
    w: &RowWeights,
    scale: f64,
    tmax: f64,
    range: std::ops::Range<usize>,
) -> Vec<f64> {
    let mut out = vec![0.0; range.len() * g.cout];
    // A position's spiking inputs (weight rows) and terms, listed once without
    // a branch, in the order every drive sums them.
    let field = g.rows();
    let (mut rows, mut terms) = (vec![0usize; field], vec![0.0f64; field]);
    for (p, acc) in range.zip(out.chunks_exact_mut(g.cout)) {
        let (oy, ox) = (p / g.wo, p % g.wo);
        let mut n = 0;
        for c in 0..g.cin {
            for ky in 0..g.k {
                let base = c * g.h * g.w + (oy + ky) * g.w + ox;
                let r0 = (c * g.k + ky) * g.k;
                for (kx, &t) in x[base..base + g.k].iter().enumerate() {
                    rows[n] = r0 + kx;
                    terms[n] = scale * (tmax - t);
                    n += usize::from(t < tmax);
                }
            }
        }
        let listed = rows[..n].iter().zip(&terms[..n]);
        match *w {
            // Blocks of drives kept in registers over the list, rather than
            // loaded and stored once per input.
            RowWeights::Real { wt, out } if out % DRIVE_BLOCK == 0 => {
                for (blk, acc) in acc.chunks_exact_mut(DRIVE_BLOCK).enumerate() {
                    let mut a = [0.0f64; DRIVE_BLOCK];
                    for (&row, &s) in listed.clone() {
                        let lo = row * out + blk * DRIVE_BLOCK;
                        let w: &[f64; DRIVE_BLOCK] = wt[lo..lo + DRIVE_BLOCK].try_into().unwrap();
                        for q in 0..DRIVE_BLOCK {
                            a[q] += s * w[q];
                        }
                    }
                    acc.copy_from_slice(&a);
                }
            }
            _ => {
                for (&row, &s) in listed {
                    w.axpy(row, s, acc);
                }
            }
        }
    }
    out
}

/// Output channels whose drives [`drive_rows_body`] keeps in registers.
const DRIVE_BLOCK: usize = 16;

/// Spike times from drives.
pub(crate) fn times(u: &[f64], theta: f64, tmax: f64) -> Vec<f64> {
    u.iter().map(|&u| fire_time(u, theta, tmax)).collect()
}
