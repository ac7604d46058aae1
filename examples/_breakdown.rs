use burn::tensor::{Device, Tensor, Distribution};
use burn::tensor::module::{linear, layer_norm, attention};
use burn::tensor::ops::AttentionModuleOptions;
use std::time::Instant;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn sync<const D: usize>(t: Tensor<D>) { let _ = t.into_data(); }
fn time<const D: usize>(name: &str, n: usize, f: impl Fn() -> Tensor<D>) {
    sync(f());
    let s = Instant::now();
    for _ in 0..n { let o = f(); let v = o.flatten::<1>(0, D-1).narrow(0,0,1); sync(v); }
    println!("{name:<28} {:8.3} ms", s.elapsed().as_secs_f64() * 1e3 / n as f64);
}
fn main() {
    let d = Device::default();
    let r = |s: Vec<usize>| Tensor::<2>::random([s[0], s[1]], Distribution::Normal(0.0, 0.05), &d);
    let x = Tensor::<3>::random([8, 256, 256], Distribution::Normal(0.0, 1.0), &d);
    let h = Tensor::<3>::random([8, 256, 1024], Distribution::Normal(0.0, 1.0), &d);
    let g = Tensor::<1>::ones([256], &d); let b = Tensor::<1>::zeros([256], &d);
    let wq = r(vec![256, 256]); let bq = Tensor::<1>::zeros([256], &d);
    let w1 = r(vec![256, 1024]); let b1 = Tensor::<1>::zeros([1024], &d);
    let w2 = r(vec![1024, 256]);
    let wl = r(vec![256, 8192]); let bl = Tensor::<1>::zeros([8192], &d);
    let q4 = Tensor::<4>::random([8, 256, 8, 32], Distribution::Normal(0.0, 1.0), &d);
    let p = r(vec![32, 32]); let c = Tensor::<4>::random([1, 256, 1, 32], Distribution::Normal(0.0, 1.0), &d);
    let n = 10;
    time("layer_norm [8,256,256]", n, || layer_norm(x.clone(), g.clone(), Some(b.clone()), 1e-5));
    time("linear 256->256 +bias", n, || linear(x.clone(), wq.clone(), Some(bq.clone())));
    time("linear 256->256 nobias", n, || linear(x.clone(), wq.clone(), None));
    time("linear 256->1024 +bias", n, || linear(x.clone(), w1.clone(), Some(b1.clone())));
    time("linear 1024->256 nobias", n, || linear(h.clone(), w2.clone(), None));
    time("lm_head 256->8192 +bias", n, || linear(x.clone(), wl.clone(), Some(bl.clone())));
    time("gelu_tanh [8,256,1024]", n, || phi_core::nn::gelu_tanh(h.clone()));
    time("x*2 [8,256,1024]", n, || h.clone() * 2.0);
    time("x+y [8,256,1024]", n, || h.clone() + h.clone());
    time("add [8,256,256]", n, || x.clone() + x.clone());
    time("rope q [8,256,8,32]", n, || { let rot = linear(q4.clone(), p.clone(), None); q4.clone() * c.clone() + rot * c.clone() });
    time("rotate matmul only", n, || linear(q4.clone(), p.clone(), None));
    time("swap+attention", n, || { let q = q4.clone().swap_dims(1, 2); attention(q.clone(), q.clone(), q, None, None, AttentionModuleOptions{scale:None, softcap:None, is_causal:true}) });
    time("attn out swap+reshape", n, || q4.clone().swap_dims(1, 2).swap_dims(1,2).reshape([8, 256, 256]));
    time("attn out swap+reshape real", n, || q4.clone().swap_dims(1, 2).reshape([8, 8 * 256, 32]).swap_dims(0,0));
}
