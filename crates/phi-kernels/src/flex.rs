//! The flex implementations, reached through burn's backend-extension dispatch. Callers in
//! `lib.rs` only route f32 flex tensors outside autodiff here.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, DispatchTensor, Flex, backend_extension};
use burn::tensor::TensorData;
use rayon::prelude::*;

use crate::math::{gelu_tanh_slice, masked_softmax_row, query_scores, silu_glu_slice, weighted_values};
use crate::segments::{Segments, Span, spans};

/// flex's tensor type, reached through the backend's associated type (burn does not re-export
/// `burn_flex::FlexTensor` by name).
type FlexTensor = FloatTensor<Flex>;

/// Elements per parallel task: large enough to amortise scheduling, small enough to balance.
pub(crate) const CHUNK: usize = 1 << 14;

#[backend_extension(Flex)]
pub trait PhiKernels: Backend {
    fn phi_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;
    fn phi_rope_heads_first(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        rotary_dims: usize,
    ) -> FloatTensor<Self>;
}

pub(crate) fn gelu_tanh(x: DispatchTensor) -> DispatchTensor {
    <Dispatch as PhiKernels>::phi_gelu_tanh(x)
}

pub(crate) fn rope_heads_first(x: DispatchTensor, cos: DispatchTensor, sin: DispatchTensor, rd: usize) -> DispatchTensor {
    <Dispatch as PhiKernels>::phi_rope_heads_first(x, cos, sin, rd)
}

/// Whether rotary tables of `rows` rows hold one row per token of a `[b, t]` batch (packed rows,
/// each token at its own position) rather than one per position shared by the batch.
pub(crate) fn table_rows(rows: usize, b: usize, t: usize) -> bool {
    assert!(rows == t || rows == b * t, "rotary tables of {rows} rows for a [{b}, {t}] batch: expected {t} (shared) or {} (one per token)", b * t);
    rows != t
}

/// Work below this many elements runs on the calling thread: waking the rayon pool costs more
/// than it saves for the batch-1 decode step.
const PARALLEL_MIN: usize = 1 << 15;

/// `f(index, chunk)` over `chunk_len`-sized chunks of `data`, in parallel when `work` is large.
pub(crate) fn for_each_chunk(data: &mut [f32], chunk_len: usize, work: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if work < PARALLEL_MIN {
        data.chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        data.par_chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// An output buffer of `n` values. Zeroed: the kernels overwrite every element, but handing out
/// `&mut [f32]` over uninitialised memory is undefined behaviour whatever the element type, and
/// a fresh zeroed allocation is a `calloc` (pages the kernel zeroes anyway).
pub(crate) fn output(n: usize) -> Vec<f32> {
    vec![0.0; n]
}

/// Contiguous f32 values of `t` from offset 0, reusing its buffer when it is the only owner.
pub(crate) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.is_contiguous() && t.layout().start_offset() == 0 { t } else { t.to_contiguous() }
}

impl PhiKernels for Flex {
    fn phi_gelu_tanh(x: FlexTensor) -> FlexTensor {
        let mut x = contiguous(x);
        let n = x.layout().shape().num_elements();
        // Copy-on-write: in place when `x` is not shared (the usual case: a fresh fc1 output).
        let values = &mut x.storage_mut::<f32>()[..n];
        for_each_chunk(values, CHUNK, n, |_, chunk| gelu_tanh_slice(chunk));
        x
    }

    fn phi_rope_heads_first(x: FlexTensor, cos: FlexTensor, sin: FlexTensor, rd: usize) -> FlexTensor {
        let shape = x.layout().shape();
        let (b, t, h, hd) = (shape[0], shape[1], shape[2], shape[3]);
        let st = x.layout().strides().to_vec();
        let off = x.layout().start_offset() as isize;
        let xs = x.storage::<f32>();
        let (cos, sin) = (contiguous(cos), contiguous(sin));
        let (cs, ss) = (cos.storage::<f32>(), sin.storage::<f32>());
        let per_token = table_rows(cos.layout().shape()[0], b, t);
        let half = rd / 2;
        let mut out = output(b * h * t * hd);
        // One task per (batch, head): it writes one contiguous [seq, head_dim] block.
        let work = out.len();
        for_each_chunk(&mut out, t * hd, work, |bh, block| {
            let (bi, hi) = (bh / h, bh % h);
            for ti in 0..t {
                let base = off + bi as isize * st[0] + ti as isize * st[1] + hi as isize * st[2];
                let at = |d: usize| xs[(base + d as isize * st[3]) as usize];
                let p = if per_token { bi * t + ti } else { ti };
                let (c, s) = (&cs[p * hd..(p + 1) * hd], &ss[p * hd..(p + 1) * hd]);
                let row = &mut block[ti * hd..(ti + 1) * hd];
                for d in 0..half {
                    let (x1, x2) = (at(d), at(d + half));
                    row[d] = x1 * c[d] + x2 * s[d];
                    row[d + half] = x2 * c[d + half] + x1 * s[d + half];
                }
                for (d, r) in row.iter_mut().enumerate().skip(rd) {
                    *r = at(d);
                }
            }
        });
        FlexTensor::from_data(TensorData::new(out, [b, h, t, hd]))
    }
}

/// Query rows per block: the block's scores (`BLOCK × keys`) stay in cache, and blocks past
/// the diagonal are never computed.
const BLOCK: usize = 64;

pub(crate) fn causal_attention(q: DispatchTensor, k: DispatchTensor, v: DispatchTensor, segments: Option<Segments>) -> DispatchTensor {
    <Dispatch as PhiAttentionKernel>::phi_causal_attention(q, k, v, segments)
}

#[backend_extension(Flex)]
pub trait PhiAttentionKernel: Backend {
    fn phi_causal_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, segments: Option<Segments>) -> FloatTensor<Self>;
}

