//! # phi-kernels
//!
//! Fused kernels for the element-wise work that dominates a Phi forward pass on burn's `flex`
//! CPU backend, where every unary op is a single-threaded scalar loop (`tanh`, `exp` and
//! `sigmoid` call libm per element) and each op is a full pass over memory.
//!
//! Each function here has one meaning and up to three implementations, chosen from the tensor:
//! - flex f32 outside autodiff: a fused, multi-threaded kernel (burn's backend-extension
//!   mechanism);
//! - flex f32 under `Autodiff<Flex>`: the same forward kernel registered as one autodiff op with a
//!   hand-written backward pass (`*_grad` modules), so the graph holds one node per op instead of
//!   a chain of full-size intermediates;
//! - anything else (GPU backends, bf16/f16, other dtypes): the same math as ordinary burn tensor
//!   ops (the `*_ops` functions), whose gradients burn derives.
//!
//! `layer_norm` has no inference kernel of its own: outside autodiff it is burn's `layer_norm`.
//! Callers never choose; tests check that the paths agree, gradients included.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Int, Tensor};
//!
//! let device = Device::default();
//! let logits = Tensor::<3>::random([2, 5, 11], Distribution::Normal(0.0, 1.0), &device);
//! let ids = Tensor::<2, Int>::from_data([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], &device);
//! // Next-token cross-entropy: the fused kernel on flex, plain ops elsewhere — the same number.
//! let fused = phi_kernels::causal_lm_loss(logits.clone(), ids.clone()).into_scalar::<f32>();
//! let plain = phi_kernels::causal_lm_loss_ops(logits, ids).into_scalar::<f32>();
//! assert!((fused - plain).abs() < 1e-5);
//! ```

mod attention_grad;
mod backward;
mod cross_entropy;
mod flex;
mod gelu_grad;
mod math;
mod norm_grad;
pub mod packed;
mod qrows;
mod rope_grad;
pub mod rows;
mod segments;
mod swiglu_grad;

use burn::backend::DispatchDevice;
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Int, Tensor};

pub use math::{WEIGHT_BLOCK, fast_exp, gelu_tanh_scalar, softmax_weights};
pub use segments::Segments;

/// Whether `t` can take the fused flex path: a flex f32 tensor outside autodiff.
fn fused<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().as_dispatch(), DispatchDevice::Flex(_)) && t.dtype() == DType::F32
}

/// Whether `t` takes the fused CPU kernels: a flex f32 tensor outside autodiff. Callers use it
/// to run independent kernel calls side by side on the CPU's threads (a GPU queues them anyway).
pub fn runs_fused<const D: usize>(t: &Tensor<D>) -> bool {
    fused(t)
}

/// Whether `t` lives on flex, directly or under autodiff.
fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    match t.device().as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(d) => matches!(d.clone().inner(), DispatchDevice::Flex(_)),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Mean next-token cross-entropy of `logits` `[batch, seq, vocab]`: position `p` predicts
/// `ids[:, p + 1]`. `ids` is `[batch, seq + 1]` — a training window whose first `seq` tokens went
/// through the model, so every position predicts and the model never runs a position it cannot
/// score — or `[batch, seq]`, the last position then predicting nothing. On flex (f32) one fused
/// op with its own backward, else [`causal_lm_loss_ops`].
///
/// # Panics
/// When `ids` is neither one longer than the logits nor as long.
pub fn causal_lm_loss(logits: Tensor<3>, ids: Tensor<2, Int>) -> Tensor<1> {
    predicting_positions(&logits, &ids);
    if on_flex(&logits) && logits.dtype() == DType::F32 {
        return Tensor::from_dispatch(cross_entropy::causal_lm_loss(logits.into_dispatch(), ids.into_dispatch()));
    }
    causal_lm_loss_ops(logits, ids)
}

/// [`causal_lm_loss`] as plain burn ops (log-softmax, gather, mean).
pub fn causal_lm_loss_ops(logits: Tensor<3>, ids: Tensor<2, Int>) -> Tensor<1> {
    let [b, _, v] = logits.dims();
    let m = predicting_positions(&logits, &ids);
    let n = b * m;
    let log_probs = burn::tensor::activation::log_softmax(logits.narrow(1, 0, m).reshape([n, v]), 1);
    log_probs.gather(1, ids.narrow(1, 1, m).reshape([n, 1])).mean().neg()
}

