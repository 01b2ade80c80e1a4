use rayon::prelude::*;
use rayon::ThreadPool;

use crate::bits::{packed_words, signs_match};
use crate::decide::decide_with_tmax;
use crate::engine::{
    build_events, conv_times, dense_times, pool_times, potential_at, sort_active, transpose,
    Active, ConvGeom, Event, PoolGeom, RowWeights, Scratch,
};
use crate::error::{invalid, Result};
use crate::psp::Psp;
use crate::ramp;
use crate::spec::{LayerParams, LayerSpec, Neuron};
use crate::threads::current_pool;

/// Result of [`Network::forward`].
#[derive(Clone, Debug)]
pub struct ForwardOut {
    /// Spike times of every layer, `batch * layer_size`, sample-major, C order.
    pub times: Vec<Vec<f64>>,
    /// `batch * n_out`: `V(tmax)` of the last layer if it is Dense, else empty.
    pub v_end: Vec<f64>,
    /// Synaptic events of the batch: over every Conv2d and Dense layer, the
    /// synapses of its inputs that spike (`t < tmax`), whether or not the sweep
    /// reached them. A measure of the work, to report time per event.
    pub events: u64,
}

#[derive(Clone, Debug)]
pub(crate) enum Layer {
    Conv {
        g: ConvGeom,
        theta: f64,
        binary: bool,
    },
    Pool {
        g: PoolGeom,
    },
    Dense {
        n_in: usize,
        n_out: usize,
        theta: f64,
        binary: bool,
        /// A second, earlier layer whose spikes follow the input's.
        skip: Option<usize>,
    },
}

impl Layer {
    /// `(out, rows)` of the weight viewed as in [`crate::bits`]; `None` for pooling.
    pub(crate) fn weight_dims(&self) -> Option<(usize, usize)> {
        match self {
            Layer::Conv { g, .. } => Some((g.cout, g.rows())),
            Layer::Dense { n_in, n_out, .. } => Some((*n_out, *n_in)),
            Layer::Pool { .. } => None,
        }
    }

    pub(crate) fn is_binary(&self) -> bool {
        matches!(
            self,
            Layer::Conv { binary: true, .. } | Layer::Dense { binary: true, .. }
        )
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Layer::Conv { .. } => "Conv2d",
            Layer::Pool { .. } => "MaxPool2d",
            Layer::Dense { .. } => "Dense",
        }
    }
}

/// A feed-forward stack of single-spike layers with fixed shapes. Weights live
/// outside (see [`LayerParams`]) so that callers own and save them.
#[derive(Clone, Debug)]
pub struct Network {
    specs: Vec<LayerSpec>,
    pub(crate) layers: Vec<Layer>,
    input_shape: Vec<usize>,
    shapes: Vec<Vec<usize>>,
    pub(crate) psp: Psp,
    pub(crate) tmax: f64,
    pub(crate) neuron: Neuron,
    /// Per layer, the magnitude of a binary layer's forward weights (`±scale`;
    /// 1 for every other layer). Only ramp networks set it (contract §3a).
    pub(crate) scale: Vec<f64>,
    pub(crate) in_size: usize,
    /// Layer index of each spiking layer, in order.
    pub(crate) spiking: Vec<usize>,
}

/// Smallest training batch whose step transposes its real Dense layers.
pub(crate) const DENSE_TRANSPOSE_MIN_BATCH: usize = 8;

/// Parts each sample's large layers are split into: the pool's threads when
/// there are fewer samples than threads, else 1. Results do not depend on it.
pub(crate) fn split_parts(batch: usize) -> usize {
    let threads = rayon::current_num_threads();
    if batch < threads {
        threads
    } else {
        1
    }
}

fn check_threshold(l: usize, theta: f64) -> Result<()> {
    if theta.is_finite() && theta > 0.0 {
        Ok(())
    } else {
        invalid!("layer {l}: threshold must be finite and > 0, got {theta}")
    }
}

