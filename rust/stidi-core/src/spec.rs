/// One layer of a [`crate::Network`], in PyTorch's conventions.
#[derive(Clone, Debug)]
pub enum LayerSpec {
    /// Stride 1, no padding; weight `(out_channels, in_channels, k, k)`.
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        threshold: f64,
        binary: bool,
    },
    /// Window = stride = `kernel_size`, remainder dropped; earliest spike wins.
    MaxPool2d { kernel_size: usize },
    /// Weight `(out_features, in_features)`. With `skip: Some(k)` the layer also
    /// reads the spikes of layer `k` (an earlier layer than its input), appended
    /// after its input's: `in_features` counts both.
    Dense {
        in_features: usize,
        out_features: usize,
        threshold: f64,
        binary: bool,
        skip: Option<usize>,
    },
}

/// The neuron model of every spiking layer (contract §3 and §3a).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neuron {
    /// One window `[0, tmax)` for all layers; `V` is a sum of PSPs (§3).
    Psp,
    /// Every spiking layer has its own window; a neuron integrates its inputs'
    /// linear PSPs during the window below and fires in its own on a ramp of
    /// slope `1/tmax` (§3a).
    Ramp,
}

impl std::str::FromStr for Neuron {
    type Err = crate::Error;
    fn from_str(name: &str) -> crate::Result<Self> {
        match name {
            "psp" => Ok(Neuron::Psp),
            "ramp" => Ok(Neuron::Ramp),
            other => crate::error::invalid!("neuron must be 'psp' or 'ramp', got {other:?}"),
        }
    }
}

/// How a Conv2d reduces the per-position updates of a shared weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConvReduce {
    Sum,
    Mean,
}

/// The PSP slope used in the spike time displacement (contract §5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Displacement {
    /// `ε'(t_j − t_i)`: the exact slope, zero on a plateau or after the PSP ends.
    Exact,
    /// `1/τ1` for every earlier input (`t_i < t_j`), as S4NN's backward pass.
    Causal,
}

// The names the Python API uses for these options; parsing lives here so that every
// front end reports a bad name the same way.
impl std::str::FromStr for ConvReduce {
    type Err = crate::Error;
    fn from_str(name: &str) -> crate::Result<Self> {
        match name {
            "sum" => Ok(ConvReduce::Sum),
            "mean" => Ok(ConvReduce::Mean),
            other => crate::error::invalid!("conv_reduce must be 'sum' or 'mean', got {other:?}"),
        }
    }
}

impl std::str::FromStr for Displacement {
    type Err = crate::Error;
    fn from_str(name: &str) -> crate::Result<Self> {
        match name {
            "exact" => Ok(Displacement::Exact),
            "causal" => Ok(Displacement::Causal),
            other => {
                crate::error::invalid!("displacement must be 'exact' or 'causal', got {other:?}")
            }
        }
    }
}

/// What STiDi-BP puts for `−dt_j/dV_j` in its update and displacement (contract §5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Slope {
    /// The paper's linear approximation `t_j / θ`.
    Paper,
    /// `1 / V'_j(t_j)`, floored at `0.1 θ / T`; `T/θ` for a silent neuron. A ramp
    /// neuron's is `T` wherever it fires, pinned and silent ones included.
    Exact,
}

impl std::str::FromStr for Slope {
    type Err = crate::Error;
    fn from_str(name: &str) -> crate::Result<Self> {
        match name {
            "paper" => Ok(Slope::Paper),
            "exact" => Ok(Slope::Exact),
            other => crate::error::invalid!("slope must be 'paper' or 'exact', got {other:?}"),
        }
    }
}

/// Where STiDi-BP's output errors come from (contract §5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Targets {
    /// The paper's relative targets: `e_k = (T_k − t_k)/T`.
    Relative,
    /// `e_k = τ_soft (p_k − [k = label]) / T` with `p = softmax(−t/τ_soft)`: the
    /// displacement that lowers the cross-entropy of the exact rule's loss.
    Softmax,
}

impl std::str::FromStr for Targets {
    type Err = crate::Error;
    fn from_str(name: &str) -> crate::Result<Self> {
        match name {
            "relative" => Ok(Targets::Relative),
            "softmax" => Ok(Targets::Softmax),
            other => {
                crate::error::invalid!("targets must be 'relative' or 'softmax', got {other:?}")
            }
        }
    }
}

