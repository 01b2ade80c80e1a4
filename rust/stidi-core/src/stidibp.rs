//! STiDi-BP (contract §5), phase 1: per sample, the forward pass, the output
//! targets, every layer's normalised errors and the displacements to the layers
//! below. The result is, per spiking layer, `g_j = ê_j t_j / θ` (zero where
//! `ê_j = 0`; with `Slope::Exact`, `ê_j / V'_j` in place of `ê_j t_j / θ`); phase 2 (the weight rows) is shared with the exact rule, in
//! [`crate::backprop`], and driven by [`crate::train`].

use rayon::prelude::*;

use crate::backprop::{
    disp_conv, disp_dense, route_pool, slope_conv, slope_dense, softmax, Kern, SampleRec,
};
use crate::engine::{RowWeights, Scratch, SPLIT_MIN_NEURONS};
use crate::network::{Layer, Network};
use crate::spec::{Hyper, Neuron, Slope, Targets};

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
    let mut rec = SampleRec::forward(net, prep, x, scratch, parts);
    (rec.loss, rec.g) = backward_sample(net, weights, x, &rec.times, label, hyper, parts);
    rec
}

/// `V'` floor of `Slope::Exact`, in units of `θ / T` (the exact rule's default).
const SLOPE_FLOOR: f64 = 0.1;

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

/// One sample's output loss and, per spiking layer, `g_j`.
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
    let kern_exact = Kern::new(&net.psp);
    let y_out = &times[times.len() - 1];
    let (loss, mut err) = match hyper.targets {
        Targets::Relative => {
            let target = output_targets(y_out, label, hyper.gamma, tmax);
            let err: Vec<f64> = target
                .iter()
                .zip(y_out)
                .map(|(tt, t)| (tt - t) / tmax)
                .collect();
            (0.5 * err.iter().map(|e| e * e).sum::<f64>(), err)
        }
        Targets::Softmax => {
            let (tau, p) = (hyper.tau_soft, softmax(y_out, hyper.tau_soft));
            let err = p
                .iter()
                .enumerate()
                .map(|(k, &pk)| tau * (pk - if k == label { 1.0 } else { 0.0 }) / tmax)
                .collect();
            (-p[label].ln(), err)
        }
    };
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
        gs[si] = match (hyper.slope, net.neuron) {
            (Slope::Paper, _) => err
                .iter()
                .zip(y)
                .map(|(&e, &tj)| if e == 0.0 { 0.0 } else { e * tj / theta })
                .collect(),
            // Not further into a pin: none earlier at the window start, none later
            // when silent (the exact derivative there is 0).
            (Slope::Exact, Neuron::Ramp) => err
                .iter()
                .zip(y)
                .map(|(&e, &tj)| {
                    if (tj <= 0.0 && e < 0.0) || (tj >= tmax && e > 0.0) {
                        0.0
                    } else {
                        e * tmax
                    }
                })
                .collect(),
            (Slope::Exact, Neuron::Psp) => {
                let w = weights[l];
                let v1 = match &net.layers[l] {
                    Layer::Conv { g, .. } => {
                        slope_conv(&kern_exact, g, xin, y, &err, w, binary, tmax)
                    }
                    _ => slope_dense(&kern_exact, xin, y, &err, w, binary, tmax),
                };
                let floor = SLOPE_FLOOR * theta / tmax;
                err.iter()
                    .zip(y)
                    .zip(&v1)
                    .map(|((&e, &tj), &v)| {
                        if e == 0.0 {
                            0.0
                        } else if tj < tmax {
                            e / v.max(floor)
                        } else {
                            e * tmax / theta
                        }
                    })
                    .collect()
            }
        };
        // Nothing below learns (the first spiking layer, or read-out training with
        // the layers below frozen): no displacement to compute.
        if !hyper.lr[..si].iter().any(|&lr| lr != 0.0) {
            break;
        }
        let g = &gs[si];
        // Where the kernels are evaluated (ramp neurons: the end of the window below).
        let yk_ramp;
        let y: &[f64] = if net.neuron == Neuron::Ramp {
            yk_ramp = vec![tmax; y.len()];
            &yk_ramp
        } else {
            y
        };
        let mut dsum = vec![0.0; xin.len()];
        let w = weights[l];
        match &net.layers[l] {
            Layer::Conv { g: geom, .. } => {
                // One kernel time for every neuron: ε' once per input, not per pair.
                let at_end: Option<Vec<f64>> = (net.neuron == Neuron::Ramp)
                    .then(|| xin.iter().map(|&ti| kern.deps(tmax - ti)).collect());
                let at_end = at_end.as_deref();
                let plane = geom.h * geom.w;
                // Split over input channels: each input's sum keeps its order.
                let per = geom.cin.div_ceil(parts.min(geom.cin).max(1));
                if per < geom.cin && geom.positions() * geom.cout >= SPLIT_MIN_NEURONS {
                    dsum.par_chunks_mut(per * plane)
                        .enumerate()
                        .for_each(|(part, d)| {
                            let c0 = part * per;
                            let cs = c0..c0 + d.len() / plane;
                            disp_conv(&kern, geom, xin, y, g, w, binary, cs, d, at_end);
                        });
                } else {
                    disp_conv(
                        &kern,
                        geom,
                        xin,
                        y,
                        g,
                        w,
                        binary,
                        0..geom.cin,
                        &mut dsum,
                        at_end,
                    );
                }
            }
            _ => disp_dense(&kern, xin, y, g, w, binary, &mut dsum),
        }
        let (beta, scale) = (hyper.beta[si], net.scale[l]);
        err = xin
            .iter()
            .zip(&dsum)
            .map(|(&t, &s)| {
                let d = beta * (scale * s);
                ((t + tmax * d).clamp(0.0, tmax) - t) / tmax
            })
            .collect();
        if let Layer::Dense { skip: Some(k), .. } = net.layers[l] {
            skipped[k] = Some(err.split_off(times[l - 1].len()));
        }
    }
    (loss, gs)
}
