//! Where a forward pass's time goes, op by op: each building block of a Phi layer timed alone on
//! the bench-small shape of `phi bench` (batch 8 × 256 tokens, hidden 256, MLP 1024, 8 heads of
//! 32, vocabulary 8192) — LayerNorm, the projections with and without bias, the LM head,
//! gelu_new, element-wise ops, RoPE as a matmul, causal attention and the layout changes around
//! it. Mean milliseconds over 10 runs after a warm-up, each forced to finish by reading one value
//! back. `phi bench forward` times the whole model; this says which op to look at when it moves.
//!
//! ```bash
//! cargo run --release --example op_breakdown                                   # flex (CPU)
//! BURN_DEVICE=wgpu cargo run --release --features wgpu --example op_breakdown  # another backend
//! ```

use std::time::Instant;

use burn::tensor::module::{attention, layer_norm, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Distribution, Tensor};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Waits for the (possibly asynchronous) backend by reading the tensor back.
fn sync<const D: usize>(t: Tensor<D>) {
    let _ = t.into_data();
}

/// Prints the mean time of `f` over `n` runs, after one warm-up run.
fn time<const D: usize>(name: &str, n: usize, f: impl Fn() -> Tensor<D>) {
    sync(f());
    let s = Instant::now();
    for _ in 0..n {
        // One value read back forces the whole op to finish, without timing a full copy.
        sync(f().flatten::<1>(0, D - 1).narrow(0, 0, 1));
    }
    println!("{name:<28} {:8.3} ms", s.elapsed().as_secs_f64() * 1e3 / n as f64);
}

fn main() {
    let d = Device::default();
    let weight = |rows: usize, cols: usize| Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 0.05), &d);
    let x = Tensor::<3>::random([8, 256, 256], Distribution::Normal(0.0, 1.0), &d);
    let h = Tensor::<3>::random([8, 256, 1024], Distribution::Normal(0.0, 1.0), &d);
    let (g, b) = (Tensor::<1>::ones([256], &d), Tensor::<1>::zeros([256], &d));
    let (wq, bq) = (weight(256, 256), Tensor::<1>::zeros([256], &d));
    let (w1, b1) = (weight(256, 1024), Tensor::<1>::zeros([1024], &d));
    let w2 = weight(1024, 256);
    let (wl, bl) = (weight(256, 8192), Tensor::<1>::zeros([8192], &d));
    // Queries [batch, seq, heads, head_dim], a rotation matrix and a cos table for RoPE.
    let q4 = Tensor::<4>::random([8, 256, 8, 32], Distribution::Normal(0.0, 1.0), &d);
    let p = weight(32, 32);
    let c = Tensor::<4>::random([1, 256, 1, 32], Distribution::Normal(0.0, 1.0), &d);
    let n = 10;
    time("layer_norm [8,256,256]", n, || layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-5));
    time("linear 256->256 +bias", n, || linear(x.clone(), wq.clone(), Some(bq.clone())));
    time("linear 256->256 nobias", n, || linear(x.clone(), wq.clone(), None));
    time("linear 256->1024 +bias", n, || linear(x.clone(), w1.clone(), Some(b1.clone())));
    time("linear 1024->256 nobias", n, || linear(h.clone(), w2.clone(), None));
    time("lm_head 256->8192 +bias", n, || linear(x.clone(), wl.clone(), Some(bl.clone())));
    time("gelu_tanh [8,256,1024]", n, || phi::core::nn::gelu_tanh(h.clone()));
    time("x*2 [8,256,1024]", n, || h.clone() * 2.0);
    time("x+y [8,256,1024]", n, || h.clone() + h.clone());
    time("add [8,256,256]", n, || x.clone() + x.clone());
    time("rope q [8,256,8,32]", n, || {
        let rot = linear(q4.clone(), p.clone(), None);
        q4.clone() * c.clone() + rot * c.clone()
    });
    time("rotate matmul only", n, || linear(q4.clone(), p.clone(), None));
    time("swap+attention", n, || {
        let q = q4.clone().swap_dims(1, 2);
        attention(q.clone(), q.clone(), q, None, None, AttentionModuleOptions { scale: None, softcap: None, is_causal: true })
    });
    time("attn out swap+reshape", n, || q4.clone().swap_dims(1, 2).swap_dims(1, 2).reshape([8, 256, 256]));
    time("attn out swap+reshape real", n, || q4.clone().swap_dims(1, 2).reshape([8, 8 * 256, 32]).swap_dims(0, 0));
}
