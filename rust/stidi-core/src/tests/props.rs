use proptest::prelude::*;

use super::naive;
use super::{close, Params};
use crate::engine::{
    build_events, conv_times, dense_times, dense_times_i32, potential_at, transpose, ConvGeom,
    RowWeights, PORTABLE_SWEEPS,
};
use crate::threads::build_pool;
use crate::{
    bits, ConvReduce, Displacement, Hyper, LayerParams, LayerSpec, Network, Psp, Slope, Targets,
};

const T: f64 = 32.0;
const INF: f64 = f64::INFINITY;
const TOL: f64 = 1e-9;

/// SplitMix64: deterministic values from a proptest-chosen seed, so that
/// strategies stay simple while the structure is still shrunk by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A spike time; one in five inputs stays silent.
    fn time(&mut self) -> f64 {
        if self.uniform(0.0, 1.0) < 0.2 {
            T
        } else {
            self.uniform(0.0, T)
        }
    }
}

fn psp_strategy() -> impl Strategy<Value = Psp> {
    (1.0..12.0f64, prop_oneof![Just(INF), 1.0..30.0f64]).prop_map(|(r, f)| Psp::new(r, f).unwrap())
}

fn time_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![4 => 0.0..T, 1 => Just(T)]
}

/// Inputs `(t_i, w_i)` of one neuron.
fn inputs_strategy() -> impl Strategy<Value = Vec<(f64, f64)>> {
    prop::collection::vec((time_strategy(), -1.0..2.0f64), 1..8)
}

fn neuron(inputs: &[(f64, f64)], theta: f64, psp: Psp) -> f64 {
    let (ts, ws): (Vec<f64>, Vec<f64>) = inputs.iter().copied().unzip();
    let spec = LayerSpec::Dense {
        in_features: ts.len(),
        out_features: 1,
        threshold: theta,
        binary: false,
        skip: None,
    };
    let net = Network::new(vec![spec], &[ts.len()], psp, T).unwrap();
    net.forward(&[LayerParams::real(&ws)], &ts, 1)
        .unwrap()
        .times[0][0]
}

/// Structure of a random network; values come from `seed`.
#[derive(Clone, Debug)]
struct Shape {
    conv: Option<(usize, usize, usize, bool, usize)>, // cin, cout, k, binary, pool
    hw: (usize, usize),
    hidden: usize,
    hidden_binary: bool,
    out: usize,
    /// With a conv layer: the output also reads the layer below the hidden one.
    skip: bool,
    psp: Psp,
    seed: u64,
}

fn shape_strategy() -> impl Strategy<Value = Shape> {
    (
        prop::option::weighted(
            0.8,
            (1usize..3, 1usize..4, 2usize..4, any::<bool>(), 1usize..3),
        ),
        (5usize..8, 5usize..8),
        2usize..7,
        any::<bool>(),
        (2usize..5, any::<bool>()),
        psp_strategy(),
        any::<u64>(),
    )
        .prop_map(
            |(conv, hw, hidden, hidden_binary, (out, skip), psp, seed)| Shape {
                conv,
                hw,
                hidden,
                hidden_binary,
                out,
                skip,
                psp,
                seed,
            },
        )
}

struct Case {
    net: Network,
    params: Params,
    naive: Vec<naive::Layer>,
    inputs: Vec<Vec<f64>>,
    labels: Vec<usize>,
}

impl Case {
    fn flat_inputs(&self) -> Vec<f64> {
        self.inputs.concat()
    }
}

