//! Event-driven forward kernels (contract §3).
//!
//! Every spiking layer is swept over the sorted breakpoints of its inputs,
//! keeping `(V, slope)` per neuron. Output neurons are grouped by *position*
//! (one position for Dense, `Ho*Wo` for Conv2d): all output channels at a
//! position share their inputs, hence their breakpoints, so their state lives
//! contiguously and is advanced together. A Conv2d layer's positions are swept
//! one after another, each over its own receptive field's breakpoints. The
//! sweeps also have AVX2 copies, chosen at run time ([`sweep_kernels`]).

use rayon::prelude::*;

use crate::bits::words_per_row;
use crate::psp::Psp;

/// One breakpoint of one input: `kind` 0 = rise, 1 = fall, 2 = end of fall.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Event {
    pub t: f64,
    pub src: usize,
    pub kind: usize,
}

/// An input that spikes (`t < tmax`): its time and index.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Active {
    pub t: f64,
    pub src: u32,
}

/// The inputs that spike, sorted by `(t, src)` (a total order: the summation
/// order, hence the rounding, is reproducible).
pub(crate) fn sort_active(x: &[f64], tmax: f64, act: &mut Vec<Active>) {
    act.clear();
    act.extend(
        x.iter()
            .enumerate()
            .filter(|&(_, &t)| t < tmax)
            .map(|(src, &t)| Active { t, src: src as u32 }),
    );
    // Times are >= 0, so their bit patterns order like the values.
    act.sort_unstable_by_key(|a| (a.t.to_bits(), a.src));
}

/// Sorted breakpoints before `tmax` of the inputs that spike (`t < tmax`),
/// merged from the sorted active inputs: `t + τ1` (and `t + τ1 + τ2`) are
/// non-decreasing along that order, so three sorted streams are merged. Equal
/// times keep a fixed order (rise, fall, end; then input order).
pub(crate) fn build_events(
    x: &[f64],
    psp: &Psp,
    tmax: f64,
    act: &mut Vec<Active>,
    events: &mut Vec<Event>,
) {
    sort_active(x, tmax, act);
    events.clear();
    let n = act.len();
    let fall_at = |k: usize| act[k].t + psp.tau_rise;
    let end_at = |k: usize| act[k].t + psp.tau_rise + psp.tau_fall;
    let (mut r, mut f, mut e) = (0, 0, 0);
    loop {
        // Breakpoints at or after tmax cannot change V on [0, tmax); with τ2 = ∞
        // the end breakpoint is +∞ and is dropped here.
        let tr = if r < n { act[r].t } else { f64::INFINITY };
        let tf = if f < n { fall_at(f) } else { f64::INFINITY };
        let te = if e < n { end_at(e) } else { f64::INFINITY };
        let t = tr.min(tf).min(te);
        if t >= tmax {
            break;
        }
        if tr == t {
            events.push(Event {
                t,
                src: act[r].src as usize,
                kind: 0,
            });
            r += 1;
        } else if tf == t {
            events.push(Event {
                t,
                src: act[f].src as usize,
                kind: 1,
            });
            f += 1;
        } else {
            events.push(Event {
                t,
                src: act[e].src as usize,
                kind: 2,
            });
            e += 1;
        }
    }
}

/// Forward weights as rows over inputs (kernel positions), contiguous over the
/// output channels: the transpose of PyTorch's `(out, rows)` layout.
pub(crate) enum RowWeights<'a> {
    Real {
        wt: &'a [f64],
        out: usize,
    },
    /// Real weights left in their `(out, rows)` layout: what training reads for
    /// a Dense layer, whose weights change after every step (see [`dense_times`]).
    Cols {
        w: &'a [f64],
        rows: usize,
        out: usize,
    },
    Bits {
        packed: &'a [u64],
        wpr: usize,
        out: usize,
    },
}