fn checked_product(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .map_or_else(|| invalid!("shape {dims:?} is too large"), Ok)
}

impl Network {
    pub fn new(
        layers: Vec<LayerSpec>,
        input_shape: &[usize],
        psp: Psp,
        tmax: f64,
    ) -> Result<Network> {
        psp.validate()?;
        if !(tmax.is_finite() && tmax > 0.0) {
            return invalid!("tmax must be finite and > 0, got {tmax}");
        }
        if layers.is_empty() {
            return invalid!("a network needs at least one layer");
        }
        if !matches!(input_shape.len(), 1 | 3) || input_shape.contains(&0) {
            return invalid!(
                "input shape must be [C, H, W] or [N] with sizes > 0, got {input_shape:?}"
            );
        }
        let in_size = checked_product(input_shape)?;
        let mut shape = input_shape.to_vec();
        let mut built = Vec::with_capacity(layers.len());
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(layers.len());
        let mut spiking = Vec::new();
        for (l, spec) in layers.iter().enumerate() {
            let layer = match *spec {
                LayerSpec::Conv2d {
                    in_channels,
                    out_channels,
                    kernel_size: k,
                    threshold,
                    binary,
                } => {
                    let &[c, h, w] = shape.as_slice() else {
                        return invalid!(
                            "layer {l} (Conv2d) needs a [C, H, W] input, got {shape:?}"
                        );
                    };
                    if in_channels != c {
                        return invalid!(
                            "layer {l} (Conv2d): in_channels={in_channels} but its input has {c} channels"
                        );
                    }
                    if out_channels == 0 || k == 0 {
                        return invalid!(
                            "layer {l} (Conv2d): out_channels and kernel_size must be > 0"
                        );
                    }
                    if k > h || k > w {
                        return invalid!(
                            "layer {l} (Conv2d): kernel_size={k} is larger than its {h}x{w} input"
                        );
                    }
                    check_threshold(l, threshold)?;
                    let g = ConvGeom {
                        cin: c,
                        h,
                        w,
                        cout: out_channels,
                        k,
                        ho: h - k + 1,
                        wo: w - k + 1,
                    };
                    checked_product(&[g.cout, g.rows()])?;
                    shape = vec![g.cout, g.ho, g.wo];
                    Layer::Conv {
                        g,
                        theta: threshold,
                        binary,
                    }
                }
                LayerSpec::MaxPool2d { kernel_size: p } => {
                    let &[c, h, w] = shape.as_slice() else {
                        return invalid!(
                            "layer {l} (MaxPool2d) needs a [C, H, W] input, got {shape:?}"
                        );
                    };
                    if p == 0 || p > h || p > w {
                        return invalid!(
                            "layer {l} (MaxPool2d): kernel_size={p} must be in 1..={} for its {h}x{w} input",
                            h.min(w)
                        );
                    }
                    let g = PoolGeom {
                        c,
                        h,
                        w,
                        p,
                        ho: h / p,
                        wo: w / p,
                    };
                    shape = vec![c, g.ho, g.wo];
                    Layer::Pool { g }
                }
                LayerSpec::Dense {
                    in_features,
                    out_features,
                    threshold,
                    binary,
                    skip,
                } => {
                    let mut n = checked_product(&shape)?;
                    let mut what = format!("its input {shape:?} has");
                    if let Some(k) = skip {
                        if k + 1 >= l {
                            return invalid!(
                                "layer {l} (Dense): skip={k} must name a layer below its input layer"
                            );
                        }
                        n += checked_product(&shapes[k])?;
                        what = format!("its input {shape:?} and layer {k}'s {:?} have", &shapes[k]);
                    }
                    if in_features != n {
                        return invalid!(
                            "layer {l} (Dense): in_features={in_features} but {what} {n} values"
                        );
                    }
                    if out_features == 0 {
                        return invalid!("layer {l} (Dense): out_features must be > 0");
                    }
                    check_threshold(l, threshold)?;
                    checked_product(&[in_features, out_features])?;
                    shape = vec![out_features];
                    Layer::Dense {
                        n_in: in_features,
                        n_out: out_features,
                        theta: threshold,
                        binary,
                        skip,
                    }
                }
            };
            if layer.weight_dims().is_some() {
                spiking.push(l);
            }
            built.push(layer);
            shapes.push(shape.clone());
        }
        Ok(Network {
            specs: layers,
            scale: vec![1.0; built.len()],
            layers: built,
            input_shape: input_shape.to_vec(),
            shapes,
            psp,
            tmax,
            neuron: Neuron::Psp,
            in_size,
            spiking,
        })
    }

