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
    // Written without a branch: every input is stored, and the count moves on
    // only for those that spike.
    act.clear();
    act.resize(x.len(), Active { t: 0.0, src: 0 });
    let mut n = 0;
    for (src, &t) in x.iter().enumerate() {
        act[n] = Active { t, src: src as u32 };
        n += usize::from(t < tmax);
    }
    act.truncate(n);
    // Times are >= 0, so their bit patterns order like the values. The inputs
    // arrive in index order and the sort is stable, so equal times stay in it.
    act.sort_by_key(|a| a.t.to_bits());
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
    let (tau1, tau2) = (psp.tau_rise, psp.tau_fall);
    if tau2.is_infinite() {
        // No end breakpoints (they are at +∞): before each rise, the falls
        // that come strictly earlier.
        let mut f = 0;
        for (r, a) in act.iter().enumerate() {
            while f < r && act[f].t + tau1 < a.t {
                events.push(Event {
                    t: act[f].t + tau1,
                    src: act[f].src as usize,
                    kind: 1,
                });
                f += 1;
            }
            events.push(Event {
                t: a.t,
                src: a.src as usize,
                kind: 0,
            });
        }
        for a in &act[f..] {
            let t = a.t + tau1;
            if t >= tmax {
                break;
            }
            events.push(Event {
                t,
                src: a.src as usize,
                kind: 1,
            });
        }
        return;
    }
    let n = act.len();
    let fall_at = |k: usize| act[k].t + tau1;
    let end_at = |k: usize| act[k].t + tau1 + tau2;
    let (mut r, mut f, mut e) = (0, 0, 0);
    loop {
        // Breakpoints at or after tmax cannot change V on [0, tmax).
        let tr = if r < n { act[r].t } else { f64::INFINITY };
        let tf = if f < n { fall_at(f) } else { f64::INFINITY };
        let te = if e < n { end_at(e) } else { f64::INFINITY };
        // No NaN here (times are checked), so plain comparisons pick the minimum.
        let m = if tf < tr { tf } else { tr };
        let t = if te < m { te } else { m };
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
    if out == 0 || rows == 0 {
        return vec![0.0; weight.len()];
    }
    // Written once each, so not zeroed first (a training step transposes a
    // wide layer every time).
    let mut wt = Vec::with_capacity(weight.len());
    // Tasks of at least 32k values: small layers are copied by one thread.
    let min_blocks = (1 << 15) / (out * BLOCK) + 1;
    wt.spare_capacity_mut()[..weight.len()]
        .par_chunks_mut(out * BLOCK)
        .with_min_len(min_blocks)
        .enumerate()
        .for_each(|(q, dst)| {
            let r0 = q * BLOCK;
            let n = dst.len() / out;
            for (j, src) in weight.chunks_exact(rows).enumerate() {
                for (b, &w) in src[r0..r0 + n].iter().enumerate() {
                    dst[b * out + j].write(w);
                }
            }
        });
    // SAFETY: the blocks cover every row `r` and every output `j` of it.
    unsafe { wt.set_len(weight.len()) };
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

/// Per-neuron sums the sweep keeps instead of a slope: `f64` for real weights,
/// `i32` counts for binary ones. For ±1 weights both hold the same integers, so
/// the two kernels do the same floating-point operations on the same values
/// and give bit-identical spike times.
pub(crate) trait Acc: Copy + Default + Send + Sync {
    fn to_f64(self) -> f64;
}

impl Acc for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

impl Acc for i32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Acc for i16 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

/// Integer counts of ±1 weights: `i16` (16 outputs per vector) where the
/// fan-in bounds every count below 2^15, else `i32`.
pub(crate) trait Count: Acc {
    /// `dst[j] ± sign` of the outputs `lo + j` (see [`add_signs_avx2`]).
    ///
    /// # Safety
    /// The CPU must support AVX2, and `lo + dst.len() <= 64 * words.len()`.
    unsafe fn add_avx2<const NEG: bool>(words: &[u64], lo: usize, dst: &mut [Self]);
    fn add_portable<const NEG: bool>(words: &[u64], lo: usize, dst: &mut [Self]);
}

impl Count for i32 {
    #[inline(always)]
    unsafe fn add_avx2<const NEG: bool>(words: &[u64], lo: usize, dst: &mut [i32]) {
        add_signs_avx2::<NEG>(words, lo, dst)
    }
    #[inline(always)]
    fn add_portable<const NEG: bool>(words: &[u64], lo: usize, dst: &mut [i32]) {
        add_signs_body::<NEG>(words, lo, dst)
    }
}

impl Count for i16 {
    #[inline(always)]
    unsafe fn add_avx2<const NEG: bool>(words: &[u64], lo: usize, dst: &mut [i16]) {
        add_signs16_avx2::<NEG>(words, lo, dst)
    }
    #[inline(always)]
    fn add_portable<const NEG: bool>(words: &[u64], lo: usize, dst: &mut [i16]) {
        for (j, d) in (lo..).zip(dst.iter_mut()) {
            let m = -(((words[j / 64] >> (j % 64)) & 1) as i16) | 1;
            if NEG {
                *d += m;
            } else {
                *d -= m;
            }
        }
    }
}

/// Rows of forward weights as the sweep adds them: `dst[j - lo] ± w[j, row]`
/// for the outputs `j` of `lo..hi` (`lo` a multiple of 8 for packed signs).
pub(crate) trait Rows: Sync {
    type A: Acc;
    fn add(&self, row: usize, neg: bool, block: std::ops::Range<usize>, dst: &mut [Self::A]);
}

struct RealRows<'a> {
    wt: &'a [f64],
    out: usize,
}

