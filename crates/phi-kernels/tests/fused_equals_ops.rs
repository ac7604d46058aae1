//! The fused flex kernels compute what the plain-op versions compute.

use burn::tensor::{Device, Distribution, Tensor};
use phi_kernels::{gelu_tanh, gelu_tanh_ops, rope_heads_first, rope_heads_first_ops};

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).abs().max().into_scalar()
}

#[test]
fn gelu_kernel_matches_ops() {
    let device = Device::flex();
    let x = Tensor::<3>::random([3, 50, 70], Distribution::Normal(0.0, 3.0), &device);
    let d = max_diff(gelu_tanh(x.clone()), gelu_tanh_ops(x.clone()));
    assert!(d < 1e-5, "{d}");
    // A shared, non-contiguous input must not be modified in place.
    let view = x.clone().swap_dims(1, 2);
    let before = x.clone().into_data();
    let d = max_diff(gelu_tanh(view.clone()), gelu_tanh_ops(view));
    assert!(d < 1e-5, "{d}");
    assert_eq!(x.into_data(), before);
}

#[test]
fn rope_kernel_matches_ops_for_full_and_partial_rotary_and_strided_input() {
    let device = Device::flex();
    let (b, t, h, hd) = (2, 7, 5, 16);
    for rd in [16, 8, 6] {
        let cos = Tensor::<2>::random([t, hd], Distribution::Uniform(-1.0, 1.0), &device);
        let sin = Tensor::<2>::random([t, hd], Distribution::Uniform(-1.0, 1.0), &device);
        // The pass-through dims of the tables are cos 1 / sin 0 by contract.
        let (cos, sin) = if rd < hd {
            (
                cos.slice_assign([0..t, rd..hd], Tensor::ones([t, hd - rd], &device)),
                sin.slice_assign([0..t, rd..hd], Tensor::zeros([t, hd - rd], &device)),
            )
        } else {
            (cos, sin)
        };
        let x = Tensor::<4>::random([b, t, h + 3, hd], Distribution::Normal(0.0, 1.0), &device);
        // A head range out of a wider tensor, as Phi-3 takes q and k out of the fused qkv.
        let x = x.narrow(2, 2, h);
        let fused = rope_heads_first(x.clone(), cos.clone(), sin.clone(), rd);
        assert_eq!(fused.dims(), [b, h, t, hd]);
        let d = max_diff(fused, rope_heads_first_ops(x, cos, sin, rd));
        assert!(d < 1e-6, "rotary dims {rd}: {d}");
    }
}

