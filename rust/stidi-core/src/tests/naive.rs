//! The contract written out directly: potentials from the sum formula, spike
//! times by scanning breakpoints, updates by explicit loops over pairs.

use crate::{ConvReduce, Displacement, Hyper, LayerSpec, Psp};

pub(crate) fn potential(ts: &[f64], ws: &[f64], t: f64, psp: &Psp) -> f64 {
    ts.iter().zip(ws).map(|(&ti, &w)| w * psp.eps(t - ti)).sum()
}

/// Breakpoints before `tmax` of the inputs with `t < tmax`, sorted, with 0 and `tmax`.
pub(crate) fn breakpoints(ts: &[f64], psp: &Psp, tmax: f64) -> Vec<f64> {
    let mut b = vec![0.0, tmax];
    for &t in ts.iter().filter(|&&t| t < tmax) {
        b.extend([t, t + psp.tau_rise, t + psp.tau_rise + psp.tau_fall]);
    }
    b.retain(|&x| x <= tmax);
    b.sort_by(f64::total_cmp);
    b.dedup();
    b
}

/// Slope of ε on the right of `s`.
fn slope_right(s: f64, psp: &Psp) -> f64 {
    if s < 0.0 {
        0.0
    } else if s < psp.tau_rise {
        1.0 / psp.tau_rise
    } else if s < psp.tau_rise + psp.tau_fall {
        -1.0 / psp.tau_fall
    } else {
        0.0
    }
}

/// First crossing of θ: V is evaluated directly at every breakpoint, and the
/// crossing solved with the slope (also direct) inside the crossing segment.
///
/// Sums run over the inputs sorted by `(t, w)`, and inputs after a time add
/// exact zeros, so two neurons with the same history up to their crossing get
/// bit-identical times, as in the engine: max-pooling routes exact ties to the
/// first neuron, and a rounding-level split would change the winner.
pub(crate) fn spike_time(ts: &[f64], ws: &[f64], theta: f64, psp: &Psp, tmax: f64) -> f64 {
    let mut pairs: Vec<(f64, f64)> = ts
        .iter()
        .copied()
        .zip(ws.iter().copied())
        .filter(|&(t, _)| t < tmax)
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let (ts, ws): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    let b = breakpoints(&ts, psp, tmax);
    for pair in b.windows(2) {
        let (b0, b1) = (pair[0], pair[1]);
        if potential(&ts, &ws, b1, psp) >= theta {
            let v0 = potential(&ts, &ws, b0, psp);
            // At the midpoint: `b0 - t_i` may round to either side of τ1.
            let mid = 0.5 * (b0 + b1);
            let s: f64 = ts
                .iter()
                .zip(&ws)
                .map(|(&ti, &w)| w * slope_right(mid - ti, psp))
                .sum();
            let t = b0 + (theta - v0) / s;
            return if t < tmax { t.min(b1) } else { tmax };
        }
    }
    tmax
}

fn sign(w: f64) -> f64 {
    if w >= 0.0 {
        1.0
    } else {
        -1.0
    }
}

/// One layer with its input shape.
pub(crate) struct Layer {
    pub spec: LayerSpec,
    pub in_shape: Vec<usize>,
}

/// Each output neuron's `(input index, weight index)` pairs; empty for pooling.
fn fields(l: &Layer) -> Vec<Vec<(usize, usize)>> {
    match l.spec {
        LayerSpec::Dense {
            in_features,
            out_features,
            ..
        } => (0..out_features)
            .map(|j| (0..in_features).map(|i| (i, j * in_features + i)).collect())
            .collect(),
        LayerSpec::Conv2d {
            in_channels,
            out_channels,
            kernel_size: k,
            ..
        } => {
            let (h, w) = (l.in_shape[1], l.in_shape[2]);
            let (ho, wo) = (h - k + 1, w - k + 1);
            let mut f = Vec::new();
            for o in 0..out_channels {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut v = Vec::new();
                        for c in 0..in_channels {
                            for ky in 0..k {
                                for kx in 0..k {
                                    v.push((
                                        (c * h + oy + ky) * w + ox + kx,
                                        ((o * in_channels + c) * k + ky) * k + kx,
                                    ));
                                }
                            }
                        }
                        f.push(v);
                    }
                }
            }
            f
        }
        LayerSpec::MaxPool2d { .. } => Vec::new(),
    }
}

