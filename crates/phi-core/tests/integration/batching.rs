//! Continuous batching: many prompts decoded together give each request what it gets alone —
//! greedy token for token, seeded sampling the same draws — with more requests than rows,
//! different prompt lengths and budgets, stop ids, a cancelled request, and LongRoPE sequences
//! that cross the original context mid-batch.

use crate::common::fixture;

use burn::tensor::Device;
use phi_core::batching::Batcher;
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

/// Chunked prefill: a long prompt joins over several steps while the running sequence decodes
/// at every one of them, and gets what it gets prefilled whole; one cancelled mid-prefill goes.
#[test]
fn a_prompt_prefilled_in_chunks_never_stalls_the_running_ones_and_gets_what_it_gets_whole() {
    for dir in ["phi-tiny", "phi3-gqa-tiny", "phi3-longrope-tiny"] {
        let model = PhiForCausalLM::from_pretrained(fixture(dir), &Device::default()).unwrap();
        let vocab = model.config().vocab_size as u32;
        // 27 tokens: chunks of 8, 8, 8 and 3 (under phi3-longrope-tiny's original 32 with its
        // 4 new tokens).
        let long: Vec<u32> = (0..27).map(|t| (t * 11 + 5) % vocab).collect();
        let short = vec![5 % vocab, 9 % vocab];
        let mut batch = Batcher::new(&model).with_prefill_chunk(8);
        assert!(batch.admit(0, short.clone(), &GenerationConfig::greedy(10)).unwrap().is_none(), "queued: the steps prefill it");
        let first = batch.step().unwrap();
        assert_eq!((first.len(), first[0].id), (1, 0), "{dir}");
        let mut got = vec![short.clone(), long.clone()];
        got[0].push(first[0].token);
        assert!(batch.admit(1, long.clone(), &GenerationConfig::greedy(4)).unwrap().is_none());
        assert_eq!((batch.len(), batch.tokens(1)), (2, Some(&long[..])));
        let mut steps = 0;
        while !batch.is_empty() {
            let chosen = batch.step().unwrap();
            steps += 1;
            if got[0].len() < short.len() + 10 {
                assert!(chosen.iter().any(|c| c.id == 0), "{dir}: step {steps} left the running sequence out");
            }
            assert_eq!(chosen.iter().any(|c| c.id == 1), (4..8).contains(&steps), "{dir}: step {steps}");
            for c in chosen {
                got[c.id].push(c.token);
            }
        }
        assert_eq!(got[0], model.generate(&short, &GenerationConfig::greedy(10)).unwrap(), "{dir}");
        assert_eq!(got[1], model.generate(&long, &GenerationConfig::greedy(4)).unwrap(), "{dir}");
        // Cancelled between two chunks: it leaves, its cache with it.
        let mut batch = Batcher::new(&model).with_prefill_chunk(8);
        batch.admit(6, short.clone(), &GenerationConfig::greedy(10)).unwrap();
        assert!(batch.admit(7, long.clone(), &GenerationConfig::greedy(4)).unwrap().is_none());
        assert!(batch.step().unwrap().iter().all(|c| c.id == 6));
        assert_eq!(batch.prefilling().collect::<Vec<_>>(), [7]);
        assert!(batch.remove(7) && batch.len() == 1 && !batch.remove(7));
        // Alone, its chunks run back to back: the first step gives its first token, the same.
        let mut batch = Batcher::new(&model).with_prefill_chunk(8);
        assert!(batch.admit(0, long.clone(), &GenerationConfig::greedy(4)).unwrap().is_none());
        let mut alone = long.clone();
        let first = batch.step().unwrap();
        assert_eq!(first.len(), 1, "{dir}");
        alone.push(first[0].token);
        while !batch.is_empty() {
            alone.extend(batch.step().unwrap().iter().map(|c| c.token));
        }
        assert_eq!(alone, got[1], "{dir}");
        assert!(batch.take_failed().is_empty());
    }
    // A prompt past LongRoPE's original context is prefilled whole: its first chunks would be
    // rotated with the short factors.
    let model = PhiForCausalLM::from_pretrained(fixture("phi3-longrope-tiny"), &Device::default()).unwrap();
    let prompt: Vec<u32> = (0..40).map(|t| (t * 7 + 1) % model.config().vocab_size as u32).collect();
    let mut batch = Batcher::new(&model).with_prefill_chunk(8);
    let first = batch.admit(0, prompt.clone(), &GenerationConfig::greedy(3)).unwrap().expect("prefilled whole");
    let mut got = prompt.clone();
    got.push(first.token);
    while !batch.is_empty() {
        got.extend(batch.step().unwrap().iter().map(|c| c.token));
    }
    assert_eq!(got, model.generate(&prompt, &GenerationConfig::greedy(3)).unwrap());
}