impl Rows for RealRows<'_> {
    type A = f64;
    #[inline(always)]
    fn add(&self, row: usize, neg: bool, block: std::ops::Range<usize>, dst: &mut [f64]) {
        let w = &self.wt[row * self.out + block.start..row * self.out + block.end];
        let dst = &mut dst[..w.len()];
        if neg {
            for (d, &w) in dst.iter_mut().zip(w) {
                *d -= w;
            }
        } else {
            for (d, &w) in dst.iter_mut().zip(w) {
                *d += w;
            }
        }
    }
}

/// Real weights in their `(out, rows)` layout: each output's weight from
/// input `row` is a strided load (see [`RowWeights::Cols`]).
struct ColRows<'a> {
    w: &'a [f64],
    rows: usize,
}

impl Rows for ColRows<'_> {
    type A = f64;
    #[inline(always)]
    fn add(&self, row: usize, neg: bool, block: std::ops::Range<usize>, dst: &mut [f64]) {
        for (j, d) in block.zip(dst.iter_mut()) {
            let x = self.w[j * self.rows + row];
            if neg {
                *d -= x;
            } else {
                *d += x;
            }
        }
    }
}

struct BitRows<'a, C> {
    packed: &'a [u64],
    wpr: usize,
    /// Run the AVX2 copy: read once per sweep rather than once per row.
    avx2: bool,
    count: std::marker::PhantomData<C>,
}

impl<'a, C> BitRows<'a, C> {
    fn new(packed: &'a [u64], wpr: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        let avx2 = use_avx2();
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        BitRows {
            packed,
            wpr,
            avx2,
            count: std::marker::PhantomData,
        }
    }
}

