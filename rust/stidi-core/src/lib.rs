//! Exact, event-driven single-spike (time-to-first-spike) spiking layers and the
//! STiDi-BP learning rule.
//!
//! `docs/algorithm.md` in the repository is the mathematical contract; this crate
//! and the NumPy reference (`stidi_rs.reference`) both implement it in `f64`.
//! A spike time equal to `tmax` means "no spike".

pub mod bits;
mod decide;
mod engine;
mod error;
mod learn;
mod network;
mod psp;
mod spec;
mod threads;

#[cfg(test)]
mod tests;

pub use decide::{decide, decide_with_tmax};
pub use engine::sweep_kernels;
pub use error::{Error, Result};
pub use network::{ForwardOut, Network, StepStats};
pub use psp::Psp;
pub use spec::{ConvReduce, Displacement, Hyper, LayerParams, LayerParamsMut, LayerSpec};
pub use threads::{num_threads, set_num_threads};