/// How many positions of each sequence predict a next id in [`causal_lm_loss`]: `seq` when
/// `ids` is one longer than the logits, `seq − 1` when as long.
pub fn predicting_positions(logits: &Tensor<3>, ids: &Tensor<2, Int>) -> usize {
    let ([b, t, _], [bi, s]) = (logits.dims(), ids.dims());
    assert!(
        b == bi && (s == t || s == t + 1),
        "next-token loss: logits [{b}, {t}, _] against ids [{bi}, {s}]; expected ids [{b}, {}] or [{b}, {t}]",
        t + 1
    );
    s - 1
}

/// `x · w (+ b)` for `x` `[…, k]` and `w` `[k, n]`: burn's `linear`, except that on flex (f32,
/// outside autodiff) a product of at most [`rows::MAX_ROWS`] rows — a decode step, one sequence's
/// or a batch's, or a short prompt — runs [`rows::matmul_rows`], which reads the weights in place
/// on every core, and whose rows do not depend on each other (a sequence decoded in a batch gets
/// the logits it gets alone).
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
///
/// let device = Device::default();
/// let x = Tensor::<3>::random([2, 3, 8], Distribution::Normal(0.0, 1.0), &device);
/// let w = Tensor::<2>::random([8, 5], Distribution::Normal(0.0, 1.0), &device);
/// let y = phi_kernels::linear(x.clone(), w.clone(), None);
/// let plain = burn::tensor::module::linear(x, w, None);
/// assert!(y.sub(plain).abs().max().into_scalar::<f32>() < 1e-5);
/// ```
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    if rows <= rows::MAX_ROWS && fused(&x) && fused(&weight) {
        let [k, n] = weight.dims();
        let y = Tensor::<2>::from_dispatch(flex::matmul_rows(x.reshape([rows, k]).into_dispatch(), weight.into_dispatch()));
        let mut shape = dims;
        shape[D - 1] = n;
        let y = y.reshape(shape);
        return match bias {
            Some(b) => y + b.unsqueeze(),
            None => y,
        };
    }
    burn::tensor::module::linear(x, weight, bias)
}

/// `gelu_new` / `gelu_pytorch_tanh`: `0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))`.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if fused(&x) {
        return Tensor::from_dispatch(flex::gelu_tanh(x.into_dispatch()));
    }
    if on_flex(&x) && x.dtype() == DType::F32 {
        // Under autodiff: the fused kernel with its own backward pass.
        return Tensor::from_dispatch(gelu_grad::gelu_tanh(x.into_dispatch()));
    }
    gelu_tanh_ops(x)
}

/// [`gelu_tanh`] as plain burn ops, via `(1 + tanh u) / 2 = σ(2u)`.
pub fn gelu_tanh_ops<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const C: f64 = 2.0 * 0.797_884_560_802_865_4; // 2·√(2/π)
    let two_u = x.clone() * (x.clone().square() * (0.044715 * C) + C);
    x * sigmoid(two_u)
}

/// Half-split rotary embedding (HF `rotate_half` layout) with the heads moved first.
///
/// `x` is `[batch, seq, heads, head_dim]` (any strides); `cos` and `sin` are `[seq, head_dim]`
/// tables shared by the batch, or `[batch · seq, head_dim]` with a row per token (packed rows,
/// whose positions restart at each sequence), over the whole head: on the first `rotary_dims` dims `cos` holds cos and `sin` holds
/// `-sin` on the first half and `+sin` on the second, and beyond `rotary_dims` `cos` is 1 and `sin`
/// 0 (those dims pass through). Returns `[batch, heads, seq, head_dim]`, contiguous — the layout
/// attention wants, so no separate transpose copy follows.
pub fn rope_heads_first(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>, rotary_dims: usize) -> Tensor<4> {
    if fused(&x) && fused(&cos) && fused(&sin) {
        let out = flex::rope_heads_first(x.into_dispatch(), cos.into_dispatch(), sin.into_dispatch(), rotary_dims);
        return Tensor::from_dispatch(out);
    }
    if on_flex(&x) && [x.dtype(), cos.dtype(), sin.dtype()].iter().all(|d| *d == DType::F32) {
        let out = rope_grad::rope_heads_first(x.into_dispatch(), cos.into_dispatch(), sin.into_dispatch(), rotary_dims);
        return Tensor::from_dispatch(out);
    }
    rope_heads_first_ops(x, cos, sin, rotary_dims)
}