#[test]
fn autodiff_tensors_take_the_differentiable_path() {
    let device = Device::flex().autodiff();
    let x = Tensor::<2>::random([4, 9], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let grads = gelu_tanh(x.clone()).sum().backward();
    let g = x.grad(&grads).expect("gradient reaches x");
    // d/dx gelu at x: finite differences on the inference path agree.
    let eps = 1e-3;
    let xi = x.clone().inner();
    let fd = (gelu_tanh(xi.clone() + eps) - gelu_tanh(xi - eps)) / (2.0 * eps);
    let d = max_diff(g, fd);
    assert!(d < 1e-2, "{d}");
}

#[test]
fn attention_kernel_matches_ops_for_mha_gqa_and_cached_queries() {
    use phi_kernels::{causal_attention, causal_attention_ops};
    let device = Device::flex();
    // (heads, kv_heads, t, s): full causal over several blocks, GQA, a cached decode step,
    // and a multi-token continuation after a cache.
    for (h, hkv, t, s) in [(4, 4, 150, 150), (8, 2, 70, 70), (4, 4, 1, 37), (6, 3, 5, 90)] {
        let q = Tensor::<4>::random([2, h, t, 16], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<4>::random([2, hkv, s, 16], Distribution::Normal(0.0, 1.0), &device);
        // v as a heads-first view of a tokens-first tensor, as the model passes it.
        let v = Tensor::<4>::random([2, s, hkv, 16], Distribution::Normal(0.0, 1.0), &device).swap_dims(1, 2);
        let fused = causal_attention(q.clone(), k.clone(), v.clone());
        assert_eq!(fused.dims(), [2, t, h, 16]);
        let d = max_diff(fused, causal_attention_ops(q, k, v));
        assert!(d < 1e-5, "h {h} kv {hkv} t {t} s {s}: {d}");
    }
    // Decode steps over a KV cache's layout (keys and values contiguous rows of each head: the
    // kernel's one-query path), head dims a multiple of 16 and not, MHA and GQA, and a view of
    // the first `s` positions of a longer buffer, as the cache hands them out.
    for (h, hkv, s, hd) in [(4, 4, 37, 16), (8, 2, 130, 40), (2, 1, 1, 24)] {
        let q = Tensor::<4>::random([3, h, 1, hd], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<4>::random([3, hkv, s + 9, hd], Distribution::Normal(0.0, 1.0), &device).narrow(2, 0, s);
        let v = Tensor::<4>::random([3, hkv, s + 9, hd], Distribution::Normal(0.0, 1.0), &device).narrow(2, 0, s);
        let fused = causal_attention(q.clone(), k.clone(), v.clone());
        assert_eq!(fused.dims(), [3, 1, h, hd]);
        let d = max_diff(fused, causal_attention_ops(q, k, v));
        assert!(d < 1e-5, "decode h {h} kv {hkv} s {s} hd {hd}: {d}");
    }
}

#[test]
fn swiglu_and_rms_norm_kernels_match_ops() {
    use phi_kernels::{rms_norm, rms_norm_ops, silu_glu, silu_glu_ops};
    let device = Device::flex();
    let x = Tensor::<3>::random([2, 9, 40], Distribution::Normal(0.0, 2.0), &device);
    let d = max_diff(silu_glu(x.clone()), silu_glu_ops(x.clone()));
    assert!(d < 1e-5, "silu_glu: {d}");
    let w = Tensor::<1>::random([40], Distribution::Normal(1.0, 0.1), &device);
    let d = max_diff(rms_norm(x.clone(), w.clone(), 1e-5), rms_norm_ops(x.clone(), w.clone(), 1e-5));
    assert!(d < 1e-5, "rms_norm: {d}");
    // Strided input takes the copy path and still agrees.
    let xt = x.swap_dims(0, 1);
    let d = max_diff(rms_norm(xt.clone(), w.clone(), 1e-5), rms_norm_ops(xt, w, 1e-5));
    assert!(d < 1e-5, "rms_norm strided: {d}");
}

#[test]
fn fused_loss_and_its_gradient_match_ops() {
    use burn::tensor::{Int, TensorData};
    let device = Device::default();
    let ad = device.clone().autodiff();
    let (b, t, v) = (3, 7, 301); // a vocabulary that is not a multiple of the SIMD width
    let logits = Tensor::<3>::random([b, t, v], Distribution::Normal(0.0, 3.0), &device);
    // ids as long as the logits (the last position predicts nothing), then a whole training
    // window, one longer (every position predicts).
    for s in [t, t + 1] {
        let ids: Vec<i64> = (0..b * s).map(|i| ((i * 7919) % v) as i64).collect();
        let ids = |d: &Device| Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, s]), d);
        // Forward, no autodiff.
        let fused = phi_kernels::causal_lm_loss(logits.clone(), ids(&device)).into_scalar::<f32>();
        let plain = phi_kernels::causal_lm_loss_ops(logits.clone(), ids(&device)).into_scalar::<f32>();
        assert!((fused - plain).abs() < 1e-5 * plain.abs(), "ids of {s}: {fused} vs {plain}");
        // The mean over exactly the predicting positions, from the log-softmax by hand.
        let lp = burn::tensor::activation::log_softmax(logits.clone(), 2).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let all = ids(&device).into_data().convert::<i64>().try_to_vec::<i64>().unwrap();
        let m = s - 1;
        let by_hand = -(0..b).flat_map(|bi| (0..m).map(move |p| (bi, p))).map(|(bi, p)| lp[(bi * t + p) * v + all[bi * s + p + 1] as usize] as f64).sum::<f64>() / (b * m) as f64;
        assert!((fused as f64 - by_hand).abs() < 1e-5 * by_hand.abs(), "ids of {s}: {fused} vs {by_hand} by hand");
        // Forward and backward under autodiff, scaled by 3 to check the incoming gradient is used.
        let grad_of = |fused: bool| {
            let x = Tensor::<3>::from_data(logits.to_data(), &ad).require_grad();
            let loss = if fused { phi_kernels::causal_lm_loss(x.clone(), ids(&ad)) } else { phi_kernels::causal_lm_loss_ops(x.clone(), ids(&ad)) };
            let value = loss.clone().into_scalar::<f32>();
            let grads = (loss * 3.0).backward();
            // The fused op reuses the logits buffer only when nobody else holds it: x is intact.
            assert_eq!(max_diff(x.clone().inner(), logits.clone()), 0.0);
            (value, x.grad(&grads).unwrap())
        };
        let ((lf, gf), (lp, gp)) = (grad_of(true), grad_of(false));
        assert!((lf - lp).abs() < 1e-5 * lp.abs(), "ids of {s}: {lf} vs {lp}");
        let d = max_diff(gf.clone(), gp);
        assert!(d < 1e-7, "ids of {s}: gradients differ by {d}");
        let last = gf.narrow(1, t - 1, 1).abs().max().into_scalar::<f32>();
        if s == t {
            // The last position predicts nothing: its gradient is exactly zero.
            assert_eq!(last, 0.0);
        } else {
            assert!(last > 0.0, "with a whole window the last position predicts too");
        }
    }
}

