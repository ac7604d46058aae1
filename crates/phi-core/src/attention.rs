//! Causal self-attention: separate biased `q_proj/k_proj/v_proj/dense` (Phi-1/2) or fused
//! `qkv_proj` + `o_proj` (Phi-3), MHA or GQA, optional per-head `q_layernorm/k_layernorm`.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rayon::prelude::*;

use crate::config::{NormKind, PhiConfig};
use crate::kv_cache::{LayerCache, LayerCaches};
use crate::nn::{Linear, Norm};
use crate::rope::Rope;
use crate::tree::{listing, part};

/// Phi-1/2 projections, each with a bias.
#[derive(Module, Debug)]
pub struct SeparateProjections {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub dense: Linear,
}

/// Phi-3 projections: one `[q; k; v]` matrix and the output projection.
#[derive(Module, Debug)]
pub struct FusedProjections {
    pub qkv_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Module, Debug)]
pub enum Projections {
    Separate(SeparateProjections),
    Fused(FusedProjections),
}

#[derive(Module, Debug)]
pub struct PhiAttention {
    pub proj: Projections,
    pub q_layernorm: Option<Norm>,
    pub k_layernorm: Option<Norm>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub num_kv_heads: usize,
    #[module(skip)]
    pub head_dim: usize,
}

listing!(PhiAttention, |this, key, out| {
    let PhiAttention { proj, q_layernorm, k_layernorm, .. } = this;
    match proj {
        Projections::Separate(SeparateProjections { q_proj, k_proj, v_proj, dense }) => {
            part(out, key, "q_proj", q_proj);
            part(out, key, "k_proj", k_proj);
            part(out, key, "v_proj", v_proj);
            part(out, key, "dense", dense);
        }
        Projections::Fused(FusedProjections { qkv_proj, o_proj }) => {
            part(out, key, "qkv_proj", qkv_proj);
            part(out, key, "o_proj", o_proj);
        }
    }
    part(out, key, "q_layernorm", q_layernorm);
    part(out, key, "k_layernorm", k_layernorm);
});

impl PhiAttention {
    /// An empty attention block of `c`'s layout, to be loaded (see [`crate::tree`]).
    pub fn new(c: &PhiConfig, device: &Device) -> Self {
        let (h, hd, bias) = (c.hidden_size, c.head_dim, c.linear_bias);
        let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let linear = |d_in, d_out| Linear::new(d_in, d_out, bias, device);
        let proj = if c.fused_qkv {
            Projections::Fused(FusedProjections { qkv_proj: linear(h, q + 2 * kv), o_proj: linear(q, h) })
        } else {
            Projections::Separate(SeparateProjections {
                q_proj: linear(h, q),
                k_proj: linear(h, kv),
                v_proj: linear(h, kv),
                dense: linear(q, h),
            })
        };
        let head_norm = || c.qk_layernorm.then(|| Norm::new(NormKind::LayerNorm, hd, c.norm_eps, device));
        PhiAttention {
            proj,
            q_layernorm: head_norm(),
            k_layernorm: head_norm(),
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: hd,
        }
    }

    /// `x`: `[batch, seq, hidden]` → `[batch, seq, hidden]`. With a cache, `x` holds the new
    /// tokens only and the cache supplies (and receives) the keys and values before them; with
    /// one cache per row, each row is its own sequence at its own length.
    pub fn forward<'c>(&self, x: Tensor<3>, rope: &Rope, cache: impl Into<LayerCaches<'c>>) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // q and k come out of RoPE heads-first; v is swapped to match.
        let (q, k, v) = match &self.proj {
            Projections::Separate(p) => {
                let q = p.q_proj.forward(x.clone()).reshape([b, t, nh, hd]);
                let k = p.k_proj.forward(x.clone()).reshape([b, t, nkv, hd]);
                let v = p.v_proj.forward(x).reshape([b, t, nkv, hd]);
                let (q, k) = match (&self.q_layernorm, &self.k_layernorm) {
                    (Some(qn), Some(kn)) => (qn.forward(q), kn.forward(k)),
                    _ => (q, k),
                };
                (rope.apply(q), rope.apply(k), v.swap_dims(1, 2))
            }
            Projections::Fused(p) => {
                let qkv = p.qkv_proj.forward(x).reshape([b, t, nh + 2 * nkv, hd]);
                let v = qkv.clone().narrow(2, nh + nkv, nkv).swap_dims(1, 2);
                // q and k heads are adjacent: rotate them in one pass.
                let qk = rope.apply(qkv.narrow(2, 0, nh + nkv));
                (qk.clone().narrow(1, 0, nh), qk.narrow(1, nh, nkv), v)
            }
        };
        let out = match (cache.into(), rope.segments()) {
            // Packed rows (training, no cache): each sequence attends to itself.
            (LayerCaches::None, Some(segments)) => phi_kernels::packed_causal_attention(q, k, v, segments),
            (LayerCaches::None, None) => phi_kernels::causal_attention(q, k, v),
            (LayerCaches::Batch(cache), _) => {
                let (k, v) = cache.append(k, v);
                phi_kernels::causal_attention(q, k, v)
            }
            // Separate sequences: the projections ran as one batch; attention reads each
            // row's own keys (a few hundred bytes per token at decode, against the weights).
            (LayerCaches::PerRow(caches), _) => {
                assert_eq!(caches.len(), b, "one cache per row");
                let row = |(i, cache): (usize, &mut LayerCache)| {
                    let (k, v) = cache.append(k.clone().narrow(0, i, 1), v.clone().narrow(0, i, 1));
                    phi_kernels::causal_attention(q.clone().narrow(0, i, 1), k, v)
                };
                // On the CPU the rows' attention runs on every core: a decode step's attention
                // is a few small calls a row, which on the calling thread alone left the other
                // cores idle. Each row makes the same kernel call either way, so its values do
                // not depend on the batch.
                let rows: Vec<Tensor<4>> = if b > 1 && phi_kernels::runs_fused(&q) {
                    caches.into_par_iter().enumerate().map(row).collect()
                } else {
                    caches.into_iter().enumerate().map(row).collect()
                };
                Tensor::cat(rows, 0)
            }
            // Separate sequences' new tokens one after another in one row: each run attends to
            // its own cache and itself, through the call it makes alone (`[1, heads, len, hd]`
            // queries over its keys), so its values do not depend on the other runs.
            (LayerCaches::Runs(runs), _) => {
                assert_eq!(b, 1, "runs of sequences share one row");
                assert_eq!(runs.iter().map(|(_, len)| len).sum::<usize>(), t, "the runs cover the row");
                let starts: Vec<usize> = runs.iter().scan(0, |at, (_, len)| Some(std::mem::replace(at, *at + len))).collect();
                let run = |((cache, len), start): ((&mut LayerCache, usize), usize)| {
                    let (k, v) = cache.append(k.clone().narrow(2, start, len), v.clone().narrow(2, start, len));
                    phi_kernels::causal_attention(q.clone().narrow(2, start, len), k, v)
                };
                let parts: Vec<Tensor<4>> = if runs.len() > 1 && phi_kernels::runs_fused(&q) {
                    runs.into_par_iter().zip(starts).map(run).collect()
                } else {
                    runs.into_iter().zip(starts).map(run).collect()
                };
                Tensor::cat(parts, 1)
            }
        };
        let out = out.reshape([b, t, nh * hd]);
        match &self.proj {
            Projections::Separate(p) => p.dense.forward(out),
            Projections::Fused(p) => p.o_proj.forward(out),
        }
    }
}