/// A pointer that attention tasks share: each task writes a disjoint set of output rows.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint rows (one (batch, head) pair each) and the buffer outlives them.
unsafe impl Send for OutPtr {}
// SAFETY: as for Send: shared between tasks that each touch only their own rows.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    // A method, so closures capture the whole (Send) wrapper rather than the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Element strides of a 4-D flex tensor and its start offset.
fn strides4(t: &FlexTensor) -> ([isize; 4], isize) {
    let s = t.layout().strides();
    ([s[0], s[1], s[2], s[3]], t.layout().start_offset() as isize)
}

impl PhiAttentionKernel for Flex {
    /// Reads q `[b, h, t, d]`, k and v `[b, hkv, s, d]` through their strides (no copies) and
    /// writes `[b, t, h, d]`, the layout the output projection reads. With `segments`, each
    /// packed sequence of a row attends only to itself.
    fn phi_causal_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, segments: Option<Segments>) -> FlexTensor {
        let qs = q.layout().shape();
        let (b, h, t, hd) = (qs[0], qs[1], qs[2], qs[3]);
        let (hkv, s) = (k.layout().shape()[1], k.layout().shape()[2]);
        let rep = h / hkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let ((qst, qo), (kst, ko), (vst, vo)) = (strides4(&q), strides4(&k), strides4(&v));
        let (qd, kd, vd) = (q.storage::<f32>().as_ptr(), k.storage::<f32>().as_ptr(), v.storage::<f32>().as_ptr());
        let (qd, kd, vd) = (OutPtr(qd as *mut f32), OutPtr(kd as *mut f32), OutPtr(vd as *mut f32));
        if let Some(seg) = &segments {
            assert!(seg.batch() == b && seg.len() == t && s == t, "packed attention: [{b}, {t}] queries over {s} keys, segments [{}, {}]", seg.batch(), seg.len());
        }
        let mut out = output(b * t * h * hd);
        let dst = OutPtr(out.as_mut_ptr());
        let run = move |bh: usize| {
            let (bi, hi) = (bh / h, bh % h);
            let kvh = hi / rep;
            // SAFETY: offsets come from the tensors' own layouts; reads stay inside their storage.
            let (qh, kh, vh, oh) = unsafe {
                (
                    qd.get().offset(qo + bi as isize * qst[0] + hi as isize * qst[1]),
                    kd.get().offset(ko + bi as isize * kst[0] + kvh as isize * kst[1]),
                    vd.get().offset(vo + bi as isize * vst[0] + kvh as isize * vst[1]),
                    dst.get().add(bi * t * h * hd + hi * hd),
                )
            };
            let mut scores = vec![0.0f32; BLOCK.min(t) * s];
            // A decode step (one query, every key visible) over rows that lie contiguous: two
            // passes over the cache, without `gemm`, whose set-up cost more than the products
            // of a single query (a decode batch makes rows × heads × layers such calls a step).
            // Every decode step of a sequence, alone or batched, takes this path.
            if t == 1 && segments.is_none() && qst[3] == 1 && kst[3] == 1 && vst[3] == 1 && kst[2] == hd as isize && vst[2] == hd as isize {
                // SAFETY: with unit inner strides and rows hd apart, the query is hd values at
                // qh and the keys and values s·hd values from kh and vh, inside their storage
                // (the layouts say so); the output row of this (batch, head) is hd values at oh
                // and only this task writes it.
                let (qv, keys, values, out) = unsafe {
                    (
                        std::slice::from_raw_parts(qh as *const f32, hd),
                        std::slice::from_raw_parts(kh as *const f32, s * hd),
                        std::slice::from_raw_parts(vh as *const f32, s * hd),
                        std::slice::from_raw_parts_mut(oh, hd),
                    )
                };
                let sc = &mut scores[..s];
                query_scores(sc, qv, keys, scale);
                masked_softmax_row(sc, s);
                weighted_values(out, sc, values);
                return;
            }
            for Span { q0, k0, n, extra } in spans(segments.as_ref(), bi, t, s) {
                // SAFETY: a span's queries and keys are rows of this (batch, head) (see `spans`).
                let (qh, kh, vh) = unsafe { (qh.offset(q0 as isize * qst[2]), kh.offset(k0 as isize * kst[2]), vh.offset(k0 as isize * vst[2])) };
                for r0 in (0..n).step_by(BLOCK) {
                    let rows = BLOCK.min(n - r0);
                    // Keys visible to the block's last row; query i sees keys ..=extra + i.
                    let kv_len = extra + r0 + rows;
                    let sc = &mut scores[..rows * kv_len];
                    // SAFETY: gemm reads/writes exactly the strided ranges described above.
                    unsafe {
                        // scores[rows, kv_len] = scale · Q_block · K[..kv_len]ᵀ
                        gemm::gemm(
                            rows, kv_len, hd,
                            sc.as_mut_ptr(), 1, kv_len as isize, false,
                            qh.offset(r0 as isize * qst[2]), qst[3], qst[2],
                            kh, kst[2], kst[3],
                            0.0, scale, false, false, false, gemm::Parallelism::None,
                        );
                    }
                    for r in 0..rows {
                        masked_softmax_row(&mut sc[r * kv_len..(r + 1) * kv_len], extra + r0 + r + 1);
                    }
                    // SAFETY: `oh + (q0 + r0)·h·hd` starts row q0 + r0 of this (batch, head)'s
                    // output, and `rows` rows of stride h·hd with hd columns stay inside `out`
                    // (b·t·h·hd values); `sc` holds rows × kv_len scores; V is read through its
                    // own strides for k0 + kv_len ≤ s keys. Only this task writes these rows.
                    unsafe {
                        // out[b, q0 + r0.., h, :] = P · V[k0..k0 + kv_len]
                        gemm::gemm(
                            rows, hd, kv_len,
                            oh.add((q0 + r0) * h * hd), 1, (h * hd) as isize, false,
                            sc.as_ptr(), 1, kv_len as isize,
                            vh, vst[3], vst[2],
                            0.0, 1.0, false, false, false, gemm::Parallelism::None,
                        );
                    }
                }
            }
        };
        if b * h * t * s * hd / 2 < PARALLEL_MIN {
            (0..b * h).for_each(run);
        } else {
            (0..b * h).into_par_iter().for_each(run);
        }
        drop((q, k, v));
        FlexTensor::from_data(TensorData::new(out, [b, t, h, hd]))
    }
}