/// Transposes a real `(out, rows)` weight to `(rows, out)`, in parallel on
/// the current rayon pool over blocks of rows of the result (one cache line of
/// each row of `weight` per block).
pub(crate) fn transpose(weight: &[f64], out: usize, rows: usize) -> Vec<f64> {
    const BLOCK: usize = 8;
    let mut wt = vec![0.0; weight.len()];
    if out == 0 || rows == 0 {
        return wt;
    }
    // Tasks of at least 32k values: small layers are copied by one thread.
    let min_blocks = (1 << 15) / (out * BLOCK) + 1;
    wt.par_chunks_mut(out * BLOCK)
        .with_min_len(min_blocks)
        .enumerate()
        .for_each(|(q, dst)| {
            let r0 = q * BLOCK;
            let n = dst.len() / out;
            for (j, src) in weight.chunks_exact(rows).enumerate() {
                for (b, &w) in src[r0..r0 + n].iter().enumerate() {
                    dst[b * out + j] = w;
                }
            }
        });
    wt
}

/// `±scale` for a sign bit (1 = +1, 0 = −1): flips the IEEE sign bit, so the
/// result is bit-identical to `scale * ±1.0` without a branch or a multiply.
#[inline(always)]
fn signed(scale: u64, word: u64, b: usize) -> f64 {
    f64::from_bits(scale ^ ((!word >> b) << 63))
}

impl<'a> RowWeights<'a> {
    pub fn real(wt: &'a [f64], out: usize) -> Self {
        RowWeights::Real { wt, out }
    }

    pub fn cols(w: &'a [f64], out: usize, rows: usize) -> Self {
        RowWeights::Cols { w, rows, out }
    }

    /// Packed signs already are row-major over inputs, so they are used as is.
    pub fn bits(packed: &'a [u64], out: usize) -> Self {
        RowWeights::Bits {
            packed,
            wpr: words_per_row(out),
            out,
        }
    }

    /// Number of outputs.
    pub fn out(&self) -> usize {
        match self {
            RowWeights::Real { out, .. }
            | RowWeights::Cols { out, .. }
            | RowWeights::Bits { out, .. } => *out,
        }
    }

    /// `dst[j] += scale * w[j, row]` for every output `j`.
    #[inline(always)]
    pub fn axpy(&self, row: usize, scale: f64, dst: &mut [f64]) {
        self.axpy_block(row, scale, 0..self.out(), dst);
    }

    /// `dst[j - lo] += scale * w[j, row]` for the outputs `j` of `lo..hi`;
    /// `lo` must be a multiple of 4. Each output sees the same operation as in
    /// [`RowWeights::axpy`], so a split over blocks changes no bit.
    #[inline(always)]
    pub fn axpy_block(
        &self,
        row: usize,
        scale: f64,
        block: std::ops::Range<usize>,
        dst: &mut [f64],
    ) {
        let (lo, hi) = (block.start, block.end);
        match self {
            RowWeights::Real { wt, out } => {
                let w = &wt[row * out + lo..row * out + hi];
                for (d, &w) in dst[..hi - lo].iter_mut().zip(w) {
                    *d += scale * w;
                }
            }
            RowWeights::Cols { w, rows, .. } => {
                for (j, d) in (lo..hi).zip(dst[..hi - lo].iter_mut()) {
                    *d += scale * w[j * rows + row];
                }
            }
            RowWeights::Bits { packed, wpr, .. } => {
                debug_assert_eq!(lo % 4, 0);
                let words = &packed[row * wpr..(row + 1) * wpr];
                let bits = scale.to_bits();
                let dst = &mut dst[..hi - lo];
                let mut quads = dst.chunks_exact_mut(4);
                for (q, quad) in (&mut quads).enumerate() {
                    // Four outputs per nibble: their sign masks come from a table.
                    let n = lo / 4 + q;
                    let nib = (words[n / 16] >> (4 * (n % 16))) & 15;
                    let m = &SIGN4[nib as usize];
                    for (d, &m) in quad.iter_mut().zip(m) {
                        *d += f64::from_bits(bits ^ m);
                    }
                }
                let done = hi - lo - quads.into_remainder().len();
                for (d, j) in dst[done..].iter_mut().zip(lo + done..hi) {
                    *d += signed(bits, words[j / 64], j % 64);
                }
            }
        }
    }
}

