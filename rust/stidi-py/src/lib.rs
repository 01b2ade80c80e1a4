//! Thin PyO3 bindings over `stidi-core`: NumPy views in, the GIL released while
//! the engine runs, core errors mapped to `ValueError` in one place.

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyReadwriteArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use stidi_core::{
    ExactConfig, Hyper, LayerParams, LayerParamsMut, LayerSpec, Moments, Network, Neuron, Psp, Rule,
};

// A ValueError, so that callers catching bad input catch it too.
pyo3::create_exception!(
    _core,
    DivergenceError,
    PyValueError,
    "A training step would have made a weight non-finite; the weights were left as they were."
);

fn value_error(err: stidi_core::Error) -> PyErr {
    match err {
        stidi_core::Error::Diverged(msg) => DivergenceError::new_err(msg),
        other => PyValueError::new_err(other.to_string()),
    }
}

fn contiguous<'a, T>(slice: Option<&'a [T]>, what: &str) -> PyResult<&'a [T]> {
    slice.ok_or_else(|| PyValueError::new_err(format!("{what} must be a C-contiguous array")))
}

fn layer_spec(d: &Bound<'_, PyDict>) -> PyResult<LayerSpec> {
    let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(key)?
            .ok_or_else(|| PyValueError::new_err(format!("layer spec is missing {key:?}")))
    };
    let kind: String = get("kind")?.extract()?;
    Ok(match kind.as_str() {
        "conv2d" => LayerSpec::Conv2d {
            in_channels: get("in_channels")?.extract()?,
            out_channels: get("out_channels")?.extract()?,
            kernel_size: get("kernel_size")?.extract()?,
            threshold: get("threshold")?.extract()?,
            binary: get("binary")?.extract()?,
        },
        "maxpool2d" => LayerSpec::MaxPool2d {
            kernel_size: get("kernel_size")?.extract()?,
        },
        "dense" => LayerSpec::Dense {
            in_features: get("in_features")?.extract()?,
            out_features: get("out_features")?.extract()?,
            threshold: get("threshold")?.extract()?,
            binary: get("binary")?.extract()?,
            skip: match d.get_item("skip")? {
                Some(k) if !k.is_none() => Some(k.extract()?),
                _ => None,
            },
        },
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown layer kind {other:?}"
            )))
        }
    })
}

