//! What both learning rules share behind the forward pass: the per-sample record,
//! the PSP kernel of the inner loops, error routing through pooling, the sums over
//! a layer's synapses that carry errors down (`Σ_j g_j w̃_ji ε'(t_j − t_i)`) and
//! phase 2, the batch sum of `g_j ε(t_j − t_i)` per weight row. Every weight sees
//! the same additions in the same order for any number of threads, so results are
//! bit-identical, and no weight-sized buffer per sample or per task is needed.

use rayon::prelude::*;

use crate::bits::sign;
use crate::decide::decide_with_tmax;
use crate::engine::{avx2_or_portable, Active, ConvGeom, PoolGeom, RowWeights, Scratch};
use crate::network::{Layer, Network};
use crate::psp::Psp;
use crate::spec::{Displacement, Neuron};

/// What phase 1 keeps of one sample.
pub(crate) struct SampleRec {
    /// Spike times of every layer.
    pub times: Vec<Vec<f64>>,
    /// Per spiking layer, the factor `g_j` phase 2 multiplies `ε(t_j − t_i)` by.
    pub g: Vec<Vec<f64>>,
    /// Per layer: its spiking inputs sorted by time (Dense layers only).
    pub active: Vec<Vec<Active>>,
    pub prediction: usize,
    pub case: u8,
    pub loss: f64,
    /// Per layer: fraction of neurons that fire.
    pub fired: Vec<f64>,
    /// Synaptic events of the forward pass (see [`crate::ForwardOut::events`]).
    pub events: u64,
}

