//! Causal attention as one differentiable op on flex: the blocked forward kernel, and a
//! FlashAttention-style backward that recomputes each block's probabilities instead of keeping
//! the `[batch, heads, seq, seq]` score tensors that burn's decomposed attention holds (scores,
//! mask, softmax, and their gradients: several 16 MB buffers per layer on the bench shape).
//!
//! Per query block of one head, with `P = softmax(scale · Q Kᵀ)` recomputed:
//! `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale`, `dQ = dS K`,
//! `dK += dSᵀ Q`. One task per (batch, key/value head) owns that head's `dK`/`dV` and the `dQ`
//! of the query heads that read it (GQA), so tasks never write the same memory.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, DispatchTensor, Flex, backend_extension};
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::backward::register_input_grads;
use crate::flex::{OutPtr, PhiAttentionKernel, output};
use crate::math::masked_softmax_row;
use crate::segments::{Segments, Span, spans};

type FlexTensor = FloatTensor<Flex>;

/// Query rows per block (as the forward kernel).
const BLOCK: usize = 64;

#[backend_extension(Flex, Autodiff)]
pub trait PhiAttentionGrad: Backend {
    fn phi_causal_attention_differentiable(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, segments: Option<Segments>) -> FloatTensor<Self>;
}

pub(crate) fn causal_attention(q: DispatchTensor, k: DispatchTensor, v: DispatchTensor, segments: Option<Segments>) -> DispatchTensor {
    <Dispatch as PhiAttentionGrad>::phi_causal_attention_differentiable(q, k, v, segments)
}

impl PhiAttentionGrad for Flex {
    fn phi_causal_attention_differentiable(q: FlexTensor, k: FlexTensor, v: FlexTensor, segments: Option<Segments>) -> FlexTensor {
        <Flex as PhiAttentionKernel>::phi_causal_attention(q, k, v, segments)
    }
}

fn dense(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 { t } else { t.to_contiguous() }
}