impl<C: Count> Rows for BitRows<'_, C> {
    type A = C;
    #[inline(always)]
    fn add(&self, row: usize, neg: bool, block: std::ops::Range<usize>, dst: &mut [C]) {
        debug_assert_eq!(block.start % 8, 0);
        let words = &self.packed[row * self.wpr..(row + 1) * self.wpr];
        // Whole bytes where `dst` has room: the lanes past the block are the
        // sweep's padding (V = −∞), which the padding bits (−1) cannot wake.
        let len = block.len().next_multiple_of(8).min(dst.len());
        assert!(block.start + len <= words.len() * 64);
        let dst = &mut dst[..len];
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: the CPU supports AVX2 (checked at run time); the block
            // lies within the row's words (asserted above).
            unsafe {
                if neg {
                    C::add_avx2::<true>(words, block.start, dst);
                } else {
                    C::add_avx2::<false>(words, block.start, dst);
                }
            }
            return;
        }
        if neg {
            C::add_portable::<true>(words, block.start, dst);
        } else {
            C::add_portable::<false>(words, block.start, dst);
        }
    }
}

/// A Dense layer's spike times from packed signs with `i32` counts, whatever
/// its fan-in: the path of layers too wide for `i16`, for tests.
#[cfg(test)]
pub(crate) fn dense_times_i32(
    events: &[Event],
    packed: &[u64],
    steps: &[f64; 3],
    out: usize,
    theta: f64,
    tmax: f64,
) -> Vec<f64> {
    let mut st = Sweep::new(out, theta, tmax, steps);
    st.sweep(events, &BitRows::<i32>::new(packed, words_per_row(out)), 0);
    st.into_spikes()
}

/// Whether the counts of a binary layer with `rows` inputs fit `i16`.
fn fits_i16(rows: usize) -> bool {
    rows <= i16::MAX as usize
}

/// [`add_signs_avx2`] on 16 `i16` counts per vector: the 16 sign bits are
/// broadcast, masked per lane and compared, giving `m = −1` where the bit is
/// set; `m | 1` is `−sign`.
///
/// # Safety
/// The CPU must support AVX2, and `lo + dst.len() <= 64 * words.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn add_signs16_avx2<const NEG: bool>(words: &[u64], lo: usize, dst: &mut [i16]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let full = n / 16;
    let bytes = words.as_ptr().cast::<u8>().add(lo / 8);
    let d = dst.as_mut_ptr();
    let bit = _mm256_setr_epi16(
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        1024,
        2048,
        4096,
        8192,
        16384,
        i16::MIN,
    );
    let one = _mm256_set1_epi16(1);
    for q in 0..full {
        let w = std::ptr::read_unaligned(bytes.add(2 * q).cast::<u16>());
        let m = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16(w as i16), bit), bit);
        let x = _mm256_or_si256(m, one);
        let pd = d.add(16 * q).cast::<__m256i>();
        let v = _mm256_loadu_si256(pd);
        let r = if NEG {
            _mm256_add_epi16(v, x)
        } else {
            _mm256_sub_epi16(v, x)
        };
        _mm256_storeu_si256(pd, r);
    }
    if full * 16 < n {
        i16::add_portable::<NEG>(words, lo + full * 16, &mut dst[full * 16..]);
    }
}

/// `−sign` of eight ±1 weights by their byte of sign bits (bit set = +1).
static NEG_SIGNS: [[i32; 8]; 256] = {
    let mut t = [[0i32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut k = 0;
        while k < 8 {
            t[b][k] = if (b >> k) & 1 == 1 { -1 } else { 1 };
            k += 1;
        }
        b += 1;
    }
    t
};

/// `dst[j] ± sign` for the outputs `lo + j` (`lo` a multiple of 8, the block
/// within `words`): one table row, a vector of eight `−sign`, per byte of
/// signs, in place of a float per output. Integer results equal the portable
/// copy's ([`add_signs_body`]).
///
/// # Safety
/// The CPU must support AVX2, and `lo + dst.len() <= 64 * words.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn add_signs_avx2<const NEG: bool>(words: &[u64], lo: usize, dst: &mut [i32]) {
    use std::arch::x86_64::{__m256i, _mm256_add_epi32, _mm256_loadu_si256};
    use std::arch::x86_64::{_mm256_storeu_si256, _mm256_sub_epi32};
    let n = dst.len();
    let full = n / 8;
    // x86-64 is little-endian: byte `b` of the words holds outputs `8b..8b + 8`.
    let bytes = words.as_ptr().cast::<u8>().add(lo / 8);
    let d = dst.as_mut_ptr();
    for q in 0..full {
        let m = NEG_SIGNS
            .as_ptr()
            .add(*bytes.add(q) as usize)
            .cast::<__m256i>();
        let pd = d.add(8 * q).cast::<__m256i>();
        let (x, m) = (_mm256_loadu_si256(pd), _mm256_loadu_si256(m));
        let r = if NEG {
            _mm256_add_epi32(x, m)
        } else {
            _mm256_sub_epi32(x, m)
        };
        _mm256_storeu_si256(pd, r);
    }
    if full * 8 < n {
        add_signs_body::<NEG>(words, lo + full * 8, &mut dst[full * 8..]);
    }
}

