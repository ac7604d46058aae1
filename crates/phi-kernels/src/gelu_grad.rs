//! `gelu_new` as one differentiable op on flex: the forward is the fused multi-threaded kernel,
//! the backward one multi-threaded pass `dx = g · gelu'(x)`. Through burn's ops the same
//! activation is six element-wise tensors forward (square, scale, add, multiply, sigmoid,
//! multiply) and about twice that backward, each single-threaded on flex.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, DispatchTensor, Flex, backend_extension};

use crate::flex::{PhiKernels, contiguous, for_each_chunk, CHUNK};
use crate::math::gelu_tanh_grad_slice;

type FlexTensor = FloatTensor<Flex>;

#[backend_extension(Flex, Autodiff)]
pub trait PhiGeluGrad: Backend {
    fn phi_gelu_tanh_differentiable(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

pub(crate) fn gelu_tanh(x: DispatchTensor) -> DispatchTensor {
    <Dispatch as PhiGeluGrad>::phi_gelu_tanh_differentiable(x)
}

impl PhiGeluGrad for Flex {
    fn phi_gelu_tanh_differentiable(x: FlexTensor) -> FlexTensor {
        <Flex as PhiKernels>::phi_gelu_tanh(x)
    }
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let x = contiguous(ops.state);
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            // The incoming gradient becomes dx in place when it is not shared.
            let mut g = contiguous(grad);
            let n = g.layout().shape().num_elements();
            let xs = &x.storage::<f32>()[..n];
            let gs = &mut g.storage_mut::<f32>()[..n];
            for_each_chunk(gs, CHUNK, n, |i, chunk| {
                let len = chunk.len();
                gelu_tanh_grad_slice(chunk, &xs[i * CHUNK..i * CHUNK + len]);
            });
            g
        });
    }
}

impl<C: CheckpointStrategy> PhiGeluGrad for Autodiff<Flex, C> {
    fn phi_gelu_tanh_differentiable(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match GeluBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = x.into_primitive();
                // Shared with the state, so the kernel writes a new buffer instead of in place.
                let y = <Flex as PhiKernels>::phi_gelu_tanh(x.clone());
                prep.finish(x, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as PhiKernels>::phi_gelu_tanh(x.into_primitive())),
        }
    }
}
