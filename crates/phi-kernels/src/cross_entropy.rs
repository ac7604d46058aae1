//! The causal-LM loss as one op with its own backward pass.
//!
//! Written with burn's ops, the loss over `[batch, seq, vocab]` logits is a chain of full-size
//! tensors — max, shifted logits, their exp, the log-sum-exp, the log-softmax, a gather, and in
//! the backward as many again (exp recomputed, a zero tensor scattered into) — each a fresh
//! 64 MB buffer on the bench shape. Here the forward reads the logits once (a log-sum-exp per
//! row, kept for the backward) and the backward writes `softmax − one-hot` once.
//!
//! Position `p` predicts `ids[:, p + 1]`; the loss is the mean over the positions that have a
//! next id. `ids` is either one longer than the logits (a training window of `seq + 1` tokens
//! whose first `seq` went through the model: every position predicts, and the model never sees a
//! position it cannot score) or as long (the last position predicts nothing), like
//! `F.cross_entropy(logits[:, :m].flatten(0, 1), ids[:, 1:m + 1].flatten())` with `m` the number of
//! predicting positions.

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
    /// Mean next-token cross-entropy of `logits` `[b, t, v]` against `ids` `[b, t + 1]` or
    /// `[b, t]`; shape `[1]`.
    fn phi_causal_lm_loss(logits: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self>;
}

pub(crate) fn causal_lm_loss(logits: DispatchTensor, ids: DispatchTensor) -> DispatchTensor {
    <Dispatch as PhiLossKernel>::phi_causal_lm_loss(logits, ids)
}

/// Target ids of each predicting row, `ids[b, p + 1]` for row `b·m + p`, and `m`: the number of
/// predicting positions of each of the `t` logits rows (`t` when `ids` is one longer, else `t − 1`).
fn targets(ids: IntTensor<Flex>, t: usize) -> (Vec<usize>, usize) {
    let data = ids.into_data();
    let s = data.shape()[1];
    assert!(s == t || s == t + 1, "next-token loss: ids have {s} positions, logits {t}: expected {t} or {}", t + 1);
    let all: Vec<i64> = data.convert::<i64>().try_into_vec::<i64>().expect("int ids");
    let rows = all.chunks(s).flat_map(|row| row[1..].iter().map(|&id| id as usize)).collect();
    (rows, s - 1)
}

/// Forward without gradients: the mean loss (the logits are left as they are).
fn forward(logits: &FlexTensor, ids: IntTensor<Flex>) -> f32 {
    let logits = if logits.is_contiguous() && logits.layout().start_offset() == 0 { logits.clone() } else { logits.to_contiguous() };
    let [b, t, v] = [logits.layout().shape()[0], logits.layout().shape()[1], logits.layout().shape()[2]];
    let xs = logits.storage::<f32>();
    let (tgt, m) = targets(ids, t);
    let n = b * m;
    let mut lse = vec![0.0f32; n];
    lse.par_iter_mut().enumerate().with_min_len(16).for_each(|(r, out)| {
        let (bi, p) = (r / m, r % m);
        row_logsumexp(&xs[(bi * t + p) * v..(bi * t + p + 1) * v], out);
    });
    let total: f64 = (0..n)
        .map(|r| {
            let (bi, p) = (r / m, r % m);
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
fn forward_to_probs(logits: FlexTensor, ids: IntTensor<Flex>) -> (f32, FlexTensor, (Vec<usize>, usize)) {
    let mut logits = crate::flex::contiguous(logits);
    let [b, t, v] = [logits.layout().shape()[0], logits.layout().shape()[1], logits.layout().shape()[2]];
    let (tgt, m) = targets(ids, t);
    let n = b * m;
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
            if p == m {
                return 0.0; // ids as long as the logits: the last position predicts nothing
            }
            let target = tgt[bi * m + p];
            let picked = x[target];
            let mut lse = 0.0;
            softmax_row_in_place(x, &mut lse);
            (lse - picked) as f64
        })
        .sum();
    ((total / n as f64) as f32, logits, (tgt, m))
}

/// Backward: `d logits = g/n · (softmax − one-hot)` on predicting rows, 0 on a last position that
/// predicts nothing, written over the probabilities.
fn backward(mut probs: FlexTensor, (tgt, m): &(Vec<usize>, usize), grad: FlexTensor) -> FlexTensor {
    let shape = probs.layout().shape().clone();
    let (b, t, v, m) = (shape[0], shape[1], shape[2], *m);
    let g = grad.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 grad")[0];
    let scale = g / (b * m) as f32;
    probs.storage_mut::<f32>()[..b * t * v].par_chunks_mut(v).enumerate().with_min_len(16).for_each(|(row, o)| {
        let (bi, p) = (row / t, row % t);
        if p == m {
            o.fill(0.0);
            return;
        }
        o.iter_mut().for_each(|x| *x *= scale);
        o[tgt[bi * m + p]] -= scale;
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
    /// The softmax probabilities, the target of each predicting row and the number of predicting
    /// positions per sequence.
    type State = (FlexTensor, (Vec<usize>, usize));

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
