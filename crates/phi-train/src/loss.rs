//! Next-token cross-entropy.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};

/// Mean cross-entropy of `logits[:, :-1]` against `ids[:, 1:]`: every position predicts the
/// next token. `logits` `[batch, seq, vocab]`, `ids` `[batch, seq]`.
pub fn causal_lm_loss(logits: Tensor<3>, ids: Tensor<2, Int>) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    let logits = logits.narrow(1, 0, t - 1);
    let targets = ids.narrow(1, 1, t - 1);
    cross_entropy(logits.reshape([b * (t - 1), v]), targets.reshape([b * (t - 1)]))
}

/// Mean cross-entropy of `logits` `[n, vocab]` against class ids `targets` `[n]`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let n = targets.dims()[0];
    let log_probs = log_softmax(logits, 1);
    let picked = log_probs.gather(1, targets.reshape([n, 1]));
    picked.mean().neg()
}