#[test]
#[should_panic(expected = "expected ids [3, 8] or [3, 7]")]
fn loss_refuses_ids_of_another_length() {
    use burn::tensor::Int;
    let device = Device::default();
    let logits = Tensor::<3>::zeros([3, 7, 11], &device);
    let _ = phi_kernels::causal_lm_loss(logits, Tensor::<2, Int>::zeros([3, 9], &device));
}

#[test]
fn fused_gelu_gradient_matches_ops_under_autodiff() {
    let ad = Device::default().autodiff();
    let base = Tensor::<3>::random([3, 50, 700], Distribution::Normal(0.0, 2.5), &ad);
    // A non-uniform upstream gradient, the same for both.
    let w = Tensor::<3>::random([3, 50, 700], Distribution::Normal(0.0, 1.0), &ad);
    let grad_of = |fused: bool| {
        let x = base.clone().detach().require_grad();
        let y = if fused { gelu_tanh(x.clone()) } else { gelu_tanh_ops(x.clone()) };
        let grads = (y.clone() * w.clone().detach()).sum().backward();
        (y.inner(), x.grad(&grads).unwrap())
    };
    let ((yf, gf), (yp, gp)) = (grad_of(true), grad_of(false));
    assert!(max_diff(yf, yp) < 1e-5);
    let d = max_diff(gf, gp);
    assert!(d < 1e-4, "gelu gradients differ by {d}");
}

#[test]
fn fused_swiglu_gradient_matches_ops_under_autodiff() {
    use phi_kernels::{silu_glu, silu_glu_ops};
    let ad = Device::default().autodiff();
    let base = Tensor::<3>::random([2, 30, 2 * 300], Distribution::Normal(0.0, 2.0), &ad);
    let w = Tensor::<3>::random([2, 30, 300], Distribution::Normal(0.0, 1.0), &ad);
    let grad_of = |fused: bool| {
        let x = base.clone().detach().require_grad();
        let y = if fused { silu_glu(x.clone()) } else { silu_glu_ops(x.clone()) };
        let grads = (y.clone() * w.clone().detach()).sum().backward();
        (y.inner(), x.grad(&grads).unwrap())
    };
    let ((yf, gf), (yp, gp)) = (grad_of(true), grad_of(false));
    assert!(max_diff(yf, yp) < 1e-5);
    let d = max_diff(gf, gp);
    assert!(d < 1e-4, "swiglu gradients differ by {d}");
}

