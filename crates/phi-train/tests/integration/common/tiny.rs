//! A tiny phi-family model, training config and token data for the guard tests: phi-train's
//! `tests/integration/train_guards.rs`.

use phi_core::PhiConfig;
use phi_data::{Mixture, TokenDataset};
use phi_train::{AdamWSettings, Decay, LrSchedule, TrainConfig};

pub fn tiny() -> (PhiConfig, TrainConfig, Mixture, TokenDataset) {
    let mut model = PhiConfig::phi_family(32, 2, 4, 64, 0.5);
    model.max_position_embeddings = 64;
    let cfg = TrainConfig {
        batch_size: 2,
        seq_len: 16,
        grad_accum: 1,
        max_steps: 6,
        optimizer: AdamWSettings { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, no_decay_for_bias_norm_embedding: true },
        schedule: LrSchedule { peak: 3e-3, warmup_steps: 0, total_steps: 6, floor: 3e-4, decay: Decay::Cosine },
        eval_every: 0,
        eval_batches: 2,
        checkpoint_every: 1,
        keep_checkpoints: 100,
        seed: 5,
        ..TrainConfig::default()
    };
    let stream: Vec<u32> = (0..3000u32).map(|i| if i % 5 == 0 { (i * 2654435761) >> 26 } else { i % 64 }).collect();
    let val = TokenDataset::from_tokens(stream[..400].to_vec());
    (model, cfg, Mixture::single(TokenDataset::from_tokens(stream)), val)
}