/// Pool windows: input indices of each pooled neuron, row-major.
fn windows(l: &Layer) -> Vec<Vec<usize>> {
    let LayerSpec::MaxPool2d { kernel_size: p } = l.spec else {
        return Vec::new();
    };
    let (c, h, w) = (l.in_shape[0], l.in_shape[1], l.in_shape[2]);
    let mut out = Vec::new();
    for ch in 0..c {
        for py in 0..h / p {
            for px in 0..w / p {
                let mut v = Vec::new();
                for dy in 0..p {
                    for dx in 0..p {
                        v.push((ch * h + py * p + dy) * w + px * p + dx);
                    }
                }
                out.push(v);
            }
        }
    }
    out
}

fn threshold_binary(spec: &LayerSpec) -> (f64, bool) {
    match *spec {
        LayerSpec::Dense {
            threshold, binary, ..
        }
        | LayerSpec::Conv2d {
            threshold, binary, ..
        } => (threshold, binary),
        LayerSpec::MaxPool2d { .. } => (0.0, false),
    }
}

fn fwd_weight(w: f64, binary: bool) -> f64 {
    if binary {
        sign(w)
    } else {
        w
    }
}

/// What layer `l` reads: the layer below's spikes, and a skip's after them.
fn input_of(layers: &[Layer], l: usize, x: &[f64], times: &[Vec<f64>]) -> Vec<f64> {
    let mut inp = if l == 0 {
        x.to_vec()
    } else {
        times[l - 1].clone()
    };
    if let LayerSpec::Dense { skip: Some(k), .. } = layers[l].spec {
        inp.extend_from_slice(&times[k]);
    }
    inp
}

/// Spike times of every layer for one sample.
pub(crate) fn forward(
    layers: &[Layer],
    weights: &[Vec<f64>],
    x: &[f64],
    psp: &Psp,
    tmax: f64,
) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::new();
    for (l, layer) in layers.iter().enumerate() {
        let inp = input_of(layers, l, x, &out);
        let y = if let LayerSpec::MaxPool2d { .. } = layer.spec {
            windows(layer)
                .iter()
                .map(|win| win.iter().map(|&i| inp[i]).fold(f64::INFINITY, f64::min))
                .collect()
        } else {
            let (theta, binary) = threshold_binary(&layer.spec);
            fields(layer)
                .iter()
                .map(|f| {
                    let ts: Vec<f64> = f.iter().map(|&(i, _)| inp[i]).collect();
                    let ws: Vec<f64> = f
                        .iter()
                        .map(|&(_, wi)| fwd_weight(weights[l][wi], binary))
                        .collect();
                    spike_time(&ts, &ws, theta, psp, tmax)
                })
                .collect()
        };
        out.push(y);
    }
    out
}

/// Whether, in the forward pass of `x`, some pooling window's earliest two input
/// spikes (before `tmax`) lie within 1e-9 of each other. Which one wins such a
/// window, and so gets the displacement, then rests on rounding that differs
/// between implementations.
pub(crate) fn pool_near_tie(
    layers: &[Layer],
    weights: &[Vec<f64>],
    x: &[f64],
    psp: &Psp,
    tmax: f64,
) -> bool {
    let times = forward(layers, weights, x, psp, tmax);
    layers.iter().enumerate().any(|(l, layer)| {
        let xin = if l == 0 { x } else { &times[l - 1] };
        windows(layer).iter().any(|win| {
            let mut t: Vec<f64> = win.iter().map(|&i| xin[i]).filter(|&v| v < tmax).collect();
            t.sort_by(f64::total_cmp);
            t.len() > 1 && t[1] - t[0] <= 1e-9
        })
    })
}