/// Sign masks of four ±1 weights by their four sign bits: `1 << 63` where the
/// bit is 0 (−1), so that `scale ^ mask` is `scale * ±1` exactly.
const SIGN4: [[u64; 4]; 16] = {
    let mut t = [[0u64; 4]; 16];
    let mut n = 0;
    while n < 16 {
        let mut k = 0;
        while k < 4 {
            if (n >> k) & 1 == 0 {
                t[n][k] = 1 << 63;
            }
            k += 1;
        }
        n += 1;
    }
    t
};

/// Sweep state of the neurons of one position (all of a Dense layer's, or
/// one Conv2d position's channels), which share their inputs.
struct Sweep {
    /// `V` of neurons that have not fired; `−∞` once fired, so that the
    /// crossing test needs no per-neuron branch on the spike time.
    v: Vec<f64>,
    slope: Vec<f64>,
    /// Time up to which `V` is current.
    last: f64,
    /// Spike times, `tmax` until fired.
    times: Vec<f64>,
    /// Neurons that have not fired yet.
    remaining: usize,
    theta: f64,
    tmax: f64,
}

impl Sweep {
    fn new(out: usize, theta: f64, tmax: f64) -> Self {
        Sweep {
            v: vec![0.0; out],
            slope: vec![0.0; out],
            last: 0.0,
            times: vec![tmax; out],
            remaining: out,
            theta,
            tmax,
        }
    }

    /// Back to the state at time 0, keeping the buffers.
    fn reset(&mut self) {
        self.v.fill(0.0);
        self.slope.fill(0.0);
        self.last = 0.0;
        self.times.fill(self.tmax);
        self.remaining = self.v.len();
    }

    /// Moves the neurons to time `t`, recording those that cross θ on the
    /// way. `V` is linear since `last`, so checking the end suffices.
    #[inline(always)]
    fn advance(&mut self, t: f64) {
        let t0 = self.last;
        let dt = t - t0;
        if dt <= 0.0 {
            return;
        }
        self.last = t;
        let (theta, tmax) = (self.theta, self.tmax);
        // Fast path (branch-free, vectorisable): does any live neuron cross?
        let crossing = self
            .v
            .iter()
            .zip(&self.slope)
            .fold(0usize, |n, (&v, &s)| n + usize::from(v + s * dt >= theta));
        if crossing == 0 {
            for (v, &s) in self.v.iter_mut().zip(&self.slope) {
                *v += s * dt;
            }
            return;
        }
        let mut fired = 0;
        for ((v, &s), tj) in self.v.iter_mut().zip(&self.slope).zip(&mut self.times) {
            let v0 = *v;
            let v1 = v0 + s * dt;
            if v1 >= theta {
                // v0 < θ <= v1 implies s > 0. Clamp rounding into the segment;
                // a crossing at tmax is no spike.
                let tc = (t0 + (theta - v0) / s).min(t);
                if tc < tmax {
                    *tj = tc;
                    *v = f64::NEG_INFINITY;
                    fired += 1;
                    continue;
                }
            }
            *v = v1;
        }
        self.remaining -= fired;
    }
}

/// Whether the sweeps run their AVX2 copies: the same code compiled for wider
/// vectors, chosen at run time so that one wheel serves every x86-64 CPU. No
/// FMA is enabled, so every lane does the same IEEE operations as the
/// portable copy and the results are bit-identical.
#[cfg(target_arch = "x86_64")]
#[inline]
fn use_avx2() -> bool {
    #[cfg(test)]
    if PORTABLE_SWEEPS.with(|p| p.get()) {
        return false;
    }
    avx2_chosen()
}

