//! Exact, event-driven single-spike (time-to-first-spike) spiking layers and two
//! learning rules: STiDi-BP and exact spike-time gradients.
//!
//! `docs/algorithm.md` in the repository is the mathematical contract; this crate
//! and the NumPy reference (`stidi_rs.reference`) both implement it in `f64`.
//! A spike time equal to `tmax` means "no spike".

mod backprop;
pub mod bits;
mod decide;
mod engine;
mod error;
mod exact;
mod network;
mod psp;
mod ramp;
mod spec;
mod stidibp;
mod threads;
mod train;

#[cfg(test)]
mod tests;

pub use decide::{decide, decide_with_tmax};
pub use engine::sweep_kernels;
pub use error::{Error, Result};
pub use network::{ForwardOut, Network};
pub use psp::Psp;
pub use spec::{
    ConvReduce, Displacement, ExactConfig, Hyper, LayerParams, LayerParamsMut, LayerSpec, Loss,
    Neuron, Optimizer, Rule, Slope, Targets,
};
pub use threads::{max_threads, num_threads, set_num_threads};
pub use train::{Moments, StepStats};