pub(crate) fn silu_glu(gate_up: DispatchTensor) -> DispatchTensor {
    <Dispatch as PhiRowKernels>::phi_silu_glu(gate_up)
}

pub(crate) fn rms_norm(x: DispatchTensor, weight: DispatchTensor, eps: f64) -> DispatchTensor {
    <Dispatch as PhiRowKernels>::phi_rms_norm(x, weight, eps)
}

#[backend_extension(Flex)]
pub trait PhiRowKernels: Backend {
    fn phi_silu_glu(gate_up: FloatTensor<Self>) -> FloatTensor<Self>;
    fn phi_rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
}

impl PhiRowKernels for Flex {
    fn phi_silu_glu(gate_up: FlexTensor) -> FlexTensor {
        let gate_up = contiguous(gate_up);
        let dims = gate_up.layout().shape().to_vec();
        let width = dims[dims.len() - 1];
        let half = width / 2;
        let rows = gate_up.layout().shape().num_elements() / width;
        let src = gate_up.storage::<f32>();
        let mut out = output(rows * half);
        for_each_chunk(&mut out, half, rows * width, |r, row| {
            let (gate, up) = src[r * width..(r + 1) * width].split_at(half);
            silu_glu_slice(row, gate, up);
        });
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = half;
        FlexTensor::from_data(TensorData::new(out, out_dims))
    }

