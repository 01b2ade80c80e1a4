//! STiDi-BP (contract §5) in two phases.
//!
//! 1. Per sample (parallel over samples): the forward pass, the output targets,
//!    every layer's normalised errors and the displacements to the layers below.
//!    The result is, per spiking layer, `g_j = ê_j t_j / θ` (zero where `ê_j = 0`).
//! 2. Per weight row (parallel over output channels): the batch sum of
//!    `g_j ε(t_j − t_i)`, visiting the samples in order, fused with the update.
//!    Every weight sees the same additions in the same order for any number of
//!    threads, so the result is bit-identical, and no weight-sized buffer per
//!    sample or per task is needed.

use crate::bits::sign;
use crate::decide::decide_with_tmax;
use rayon::prelude::*;

use crate::engine::{Active, ConvGeom, Event, PoolGeom, RowWeights, SPLIT_MIN_NEURONS};
use crate::network::{Layer, Network};
use crate::psp::Psp;
use crate::spec::{Displacement, Hyper};

/// Reusable per-thread buffers of phase 1.
#[derive(Default)]
pub(crate) struct Scratch {
    pub events: Vec<Event>,
    pub act: Vec<Active>,
}

/// What phase 1 keeps of one sample.
pub(crate) struct SampleRec {
    /// Spike times of every layer.
    pub times: Vec<Vec<f64>>,
    /// Per spiking layer: `ê_j t_j / θ`, zero where `ê_j = 0`.
    pub g: Vec<Vec<f64>>,
    /// Per layer: its spiking inputs sorted by time (Dense layers only).
    pub active: Vec<Vec<Active>>,
    pub prediction: usize,
    pub case: u8,
    pub loss: f64,
    /// Per layer: fraction of neurons that fire.
    pub fired: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn sample_pass(
    net: &Network,
    prep: &[Option<RowWeights>],
    weights: &[&[f64]],
    x: &[f64],
    label: usize,
    hyper: &Hyper,
    scratch: &mut Scratch,
    parts: usize,
) -> SampleRec {
    let mut active = Vec::with_capacity(net.layers.len());
    let times = net.forward_sample(
        prep,
        x,
        &mut scratch.events,
        &mut scratch.act,
        Some(&mut active),
        parts,
    );
    let v_end = net.v_end(prep, x, &times);
    let y = &times[times.len() - 1];
    let (prediction, case) = decide_with_tmax(y, &v_end, net.tmax);
    let fired = times
        .iter()
        .map(|t| t.iter().filter(|&&t| t < net.tmax).count() as f64 / t.len() as f64)
        .collect();
    let (loss, g) = backward_sample(net, weights, x, &times, label, hyper, parts);
    SampleRec {
        times,
        g,
        active,
        prediction,
        case,
        loss,
        fired,
    }
}

/// Relative output targets (S4NN family) for one sample.
pub(crate) fn output_targets(y: &[f64], label: usize, gamma: f64, tmax: f64) -> Vec<f64> {
    let t_min = y.iter().copied().fold(f64::INFINITY, f64::min);
    if t_min >= tmax {
        let mut target = vec![tmax; y.len()];
        target[label] = tmax - gamma;
        return target;
    }
    y.iter()
        .enumerate()
        .map(|(k, &t)| {
            if k == label {
                t_min
            } else if t - t_min < gamma {
                (t_min + gamma).min(tmax)
            } else {
                t
            }
        })
        .collect()
}

/// Divides by the L2 norm; a zero vector stays zero.
pub(crate) fn normalize(e: &mut [f64]) {
    let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in e {
            *x /= norm;
        }
    }
}

/// Branch-free `ε` and `ε'` for the inner loops (contract §2).
#[derive(Clone, Copy)]
pub(crate) struct Kern {
    tau1: f64,
    inv1: f64,
    inv2: f64,
    end: f64,
    inf: bool,
    causal: bool,
}

impl Kern {
    pub fn new(psp: &Psp) -> Kern {
        Kern {
            tau1: psp.tau_rise,
            inv1: 1.0 / psp.tau_rise,
            inv2: 1.0 / psp.tau_fall,
            end: psp.tau_rise + psp.tau_fall,
            inf: psp.tau_fall.is_infinite(),
            causal: false,
        }
    }

    /// The kernel whose `deps` is the displacement slope of `mode`.
    pub fn for_displacement(psp: &Psp, mode: Displacement) -> Kern {
        Kern {
            causal: mode == Displacement::Causal,
            ..Kern::new(psp)
        }
    }

    /// ε(s); the rise uses `s · (1/τ1)` (within an ulp of `s / τ1`).
    #[inline(always)]
    pub fn eps(&self, s: f64) -> f64 {
        let rise = s * self.inv1;
        if self.inf {
            rise.clamp(0.0, 1.0)
        } else {
            rise.min((self.end - s) * self.inv2).max(0.0)
        }
    }

