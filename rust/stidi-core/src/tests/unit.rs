use super::{close, Params};
use crate::stidibp::{normalize, output_targets};
use crate::{
    bits, decide, decide_with_tmax, num_threads, set_num_threads, ConvReduce, Displacement, Error,
    Hyper, LayerParams, LayerSpec, Network, Psp, Slope, Targets,
};

const INF: f64 = f64::INFINITY;

fn dense(n_in: usize, n_out: usize, threshold: f64) -> LayerSpec {
    LayerSpec::Dense {
        in_features: n_in,
        out_features: n_out,
        threshold,
        binary: false,
        skip: None,
    }
}

/// Spike time of one neuron with inputs `ts` and weights `ws`.
fn one_neuron(ts: &[f64], ws: &[f64], theta: f64, psp: Psp, tmax: f64) -> f64 {
    let net = Network::new(vec![dense(ts.len(), 1, theta)], &[ts.len()], psp, tmax).unwrap();
    let out = net.forward(&[LayerParams::real(ws)], ts, 1).unwrap();
    out.times[0][0]
}

#[test]
fn psp_kernel_values() {
    let p = Psp::new(10.0, 20.0).unwrap();
    assert_eq!(p.eps(-1.0), 0.0);
    assert_eq!(p.eps(0.0), 0.0);
    assert_eq!(p.eps(5.0), 0.5);
    assert_eq!(p.eps(10.0), 1.0);
    assert_eq!(p.eps(20.0), 0.5);
    assert_eq!(p.eps(30.0), 0.0);
    assert_eq!(p.eps(31.0), 0.0);
    assert_eq!(p.deps(0.0), 0.0);
    assert_eq!(p.deps(10.0), 0.1);
    assert_eq!(p.deps(10.5), -0.05);
    assert_eq!(p.deps(30.0), -0.05);
    assert_eq!(p.deps(30.5), 0.0);
    let q = Psp::new(40.0, INF).unwrap();
    assert_eq!(q.eps(20.0), 0.5);
    assert_eq!(q.eps(1e9), 1.0);
    assert_eq!(q.deps(40.0), 1.0 / 40.0);
    assert_eq!(q.deps(41.0), 0.0);
    assert!(Psp::new(0.0, 1.0).is_err());
    assert!(Psp::new(INF, 1.0).is_err());
    assert!(Psp::new(1.0, f64::NAN).is_err());
    assert!(Psp::new(1.0, -1.0).is_err());
}

#[test]
fn neuron_fires_on_the_rise() {
    // V = 2 t / 10 until t = 10: reaches 1 at t = 5.
    let t = one_neuron(
        &[0.0, 0.0],
        &[1.0, 1.0],
        1.0,
        Psp::new(10.0, INF).unwrap(),
        100.0,
    );
    assert_eq!(t, 5.0);
    // Second input arrives later: V = t/10 + (t-4)/10 = 1 at t = 7.
    let t = one_neuron(
        &[0.0, 4.0],
        &[1.0, 1.0],
        1.0,
        Psp::new(10.0, INF).unwrap(),
        100.0,
    );
    assert!(close(t, 7.0, 1e-12), "{t}");
}

#[test]
fn neuron_fires_on_the_fall() {
    // Input A (w=1) peaks at 10 and falls to 0 at 20; B (w=2) starts at 12.
    // On [12, 20]: V = (20 - t)/10 + 2 (t - 12)/10 = (t - 4)/10 = 1.2 at t = 16.
    let psp = Psp::new(10.0, 10.0).unwrap();
    let t = one_neuron(&[0.0, 12.0], &[1.0, 2.0], 1.2, psp, 100.0);
    assert!(close(t, 16.0, 1e-12), "{t}");
    // Firing while an inhibitory PSP decays: A (w=-1) at 0, B (w=1) at 8.
    // On [10, 18]: V = -(20 - t)/10 + (t - 8)/10 = (2t - 28)/10 = 0.15 at t = 14.75.
    let t = one_neuron(&[0.0, 8.0], &[-1.0, 1.0], 0.15, psp, 100.0);
    assert!(close(t, 14.75, 1e-12), "{t}");
}

