//! STiDi-BP for one sample (contract §5): output targets, per-layer errors,
//! weight-update accumulation and the displacement to the layer below.

use std::ops::Range;

use crate::bits::sign;
use crate::decide::decide_with_tmax;
use crate::engine::{ConvGeom, PoolGeom, RowWeights};
use crate::network::{Layer, Network};
use crate::psp::Psp;
use crate::spec::Hyper;

/// What one task returns for its consecutive samples.
pub(crate) struct ChunkOut {
    /// Per spiking layer: Σ over the chunk's samples of Σ ê_j (t_j/θ) ε(t_j − t_i).
    pub acc: Vec<Vec<f64>>,
    pub predictions: Vec<usize>,
    pub cases: Vec<u8>,
    pub losses: Vec<f64>,
    /// Per sample, per layer: fraction of neurons that fire.
    pub fired: Vec<Vec<f64>>,
}

pub(crate) fn run_chunk(
    net: &Network,
    prep: &[Option<RowWeights>],
    weights: &[&[f64]],
    input: &[f64],
    labels: &[usize],
    samples: Range<usize>,
    hyper: &Hyper,
) -> ChunkOut {
    let n_in = net.in_size;
    let mut out = ChunkOut {
        acc: net
            .spiking
            .iter()
            .map(|&l| vec![0.0; net.weight_len(l)])
            .collect(),
        predictions: Vec::with_capacity(samples.len()),
        cases: Vec::with_capacity(samples.len()),
        losses: Vec::with_capacity(samples.len()),
        fired: Vec::with_capacity(samples.len()),
    };
    let mut events = Vec::new();
    for b in samples {
        let x = &input[b * n_in..(b + 1) * n_in];
        let times = net.forward_sample(prep, x, &mut events);
        let v_end = net.v_end(prep, x, &times);
        let y = &times[times.len() - 1];
        let (pred, case) = decide_with_tmax(y, &v_end, net.tmax);
        out.predictions.push(pred);
        out.cases.push(case);
        out.fired.push(
            times
                .iter()
                .map(|t| t.iter().filter(|&&t| t < net.tmax).count() as f64 / t.len() as f64)
                .collect(),
        );
        let loss = backward_sample(net, weights, x, &times, labels[b], hyper, &mut out.acc);
        out.losses.push(loss);
    }
    out
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

/// Accumulates one sample's updates into `acc` and returns its output loss.
fn backward_sample(
    net: &Network,
    weights: &[&[f64]],
    x: &[f64],
    times: &[Vec<f64>],
    label: usize,
    hyper: &Hyper,
    acc: &mut [Vec<f64>],
) -> f64 {
    let tmax = net.tmax;
    let y_out = &times[times.len() - 1];
    let target = output_targets(y_out, label, hyper.gamma, tmax);
    let mut err: Vec<f64> = target
        .iter()
        .zip(y_out)
        .map(|(tt, t)| (tt - t) / tmax)
        .collect();
    let loss = 0.5 * err.iter().map(|e| e * e).sum::<f64>();
    let mut si = net.spiking.len();
    for l in (0..net.layers.len()).rev() {
        let xin = if l == 0 { x } else { &times[l - 1] };
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
        // The first spiking layer has nothing below it to displace.
        let disp = si > 0;
        let mut dsum = if disp {
            vec![0.0; xin.len()]
        } else {
            Vec::new()
        };
        let mut k = Kernel {
            psp: &net.psp,
            theta,
            binary,
            disp,
            x: xin,
            w: weights[l],
            acc: &mut acc[si],
            dsum: &mut dsum,
        };
        match &net.layers[l] {
            Layer::Conv { g, .. } => k.conv(g, y, &err),
            _ => k.dense(y, &err, tmax),
        }
        if !disp {
            break;
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
    }
    loss
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

/// The backward of one spiking layer for one sample.
struct Kernel<'a> {
    psp: &'a Psp,
    theta: f64,
    binary: bool,
    /// Whether to accumulate the displacement sums `dsum` for the layer below.
    disp: bool,
    /// Input spike times.
    x: &'a [f64],
    /// Real weights (PyTorch layout).
    w: &'a [f64],
    acc: &'a mut [f64],
    dsum: &'a mut [f64],
}

impl Kernel<'_> {
    /// Output neuron `j` (time `tj`, factor `gj = ê_j t_j / θ`) against the
    /// `(input index, weight index)` pairs of its receptive field.
    #[inline]
    fn neuron(&mut self, tj: f64, gj: f64, field: impl Iterator<Item = (usize, usize)>) {
        for (i, widx) in field {
            let ti = self.x[i];
            if ti < tj {
                let s = tj - ti;
                self.acc[widx] += gj * self.psp.eps(s);
                if self.disp {
                    let w = self.w[widx];
                    let wf = if self.binary { sign(w) } else { w };
                    self.dsum[i] += gj * wf * self.psp.deps(s);
                }
            }
        }
    }

    fn dense(&mut self, y: &[f64], err: &[f64], tmax: f64) {
        let n_in = self.x.len();
        // Inputs that never spiked pair with nothing; latency codes are sparse.
        let active: Vec<usize> = (0..n_in).filter(|&i| self.x[i] < tmax).collect();
        for (j, (&e, &tj)) in err.iter().zip(y).enumerate() {
            if e == 0.0 {
                continue;
            }
            let base = j * n_in;
            self.neuron(
                tj,
                e * tj / self.theta,
                active.iter().map(|&i| (i, base + i)),
            );
        }
    }

    fn conv(&mut self, g: &ConvGeom, y: &[f64], err: &[f64]) {
        let (k, rows, positions) = (g.k, g.rows(), g.positions());
        for (j, (&e, &tj)) in err.iter().zip(y).enumerate() {
            if e == 0.0 {
                continue;
            }
            let (o, p) = (j / positions, j % positions);
            let (oy, ox) = (p / g.wo, p % g.wo);
            let field = (0..rows).map(|r| {
                let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                (c * g.h * g.w + (oy + ky) * g.w + ox + kx, o * rows + r)
            });
            self.neuron(tj, e * tj / self.theta, field);
        }
    }
}
