//! Bit-packed sign weights of binary layers.
//!
//! A weight is viewed as `(out, rows)`, with `rows = in_features` (Dense) or
//! `in_channels * k * k` (Conv2d, index `c*k*k + ky*k + kx`). Each row holds
//! `ceil(out / 64)` words; bit `j % 64` of word `r * words_per_row + j / 64` is 1
//! iff `weight[j * rows + r] >= 0` (+1), else 0 (−1). Padding bits are 0.
//! Storing a row per *input* makes the bits of all outputs touched by one input
//! spike contiguous, which is what the event sweep reads.

use crate::error::{invalid, Result};

/// `u64` words per row (one row per input / kernel position).
#[inline]
pub fn words_per_row(out: usize) -> usize {
    out.div_ceil(64)
}

/// Length in `u64` words of the packed signs of an `(out, rows)` weight.
pub fn packed_words(out: usize, rows: usize) -> usize {
    rows * words_per_row(out)
}

/// Packs `sign(weight)` (with `sign(0) = +1`). Panics if `weight.len() != out * rows`;
/// see [`try_pack_signs`] for a checked version.
pub fn pack_signs(weight: &[f64], out: usize, rows: usize) -> Vec<u64> {
    match try_pack_signs(weight, out, rows) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// Checked [`pack_signs`].
pub fn try_pack_signs(weight: &[f64], out: usize, rows: usize) -> Result<Vec<u64>> {
    if out.checked_mul(rows) != Some(weight.len()) {
        return invalid!(
            "weight has {} values but out={out} x rows={rows} were expected",
            weight.len()
        );
    }
    let mut packed = vec![0u64; packed_words(out, rows)];
    pack_into(weight, out, rows, &mut packed);
    Ok(packed)
}

/// Packs into an existing buffer of `packed_words(out, rows)` words.
pub(crate) fn pack_into(weight: &[f64], out: usize, rows: usize, packed: &mut [u64]) {
    let wpr = words_per_row(out);
    packed.fill(0);
    for j in 0..out {
        for r in 0..rows {
            if weight[j * rows + r] >= 0.0 {
                packed[r * wpr + j / 64] |= 1u64 << (j % 64);
            }
        }
    }
}

/// Packs row `r` (one input) of an `(out, rows)` weight into its `words`.
pub(crate) fn pack_row(weight: &[f64], out: usize, rows: usize, r: usize, words: &mut [u64]) {
    words.fill(0);
    for j in 0..out {
        words[j / 64] |= u64::from(weight[j * rows + r] >= 0.0) << (j % 64);
    }
}

/// Packs every input's signs like [`pack_row`], reading the weight row by row
/// (one output at a time, sequentially) rather than a strided column per
/// input: 64 outputs, one word of every row, per task on the current rayon pool.
pub(crate) fn pack_all(weight: &[f64], out: usize, rows: usize, packed: &mut [u64]) {
    use rayon::prelude::*;
    let wpr = words_per_row(out);
    let cols: Vec<Vec<u64>> = (0..wpr)
        .into_par_iter()
        .map(|q| {
            let mut col = vec![0u64; rows];
            for (b, row) in weight.chunks_exact(rows).skip(q * 64).take(64).enumerate() {
                for (c, &w) in col.iter_mut().zip(row) {
                    *c |= u64::from(w >= 0.0) << b;
                }
            }
            col
        })
        .collect();
    for (q, col) in cols.iter().enumerate() {
        for (words, &c) in packed.chunks_exact_mut(wpr).zip(col) {
            words[q] = c;
        }
    }
}

/// Unpacks to `±1.0` in the `(out, rows)` weight layout. Panics if
/// `packed.len() != packed_words(out, rows)`; see [`try_unpack_signs`].
pub fn unpack_signs(packed: &[u64], out: usize, rows: usize) -> Vec<f64> {
    match try_unpack_signs(packed, out, rows) {
        Ok(w) => w,
        Err(e) => panic!("{e}"),
    }
}

/// Checked [`unpack_signs`].
pub fn try_unpack_signs(packed: &[u64], out: usize, rows: usize) -> Result<Vec<f64>> {
    if out.checked_mul(rows).is_none() || packed.len() != packed_words(out, rows) {
        return invalid!(
            "packed signs have {} words but out={out}, rows={rows} need {}",
            packed.len(),
            packed_words(out, rows)
        );
    }
    let wpr = words_per_row(out);
    let mut w = vec![0.0; out * rows];
    for j in 0..out {
        for r in 0..rows {
            w[j * rows + r] = sign_bit(packed[r * wpr + j / 64], j % 64);
        }
    }
    Ok(w)
}

#[inline]
pub(crate) fn sign_bit(word: u64, bit: usize) -> f64 {
    if (word >> bit) & 1 == 1 {
        1.0
    } else {
        -1.0
    }
}

/// The forward weight of a binary layer: `sign(w)` with `sign(0) = +1`.
#[inline]
pub(crate) fn sign(w: f64) -> f64 {
    if w >= 0.0 {
        1.0
    } else {
        -1.0
    }
}

/// Whether `packed` holds exactly the signs of `weight` (padding bits ignored).
pub(crate) fn signs_match(weight: &[f64], packed: &[u64], out: usize, rows: usize) -> bool {
    use rayon::prelude::*;
    let wpr = words_per_row(out);
    // Branch-free over each output's weight row, on the current rayon pool:
    // every training call checks the whole layer.
    weight
        .par_chunks_exact(rows)
        .enumerate()
        .take(out)
        .all(|(j, row)| {
            let words = packed.iter().skip(j / 64).step_by(wpr);
            let bad = row.iter().zip(words).fold(0u64, |bad, (&w, &word)| {
                bad | (((word >> (j % 64)) & 1) ^ u64::from(w >= 0.0))
            });
            bad == 0
        })
}