#[test]
fn fused_attention_gradients_match_ops_for_mha_gqa_and_cached_queries() {
    use phi_kernels::{causal_attention, causal_attention_ops};
    let ad = Device::default().autodiff();
    // (batch, heads, kv heads, queries, keys, head dim): MHA over two blocks plus a ragged one,
    // GQA, and queries that follow cached keys.
    for (b, h, hkv, t, s, d) in [(2, 4, 4, 150, 150, 16), (1, 6, 2, 70, 70, 8), (2, 4, 2, 5, 40, 16)] {
        let q0 = Tensor::<4>::random([b, h, t, d], Distribution::Normal(0.0, 1.0), &ad);
        let k0 = Tensor::<4>::random([b, hkv, s, d], Distribution::Normal(0.0, 1.0), &ad);
        let v0 = Tensor::<4>::random([b, hkv, s, d], Distribution::Normal(0.0, 1.0), &ad);
        let w = Tensor::<4>::random([b, t, h, d], Distribution::Normal(0.0, 1.0), &ad);
        let grads_of = |fused: bool| {
            let (q, k, v) = (q0.clone().detach().require_grad(), k0.clone().detach().require_grad(), v0.clone().detach().require_grad());
            let out = if fused { causal_attention(q.clone(), k.clone(), v.clone()) } else { causal_attention_ops(q.clone(), k.clone(), v.clone()) };
            let grads = (out.clone() * w.clone().detach()).sum().backward();
            (out.inner(), q.grad(&grads).unwrap(), k.grad(&grads).unwrap(), v.grad(&grads).unwrap())
        };
        let (f, p) = (grads_of(true), grads_of(false));
        assert!(max_diff(f.0, p.0) < 1e-5, "output, shape {:?}", (b, h, hkv, t, s, d));
        for (name, a, b_) in [("q", f.1, p.1), ("k", f.2, p.2), ("v", f.3, p.3)] {
            let dd = max_diff(a, b_);
            assert!(dd < 1e-4, "d{name} differs by {dd} for {:?}", (b, h, hkv, t, s, d));
        }
    }
}

#[test]
fn fused_norm_gradients_match_ops_under_autodiff() {
    use phi_kernels::{layer_norm, rms_norm, rms_norm_ops};
    let ad = Device::default().autodiff();
    let dim = 75; // not a multiple of anything
    let x0 = Tensor::<3>::random([3, 41, dim], Distribution::Normal(0.5, 2.0), &ad);
    let w0 = Tensor::<1>::random([dim], Distribution::Normal(1.0, 0.3), &ad);
    let b0 = Tensor::<1>::random([dim], Distribution::Normal(0.0, 0.3), &ad);
    let up = Tensor::<3>::random([3, 41, dim], Distribution::Normal(0.0, 1.0), &ad);
    for rms in [false, true] {
        let grads_of = |fused: bool| {
            let (x, w, b) = (x0.clone().detach().require_grad(), w0.clone().detach().require_grad(), b0.clone().detach().require_grad());
            let y = match (rms, fused) {
                (true, true) => rms_norm(x.clone(), w.clone(), 1e-5),
                (true, false) => rms_norm_ops(x.clone(), w.clone(), 1e-5),
                (false, true) => layer_norm(x.clone(), w.clone(), b.clone(), 1e-5),
                (false, false) => burn::tensor::module::layer_norm(x.clone(), w.clone(), Some(b.clone()), 1e-5),
            };
            let grads = (y.clone() * up.clone().detach()).sum().backward();
            (y.inner(), x.grad(&grads).unwrap(), w.grad(&grads).unwrap(), b.grad(&grads))
        };
        let (f, p) = (grads_of(true), grads_of(false));
        assert!(max_diff(f.0, p.0) < 1e-5, "rms {rms}: output");
        assert!(max_diff(f.1, p.1) < 1e-4, "rms {rms}: dx");
        assert!(max_diff(f.2, p.2) < 1e-3, "rms {rms}: dw");
        if !rms {
            assert!(max_diff(f.3.unwrap(), p.3.unwrap()) < 1e-3, "db");
        }
    }
}

