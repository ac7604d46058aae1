//! Continuous batching: many prompts decoded together give each request what it gets alone —
//! greedy token for token, seeded sampling the same draws — with more requests than rows,
//! different prompt lengths and budgets, stop ids, a cancelled request, and LongRoPE sequences
//! that cross the original context mid-batch.

use crate::common::fixture;

use burn::tensor::Device;
use phi_core::{GenerationConfig, PhiForCausalLM};

fn requests(vocab: u32, n: usize, longest: usize) -> Vec<(Vec<u32>, GenerationConfig)> {
    (0..n)
        .map(|i| {
            let len = 1 + (i * 7) % longest;
            let prompt: Vec<u32> = (0..len).map(|t| ((i * 31 + t * 17 + 3) as u32) % vocab).collect();
            let new = 3 + (i * 5) % 9;
            let config = match i % 3 {
                0 => GenerationConfig::greedy(new),
                1 => GenerationConfig::sampling(new, 0.9, i as u64).with_top_k(20),
                _ => GenerationConfig::sampling(new, 1.1, 100 + i as u64).with_top_p(0.9).with_stop_tokens([(i as u32 * 13) % vocab, 7]),
            };
            (prompt, config)
        })
        .collect()
}

#[test]
fn a_batch_gives_every_request_what_it_gets_alone() {
    let device = Device::default();
    // phi3-longrope-tiny: prompts up to 30 tokens plus up to 11 new cross its original 32.
    for (dir, longest) in [("phi-tiny", 12), ("phi3-gqa-tiny", 12), ("phi3-longrope-tiny", 30)] {
        let model = PhiForCausalLM::from_pretrained(fixture(dir), &device).unwrap();
        let reqs = requests(model.config().vocab_size as u32, 13, longest);
        let alone: Vec<Vec<u32>> = reqs.iter().map(|(p, c)| model.generate(p, c).unwrap()).collect();
        for max_batch in [1, 4, 32] {
            let mut streamed = vec![Vec::new(); reqs.len()];
            let out = model
                .generate_batch(&reqs, max_batch, |i, t| {
                    streamed[i].push(t);
                    true
                })
                .unwrap();
            for (i, (got, want)) in out.iter().zip(&alone).enumerate() {
                assert_eq!(got, want, "{dir}, max_batch {max_batch}: request {i}");
                assert_eq!(streamed[i], want[reqs[i].0.len()..], "{dir}: request {i}'s stream");
            }
        }
    }
}

/// More sequences than the few-rows kernel takes at once (64): the step decodes them in groups,
/// so each still gets exactly what it gets alone (unfiltered sampling included).
#[test]
fn a_batch_wider_than_the_row_kernel_still_gives_each_what_it_gets_alone() {
    let model = PhiForCausalLM::from_pretrained(fixture("phi3-gqa-tiny"), &Device::default()).unwrap();
    let vocab = model.config().vocab_size as u32;
    let reqs: Vec<(Vec<u32>, GenerationConfig)> = (0..70)
        .map(|i| {
            let prompt: Vec<u32> = (0..1 + i % 5).map(|t| ((i * 13 + t * 7 + 1) as u32) % vocab).collect();
            let config = if i % 2 == 0 { GenerationConfig::greedy(4) } else { GenerationConfig::sampling(4, 1.0, i as u64) };
            (prompt, config)
        })
        .collect();
    let alone: Vec<Vec<u32>> = reqs.iter().map(|(p, c)| model.generate(p, c).unwrap()).collect();
    assert_eq!(model.generate_batch(&reqs, 70, |_, _| true).unwrap(), alone);
}

#[test]
fn a_cancelled_request_ends_and_the_others_go_on() {
    let model = PhiForCausalLM::from_pretrained(fixture("phi3-tiny"), &Device::default()).unwrap();
    let reqs: Vec<(Vec<u32>, GenerationConfig)> = (0..3).map(|i| (vec![1 + i, 2, 3], GenerationConfig::greedy(10))).collect();
    let out = model.generate_batch(&reqs, 8, |i, _| i != 1).unwrap();
    // Request 1 stops at its first token (the callback said no); 0 and 2 run their budget.
    assert_eq!(out[1].len(), 3 + 1);
    assert_eq!(out[0], model.generate(&reqs[0].0, &reqs[0].1).unwrap());
    assert_eq!(out[2], model.generate(&reqs[2].0, &reqs[2].1).unwrap());
}

#[test]
fn decode_step_rows_are_each_sequences_cached_logits_and_bad_requests_are_named() {
    let device = Device::default();
    let model = PhiForCausalLM::from_pretrained(fixture("phi3-gqa-tiny"), &device).unwrap();
    let prompts: [&[u32]; 3] = [&[5, 6, 7, 8, 9], &[1], &[10, 20, 30]];
    let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut alone: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
    for (i, p) in prompts.iter().enumerate() {
        model.forward_cached(model.ids_tensor(p).unwrap(), &mut caches[i], true).unwrap();
        model.forward_cached(model.ids_tensor(p).unwrap(), &mut alone[i], true).unwrap();
    }
    let next = [11, 12, 13];
    let batched = model.decode_step(&next, &mut caches).unwrap();
    for i in 0..3 {
        let one = model.forward_cached(model.ids_tensor(&[next[i]]).unwrap(), &mut alone[i], true).unwrap();
        let d = (batched.clone().narrow(0, i, 1).reshape([1, 1, model.config().vocab_size]) - one).abs().max().into_scalar::<f32>();
        assert!(d < 1e-5, "row {i} differs by {d}");
        assert_eq!(caches[i].len(), alone[i].len());
    }
    let e = model.decode_step(&[1, 2], &mut caches).unwrap_err().to_string();
    assert!(e.contains("3 caches for 2 tokens"), "{e}");
    let bad = vec![(vec![1, 2], GenerationConfig::greedy(2)), (vec![], GenerationConfig::greedy(2))];
    let e = model.generate_batch(&bad, 4, |_, _| true).unwrap_err().to_string();
    assert!(e.contains("request 1") && e.contains("at least one token"), "{e}");
    let e = model.generate_batch(&bad[..1], 0, |_, _| true).unwrap_err().to_string();
    assert!(e.contains("max_batch"), "{e}");
}
