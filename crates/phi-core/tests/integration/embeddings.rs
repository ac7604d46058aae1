//! Sequence embeddings: the mean of a hidden state over a document's tokens, the same however
//! documents are batched, padded or chunked.

use crate::common;

use burn::tensor::Device;
use common::fixture;
use phi_core::PhiForCausalLM;
use phi_core::embeddings::{EmbeddingConfig, embed};

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(d < tol, "differ by {d}");
}

/// The mean over the positions of `hidden_state(ids, layer)`, computed plainly.
fn plain_mean(model: &PhiForCausalLM, ids: &[u32], layer: usize) -> Vec<f32> {
    let t = ids.len();
    let x = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, t]), &model.device());
    let h = model.hidden_state(x, layer).unwrap().mean_dim(1).into_data().convert::<f32>();
    h.as_slice::<f32>().unwrap().to_vec()
}

#[test]
fn mean_pooled_states_do_not_depend_on_batching_padding_or_chunking() {
    for name in ["phi-tiny", "phi3-tiny"] {
        let model = PhiForCausalLM::from_pretrained(fixture(name), &Device::default()).unwrap();
        let c = model.config().clone();
        let docs: Vec<Vec<u32>> = [3usize, 17, 9, 40, 1].iter().enumerate().map(|(d, &n)| (0..n).map(|i| ((d * 31 + i * 7) % c.vocab_size) as u32).collect()).collect();
        let last = c.num_hidden_layers;
        // One at a time vs several per batch (right-padded): the same vectors.
        let alone: Vec<Vec<f32>> = docs.iter().map(|d| embed(&model, std::slice::from_ref(d), &EmbeddingConfig { batch: 1, ..Default::default() }).unwrap().remove(0)).collect();
        let batched = embed(&model, &docs, &EmbeddingConfig { batch: 3, ..Default::default() }).unwrap();
        for (a, b) in alone.iter().zip(&batched) {
            close(a, b, 1e-5);
        }
        // The default is the final norm's output, meaned over the tokens.
        for (d, v) in docs.iter().zip(&batched) {
            close(v, &plain_mean(&model, d, last), 1e-5);
        }
        // Another layer; a chunked long document is the token-weighted mean of its chunks.
        let layer1 = embed(&model, &docs, &EmbeddingConfig { layer: Some(1), batch: 2, ..Default::default() }).unwrap();
        close(&layer1[3], &plain_mean(&model, &docs[3], 1), 1e-5);
        let chunked = embed(&model, &docs[3..4], &EmbeddingConfig { chunk: Some(16), ..Default::default() }).unwrap().remove(0);
        let parts: Vec<Vec<f32>> = docs[3].chunks(16).map(|p| plain_mean(&model, p, last)).collect();
        let weights: Vec<f32> = docs[3].chunks(16).map(|p| p.len() as f32 / docs[3].len() as f32).collect();
        let want: Vec<f32> = (0..c.hidden_size).map(|j| parts.iter().zip(&weights).map(|(p, w)| p[j] * w).sum()).collect();
        close(&chunked, &want, 1e-5);
        // An empty document is all zeros; a layer past the last is an error.
        assert!(embed(&model, &[vec![]], &EmbeddingConfig::default()).unwrap()[0].iter().all(|&x| x == 0.0));
        assert!(embed(&model, &docs, &EmbeddingConfig { layer: Some(last + 1), ..Default::default() }).is_err());
    }
}