    /// ε'(s), the left segment's value at a breakpoint; 0 where the reference
    /// has −0.0 (adding ±0 changes no sum). With `causal`, `1/τ1` for any `s > 0`.
    #[inline(always)]
    pub fn deps(&self, s: f64) -> f64 {
        if self.causal {
            return if s > 0.0 { self.inv1 } else { 0.0 };
        }
        let rise = if s > 0.0 && s <= self.tau1 {
            self.inv1
        } else {
            0.0
        };
        if self.inf {
            rise
        } else {
            let fall = if s > self.tau1 && s <= self.end {
                -self.inv2
            } else {
                0.0
            };
            rise + fall
        }
    }
}

/// One sample's output loss and, per spiking layer, `g_j = ê_j t_j / θ`.
fn backward_sample(
    net: &Network,
    weights: &[&[f64]],
    x: &[f64],
    times: &[Vec<f64>],
    label: usize,
    hyper: &Hyper,
    parts: usize,
) -> (f64, Vec<Vec<f64>>) {
    let tmax = net.tmax;
    let kern = Kern::for_displacement(&net.psp, hyper.displacement);
    let y_out = &times[times.len() - 1];
    let target = output_targets(y_out, label, hyper.gamma, tmax);
    let mut err: Vec<f64> = target
        .iter()
        .zip(y_out)
        .map(|(tt, t)| (tt - t) / tmax)
        .collect();
    let loss = 0.5 * err.iter().map(|e| e * e).sum::<f64>();
    let mut gs = vec![Vec::new(); net.spiking.len()];
    let mut si = net.spiking.len();
    // Errors a skip sends to the layer it reads, added to what reaches that layer
    // through the chain.
    let mut skipped: Vec<Option<Vec<f64>>> = vec![None; net.layers.len()];
    let mut cat = Vec::new();
    for l in (0..net.layers.len()).rev() {
        if let Some(extra) = skipped[l].take() {
            for (e, x) in err.iter_mut().zip(extra) {
                *e += x;
            }
        }
        let xin = net.input_of(l, x, times, &mut cat);
        let y = &times[l];
        let (theta, binary) = match &net.layers[l] {
            Layer::Pool { g } => {
                err = route_pool(&err, xin, g);
                continue;
            }
            Layer::Conv { theta, binary, .. } | Layer::Dense { theta, binary, .. } => {
                (*theta, *binary)
            }
        };
        si -= 1;
        if hyper.normalize {
            normalize(&mut err);
        }
        let g: Vec<f64> = err
            .iter()
            .zip(y)
            .map(|(&e, &tj)| if e == 0.0 { 0.0 } else { e * tj / theta })
            .collect();
        gs[si] = g;
        // Nothing below learns (the first spiking layer, or read-out training with
        // the layers below frozen): no displacement to compute.
        if !hyper.lr[..si].iter().any(|&lr| lr != 0.0) {
            break;
        }
        let g = &gs[si];
        let mut dsum = vec![0.0; xin.len()];
        let w = weights[l];
        match &net.layers[l] {
            Layer::Conv { g: geom, .. } => {
                let plane = geom.h * geom.w;
                // Split over input channels: each input's sum keeps its order.
                let per = geom.cin.div_ceil(parts.min(geom.cin).max(1));
                if per < geom.cin && geom.positions() * geom.cout >= SPLIT_MIN_NEURONS {
                    dsum.par_chunks_mut(per * plane)
                        .enumerate()
                        .for_each(|(part, d)| {
                            let c0 = part * per;
                            let cs = c0..c0 + d.len() / plane;
                            disp_conv(&kern, geom, xin, y, g, w, binary, cs, d);
                        });
                } else {
                    disp_conv(&kern, geom, xin, y, g, w, binary, 0..geom.cin, &mut dsum);
                }
            }
            _ => disp_dense(&kern, xin, y, g, w, binary, &mut dsum),
        }
        let beta = hyper.beta[si];
        err = xin
            .iter()
            .zip(&dsum)
            .map(|(&t, &s)| {
                let d = beta * s;
                ((t + tmax * d).clamp(0.0, tmax) - t) / tmax
            })
            .collect();
        if let Layer::Dense { skip: Some(k), .. } = net.layers[l] {
            skipped[k] = Some(err.split_off(times[l - 1].len()));
        }
    }
    (loss, gs)
}

/// Sends each pooled neuron's error to its window's winner.
fn route_pool(err: &[f64], x: &[f64], g: &PoolGeom) -> Vec<f64> {
    let mut below = vec![0.0; x.len()];
    let mut k = 0;
    for c in 0..g.c {
        for py in 0..g.ho {
            for px in 0..g.wo {
                below[g.winner(x, c, py, px)] = err[k];
                k += 1;
            }
        }
    }
    below
}

#[inline(always)]
fn forward_weight(w: f64, binary: bool) -> f64 {
    if binary {
        sign(w)
    } else {
        w
    }
}

