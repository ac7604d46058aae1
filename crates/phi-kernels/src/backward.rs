//! The step every multi-input backward pass here shares.

use burn::backend::Flex;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::Ops;
use burn::backend::tensor::FloatTensor;

/// Takes the op's output gradient, computes one gradient per input with `f` (skipped when no
/// input needs one), and hands each to its parent node.
pub(crate) fn register_input_grads<S, const N: usize>(
    ops: Ops<S, N>,
    grads: &mut Gradients,
    f: impl FnOnce(S, FloatTensor<Flex>) -> [FloatTensor<Flex>; N],
) {
    let grad = grads.consume::<Flex>(&ops.node);
    if ops.parents.iter().all(Option::is_none) {
        return;
    }
    for (parent, g) in ops.parents.into_iter().zip(f(ops.state, grad)) {
        if let Some(node) = parent {
            grads.register::<Flex>(node.id, g);
        }
    }
}
