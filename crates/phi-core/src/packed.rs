//! A projection's weight packed for CPU inference (f32 or bf16 in strips, int8 or int4), and what a layer
//! needs to multiply by it: the matrix type ([`PackedMatrix`], phi-kernels' `packed` kernels)
//! and [`packed_linear`]. This sits below [`crate::nn`], which runs it; packing a whole model
//! (walking its listing, the formats' checks, [`PackReport`](crate::quant::PackReport)) is
//! [`crate::quant`], above the model.

use burn::tensor::{Tensor, TensorData};

pub use phi_kernels::packed::{PackedMatrix, WeightFormat};

/// `x Wᵀ + b` with a packed `W`, `x` `[…, in]` → `[…, out]`.
pub(crate) fn packed_linear<const D: usize>(p: &PackedMatrix, x: Tensor<D>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let (_, d_out) = p.dims();
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let device = x.device();
    let xs = x.into_data().convert::<f32>().try_into_vec::<f32>().expect("converted to f32");
    let mut y = vec![0.0f32; rows * d_out];
    p.matmul(&xs, rows, &mut y);
    let mut shape = dims;
    shape[D - 1] = d_out;
    let y = Tensor::<D>::from_data(TensorData::new(y, shape), &device);
    match bias {
        Some(b) => y + b.unsqueeze(),
        None => y,
    }
}
