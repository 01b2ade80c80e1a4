//! Exact spike-time gradients (contract §10), phase 1: per sample, the forward
//! pass, the loss of the output spike times, and per spiking layer the factor
//! `a_j = (dL/dt_j) / V'_j(t_j)`, chained down with
//! `dL/dt_i = Σ_j a_j w̃_ji ε'(t_j − t_i)`. Phase 2, the batch sum of
//! `a_j ε(t_j − t_i)` (= −dL/dw_ji), is shared with STiDi-BP.

use crate::backprop::{
    disp_conv, disp_dense, route_pool, slope_conv, slope_dense, softmax, Kern, SampleRec,
};
use crate::engine::{RowWeights, Scratch};
use crate::network::{Layer, Network};
use crate::spec::{ExactConfig, Loss, Neuron};
use crate::stidibp::output_targets;

#[allow(clippy::too_many_arguments)]
pub(crate) fn sample_pass(
    net: &Network,
    prep: &[Option<RowWeights>],
    weights: &[&[f64]],
    x: &[f64],
    label: usize,
    cfg: &ExactConfig,
    lr: &[f64],
    scratch: &mut Scratch,
    parts: usize,
) -> SampleRec {
    let mut rec = SampleRec::forward(net, prep, x, scratch, parts);
    (rec.loss, rec.g) = backward_sample(net, weights, x, &rec.times, label, cfg, lr);
    rec
}

/// The loss of one sample's output spike times and `dL/dt` (contract §10).
pub(crate) fn output_loss(
    y: &[f64],
    label: usize,
    cfg: &ExactConfig,
    tmax: f64,
) -> (f64, Vec<f64>) {
    match cfg.loss {
        Loss::CrossEntropy => {
            let p = softmax(y, cfg.tau_soft);
            let dt = p
                .iter()
                .enumerate()
                .map(|(k, &pk)| -(pk - if k == label { 1.0 } else { 0.0 }) / cfg.tau_soft)
                .collect();
            (-p[label].ln(), dt)
        }
        Loss::Stidi => {
            let target = output_targets(y, label, cfg.gamma, tmax);
            let r: Vec<f64> = target
                .iter()
                .zip(y)
                .map(|(tt, t)| (tt - t) / tmax)
                .collect();
            let loss = 0.5 * r.iter().map(|e| e * e).sum::<f64>();
            let mut dt: Vec<f64> = r.iter().map(|e| -e / tmax).collect();
            // The targets of the label and of rivals within γ follow the earliest spike.
            let first = (0..y.len()).fold(0, |a, k| if y[k] < y[a] { k } else { a });
            let t_min = y[first];
            if t_min < tmax {
                let moving: f64 = (0..y.len())
                    .filter(|&k| {
                        k == label || (y[k] - t_min < cfg.gamma && t_min + cfg.gamma < tmax)
                    })
                    .map(|k| r[k])
                    .sum();
                dt[first] += moving / tmax;
            }
            (loss, dt)
        }
    }
}