#[test]
fn neuron_never_fires() {
    let psp = Psp::new(10.0, 10.0).unwrap();
    assert_eq!(one_neuron(&[0.0], &[1.0], 1.5, psp, 100.0), 100.0);
    // V reaches θ exactly at tmax: a crossing at tmax is no spike.
    let psp = Psp::new(10.0, INF).unwrap();
    assert_eq!(one_neuron(&[0.0], &[1.0], 1.0, psp, 10.0), 10.0);
    // An input at tmax never acts.
    assert_eq!(one_neuron(&[10.0, 5.0], &[5.0, 0.1], 1.0, psp, 10.0), 10.0);
}

#[test]
fn max_pool_takes_first_earliest_spike() {
    let psp = Psp::new(10.0, INF).unwrap();
    // 1 x 3 x 5 with a 2x2 window: output 1 x 1 x 2; row 2 and column 4 dropped.
    let x = [
        5.0, 3.0, 9.0, 9.0, 0.0, //
        3.0, 7.0, 2.0, 8.0, 0.0, //
        0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    let net = Network::new(
        vec![LayerSpec::MaxPool2d { kernel_size: 2 }],
        &[1, 3, 5],
        psp,
        10.0,
    )
    .unwrap();
    assert_eq!(net.output_shapes(), &[vec![1, 1, 2]]);
    let out = net.forward(&[LayerParams::pool()], &x, 1).unwrap();
    assert_eq!(out.times[0], vec![3.0, 2.0]);
    assert!(out.v_end.is_empty());
    // The winner of a tie is the first in row-major order.
    let g = crate::engine::PoolGeom {
        c: 1,
        h: 3,
        w: 5,
        p: 2,
        ho: 1,
        wo: 2,
    };
    assert_eq!(g.winner(&x, 0, 0, 0), 1);
    assert_eq!(g.winner(&x, 0, 0, 1), 7);
}

#[test]
fn output_targets_follow_the_contract() {
    let (t, g) = (100.0, 3.0);
    // Silent output: label asked to fire at T - γ.
    assert_eq!(output_targets(&[t, t, t], 1, g, t), vec![t, t - g, t]);
    // Label 0 is late: it gets t_min; the winner (close to t_min) is pushed to t_min+γ;
    // a far neuron keeps its time; one close to T is capped at T.
    assert_eq!(
        output_targets(&[50.0, 10.0, 12.0, 40.0], 0, g, t),
        vec![10.0, 13.0, 13.0, 40.0]
    );
    assert_eq!(output_targets(&[99.0, 98.5], 1, g, t), vec![100.0, 98.5]);
    // Label already first and alone: no error.
    assert_eq!(output_targets(&[10.0, 20.0], 0, g, t), vec![10.0, 20.0]);
}

#[test]
fn normalisation_keeps_zero() {
    let mut e = vec![3.0, 4.0];
    normalize(&mut e);
    assert_eq!(e, vec![0.6, 0.8]);
    let mut z = vec![0.0; 3];
    normalize(&mut z);
    assert_eq!(z, vec![0.0; 3]);
}

#[test]
fn decision_rule() {
    assert_eq!(
        decide_with_tmax(&[5.0, 3.0, 4.0], &[0.0, 0.0, 9.0], 10.0),
        (1, 0)
    );
    assert_eq!(
        decide_with_tmax(&[3.0, 5.0, 3.0], &[1.0, 9.0, 2.0], 10.0),
        (2, 1)
    );
    assert_eq!(decide_with_tmax(&[3.0, 3.0], &[2.0, 2.0], 10.0), (0, 1));
    assert_eq!(decide_with_tmax(&[10.0, 10.0], &[1.0, 2.0], 10.0), (1, 2));
    assert_eq!(decide_with_tmax(&[10.0], &[1.0], 10.0), (0, 2));
    assert_eq!(decide(&[5.0, 3.0, 4.0], &[0.0, 0.0, 9.0]), (1, 0));
    assert_eq!(decide(&[3.0, 5.0, 3.0], &[1.0, 9.0, 2.0]), (2, 1));
    assert_eq!(decide(&[10.0, 10.0], &[1.0, 2.0]), (1, 2));
    assert_eq!(decide(&[], &[]), (0, 0));
}

#[test]
fn packed_layout() {
    // out = 2, rows = 3: weight[j * 3 + r]; bit j of word r.
    let w = [1.0, -1.0, 0.0, -2.0, 3.0, -0.0];
    let p = bits::pack_signs(&w, 2, 3);
    assert_eq!(p, vec![0b01, 0b10, 0b11]);
    assert_eq!(
        bits::unpack_signs(&p, 2, 3),
        vec![1.0, -1.0, 1.0, -1.0, 1.0, 1.0]
    );
    // 70 outputs need two words per row.
    assert_eq!(bits::packed_words(70, 3), 6);
    assert!(bits::try_pack_signs(&w, 4, 3).is_err());
    assert!(bits::try_unpack_signs(&p, 70, 3).is_err());
}

#[test]
fn network_shapes_and_validation() {
    let psp = Psp::new(5.0, INF).unwrap();
    let conv = |cin, cout, k| LayerSpec::Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel_size: k,
        threshold: 1.0,
        binary: false,
    };
    let net = Network::new(
        vec![
            conv(1, 4, 3),
            LayerSpec::MaxPool2d { kernel_size: 2 },
            LayerSpec::Dense {
                in_features: 4 * 2 * 2,
                out_features: 70,
                threshold: 1.0,
                binary: true,
                skip: None,
            },
            dense(70, 3, 2.0),
        ],
        &[1, 6, 7],
        psp,
        32.0,
    )
    .unwrap();
    assert_eq!(
        net.output_shapes(),
        &[vec![4, 4, 5], vec![4, 2, 2], vec![70], vec![3]]
    );
    assert_eq!(
        (0..4).map(|l| net.weight_len(l)).collect::<Vec<_>>(),
        [36, 0, 1120, 210]
    );
    assert_eq!(
        (0..4).map(|l| net.packed_len(l)).collect::<Vec<_>>(),
        [0, 0, 32, 0]
    );
    assert_eq!(net.num_spiking(), 3);

    let bad = |layers: Vec<LayerSpec>, shape: &[usize]| Network::new(layers, shape, psp, 32.0);
    assert!(bad(vec![], &[4]).is_err());
    assert!(bad(vec![dense(4, 2, 1.0)], &[5]).is_err());
    assert!(bad(vec![dense(4, 2, 0.0)], &[4]).is_err());
    assert!(bad(vec![dense(4, 2, f64::NAN)], &[4]).is_err());
    assert!(bad(vec![dense(4, 0, 1.0)], &[4]).is_err());
    assert!(bad(vec![conv(1, 2, 3)], &[4]).is_err());
    assert!(bad(vec![conv(2, 2, 3)], &[1, 4, 4]).is_err());
    assert!(bad(vec![conv(1, 2, 5)], &[1, 4, 9]).is_err());
    assert!(bad(vec![LayerSpec::MaxPool2d { kernel_size: 0 }], &[1, 4, 4]).is_err());
    assert!(bad(
        vec![dense(4, 2, 1.0), LayerSpec::MaxPool2d { kernel_size: 1 }],
        &[4]
    )
    .is_err());
    assert!(bad(vec![dense(4, 2, 1.0)], &[2, 2]).is_err());
    assert!(bad(vec![dense(4, 2, 1.0)], &[0, 2, 2]).is_err());
    assert!(Network::new(vec![dense(4, 2, 1.0)], &[4], psp, 0.0).is_err());
    assert!(Network::new(vec![dense(4, 2, 1.0)], &[4], psp, INF).is_err());
    // A Dense reading a feature map must take its flattened size.
    assert!(bad(vec![dense(4, 2, 1.0)], &[1, 2, 2]).is_ok());
}