/// An architecture compiled for the Rust engine. It holds no weights: those stay
/// in NumPy arrays owned by the Python layers and are passed (zero-copy) per call.
#[pyclass(module = "stidi_rs._core", frozen)]
struct Engine {
    net: Network,
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (layers, input_shape, tau_rise, tau_fall, tmax, neuron = "psp"))]
    fn new(
        layers: Vec<Bound<'_, PyDict>>,
        input_shape: Vec<usize>,
        tau_rise: f64,
        tau_fall: f64,
        tmax: f64,
        neuron: &str,
    ) -> PyResult<Self> {
        let specs = layers
            .iter()
            .map(layer_spec)
            .collect::<PyResult<Vec<_>>>()?;
        // A binary layer's `scale` (its forward weights are ±scale), 1 if absent.
        let scales = layers
            .iter()
            .map(|d| match d.get_item("scale")? {
                Some(s) if !s.is_none() => s.extract::<f64>(),
                _ => Ok(1.0),
            })
            .collect::<PyResult<Vec<_>>>()?;
        let psp = Psp::new(tau_rise, tau_fall).map_err(value_error)?;
        let neuron: Neuron = neuron.parse().map_err(value_error)?;
        let mut net = Network::new(specs, &input_shape, psp, tmax)
            .and_then(|net| net.with_neuron(neuron))
            .map_err(value_error)?;
        for (l, &s) in scales.iter().enumerate() {
            if s != 1.0 {
                net = net.with_scale(l, s).map_err(value_error)?;
            }
        }
        Ok(Engine { net })
    }

    /// Spike times of every layer as `(batch, size)` arrays, `V(tmax)` of the
    /// last layer as `(batch, n_out)` (empty if it is not Dense), and the
    /// batch's synaptic events (see `stidi_core::ForwardOut::events`).
    #[allow(clippy::type_complexity)]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        weights: Vec<Option<PyReadonlyArrayDyn<'py, f64>>>,
        packed: Vec<Option<PyReadonlyArrayDyn<'py, u64>>>,
        times: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<(
        Vec<Bound<'py, PyArray2<f64>>>,
        Bound<'py, PyArray2<f64>>,
        u64,
    )> {
        let batch = times.shape()[0];
        let input = contiguous(times.as_slice().ok(), "times")?;
        let params = read_params(&weights, &packed)?;
        let out = py
            .detach(|| self.net.forward(&params, input, batch))
            .map_err(value_error)?;
        let layers = out
            .times
            .into_iter()
            .map(|t| to_2d(py, t, batch))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((layers, to_2d(py, out.v_end, batch)?, out.events))
    }

    /// Predicted class and decision case (0 unique first spike, 1 tie,
    /// 2 no output spike) per row of `times`, as int64 arrays.
    #[allow(clippy::type_complexity)]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        weights: Vec<Option<PyReadonlyArrayDyn<'py, f64>>>,
        packed: Vec<Option<PyReadonlyArrayDyn<'py, u64>>>,
        times: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>)> {
        let batch = times.shape()[0];
        let input = contiguous(times.as_slice().ok(), "times")?;
        let params = read_params(&weights, &packed)?;
        let (pred, cases) = py
            .detach(|| self.net.predict(&params, input, batch))
            .map_err(value_error)?;
        let pred: Vec<i64> = pred.into_iter().map(|p| p as i64).collect();
        let cases: Vec<i64> = cases.into_iter().map(i64::from).collect();
        Ok((pred.into_pyarray(py), cases.into_pyarray(py)))
    }

    /// Consecutive steps of `rule` over the rows of `times` in order, `batch_size`
    /// samples per step (the last step may be smaller), updating `weights` (and the
    /// packed signs of binary layers) in place. One step is `batch_size = n`.
    /// `rule` holds the rule's `name` and its settings by name; `moments` is
    /// `(m, v)`, Adam's state per layer (updated in place), for the exact rule
    /// with Adam. Returns per-step arrays: `predictions` and `cases` of shape
    /// `(n,)` (per sample), `loss` of shape `(steps,)`, `fired` of shape
    /// `(steps, layers)`, `events` of shape `(steps,)` (synaptic events of each
    /// step's forward passes), and `adam_step` (Adam's step count after the call).
    #[allow(clippy::too_many_arguments)] // py, the arrays, the batch size and the rule
    #[pyo3(signature = (weights, packed, times, labels, batch_size, rule, moments=None))]
    fn train_steps<'py>(
        &self,
        py: Python<'py>,
        mut weights: Vec<Option<PyReadwriteArrayDyn<'py, f64>>>,
        mut packed: Vec<Option<PyReadwriteArrayDyn<'py, u64>>>,
        times: PyReadonlyArray2<'py, f64>,
        labels: PyReadonlyArray1<'py, i64>,
        batch_size: usize,
        rule: Bound<'py, PyDict>,
        moments: Option<MomentArrays<'py>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let input = contiguous(times.as_slice().ok(), "times")?;
        let labels = read_labels(&labels)?;
        let rule = read_rule(&rule)?;
        let mut params = write_params(&mut weights, &mut packed)?;
        let (mut m_arrays, mut v_arrays) = moments.unwrap_or_default();
        let mut moments = Moments {
            m: write_slices(&mut m_arrays, "moments")?,
            v: write_slices(&mut v_arrays, "moments")?,
            step: rule.adam_step,
        };
        let steps = py
            .detach(|| match &rule.rule {
                Rule::StidiBp(h) => {
                    self.net
                        .train_steps(&mut params, input, &labels, batch_size, h)
                }
                Rule::Exact(c) => {
                    self.net
                        .exact_steps(&mut params, input, &labels, batch_size, c, &mut moments)
                }
            })
            .map_err(value_error)?;
        let n_layers = self.net.layers().len();
        let mut predictions = Vec::with_capacity(labels.len());
        let mut cases = Vec::with_capacity(labels.len());
        let mut loss = Vec::with_capacity(steps.len());
        let mut fired = Vec::with_capacity(steps.len() * n_layers);
        let events: Vec<u64> = steps.iter().map(|s| s.events).collect();
        for s in steps.iter() {
            predictions.extend(s.predictions.iter().map(|&p| p as i64));
            cases.extend_from_slice(&s.cases);
            loss.push(s.loss);
            fired.extend_from_slice(&s.fired);
        }
        let out = PyDict::new(py);
        out.set_item("predictions", predictions.into_pyarray(py))?;
        out.set_item("cases", cases.into_pyarray(py))?;
        out.set_item("loss", loss.into_pyarray(py))?;
        out.set_item("fired", to_2d(py, fired, steps.len())?)?;
        out.set_item("events", events.into_pyarray(py))?;
        out.set_item("adam_step", moments.step)?;
        Ok(out)
    }

    /// `(loss, grads)` of a batch under `rule` without changing the weights: the
    /// batch-mean loss and one flat array per layer (`None` for pooling).
    #[allow(clippy::type_complexity)]
    fn gradients<'py>(
        &self,
        py: Python<'py>,
        weights: Vec<Option<PyReadonlyArrayDyn<'py, f64>>>,
        packed: Vec<Option<PyReadonlyArrayDyn<'py, u64>>>,
        times: PyReadonlyArray2<'py, f64>,
        labels: PyReadonlyArray1<'py, i64>,
        rule: Bound<'py, PyDict>,
    ) -> PyResult<(f64, Vec<Option<Bound<'py, PyArray1<f64>>>>)> {
        let input = contiguous(times.as_slice().ok(), "times")?;
        let labels = read_labels(&labels)?;
        let rule = read_rule(&rule)?;
        let params = read_params(&weights, &packed)?;
        let (loss, grads) = py
            .detach(|| self.net.gradients(&params, input, &labels, &rule.rule))
            .map_err(value_error)?;
        let grads = grads
            .into_iter()
            .zip(&weights)
            .map(|(g, w)| w.as_ref().map(|_| g.into_pyarray(py)))
            .collect();
        Ok((loss, grads))
    }
}

