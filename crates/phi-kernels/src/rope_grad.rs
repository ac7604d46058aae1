//! Rotary embedding (half-split, partial, heads moved first) as one differentiable op on flex.
//! A rotation's gradient is the opposite rotation: with `y₁ = x₁c₁ + x₂s₁`, `y₂ = x₂c₂ + x₁s₂`
//! (the sign lives in the `sin` table), `dx₁ = g₁c₁ + g₂s₂` and `dx₂ = g₂c₂ + g₁s₁`; pass-through
//! dims copy the gradient. The backward also moves heads back (`[b, h, t, d]` → `[b, t, h, d]`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, DispatchTensor, Flex, backend_extension};
use burn::tensor::TensorData;

use crate::flex::{PhiKernels, contiguous, for_each_chunk, output, table_rows};

type FlexTensor = FloatTensor<Flex>;

#[backend_extension(Flex, Autodiff)]
pub trait PhiRopeGrad: Backend {
    fn phi_rope_differentiable(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, rotary_dims: usize) -> FloatTensor<Self>;
}

pub(crate) fn rope_heads_first(x: DispatchTensor, cos: DispatchTensor, sin: DispatchTensor, rotary_dims: usize) -> DispatchTensor {
    <Dispatch as PhiRopeGrad>::phi_rope_differentiable(x, cos, sin, rotary_dims)
}

impl PhiRopeGrad for Flex {
    fn phi_rope_differentiable(x: FlexTensor, cos: FlexTensor, sin: FlexTensor, rd: usize) -> FlexTensor {
        <Flex as PhiKernels>::phi_rope_heads_first(x, cos, sin, rd)
    }
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    /// The tables, the rotary dims and the number of heads.
    type State = (FlexTensor, FlexTensor, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (cos, sin, rd) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let g = contiguous(grad);
            let shape = g.layout().shape().clone();
            let (b, h, t, d) = (shape[0], shape[1], shape[2], shape[3]);
            let (cos, sin) = (contiguous(cos), contiguous(sin));
            let (gs, cs, ss) = (g.storage::<f32>(), cos.storage::<f32>(), sin.storage::<f32>());
            let per_token = table_rows(cos.layout().shape()[0], b, t);
            let half = rd / 2;
            let mut out = output(b * t * h * d);
            // One task per (batch, position): it writes one contiguous [heads, head_dim] block.
            for_each_chunk(&mut out, h * d, b * t * h * d, |bt, block| {
                let (bi, ti) = (bt / t, bt % t);
                let p = if per_token { bt } else { ti };
                let (c, s) = (&cs[p * d..(p + 1) * d], &ss[p * d..(p + 1) * d]);
                for hi in 0..h {
                    let gr = &gs[((bi * h + hi) * t + ti) * d..((bi * h + hi) * t + ti + 1) * d];
                    let o = &mut block[hi * d..(hi + 1) * d];
                    for j in 0..half {
                        o[j] = gr[j] * c[j] + gr[j + half] * s[j + half];
                        o[j + half] = gr[j + half] * c[j + half] + gr[j] * s[j];
                    }
                    o[rd..].copy_from_slice(&gr[rd..]);
                }
            });
            FlexTensor::from_data(TensorData::new(out, [b, t, h, d]))
        });
    }
}

impl<C: CheckpointStrategy> PhiRopeGrad for Autodiff<Flex, C> {
    fn phi_rope_differentiable(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>, rd: usize) -> FloatTensor<Self> {
        // The tables are constants: only `x` is a parent.
        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match RopeBackward.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = <Flex as PhiKernels>::phi_rope_heads_first(x.into_primitive(), cos.clone(), sin.clone(), rd);
                prep.finish((cos, sin, rd), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<Flex as PhiKernels>::phi_rope_heads_first(x.into_primitive(), cos, sin, rd)),
        }
    }
}
