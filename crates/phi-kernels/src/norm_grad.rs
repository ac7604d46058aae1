//! LayerNorm and RMSNorm as differentiable ops on flex: one multi-threaded pass over the rows
//! forward, one backward that writes `dx` and reduces `dweight` (and `dbias`) from per-chunk
//! partial sums — instead of burn's mean/variance/broadcast chain and its gradients.
//!
//! With `x̂ = (x − μ)·r`, `r = 1/√(var + eps)` (RMSNorm: `μ = 0`, var = mean x²) and `γ = g ⊙ w`:
//! `dx = r·(γ − mean(γ) − x̂·mean(γ ⊙ x̂))` (RMSNorm without the `mean(γ)` term),
//! `dw = Σ_rows g ⊙ x̂`, `db = Σ_rows g`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, DispatchTensor, Flex, backend_extension};
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::backward::register_input_grads;
use crate::flex::output;

type FlexTensor = FloatTensor<Flex>;

/// Rows per parallel task.
const ROWS: usize = 32;

#[backend_extension(Flex, Autodiff)]
pub trait PhiNormGrad: Backend {
    /// LayerNorm over the last dimension.
    fn phi_layer_norm_differentiable(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
    /// RMSNorm over the last dimension.
    fn phi_rms_norm_differentiable(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
}

pub(crate) fn layer_norm(x: DispatchTensor, w: DispatchTensor, b: DispatchTensor, eps: f64) -> DispatchTensor {
    <Dispatch as PhiNormGrad>::phi_layer_norm_differentiable(x, w, b, eps)
}

pub(crate) fn rms_norm(x: DispatchTensor, w: DispatchTensor, eps: f64) -> DispatchTensor {
    <Dispatch as PhiNormGrad>::phi_rms_norm_differentiable(x, w, eps)
}

fn dense(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 { t } else { t.to_contiguous() }
}

/// `(μ, r)` of one row.
#[inline]
fn stats(x: &[f32], center: bool, eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mu = if center { x.iter().sum::<f32>() / n } else { 0.0 };
    let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / n;
    (mu, 1.0 / (var + eps).sqrt())
}

fn forward(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>, eps: f64) -> FlexTensor {
    let x = dense(x.clone());
    let dims = x.layout().shape().to_vec();
    let dim = dims[dims.len() - 1];
    let (xs, ws) = (x.storage::<f32>(), dense(w.clone()));
    let ws = ws.storage::<f32>().to_vec();
    let bs = b.map(|b| dense(b.clone()).storage::<f32>().to_vec());
    let mut out = output(xs.len());
    out.par_chunks_mut(dim * ROWS).enumerate().for_each(|(c, chunk)| {
        for (r, y) in chunk.chunks_mut(dim).enumerate() {
            let row = &xs[(c * ROWS + r) * dim..(c * ROWS + r + 1) * dim];
            let (mu, rs) = stats(row, bs.is_some(), eps as f32);
            for j in 0..dim {
                y[j] = (row[j] - mu) * rs * ws[j] + bs.as_ref().map_or(0.0, |b| b[j]);
            }
        }
    });
    FlexTensor::from_data(TensorData::new(out, dims))
}

/// `(dx, dw, db)`.
fn backward(x: FlexTensor, w: FlexTensor, g: FlexTensor, center: bool, eps: f64) -> (FlexTensor, FlexTensor, FlexTensor) {
    let (x, w, g) = (dense(x), dense(w), dense(g));
    let dims = x.layout().shape().to_vec();
    let dim = dims[dims.len() - 1];
    let (xs, ws, gs) = (x.storage::<f32>(), w.storage::<f32>(), g.storage::<f32>());
    let mut dx = output(xs.len());
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(dim * ROWS)
        .enumerate()
        .map(|(c, chunk)| {
            let (mut dw, mut db) = (vec![0.0f32; dim], vec![0.0f32; dim]);
            let mut xhat = vec![0.0f32; dim];
            for (r, dxr) in chunk.chunks_mut(dim).enumerate() {
                let at = (c * ROWS + r) * dim;
                let (row, gr) = (&xs[at..at + dim], &gs[at..at + dim]);
                let (mu, rs) = stats(row, center, eps as f32);
                let (mut mean_gw, mut mean_gwx) = (0.0f32, 0.0f32);
                for j in 0..dim {
                    xhat[j] = (row[j] - mu) * rs;
                    let gw = gr[j] * ws[j];
                    mean_gw += gw;
                    mean_gwx += gw * xhat[j];
                    dw[j] += gr[j] * xhat[j];
                    db[j] += gr[j];
                }
                let (mean_gw, mean_gwx) = (if center { mean_gw / dim as f32 } else { 0.0 }, mean_gwx / dim as f32);
                for j in 0..dim {
                    dxr[j] = rs * (gr[j] * ws[j] - mean_gw - xhat[j] * mean_gwx);
                }
            }
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0.0f32; dim], vec![0.0f32; dim]);
    for (pw, pb) in partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (
        FlexTensor::from_data(TensorData::new(dx, dims)),
        FlexTensor::from_data(TensorData::new(dw, [dim])),
        FlexTensor::from_data(TensorData::new(db, [dim])),
    )
}

impl PhiNormGrad for Flex {
    fn phi_layer_norm_differentiable(x: FlexTensor, w: FlexTensor, b: FlexTensor, eps: f64) -> FlexTensor {
        forward(&x, &w, Some(&b), eps)
    }

    fn phi_rms_norm_differentiable(x: FlexTensor, w: FlexTensor, eps: f64) -> FlexTensor {
        forward(&x, &w, None, eps)
    }
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = (FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        register_input_grads(ops, grads, |(x, w, eps), g| {
            let (dx, dw, db) = backward(x, w, g, true, eps);
            [dx, dw, db]
        });
    }
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    type State = (FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        register_input_grads(ops, grads, |(x, w, eps), g| {
            let (dx, dw, _) = backward(x, w, g, false, eps);
            [dx, dw]
        });
    }
}

impl<C: CheckpointStrategy> PhiNormGrad for Autodiff<Flex, C> {
    fn phi_layer_norm_differentiable(x: FloatTensor<Self>, w: FloatTensor<Self>, b: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        match LayerNormBackward.prepare::<C>([x.node(), w.node(), b.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, w, b) = (x.into_primitive(), w.into_primitive(), b.into_primitive());
                let y = forward(&x, &w, Some(&b), eps);
                prep.finish((x, w, eps), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&x.into_primitive(), &w.into_primitive(), Some(&b.into_primitive()), eps)),
        }
    }

    fn phi_rms_norm_differentiable(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        match RmsNormBackward.prepare::<C>([x.node(), w.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (x, w) = (x.into_primitive(), w.into_primitive());
                let y = forward(&x, &w, None, eps);
                prep.finish((x, w, eps), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&x.into_primitive(), &w.into_primitive(), None, eps)),
        }
    }
}
