//! Ramp neurons (contract §3a): every spiking layer has its own window of length
//! `tmax`. A neuron integrates its inputs' linear PSPs (slope `1/tmax`) while the
//! window below is open and may not fire before it closes; from then on a ramp
//! current tops its slope up to `1/tmax` whatever its weights, so with
//! `u_j = Σ_i w̃_ji (tmax − t_i)` over the inputs that spiked it fires at
//! `θ·tmax − u_j` of its own window, at 0 if `u_j ≥ θ·tmax` and never if that is
//! `≥ tmax`. Times are relative to each layer's window.

#[cfg(target_arch = "x86_64")]
use crate::engine::use_avx2;
use crate::engine::{ConvGeom, RowWeights};

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

/// Drives `u_j` of a Dense layer (inputs in index order); `scale` multiplies the
/// weights (binary layers' `±scale`: exact, as `scale·(tmax − t)` only changes sign).
pub(crate) fn dense_drive(
    x: &[f64],
    w: &RowWeights,
    n_out: usize,
    scale: f64,
    tmax: f64,
) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { dense_drive_avx2(x, w, n_out, scale, tmax) };
    }
    dense_drive_body(x, w, n_out, scale, tmax)
}

/// The drives compiled for AVX2 (4 lanes per axpy); no FMA, so every output
/// sees the same IEEE operations as in the portable copy.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dense_drive_avx2(
    x: &[f64],
    w: &RowWeights,
    n_out: usize,
    scale: f64,
    tmax: f64,
) -> Vec<f64> {
    dense_drive_body(x, w, n_out, scale, tmax)
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
/// receptive field in weight order.
pub(crate) fn conv_drive(
    x: &[f64],
    g: &ConvGeom,
    w: &RowWeights,
    scale: f64,
    tmax: f64,
) -> Vec<f64> {
    if let RowWeights::Bits { packed, wpr, out } = *w {
        // A float row is cheaper to add than one decoded from bits, and a conv
        // layer's signs are few: expand them to ±1.0 once per call. The sums
        // are bit-identical (`a · ±1.0` is `±a`, as the bits' sign flip gives).
        return SIGNS.with(|signs| {
            let mut signs = signs.borrow_mut();
            signs.clear();
            for words in packed.chunks_exact(wpr).take(g.rows()) {
                signs.extend((0..out).map(|j| {
                    if (words[j / 64] >> (j % 64)) & 1 == 1 {
                        1.0
                    } else {
                        -1.0
                    }
                }));
            }
            conv_drive_rows(x, g, &RowWeights::real(&signs, out), scale, tmax)
        });
    }
    conv_drive_rows(x, g, w, scale, tmax)
}

thread_local! {
    /// A binary conv layer's signs as `±1.0` rows, reused across calls.
    static SIGNS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn conv_drive_rows(x: &[f64], g: &ConvGeom, w: &RowWeights, scale: f64, tmax: f64) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { conv_drive_avx2(x, g, w, scale, tmax) };
    }
    conv_drive_body(x, g, w, scale, tmax)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn conv_drive_avx2(
    x: &[f64],
    g: &ConvGeom,
    w: &RowWeights,
    scale: f64,
    tmax: f64,
) -> Vec<f64> {
    conv_drive_body(x, g, w, scale, tmax)
}

#[inline(always)]
fn conv_drive_body(x: &[f64], g: &ConvGeom, w: &RowWeights, scale: f64, tmax: f64) -> Vec<f64> {
    let positions = g.positions();
    let mut u = vec![0.0; g.cout * positions];
    let mut acc = vec![0.0; g.cout];
    for p in 0..positions {
        let (oy, ox) = (p / g.wo, p % g.wo);
        acc.iter_mut().for_each(|a| *a = 0.0);
        for c in 0..g.cin {
            for ky in 0..g.k {
                let base = c * g.h * g.w + (oy + ky) * g.w + ox;
                let r0 = (c * g.k + ky) * g.k;
                for (kx, &t) in x[base..base + g.k].iter().enumerate() {
                    if t < tmax {
                        w.axpy(r0 + kx, scale * (tmax - t), &mut acc);
                    }
                }
            }
        }
        for (o, &a) in acc.iter().enumerate() {
            u[o * positions + p] = a;
        }
    }
    u
}

/// Spike times from drives.
pub(crate) fn times(u: &[f64], theta: f64, tmax: f64) -> Vec<f64> {
    u.iter().map(|&u| fire_time(u, theta, tmax)).collect()
}