/// `dsum_i += Σ_j g_j w̃_ji ε'(t_j − t_i)` of a Dense layer (pairs `t_i < t_j`).
fn disp_dense(
    kern: &Kern,
    x: &[f64],
    y: &[f64],
    g: &[f64],
    w: &[f64],
    binary: bool,
    dsum: &mut [f64],
) {
    let n_in = x.len();
    for (j, (&gj, &tj)) in g.iter().zip(y).enumerate() {
        if gj == 0.0 {
            continue;
        }
        let row = &w[j * n_in..(j + 1) * n_in];
        for ((d, &ti), &wji) in dsum.iter_mut().zip(x).zip(row) {
            *d += gj * forward_weight(wji, binary) * kern.deps(tj - ti);
        }
    }
}

/// The same for a Conv2d: every output neuron over its receptive field,
/// restricted to the input channels `chans`; `dsum` holds those channels.
#[allow(clippy::too_many_arguments)]
fn disp_conv(
    kern: &Kern,
    geom: &ConvGeom,
    x: &[f64],
    y: &[f64],
    g: &[f64],
    w: &[f64],
    binary: bool,
    chans: std::ops::Range<usize>,
    dsum: &mut [f64],
) {
    let off = chans.start * geom.h * geom.w;
    let (k, rows, positions) = (geom.k, geom.rows(), geom.positions());
    for (j, (&gj, &tj)) in g.iter().zip(y).enumerate() {
        if gj == 0.0 {
            continue;
        }
        let (o, p) = (j / positions, j % positions);
        let (oy, ox) = (p / geom.wo, p % geom.wo);
        let wrow = &w[o * rows..(o + 1) * rows];
        for c in chans.clone() {
            for ky in 0..k {
                let base = c * geom.h * geom.w + (oy + ky) * geom.w + ox;
                let r0 = (c * k + ky) * k;
                for ((d, &ti), &wr) in dsum[base - off..base - off + k]
                    .iter_mut()
                    .zip(&x[base..base + k])
                    .zip(&wrow[r0..r0 + k])
                {
                    *d += gj * forward_weight(wr, binary) * kern.deps(tj - ti);
                }
            }
        }
    }
}

/// Phase 2 for one output channel `o` of spiking layer `l`: adds the batch sum
/// of `g_j ε(t_j − t_i)` over the row's weights (samples in order, then
/// positions, then the receptive field) into `acc`, which must be zero.
/// Returns, for a Dense layer, how many sorted inputs each sample touched
/// (`touched[b]`), so that the caller can visit only those.
pub(crate) fn accumulate_row(
    net: &Network,
    l: usize,
    o: usize,
    recs: &[SampleRec],
    input: &[f64],
    acc: &mut [f64],
    touched: &mut Vec<usize>,
) {
    let si = net.spiking_index(l);
    let psp = &net.psp;
    let kern = Kern::new(psp);
    touched.clear();
    match &net.layers[l] {
        Layer::Dense { .. } => {
            let tau1 = psp.tau_rise;
            for rec in recs {
                let gj = rec.g[si][o];
                if gj == 0.0 {
                    touched.push(0);
                    continue;
                }
                let tj = rec.times[l][o];
                let act = &rec.active[l];
                let mut k = 0;
                if kern.inf {
                    // Inputs sorted by time: the plateau (ε = 1) is a prefix.
                    k = act.partition_point(|a| tj - a.t > tau1);
                    for a in &act[..k] {
                        acc[a.src as usize] += gj;
                    }
                }
                while k < act.len() {
                    let s = tj - act[k].t;
                    if s <= 0.0 {
                        break;
                    }
                    acc[act[k].src as usize] += gj * psp.eps(s);
                    k += 1;
                }
                touched.push(k);
            }
        }
        Layer::Conv { g: geom, .. } => {
            let (k, positions, n_in) = (geom.k, geom.positions(), net.in_size);
            for (b, rec) in recs.iter().enumerate() {
                let x = if l == 0 {
                    &input[b * n_in..(b + 1) * n_in]
                } else {
                    &rec.times[l - 1][..]
                };
                let gs = &rec.g[si][o * positions..(o + 1) * positions];
                let ys = &rec.times[l][o * positions..(o + 1) * positions];
                for (p, (&gj, &tj)) in gs.iter().zip(ys).enumerate() {
                    if gj == 0.0 {
                        continue;
                    }
                    let (oy, ox) = (p / geom.wo, p % geom.wo);
                    for c in 0..geom.cin {
                        for ky in 0..k {
                            let base = c * geom.h * geom.w + (oy + ky) * geom.w + ox;
                            let r0 = (c * k + ky) * k;
                            for (a, &ti) in acc[r0..r0 + k].iter_mut().zip(&x[base..base + k]) {
                                *a += gj * kern.eps(tj - ti);
                            }
                        }
                    }
                }
            }
        }
        Layer::Pool { .. } => {}
    }
}