/// [`rope_heads_first`] as plain burn ops.
pub fn rope_heads_first_ops(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>, rotary_dims: usize) -> Tensor<4> {
    let [b, t, _, hd] = x.dims();
    let per_token = flex::table_rows(cos.dims()[0], b, t);
    let half = rotary_dims / 2;
    // rotate_half on the rotary dims, the sign lives in `sin`; pass-through dims meet sin = 0.
    let mut parts = vec![x.clone().narrow(3, half, half), x.clone().narrow(3, 0, half)];
    if rotary_dims < hd {
        parts.push(x.clone().narrow(3, rotary_dims, hd - rotary_dims));
    }
    let rotated = Tensor::cat(parts, 3);
    let rows = if per_token { b } else { 1 };
    let (cos, sin) = (cos.reshape([rows, t, 1, hd]), sin.reshape([rows, t, 1, hd]));
    (x * cos + rotated * sin).swap_dims(1, 2)
}

/// Causal softmax attention, `softmax(q kᵀ / √head_dim) v`, with the causal rule aligned to the
/// *end* of the keys (query `i` of `t` sees keys `0..=s - t + i`, as with a KV cache) and GQA
/// (query head `h` reads key/value head `h / (heads / kv_heads)`).
///
/// `q` is `[batch, heads, t, head_dim]`, `k` and `v` `[batch, kv_heads, s, head_dim]` (any
/// strides), `s ≥ t`. Returns `[batch, t, heads, head_dim]`: tokens first, so merging the heads
/// for the output projection is a free reshape. The flex kernel reads the inputs in place, works
/// in blocks of query rows and never computes the masked upper triangle.
pub fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    attention_in(q, k, v, None)
}

/// [`causal_attention`] over packed rows (no cache, `s == t`): each sequence of `segments`
/// attends causally to itself only. The flex kernel runs each sequence as its own block
/// triangle, so packing costs no attention work across sequences.
///
/// # Panics
/// When `segments` does not describe `[batch, t]` or `s != t`.
pub fn packed_causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, segments: &Segments) -> Tensor<4> {
    attention_in(q, k, v, Some(segments))
}

fn attention_in(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, segments: Option<&Segments>) -> Tensor<4> {
    if fused(&q) && fused(&k) && fused(&v) {
        return Tensor::from_dispatch(flex::causal_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), segments.cloned()));
    }
    if on_flex(&q) && q.dtype() == DType::F32 && k.dtype() == DType::F32 && v.dtype() == DType::F32 {
        // Under autodiff: the same kernel with a recomputing backward pass.
        return Tensor::from_dispatch(attention_grad::causal_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), segments.cloned()));
    }
    attention_ops(q, k, v, segments)
}

/// [`causal_attention`] through burn's `attention` op.
pub fn causal_attention_ops(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    attention_ops(q, k, v, None)
}

/// [`packed_causal_attention`] through burn's `attention` op, with a block-diagonal causal mask.
pub fn packed_causal_attention_ops(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, segments: &Segments) -> Tensor<4> {
    attention_ops(q, k, v, Some(segments))
}

