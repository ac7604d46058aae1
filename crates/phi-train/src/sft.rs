//! Supervised fine-tuning on tokenized examples with response-only loss (see
//! `phi_data::sft`): the loop behind `phi finetune` and the `finetune_lora` example.

use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use phi_core::PhiForCausalLM;
use phi_data::sft::{SftExample, batch};

use crate::{AdamWSettings, LrSchedule, clip_grad_norm, masked_causal_lm_loss};

fn tensors(examples: &[&SftExample], pad: u32, device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let (ids, mask, len) = batch(examples, pad);
    let n = examples.len();
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    (
        Tensor::from_data(TensorData::new(ids, [n, len]), device),
        Tensor::from_data(TensorData::new(mask, [n, len - 1]), device),
    )
}

/// Mean response-token loss over `examples` (no gradients), `batch_size` at a time.
pub fn sft_loss(model: &PhiForCausalLM, examples: &[SftExample], batch_size: usize, pad: u32) -> f64 {
    let device = model.device();
    let (mut total, mut count) = (0.0, 0.0);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&SftExample> = chunk.iter().collect();
        let (ids, mask) = tensors(&refs, pad, &device);
        let weight = mask.clone().sum().into_scalar::<f32>() as f64;
        let loss = masked_causal_lm_loss(model.forward(ids.clone()), ids, mask).into_scalar::<f32>() as f64;
        total += loss * weight;
        count += weight;
    }
    if count == 0.0 { f64::NAN } else { total / count }
}

/// Fine-tunes the trainable parameters of `model` (the LoRA adapters, when the base is frozen)
/// for `steps` steps over `examples`, cycling through them in a seeded order. Returns the model
/// (still on the autodiff device) and the per-step training losses.
pub fn finetune(
    mut model: PhiForCausalLM,
    examples: &[SftExample],
    steps: usize,
    batch_size: usize,
    settings: &AdamWSettings,
    schedule: &LrSchedule,
    pad: u32,
    seed: u64,
    mut on_step: impl FnMut(usize, f64),
) -> (PhiForCausalLM, Vec<f64>) {
    let device = model.device();
    let mut optim = settings.build(&model);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut state = seed | 1;
    let mut losses = Vec::with_capacity(steps);
    let mut cursor = order.len();
    for step in 0..steps {
        let mut picked = Vec::with_capacity(batch_size);
        while picked.len() < batch_size.min(examples.len()) {
            if cursor == order.len() {
                // xorshift shuffle per pass
                for i in (1..order.len()).rev() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    order.swap(i, (state % (i as u64 + 1)) as usize);
                }
                cursor = 0;
            }
            picked.push(&examples[order[cursor]]);
            cursor += 1;
        }
        let (ids, mask) = tensors(&picked, pad, &device);
        let loss = masked_causal_lm_loss(model.forward(ids.clone()), ids, mask);
        let value = loss.clone().into_scalar::<f32>() as f64;
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        clip_grad_norm(&model, &mut grads, 1.0);
        model = optim.step(schedule.lr(step), model, grads);
        losses.push(value);
        on_step(step + 1, value);
    }
    (model, losses)
}