#[test]
fn fused_rope_gradient_matches_ops_under_autodiff() {
    let ad = Device::default().autodiff();
    let (b, t, h, hd) = (2, 9, 4, 16);
    for rd in [16, 8, 6] {
        let cos = Tensor::<2>::random([t, hd], Distribution::Uniform(-1.0, 1.0), &ad);
        let sin = Tensor::<2>::random([t, hd], Distribution::Uniform(-1.0, 1.0), &ad);
        let (cos, sin) = if rd < hd {
            (cos.slice_assign([0..t, rd..hd], Tensor::ones([t, hd - rd], &ad)), sin.slice_assign([0..t, rd..hd], Tensor::zeros([t, hd - rd], &ad)))
        } else {
            (cos, sin)
        };
        let x0 = Tensor::<4>::random([b, t, h + 2, hd], Distribution::Normal(0.0, 1.0), &ad);
        let up = Tensor::<4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &ad);
        let grad_of = |fused: bool| {
            let wide = x0.clone().detach().require_grad();
            // A head range of a wider tensor, as Phi-3's fused qkv.
            let x = wide.clone().narrow(2, 1, h);
            let (c, s) = (cos.clone().detach(), sin.clone().detach());
            let y = if fused { rope_heads_first(x, c, s, rd) } else { rope_heads_first_ops(x, c, s, rd) };
            let grads = (y.clone() * up.clone().detach()).sum().backward();
            (y.inner(), wide.grad(&grads).unwrap())
        };
        let ((yf, gf), (yp, gp)) = (grad_of(true), grad_of(false));
        assert!(max_diff(yf, yp) < 1e-6, "rotary dims {rd}: output");
        let d = max_diff(gf, gp);
        assert!(d < 1e-5, "rotary dims {rd}: gradients differ by {d}");
    }
}

/// Packed rows: each sequence computes what it computes alone, on the kernel path and the ops
/// path, forward and backward; the padding tail is a sequence of its own.
#[test]
fn packed_attention_equals_each_sequence_alone_with_gradients() {
    use phi_kernels::{Segments, causal_attention, packed_causal_attention, packed_causal_attention_ops};
    let ad = Device::default().autodiff();
    // Two rows of 150: sequences crossing the 64-row blocks, a one-token sequence, a tail.
    let (t, d) = (150, 8);
    let lengths = vec![vec![70, 1, 66, 13], vec![100, 45]];
    let segments = Segments::new(t, &lengths).unwrap();
    for (h, hkv) in [(4, 4), (6, 2)] {
        let q0 = Tensor::<4>::random([2, h, t, d], Distribution::Normal(0.0, 1.0), &ad);
        let k0 = Tensor::<4>::random([2, hkv, t, d], Distribution::Normal(0.0, 1.0), &ad);
        let v0 = Tensor::<4>::random([2, t, hkv, d], Distribution::Normal(0.0, 1.0), &ad).swap_dims(1, 2);
        let w = Tensor::<4>::random([2, t, h, d], Distribution::Normal(0.0, 1.0), &ad);
        let grads_of = |which: u8| {
            let (q, k, v) = (q0.clone().detach().require_grad(), k0.clone().detach().require_grad(), v0.clone().detach().require_grad());
            let out = match which {
                0 => packed_causal_attention(q.clone(), k.clone(), v.clone(), &segments),
                1 => packed_causal_attention_ops(q.clone(), k.clone(), v.clone(), &segments),
                _ => {
                    // Each sequence on its own through the unpacked kernel, laid back in place.
                    let rows = (0..2)
                        .map(|r| {
                            let parts = segments
                                .row(r)
                                .iter()
                                .map(|&(a, n)| {
                                    let cut = |x: &Tensor<4>| x.clone().narrow(0, r, 1).narrow(2, a, n);
                                    causal_attention(cut(&q), cut(&k), cut(&v))
                                })
                                .collect();
                            Tensor::cat(parts, 1)
                        })
                        .collect();
                    Tensor::cat(rows, 0)
                }
            };
            let grads = (out.clone() * w.clone().detach()).sum().backward();
            (out.inner(), q.grad(&grads).unwrap(), k.grad(&grads).unwrap(), v.grad(&grads).unwrap())
        };
        let alone = grads_of(2);
        for which in [0, 1] {
            let got = grads_of(which);
            let path = ["kernel", "ops"][which as usize];
            assert!(max_diff(got.0, alone.0.clone()) < 1e-5, "{path} h {h} kv {hkv}: output");
            for (name, a, b) in [("q", got.1, alone.1.clone()), ("k", got.2, alone.2.clone()), ("v", got.3, alone.3.clone())] {
                let dd = max_diff(a, b);
                assert!(dd < 1e-4, "{path} h {h} kv {hkv}: d{name} differs by {dd}");
            }
        }
    }
    // Inference (no autodiff) takes the forward kernel directly.
    let device = Device::flex();
    let r = |heads: usize| Tensor::<4>::random([2, heads, t, d], Distribution::Normal(0.0, 1.0), &device);
    let (q, k, v) = (r(4), r(2), r(2));
    let dd = max_diff(packed_causal_attention(q.clone(), k.clone(), v.clone(), &segments), packed_causal_attention_ops(q, k, v, &segments));
    assert!(dd < 1e-5, "inference kernel vs ops: {dd}");
}