/// Read once: the CPU has AVX2 and `STIDI_RS_PORTABLE` does not ask for the
/// portable copies (any value but empty or `0` does).
#[cfg(target_arch = "x86_64")]
fn avx2_chosen() -> bool {
    static CHOSEN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let portable =
            std::env::var_os("STIDI_RS_PORTABLE").is_some_and(|v| !v.is_empty() && v != "0");
        !portable && std::arch::is_x86_feature_detected!("avx2")
    })
}

/// The copy of the sweep kernels this process runs: `"avx2"` or `"portable"`.
/// Results are the same to the bit either way; set `STIDI_RS_PORTABLE=1`
/// before the first call to force the portable copy (to compare or debug).
pub fn sweep_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if avx2_chosen() {
        return "avx2";
    }
    "portable"
}

/// Smallest number of neurons of a layer worth splitting over threads.
pub(crate) const SPLIT_MIN_NEURONS: usize = 256;

/// Spike times of a Dense layer: one position, every event touches every neuron.
///
/// With `parts > 1` (and enough outputs) the outputs are split into blocks
/// swept in parallel on the current rayon pool; every block sweeps the same
/// events for its own neurons, so the result does not depend on `parts`.
pub(crate) fn dense_times(
    events: &[Event],
    w: &RowWeights,
    steps: &[f64; 3],
    out: usize,
    theta: f64,
    tmax: f64,
    parts: usize,
) -> Vec<f64> {
    // Blocks of a multiple of 8 outputs (whole nibbles of packed signs).
    let parts = parts.min(out / 64).max(1);
    if parts == 1 || out < SPLIT_MIN_NEURONS {
        return dense_block(events, w, steps, 0..out, theta, tmax);
    }
    let size = out.div_ceil(parts).next_multiple_of(8);
    let blocks: Vec<Vec<f64>> = (0..out.div_ceil(size))
        .into_par_iter()
        .map(|k| {
            let block = k * size..((k + 1) * size).min(out);
            dense_block(events, w, steps, block, theta, tmax)
        })
        .collect();
    blocks.concat()
}

fn dense_block(
    events: &[Event],
    w: &RowWeights,
    steps: &[f64; 3],
    block: std::ops::Range<usize>,
    theta: f64,
    tmax: f64,
) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { dense_block_avx2(events, w, steps, block, theta, tmax) };
    }
    dense_block_body(events, w, steps, block, theta, tmax)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dense_block_avx2(
    events: &[Event],
    w: &RowWeights,
    steps: &[f64; 3],
    block: std::ops::Range<usize>,
    theta: f64,
    tmax: f64,
) -> Vec<f64> {
    dense_block_body(events, w, steps, block, theta, tmax)
}

#[inline(always)]
fn dense_block_body(
    events: &[Event],
    w: &RowWeights,
    steps: &[f64; 3],
    block: std::ops::Range<usize>,
    theta: f64,
    tmax: f64,
) -> Vec<f64> {
    if let RowWeights::Cols { w, rows, .. } = w {
        return block
            .map(|j| neuron_time(events, &w[j * rows..(j + 1) * rows], steps, theta, tmax))
            .collect();
    }
    let mut st = Sweep::new(block.len(), theta, tmax);
    for ev in events {
        st.advance(ev.t);
        if st.remaining == 0 {
            return st.times;
        }
        w.axpy_block(ev.src, steps[ev.kind], block.clone(), &mut st.slope);
    }
    st.advance(tmax);
    st.times
}

/// One Dense neuron's spike time from its own weight row, sweeping the events
/// until it fires. Its `V` and slope see the same operations in the same order
/// as in [`Sweep`], so the time is bit-identical; but the neuron stops at its
/// own spike and reads one contiguous row, so no transposed copy is needed.
fn neuron_time(events: &[Event], row: &[f64], steps: &[f64; 3], theta: f64, tmax: f64) -> f64 {
    let (mut v, mut slope, mut last) = (0.0f64, 0.0f64, 0.0f64);
    let advance = |v: &mut f64, slope: f64, last: &mut f64, t: f64| -> Option<f64> {
        let dt = t - *last;
        if dt <= 0.0 {
            return None;
        }
        let (t0, v0) = (*last, *v);
        *last = t;
        let v1 = v0 + slope * dt;
        if v1 >= theta {
            let tc = (t0 + (theta - v0) / slope).min(t);
            if tc < tmax {
                return Some(tc);
            }
        }
        *v = v1;
        None
    };
    for ev in events {
        if let Some(tc) = advance(&mut v, slope, &mut last, ev.t) {
            return tc;
        }
        slope += steps[ev.kind] * row[ev.src];
    }
    advance(&mut v, slope, &mut last, tmax).unwrap_or(tmax)
}