    fn phi_rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        let x = contiguous(x);
        let weight = contiguous(weight);
        let dims = x.layout().shape().to_vec();
        let width = dims[dims.len() - 1];
        let n = x.layout().shape().num_elements();
        let (src, w) = (x.storage::<f32>(), weight.storage::<f32>());
        let mut out = output(n);
        for_each_chunk(&mut out, width, n, |r, row| {
            let xs = &src[r * width..(r + 1) * width];
            let mean_sq = xs.iter().map(|v| v * v).sum::<f32>() / width as f32;
            let inv = 1.0 / (mean_sq + eps as f32).sqrt();
            for ((o, v), g) in row.iter_mut().zip(xs).zip(w) {
                *o = g * (v * inv);
            }
        });
        FlexTensor::from_data(TensorData::new(out, dims))
    }
}

pub(crate) fn matmul_rows(x: DispatchTensor, w: DispatchTensor) -> DispatchTensor {
    <Dispatch as PhiRowsKernel>::phi_matmul_rows(x, w)
}

#[backend_extension(Flex)]
pub trait PhiRowsKernel: Backend {
    fn phi_matmul_rows(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl PhiRowsKernel for Flex {
    /// `x` `[rows, k]` · `w` `[k, n]`, reading `w` in place when it is row-major (a projection)
    /// or column-major (a transposed embedding: the tied LM head).
    fn phi_matmul_rows(x: FlexTensor, w: FlexTensor) -> FlexTensor {
        let x = contiguous(x);
        let (rows, k) = (x.layout().shape()[0], x.layout().shape()[1]);
        let n = w.layout().shape()[1];
        let xs = &x.storage::<f32>()[..rows * k];
        let strided = |w: &FlexTensor, rs: usize, cs: usize| w.layout().strides() == [rs as isize, cs as isize];
        // Read in place when row-major (a projection) or column-major (a transposed embedding);
        // anything else is copied row-major first.
        let w = if strided(&w, n, 1) || strided(&w, 1, k) { w } else { contiguous(w) };
        let off = w.layout().start_offset();
        let ws = &w.storage::<f32>()[off..off + k * n];
        let weights = if strided(&w, n, 1) { crate::rows::Weights::RowMajor(ws) } else { crate::rows::Weights::ColMajor(ws) };
        let mut out = output(rows * n);
        crate::rows::matmul_rows(xs, rows, weights, k, n, &mut out);
        FlexTensor::from_data(TensorData::new(out, [rows, n]))
    }
}