type MomentArrays<'py> = (
    Vec<Option<PyReadwriteArrayDyn<'py, f64>>>,
    Vec<Option<PyReadwriteArrayDyn<'py, f64>>>,
);

fn write_slices<'a>(
    arrays: &'a mut [Option<PyReadwriteArrayDyn<'_, f64>>],
    what: &str,
) -> PyResult<Vec<&'a mut [f64]>> {
    arrays
        .iter_mut()
        .map(|a| match a {
            Some(a) => a.as_slice_mut().map_err(|_| {
                PyValueError::new_err(format!("{what} must be C-contiguous float64 arrays"))
            }),
            None => Ok(&mut [][..]),
        })
        .collect()
}

/// A rule read from its settings by name, and Adam's step count.
struct RuleSettings {
    rule: Rule,
    adam_step: u64,
}

/// The rule named by `d["name"]`, from its settings by name; a key the rule does
/// not have is an error naming it.
fn read_rule(d: &Bound<'_, PyDict>) -> PyResult<RuleSettings> {
    let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
        d.get_item(key)?
            .ok_or_else(|| PyValueError::new_err(format!("rule settings are missing {key:?}")))
    };
    let name: String = get("name")?.extract()?;
    let known: &[&str] = match name.as_str() {
        "stidi-bp" => &[
            "name",
            "lr",
            "gamma",
            "beta",
            "normalize",
            "weight_decay",
            "conv_reduce",
            "displacement",
            "slope",
            "targets",
            "tau_soft",
        ],
        "exact" => &[
            "name",
            "lr",
            "loss",
            "optimizer",
            "tau_soft",
            "gamma",
            "min_slope",
            "silent_push",
            "silent_down",
            "weight_decay",
            "sum_hinge",
            "activity",
            "betas",
            "eps",
            "adam_step",
        ],
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown rule {other:?}: choose 'stidi-bp' or 'exact'"
            )))
        }
    };
    for key in d.keys() {
        let key: String = key.extract()?;
        if !known.contains(&key.as_str()) {
            return Err(PyValueError::new_err(format!(
                "rule {name:?} has no setting {key:?}"
            )));
        }
    }
    let parse = |key: &str| -> PyResult<String> { get(key)?.extract() };
    Ok(if name == "stidi-bp" {
        RuleSettings {
            rule: Rule::StidiBp(Hyper {
                lr: get("lr")?.extract()?,
                gamma: get("gamma")?.extract()?,
                beta: get("beta")?.extract()?,
                normalize: get("normalize")?.extract()?,
                weight_decay: get("weight_decay")?.extract()?,
                conv_reduce: parse("conv_reduce")?.parse().map_err(value_error)?,
                displacement: parse("displacement")?.parse().map_err(value_error)?,
                slope: parse("slope")?.parse().map_err(value_error)?,
                targets: parse("targets")?.parse().map_err(value_error)?,
                tau_soft: get("tau_soft")?.extract()?,
            }),
            adam_step: 0,
        }
    } else {
        let betas: Vec<f64> = get("betas")?.extract()?;
        let [beta1, beta2] = betas[..] else {
            return Err(PyValueError::new_err(format!(
                "betas needs two values, got {}",
                betas.len()
            )));
        };
        RuleSettings {
            rule: Rule::Exact(ExactConfig {
                lr: get("lr")?.extract()?,
                loss: parse("loss")?.parse().map_err(value_error)?,
                optimizer: parse("optimizer")?.parse().map_err(value_error)?,
                tau_soft: get("tau_soft")?.extract()?,
                gamma: get("gamma")?.extract()?,
                min_slope: get("min_slope")?.extract()?,
                silent_push: get("silent_push")?.extract()?,
                silent_down: get("silent_down")?.extract()?,
                weight_decay: get("weight_decay")?.extract()?,
                sum_hinge: get("sum_hinge")?.extract()?,
                activity: get("activity")?.extract()?,
                beta1,
                beta2,
                eps: get("eps")?.extract()?,
            }),
            adam_step: match d.get_item("adam_step")? {
                Some(v) => v.extract()?,
                None => 0,
            },
        }
    })
}