impl SampleRec {
    /// The forward half of a record: `g` empty and `loss` 0 until a rule fills them.
    pub fn forward(
        net: &Network,
        prep: &[Option<RowWeights>],
        x: &[f64],
        scratch: &mut Scratch,
        parts: usize,
    ) -> SampleRec {
        let mut active = Vec::with_capacity(net.layers.len());
        let (times, events) = net.forward_sample(
            prep,
            x,
            &mut scratch.events,
            &mut scratch.act,
            Some(&mut active),
            parts,
        );
        let v_end = net.v_end(prep, x, &times);
        let (prediction, case) = decide_with_tmax(&times[times.len() - 1], &v_end, net.tmax);
        let fired = times
            .iter()
            .map(|t| t.iter().filter(|&&t| t < net.tmax).count() as f64 / t.len() as f64)
            .collect();
        SampleRec {
            times,
            g: Vec::new(),
            active,
            prediction,
            case,
            loss: 0.0,
            fired,
            events,
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
        // `&`, not `&&`: one select, no branch, so the loops over a field vectorise.
        let rise = if (s > 0.0) & (s <= self.tau1) {
            self.inv1
        } else {
            0.0
        };
        if self.inf {
            rise
        } else {
            let fall = if (s > self.tau1) & (s <= self.end) {
                -self.inv2
            } else {
                0.0
            };
            rise + fall
        }
    }
}

/// `softmax(−t/τ)` of one sample's output times: the probabilities behind the
/// exact rule's cross-entropy (contract §10) and STiDi-BP's softmax targets (§5).
pub(crate) fn softmax(y: &[f64], tau: f64) -> Vec<f64> {
    let z_max = y
        .iter()
        .map(|&t| -t / tau)
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = y.iter().map(|&t| (-t / tau - z_max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|&ek| ek / sum).collect()
}

/// Sends each pooled neuron's error to its window's winner.
pub(crate) fn route_pool(err: &[f64], x: &[f64], g: &PoolGeom) -> Vec<f64> {
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
pub(crate) fn forward_weight(w: f64, binary: bool) -> f64 {
    if binary {
        sign(w)
    } else {
        w
    }
}

/// `dsum_i += Σ_j g_j w̃_ji ε'(t_j − t_i)` of a Dense layer (pairs `t_i < t_j`).
pub(crate) fn disp_dense(
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

avx2_or_portable! {
    /// The same for a Conv2d: every output neuron over its receptive field,
    /// restricted to the input channels `chans`; `dsum` holds those channels.
    /// `at_end`: `ε'(t_k − t_i)` per input when every neuron's kernel time is the
    /// same `t_k` (ramp neurons), the same values as evaluated per pair.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn disp_conv(
        kern: &Kern,
        geom: &ConvGeom,
        x: &[f64],
        y: &[f64],
        g: &[f64],
        w: &[f64],
        binary: bool,
        chans: std::ops::Range<usize>,
        dsum: &mut [f64],
        at_end: Option<&[f64]>,
    ) = disp_conv_body;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn disp_conv_body(
    kern: &Kern,
    geom: &ConvGeom,
    x: &[f64],
    y: &[f64],
    g: &[f64],
    w: &[f64],
    binary: bool,
    chans: std::ops::Range<usize>,
    dsum: &mut [f64],
    at_end: Option<&[f64]>,
) {
    if let Some(e) = at_end {
        disp_conv_channels_last(geom, g, w, binary, chans, dsum, e);
        return;
    }
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
                let d = &mut dsum[base - off..base - off + k];
                for ((d, &ti), &wr) in d.iter_mut().zip(&x[base..base + k]).zip(&wrow[r0..r0 + k]) {
                    *d += gj * forward_weight(wr, binary) * kern.deps(tj - ti);
                }
            }
        }
    }
}

/// [`disp_conv`] with one kernel value per input (`at_end`, ramp neurons), in a
/// channels-last copy: for one output neuron and one kernel offset, the terms
/// of all the input channels `chans` go to consecutive sums, one vector pass.
/// Every input's sum takes its terms in the same order as the loop of
/// [`disp_conv`] (output neurons in order, one term each), and `dsum` (zero on
/// entry) receives the sums.
#[inline(always)]
fn disp_conv_channels_last(
    geom: &ConvGeom,
    g: &[f64],
    w: &[f64],
    binary: bool,
    chans: std::ops::Range<usize>,
    dsum: &mut [f64],
    e: &[f64],
) {
    let (k, rows, positions) = (geom.k, geom.rows(), geom.positions());
    let (nc, plane) = (chans.len(), geom.h * geom.w);
    // (y, x, c) copies of ε' and the sums; forward weights as (o, ky, kx, c).
    let mut e_t = vec![0.0; plane * nc];
    for (c, ec) in e[chans.start * plane..chans.end * plane]
        .chunks_exact(plane)
        .enumerate()
    {
        for (i, &v) in ec.iter().enumerate() {
            e_t[i * nc + c] = v;
        }
    }
    let mut w_t = vec![0.0; geom.cout * k * k * nc];
    for (o, wo) in w.chunks_exact(rows).enumerate() {
        for (ci, c) in chans.clone().enumerate() {
            for q in 0..k * k {
                w_t[(o * k * k + q) * nc + ci] = forward_weight(wo[c * k * k + q], binary);
            }
        }
    }
    let mut d_t = vec![0.0; plane * nc];
    for (j, &gj) in g.iter().enumerate() {
        if gj == 0.0 {
            continue;
        }
        let (o, p) = (j / positions, j % positions);
        let (oy, ox) = (p / geom.wo, p % geom.wo);
        for ky in 0..k {
            for kx in 0..k {
                let i = ((oy + ky) * geom.w + ox + kx) * nc;
                let q = (o * k * k + ky * k + kx) * nc;
                let d = &mut d_t[i..i + nc];
                for ((d, &ev), &wv) in d.iter_mut().zip(&e_t[i..i + nc]).zip(&w_t[q..q + nc]) {
                    *d += gj * wv * ev;
                }
            }
        }
    }
    for (c, dc) in dsum.chunks_exact_mut(plane).enumerate().take(nc) {
        for (i, d) in dc.iter_mut().enumerate() {
            *d = d_t[i * nc + c];
        }
    }
}

avx2_or_portable! {
    /// Phase 2 for one output channel `o` of spiking layer `l`: adds the batch sum
    /// of `g_j ε(t_j − t_i)` over the row's weights (samples in order, then
    /// positions, then the receptive field) into `acc`, which must be zero.
    /// Returns, for a Dense layer, how many sorted inputs each sample touched
    /// (`touched[b]`), so that the caller can visit only those. Conv2d layers of
    /// ramp neurons sum all their rows at once instead ([`conv_sums_at_end`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn accumulate_row(
        net: &Network,
        l: usize,
        o: usize,
        recs: &[SampleRec],
        input: &[f64],
        acc: &mut [f64],
        touched: &mut Vec<usize>,
    ) = accumulate_row_body;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate_row_body(
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
                let tj = net.kernel_time(rec.times[l][o]);
                let act = &rec.active[l];
                let mut k = 0;
                if kern.inf {
                    // Inputs sorted by time: the plateau (ε = 1) is a prefix,
                    // then the rise, ε = s/τ1, up to t_j (g_j/τ1 hoisted out of
                    // the loop: within an ulp of g_j·ε).
                    k = act.partition_point(|a| tj - a.t > tau1);
                    for a in &act[..k] {
                        acc[a.src as usize] += gj;
                    }
                    let end = k + act[k..].partition_point(|a| tj - a.t > 0.0);
                    let g1 = gj / tau1;
                    for a in &act[k..end] {
                        acc[a.src as usize] += g1 * (tj - a.t);
                    }
                    k = end;
                }
                while !kern.inf && k < act.len() {
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
                            let a = &mut acc[r0..r0 + k];
                            for (a, &ti) in a.iter_mut().zip(&x[base..base + k]) {
                                *a += gj * kern.eps(net.kernel_time(tj) - ti);
                            }
                        }
                    }
                }
            }
        }
        Layer::Pool { .. } => {}
    }
}

