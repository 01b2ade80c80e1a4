//! Training orchestration: the steps of both rules over a batch or a chunk of
//! data, and the gradients of a batch without a step. Phase 1 (per sample) lives
//! in [`crate::stidibp`] and [`crate::exact`], phase 2 (per weight row) in
//! [`crate::backprop`].

use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use rayon::ThreadPool;

use crate::backprop::{
    accumulate_row, conv_sums_at_end, forward_weight, kernels_at_end, DenseBatch, SampleRec,
};
use crate::engine::Scratch;
use crate::error::{invalid, Error, Result};
use crate::network::{split_parts, Layer, Network, DENSE_TRANSPOSE_MIN_BATCH};
use crate::spec::{ConvReduce, ExactConfig, Hyper, LayerParams, LayerParamsMut, Optimizer, Rule};
use crate::threads::current_pool;
use crate::{exact, stidibp};

/// Statistics of one training step, from its forward pass.
#[derive(Clone, Debug)]
pub struct StepStats {
    pub predictions: Vec<usize>,
    /// 0 = unique first spike, 1 = tie, 2 = no output spike.
    pub cases: Vec<u8>,
    /// Mean over the batch of the rule's loss (STiDi-BP: `0.5 * Σ_j e_j²` of the
    /// output layer, unnormalised).
    pub loss: f64,
    /// Per layer (pooling included): mean over the batch of the fraction of neurons that fire.
    pub fired: Vec<f64>,
    /// Synaptic events of the step's forward passes (see [`crate::ForwardOut::events`]).
    pub events: u64,
}

fn step_stats(recs: &[SampleRec], n_layers: usize) -> StepStats {
    let mut stats = StepStats {
        predictions: Vec::with_capacity(recs.len()),
        cases: Vec::with_capacity(recs.len()),
        loss: 0.0,
        fired: vec![0.0; n_layers],
        events: 0,
    };
    for rec in recs {
        stats.predictions.push(rec.prediction);
        stats.cases.push(rec.case);
        stats.loss += rec.loss;
        stats.events += rec.events;
        for (s, f) in stats.fired.iter_mut().zip(&rec.fired) {
            *s += f;
        }
    }
    let b = recs.len() as f64;
    stats.loss /= b;
    for f in &mut stats.fired {
        *f /= b;
    }
    stats
}

/// The weights (and packed signs) a training call started from, put back if a
/// step diverges: one copy per call, small next to the steps' own work.
struct Saved(Vec<(Vec<f64>, Vec<u64>)>);

impl Saved {
    /// Copies on the current rayon pool: with a call per batch, a serial copy
    /// of a wide layer held back the scaling over threads.
    fn new(params: &[LayerParamsMut]) -> Saved {
        fn copy<T: Copy + Send + Sync>(src: &[T]) -> Vec<T> {
            const CHUNK: usize = 1 << 14;
            let mut dst = Vec::with_capacity(src.len());
            dst.spare_capacity_mut()
                .par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(d, s)| {
                    for (d, &s) in d.iter_mut().zip(s) {
                        d.write(s);
                    }
                });
            // SAFETY: every element was written above.
            unsafe { dst.set_len(src.len()) };
            dst
        }
        Saved(
            params
                .iter()
                .map(|p| (copy(p.weight), copy(p.packed)))
                .collect(),
        )
    }

    /// Restores every layer and names the first non-finite weight of layer `l`.
    fn restore(self, net: &Network, params: &mut [LayerParamsMut], l: usize, step: usize) -> Error {
        let (i, w) = params[l]
            .weight
            .iter()
            .enumerate()
            .find(|(_, w)| !w.is_finite())
            .map_or((0, f64::NAN), |(i, &w)| (i, w));
        for (p, (w, b)) in params.iter_mut().zip(self.0) {
            p.weight.copy_from_slice(&w);
            p.packed.copy_from_slice(&b);
        }
        Error::Diverged(format!(
            "layer {l} ({}): step {step} of this call would make weight {w} at index {i} \
             non-finite (learning rate or weight decay too large?); the weights are left \
             as they were before the call",
            net.layers[l].name()
        ))
    }
}