fn attention_ops(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, segments: Option<&Segments>) -> Tensor<4> {
    let [b, h, t, _] = q.dims();
    let [_, hkv, s, _] = k.dims();
    let (k, v) = (repeat_kv(k, h / hkv), repeat_kv(v, h / hkv));
    let options = |is_causal| AttentionModuleOptions { scale: None, softcap: None, is_causal };
    let device = q.device();
    // Backends disagree on how `is_causal` aligns when t < s: that case gets an explicit mask.
    let out = if let Some(seg) = segments {
        assert!(seg.batch() == b && seg.len() == t && s == t, "packed attention: [{b}, {t}] queries over {s} keys, segments [{}, {}]", seg.batch(), seg.len());
        // Masked: a later key, or a key of another sequence of the row.
        let ids = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(seg.ids(), [b, t]), &device);
        let other = ids.clone().reshape([b, t, 1]).expand([b, t, t]).not_equal(ids.reshape([b, 1, t]).expand([b, t, t]));
        let rows = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([t, 1]).expand([t, t]);
        let cols = Tensor::<1, Int>::arange(0..t as i64, &device).reshape([1, t]).expand([t, t]);
        let later = cols.greater(rows).reshape([1, t, t]).expand([b, t, t]);
        let mask: Tensor<4, Bool> = other.bool_or(later).reshape([b, 1, t, t]).expand([b, h, t, t]);
        attention(q, k, v, Some(mask), None, options(false))
    } else if t == s {
        attention(q, k, v, None, None, options(true))
    } else if t == 1 {
        attention(q, k, v, None, None, options(false))
    } else {
        let rows = (Tensor::<1, Int>::arange(0..t as i64, &device) + (s - t) as i64).reshape([t, 1]).expand([t, s]);
        let cols = Tensor::<1, Int>::arange(0..s as i64, &device).reshape([1, s]).expand([t, s]);
        let mask: Tensor<4, Bool> = cols.greater(rows).reshape([1, 1, t, s]);
        attention(q, k, v, Some(mask), None, options(false))
    };
    out.swap_dims(1, 2)
}

/// GQA: each key/value head serves `n_rep` consecutive query heads (HF `repeat_kv`).
fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, nkv, s, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, nkv, n_rep, s, hd]).reshape([b, nkv * n_rep, s, hd])
}

/// SwiGLU on a fused `[gate; up]` projection: `up · silu(gate)`, gate the first half of the last
/// dimension (Phi-3's `gate_up_proj`). `[.., 2i]` → `[.., i]`.
pub fn silu_glu<const D: usize>(gate_up: Tensor<D>) -> Tensor<D> {
    if fused(&gate_up) {
        return Tensor::from_dispatch(flex::silu_glu(gate_up.into_dispatch()));
    }
    if on_flex(&gate_up) && gate_up.dtype() == DType::F32 {
        return Tensor::from_dispatch(swiglu_grad::silu_glu(gate_up.into_dispatch()));
    }
    silu_glu_ops(gate_up)
}

/// [`silu_glu`] as plain burn ops.
pub fn silu_glu_ops<const D: usize>(gate_up: Tensor<D>) -> Tensor<D> {
    let half = gate_up.dims()[D - 1] / 2;
    let gate = gate_up.clone().narrow(D - 1, 0, half);
    gate_up.narrow(D - 1, half, half) * silu(gate)
}

/// RMSNorm over the last dimension, as HF's Phi3RMSNorm: `weight · x / √(mean(x²) + eps)`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    if fused(&x) && fused(&weight) {
        return Tensor::from_dispatch(flex::rms_norm(x.into_dispatch(), weight.into_dispatch(), eps));
    }
    if on_flex(&x) && x.dtype() == DType::F32 && weight.dtype() == DType::F32 {
        return Tensor::from_dispatch(norm_grad::rms_norm(x.into_dispatch(), weight.into_dispatch(), eps));
    }
    rms_norm_ops(x, weight, eps)
}

/// LayerNorm over the last dimension (`torch.nn.LayerNorm`). Under autodiff on flex one op with
/// its own backward; otherwise burn's `layer_norm`.
pub fn layer_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> Tensor<D> {
    if !fused(&x) && on_flex(&x) && [x.dtype(), weight.dtype(), bias.dtype()].iter().all(|d| *d == DType::F32) {
        return Tensor::from_dispatch(norm_grad::layer_norm(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), eps));
    }
    burn::tensor::module::layer_norm(x, weight, Some(bias), eps)
}

/// [`rms_norm`] as plain burn ops.
pub fn rms_norm_ops<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    let inv_rms = (x.clone().square().mean_dim(D - 1) + eps).sqrt().recip();
    x * inv_rms * weight.unsqueeze()
}