/// Geometry of a Conv2d layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvGeom {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeom {
    pub fn rows(&self) -> usize {
        self.cin * self.k * self.k
    }
    pub fn positions(&self) -> usize {
        self.ho * self.wo
    }
}

/// Spike times of a Conv2d layer in `(cout, ho, wo)` order. An input event only
/// touches the output positions whose receptive field holds it.
///
/// With `parts > 1` (and a layer large enough) the output rows are dealt
/// round-robin to `parts` parts swept in parallel on the current rayon pool.
/// A position's neurons see the same events in the same order whichever part
/// holds it, so the result does not depend on `parts`.
pub(crate) fn conv_times(
    events: &[Event],
    g: &ConvGeom,
    w: &RowWeights,
    steps: &[f64; 3],
    theta: f64,
    tmax: f64,
    parts: usize,
) -> Vec<f64> {
    let positions = g.positions();
    let parts = parts.min(g.ho).max(1);
    let mut out = vec![tmax; positions * g.cout];
    if parts == 1 || positions * g.cout < SPLIT_MIN_NEURONS {
        let times = conv_rows(events, g, w, steps, theta, tmax, 0, 1);
        scatter_rows(&times, g, 0, 1, &mut out);
        return out;
    }
    let all: Vec<Vec<f64>> = (0..parts)
        .into_par_iter()
        .map(|part| conv_rows(events, g, w, steps, theta, tmax, part, parts))
        .collect();
    for (part, times) in all.iter().enumerate() {
        scatter_rows(times, g, part, parts, &mut out);
    }
    out
}

/// Writes the position-major times of the rows `part, part + parts, ..` into
/// `out`, `(cout, ho, wo)` order.
fn scatter_rows(times: &[f64], g: &ConvGeom, part: usize, parts: usize, out: &mut [f64]) {
    let positions = g.positions();
    // Channel-outer, so that writes run along an output row rather than
    // jumping a whole channel plane per value.
    for (m, row) in times.chunks_exact(g.cout * g.wo).enumerate() {
        let p0 = (part + m * parts) * g.wo;
        for o in 0..g.cout {
            let dst = &mut out[o * positions + p0..o * positions + p0 + g.wo];
            for (d, ts) in dst.iter_mut().zip(row.chunks_exact(g.cout)) {
                *d = ts[o];
            }
        }
    }
}