/// Gradients of `q` `[b, h, t, d]`, `k`, `v` `[b, hkv, s, d]` given `d_out` `[b, t, h, d]`
/// (with `segments`, each packed sequence attended only to itself).
fn backward(q: FlexTensor, k: FlexTensor, v: FlexTensor, d_out: FlexTensor, segments: Option<&Segments>) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (q, k, v, d_out) = (dense(q), dense(k), dense(v), dense(d_out));
    let qs = q.layout().shape().clone();
    let (b, h, t, d) = (qs[0], qs[1], qs[2], qs[3]);
    let (hkv, s) = (k.layout().shape()[1], k.layout().shape()[2]);
    let rep = h / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let ptr = |x: &FlexTensor| OutPtr(x.storage::<f32>().as_ptr() as *mut f32);
    let (qp, kp, vp, gp) = (ptr(&q), ptr(&k), ptr(&v), ptr(&d_out));
    let mut dq = output(b * h * t * d);
    let (mut dk, mut dv) = (vec![0.0f32; b * hkv * s * d], vec![0.0f32; b * hkv * s * d]);
    let (dqp, dkp, dvp) = (OutPtr(dq.as_mut_ptr()), OutPtr(dk.as_mut_ptr()), OutPtr(dv.as_mut_ptr()));
    let run = move |task: usize| {
        let (bi, kvh) = (task / hkv, task % hkv);
        let kv_off = (bi * hkv + kvh) * s * d;
        let mut p = vec![0.0f32; BLOCK.min(t) * s];
        let mut dp = vec![0.0f32; BLOCK.min(t) * s];
        // SAFETY: every pointer below stays inside its buffer (offsets from the shapes above),
        // and this task alone writes dK/dV of (bi, kvh) and dQ of its query heads.
        unsafe {
            let (kh, vh) = (kp.get().add(kv_off), vp.get().add(kv_off));
            let (dkh, dvh) = (dkp.get().add(kv_off), dvp.get().add(kv_off));
            for hi in kvh * rep..(kvh + 1) * rep {
                let qh = qp.get().add((bi * h + hi) * t * d);
                let dqh = dqp.get().add((bi * h + hi) * t * d);
                for Span { q0, k0, n, extra } in spans(segments, bi, t, s) {
                    // A span's keys and values, and their gradients, start at key k0.
                    let (kh, vh, dkh, dvh) = (kh.add(k0 * d), vh.add(k0 * d), dkh.add(k0 * d), dvh.add(k0 * d));
                    for r0 in (0..n).step_by(BLOCK) {
                        let rows = BLOCK.min(n - r0);
                        let kv_len = extra + r0 + rows;
                        let (p, dp) = (&mut p[..rows * kv_len], &mut dp[..rows * kv_len]);
                        let (q_blk, dq_blk) = (qh.add((q0 + r0) * d), dqh.add((q0 + r0) * d));
                        let do_blk = gp.get().add((bi * t + q0 + r0) * h * d + hi * d);
                        // P = softmax(scale · Q_blk Kᵀ), causal.
                        gemm::gemm(rows, kv_len, d, p.as_mut_ptr(), 1, kv_len as isize, false, q_blk, 1, d as isize, kh, d as isize, 1, 0.0, scale, false, false, false, gemm::Parallelism::None);
                        for r in 0..rows {
                            masked_softmax_row(&mut p[r * kv_len..(r + 1) * kv_len], extra + r0 + r + 1);
                        }
                        // dV += Pᵀ dO_blk
                        gemm::gemm(kv_len, d, rows, dvh, 1, d as isize, true, p.as_ptr(), kv_len as isize, 1, do_blk, 1, (h * d) as isize, 1.0, 1.0, false, false, false, gemm::Parallelism::None);
                        // dP = dO_blk Vᵀ
                        gemm::gemm(rows, kv_len, d, dp.as_mut_ptr(), 1, kv_len as isize, false, do_blk, 1, (h * d) as isize, vh, d as isize, 1, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
                        // dS = P ⊙ (dP − rowsum(P ⊙ dP)) · scale, into dp.
                        for r in 0..rows {
                            let (pr, dpr) = (&p[r * kv_len..(r + 1) * kv_len], &mut dp[r * kv_len..(r + 1) * kv_len]);
                            let dot: f32 = pr.iter().zip(dpr.iter()).map(|(a, b)| a * b).sum();
                            for (g, &pv) in dpr.iter_mut().zip(pr) {
                                *g = pv * (*g - dot) * scale;
                            }
                        }
                        // dQ_blk = dS K
                        gemm::gemm(rows, d, kv_len, dq_blk, 1, d as isize, false, dp.as_ptr(), 1, kv_len as isize, kh, 1, d as isize, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
                        // dK += dSᵀ Q_blk
                        gemm::gemm(kv_len, d, rows, dkh, 1, d as isize, true, dp.as_ptr(), kv_len as isize, 1, q_blk, 1, d as isize, 1.0, 1.0, false, false, false, gemm::Parallelism::None);
                    }
                }
            }
        }
    };
    if b * h * t * s * d < (1 << 16) {
        (0..b * hkv).for_each(run);
    } else {
        (0..b * hkv).into_par_iter().for_each(run);
    }
    drop((q, k, v, d_out));
    (
        FlexTensor::from_data(TensorData::new(dq, [b, h, t, d])),
        FlexTensor::from_data(TensorData::new(dk, [b, hkv, s, d])),
        FlexTensor::from_data(TensorData::new(dv, [b, hkv, s, d])),
    )
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = (FlexTensor, FlexTensor, FlexTensor, Option<Segments>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        register_input_grads(ops, grads, |(q, k, v, segments), grad| {
            let (dq, dk, dv) = backward(q, k, v, grad, segments.as_ref());
            [dq, dk, dv]
        });
    }
}

impl<C: CheckpointStrategy> PhiAttentionGrad for Autodiff<Flex, C> {
    fn phi_causal_attention_differentiable(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, segments: Option<Segments>) -> FloatTensor<Self> {
        match AttentionBackward.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
                let out = <Flex as PhiAttentionKernel>::phi_causal_attention(q.clone(), k.clone(), v.clone(), segments.clone());
                prep.finish((q, k, v, segments), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(<Flex as PhiAttentionKernel>::phi_causal_attention(q.into_primitive(), k.into_primitive(), v.into_primitive(), segments))
            }
        }
    }
}