/// `V'_j(t_j) = Σ_i w̃_ji ε'(t_j − t_i)` of every neuron of a Dense layer that
/// fires and has an error `delta_j ≠ 0` (0 for the others: nothing uses it).
pub(crate) fn slope_dense(
    kern: &Kern,
    x: &[f64],
    y: &[f64],
    delta: &[f64],
    w: &[f64],
    binary: bool,
    tmax: f64,
) -> Vec<f64> {
    let n_in = x.len();
    y.iter()
        .zip(delta)
        .enumerate()
        .map(|(j, (&tj, &d))| {
            if tj >= tmax || d == 0.0 {
                return 0.0;
            }
            let row = &w[j * n_in..(j + 1) * n_in];
            x.iter()
                .zip(row)
                .map(|(&ti, &wji)| forward_weight(wji, binary) * kern.deps(tj - ti))
                .sum()
        })
        .collect()
}

/// The same for a Conv2d, over each neuron's receptive field (below a pooling
/// layer only the windows' winners have errors).
#[allow(clippy::too_many_arguments)]
pub(crate) fn slope_conv(
    kern: &Kern,
    geom: &ConvGeom,
    x: &[f64],
    y: &[f64],
    delta: &[f64],
    w: &[f64],
    binary: bool,
    tmax: f64,
) -> Vec<f64> {
    let (k, rows, positions) = (geom.k, geom.rows(), geom.positions());
    y.iter()
        .zip(delta)
        .enumerate()
        .map(|(j, (&tj, &d))| {
            if tj >= tmax || d == 0.0 {
                return 0.0;
            }
            let (o, p) = (j / positions, j % positions);
            let (oy, ox) = (p / geom.wo, p % geom.wo);
            let wrow = &w[o * rows..(o + 1) * rows];
            let mut v = 0.0;
            for c in 0..geom.cin {
                for ky in 0..k {
                    let base = c * geom.h * geom.w + (oy + ky) * geom.w + ox;
                    let r0 = (c * k + ky) * k;
                    for (&ti, &wr) in x[base..base + k].iter().zip(&wrow[r0..r0 + k]) {
                        v += forward_weight(wr, binary) * kern.deps(tj - ti);
                    }
                }
            }
            v
        })
        .collect()
}

/// Phase 2 of a Dense layer, input by input: what a STiDi-BP step reads of a
/// batch, laid out per sample so that one input's sums over all outputs are a
/// vector pass (the row-by-row [`accumulate_row`] scatters one output's sums
/// over the sample's inputs instead). Each weight's sum adds the same terms in
/// the same sample order as `accumulate_row`, plus `+0` for pairs it skips.
pub(crate) struct DenseBatch {
    out: usize,
    rows: usize,
    /// Per sample with an error, the layer's input times (`rows` each).
    x: Vec<f64>,
    /// Per such sample, the outputs' kernel times, `g_j` and (τ2 = ∞) `g_j/τ1`.
    t: Vec<f64>,
    g: Vec<f64>,
    g1: Vec<f64>,
    /// Inputs that spike in at least one sample: the others get no sum.
    pub spiked: Vec<bool>,
    psp: Psp,
    tmax: f64,
}