/// The sweep of the output rows `part, part + parts, ..` of a Conv2d layer;
/// position-major times of those rows.
///
/// A position's neurons depend only on the events of its receptive field, so
/// each position is swept to the end on its own, its state kept in one small
/// reused [`Sweep`] (cache-resident even for wide layers), rather than all
/// positions advanced event by event. Every neuron still sees its field's
/// events in the global order, so the times are the same to the bit.
#[allow(clippy::too_many_arguments)]
fn conv_rows(
    events: &[Event],
    g: &ConvGeom,
    w: &RowWeights,
    steps: &[f64; 3],
    theta: f64,
    tmax: f64,
    part: usize,
    parts: usize,
) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked at run time).
        return unsafe { conv_rows_avx2(events, g, w, steps, theta, tmax, part, parts) };
    }
    conv_rows_body(events, g, w, steps, theta, tmax, part, parts)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn conv_rows_avx2(
    events: &[Event],
    g: &ConvGeom,
    w: &RowWeights,
    steps: &[f64; 3],
    theta: f64,
    tmax: f64,
    part: usize,
    parts: usize,
) -> Vec<f64> {
    conv_rows_body(events, g, w, steps, theta, tmax, part, parts)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn conv_rows_body(
    events: &[Event],
    g: &ConvGeom,
    w: &RowWeights,
    steps: &[f64; 3],
    theta: f64,
    tmax: f64,
    part: usize,
    parts: usize,
) -> Vec<f64> {
    let k = g.k;
    let rows = (g.ho - part).div_ceil(parts);
    let mut times = Vec::with_capacity(rows * g.wo * g.cout);
    let mut st = Sweep::new(g.cout, theta, tmax);
    // Each event's (t, slope step, input y, input x, first weight row of its
    // channel), decomposed once rather than once per output row.
    let located: Vec<(f64, f64, usize, usize, usize)> = events
        .iter()
        .map(|ev| {
            let (c, y, x) = (ev.src / (g.h * g.w), (ev.src / g.w) % g.h, ev.src % g.w);
            (ev.t, steps[ev.kind], y, x, c * k * k)
        })
        .collect();
    // The events of one output row's field: (t, slope step, input x, weight
    // row at output column 0).
    let mut field: Vec<(f64, f64, usize, usize)> = Vec::new();
    for oy in (part..g.ho).step_by(parts) {
        field.clear();
        field.extend(
            located
                .iter()
                .filter(|&&(_, _, y, _, _)| oy <= y && y < oy + k)
                .map(|&(t, step, y, x, c0)| (t, step, x, c0 + (y - oy) * k + x)),
        );
        for ox in 0..g.wo {
            st.reset();
            for &(t, step, x, row) in &field {
                if x < ox || x >= ox + k {
                    continue;
                }
                st.advance(t);
                if st.remaining == 0 {
                    break;
                }
                w.axpy(row - ox, step, &mut st.slope);
            }
            if st.remaining > 0 {
                st.advance(tmax);
            }
            times.extend_from_slice(&st.times);
        }
    }
    times
}

/// `V_j(tmax) = Σ_i w̃_ji ε(tmax − t_i)` by the direct formula, summed in input order.
pub(crate) fn potential_at(
    x: &[f64],
    w: &RowWeights,
    out: usize,
    psp: &Psp,
    tmax: f64,
) -> Vec<f64> {
    let mut v = vec![0.0; out];
    for (i, &t) in x.iter().enumerate() {
        if t < tmax {
            let e = psp.eps(tmax - t);
            if e != 0.0 {
                w.axpy(i, e, &mut v);
            }
        }
    }
    v
}

/// Pool geometry: `c` channels of `h x w`, window `p`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolGeom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub p: usize,
    pub ho: usize,
    pub wo: usize,
}

impl PoolGeom {
    /// Index into the input of the window's first minimum in row-major order.
    #[inline]
    pub fn winner(&self, x: &[f64], c: usize, py: usize, px: usize) -> usize {
        let base = c * self.h * self.w;
        let mut best = base + py * self.p * self.w + px * self.p;
        for dy in 0..self.p {
            let row = base + (py * self.p + dy) * self.w + px * self.p;
            for i in row..row + self.p {
                if x[i] < x[best] {
                    best = i;
                }
            }
        }
        best
    }
}

/// Earliest spike of each window, `(c, ho, wo)` order.
pub(crate) fn pool_times(x: &[f64], g: &PoolGeom) -> Vec<f64> {
    let mut out = Vec::with_capacity(g.c * g.ho * g.wo);
    for c in 0..g.c {
        for py in 0..g.ho {
            for px in 0..g.wo {
                out.push(x[g.winner(x, c, py, px)]);
            }
        }
    }
    out
}

#[cfg(test)]
thread_local! {
    /// Set by tests to run this thread's sweeps on their portable copies.
    pub(crate) static PORTABLE_SWEEPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Reusable per-thread buffers of phase 1.
#[derive(Default)]
pub(crate) struct Scratch {
    pub events: Vec<Event>,
    pub act: Vec<Active>,
}
