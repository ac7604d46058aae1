//! The causal-LM loss as one op with its own backward pass.
//!
//! Written with burn's ops, the loss over `[batch, seq, vocab]` logits is a chain of full-size
//! tensors — max, shifted logits, their exp, the log-sum-exp, the log-softmax, a gather, and in
//! the backward as many again (exp recomputed, a zero tensor scattered into) — each a fresh
//! 64 MB buffer on the bench shape. Here the forward reads the logits once (a log-sum-exp per
//! row, kept for the backward) and the backward writes `softmax − one-hot` once.
//!
//! Positions `0..seq-1` predict `ids[:, 1..]`; the loss is their mean, like
//! `F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, DispatchTensor, Flex, backend_extension};
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::math::{row_logsumexp, softmax_row_in_place};

type FlexTensor = FloatTensor<Flex>;

#[backend_extension(Flex, Autodiff)]
pub trait PhiLossKernel: Backend {
    /// Mean next-token cross-entropy of `logits` `[b, t, v]` against `ids` `[b, t]`; shape `[1]`.
    fn phi_causal_lm_loss(logits: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self>;
}

pub(crate) fn causal_lm_loss(logits: DispatchTensor, ids: DispatchTensor) -> DispatchTensor {
    <Dispatch as PhiLossKernel>::phi_causal_lm_loss(logits, ids)
}

/// Target ids of each predicting row: `ids[b, p + 1]` for row `b·(t−1) + p`.
fn targets(ids: IntTensor<Flex>) -> (Vec<usize>, usize, usize) {
    let data = ids.into_data();
    let [b, t] = [data.shape()[0], data.shape()[1]];
    let all: Vec<i64> = data.convert::<i64>().try_into_vec::<i64>().expect("int ids");
    let rows = (0..b).flat_map(|bi| (1..t).map(move |p| (bi, p))).map(|(bi, p)| all[bi * t + p] as usize).collect();
    (rows, b, t)
}

/// Forward without gradients: the mean loss (the logits are left as they are).
fn forward(logits: &FlexTensor, ids: IntTensor<Flex>) -> f32 {
    let logits = if logits.is_contiguous() && logits.layout().start_offset() == 0 { logits.clone() } else { logits.to_contiguous() };
    let v = logits.layout().shape()[2];
    let xs = logits.storage::<f32>();
    let (tgt, b, t) = targets(ids);
    let n = b * (t - 1);
    let mut lse = vec![0.0f32; n];
    lse.par_iter_mut().enumerate().with_min_len(16).for_each(|(r, out)| {
        let (bi, p) = (r / (t - 1), r % (t - 1));
        row_logsumexp(&xs[(bi * t + p) * v..(bi * t + p + 1) * v], out);
    });
    let total: f64 = (0..n)
        .map(|r| {
            let (bi, p) = (r / (t - 1), r % (t - 1));
            assert!(tgt[r] < v, "target id {} is not below the vocabulary size {v}", tgt[r]);
            (lse[r] - xs[(bi * t + p) * v + tgt[r]]) as f64
        })
        .sum();
    (total / n as f64) as f32
}

/// Forward for training: the mean loss, with the logits buffer turned into softmax
/// probabilities in place (copy-on-write if shared). Nothing else reads the logits afterwards —
/// the head's matmul backward needs its inputs, not its output — so the backward can scale this
/// buffer in place: one exp pass per element, and no new logits-sized allocation.
fn forward_to_probs(logits: FlexTensor, ids: IntTensor<Flex>) -> (f32, FlexTensor, Vec<usize>) {
    let mut logits = crate::flex::contiguous(logits);
    let v = logits.layout().shape()[2];
    let (tgt, b, t) = targets(ids);
    let n = b * (t - 1);
    if let Some(&bad) = tgt.iter().find(|&&id| id >= v) {
        panic!("target id {bad} is not below the vocabulary size {v}");
    }
    let xs = &mut logits.storage_mut::<f32>()[..b * t * v];
    let total: f64 = xs
        .par_chunks_mut(v)
        .enumerate()
        .with_min_len(16)
        .map(|(row, x)| {
            let (bi, p) = (row / t, row % t);
            if p == t - 1 {
                return 0.0; // the last position predicts nothing
            }
            let target = tgt[bi * (t - 1) + p];
            let picked = x[target];
            let mut lse = 0.0;
            softmax_row_in_place(x, &mut lse);
            (lse - picked) as f64
        })
        .sum();
    ((total / n as f64) as f32, logits, tgt)
}

/// Backward: `d logits = g/n · (softmax − one-hot)` on predicting rows, 0 on the last position
/// of each sequence, written over the probabilities.
fn backward(mut probs: FlexTensor, tgt: &[usize], grad: FlexTensor) -> FlexTensor {
    let shape = probs.layout().shape().clone();
    let (b, t, v) = (shape[0], shape[1], shape[2]);
    let g = grad.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 grad")[0];
    let scale = g / (b * (t - 1)) as f32;
    probs.storage_mut::<f32>()[..b * t * v].par_chunks_mut(v).enumerate().with_min_len(16).for_each(|(row, o)| {
        let (bi, p) = (row / t, row % t);
        if p == t - 1 {
            o.fill(0.0);
            return;
        }
        o.iter_mut().for_each(|x| *x *= scale);
        o[tgt[bi * (t - 1) + p]] -= scale;
    });
    probs
}

impl PhiLossKernel for Flex {
    fn phi_causal_lm_loss(logits: FlexTensor, ids: IntTensor<Flex>) -> FlexTensor {
        let loss = forward(&logits, ids);
        FlexTensor::from_data(TensorData::new(vec![loss], [1]))
    }
}

#[derive(Debug)]
struct CausalLmLossBackward;

impl Backward<Flex, 1> for CausalLmLossBackward {
    /// The softmax probabilities and the target of each predicting row.
    type State = (FlexTensor, Vec<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let (probs, tgt) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| backward(probs, &tgt, grad));
    }
}

impl<C: CheckpointStrategy> PhiLossKernel for Autodiff<Flex, C> {
    fn phi_causal_lm_loss(logits: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self> {
        match CausalLmLossBackward.prepare::<C>([logits.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (loss, probs, tgt) = forward_to_probs(logits.into_primitive(), ids);
                prep.finish((probs, tgt), FlexTensor::from_data(TensorData::new(vec![loss], [1])))
            }
            OpsKind::UnTracked(prep) => {
                let loss = forward(&logits.into_primitive(), ids);
                prep.finish(FlexTensor::from_data(TensorData::new(vec![loss], [1])))
            }
        }
    }
}