impl DenseBatch {
    pub fn new(net: &Network, l: usize, recs: &[SampleRec], input: &[f64]) -> DenseBatch {
        let (out, rows) = net.layers[l].weight_dims().expect("a Dense layer");
        let si = net.spiking_index(l);
        let n_in = net.in_size;
        let tau1 = net.psp.tau_rise;
        let tmax = net.tmax;
        let (mut x, mut cat) = (Vec::with_capacity(recs.len() * rows), Vec::new());
        let mut t = Vec::with_capacity(recs.len() * out);
        let mut g = Vec::with_capacity(recs.len() * out);
        let mut spiked = vec![false; rows];
        for (b, rec) in recs.iter().enumerate() {
            let xb = net.input_of(l, &input[b * n_in..(b + 1) * n_in], &rec.times, &mut cat);
            for (s, &ti) in spiked.iter_mut().zip(xb) {
                *s |= ti < tmax;
            }
            // A sample with no error adds only zeros (a trained network's usual
            // case): leave it out, as `accumulate_row` skips each `g_j = 0`.
            if rec.g[si].iter().all(|&gj| gj == 0.0) {
                continue;
            }
            x.extend_from_slice(xb);
            t.extend(rec.times[l].iter().map(|&tj| net.kernel_time(tj)));
            g.extend_from_slice(&rec.g[si]);
        }
        let g1 = g.iter().map(|&gj| gj / tau1).collect();
        DenseBatch {
            out,
            rows,
            x,
            t,
            g,
            g1,
            spiked,
            psp: net.psp,
            tmax,
        }
    }

    /// Sets `sums[(i − inputs.start) * out + j]` to the batch sum of
    /// `g_j ε(t_j − t_i)` over the samples in which input `i` spikes.
    pub fn sums(&self, inputs: std::ops::Range<usize>, sums: &mut [f64]) {
        dense_batch_sums(self, inputs, sums)
    }

    #[inline(always)]
    fn sums_body(&self, inputs: std::ops::Range<usize>, sums: &mut [f64]) {
        let (out, tau1) = (self.out, self.psp.tau_rise);
        sums.fill(0.0);
        for (b, xb) in self.x.chunks_exact(self.rows).enumerate() {
            let t = &self.t[b * out..(b + 1) * out];
            let g = &self.g[b * out..(b + 1) * out];
            let g1 = &self.g1[b * out..(b + 1) * out];
            for (acc, &ti) in sums.chunks_exact_mut(out).zip(&xb[inputs.clone()]) {
                if ti >= self.tmax {
                    continue;
                }
                if self.psp.tau_fall.is_infinite() {
                    // The plateau adds g_j, the rise (g_j/τ1)·s, as accumulate_row.
                    for (((a, &tj), &gj), &g1j) in acc.iter_mut().zip(t).zip(g).zip(g1) {
                        let s = tj - ti;
                        let c = if s > tau1 { gj } else { g1j * s };
                        *a += if s > 0.0 { c } else { 0.0 };
                    }
                } else {
                    for ((a, &tj), &gj) in acc.iter_mut().zip(t).zip(g) {
                        let s = tj - ti;
                        if s > 0.0 {
                            *a += gj * self.psp.eps(s);
                        }
                    }
                }
            }
        }
    }
}

avx2_or_portable! {
    fn dense_batch_sums(
        batch: &DenseBatch,
        inputs: std::ops::Range<usize>,
        sums: &mut [f64],
    ) = DenseBatch::sums_body;
}

/// Ramp neurons evaluate every kernel at one time, the end of the window below:
/// `ε(tmax − t_i)` of each sample's inputs to layer `l`, computed once rather
/// than once per pair. `None` for PSP neurons.
pub(crate) fn kernels_at_end(
    net: &Network,
    l: usize,
    recs: &[SampleRec],
    input: &[f64],
) -> Option<Vec<f64>> {
    if net.neuron != Neuron::Ramp {
        return None;
    }
    let kern = Kern::new(&net.psp);
    let (mut cat, mut out) = (Vec::new(), Vec::new());
    for (b, rec) in recs.iter().enumerate() {
        let xb = &input[b * net.in_size..(b + 1) * net.in_size];
        let x = net.input_of(l, xb, &rec.times, &mut cat);
        out.extend(x.iter().map(|&ti| kern.eps(net.tmax - ti)));
    }
    Some(out)
}