fn read_labels(labels: &PyReadonlyArray1<'_, i64>) -> PyResult<Vec<usize>> {
    contiguous(labels.as_slice().ok(), "labels")?
        .iter()
        .map(|&y| {
            usize::try_from(y).map_err(|_| PyValueError::new_err(format!("label {y} is negative")))
        })
        .collect()
}

fn write_params<'a>(
    weights: &'a mut [Option<PyReadwriteArrayDyn<'_, f64>>],
    packed: &'a mut [Option<PyReadwriteArrayDyn<'_, u64>>],
) -> PyResult<Vec<LayerParamsMut<'a>>> {
    if weights.len() != packed.len() {
        return Err(PyValueError::new_err(
            "weights and packed must have one entry per layer",
        ));
    }
    let mut params = Vec::with_capacity(weights.len());
    for (w, p) in weights.iter_mut().zip(packed.iter_mut()) {
        let weight: &mut [f64] = match w {
            Some(a) => a.as_slice_mut().map_err(|_| {
                PyValueError::new_err("weights must be C-contiguous float64 arrays")
            })?,
            None => &mut [],
        };
        let packed: &mut [u64] = match p {
            Some(a) => a.as_slice_mut().map_err(|_| {
                PyValueError::new_err("packed weights must be C-contiguous uint64 arrays")
            })?,
            None => &mut [],
        };
        params.push(LayerParamsMut { weight, packed });
    }
    Ok(params)
}

fn read_params<'a>(
    weights: &'a [Option<PyReadonlyArrayDyn<'_, f64>>],
    packed: &'a [Option<PyReadonlyArrayDyn<'_, u64>>],
) -> PyResult<Vec<LayerParams<'a>>> {
    if weights.len() != packed.len() {
        return Err(PyValueError::new_err(
            "weights and packed must have one entry per layer",
        ));
    }
    weights
        .iter()
        .zip(packed)
        .map(|(w, p)| {
            let weight = match w {
                Some(a) => contiguous(a.as_slice().ok(), "weights")?,
                None => &[],
            };
            let packed = match p {
                Some(a) => contiguous(a.as_slice().ok(), "packed weights")?,
                None => &[],
            };
            Ok(LayerParams { weight, packed })
        })
        .collect()
}

fn to_2d(py: Python<'_>, data: Vec<f64>, batch: usize) -> PyResult<Bound<'_, PyArray2<f64>>> {
    let width = data.len().checked_div(batch).unwrap_or(0);
    let array = Array2::from_shape_vec((batch, width), data)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(array.into_pyarray(py))
}

/// Bit-pack the signs of a `(out, rows)` weight (the engine's layout; see `stidi_rs.pack_signs`).
#[pyfunction]
fn pack_signs<'py>(
    py: Python<'py>,
    weight: PyReadonlyArray2<'py, f64>,
) -> PyResult<Bound<'py, PyArray2<u64>>> {
    let (out, rows) = (weight.shape()[0], weight.shape()[1]);
    let w = contiguous(weight.as_slice().ok(), "weight")?;
    let words = out.div_ceil(64);
    let packed = stidi_core::bits::try_pack_signs(w, out, rows).map_err(value_error)?;
    let array = Array2::from_shape_vec((rows, words), packed)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(array.into_pyarray(py))
}

/// Set the number of engine threads (0 = `RAYON_NUM_THREADS`, else every core),
/// at most `max_threads()`. Results do not depend on it.
#[pyfunction]
fn set_num_threads(n: &Bound<'_, PyAny>) -> PyResult<()> {
    // Any int (also a negative or huge one) gets a ValueError, not an OverflowError.
    let count = n.extract::<usize>().map_err(|_| {
        PyValueError::new_err(format!(
            "set_num_threads needs a thread count in 0..={}, got {n}",
            stidi_core::max_threads()
        ))
    })?;
    stidi_core::set_num_threads(count).map_err(value_error)
}

/// Most threads the engine may use: 4 per available core, at least 64.
#[pyfunction]
fn max_threads() -> usize {
    stidi_core::max_threads()
}

/// Number of threads the engine uses.
#[pyfunction]
fn num_threads() -> usize {
    stidi_core::num_threads()
}

/// The copy of the sweep kernels in use: "avx2" or "portable" (same results;
/// `STIDI_RS_PORTABLE=1` forces the portable one).
#[pyfunction]
fn sweep_kernels() -> &'static str {
    stidi_core::sweep_kernels()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Engine>()?;
    m.add("DivergenceError", m.py().get_type::<DivergenceError>())?;
    m.add_function(wrap_pyfunction!(pack_signs, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(max_threads, m)?)?;
    m.add_function(wrap_pyfunction!(sweep_kernels, m)?)?;
    Ok(())
}