/// Hyper-parameters of one STiDi-BP step (contract §5).
#[derive(Clone, Debug)]
pub struct Hyper {
    /// One per spiking (Conv2d/Dense) layer, in order.
    pub lr: Vec<f64>,
    /// Target margin γ of the output layer.
    pub gamma: f64,
    /// Displacement scale, one per spiking layer (the first one's is unused).
    pub beta: Vec<f64>,
    pub normalize: bool,
    pub weight_decay: f64,
    pub conv_reduce: ConvReduce,
    pub displacement: Displacement,
    pub slope: Slope,
    pub targets: Targets,
    /// Softmax temperature of `Targets::Softmax`, in time units.
    pub tau_soft: f64,
}

/// The loss of the exact-gradient rule (contract §10).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// `−log softmax(−t/τ_soft)[label]`.
    CrossEntropy,
    /// `½ Σ ((target − t)/T)²` with STiDi-BP's relative targets.
    Stidi,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Sgd,
    Adam,
}

impl std::str::FromStr for Loss {
    type Err = crate::Error;
    fn from_str(name: &str) -> crate::Result<Self> {
        match name {
            "cross_entropy" => Ok(Loss::CrossEntropy),
            "stidi" => Ok(Loss::Stidi),
            other => {
                crate::error::invalid!("loss must be 'cross_entropy' or 'stidi', got {other:?}")
            }
        }
    }
}

impl std::str::FromStr for Optimizer {
    type Err = crate::Error;
    fn from_str(name: &str) -> crate::Result<Self> {
        match name {
            "sgd" => Ok(Optimizer::Sgd),
            "adam" => Ok(Optimizer::Adam),
            other => crate::error::invalid!("optimizer must be 'sgd' or 'adam', got {other:?}"),
        }
    }
}

/// Settings of the exact-gradient rule (contract §10).
#[derive(Clone, Debug)]
pub struct ExactConfig {
    /// One per spiking layer; 0 freezes a layer.
    pub lr: Vec<f64>,
    pub loss: Loss,
    pub optimizer: Optimizer,
    /// Softmax temperature (time units) of [`Loss::CrossEntropy`].
    pub tau_soft: f64,
    /// Target margin of [`Loss::Stidi`].
    pub gamma: f64,
    /// Floor of `V'` at a spike, in units of `θ / tmax`.
    pub min_slope: f64,
    /// Gradient factor of a silent neuron whose loss wants it earlier.
    pub silent_push: f64,
    /// Factor of that push sent to the layer below, as if the neuron fired at
    /// `tmax` (0 = off).
    pub silent_down: f64,
    /// L2 decay added to the gradient.
    pub weight_decay: f64,
    /// Weight of the hinge `max(0, θ − Σ_i w̃_ji)` per neuron (0 = off).
    pub sum_hinge: f64,
    /// Weight of the mean hidden spike time `t/T` in the loss (0 = off).
    pub activity: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// A learning rule and its settings.
#[derive(Clone, Debug)]
pub enum Rule {
    StidiBp(Hyper),
    Exact(ExactConfig),
}

/// Read-only parameters of one layer.
///
/// MaxPool2d: both empty. Real layers: `weight` in PyTorch layout, `packed` empty.
/// Binary layers: `packed` holds the sign bits (see [`crate::bits`]); `weight` holds
/// the real (latent) weights, which [`crate::Network::forward`] does not read and
/// therefore also accepts empty.
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerParams<'a> {
    pub weight: &'a [f64],
    pub packed: &'a [u64],
}

impl<'a> LayerParams<'a> {
    pub fn pool() -> Self {
        LayerParams::default()
    }

    pub fn real(weight: &'a [f64]) -> Self {
        LayerParams {
            weight,
            packed: &[],
        }
    }

    pub fn binary(weight: &'a [f64], packed: &'a [u64]) -> Self {
        LayerParams { weight, packed }
    }
}

/// Mutable parameters of one layer, as [`LayerParams`]; binary layers need both.
#[derive(Debug, Default)]
pub struct LayerParamsMut<'a> {
    pub weight: &'a mut [f64],
    pub packed: &'a mut [u64],
}

impl<'a> LayerParamsMut<'a> {
    pub fn pool() -> Self {
        LayerParamsMut::default()
    }

    pub fn real(weight: &'a mut [f64]) -> Self {
        LayerParamsMut {
            weight,
            packed: &mut [],
        }
    }

    pub fn binary(weight: &'a mut [f64], packed: &'a mut [u64]) -> Self {
        LayerParamsMut { weight, packed }
    }

    /// A read-only view.
    pub fn as_params(&self) -> LayerParams<'_> {
        LayerParams {
            weight: self.weight,
            packed: self.packed,
        }
    }
}