#[inline(always)]
fn add_signs_body<const NEG: bool>(words: &[u64], lo: usize, dst: &mut [i32]) {
    let n = dst.len();
    let mut octs = dst.chunks_exact_mut(8);
    for (q, oct) in (&mut octs).enumerate() {
        let b = lo / 8 + q;
        let byte = words[b / 8].to_le_bytes()[b % 8];
        let oct: &mut [i32; 8] = oct.try_into().unwrap();
        let m = &NEG_SIGNS[byte as usize];
        for k in 0..8 {
            if NEG {
                oct[k] += m[k];
            } else {
                oct[k] -= m[k];
            }
        }
    }
    let done = n - octs.into_remainder().len();
    for (j, d) in (lo + done..lo + n).zip(dst[done..].iter_mut()) {
        let m = -(((words[j / 64] >> (j % 64)) & 1) as i32) | 1;
        if NEG {
            *d += m;
        } else {
            *d -= m;
        }
    }
}

/// Sweep state of the neurons of one position (all of a Dense layer's, or
/// one Conv2d position's channels), which share their inputs.
///
/// Rather than a slope, each neuron keeps `r`, the sum of the weights of its
/// inputs on the rise of their PSP, and `f`, of those on its fall (only with a
/// finite `τ2`): its slope is `r/τ1 − f/τ2`, and an input event adds or removes
/// a weight with no multiply (an integer count for ±1 weights).
struct Sweep<A: Acc> {
    /// Neurons; the buffers are padded to whole blocks of [`LANES`], so that
    /// every block is one branch-free vector pass. Padding lanes hold `V = −∞`.
    n: usize,
    /// `V` of neurons that have not fired; `−∞` once fired, so that the
    /// crossing test needs no per-neuron branch on the spike time.
    v: Vec<f64>,
    r: Vec<A>,
    /// Empty when `τ2 = ∞` (the fall then never changes the slope).
    f: Vec<A>,
    /// Time up to which `V` is current.
    last: f64,
    /// Spike times, `tmax` until fired.
    times: Vec<f64>,
    /// Neurons that have not fired yet.
    remaining: usize,
    theta: f64,
    tmax: f64,
    inv1: f64,
    inv2: f64,
}

/// Neurons per block of the fused advance: two AVX2 vectors.
const LANES: usize = 8;

impl<A: Acc> Sweep<A> {
    fn new(out: usize, theta: f64, tmax: f64, steps: &[f64; 3]) -> Self {
        let (inv1, inv2) = (steps[0], steps[2]);
        let padded = out.next_multiple_of(LANES);
        let mut st = Sweep {
            n: out,
            v: vec![0.0; padded],
            r: vec![A::default(); padded],
            f: vec![A::default(); if inv2 == 0.0 { 0 } else { padded }],
            last: 0.0,
            times: vec![tmax; padded],
            remaining: out,
            theta,
            tmax,
            inv1,
            inv2,
        };
        st.v[out..].fill(f64::NEG_INFINITY);
        st
    }