    /// The same network with another neuron model. Ramp neurons integrate with
    /// the linear PSP of slope `1/tmax` (contract §3a), so they need
    /// `Psp::new(tmax, inf)`: the learning rules read their kernel from it.
    pub fn with_neuron(mut self, neuron: Neuron) -> Result<Network> {
        if neuron == Neuron::Ramp
            && (self.psp.tau_rise != self.tmax || self.psp.tau_fall.is_finite())
        {
            return invalid!(
                "ramp neurons integrate with a linear PSP: tau_rise must equal tmax={} and tau_fall be inf, got ({}, {})",
                self.tmax,
                self.psp.tau_rise,
                self.psp.tau_fall
            );
        }
        if neuron == Neuron::Psp && self.scale.iter().any(|&s| s != 1.0) {
            return invalid!("binary weight scales other than 1 need ramp neurons");
        }
        self.neuron = neuron;
        Ok(self)
    }

    /// The same network with binary layer `layer`'s forward weights `±scale`
    /// instead of `±1`. A ramp neuron's window fixes its time scale, so unlike a
    /// PSP neuron's threshold, θ cannot absorb the weights' magnitude; with PSP
    /// neurons scale θ instead.
    pub fn with_scale(mut self, layer: usize, scale: f64) -> Result<Network> {
        if !(scale.is_finite() && scale > 0.0) {
            return invalid!("layer {layer}: scale must be finite and > 0, got {scale}");
        }
        match self.layers.get(layer) {
            Some(Layer::Conv { binary: true, .. } | Layer::Dense { binary: true, .. }) => {}
            _ if scale == 1.0 && layer < self.layers.len() => {}
            _ => return invalid!("layer {layer}: scale applies only to binary layers"),
        }
        if self.neuron != Neuron::Ramp && scale != 1.0 {
            return invalid!(
                "layer {layer}: scale needs ramp neurons (with PSP neurons, scale the threshold)"
            );
        }
        self.scale[layer] = scale;
        Ok(self)
    }

    pub fn neuron(&self) -> Neuron {
        self.neuron
    }

    /// The time at which the learning rules evaluate a neuron's kernels: its spike
    /// time, or for ramp neurons the end of the window below (`tmax` in that
    /// window's time), where their drive is taken.
    #[inline]
    pub(crate) fn kernel_time(&self, tj: f64) -> f64 {
        match self.neuron {
            Neuron::Psp => tj,
            Neuron::Ramp => self.tmax,
        }
    }

