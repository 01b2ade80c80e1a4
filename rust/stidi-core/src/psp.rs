use crate::error::{invalid, Result};

/// Piecewise-linear post-synaptic potential kernel (contract §2).
///
/// `tau_fall` may be `f64::INFINITY`: the kernel then rises to 1 and stays there.
#[derive(Clone, Copy, Debug)]
pub struct Psp {
    pub tau_rise: f64,
    pub tau_fall: f64,
}

impl Psp {
    pub fn new(tau_rise: f64, tau_fall: f64) -> Result<Psp> {
        if !(tau_rise.is_finite() && tau_rise > 0.0) {
            return invalid!("tau_rise must be finite and > 0, got {tau_rise}");
        }
        // NaN fails the comparison; +inf is allowed.
        if tau_fall.is_nan() || tau_fall <= 0.0 {
            return invalid!("tau_fall must be > 0 (inf allowed), got {tau_fall}");
        }
        Ok(Psp { tau_rise, tau_fall })
    }

    /// Re-checks a value that may have been built through the public fields.
    pub(crate) fn validate(&self) -> Result<()> {
        Psp::new(self.tau_rise, self.tau_fall).map(|_| ())
    }

    /// ε(s).
    #[inline]
    pub fn eps(&self, s: f64) -> f64 {
        if s <= 0.0 {
            0.0
        } else if s <= self.tau_rise {
            s / self.tau_rise
        } else if self.tau_fall.is_infinite() {
            // (τ1 + ∞ − s) / ∞ would be NaN.
            1.0
        } else if s <= self.tau_rise + self.tau_fall {
            (self.tau_rise + self.tau_fall - s) / self.tau_fall
        } else {
            0.0
        }
    }

    /// ε'(s), taking the left segment's value at a breakpoint (contract §2).
    #[inline]
    pub fn deps(&self, s: f64) -> f64 {
        if s <= 0.0 {
            0.0
        } else if s <= self.tau_rise {
            1.0 / self.tau_rise
        } else if s <= self.tau_rise + self.tau_fall {
            // −0.0 when τ2 = ∞, as in the reference.
            -1.0 / self.tau_fall
        } else {
            0.0
        }
    }

    /// Slope change brought by the rise, fall and end breakpoints, per unit weight.
    pub(crate) fn slope_steps(&self) -> [f64; 3] {
        let inv_rise = 1.0 / self.tau_rise;
        let inv_fall = 1.0 / self.tau_fall;
        [inv_rise, -inv_rise - inv_fall, inv_fall]
    }
}
