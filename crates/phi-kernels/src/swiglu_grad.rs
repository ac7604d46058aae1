//! SwiGLU (`up · silu(gate)` on Phi-3's fused `gate_up_proj`) as one differentiable op on flex:
//! the fused forward kernel, and a one-pass backward that writes both halves of the input
//! gradient, instead of burn's narrow/sigmoid/multiply chain (single-threaded on flex).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, DispatchTensor, Flex, backend_extension};
use burn::tensor::TensorData;

use crate::flex::{PhiRowKernels, contiguous, for_each_chunk, output};
use crate::math::silu_glu_grad_slice;

type FlexTensor = FloatTensor<Flex>;

#[backend_extension(Flex, Autodiff)]
pub trait PhiSwigluGrad: Backend {
    fn phi_silu_glu_differentiable(gate_up: FloatTensor<Self>) -> FloatTensor<Self>;
}

pub(crate) fn silu_glu(gate_up: DispatchTensor) -> DispatchTensor {
    <Dispatch as PhiSwigluGrad>::phi_silu_glu_differentiable(gate_up)
}

impl PhiSwigluGrad for Flex {
    fn phi_silu_glu_differentiable(gate_up: FlexTensor) -> FlexTensor {
        <Flex as PhiRowKernels>::phi_silu_glu(gate_up)
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 1> for SwigluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let gate_up = contiguous(ops.state);
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = contiguous(grad);
            let dims = gate_up.layout().shape().to_vec();
            let width = dims[dims.len() - 1];
            let half = width / 2;
            let rows = gate_up.layout().shape().num_elements() / width;
            let (src, g) = (gate_up.storage::<f32>(), grad.storage::<f32>());
            let mut out = output(rows * width);
            for_each_chunk(&mut out, width, rows * width, |r, row| {
                silu_glu_grad_slice(row, &g[r * half..(r + 1) * half], &src[r * width..(r + 1) * width]);
            });
            FlexTensor::from_data(TensorData::new(out, dims))
        });
    }
}

impl<C: CheckpointStrategy> PhiSwigluGrad for Autodiff<Flex, C> {
    fn phi_silu_glu_differentiable(gate_up: FloatTensor<Self>) -> FloatTensor<Self> {
        match SwigluBackward.prepare::<C>([gate_up.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = gate_up.into_primitive();
                let y = <Flex as PhiRowKernels>::phi_silu_glu(x.clone());
                prep.finish(x, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as PhiRowKernels>::phi_silu_glu(gate_up.into_primitive())),
        }
    }
}