/// Adam's first and second moments, one weight-sized slice per layer (empty for
/// pooling, and for every layer under SGD), and the number of steps taken.
#[derive(Debug, Default)]
pub struct Moments<'a> {
    pub m: Vec<&'a mut [f64]>,
    pub v: Vec<&'a mut [f64]>,
    pub step: u64,
}

impl Network {
    /// One STiDi-BP step on a batch: every update is computed from one forward
    /// pass, averaged over the batch, then applied (with weight decay) in place.
    /// Packed signs of binary layers are refreshed from the new real weights.
    pub fn train_step(
        &self,
        params: &mut [LayerParamsMut],
        input: &[f64],
        labels: &[usize],
        batch: usize,
        hyper: &Hyper,
    ) -> Result<StepStats> {
        let pool = current_pool()?;
        self.train_step_in(&pool, params, input, labels, batch, hyper)
    }

    pub(crate) fn train_step_in(
        &self,
        pool: &ThreadPool,
        params: &mut [LayerParamsMut],
        input: &[f64],
        labels: &[usize],
        batch: usize,
        hyper: &Hyper,
    ) -> Result<StepStats> {
        {
            let views: Vec<LayerParams> = params.iter().map(LayerParamsMut::as_params).collect();
            pool.install(|| self.check_train(&views, input, labels, batch, hyper))?;
        }
        let saved = pool.install(|| Saved::new(params));
        pool.install(|| {
            let mut wt = {
                let views: Vec<LayerParams> =
                    params.iter().map(LayerParamsMut::as_params).collect();
                self.transpose_all(&views, false)
            };
            self.step(params, &mut wt, input, labels, hyper, false)
        })
        .map_err(|l| saved.restore(self, params, l, 0))
    }

    /// Consecutive [`Network::train_step`]s over a chunk of data: step `s` trains
    /// on samples `s * batch_size ..` (the last batch may be smaller), each from
    /// the weights the previous step left. Bit-identical to calling
    /// `train_step` on each batch in turn, without a call (and a transposition
    /// of the weights) per step: with `batch_size = 1` these are per-sample
    /// updates. Returns the statistics of every step.
    pub fn train_steps(
        &self,
        params: &mut [LayerParamsMut],
        input: &[f64],
        labels: &[usize],
        batch_size: usize,
        hyper: &Hyper,
    ) -> Result<Vec<StepStats>> {
        let pool = current_pool()?;
        let n = labels.len();
        if batch_size == 0 {
            return invalid!("train_steps needs batch_size >= 1");
        }
        {
            let views: Vec<LayerParams> = params.iter().map(LayerParamsMut::as_params).collect();
            pool.install(|| self.check_train(&views, input, labels, n, hyper))?;
        }
        let n_in = self.in_size;
        let saved = pool.install(|| Saved::new(params));
        // One entry into the pool for all the steps: the steps' parallel
        // sections then start from a worker thread.
        pool.install(|| {
            // Steps of a few samples read real Dense weights in place; larger
            // ones sweep a transposed copy that phase 2 keeps up to date.
            let mut wt = {
                let views: Vec<LayerParams> =
                    params.iter().map(LayerParamsMut::as_params).collect();
                self.transpose_all(&views, batch_size >= DENSE_TRANSPOSE_MIN_BATCH)
            };
            let mut out = Vec::with_capacity(n.div_ceil(batch_size));
            for (s, lo) in (0..n).step_by(batch_size).enumerate() {
                let hi = (lo + batch_size).min(n);
                out.push(
                    self.step(
                        params,
                        &mut wt,
                        &input[lo * n_in..hi * n_in],
                        &labels[lo..hi],
                        hyper,
                        hi < n,
                    )
                    .map_err(|l| (l, s))?,
                );
            }
            Ok(out)
        })
        .map_err(|(l, s)| saved.restore(self, params, l, s))
    }