    /// The spike times (`tmax` for no spike).
    fn spikes(&self) -> &[f64] {
        &self.times[..self.n]
    }

    fn into_spikes(mut self) -> Vec<f64> {
        self.times.truncate(self.n);
        self.times
    }

    /// Back to the state at time 0, keeping the buffers.
    fn reset(&mut self) {
        self.v[..self.n].fill(0.0);
        self.v[self.n..].fill(f64::NEG_INFINITY);
        // Whole blocks of fixed size: a conv position resets a few dozen
        // lanes, where a call to `memset` (what `fill` becomes for the integer
        // counts) costs more than the stores.
        for b in self.r.chunks_exact_mut(LANES) {
            b.copy_from_slice(&[A::default(); LANES]);
        }
        for b in self.f.chunks_exact_mut(LANES) {
            b.copy_from_slice(&[A::default(); LANES]);
        }
        self.last = 0.0;
        self.times.fill(self.tmax);
        self.remaining = self.n;
    }

    /// Applies breakpoint `kind` (0 rise, 1 fall, 2 end) of input `row`.
    #[inline(always)]
    fn input<W: Rows<A = A>>(&mut self, w: &W, row: usize, kind: usize, lo: usize) {
        let block = lo..lo + self.n;
        match kind {
            0 => w.add(row, false, block, &mut self.r),
            1 => {
                w.add(row, true, block.clone(), &mut self.r);
                if !self.f.is_empty() {
                    w.add(row, false, block, &mut self.f);
                }
            }
            _ => w.add(row, true, block, &mut self.f),
        }
    }

    /// Sweeps the events of a position whose outputs start at `lo`, until
    /// every neuron fired or `tmax`.
    #[inline(always)]
    fn sweep<W: Rows<A = A>>(&mut self, events: &[Event], w: &W, lo: usize) {
        for ev in events {
            self.advance(ev.t);
            if self.remaining == 0 {
                return;
            }
            self.input(w, ev.src, ev.kind, lo);
        }
        self.advance(self.tmax);
    }

    /// Moves the neurons to time `t`, recording those that cross θ on the
    /// way. `V` is linear since `last`, so checking the end suffices.
    #[inline(always)]
    fn advance(&mut self, t: f64) {
        let dt = t - self.last;
        if dt <= 0.0 {
            return;
        }
        if self.f.is_empty() {
            self.advance_by::<false>(t, dt);
        } else {
            self.advance_by::<true>(t, dt);
        }
    }

    /// One pass over the neurons, a block of [`LANES`] at a time: the block's
    /// new `V` and a count of crossings are computed branch-free; only a block
    /// with a crossing goes through its neurons one by one.
    #[inline(always)]
    fn advance_by<const FALL: bool>(&mut self, t: f64, dt: f64) {
        let t0 = self.last;
        self.last = t;
        let k = Cross {
            t0,
            t,
            theta: self.theta,
            tmax: self.tmax,
            inv1: self.inv1,
            inv2: self.inv2,
            a: self.inv1 * dt,
            b: self.inv2 * dt,
        };
        let mut fired = 0;
        let f = if FALL { &self.f[..] } else { &[][..] };
        for (q, ((v, r), times)) in self
            .v
            .chunks_exact_mut(LANES)
            .zip(self.r.chunks_exact(LANES))
            .zip(self.times.chunks_exact_mut(LANES))
            .enumerate()
        {
            let v: &mut [f64; LANES] = v.try_into().unwrap();
            let r: &[A; LANES] = r.try_into().unwrap();
            let f: &[A; LANES] = if FALL {
                f[q * LANES..(q + 1) * LANES].try_into().unwrap()
            } else {
                r
            };
            let mut v1 = [0.0f64; LANES];
            // A bit per lane: one vector compare and mask extraction per block.
            let mut crossing = 0u32;
            for j in 0..LANES {
                v1[j] = v[j] + k.rise::<FALL, A>(r[j], f[j]);
                crossing |= u32::from(v1[j] >= k.theta) << j;
            }
            if crossing != 0 {
                for j in 0..LANES {
                    fired += k.settle::<FALL, A>(v[j], &mut v1[j], r[j], f[j], &mut times[j]);
                }
            }
            *v = v1;
        }
        self.remaining -= fired;
    }
}

