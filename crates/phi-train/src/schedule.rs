//! Learning-rate schedules: linear warmup, then constant, cosine or linear decay to a floor, or
//! warmup-stable-decay (constant until `decay_start`, then linear to the floor: the anneal over
//! a curriculum's last stage).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Constant,
    Cosine,
    Linear,
    /// Warmup-stable-decay: `peak` until step `decay_start`, then linear to `floor` at
    /// `total_steps` (TOML: `decay = { wsd = { decay_start = 900 } }`).
    Wsd { decay_start: usize },
}

/// The learning rate as a pure function of the step, so that a resumed run continues exactly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrSchedule {
    pub peak: f64,
    /// Steps of linear warmup from 0 to `peak` (step `s` < warmup gets `peak·(s+1)/warmup`).
    pub warmup_steps: usize,
    /// Step at which decay reaches `floor`; later steps stay at `floor`.
    pub total_steps: usize,
    pub floor: f64,
    pub decay: Decay,
}

impl LrSchedule {
    pub fn constant(lr: f64) -> Self {
        LrSchedule { peak: lr, warmup_steps: 0, total_steps: 0, floor: lr, decay: Decay::Constant }
    }

    /// Learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if let Decay::Wsd { decay_start } = self.decay {
            if step < decay_start {
                return self.peak;
            }
            let span = self.total_steps.saturating_sub(decay_start);
            let progress = if span == 0 { 1.0 } else { ((step - decay_start) as f64 / span as f64).min(1.0) };
            return self.floor + (self.peak - self.floor) * (1.0 - progress);
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps);
        let progress = if span == 0 { 1.0 } else { ((step - self.warmup_steps) as f64 / span as f64).min(1.0) };
        match self.decay {
            Decay::Wsd { .. } => unreachable!("handled above"),
            Decay::Constant => self.peak,
            Decay::Linear => self.floor + (self.peak - self.floor) * (1.0 - progress),
            Decay::Cosine => {
                self.floor + 0.5 * (self.peak - self.floor) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_floor() {
        let s = LrSchedule { peak: 1e-3, warmup_steps: 10, total_steps: 110, floor: 1e-4, decay: Decay::Cosine };
        assert!((s.lr(0) - 1e-4).abs() < 1e-12);
        assert!((s.lr(9) - 1e-3).abs() < 1e-12);
        assert!((s.lr(10) - 1e-3).abs() < 1e-12);
        assert!((s.lr(60) - 5.5e-4).abs() < 1e-12, "midpoint is halfway between peak and floor");
        assert!((s.lr(110) - 1e-4).abs() < 1e-12);
        assert!((s.lr(500) - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn linear_decay_and_constant() {
        let s = LrSchedule { peak: 1.0, warmup_steps: 0, total_steps: 4, floor: 0.0, decay: Decay::Linear };
        let lrs: Vec<f64> = (0..6).map(|i| s.lr(i)).collect();
        assert_eq!(lrs, vec![1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
        assert_eq!(LrSchedule::constant(2e-4).lr(1000), 2e-4);
    }

    #[test]
    fn warmup_stable_then_linear_anneal() {
        let s = LrSchedule { peak: 1.0, warmup_steps: 2, total_steps: 10, floor: 0.0, decay: Decay::Wsd { decay_start: 6 } };
        let lrs: Vec<f64> = (0..12).map(|i| s.lr(i)).collect();
        assert_eq!(lrs, vec![0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
        // How a settings file spells it (`decay = { wsd = { decay_start = 6 } }` in TOML).
        let json = r#"{"peak": 1.0, "warmup_steps": 2, "total_steps": 10, "floor": 0.0, "decay": {"wsd": {"decay_start": 6}}}"#;
        assert_eq!(serde_json::from_str::<LrSchedule>(json).unwrap(), s);
    }
}
