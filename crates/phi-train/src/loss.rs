//! Next-token cross-entropy.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};


/// Mean next-token cross-entropy: position `p` of `logits` `[batch, seq, vocab]` predicts
/// `ids[:, p + 1]`. Pass the whole window, `ids` `[batch, seq + 1]`, with the logits of its first
/// `seq` tokens (every position predicts; what the training objectives do), or `ids` as long as
/// the logits (the last position predicts nothing). On flex this is one fused op with its own
/// backward (`phi_kernels::causal_lm_loss`); elsewhere plain burn ops.
pub fn causal_lm_loss(logits: Tensor<3>, ids: Tensor<2, Int>) -> Tensor<1> {
    phi_kernels::causal_lm_loss(logits, ids)
}

/// Mean cross-entropy of `logits` `[n, vocab]` against class ids `targets` `[n]`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let n = targets.dims()[0];
    let log_probs = log_softmax(logits, 1);
    let picked = log_probs.gather(1, targets.reshape([n, 1]));
    picked.mean().neg()
}

/// Next-token cross-entropy averaged over the positions where `mask` is 1 (SFT: response tokens
/// only; prompt and padding positions contribute exactly zero). `ids` is one longer than the
/// logits or as long, as in [`causal_lm_loss`]; `mask` has one column per predicting position.
pub fn masked_causal_lm_loss(logits: Tensor<3>, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<1> {
    let [b, _, v] = logits.dims();
    let m = phi_kernels::predicting_positions(&logits, &ids);
    assert_eq!(mask.dims(), [b, m], "masked next-token loss: the mask needs one column per predicting position");
    let n = b * m;
    let log_probs = log_softmax(logits.narrow(1, 0, m).reshape([n, v]), 1);
    let picked = log_probs.gather(1, ids.narrow(1, 1, m).reshape([n, 1])).reshape([n]);
    let mask = mask.reshape([n]);
    let count = mask.clone().sum().clamp_min(1.0);
    (picked * mask).sum().neg() / count
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    #[should_panic(expected = "the mask needs one column per predicting position")]
    fn a_mask_of_the_wrong_shape_is_named() {
        let device = Device::default();
        let logits = Tensor::<3>::zeros([2, 5, 11], &device);
        // ids as long as the logits: 4 predicting positions, not 5.
        let _ = masked_causal_lm_loss(logits, Tensor::<2, Int>::zeros([2, 5], &device), Tensor::<2>::ones([2, 5], &device));
    }

    #[test]
    fn masked_loss_counts_only_masked_positions() {
        let device = Device::default();
        let logits = Tensor::<3>::random([2, 5, 11], Distribution::Normal(0.0, 1.0), &device);
        let ids = Tensor::<2, Int>::from_data([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], &device);
        let ones = Tensor::<2>::ones([2, 4], &device);
        let full = masked_causal_lm_loss(logits.clone(), ids.clone(), ones).into_scalar::<f32>();
        let plain = causal_lm_loss(logits.clone(), ids.clone()).into_scalar::<f32>();
        assert!((full - plain).abs() < 1e-6);
        // Only the last two targets of row 0 learned: changing the other targets changes nothing.
        let mask = Tensor::<2>::from_data([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], &device);
        let a = masked_causal_lm_loss(logits.clone(), ids, mask.clone()).into_scalar::<f32>();
        let other = Tensor::<2, Int>::from_data([[1, 9, 9, 4, 5], [0, 0, 0, 0, 0]], &device);
        let b = masked_causal_lm_loss(logits.clone(), other, mask).into_scalar::<f32>();
        assert_eq!(a, b);
        // The two learned positions (2 and 3 of row 0) predict tokens 4 and 5.
        let lp = log_softmax(logits.narrow(0, 0, 1).narrow(1, 2, 2).reshape([2, 11]), 1).into_data().convert::<f32>();
        let lp = lp.as_slice::<f32>().unwrap();
        let expected = -(lp[4] + lp[11 + 5]) / 2.0;
        assert!((a - expected).abs() < 1e-5, "{a} vs {expected}");
    }
}