    pub fn layers(&self) -> &[LayerSpec] {
        &self.specs
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Output shape of every layer.
    pub fn output_shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    pub fn psp(&self) -> Psp {
        self.psp
    }

    pub fn tmax(&self) -> f64 {
        self.tmax
    }

    /// Number of Conv2d/Dense layers: the length of `Hyper::lr` and `Hyper::beta`.
    pub fn num_spiking(&self) -> usize {
        self.spiking.len()
    }

    fn size(&self, l: usize) -> usize {
        self.shapes[l].iter().product()
    }

    /// Values of a layer's real weight (0 for pooling or an out-of-range index).
    pub fn weight_len(&self, layer: usize) -> usize {
        self.layers
            .get(layer)
            .and_then(Layer::weight_dims)
            .map_or(0, |(out, rows)| out * rows)
    }

    /// `u64` words of a binary layer's packed signs (0 for pooling and real layers).
    pub fn packed_len(&self, layer: usize) -> usize {
        match self.layers.get(layer) {
            Some(l) if l.is_binary() => l.weight_dims().map_or(0, |(o, r)| packed_words(o, r)),
            _ => 0,
        }
    }

    /// The decision rule (contract §4) with this network's `tmax`.
    pub fn decide(&self, times: &[f64], v_end: &[f64]) -> (usize, u8) {
        decide_with_tmax(times, v_end, self.tmax)
    }

    /// Spike times of every layer and `V(tmax)` of a final Dense layer.
    pub fn forward(
        &self,
        params: &[LayerParams],
        input: &[f64],
        batch: usize,
    ) -> Result<ForwardOut> {
        self.check_params(params, false)?;
        self.check_input(input, batch)?;
        let pool = current_pool()?;
        Ok(self.forward_in(&pool, params, input, batch))
    }

    /// `(predictions, cases)` of a batch: the same as [`Network::decide`] on
    /// [`Network::forward`]'s output, without keeping the hidden layers' times
    /// and computing `V(tmax)` only for the samples whose first output spikes tie.
    pub fn predict(
        &self,
        params: &[LayerParams],
        input: &[f64],
        batch: usize,
    ) -> Result<(Vec<usize>, Vec<u8>)> {
        self.check_params(params, false)?;
        self.check_input(input, batch)?;
        let l = self.layers.len() - 1;
        if !matches!(self.layers[l], Layer::Dense { .. }) {
            return invalid!("predict needs a network whose last layer is Dense");
        }
        let pool = current_pool()?;
        let decided = self.map_samples(&pool, params, input, batch, |prep, x, times, _| {
            let last = &times[l];
            let t_min = last.iter().copied().fold(f64::INFINITY, f64::min);
            if last.iter().filter(|&&t| t == t_min).count() > 1 {
                self.decide(last, &self.v_end(prep, x, &times))
            } else {
                self.decide(last, &[])
            }
        });
        Ok(decided.into_iter().unzip())
    }

    /// `f(weights, sample, times, events)` of every sample's forward pass, in
    /// parallel on `pool`, with the weight copies made once for the batch.
    fn map_samples<T, F>(
        &self,
        pool: &ThreadPool,
        params: &[LayerParams],
        input: &[f64],
        batch: usize,
        f: F,
    ) -> Vec<T>
    where
        T: Send,
        F: Fn(&[Option<RowWeights>], &[f64], Vec<Vec<f64>>, u64) -> T + Sync + Send,
    {
        pool.install(|| {
            let wt = self.inference_weights(params);
            let prep = self.row_weights(params, &wt, &[]);
            let parts = split_parts(batch);
            input
                .par_chunks_exact(self.in_size)
                .map_init(Scratch::default, |s, x| {
                    let (times, events) =
                        self.forward_sample(&prep, x, &mut s.events, &mut s.act, None, parts);
                    f(&prep, x, times, events)
                })
                .collect()
        })
    }

    pub(crate) fn forward_in(
        &self,
        pool: &ThreadPool,
        params: &[LayerParams],
        input: &[f64],
        batch: usize,
    ) -> ForwardOut {
        let samples = self.map_samples(pool, params, input, batch, |prep, x, times, events| {
            let v_end = self.v_end(prep, x, &times);
            (times, v_end, events)
        });
        let mut times: Vec<Vec<f64>> = (0..self.layers.len())
            .map(|l| Vec::with_capacity(batch * self.size(l)))
            .collect();
        let mut v_end = Vec::new();
        let mut events = 0;
        for (ts, v, e) in samples {
            for (dst, t) in times.iter_mut().zip(ts) {
                dst.extend_from_slice(&t);
            }
            v_end.extend_from_slice(&v);
            events += e;
        }
        ForwardOut {
            times,
            v_end,
            events,
        }
    }

    /// The weight copies of a forward pass with fixed weights, for
    /// [`Network::row_weights`]: the transposed real weights, and the signs of
    /// binary Conv2d layers of ramp neurons as `±1.0` rows (see
    /// `ramp::conv_drive`), expanded once per call instead of once per sample.
    /// Training leaves those packed: its weights change from step to step.
    fn inference_weights(&self, params: &[LayerParams]) -> Vec<Vec<f64>> {
        let mut wt = self.transpose_all(params, true);
        if self.neuron != Neuron::Ramp {
            return wt;
        }
        for ((layer, p), wt) in self.layers.iter().zip(params).zip(&mut wt) {
            if let (Layer::Conv { binary: true, .. }, Some((out, rows))) =
                (layer, layer.weight_dims())
            {
                *wt = ramp::expand_signs(&RowWeights::bits(p.packed, out), rows)
                    .expect("packed signs");
            }
        }
        wt
    }

    /// Transposed `(rows, out)` weights of the real spiking layers (empty for
    /// the others): the layout the sweep reads. Runs on the current rayon pool.
    /// Without `dense`, real Dense layers are left out too: their neurons then
    /// read their own weight rows ([`RowWeights::Cols`]), which is what
    /// training wants, where keeping a wide layer's copy in step after every
    /// sample cost more than the rest of the step.
    pub(crate) fn transpose_all(&self, params: &[LayerParams], dense: bool) -> Vec<Vec<f64>> {
        self.layers
            .iter()
            .zip(params)
            .map(|(layer, p)| match (layer, layer.weight_dims()) {
                (Layer::Dense { .. }, _) if !dense => Vec::new(),
                (_, Some((out, rows))) if !layer.is_binary() => transpose(p.weight, out, rows),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Transposed weights of the real Dense layers for one training step of
    /// `batch` samples (empty for the others, for those `wt` already holds, and
    /// for every layer when the batch is small): from
    /// [`DENSE_TRANSPOSE_MIN_BATCH`] samples on, one copy per step costs less
    /// than the strided reads of [`RowWeights::Cols`]. The spike times are the
    /// same either way.
    pub(crate) fn step_transposes(
        &self,
        params: &[LayerParams],
        wt: &[Vec<f64>],
        batch: usize,
    ) -> Vec<Vec<f64>> {
        if batch < DENSE_TRANSPOSE_MIN_BATCH {
            return Vec::new();
        }
        self.layers
            .iter()
            .zip(params)
            .zip(wt)
            .map(|((layer, p), wt)| match (layer, layer.weight_dims()) {
                (Layer::Dense { binary: false, .. }, Some((out, rows))) if wt.is_empty() => {
                    transpose(p.weight, out, rows)
                }
                _ => Vec::new(),
            })
            .collect()
    }

    /// The forward weights of every spiking layer, laid out for the sweep:
    /// `fresh[l]` (see [`Network::step_transposes`]) where it is not empty,
    /// else `wt[l]`.
    pub(crate) fn row_weights<'a>(
        &self,
        params: &[LayerParams<'a>],
        wt: &'a [Vec<f64>],
        fresh: &'a [Vec<f64>],
    ) -> Vec<Option<RowWeights<'a>>> {
        self.layers
            .iter()
            .zip(params)
            .zip(wt)
            .enumerate()
            .map(|(l, ((layer, p), wt))| {
                let wt = fresh.get(l).filter(|f| !f.is_empty()).unwrap_or(wt);
                let (out, rows) = layer.weight_dims()?;
                Some(if layer.is_binary() && wt.is_empty() {
                    RowWeights::bits(p.packed, out)
                } else if layer.is_binary() {
                    // Signs expanded by `inference_weights`.
                    RowWeights::real(wt, out)
                } else if wt.is_empty() {
                    RowWeights::cols(p.weight, out, rows)
                } else {
                    RowWeights::real(wt, out)
                })
            })
            .collect()
    }

    /// The spike times layer `l` reads, given the network input `x` and the
    /// outputs of the layers below it: for a Dense layer with a skip, its
    /// input's and the skipped-from layer's, concatenated in `cat`.
    pub(crate) fn input_of<'a>(
        &self,
        l: usize,
        x: &'a [f64],
        times: &'a [Vec<f64>],
        cat: &'a mut Vec<f64>,
    ) -> &'a [f64] {
        let prev = if l == 0 { x } else { &times[l - 1][..] };
        match self.layers[l] {
            Layer::Dense { skip: Some(k), .. } => {
                cat.clear();
                cat.extend_from_slice(prev);
                cat.extend_from_slice(&times[k]);
                cat
            }
            _ => prev,
        }
    }

    /// Position of layer `l` among the spiking layers.
    pub(crate) fn spiking_index(&self, l: usize) -> usize {
        self.spiking.iter().position(|&s| s == l).unwrap_or(0)
    }

    /// Spike times of every layer for one sample, and its synaptic events
    /// (see [`ForwardOut::events`]).
    pub(crate) fn forward_sample(
        &self,
        prep: &[Option<RowWeights>],
        x: &[f64],
        events: &mut Vec<Event>,
        act: &mut Vec<Active>,
        mut keep: Option<&mut Vec<Vec<Active>>>,
        parts: usize,
    ) -> (Vec<Vec<f64>>, u64) {
        let steps = self.psp.slope_steps();
        let mut out: Vec<Vec<f64>> = Vec::with_capacity(self.layers.len());
        let mut n_events = 0u64;
        let mut cat = Vec::new();
        for (l, (layer, w)) in self.layers.iter().zip(prep).enumerate() {
            let inp = self.input_of(l, x, &out, &mut cat);
            let mut kept = Vec::new();
            let ramp = self.neuron == Neuron::Ramp;
            let y = match (layer, w) {
                (Layer::Pool { g }, _) => pool_times(inp, g),
                (Layer::Conv { g, theta, .. }, Some(w)) if ramp => {
                    n_events += (0..inp.len())
                        .filter(|&i| inp[i] < self.tmax)
                        .map(|i| g.fan_out(i))
                        .sum::<u64>();
                    let u = ramp::conv_drive(inp, g, w, self.scale[l], self.tmax, parts);
                    ramp::times(&u, *theta, self.tmax)
                }
                (Layer::Dense { n_out, theta, .. }, Some(w)) if ramp => {
                    // Sorted inputs only for training's phase 2 (accumulate_row).
                    let spiking = if keep.is_some() {
                        sort_active(inp, self.tmax, act);
                        kept.clone_from(act);
                        act.len()
                    } else {
                        inp.iter().filter(|&&t| t < self.tmax).count()
                    };
                    n_events += (spiking * n_out) as u64;
                    let u = ramp::dense_drive(inp, w, *n_out, self.scale[l], self.tmax);
                    ramp::times(&u, *theta, self.tmax)
                }
                (Layer::Conv { g, theta, .. }, Some(w)) => {
                    build_events(inp, &self.psp, self.tmax, act, events);
                    n_events += act.iter().map(|a| g.fan_out(a.src as usize)).sum::<u64>();
                    conv_times(events, g, w, &steps, *theta, self.tmax, parts)
                }
                (Layer::Dense { n_out, theta, .. }, Some(w)) => {
                    build_events(inp, &self.psp, self.tmax, act, events);
                    n_events += (act.len() * n_out) as u64;
                    if keep.is_some() {
                        kept.clone_from(act);
                    }
                    dense_times(events, w, &steps, *n_out, *theta, self.tmax, parts)
                }
                _ => unreachable!("row_weights() gives weights to every spiking layer"),
            };
            if let Some(k) = keep.as_deref_mut() {
                k.push(kept);
            }
            out.push(y);
        }
        (out, n_events)
    }

    /// `V(tmax)` of the last layer if it is Dense, else empty.
    pub(crate) fn v_end(
        &self,
        prep: &[Option<RowWeights>],
        x: &[f64],
        times: &[Vec<f64>],
    ) -> Vec<f64> {
        let l = self.layers.len() - 1;
        match (&self.layers[l], &prep[l]) {
            (Layer::Dense { n_out, .. }, Some(w)) => {
                let mut cat = Vec::new();
                let inp = self.input_of(l, x, times, &mut cat);
                match self.neuron {
                    Neuron::Psp => potential_at(inp, w, *n_out, &self.psp, self.tmax),
                    Neuron::Ramp => {
                        let u = ramp::dense_drive(inp, w, *n_out, self.scale[l], self.tmax);
                        ramp::v_end(&u, self.tmax)
                    }
                }
            }
            _ => Vec::new(),
        }
    }

    pub(crate) fn check_input(&self, input: &[f64], batch: usize) -> Result<()> {
        if batch.checked_mul(self.in_size) != Some(input.len()) {
            return invalid!(
                "input has {} values but batch={batch} x input size {} ({:?}) were expected",
                input.len(),
                self.in_size,
                self.input_shape
            );
        }
        for (i, &t) in input.iter().enumerate() {
            if t.is_nan() {
                return invalid!("input time NaN at index {i}");
            }
            if !(0.0..=self.tmax).contains(&t) {
                return invalid!(
                    "input time {t} at index {i} is outside [0, tmax={}]",
                    self.tmax
                );
            }
        }
        Ok(())
    }

    /// Shapes (and, for training, values) of the parameters of every layer.
    pub(crate) fn check_params(&self, params: &[LayerParams], training: bool) -> Result<()> {
        if params.len() != self.layers.len() {
            return invalid!(
                "got parameters for {} layers but the network has {}",
                params.len(),
                self.layers.len()
            );
        }
        for (l, (layer, p)) in self.layers.iter().zip(params).enumerate() {
            let name = layer.name();
            let Some((out, rows)) = layer.weight_dims() else {
                if !p.weight.is_empty() || !p.packed.is_empty() {
                    return invalid!("layer {l} ({name}) has no parameters, but some were given");
                }
                continue;
            };
            let n = out * rows;
            let binary = layer.is_binary();
            if binary {
                let words = packed_words(out, rows);
                if p.packed.len() != words {
                    return invalid!(
                        "layer {l} (binary {name}): packed signs have {} words, expected {words}",
                        p.packed.len()
                    );
                }
                // The forward pass reads only the bits of a binary layer.
                if p.weight.len() != n && (training || !p.weight.is_empty()) {
                    return invalid!(
                        "layer {l} (binary {name}): weight has {} values, expected {n}",
                        p.weight.len()
                    );
                }
            } else {
                if p.weight.len() != n {
                    return invalid!(
                        "layer {l} ({name}): weight has {} values, expected {n}",
                        p.weight.len()
                    );
                }
                if !p.packed.is_empty() {
                    return invalid!(
                        "layer {l} ({name}) is not binary, but packed signs were given"
                    );
                }
            }
            // A vectorised pass first; the index only when one is found.
            if (!binary || training) && !p.weight.iter().fold(true, |ok, w| ok & w.is_finite()) {
                if let Some(i) = p.weight.iter().position(|w| !w.is_finite()) {
                    return invalid!(
                        "layer {l} ({name}): weight {} at index {i} is not finite",
                        p.weight[i]
                    );
                }
            }
            if binary && training && !signs_match(p.weight, p.packed, out, rows) {
                return invalid!(
                    "layer {l} (binary {name}): packed signs do not match sign(weight); repack them with bits::pack_signs"
                );
            }
        }
        Ok(())
    }
}