/// One training step on real weights, straight from the contract.
pub(crate) fn train_step(
    layers: &[Layer],
    weights: &mut [Vec<f64>],
    inputs: &[Vec<f64>],
    labels: &[usize],
    hyper: &Hyper,
    psp: &Psp,
    tmax: f64,
) {
    let batch = inputs.len() as f64;
    let mut delta: Vec<Vec<f64>> = weights.iter().map(|w| vec![0.0; w.len()]).collect();
    let spiking: Vec<usize> = (0..layers.len())
        .filter(|&l| !matches!(layers[l].spec, LayerSpec::MaxPool2d { .. }))
        .collect();
    for (x, &label) in inputs.iter().zip(labels) {
        let times = forward(layers, weights, x, psp, tmax);
        let y = times.last().unwrap();
        let t_min = y.iter().copied().fold(f64::INFINITY, f64::min);
        let target: Vec<f64> = (0..y.len())
            .map(|k| {
                if t_min >= tmax {
                    if k == label {
                        tmax - hyper.gamma
                    } else {
                        tmax
                    }
                } else if k == label {
                    t_min
                } else if y[k] - t_min < hyper.gamma {
                    (t_min + hyper.gamma).min(tmax)
                } else {
                    y[k]
                }
            })
            .collect();
        let mut e: Vec<f64> = (0..y.len()).map(|k| (target[k] - y[k]) / tmax).collect();
        let mut skipped: Vec<Vec<f64>> = vec![Vec::new(); layers.len()];
        for l in (0..layers.len()).rev() {
            for (v, extra) in e.iter_mut().zip(&skipped[l]) {
                *v += extra;
            }
            let xin = &input_of(layers, l, x, &times);
            let yl = &times[l];
            if let LayerSpec::MaxPool2d { .. } = layers[l].spec {
                let mut below = vec![0.0; xin.len()];
                for (k, win) in windows(&layers[l]).iter().enumerate() {
                    let mut best = win[0];
                    for &i in win {
                        if xin[i] < xin[best] {
                            best = i;
                        }
                    }
                    below[best] = e[k];
                }
                e = below;
                continue;
            }
            let s = spiking.iter().position(|&q| q == l).unwrap();
            let (theta, binary) = threshold_binary(&layers[l].spec);
            if hyper.normalize {
                let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm > 0.0 {
                    e.iter_mut().for_each(|v| *v /= norm);
                }
            }
            let reduce = match (&layers[l].spec, hyper.conv_reduce) {
                (LayerSpec::Conv2d { .. }, ConvReduce::Mean) => {
                    yl.len() as f64 / {
                        let LayerSpec::Conv2d { out_channels, .. } = layers[l].spec else {
                            unreachable!()
                        };
                        out_channels as f64
                    }
                }
                _ => 1.0,
            };
            let mut d = vec![0.0; xin.len()];
            for (j, f) in fields(&layers[l]).iter().enumerate() {
                let tj = yl[j];
                for &(i, wi) in f {
                    let ti = xin[i];
                    if ti < tj {
                        delta[l][wi] +=
                            -hyper.lr[s] * e[j] * (tj / theta) * psp.eps(tj - ti) / tmax / reduce;
                        d[i] += hyper.beta[s]
                            * e[j]
                            * (tj / theta)
                            * fwd_weight(weights[l][wi], binary)
                            * match hyper.displacement {
                                Displacement::Exact => psp.deps(tj - ti),
                                Displacement::Causal => 1.0 / psp.tau_rise,
                            };
                    }
                }
            }
            if s == 0 {
                break;
            }
            e = (0..xin.len())
                .map(|i| ((xin[i] + tmax * d[i]).clamp(0.0, tmax) - xin[i]) / tmax)
                .collect();
            if let LayerSpec::Dense { skip: Some(k), .. } = layers[l].spec {
                skipped[k] = e.split_off(times[l - 1].len());
            }
        }
    }
    for &l in &spiking {
        let s = spiking.iter().position(|&q| q == l).unwrap();
        for (w, dw) in weights[l].iter_mut().zip(&delta[l]) {
            *w += dw / batch - hyper.lr[s] * hyper.weight_decay * *w;
        }
    }
}