/// What one advance from `t0` to `t` needs per neuron.
struct Cross {
    t0: f64,
    t: f64,
    theta: f64,
    tmax: f64,
    inv1: f64,
    inv2: f64,
    /// `dt/τ1`, `dt/τ2`.
    a: f64,
    b: f64,
}

impl Cross {
    /// The change of `V` over the segment.
    #[inline(always)]
    fn rise<const FALL: bool, A: Acc>(&self, r: A, f: A) -> f64 {
        if FALL {
            r.to_f64() * self.a - f.to_f64() * self.b
        } else {
            r.to_f64() * self.a
        }
    }

    /// If the neuron crossed θ (from `v0` to `v1`), records its spike time and
    /// sets `v1` to `−∞`; returns 1 if it fired.
    #[inline(always)]
    fn settle<const FALL: bool, A: Acc>(
        &self,
        v0: f64,
        v1: &mut f64,
        r: A,
        f: A,
        tj: &mut f64,
    ) -> usize {
        if *v1 < self.theta {
            return 0;
        }
        let s = if FALL {
            r.to_f64() * self.inv1 - f.to_f64() * self.inv2
        } else {
            r.to_f64() * self.inv1
        };
        // V(t0) < θ <= V(t), so s > 0 but for rounding: clamp into the
        // segment. A crossing at tmax is no spike.
        let tc = (self.t0 + (self.theta - v0) / s).max(self.t0).min(self.t);
        if tc < self.tmax {
            *tj = tc;
            *v1 = f64::NEG_INFINITY;
            1
        } else {
            0
        }
    }
}

/// Whether the sweeps run their AVX2 copies: the same code compiled for wider
/// vectors, chosen at run time so that one wheel serves every x86-64 CPU. No
/// FMA is enabled, so every lane does the same IEEE operations as the
/// portable copy and the results are bit-identical.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn use_avx2() -> bool {
    #[cfg(test)]
    if PORTABLE_SWEEPS.with(|p| p.get()) {
        return false;
    }
    avx2_chosen()
}