/// Output channels summed together by [`conv_sums_at_end`]: two AVX2 vectors.
const CONV_BLOCK: usize = 8;

/// Phase 2 sums of every output channel of a Conv2d layer of ramp neurons
/// (`at_end`: [`kernels_at_end`] of the batch), laid out `(C_out, rows)`: each
/// row the values [`accumulate_row`] gives it. Blocks of [`CONV_BLOCK`] channels
/// run in parallel, and within one each kernel value `ε(tmax − t_i)` is
/// multiplied by the block's `g_j` as one vector: every sum still takes its
/// terms in the same order (samples, positions). A channel with `g_j = 0` at a
/// position adds `0·ε`, a signed zero, which leaves its sum as it was (the sums
/// start at +0.0 and so never hold −0.0), where `accumulate_row` skips it.
pub(crate) fn conv_sums_at_end(
    net: &Network,
    l: usize,
    recs: &[SampleRec],
    at_end: &[f64],
) -> Vec<f64> {
    let Layer::Conv { g: geom, .. } = &net.layers[l] else {
        unreachable!("conv_sums_at_end is for Conv2d layers");
    };
    let (k, rows, positions) = (geom.k, geom.rows(), geom.positions());
    let n_x = geom.cin * geom.h * geom.w;
    // Offset of each weight's input from its position's first input.
    let offsets: Vec<usize> = (0..geom.cin)
        .flat_map(|c| (0..k).flat_map(move |ky| (0..k).map(move |kx| (c, ky, kx))))
        .map(|(c, ky, kx)| c * geom.h * geom.w + ky * geom.w + kx)
        .collect();
    let si = net.spiking_index(l);
    let mut sums = vec![0.0; geom.cout * rows];
    sums.par_chunks_mut(CONV_BLOCK * rows)
        .enumerate()
        .for_each(|(blk, out)| {
            let o0 = blk * CONV_BLOCK;
            let acc = conv_block_sums(geom, si, o0, recs, at_end, n_x, &offsets);
            for (q, row) in out.chunks_exact_mut(rows).enumerate() {
                for (r, s) in row.iter_mut().enumerate() {
                    *s = acc[r * CONV_BLOCK + q];
                }
            }
        });
    debug_assert_eq!(
        positions * geom.cout,
        recs.first().map_or(0, |r| r.g[si].len())
    );
    sums
}

avx2_or_portable! {
    /// The sums of the channels `o0..o0 + CONV_BLOCK` (those past `C_out` get
    /// `g = 0`), laid out `(rows, CONV_BLOCK)`.
    fn conv_block_sums(
        geom: &ConvGeom,
        si: usize,
        o0: usize,
        recs: &[SampleRec],
        at_end: &[f64],
        n_x: usize,
        offsets: &[usize],
    ) -> Vec<f64> = conv_block_sums_body;
}

#[inline(always)]
fn conv_block_sums_body(
    geom: &ConvGeom,
    si: usize,
    o0: usize,
    recs: &[SampleRec],
    at_end: &[f64],
    n_x: usize,
    offsets: &[usize],
) -> Vec<f64> {
    let positions = geom.positions();
    let n = CONV_BLOCK.min(geom.cout - o0);
    let mut acc = vec![0.0; offsets.len() * CONV_BLOCK];
    for (b, rec) in recs.iter().enumerate() {
        let e = &at_end[b * n_x..(b + 1) * n_x];
        let gs = &rec.g[si];
        for p in 0..positions {
            let mut g = [0.0; CONV_BLOCK];
            for (q, g) in g.iter_mut().enumerate().take(n) {
                *g = gs[(o0 + q) * positions + p];
            }
            if g.iter().all(|&g| g == 0.0) {
                continue;
            }
            let base = (p / geom.wo) * geom.w + p % geom.wo;
            let e = &e[base..];
            for (a, &off) in acc.chunks_exact_mut(CONV_BLOCK).zip(offsets) {
                let a: &mut [f64; CONV_BLOCK] = a.try_into().unwrap();
                let ev = e[off];
                for q in 0..CONV_BLOCK {
                    a[q] += g[q] * ev;
                }
            }
        }
    }
    acc
}