/// Prompts prefilled by the steps (a prefill budget), several a step beside the running
/// sequences and long ones in chunks, as a server admits them while others decode: every
/// request still gets what it gets alone, token for token and draw for draw.
#[test]
fn prompts_prefilled_beside_the_running_sequences_give_what_they_give_alone() {
    for (dir, longest) in [("phi-tiny", 12), ("phi3-gqa-tiny", 12), ("phi3-longrope-tiny", 30)] {
        let model = PhiForCausalLM::from_pretrained(fixture(dir), &Device::default()).unwrap();
        let reqs = requests(model.config().vocab_size as u32, 13, longest);
        let alone: Vec<Vec<u32>> = reqs.iter().map(|(p, c)| model.generate(p, c).unwrap()).collect();
        for (chunk, max_batch) in [(4, 4), (16, 6), (64, 32)] {
            let mut batch = Batcher::new(&model).with_prefill_chunk(chunk);
            let mut out: Vec<Vec<u32>> = reqs.iter().map(|(p, _)| p.clone()).collect();
            let (mut next, mut most) = (0, 0);
            loop {
                // Two requests join a step at most: they arrive while others decode.
                for _ in 0..2 {
                    if next < reqs.len() && batch.len() < max_batch {
                        // Queued; a prompt past LongRoPE's switch is prefilled at once.
                        if let Some(c) = batch.admit(next, reqs[next].0.clone(), &reqs[next].1).unwrap() {
                            out[c.id].push(c.token);
                        }
                        next += 1;
                    }
                }
                if batch.is_empty() && next == reqs.len() {
                    break;
                }
                let chosen = batch.step().unwrap();
                most = most.max(chosen.len());
                for c in chosen {
                    out[c.id].push(c.token);
                }
                assert!(batch.take_failed().is_empty());
            }
            for (i, (got, want)) in out.iter().zip(&alone).enumerate() {
                assert_eq!(got, want, "{dir}, chunk {chunk}: request {i}");
            }
            assert!(most > 1, "{dir}: never more than one sequence a step");
        }
    }
}