fn build_case(s: &Shape, batch: usize) -> Case {
    let mut rng = Rng(s.seed);
    let mut specs = Vec::new();
    let in_shape = match s.conv {
        Some((cin, cout, k, binary, p)) => {
            specs.push(LayerSpec::Conv2d {
                in_channels: cin,
                out_channels: cout,
                kernel_size: k,
                threshold: rng.uniform(0.2, 0.25 * (cin * k * k) as f64),
                binary,
            });
            if p > 1 {
                specs.push(LayerSpec::MaxPool2d { kernel_size: p });
            }
            vec![cin, s.hw.0, s.hw.1]
        }
        None => vec![s.hw.0 * s.hw.1],
    };
    // Sizes of a Dense input depend on the layers above, so build in two passes.
    let probe = Network::new(specs.clone(), &in_shape, s.psp, T);
    let flat: usize = match &probe {
        Ok(n) => n.output_shapes().last().unwrap().iter().product(),
        Err(_) => in_shape.iter().product(),
    };
    // The skip reads what the hidden layer reads: the last conv (or pool) layer.
    let skip = (s.skip && !specs.is_empty()).then(|| specs.len() - 1);
    specs.push(LayerSpec::Dense {
        in_features: flat,
        out_features: s.hidden,
        threshold: rng.uniform(0.2, 0.1 * flat as f64),
        binary: s.hidden_binary,
        skip: None,
    });
    specs.push(LayerSpec::Dense {
        in_features: s.hidden + if skip.is_some() { flat } else { 0 },
        out_features: s.out,
        threshold: rng.uniform(0.2, 0.2 * s.hidden as f64),
        binary: false,
        skip,
    });
    let net = Network::new(specs.clone(), &in_shape, s.psp, T).unwrap();
    let weights = (0..specs.len())
        .map(|l| {
            (0..net.weight_len(l))
                .map(|_| rng.uniform(-0.4, 1.0))
                .collect()
        })
        .collect();
    let params = Params::new(&net, weights);
    let mut shapes = vec![in_shape.clone()];
    shapes.extend(net.output_shapes().iter().cloned());
    let naive = specs
        .iter()
        .zip(&shapes)
        .map(|(spec, shape)| naive::Layer {
            spec: spec.clone(),
            in_shape: shape.clone(),
        })
        .collect();
    let n_in: usize = in_shape.iter().product();
    let inputs = (0..batch)
        .map(|_| (0..n_in).map(|_| rng.time()).collect())
        .collect();
    let labels = (0..batch).map(|_| rng.next() as usize % s.out).collect();
    Case {
        net,
        params,
        naive,
        inputs,
        labels,
    }
}

fn hyper_strategy() -> impl Strategy<Value = Hyper> {
    (
        prop::collection::vec(0.0..0.5f64, 3),
        0.5..6.0f64,
        prop::collection::vec(0.2..2.0f64, 3),
        any::<bool>(),
        prop_oneof![Just(0.0), 0.0..0.1f64],
        prop_oneof![Just(ConvReduce::Sum), Just(ConvReduce::Mean)],
        prop_oneof![Just(Displacement::Exact), Just(Displacement::Causal)],
    )
        .prop_map(
            |(lr, gamma, beta, normalize, weight_decay, conv_reduce, displacement)| Hyper {
                lr,
                gamma,
                beta,
                normalize,
                weight_decay,
                conv_reduce,
                displacement,
                // The naive implementation follows the paper's slope; the exact
                // one is compared with the NumPy reference (tests/test_ramp.py).
                slope: Slope::Paper,
                targets: Targets::Relative,
                tau_soft: 16.0,
            },
        )
}

/// `hyper` with as many `lr`/`beta` entries as `net` has spiking layers.
fn fit(mut hyper: Hyper, net: &Network) -> Hyper {
    hyper.lr.truncate(net.num_spiking());
    hyper.beta.truncate(net.num_spiking());
    hyper
}

