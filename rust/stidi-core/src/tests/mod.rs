//! Hand-computed cases, property tests and a naive (sweep-free) implementation
//! of the contract to compare against.

mod naive;
mod props;
mod unit;

use crate::{bits, LayerParams, LayerParamsMut, LayerSpec, Network};

/// Owned parameters of a network, for tests.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Params {
    pub w: Vec<Vec<f64>>,
    pub p: Vec<Vec<u64>>,
}

impl Params {
    /// `w[l]` must have `weight_len(l)` values; packed signs are derived.
    pub fn new(net: &Network, w: Vec<Vec<f64>>) -> Params {
        let p = net
            .layers()
            .iter()
            .zip(&w)
            .map(|(spec, w)| match *spec {
                LayerSpec::Dense {
                    in_features,
                    out_features,
                    binary: true,
                    ..
                } => bits::pack_signs(w, out_features, in_features),
                LayerSpec::Conv2d {
                    in_channels,
                    out_channels,
                    kernel_size: k,
                    binary: true,
                    ..
                } => bits::pack_signs(w, out_channels, in_channels * k * k),
                _ => Vec::new(),
            })
            .collect();
        Params { w, p }
    }

    pub fn views(&self) -> Vec<LayerParams<'_>> {
        self.w
            .iter()
            .zip(&self.p)
            .map(|(w, p)| LayerParams {
                weight: w,
                packed: p,
            })
            .collect()
    }

    pub fn views_mut(&mut self) -> Vec<LayerParamsMut<'_>> {
        self.w
            .iter_mut()
            .zip(self.p.iter_mut())
            .map(|(w, p)| LayerParamsMut {
                weight: w,
                packed: p,
            })
            .collect()
    }
}

pub(crate) fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}