/// `forward_sequences`: a decode token, whole prompts and a prompt's later chunk in one
/// forward, each row bitwise the logits of its tokens run alone, the caches extended alike;
/// more tokens than the few-rows kernel takes run in groups and still match; bad input named.
#[test]
fn forward_sequences_rows_are_each_sequences_own_logits() {
    let device = Device::default();
    for dir in ["phi-tiny", "phi3-gqa-tiny", "phi3-longrope-tiny"] {
        let model = PhiForCausalLM::from_pretrained(fixture(dir), &device).unwrap();
        let vocab = model.config().vocab_size as u32;
        let seq = |n: usize, seed: u32| -> Vec<u32> { (0..n as u32).map(|t| (t * 13 + seed * 7 + 1) % vocab).collect() };
        // (tokens already cached, new tokens): a decode step, a prompt, a later chunk, and
        // enough prompts to pass 64 tokens in all.
        let cases: Vec<(Vec<u32>, Vec<u32>)> = vec![(seq(5, 1), seq(1, 2)), (vec![], seq(9, 3)), (seq(8, 4), seq(6, 5)), (vec![], seq(20, 6)), (vec![], seq(40, 7)), (seq(3, 8), seq(1, 9))];
        let mut caches: Vec<_> = cases.iter().map(|_| model.new_cache()).collect();
        let mut alone: Vec<_> = cases.iter().map(|_| model.new_cache()).collect();
        for (i, (before, _)) in cases.iter().enumerate() {
            if !before.is_empty() {
                model.forward_cached(model.ids_tensor(before).unwrap(), &mut caches[i], true).unwrap();
                model.forward_cached(model.ids_tensor(before).unwrap(), &mut alone[i], true).unwrap();
            }
        }
        let parts: Vec<&[u32]> = cases.iter().map(|(_, new)| new.as_slice()).collect();
        let got = model.forward_sequences(&parts, &mut caches).unwrap();
        assert_eq!(got.dims(), [cases.len(), vocab as usize]);
        let got = got.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        for (i, (before, new)) in cases.iter().enumerate() {
            let one = model.forward_cached(model.ids_tensor(new).unwrap(), &mut alone[i], true).unwrap();
            let one = one.into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
            let row = &got[i * vocab as usize..(i + 1) * vocab as usize];
            assert_eq!(row.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{dir}: sequence {i}");
            assert_eq!(caches[i].len(), before.len() + new.len());
        }
        // The caches hold what alone ones hold: the next token decodes alike.
        let next: Vec<u32> = (0..cases.len() as u32).collect();
        let a = model.decode_step(&next, &mut caches).unwrap().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        let b = model.decode_step(&next, &mut alone).unwrap().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
        assert_eq!(a, b, "{dir}");
    }
    let model = PhiForCausalLM::from_pretrained(fixture("phi3-tiny"), &device).unwrap();
    // More sequences than the head's few-rows kernel takes: its rows run in groups too.
    let vocab = model.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..70u32).map(|i| vec![i % vocab as u32, (i * 7 + 1) % vocab as u32]).collect();
    let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
    let parts: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let got = model.forward_sequences(&parts, &mut caches).unwrap().into_data().convert::<f32>().try_into_vec::<f32>().unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let one = model.forward_cached(model.ids_tensor(p).unwrap(), &mut model.new_cache(), true).unwrap();
        assert_eq!(got[i * vocab..(i + 1) * vocab], one.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()[..], "sequence {i} of 70");
    }
    let mut caches = vec![model.new_cache(), model.new_cache()];
    let e = model.forward_sequences(&[&[1]], &mut caches).unwrap_err().to_string();
    assert!(e.contains("2 caches for 1 sequences"), "{e}");
    let e = model.forward_sequences(&[&[1], &[]], &mut caches).unwrap_err().to_string();
    assert!(e.contains("sequence 1") && e.contains("no new token"), "{e}");
    let too_long = vec![1u32; model.config().max_position_embeddings + 1];
    let e = model.forward_sequences(&[&[1], &too_long], &mut caches).unwrap_err().to_string();
    assert!(e.contains("sequence 1"), "{e}");
    let e = model.forward_sequences(&[&[1], &[u32::MAX]], &mut caches).unwrap_err().to_string();
    assert!(e.contains("sequence 1"), "{e}");
    // Refused before anything ran: the caches are as they were.
    assert!(caches.iter().all(|c| c.is_empty()));
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

/// A step whose forward panics (here: a head of the wrong shape) ends the sequences it ran,
/// reported with why, and leaves the batch usable: it does not panic, and nothing is left half
/// written in it.
#[test]
fn a_step_whose_forward_panics_fails_its_sequences_and_the_batch_goes_on() {
    let device = Device::default();
    let mut model = PhiForCausalLM::from_pretrained(fixture("phi-tiny"), &device).unwrap();
    let head = model.lm_head.as_mut().expect("phi-tiny's head is its own");
    head.weight = burn::module::Param::from_tensor(burn::tensor::Tensor::<2>::zeros([3, 5], &device));
    let mut batch = Batcher::new(&model).with_prefill_chunk(8);
    assert!(batch.admit(0, vec![1, 2, 3], &GenerationConfig::greedy(4)).unwrap().is_none());
    assert!(batch.admit(1, vec![4, 5], &GenerationConfig::greedy(4)).unwrap().is_none());
    let out = batch.step().expect("a panic in the forward is not the step's error");
    assert!(out.is_empty());
    let failed = batch.take_failed();
    assert_eq!(failed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [0, 1]);
    assert!(failed.iter().all(|(_, e)| e.to_string().contains("panicked")), "{failed:?}");
    assert!(batch.is_empty());
    // The next prompt fails the same way, alone, and the batch stays empty and usable.
    batch.admit(2, vec![6], &GenerationConfig::greedy(2)).unwrap();
    assert!(batch.step().unwrap().is_empty());
    assert_eq!(batch.take_failed().len(), 1);
    assert!(batch.is_empty());
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