    /// One checked step, run on the current rayon pool. `wt` holds the
    /// transposed real weights (empty for Dense layers, which read their own
    /// rows) and, if `sync`, is brought up to date with the new weights.
    /// `Err(l)` if layer `l` got a non-finite weight: the caller restores them.
    fn step(
        &self,
        params: &mut [LayerParamsMut],
        wt: &mut [Vec<f64>],
        input: &[f64],
        labels: &[usize],
        hyper: &Hyper,
        sync: bool,
    ) -> std::result::Result<StepStats, usize> {
        let batch = labels.len();
        let recs: Vec<SampleRec> = {
            let views: Vec<LayerParams> = params.iter().map(LayerParamsMut::as_params).collect();
            let fresh = self.step_transposes(&views, wt, batch);
            let prep = self.row_weights(&views, wt, &fresh);
            let weights: Vec<&[f64]> = views.iter().map(|p| p.weight).collect();
            let n_in = self.in_size;
            let parts = split_parts(batch);
            (0..batch)
                .into_par_iter()
                .map_init(Scratch::default, |s, b| {
                    let x = &input[b * n_in..(b + 1) * n_in];
                    stidibp::sample_pass(self, &prep, &weights, x, labels[b], hyper, s, parts)
                })
                .collect()
        };
        let stats = step_stats(&recs, self.layers.len());
        let b = batch as f64;
        let per_sample = 1.0 / (self.tmax * b);
        for (si, &l) in self.spiking.iter().enumerate() {
            let lr = hyper.lr[si];
            if lr == 0.0 {
                continue; // frozen (phase 1 may have left its errors out, too)
            }
            // Δw = −η ê (t_j/θ) ε / T per pair; phase 2 sums ê (t_j/θ) ε.
            let mut factor = -lr * per_sample;
            if let (Layer::Conv { g, .. }, ConvReduce::Mean) = (&self.layers[l], hyper.conv_reduce)
            {
                factor /= g.positions() as f64;
            }
            let decay = lr * hyper.weight_decay;
            let Some((out, rows)) = self.layers[l].weight_dims() else {
                continue;
            };
            // Inputs (weight columns) that may change: with no decay, a Dense
            // layer's weights from inputs that never spiked stay as they are.
            let sparse = decay == 0.0 && matches!(self.layers[l], Layer::Dense { .. });
            let p = &mut params[l];
            // Batches with errors on most outputs: input by input, in vector
            // passes. A few samples, or mostly zero errors (a trained network):
            // row by row below, skipping them. Both add the same terms.
            let errors = recs
                .iter()
                .map(|r| r.g[si].iter().filter(|&&g| g != 0.0).count());
            if matches!(self.layers[l], Layer::Dense { .. })
                && batch >= DENSE_TRANSPOSE_MIN_BATCH
                && errors.sum::<usize>() * 2 >= batch * out
            {
                let keep = if sync { &mut wt[l][..] } else { &mut [][..] };
                if !self.update_dense(l, &recs, input, p, keep, factor, decay) {
                    return Err(l);
                }
                continue;
            }
            // Every new weight is checked as it is written (one compare each);
            // on a non-finite one the caller puts back the weights it saved.
            let finite = AtomicBool::new(true);
            let sums = self.conv_sums(l, &recs, input);
            p.weight.par_chunks_mut(rows).enumerate().for_each_init(
                || (vec![0.0; rows], Vec::new()),
                |(acc, touched), (o, w)| {
                    self.row_sums(sums.as_deref(), l, o, &recs, input, acc, touched);
                    let mut ok = true;
                    // Visiting only the touched weights pays when they are few
                    // (small batches); the choice depends only on the data.
                    if sparse && touched.iter().sum::<usize>() * 4 < rows {
                        for (rec, &k) in recs.iter().zip(touched.iter()) {
                            for a in &rec.active[l][..k] {
                                let i = a.src as usize;
                                w[i] += acc[i] * factor - decay * w[i];
                                ok &= w[i].is_finite();
                                // Each weight is updated once; acc is left zeroed.
                                acc[i] = 0.0;
                            }
                        }
                    } else {
                        for (w, a) in w.iter_mut().zip(acc.iter_mut()) {
                            *w += *a * factor - decay * *w;
                            ok &= w.is_finite();
                            *a = 0.0;
                        }
                    }
                    if !ok {
                        finite.store(false, Ordering::Relaxed);
                    }
                },
            );
            if !finite.into_inner() {
                return Err(l);
            }
            let binary = self.layers[l].is_binary();
            if !binary && (!sync || wt[l].is_empty()) {
                continue;
            }
            let mut changed = vec![!sparse; rows];
            if sparse {
                for rec in &recs {
                    for a in &rec.active[l] {
                        changed[a.src as usize] = true;
                    }
                }
            }
            let w: &[f64] = p.weight;
            if binary {
                let wpr = crate::bits::words_per_row(out);
                // Many changed inputs (a batch): one sequential pass over the
                // weights beats a strided column read per input.
                if changed.iter().filter(|&&c| c).count() * 4 > rows {
                    crate::bits::pack_all(w, out, rows, p.packed);
                } else {
                    p.packed
                        .par_chunks_mut(wpr)
                        .enumerate()
                        .filter(|(r, _)| changed[*r])
                        .for_each(|(r, words)| crate::bits::pack_row(w, out, rows, r, words));
                }
            } else {
                // Row by row: only the changed rows are read (strided).
                wt[l]
                    .par_chunks_mut(out)
                    .enumerate()
                    .filter(|(r, _)| changed[*r])
                    .for_each(|(r, dst)| {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = w[j * rows + r];
                        }
                    });
            }
        }
        Ok(stats)
    }

    /// Every row's phase 2 sums of a Conv2d layer of ramp neurons, computed
    /// together from [`kernels_at_end`] (see [`conv_sums_at_end`]); `None` for
    /// the other layers, whose rows [`accumulate_row`] sums one by one.
    fn conv_sums(&self, l: usize, recs: &[SampleRec], input: &[f64]) -> Option<Vec<f64>> {
        match self.layers[l] {
            Layer::Conv { .. } => {
                kernels_at_end(self, l, recs, input).map(|e| conv_sums_at_end(self, l, recs, &e))
            }
            _ => None,
        }
    }

    /// Row `o`'s phase 2 sums into `acc` (zero on entry): from `sums` where
    /// [`Network::conv_sums`] computed them, else by [`accumulate_row`].
    #[allow(clippy::too_many_arguments)]
    fn row_sums(
        &self,
        sums: Option<&[f64]>,
        l: usize,
        o: usize,
        recs: &[SampleRec],
        input: &[f64],
        acc: &mut [f64],
        touched: &mut Vec<usize>,
    ) {
        match sums {
            Some(s) => {
                acc.copy_from_slice(&s[o * acc.len()..(o + 1) * acc.len()]);
                touched.clear();
            }
            None => accumulate_row(self, l, o, recs, input, acc, touched),
        }
    }

    /// Phase 2 of a STiDi-BP step for Dense layer `l`, input by input: blocks of
    /// inputs in parallel, each summing its inputs' terms over the batch in one
    /// vector pass per sample and input, then writing its columns of the weight
    /// and the same rows of the packed signs and of `wt` (the transposed weight
    /// the next step sweeps; empty if none is kept). With no decay the inputs
    /// that never spiked keep their weights. `false` if a new weight is not finite.
    #[allow(clippy::too_many_arguments)]
    fn update_dense(
        &self,
        l: usize,
        recs: &[SampleRec],
        input: &[f64],
        p: &mut LayerParamsMut,
        wt: &mut [f64],
        factor: f64,
        decay: f64,
    ) -> bool {
        const BLOCK: usize = 8;
        let (out, rows) = self.layers[l].weight_dims().expect("a Dense layer");
        let batch = DenseBatch::new(self, l, recs, input);
        let binary = self.layers[l].is_binary();
        let wpr = crate::bits::words_per_row(out);
        let every = decay != 0.0;
        let w = Columns::new(p.weight, rows);
        let packed = Columns::new(if binary { p.packed } else { &mut [] }, 1);
        let wt = Columns::new(wt, 1);
        (0..rows.div_ceil(BLOCK))
            .into_par_iter()
            .map_init(
                || vec![0.0; BLOCK * out],
                |sums, q| {
                    let inputs = q * BLOCK..((q + 1) * BLOCK).min(rows);
                    let todo = || inputs.clone().filter(|&i| every || batch.spiked[i]);
                    if todo().next().is_none() {
                        return true;
                    }
                    let sums = &mut sums[..inputs.len() * out];
                    batch.sums(inputs.clone(), sums);
                    let mut ok = true;
                    for i in todo() {
                        let sums = &sums[(i - inputs.start) * out..][..out];
                        // SAFETY (all three): input i's column of the weight, its
                        // packed row and its row of `wt` are this task's alone.
                        let words = unsafe { packed.row(i * wpr, if binary { wpr } else { 0 }) };
                        words.fill(0);
                        let row = unsafe { wt.row(i * out, if wt.len > 0 { out } else { 0 }) };
                        for (j, &a) in sums.iter().enumerate() {
                            let wji = unsafe { w.at(j, i) };
                            *wji += a * factor - decay * *wji;
                            ok &= wji.is_finite();
                            if binary {
                                words[j / 64] |= u64::from(*wji >= 0.0) << (j % 64);
                            }
                            if let Some(d) = row.get_mut(j) {
                                *d = *wji;
                            }
                        }
                    }
                    ok
                },
            )
            .reduce(|| true, |a, b| a && b)
    }

    /// Phase 1 of `rule` over a batch, on the current rayon pool, with `lr` in
    /// place of the rule's rates (they decide which layers need errors).
    fn sample_recs(
        &self,
        params: &[LayerParams],
        wt: &[Vec<f64>],
        input: &[f64],
        labels: &[usize],
        rule: &Rule,
        lr: &[f64],
    ) -> Vec<SampleRec> {
        let fresh = self.step_transposes(params, wt, labels.len());
        let prep = self.row_weights(params, wt, &fresh);
        let weights: Vec<&[f64]> = params.iter().map(|p| p.weight).collect();
        let n_in = self.in_size;
        let parts = split_parts(labels.len());
        let hyper = match rule {
            Rule::StidiBp(h) => Some(Hyper {
                lr: lr.to_vec(),
                ..h.clone()
            }),
            Rule::Exact(_) => None,
        };
        (0..labels.len())
            .into_par_iter()
            .map_init(Scratch::default, |s, b| {
                let x = &input[b * n_in..(b + 1) * n_in];
                match (rule, &hyper) {
                    (Rule::Exact(cfg), _) => {
                        exact::sample_pass(self, &prep, &weights, x, labels[b], cfg, lr, s, parts)
                    }
                    (_, Some(h)) => {
                        stidibp::sample_pass(self, &prep, &weights, x, labels[b], h, s, parts)
                    }
                    _ => unreachable!(),
                }
            })
            .collect()
    }

    /// The batch-mean loss and, per layer (empty for pooling), an array shaped
    /// like its weight such that a plain step at rate `lr` is `w − lr · grad`:
    /// `dL/dw` for the exact rule, the direction of its update for STiDi-BP
    /// (weight decay included in both).
    pub fn gradients(
        &self,
        params: &[LayerParams],
        input: &[f64],
        labels: &[usize],
        rule: &Rule,
    ) -> Result<(f64, Vec<Vec<f64>>)> {
        let pool = current_pool()?;
        let batch = labels.len();
        let (lr, wd, hinge) = match rule {
            Rule::StidiBp(h) => {
                pool.install(|| self.check_train(params, input, labels, batch, h))?;
                (vec![1.0; h.lr.len()], h.weight_decay, 0.0)
            }
            Rule::Exact(c) => {
                pool.install(|| self.check_exact(params, input, labels, batch, c))?;
                (vec![1.0; c.lr.len()], c.weight_decay, c.sum_hinge)
            }
        };
        Ok(pool.install(|| {
            let wt = self.transpose_all(params, false);
            let recs = self.sample_recs(params, &wt, input, labels, rule, &lr);
            let b = batch as f64;
            let loss =
                recs.iter().map(|r| r.loss).sum::<f64>() / b + self.hinge_penalty(params, hinge);
            let grads = self
                .layers
                .iter()
                .enumerate()
                .map(|(l, layer)| {
                    let Some((_, rows)) = layer.weight_dims() else {
                        return Vec::new();
                    };
                    let scale = match (rule, layer) {
                        (Rule::StidiBp(h), Layer::Conv { g, .. })
                            if h.conv_reduce == ConvReduce::Mean =>
                        {
                            1.0 / (self.tmax * b * g.positions() as f64)
                        }
                        (Rule::StidiBp(_), _) => 1.0 / (self.tmax * b),
                        (Rule::Exact(_), _) => -1.0 / b,
                    };
                    let w = params[l].weight;
                    let mut grad = vec![0.0; w.len()];
                    let sums = self.conv_sums(l, &recs, input);
                    grad.par_chunks_mut(rows).enumerate().for_each_init(
                        Vec::new,
                        |touched, (o, acc)| {
                            self.row_sums(sums.as_deref(), l, o, &recs, input, acc, touched);
                            let row = &w[o * rows..(o + 1) * rows];
                            let h = self.hinge_grad(l, row, hinge);
                            for (a, &wi) in acc.iter_mut().zip(row) {
                                *a = *a * scale + wd * wi + h;
                            }
                        },
                    );
                    grad
                })
                .collect();
            (loss, grads)
        }))
    }

    /// Consecutive exact-gradient steps over a chunk of data, `batch_size`
    /// samples each (the last may be smaller), as [`Network::train_steps`] does
    /// for STiDi-BP. `moments` carries Adam's state from call to call.
    pub fn exact_steps(
        &self,
        params: &mut [LayerParamsMut],
        input: &[f64],
        labels: &[usize],
        batch_size: usize,
        cfg: &ExactConfig,
        moments: &mut Moments,
    ) -> Result<Vec<StepStats>> {
        let pool = current_pool()?;
        let n = labels.len();
        if batch_size == 0 {
            return invalid!("exact_steps needs batch_size >= 1");
        }
        {
            let views: Vec<LayerParams> = params.iter().map(LayerParamsMut::as_params).collect();
            pool.install(|| self.check_exact(&views, input, labels, n, cfg))?;
        }
        if cfg.optimizer == Optimizer::Adam {
            if moments.m.len() != self.layers.len() || moments.v.len() != self.layers.len() {
                return invalid!("Adam needs one moment array (or none) per layer");
            }
            for (l, p) in params.iter().enumerate() {
                if moments.m[l].len() != p.weight.len() || moments.v[l].len() != p.weight.len() {
                    return invalid!("layer {l}: Adam's moments must be shaped like its weight");
                }
            }
        }
        let n_in = self.in_size;
        let saved = pool.install(|| Saved::new(params));
        let saved_moments: Vec<(Vec<f64>, Vec<f64>)> = moments
            .m
            .iter()
            .zip(&moments.v)
            .map(|(m, v)| (m.to_vec(), v.to_vec()))
            .collect();
        let start_step = moments.step;
        pool.install(|| {
            let mut out = Vec::with_capacity(n.div_ceil(batch_size));
            for (s, lo) in (0..n).step_by(batch_size).enumerate() {
                let hi = (lo + batch_size).min(n);
                let x = &input[lo * n_in..hi * n_in];
                let stats = self.exact_step(params, x, &labels[lo..hi], cfg, moments);
                out.push(stats.map_err(|l| (l, s))?);
            }
            Ok(out)
        })
        .map_err(|(l, s)| {
            for ((m, v), (m0, v0)) in moments
                .m
                .iter_mut()
                .zip(moments.v.iter_mut())
                .zip(saved_moments)
            {
                m.copy_from_slice(&m0);
                v.copy_from_slice(&v0);
            }
            moments.step = start_step;
            saved.restore(self, params, l, s)
        })
    }

    fn exact_step(
        &self,
        params: &mut [LayerParamsMut],
        input: &[f64],
        labels: &[usize],
        cfg: &ExactConfig,
        moments: &mut Moments,
    ) -> std::result::Result<StepStats, usize> {
        let rule = Rule::Exact(cfg.clone());
        let recs = {
            let views: Vec<LayerParams> = params.iter().map(LayerParamsMut::as_params).collect();
            let wt = self.transpose_all(&views, false);
            self.sample_recs(&views, &wt, input, labels, &rule, &cfg.lr)
        };
        let mut stats = step_stats(&recs, self.layers.len());
        {
            let views: Vec<LayerParams> = params.iter().map(LayerParamsMut::as_params).collect();
            stats.loss += self.hinge_penalty(&views, cfg.sum_hinge);
        }
        moments.step += 1;
        let t = moments.step as i32;
        let (b1, b2, eps) = (cfg.beta1, cfg.beta2, cfg.eps);
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let inv_b = 1.0 / labels.len() as f64;
        for (si, &l) in self.spiking.iter().enumerate() {
            let lr = cfg.lr[si];
            let Some((out, rows)) = self.layers[l].weight_dims() else {
                continue;
            };
            if lr == 0.0 {
                continue;
            }
            let wd = cfg.weight_decay;
            let p = &mut params[l];
            let sums = self.conv_sums(l, &recs, input);
            let update = |o: usize, w: &mut [f64], acc: &mut Vec<f64>, touched: &mut Vec<usize>| {
                acc.resize(rows, 0.0);
                self.row_sums(sums.as_deref(), l, o, &recs, input, acc, touched);
                let h = self.hinge_grad(l, w, cfg.sum_hinge);
                for (a, &wi) in acc.iter_mut().zip(w.iter()) {
                    *a = -*a * inv_b + wd * wi + h;
                }
            };
            match cfg.optimizer {
                Optimizer::Sgd => p.weight.par_chunks_mut(rows).enumerate().for_each_init(
                    || (Vec::new(), Vec::new()),
                    |(acc, touched), (o, w)| {
                        update(o, w, acc, touched);
                        for (wi, a) in w.iter_mut().zip(acc.iter_mut()) {
                            *wi -= lr * *a;
                            *a = 0.0;
                        }
                    },
                ),
                Optimizer::Adam => {
                    let (m, v) = (&mut *moments.m[l], &mut *moments.v[l]);
                    p.weight
                        .par_chunks_mut(rows)
                        .zip(m.par_chunks_mut(rows))
                        .zip(v.par_chunks_mut(rows))
                        .enumerate()
                        .for_each_init(
                            || (Vec::new(), Vec::new()),
                            |(acc, touched), (o, ((w, m), v))| {
                                update(o, w, acc, touched);
                                for (((wi, a), mi), vi) in
                                    w.iter_mut().zip(acc.iter_mut()).zip(m).zip(v)
                                {
                                    let g = *a;
                                    *a = 0.0;
                                    *mi = b1 * *mi + (1.0 - b1) * g;
                                    *vi = b2 * *vi + (1.0 - b2) * g * g;
                                    *wi -= lr * (*mi / bc1) / ((*vi / bc2).sqrt() + eps);
                                }
                            },
                        );
                }
            }
            // A diverging step is undone by the caller, from the weights it saved.
            if !p.weight.par_iter().all(|w| w.is_finite()) {
                return Err(l);
            }
            if self.layers[l].is_binary() {
                // Every weight changed: one sequential pass over them.
                crate::bits::pack_all(p.weight, out, rows, p.packed);
            }
        }
        Ok(stats)
    }

    /// `λ Σ_j max(0, θ − Σ_i w̃_ji)` over the neurons (conv: channels) of every
    /// spiking layer: a neuron whose weights sum below θ cannot fire even when
    /// all its inputs do (contract §10, `sum_hinge`).
    fn hinge_penalty(&self, params: &[LayerParams], lam: f64) -> f64 {
        if lam == 0.0 {
            return 0.0;
        }
        let mut total = 0.0;
        for (l, layer) in self.layers.iter().enumerate() {
            let (
                Some((_, rows)),
                Layer::Conv { theta, binary, .. } | Layer::Dense { theta, binary, .. },
            ) = (layer.weight_dims(), layer)
            else {
                continue;
            };
            for row in params[l].weight.chunks(rows) {
                let sum: f64 = row.iter().map(|&w| forward_weight(w, *binary)).sum();
                total += lam * (theta - sum).max(0.0);
            }
        }
        total
    }

    /// The hinge's gradient for every weight of one row of layer `l`.
    fn hinge_grad(&self, l: usize, row: &[f64], lam: f64) -> f64 {
        if lam == 0.0 {
            return 0.0;
        }
        let (Layer::Conv { theta, binary, .. } | Layer::Dense { theta, binary, .. }) =
            &self.layers[l]
        else {
            return 0.0;
        };
        let sum: f64 = row.iter().map(|&w| forward_weight(w, *binary)).sum();
        if sum < *theta {
            -lam
        } else {
            0.0
        }
    }

    fn check_exact(
        &self,
        params: &[LayerParams],
        input: &[f64],
        labels: &[usize],
        batch: usize,
        cfg: &ExactConfig,
    ) -> Result<()> {
        self.check_batch(params, input, labels, batch)?;
        let ns = self.spiking.len();
        if cfg.lr.len() != ns {
            return invalid!(
                "lr has {} values but the network has {ns} spiking layers",
                cfg.lr.len()
            );
        }
        if let Some(x) = cfg.lr.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
            return invalid!("lr values must be finite and >= 0, got {x}");
        }
        for (name, v) in [
            ("tau_soft", cfg.tau_soft),
            ("gamma", cfg.gamma),
            ("eps", cfg.eps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return invalid!("{name} must be finite and > 0, got {v}");
            }
        }
        for (name, v) in [
            ("min_slope", cfg.min_slope),
            ("silent_push", cfg.silent_push),
            ("silent_down", cfg.silent_down),
            ("weight_decay", cfg.weight_decay),
            ("sum_hinge", cfg.sum_hinge),
            ("activity", cfg.activity),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return invalid!("{name} must be finite and >= 0, got {v}");
            }
        }
        for (name, v) in [("beta1", cfg.beta1), ("beta2", cfg.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return invalid!("{name} must lie in [0, 1), got {v}");
            }
        }
        Ok(())
    }

    /// What every training call needs: a Dense output, weights, input and labels.
    fn check_batch(
        &self,
        params: &[LayerParams],
        input: &[f64],
        labels: &[usize],
        batch: usize,
    ) -> Result<()> {
        let last = self.layers.len() - 1;
        let Layer::Dense { n_out, .. } = self.layers[last] else {
            return invalid!(
                "training needs a Dense output layer, but the last layer is {}",
                self.layers[last].name()
            );
        };
        if batch == 0 {
            return invalid!("train_step needs a batch of at least one sample");
        }
        self.check_params(params, true)?;
        self.check_input(input, batch)?;
        if labels.len() != batch {
            return invalid!("got {} labels for a batch of {batch}", labels.len());
        }
        if let Some(i) = labels.iter().position(|&y| y >= n_out) {
            return invalid!(
                "label {} at index {i} is not a class of the {n_out} outputs",
                labels[i]
            );
        }
        Ok(())
    }

    fn check_train(
        &self,
        params: &[LayerParams],
        input: &[f64],
        labels: &[usize],
        batch: usize,
        hyper: &Hyper,
    ) -> Result<()> {
        self.check_batch(params, input, labels, batch)?;
        let ns = self.spiking.len();
        for (name, v) in [("lr", &hyper.lr), ("beta", &hyper.beta)] {
            if v.len() != ns {
                return invalid!(
                    "hyper.{name} has {} values but the network has {ns} spiking layers",
                    v.len()
                );
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return invalid!("hyper.{name} must be finite, got {x}");
            }
        }
        if !(hyper.gamma.is_finite() && hyper.gamma > 0.0) {
            return invalid!("hyper.gamma must be finite and > 0, got {}", hyper.gamma);
        }
        if !hyper.weight_decay.is_finite() {
            return invalid!(
                "hyper.weight_decay must be finite, got {}",
                hyper.weight_decay
            );
        }
        Ok(())
    }
}

/// A matrix that several tasks of one parallel pass write at once, each its own
/// columns (or rows): raw access, with the caller's promise that no two tasks
/// touch the same element.
struct Columns<T> {
    ptr: *mut T,
    len: usize,
    stride: usize,
}

// SAFETY: the tasks sharing it write disjoint elements (see `at` and `row`).
unsafe impl<T: Send> Sync for Columns<T> {}

impl<T> Columns<T> {
    fn new(data: &mut [T], stride: usize) -> Columns<T> {
        Columns {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            stride,
        }
    }

    /// Element `(j, i)` of a row-major matrix with rows of `stride`.
    ///
    /// # Safety
    /// No other task may access this element during the pass.
    #[allow(clippy::mut_from_ref)]
    unsafe fn at(&self, j: usize, i: usize) -> &mut T {
        let k = j * self.stride + i;
        assert!(k < self.len);
        &mut *self.ptr.add(k)
    }

    /// `n` elements from `start`.
    ///
    /// # Safety
    /// No other task may access them during the pass.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, start: usize, n: usize) -> &mut [T] {
        if n == 0 {
            return &mut [];
        }
        assert!(start + n <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(start), n)
    }
}
