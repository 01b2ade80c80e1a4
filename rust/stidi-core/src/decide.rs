/// The decision rule (contract §4) for one sample, without knowing `tmax`.
///
/// The predicted class is identical to [`decide_with_tmax`]. Only the case code
/// needs `tmax` to tell "no output spike" (2) from a tie: here a tie of every
/// neuron (with at least two neurons) is reported as 2. Prefer
/// [`decide_with_tmax`] or [`crate::Network::decide`] when `tmax` is at hand.
pub fn decide(times: &[f64], v_end: &[f64]) -> (usize, u8) {
    let (pred, tied, _) = pick(times, v_end);
    let case = match tied {
        0 | 1 => 0,
        n if n == times.len() => 2,
        _ => 1,
    };
    (pred, case)
}

/// The decision rule (contract §4) for one sample: `(class, case)` with case
/// 0 = unique first spike, 1 = tie, 2 = no output spike (`min t >= tmax`).
pub fn decide_with_tmax(times: &[f64], v_end: &[f64], tmax: f64) -> (usize, u8) {
    let (pred, tied, t_min) = pick(times, v_end);
    let case = if times.is_empty() || t_min >= tmax {
        2
    } else if tied == 1 {
        0
    } else {
        1
    };
    (pred, case)
}

/// `(prediction, number tied at the minimum, minimum)`.
fn pick(times: &[f64], v_end: &[f64]) -> (usize, usize, f64) {
    let t_min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let mut best = None::<(usize, f64)>;
    let mut tied = 0;
    for (k, &t) in times.iter().enumerate() {
        if t != t_min {
            continue;
        }
        tied += 1;
        // A missing V(T) ranks lowest; strict `>` keeps the lowest index on ties.
        let v = v_end.get(k).copied().unwrap_or(f64::NEG_INFINITY);
        let better = match best {
            None => true,
            Some((_, bv)) => v > bv,
        };
        if better {
            best = Some((k, v));
        }
    }
    (best.map_or(0, |(k, _)| k), tied, t_min)
}