fn tiny() -> (Network, Params) {
    let psp = Psp::new(5.0, 10.0).unwrap();
    let net = Network::new(vec![dense(3, 4, 1.0), dense(4, 2, 1.0)], &[3], psp, 20.0).unwrap();
    let params = Params::new(&net, vec![vec![0.5; 12], vec![0.5; 8]]);
    (net, params)
}

fn hyper(lr: f64) -> Hyper {
    Hyper {
        lr: vec![lr; 2],
        gamma: 3.0,
        beta: vec![1.0; 2],
        normalize: true,
        weight_decay: 0.0,
        conv_reduce: ConvReduce::Sum,
        displacement: Displacement::Exact,
        slope: Slope::Paper,
        targets: Targets::Relative,
        tau_soft: 16.0,
    }
}

fn message<T: std::fmt::Debug>(r: crate::Result<T>) -> String {
    match r {
        Err(Error::Invalid(m)) => m,
        Err(e) => panic!("expected Error::Invalid, got {e:?}"),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn bad_inputs_are_errors() {
    let (net, mut params) = tiny();
    let m = message(net.forward(&params.views(), &[1.0, 300.0, 2.0], 1));
    assert_eq!(m, "input time 300 at index 1 is outside [0, tmax=20]");
    let m = message(net.forward(&params.views(), &[1.0, 2.0, f64::NAN], 1));
    assert!(m.contains("NaN") && m.contains("index 2"), "{m}");
    assert!(net.forward(&params.views(), &[-1.0, 2.0, 3.0], 1).is_err());
    assert!(net.forward(&params.views(), &[1.0, 2.0], 1).is_err());
    assert!(net
        .forward(&params.views()[..1], &[1.0, 2.0, 3.0], 1)
        .is_err());
    assert!(net.forward(&params.views(), &[], 0).unwrap().times[0].is_empty());
    let x = [1.0, 2.0, 3.0];
    let m = message(net.train_step(&mut params.views_mut(), &x, &[2], 1, &hyper(0.1)));
    assert!(m.contains("label 2"), "{m}");
    assert!(net
        .train_step(&mut params.views_mut(), &x, &[0, 1], 1, &hyper(0.1))
        .is_err());
    assert!(net
        .train_step(&mut params.views_mut(), &[], &[], 0, &hyper(0.1))
        .is_err());
    let mut h = hyper(0.1);
    h.lr.pop();
    assert!(net
        .train_step(&mut params.views_mut(), &x, &[0], 1, &h)
        .is_err());
    let mut h = hyper(0.1);
    h.gamma = 0.0;
    assert!(net
        .train_step(&mut params.views_mut(), &x, &[0], 1, &h)
        .is_err());
    params.w[0][3] = f64::NAN;
    assert!(net.forward(&params.views(), &x, 1).is_err());
}

#[test]
fn binary_layers_check_their_bits() {
    let psp = Psp::new(5.0, INF).unwrap();
    let layer = LayerSpec::Dense {
        in_features: 3,
        out_features: 2,
        threshold: 1.0,
        binary: true,
        skip: None,
    };
    let net = Network::new(vec![layer], &[3], psp, 20.0).unwrap();
    let w = vec![0.3, -0.2, 0.1, 0.5, 0.5, -0.4];
    let mut params = Params::new(&net, vec![w.clone()]);
    // Forward reads only the bits: the real weight may be omitted.
    let x = [1.0, 2.0, 3.0];
    let a = net.forward(&params.views(), &x, 1).unwrap();
    let b = net
        .forward(&[LayerParams::binary(&[], &params.p[0])], &x, 1)
        .unwrap();
    assert_eq!(a.times, b.times);
    assert!(net.forward(&[LayerParams::real(&w)], &x, 1).is_err());
    let h = Hyper {
        lr: vec![0.1],
        gamma: 3.0,
        beta: vec![1.0],
        normalize: true,
        weight_decay: 0.0,
        conv_reduce: ConvReduce::Sum,
        displacement: Displacement::Exact,
        slope: Slope::Paper,
        targets: Targets::Relative,
        tau_soft: 16.0,
    };
    params.p[0][0] ^= 1;
    let m = message(net.train_step(&mut params.views_mut(), &x, &[0], 1, &h));
    assert!(m.contains("do not match"), "{m}");
}

#[test]
fn train_step_updates_and_repacks() {
    let psp = Psp::new(5.0, INF).unwrap();
    let layer = LayerSpec::Dense {
        in_features: 2,
        out_features: 2,
        threshold: 1.0,
        binary: true,
        skip: None,
    };
    let net = Network::new(vec![layer], &[2], psp, 20.0).unwrap();
    // Output 0 fires at 2.5 (both inputs +1: V = 2t/5), output 1 never (signs cancel).
    let mut params = Params::new(&net, vec![vec![0.01, 0.01, 0.01, -0.01]]);
    let h = Hyper {
        lr: vec![10.0],
        gamma: 3.0,
        beta: vec![1.0],
        normalize: false,
        weight_decay: 0.0,
        conv_reduce: ConvReduce::Sum,
        displacement: Displacement::Exact,
        slope: Slope::Paper,
        targets: Targets::Relative,
        tau_soft: 16.0,
    };
    let stats = net
        .train_step(&mut params.views_mut(), &[0.0, 0.0], &[1], 1, &h)
        .unwrap();
    assert_eq!(stats.predictions, vec![0]);
    assert_eq!(stats.cases, vec![0]);
    assert_eq!(stats.fired, vec![0.5]);
    // Targets: label 1 -> t_min = 2.5 (from 20), output 0 -> 5.5 (from 2.5).
    let (e0, e1) = (3.0 / 20.0, -17.5 / 20.0);
    assert!(close(stats.loss, 0.5 * (e0 * e0 + e1 * e1), 1e-15));
    // Δw_0i = -η e0 (2.5/θ) ε(2.5)/T with ε(2.5) = 0.5; Δw_1i = -η e1 (20/θ) ε(20)/T.
    let d0 = -10.0 * e0 * 2.5 * 0.5 / 20.0;
    let d1 = -10.0 * e1 * 20.0 / 20.0;
    let want = [0.01 + d0, 0.01 + d0, 0.01 + d1, -0.01 + d1];
    for (w, x) in params.w[0].iter().zip(want) {
        assert!(close(*w, x, 1e-14), "{w} vs {x}");
    }
    // Output 0 got negative weights: the bits follow.
    assert_eq!(params.p[0], bits::pack_signs(&params.w[0], 2, 2));
    assert_eq!(
        bits::unpack_signs(&params.p[0], 2, 2),
        vec![-1.0, -1.0, 1.0, 1.0]
    );
}

#[test]
fn a_diverging_step_is_an_error_and_leaves_the_weights_as_they_were() {
    let (net, mut params) = tiny();
    let x = [1.0, 2.0, 3.0, 3.0, 2.0, 1.0];
    let mut h = hyper(100.0);
    net.train_steps(&mut params.views_mut(), &x, &[0, 1], 1, &h)
        .unwrap();
    let before = params.w.clone();
    // A decay of lr * 1e307 per step sends every weight past f64::MAX.
    h.weight_decay = 1e307;
    for batch_size in [1, 2] {
        let err = net
            .train_steps(&mut params.views_mut(), &x, &[0, 1], batch_size, &h)
            .unwrap_err();
        let Error::Diverged(m) = err else {
            panic!("expected Error::Diverged, got {err:?}")
        };
        assert!(m.starts_with("layer 0 (Dense): step 0 of this call"), "{m}");
        assert_eq!(params.w, before);
    }
    // The output layer diverges: the update of the layer below is undone too.
    h.weight_decay = 10.0;
    h.lr = vec![0.1, 1e308];
    let err = net.train_step(&mut params.views_mut(), &x[..3], &[0], 1, &h);
    assert!(matches!(err, Err(Error::Diverged(ref m)) if m.starts_with("layer 1 (Dense)")));
    assert_eq!(params.w, before);
}

#[test]
fn thread_pool_is_configurable() {
    set_num_threads(1).unwrap();
    assert_eq!(num_threads(), 1);
    set_num_threads(2).unwrap();
    assert_eq!(num_threads(), 2);
    set_num_threads(0).unwrap();
    assert!(num_threads() >= 1);
    let cap = crate::max_threads();
    assert!(cap >= 64);
    let m = message(set_num_threads(cap + 1));
    assert!(m.contains("more than the cap"), "{m}");
    assert!(set_num_threads(usize::MAX).is_err());
    assert!(num_threads() >= 1); // the pool before the refused calls stays
}

#[test]
fn rule_options_parse_from_their_python_names() {
    assert_eq!("sum".parse::<ConvReduce>(), Ok(ConvReduce::Sum));
    assert_eq!("mean".parse::<ConvReduce>(), Ok(ConvReduce::Mean));
    assert_eq!("exact".parse::<Displacement>(), Ok(Displacement::Exact));
    assert_eq!("causal".parse::<Displacement>(), Ok(Displacement::Causal));
    let err = "avg".parse::<ConvReduce>().unwrap_err().to_string();
    assert_eq!(err, "conv_reduce must be 'sum' or 'mean', got \"avg\"");
    let err = "Exact".parse::<Displacement>().unwrap_err().to_string();
    assert_eq!(
        err,
        "displacement must be 'exact' or 'causal', got \"Exact\""
    );
}

/// Dense 3 → 4 → 2, and an output that reads both (skip to layer 0).
fn skip_net(skip: Option<usize>, n_in: usize) -> LayerSpec {
    LayerSpec::Dense {
        in_features: n_in,
        out_features: 2,
        threshold: 1.5,
        binary: false,
        skip,
    }
}

#[test]
fn skip_reads_both_layers_and_is_checked() {
    let psp = Psp::new(5.0, INF).unwrap();
    let specs = vec![dense(3, 4, 1.0), dense(4, 2, 1.0), skip_net(Some(0), 6)];
    let net = Network::new(specs, &[3], psp, 20.0).unwrap();
    let w: Vec<Vec<f64>> = vec![
        (0..12).map(|i| 0.3 + 0.05 * i as f64).collect(),
        (0..8).map(|i| 0.4 + 0.1 * i as f64).collect(),
        (0..12).map(|i| 0.2 + 0.07 * i as f64).collect(),
    ];
    let params = Params::new(&net, w.clone());
    let x = [1.0, 2.5, 4.0, 0.5, 3.0, 20.0];
    let out = net.forward(&params.views(), &x, 2).unwrap();
    // The output equals a lone Dense 6 → 2 on [layer 1's spikes, layer 0's].
    let alone = Network::new(vec![skip_net(None, 6)], &[6], psp, 20.0).unwrap();
    for b in 0..2 {
        let mut cat = out.times[1][2 * b..2 * b + 2].to_vec();
        cat.extend_from_slice(&out.times[0][4 * b..4 * b + 4]);
        // Sample 0: every neuron fires; sample 1: two of layer 0's stay silent.
        assert_eq!(
            cat.iter().filter(|&&t| t < 20.0).count(),
            6 - 2 * b,
            "{cat:?}"
        );
        let want = alone.forward(&[LayerParams::real(&w[2])], &cat, 1).unwrap();
        assert_eq!(&out.times[2][2 * b..2 * b + 2], &want.times[0][..]);
        assert_eq!(&out.v_end[2 * b..2 * b + 2], &want.v_end[..]);
    }
    let bad = |specs| message(Network::new(specs, &[3], psp, 20.0));
    let m = bad(vec![dense(3, 4, 1.0), skip_net(Some(0), 8)]);
    assert!(m.contains("skip=0 must name a layer below"), "{m}");
    let m = bad(vec![
        dense(3, 4, 1.0),
        dense(4, 2, 1.0),
        skip_net(Some(0), 2),
    ]);
    assert!(
        m.contains("its input [2] and layer 0's [4] have 6 values"),
        "{m}"
    );
}

#[test]
fn skip_sends_the_outputs_errors_to_the_layer_it_reads() {
    // The output's weights from layer 1 are zero, so layer 1 gets no error and
    // keeps its weights; layer 0 still learns, from the errors the skip sends it.
    let psp = Psp::new(5.0, INF).unwrap();
    let specs = vec![dense(3, 4, 1.0), dense(4, 2, 1.0), skip_net(Some(0), 6)];
    let net = Network::new(specs, &[3], psp, 20.0).unwrap();
    let mut out_w = vec![0.0; 12];
    for j in 0..2 {
        for i in 2..6 {
            out_w[j * 6 + i] = 0.2 + 0.1 * (i + j) as f64;
        }
    }
    let w0 = vec![vec![0.5; 12], vec![0.6; 8], out_w];
    let mut params = Params::new(&net, w0.clone());
    let mut h = hyper(1.0);
    h.lr = vec![1.0; 3];
    h.beta = vec![1.0; 3];
    // Label 1: output 1 must fire first, so both outputs get an error.
    let x = [1.0, 2.0, 3.0];
    let before = net.forward(&params.views(), &x, 1).unwrap();
    assert!(
        before.times[2].iter().all(|&t| t < 20.0),
        "{:?}",
        before.times[2]
    );
    net.train_step(&mut params.views_mut(), &x, &[1], 1, &h)
        .unwrap();
    assert_eq!(params.w[1], w0[1]);
    assert_ne!(params.w[0], w0[0]);
    assert_ne!(params.w[2], w0[2]);
}

/// One Dense layer of ramp neurons over 3 inputs (the linear PSP they need).
fn ramp_net(layer: LayerSpec, tmax: f64) -> Network {
    Network::new(vec![layer], &[3], Psp::new(tmax, INF).unwrap(), tmax)
        .unwrap()
        .with_neuron(crate::Neuron::Ramp)
        .unwrap()
}

#[test]
fn ramp_neurons_fire_at_theta_t_minus_their_drive() {
    use crate::Neuron;
    let tmax = 100.0;
    let ramp = |theta: f64| ramp_net(dense(3, 4, theta), tmax);
    // Inputs at 20, 70 and never: drives u = 80 w0 + 30 w1.
    let x = [20.0, 70.0, tmax];
    let w = vec![
        0.5, 1.0, 9.0, // u = 70: fires at 100 - 70 = 30
        1.0, 1.0, 9.0, // u = 110 >= θT: pinned at the window start, 0
        -0.5, 0.5, 9.0, // u = -25: 125 >= T, silent
        0.25, 0.0, -9.0, // u = 20: 80
    ];
    let params = Params::new(&ramp(1.0), vec![w.clone()]);
    let out = ramp(1.0).forward(&params.views(), &x, 1).unwrap();
    assert_eq!(out.times[0], vec![30.0, 0.0, tmax, 80.0]);
    // V at the end of the window, (u + T)/T.
    assert_eq!(out.v_end, vec![1.7, 2.1, 0.75, 1.2]);
    // A higher threshold delays every spike by (θ − 1)T.
    let out = ramp(1.2).forward(&params.views(), &x, 1).unwrap();
    assert_eq!(out.times[0], vec![50.0, 10.0, tmax, tmax]);
    // Ramp neurons need the linear PSP of slope 1/tmax.
    let psp40 = Network::new(
        vec![dense(3, 4, 1.0)],
        &[3],
        Psp::new(40.0, INF).unwrap(),
        tmax,
    );
    assert!(psp40.unwrap().with_neuron(Neuron::Ramp).is_err());
    assert!("lif".parse::<Neuron>().is_err());
}

#[test]
fn scaled_binary_ramp_neurons_fire_as_weights_of_that_magnitude() {
    use crate::Neuron;
    let tmax = 100.0;
    let layer = |binary| LayerSpec::Dense {
        in_features: 3,
        out_features: 2,
        threshold: 1.0,
        binary,
        skip: None,
    };
    let net = |binary| ramp_net(layer(binary), tmax);
    let scaled = net(true).with_scale(0, 0.25).unwrap();
    let x = [20.0, 70.0, tmax];
    let w = vec![0.3, -0.2, 0.1, 0.5, 0.5, -0.4];
    // u = 0.25 (80 − 30) = 12.5 and 0.25 (80 + 30) = 27.5.
    let out = scaled
        .forward(&Params::new(&scaled, vec![w.clone()]).views(), &x, 1)
        .unwrap();
    assert_eq!(out.times[0], vec![87.5, 72.5]);
    let signs: Vec<f64> = w
        .iter()
        .map(|&w| if w >= 0.0 { 0.25 } else { -0.25 })
        .collect();
    let real = net(false);
    let same = real
        .forward(&Params::new(&real, vec![signs]).views(), &x, 1)
        .unwrap();
    assert_eq!(out.times, same.times);
    assert_eq!(out.v_end, same.v_end);
    // Only binary layers of ramp networks take a scale, and only a positive one.
    assert!(net(false).with_scale(0, 0.25).is_err());
    assert!(net(true).with_scale(0, 0.0).is_err());
    assert!(net(true).with_scale(1, 0.25).is_err());
    let psp = Network::new(vec![layer(true)], &[3], Psp::new(tmax, INF).unwrap(), tmax).unwrap();
    assert!(psp.clone().with_scale(0, 0.25).is_err());
    assert!(scaled.with_neuron(Neuron::Psp).is_err());
}