fn bits_of(p: &Params) -> Vec<Vec<u64>> {
    p.w.iter()
        .map(|w| w.iter().map(|x| x.to_bits()).collect())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn spike_time_is_the_first_crossing(
        inputs in inputs_strategy(), theta in 0.2..3.0f64, psp in psp_strategy(),
    ) {
        let tj = neuron(&inputs, theta, psp);
        let (ts, ws): (Vec<f64>, Vec<f64>) = inputs.iter().copied().unzip();
        let scale = 1.0 + ws.iter().map(|w| w.abs()).sum::<f64>();
        let v = |t: f64| naive::potential(&ts, &ws, t, &psp);
        prop_assert!(tj <= T);
        if tj < T {
            prop_assert!((v(tj) - theta).abs() <= TOL * scale, "V({tj}) = {}", v(tj));
        }
        for b in naive::breakpoints(&ts, &psp, T) {
            if b < tj {
                prop_assert!(v(b) < theta + TOL * scale, "V({b}) = {} before {tj}", v(b));
            }
        }
        let want = naive::spike_time(&ts, &ws, theta, &psp, T);
        prop_assert!(close(tj, want, TOL), "{tj} vs naive {want}");
    }

    #[test]
    fn later_inputs_do_not_change_a_spike(
        inputs in inputs_strategy(), theta in 0.2..3.0f64, psp in psp_strategy(),
        moves in prop::collection::vec((0.0..1.0f64, -1.0..2.0f64), 8),
    ) {
        let tj = neuron(&inputs, theta, psp);
        prop_assume!(tj < T);
        let start = tj + 1e-6;
        let moved: Vec<(f64, f64)> = inputs
            .iter()
            .zip(&moves)
            .map(|(&(t, w), &(r, w2))| if t >= tj { (start + r * (T - start), w2) } else { (t, w) })
            .collect();
        let t2 = neuron(&moved, theta, psp);
        prop_assert!(close(t2, tj, 1e-12), "{t2} vs {tj}");
    }

    #[test]
    fn raising_an_earlier_weight_never_delays(
        inputs in inputs_strategy(), theta in 0.2..3.0f64, psp in psp_strategy(),
        pick in any::<prop::sample::Index>(), delta in 0.0..2.0f64,
    ) {
        let tj = neuron(&inputs, theta, psp);
        let earlier: Vec<usize> = (0..inputs.len()).filter(|&i| inputs[i].0 < tj).collect();
        prop_assume!(!earlier.is_empty());
        let mut raised = inputs.clone();
        raised[earlier[pick.index(earlier.len())]].1 += delta;
        let t2 = neuron(&raised, theta, psp);
        prop_assert!(t2 <= tj + TOL * T, "{t2} > {tj}");
    }

    #[test]
    fn shifting_inputs_shifts_spikes(
        inputs in inputs_strategy(), theta in 0.2..3.0f64, psp in psp_strategy(),
        shift in 0.0..16.0f64,
    ) {
        let tj = neuron(&inputs, theta, psp);
        let shifted: Vec<(f64, f64)> =
            inputs.iter().map(|&(t, w)| ((t + shift).min(T), w)).collect();
        let t2 = neuron(&shifted, theta, psp);
        if tj == T {
            prop_assert_eq!(t2, T);
        } else if tj + shift < T - 1e-6 {
            prop_assert!(close(t2, tj + shift, TOL), "{t2} vs {} + {shift}", tj);
        }
    }

    #[test]
    fn conv_equals_dense_with_toeplitz_weights(
        cin in 1usize..3, cout in 1usize..10, k in 1usize..4, dh in 0usize..3, dw in 0usize..3,
        psp in psp_strategy(), seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let (h, w) = (k + dh, k + dw);
        let (ho, wo) = (h - k + 1, w - k + 1);
        let theta = rng.uniform(0.3, 0.4 * (cin * k * k) as f64);
        let conv = Network::new(
            vec![LayerSpec::Conv2d { in_channels: cin, out_channels: cout, kernel_size: k, threshold: theta, binary: false }],
            &[cin, h, w], psp, T,
        ).unwrap();
        let wc: Vec<f64> = (0..conv.weight_len(0)).map(|_| rng.uniform(-0.4, 1.0)).collect();
        let (n_in, n_out) = (cin * h * w, cout * ho * wo);
        let mut wd = vec![0.0; n_in * n_out];
        for o in 0..cout { for oy in 0..ho { for ox in 0..wo {
            let j = (o * ho + oy) * wo + ox;
            for c in 0..cin { for ky in 0..k { for kx in 0..k {
                let i = (c * h + oy + ky) * w + ox + kx;
                wd[j * n_in + i] = wc[((o * cin + c) * k + ky) * k + kx];
            }}}
        }}}
        let dense = Network::new(
            vec![LayerSpec::Dense { in_features: n_in, out_features: n_out, threshold: theta, binary: false, skip: None }],
            &[n_in], psp, T,
        ).unwrap();
        let x: Vec<f64> = (0..2 * n_in).map(|_| rng.time()).collect();
        let a = conv.forward(&[LayerParams::real(&wc)], &x, 2).unwrap();
        let b = dense.forward(&[LayerParams::real(&wd)], &x, 2).unwrap();
        for (ta, tb) in a.times[0].iter().zip(&b.times[0]) {
            prop_assert!(close(*ta, *tb, TOL), "{ta} vs {tb}");
        }
    }

    #[test]
    fn max_pool_is_the_window_min(
        c in 1usize..3, p in 1usize..4, dh in 0usize..4, dw in 0usize..4, seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed);
        let (h, w) = (p + dh, p + dw);
        let net = Network::new(vec![LayerSpec::MaxPool2d { kernel_size: p }], &[c, h, w], Psp::new(5.0, INF).unwrap(), T).unwrap();
        // Coarse times so that ties occur.
        let x: Vec<f64> = (0..c * h * w).map(|_| (rng.time() / 8.0).floor() * 8.0).collect();
        let got = net.forward(&[LayerParams::pool()], &x, 1).unwrap().times.remove(0);
        let want = naive::forward(
            &[naive::Layer { spec: LayerSpec::MaxPool2d { kernel_size: p }, in_shape: vec![c, h, w] }],
            &[vec![]], &x, &Psp::new(5.0, INF).unwrap(), T,
        ).remove(0);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn binary_forward_equals_real_forward_with_signs(s in shape_strategy()) {
        let case = build_case(&s, 3);
        let x = case.flat_inputs();
        let real_specs: Vec<LayerSpec> = case.net.layers().iter().cloned().map(|spec| match spec {
            LayerSpec::Conv2d { in_channels, out_channels, kernel_size, threshold, .. } =>
                LayerSpec::Conv2d { in_channels, out_channels, kernel_size, threshold, binary: false },
            LayerSpec::Dense { in_features, out_features, threshold, skip, .. } =>
                LayerSpec::Dense { in_features, out_features, threshold, binary: false, skip },
            pool => pool,
        }).collect();
        let real = Network::new(real_specs, case.net.input_shape(), s.psp, T).unwrap();
        let signed: Vec<Vec<f64>> = case.params.w.iter().zip(case.net.layers()).map(|(w, spec)| {
            let binary = matches!(spec, LayerSpec::Conv2d { binary: true, .. } | LayerSpec::Dense { binary: true, .. });
            w.iter().map(|&v| if binary { if v >= 0.0 { 1.0 } else { -1.0 } } else { v }).collect()
        }).collect();
        let a = case.net.forward(&case.params.views(), &x, 3).unwrap();
        let b = real.forward(&Params::new(&real, signed).views(), &x, 3).unwrap();
        prop_assert_eq!(a.times, b.times);
        prop_assert_eq!(a.v_end, b.v_end);
    }

    #[test]
    fn pack_unpack_round_trip(out in 1usize..140, rows in 1usize..5, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let w: Vec<f64> = (0..out * rows)
            .map(|_| if rng.uniform(0.0, 1.0) < 0.15 { 0.0 } else { rng.uniform(-1.0, 1.0) })
            .collect();
        let p = bits::pack_signs(&w, out, rows);
        prop_assert_eq!(p.len(), bits::packed_words(out, rows));
        let u = bits::unpack_signs(&p, out, rows);
        for (a, b) in w.iter().zip(&u) {
            prop_assert_eq!(*b, if *a >= 0.0 { 1.0 } else { -1.0 });
        }
        prop_assert_eq!(&bits::pack_signs(&u, out, rows), &p);
        // The row-by-row packing of a training step gives the same words.
        let mut all = vec![u64::MAX; p.len()];
        bits::pack_all(&w, out, rows, &mut all);
        prop_assert_eq!(all, p);
    }

    #[test]
    fn binary_counts_in_i16_and_i32_agree_bit_for_bit(
        psp in psp_strategy(), n_in in 1usize..40, out in 1usize..150,
        theta in 0.2..3.0f64, seed in any::<u64>(),
    ) {
        // Layers with a fan-in too large for i16 counts use i32 ones.
        let mut rng = Rng(seed);
        let x: Vec<f64> = (0..n_in).map(|_| rng.time()).collect();
        let w: Vec<f64> = (0..out * n_in).map(|_| rng.uniform(-0.5, 1.0)).collect();
        let (mut act, mut events) = (Vec::new(), Vec::new());
        build_events(&x, &psp, T, &mut act, &mut events);
        let packed = bits::pack_signs(&w, out, n_in);
        let steps = psp.slope_steps();
        let bits16 = dense_times(&events, &RowWeights::bits(&packed, out), &steps, out, theta, T, 1);
        let bits32 = dense_times_i32(&events, &packed, &steps, out, theta, T);
        let b = |t: &[f64]| t.iter().map(|t| t.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(b(&bits16), b(&bits32));
    }

    #[test]
    fn dense_layer_reads_either_weight_layout_bit_for_bit(
        psp in psp_strategy(), n_in in 1usize..40, out in prop_oneof![1usize..40, 256usize..300],
        parts in 1usize..4, theta in 0.2..3.0f64, seed in any::<u64>(),
    ) {
        // Training sweeps each Dense neuron over its own row; inference sweeps
        // all of them over the transposed copy. Same spikes, to the bit.
        let mut rng = Rng(seed);
        let mut x: Vec<f64> = (0..n_in).map(|_| rng.time()).collect();
        for k in 1..n_in {
            if rng.uniform(0.0, 1.0) < 0.2 {
                x[k] = x[k - 1]; // simultaneous events
            }
        }
        let w: Vec<f64> = (0..out * n_in).map(|_| rng.uniform(-1.0, 2.0)).collect();
        let (mut act, mut events) = (Vec::new(), Vec::new());
        build_events(&x, &psp, T, &mut act, &mut events);
        let wt = transpose(&w, out, n_in);
        let (real, cols) = (RowWeights::real(&wt, out), RowWeights::cols(&w, out, n_in));
        let steps = psp.slope_steps();
        let times = |rw: &RowWeights| -> Vec<u64> {
            dense_times(&events, rw, &steps, out, theta, T, parts)
                .iter()
                .map(|t| t.to_bits())
                .collect()
        };
        let fired = times(&real).iter().filter(|&&t| f64::from_bits(t) < T).count();
        prop_assert_eq!(times(&real), times(&cols), "{} of {} fired", fired, out);
        let v = |rw: &RowWeights| -> Vec<u64> {
            potential_at(&x, rw, out, &psp, T).iter().map(|v| v.to_bits()).collect()
        };
        prop_assert_eq!(v(&real), v(&cols));
    }

    #[test]
    fn vector_sweeps_equal_portable_ones_bit_for_bit(
        psp in psp_strategy(), cin in 1usize..4, cout in 1usize..70, k in 1usize..6,
        extra in 0usize..4, binary in any::<bool>(), fill in 0.05..0.6f64, seed in any::<u64>(),
    ) {
        // The AVX2 copies of the Conv2d and Dense sweeps (where the CPU has
        // AVX2) against the portable ones; widths up to 69 exercise the vector
        // remainders and partial nibbles of packed signs.
        let mut rng = Rng(seed);
        let (h, w) = (k + extra, k + 2 * extra);
        let g = ConvGeom { cin, h, w, cout, k, ho: h - k + 1, wo: w - k + 1 };
        let n_in = cin * h * w;
        let mut x: Vec<f64> = (0..n_in).map(|_| rng.time()).collect();
        for i in 1..n_in {
            if rng.uniform(0.0, 1.0) < 0.2 {
                x[i] = x[i - 1]; // simultaneous events
            }
        }
        let (mut act, mut events) = (Vec::new(), Vec::new());
        build_events(&x, &psp, T, &mut act, &mut events);
        let steps = psp.slope_steps();
        let wc: Vec<f64> = (0..cout * g.rows()).map(|_| rng.uniform(-1.0, 2.0)).collect();
        let wd: Vec<f64> = (0..cout * n_in).map(|_| rng.uniform(-1.0, 2.0)).collect();
        let (wct, wdt) = (transpose(&wc, cout, g.rows()), transpose(&wd, cout, n_in));
        let (pc, pd) = (bits::pack_signs(&wc, cout, g.rows()), bits::pack_signs(&wd, cout, n_in));
        let (rc, rd) = if binary {
            (RowWeights::bits(&pc, cout), RowWeights::bits(&pd, cout))
        } else {
            (RowWeights::real(&wct, cout), RowWeights::real(&wdt, cout))
        };
        let (tc, td) = (fill * g.rows() as f64, fill * n_in as f64);
        // One part: the sweep runs on this thread, which the switch is for.
        let run = |portable: bool| -> (Vec<u64>, Vec<u64>) {
            PORTABLE_SWEEPS.with(|p| p.set(portable));
            let c = conv_times(&events, &g, &rc, &steps, tc, T, 1);
            let d = dense_times(&events, &rd, &steps, cout, td, T, 1);
            PORTABLE_SWEEPS.with(|p| p.set(false));
            (c.iter().map(|t| t.to_bits()).collect(), d.iter().map(|t| t.to_bits()).collect())
        };
        let (vector, portable) = (run(false), run(true));
        let fired = portable.0.iter().filter(|&&t| f64::from_bits(t) < T).count();
        prop_assert_eq!(vector.0, portable.0, "conv: {} of {} fired", fired, cout * g.positions());
        prop_assert_eq!(vector.1, portable.1);
    }

    #[test]
    fn forward_matches_naive(s in shape_strategy()) {
        let case = build_case(&s, 2);
        let out = case.net.forward(&case.params.views(), &case.flat_inputs(), 2).unwrap();
        for (b, x) in case.inputs.iter().enumerate() {
            let want = naive::forward(&case.naive, &case.params.w, x, &s.psp, T);
            for (l, w) in want.iter().enumerate() {
                let got = &out.times[l][b * w.len()..(b + 1) * w.len()];
                for (g, w) in got.iter().zip(w) {
                    prop_assert!(close(*g, *w, TOL), "layer {l}: {g} vs {w}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn train_step_matches_naive(s in shape_strategy(), batch in 1usize..5, hyper in hyper_strategy()) {
        let mut case = build_case(&s, batch);
        let hyper = fit(hyper, &case.net);
        let x = case.flat_inputs();
        let mut want = case.params.w.clone();
        // Pooling near-ties: see split_samples_are_independent_of_thread_count.
        for input in &case.inputs {
            prop_assume!(!naive::pool_near_tie(&case.naive, &want, input, &s.psp, T));
        }
        naive::train_step(&case.naive, &mut want, &case.inputs, &case.labels, &hyper, &s.psp, T);
        case.net.train_step(&mut case.params.views_mut(), &x, &case.labels, batch, &hyper).unwrap();
        for (l, (got, want)) in case.params.w.iter().zip(&want).enumerate() {
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                prop_assert!(close(*g, *w, TOL), "layer {l} weight {i}: {g} vs {w}");
            }
        }
        let repacked = Params::new(&case.net, case.params.w.clone());
        prop_assert_eq!(&repacked.p, &case.params.p);
    }

    #[test]
    fn train_step_is_independent_of_thread_count(
        s in shape_strategy(), batch in 1usize..12, hyper in hyper_strategy(),
    ) {
        let case = build_case(&s, batch);
        let hyper = fit(hyper, &case.net);
        let x = case.flat_inputs();
        let run = |threads: usize| {
            let pool = build_pool(threads).unwrap();
            let mut p = case.params.clone();
            let stats = case.net
                .train_step_in(&pool, &mut p.views_mut(), &x, &case.labels, batch, &hyper)
                .unwrap();
            (p, stats)
        };
        let (p1, s1) = run(1);
        let (p2, s2) = run(2);
        prop_assert_eq!(bits_of(&p1), bits_of(&p2));
        prop_assert_eq!(p1.p, p2.p);
        prop_assert_eq!(s1.predictions, s2.predictions);
        prop_assert_eq!(s1.cases, s2.cases);
        prop_assert_eq!(s1.loss.to_bits(), s2.loss.to_bits());
        prop_assert_eq!(s1.fired, s2.fired);
    }

    #[test]
    fn zero_learning_rate_leaves_weights(s in shape_strategy(), batch in 1usize..5, hyper in hyper_strategy()) {
        let mut case = build_case(&s, batch);
        let mut hyper = fit(hyper, &case.net);
        hyper.lr.iter_mut().for_each(|lr| *lr = 0.0);
        let before = case.params.clone();
        let x = case.flat_inputs();
        case.net.train_step(&mut case.params.views_mut(), &x, &case.labels, batch, &hyper).unwrap();
        prop_assert_eq!(case.params, before);
    }
}

/// A network whose layers are large enough to be split inside one sample
/// (`engine::SPLIT_MIN_NEURONS`): conv → pool → conv → dense → dense.
fn split_case(seed: u64, binary: [bool; 3], psp: Psp, samples: usize) -> Case {
    let mut rng = Rng(seed);
    let specs = vec![
        LayerSpec::Conv2d {
            in_channels: 2,
            out_channels: 12,
            kernel_size: 3,
            threshold: rng.uniform(0.5, 2.0),
            binary: binary[0],
        },
        LayerSpec::MaxPool2d { kernel_size: 2 },
        LayerSpec::Conv2d {
            in_channels: 12,
            out_channels: 16,
            kernel_size: 2,
            threshold: rng.uniform(0.5, 3.0),
            binary: binary[1],
        },
        LayerSpec::Dense {
            in_features: 16 * 4 * 4,
            out_features: 260,
            threshold: rng.uniform(1.0, 6.0),
            binary: binary[2],
            skip: None,
        },
        LayerSpec::Dense {
            in_features: 260,
            out_features: 3,
            threshold: rng.uniform(1.0, 6.0),
            binary: false,
            skip: None,
        },
    ];
    let in_shape = vec![2, 12, 12];
    let net = Network::new(specs.clone(), &in_shape, psp, T).unwrap();
    let weights = (0..specs.len())
        .map(|l| {
            (0..net.weight_len(l))
                .map(|_| rng.uniform(-0.4, 1.0))
                .collect()
        })
        .collect();
    let params = Params::new(&net, weights);
    let mut shapes = vec![in_shape.clone()];
    shapes.extend(net.output_shapes().iter().cloned());
    let naive = specs
        .iter()
        .zip(&shapes)
        .map(|(spec, shape)| naive::Layer {
            spec: spec.clone(),
            in_shape: shape.clone(),
        })
        .collect();
    let inputs = (0..samples)
        .map(|_| (0..2 * 12 * 12).map(|_| rng.time()).collect())
        .collect();
    let labels = (0..samples).map(|_| rng.next() as usize % 3).collect();
    Case {
        net,
        params,
        naive,
        inputs,
        labels,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// Per-sample steps (batch 1, fewer samples than threads) split each
    /// sample's layers over the pool; the result is bit-identical for any
    /// number of threads and agrees with the naive implementation.
    #[test]
    fn split_samples_are_independent_of_thread_count(
        seed in any::<u64>(), binary in any::<[bool; 3]>(), psp in psp_strategy(),
        hyper in hyper_strategy(),
    ) {
        let samples = 3;
        let case = split_case(seed, binary, psp, samples);
        let mut hyper = hyper;
        hyper.lr.push(hyper.lr[0]);
        hyper.beta.push(hyper.beta[0]);
        let n_in = case.net.input_shape().iter().product::<usize>();
        let x = case.flat_inputs();
        let run = |threads: usize| {
            let pool = build_pool(threads).unwrap();
            let mut p = case.params.clone();
            let mut stats = Vec::new();
            let mut times = Vec::new();
            for b in 0..samples {
                let xb = &x[b * n_in..(b + 1) * n_in];
                let fwd = case.net.forward_in(&pool, &p.views(), xb, 1);
                times.push((fwd.times, fwd.v_end));
                let st = case.net
                    .train_step_in(&pool, &mut p.views_mut(), xb, &case.labels[b..=b], 1, &hyper)
                    .unwrap();
                stats.push((st.predictions, st.cases, st.loss.to_bits(), st.fired));
            }
            (p, stats, times)
        };
        let (p1, s1, t1) = run(1);
        for threads in [2, 3] {
            let (p2, s2, t2) = run(threads);
            prop_assert_eq!(bits_of(&p1), bits_of(&p2));
            prop_assert_eq!(&p1.p, &p2.p);
            prop_assert_eq!(&s1, &s2);
            for ((a, va), (b, vb)) in t1.iter().zip(&t2) {
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(va), bits(vb));
                for (a, b) in a.iter().zip(b) {
                    prop_assert_eq!(bits(a), bits(b));
                }
            }
        }
        // The same steps in one train_steps call with batch_size 1.
        let mut p3 = case.params.clone();
        case.net
            .train_steps(&mut p3.views_mut(), &x, &case.labels, 1, &hyper)
            .unwrap();
        prop_assert_eq!(bits_of(&p1), bits_of(&p3));
        // And against the naive implementation, step by step.
        let mut want = case.params.w.clone();
        for b in 0..samples {
            // Binary weights make exact ties in a pooling window common; there the
            // winner, and so every update below it, turns on last-bit rounding.
            prop_assume!(!naive::pool_near_tie(&case.naive, &want, &case.inputs[b], &psp, T));
            naive::train_step(
                &case.naive, &mut want, &case.inputs[b..=b], &case.labels[b..=b], &hyper, &psp, T,
            );
        }
        for (l, (got, want)) in p1.w.iter().zip(&want).enumerate() {
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                prop_assert!(close(*g, *w, 1e-7), "layer {l} weight {i}: {g} vs {w}");
            }
        }
    }
}