#[test]
fn packed_segments_are_checked() {
    use phi_kernels::Segments;
    assert!(Segments::new(4, &[vec![3, 2]]).unwrap_err().contains("row 0 of the packed batch holds 5 tokens, more than its length 4"));
    assert!(Segments::new(4, &[vec![2], vec![0, 1]]).unwrap_err().contains("row 1 of the packed batch has an empty sequence"));
    let s = Segments::new(4, &[vec![4], vec![1, 1]]).unwrap();
    assert_eq!(s.ids(), [0, 0, 0, 0, 0, 1, 2, 2]);
}

#[test]
fn per_token_rope_tables_match_ops_and_their_gradient() {
    let ad = Device::default().autodiff();
    let (b, t, h, hd, rd) = (3, 7, 4, 16, 8);
    let cos = Tensor::<2>::random([b * t, hd], Distribution::Uniform(-1.0, 1.0), &ad);
    let sin = Tensor::<2>::random([b * t, hd], Distribution::Uniform(-1.0, 1.0), &ad);
    let (cos, sin) = (cos.slice_assign([0..b * t, rd..hd], Tensor::ones([b * t, hd - rd], &ad)), sin.slice_assign([0..b * t, rd..hd], Tensor::zeros([b * t, hd - rd], &ad)));
    let x0 = Tensor::<4>::random([b, t, h, hd], Distribution::Normal(0.0, 1.0), &ad);
    let up = Tensor::<4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &ad);
    let grad_of = |fused: bool| {
        let x = x0.clone().detach().require_grad();
        let (c, s) = (cos.clone().detach(), sin.clone().detach());
        let y = if fused { rope_heads_first(x.clone(), c, s, rd) } else { rope_heads_first_ops(x.clone(), c, s, rd) };
        let grads = (y.clone() * up.clone().detach()).sum().backward();
        (y.inner(), x.grad(&grads).unwrap())
    };
    let ((yf, gf), (yp, gp)) = (grad_of(true), grad_of(false));
    assert!(max_diff(yf.clone(), yp) < 1e-6);
    assert!(max_diff(gf, gp) < 1e-5);
    // Row 1 of the batch rotated by its own rows of the tables, as if alone with shared tables.
    let x1 = x0.clone().inner().narrow(0, 1, 1);
    let alone = rope_heads_first(x1, cos.clone().inner().narrow(0, t, t), sin.clone().inner().narrow(0, t, t), rd);
    assert!(max_diff(yf.narrow(0, 1, 1), alone) < 1e-6);
    // Inference takes the kernel directly.
    let inf = rope_heads_first(x0.clone().inner(), cos.clone().inner(), sin.clone().inner(), rd);
    assert!(max_diff(inf, rope_heads_first_ops(x0.inner(), cos.inner(), sin.inner(), rd)) < 1e-6);
}