/// `fn NAME(args) -> R` running `BODY(args)` compiled twice: for AVX2, chosen
/// where [`use_avx2`] says so, and portable. `BODY` must be `#[inline(always)]`
/// so that each copy is compiled with its own features.
macro_rules! avx2_or_portable {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;
    ) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                $(#[$attr])*
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if $crate::engine::use_avx2() {
                    // SAFETY: the CPU supports AVX2 (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use avx2_or_portable;

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

avx2_or_portable! {
    fn dense_block(
        events: &[Event],
        w: &RowWeights,
        steps: &[f64; 3],
        block: std::ops::Range<usize>,
        theta: f64,
        tmax: f64,
    ) -> Vec<f64> = dense_block_body;
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
    match *w {
        RowWeights::Cols { w, rows, .. } => {
            // Small blocks of neurons, each swept until all of its neurons
            // fired: the strided weight loads then stop early too.
            let w = ColRows { w, rows };
            let mut times = Vec::with_capacity(block.len());
            let mut st = Sweep::<f64>::new(LANES.min(block.len()), theta, tmax, steps);
            for lo in block.clone().step_by(LANES) {
                let n = LANES.min(block.end - lo);
                if n != st.n {
                    st = Sweep::new(n, theta, tmax, steps);
                } else {
                    st.reset();
                }
                st.sweep(events, &w, lo);
                times.extend_from_slice(st.spikes());
            }
            times
        }
        RowWeights::Real { wt, out } => {
            let mut st = Sweep::new(block.len(), theta, tmax, steps);
            st.sweep(events, &RealRows { wt, out }, block.start);
            st.into_spikes()
        }
        RowWeights::Bits { packed, wpr, .. } if fits_i16(packed.len() / wpr) => {
            let mut st = Sweep::new(block.len(), theta, tmax, steps);
            st.sweep(events, &BitRows::<i16>::new(packed, wpr), block.start);
            st.into_spikes()
        }
        RowWeights::Bits { packed, wpr, .. } => {
            let mut st = Sweep::new(block.len(), theta, tmax, steps);
            st.sweep(events, &BitRows::<i32>::new(packed, wpr), block.start);
            st.into_spikes()
        }
    }
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

    /// Synapses of input `src`: the output neurons whose receptive field holds it.
    pub fn fan_out(&self, src: usize) -> u64 {
        let (y, x) = ((src / self.w) % self.h, src % self.w);
        // Output rows oy with oy <= y < oy + k and oy < ho, likewise columns.
        let span = |p: usize, n: usize| p.min(n - 1) + 1 - (p + 1).saturating_sub(self.k);
        (span(y, self.ho) * span(x, self.wo) * self.cout) as u64
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

avx2_or_portable! {
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
    ) -> Vec<f64> = conv_rows_body;
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
    match *w {
        RowWeights::Bits { packed, wpr, .. } if fits_i16(g.rows()) => conv_sweep(
            events,
            g,
            &BitRows::<i16>::new(packed, wpr),
            steps,
            theta,
            tmax,
            part,
            parts,
        ),
        RowWeights::Bits { packed, wpr, .. } => conv_sweep(
            events,
            g,
            &BitRows::<i32>::new(packed, wpr),
            steps,
            theta,
            tmax,
            part,
            parts,
        ),
        RowWeights::Real { wt, out } => conv_sweep(
            events,
            g,
            &RealRows { wt, out },
            steps,
            theta,
            tmax,
            part,
            parts,
        ),
        RowWeights::Cols { .. } => unreachable!("Conv2d weights are always transposed"),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn conv_sweep<W: Rows>(
    events: &[Event],
    g: &ConvGeom,
    w: &W,
    steps: &[f64; 3],
    theta: f64,
    tmax: f64,
    part: usize,
    parts: usize,
) -> Vec<f64> {
    let k = g.k;
    let rows = (g.ho - part).div_ceil(parts);
    let mut times = Vec::with_capacity(rows * g.wo * g.cout);
    let mut st = Sweep::<W::A>::new(g.cout, theta, tmax, steps);
    // Each event's (t, kind, input y, input x, first weight row of its
    // channel), decomposed once rather than once per output row.
    let located: Vec<(f64, usize, usize, usize, usize)> = events
        .iter()
        .map(|ev| {
            let (c, y, x) = (ev.src / (g.h * g.w), (ev.src / g.w) % g.h, ev.src % g.w);
            (ev.t, ev.kind, y, x, c * k * k)
        })
        .collect();
    // The events of one output row's field: (t, kind, input x, weight row at
    // output column 0).
    let mut field: Vec<(f64, usize, usize, usize)> = Vec::new();
    for oy in (part..g.ho).step_by(parts) {
        field.clear();
        field.extend(
            located
                .iter()
                .filter(|&&(_, _, y, _, _)| oy <= y && y < oy + k)
                .map(|&(t, kind, y, x, c0)| (t, kind, x, c0 + (y - oy) * k + x)),
        );
        for ox in 0..g.wo {
            st.reset();
            for &(t, kind, x, row) in &field {
                if x < ox || x >= ox + k {
                    continue;
                }
                st.advance(t);
                if st.remaining == 0 {
                    break;
                }
                st.input(w, row - ox, kind, 0);
            }
            if st.remaining > 0 {
                st.advance(tmax);
            }
            times.extend_from_slice(st.spikes());
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