/// One sample's loss and, per spiking layer, `a_j`.
fn backward_sample(
    net: &Network,
    weights: &[&[f64]],
    x: &[f64],
    times: &[Vec<f64>],
    label: usize,
    cfg: &ExactConfig,
    lr: &[f64],
) -> (f64, Vec<Vec<f64>>) {
    let tmax = net.tmax;
    let ramp = net.neuron == Neuron::Ramp;
    let kern = Kern::new(&net.psp);
    let (mut loss, mut delta) = output_loss(&times[times.len() - 1], label, cfg, tmax);
    // The activity term: the mean spike time (in units of T) of every hidden
    // spiking layer, silent neurons counted at T.
    let last = net.layers.len() - 1;
    if cfg.activity > 0.0 {
        for (l, t) in times[..last].iter().enumerate() {
            if !matches!(net.layers[l], Layer::Pool { .. }) {
                loss += cfg.activity * t.iter().sum::<f64>() / (tmax * t.len() as f64);
            }
        }
    }
    let mut gs = vec![Vec::new(); net.spiking.len()];
    let mut si = net.spiking.len();
    let mut skipped: Vec<Option<Vec<f64>>> = vec![None; net.layers.len()];
    let mut cat = Vec::new();
    for l in (0..net.layers.len()).rev() {
        if let Some(extra) = skipped[l].take() {
            for (d, e) in delta.iter_mut().zip(extra) {
                *d += e;
            }
        }
        let xin = net.input_of(l, x, times, &mut cat);
        let y = &times[l];
        // Where the kernels are evaluated (ramp neurons: the end of the window below).
        let yk_ramp;
        let yk: &[f64] = if ramp {
            yk_ramp = vec![tmax; y.len()];
            &yk_ramp
        } else {
            y
        };
        let w = weights[l];
        if cfg.activity > 0.0 && l < last && !matches!(net.layers[l], Layer::Pool { .. }) {
            let c = cfg.activity / (tmax * y.len() as f64);
            for d in delta.iter_mut() {
                *d += c;
            }
        }
        let (theta, binary, slope) = match &net.layers[l] {
            Layer::Pool { g } => {
                delta = route_pool(&delta, xin, g);
                continue;
            }
            // A ramp neuron's slope is 1/tmax whatever its weights.
            Layer::Conv { theta, binary, .. } | Layer::Dense { theta, binary, .. } if ramp => {
                (*theta, *binary, Vec::new())
            }
            Layer::Conv { g, theta, binary } => (
                *theta,
                *binary,
                slope_conv(&kern, g, xin, y, &delta, w, *binary, tmax),
            ),
            Layer::Dense { theta, binary, .. } => (
                *theta,
                *binary,
                slope_dense(&kern, xin, y, &delta, w, *binary, tmax),
            ),
        };
        si -= 1;
        let a: Vec<f64> = if ramp {
            // Pinned at the window start (t = 0) the time does not move with the
            // weights; silent_push acts on it when the loss wants it later, as on
            // a silent neuron that the loss wants earlier.
            delta
                .iter()
                .zip(y)
                .map(|(&d, &tj)| {
                    if tj > 0.0 && tj < tmax {
                        d * tmax
                    } else if (tj >= tmax && d > 0.0) || (tj <= 0.0 && d < 0.0) {
                        cfg.silent_push * d * tmax
                    } else {
                        0.0
                    }
                })
                .collect()
        } else {
            let floor = cfg.min_slope * theta / tmax;
            delta
                .iter()
                .zip(y)
                .zip(&slope)
                .map(|((&d, &tj), &s)| {
                    if d == 0.0 {
                        0.0 // its slope was not computed (and may be 0 with no floor)
                    } else if tj < tmax {
                        d / s.max(floor)
                    } else if d > 0.0 {
                        cfg.silent_push * d * tmax / theta
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        gs[si] = a;
        if !lr[..si].iter().any(|&lr| lr != 0.0) {
            break;
        }
        // A spike that did not happen has no input times to move, unless
        // `silent_down` sends its push down as if it fired at tmax (its time).
        // A binary layer's `±scale` weights scale what its inputs hear.
        let scale = net.scale[l];
        let a_prop: Vec<f64> = gs[si]
            .iter()
            .zip(y)
            .map(|(&a, &tj)| {
                if tj < tmax && !(ramp && tj <= 0.0) {
                    scale * a
                } else {
                    scale * (cfg.silent_down * a)
                }
            })
            .collect();
        let mut dsum = vec![0.0; xin.len()];
        match &net.layers[l] {
            Layer::Conv { g: geom, .. } => disp_conv(
                &kern,
                geom,
                xin,
                yk,
                &a_prop,
                w,
                binary,
                0..geom.cin,
                &mut dsum,
                None,
            ),
            _ => disp_dense(&kern, xin, yk, &a_prop, w, binary, &mut dsum),
        }
        delta = dsum;
        if let Layer::Dense { skip: Some(k), .. } = net.layers[l] {
            skipped[k] = Some(delta.split_off(times[l - 1].len()));
        }
    }
    (loss, gs)
}
