//! The SFT objective: supervised fine-tuning as an [`Objective`] ([`Sft`]), with the loss on
//! response tokens only, over examples drawn in a seeded order reshuffled every epoch.
//! [`crate::fit()`] runs it with everything pre-training has: accumulation, precision, clipping,
//! checkpoints and bitwise resume; with [`crate::Weights::Lora`] only the adapters train.
//!
//! The examples themselves — JSONL records, their checks, the learned-token masks and padding —
//! are [`phi_data::sft`]'s; this module adds what needs the model: [`encode`] renders a record's
//! turns with the model's chat template and tokenizes them ([`load_examples`] does it for a file),
//! and [`sft_loss`] is the held-out response loss.

use burn::tensor::{Device, Int, Tensor, TensorData};
use phi_core::chat::ChatTemplate;
use phi_core::{PhiConfig, PhiForCausalLM, Segments};
use phi_data::packing::{pack_bfd, packed_batch};
use phi_data::sft::{SftExample, SftReport, Turn, batch};
use phi_data::{SamplerState, TokenSampler, Tokenizer};

use crate::error::{Result, TrainError};
use crate::objective::{BatchLoss, Forward, Objective};
use crate::{TrainConfig, masked_causal_lm_loss};

fn tensors(examples: &[&SftExample], pad: u32, device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let (ids, mask, len) = batch(examples, pad);
    upload(ids, mask, examples.len(), len, device)
}

fn upload(ids: Vec<u32>, mask: Vec<f32>, n: usize, len: usize, device: &Device) -> (Tensor<2, Int>, Tensor<2>) {
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    (
        Tensor::from_data(TensorData::new(ids, [n, len]), device),
        Tensor::from_data(TensorData::new(mask, [n, len - 1]), device),
    )
}

/// The loss of packed rows (see [`phi_data::packing`]): the mean over their learned tokens, each
/// example computed as if alone.
fn packed_loss(model: &Forward<'_>, rows: &[Vec<&SftExample>], pad: u32) -> Tensor<1> {
    let (ids, mask, len, lengths) = packed_batch(rows, pad);
    let segments = Segments::new(len, &lengths).expect("rows are filled to at most their length");
    let (ids, mask) = upload(ids, mask, rows.len(), len, &model.device());
    masked_causal_lm_loss(model.packed_logits(ids.clone(), &segments), ids, mask)
}

/// Renders `turns` with `template` and tokenizes them: assistant contents and their terminator
/// (`<|end|>`, or EOS for the plain template; with a model's own template, what it writes after
/// the content) are learned, everything else is context. Cut to `max_len` tokens (`true` if
/// cut). Fails when the template refuses the conversation (its own `raise_exception`).
pub fn encode(turns: &[Turn], template: &ChatTemplate, tokenizer: &Tokenizer, eos: u32, max_len: usize) -> std::result::Result<(SftExample, bool), phi_core::chat::ChatError> {
    let mut ex = SftExample { ids: Vec::new(), learn: Vec::new() };
    for piece in template.pieces(turns.iter().map(|t| (t.role.as_str(), t.content.as_str())))? {
        let ids = tokenizer.encode(&piece.text);
        ex.learn.extend(std::iter::repeat_n(piece.response, ids.len()));
        ex.ids.extend(ids);
        if piece.eos_after {
            ex.ids.push(eos);
            ex.learn.push(true);
        }
    }
    let cut = ex.ids.len() > max_len;
    ex.ids.truncate(max_len);
    ex.learn.truncate(max_len);
    Ok((ex, cut))
}

/// A JSONL or Parquet file (`.parquet`) of `{"messages": [...]}` or `{"prompt", "response"}`
/// records as examples ([`encode`]d with `template`); bad records are skipped and reported with
/// their line (or row) number ([`phi_data::sft::load`]).
pub fn load_examples(path: &std::path::Path, template: &ChatTemplate, tokenizer: &Tokenizer, eos: u32, max_len: usize) -> std::io::Result<(Vec<SftExample>, SftReport)> {
    phi_data::sft::load(path, |turns| encode(turns, template, tokenizer, eos, max_len).map_err(|e| e.to_string()))
}

/// Positions whose next token is learned (the loss terms of an example).
fn learned(e: &SftExample) -> usize {
    e.learn.iter().skip(1).filter(|&&l| l).count()
}

/// Mean response-token loss over `examples` (no gradients), `batch_size` at a time.
pub fn sft_loss(model: &PhiForCausalLM, examples: &[SftExample], batch_size: usize, pad: u32) -> f64 {
    let (total, count) = sft_loss_part(model, examples, batch_size, pad, 0, 1);
    if count == 0.0 { f64::NAN } else { total / count }
}

/// Part `part` of `parts` of [`sft_loss`] (batches `part`, `part + parts`, …):
/// `(Σ loss × learned tokens, Σ learned tokens)`.
pub fn sft_loss_part(model: &PhiForCausalLM, examples: &[SftExample], batch_size: usize, pad: u32, part: usize, parts: usize) -> (f64, f64) {
    let device = model.device();
    let (mut total, mut count) = (0.0, 0.0);
    for (_, chunk) in examples.chunks(batch_size.max(1)).enumerate().filter(|(i, _)| crate::dist::takes(*i, part, parts)) {
        let refs: Vec<&SftExample> = chunk.iter().collect();
        let (ids, mask) = tensors(&refs, pad, &device);
        let weight = mask.clone().sum().into_scalar::<f32>() as f64;
        let loss = masked_causal_lm_loss(model.forward(ids.clone()), ids, mask).into_scalar::<f32>() as f64;
        total += loss * weight;
        count += weight;
    }
    (total, count)
}

/// The SFT objective: batches of examples right-padded with `pad`, or packed into full rows
/// ([`Sft::packed`]), loss on learned tokens.
///
/// ```no_run
/// # use phi_train::*;
/// # fn demo(train: &[phi_data::sft::SftExample], val: &[phi_data::sft::SftExample], cfg: &TrainConfig, lora: lora::LoraConfig) -> Result<()> {
/// let mut objective = sft_objective::Sft::new(train, val, /* pad */ 0, cfg.seed)?;
/// let weights = Weights::Lora { base: "base-model".into(), adapter: Adapter::Fresh(lora), quantize: None };
/// let out = fit(&weights, &mut objective, cfg, "runs/sft".as_ref(), Resume::Auto, &burn::tensor::Device::default(), |_| {})?;
/// assert_eq!(out.metrics.last().map(|m| m.step), Some(cfg.max_steps));
/// # Ok(()) }
/// ```
pub struct Sft<'a> {
    train: &'a [SftExample],
    validation: &'a [SftExample],
    pad: u32,
    /// What the sampler draws: one example each, or a packed row of examples.
    rows: Vec<Vec<usize>>,
    /// The packing length, when rows are packed.
    packing: Option<usize>,
    sampler: TokenSampler,
}

impl<'a> Sft<'a> {
    /// One example per row, padded to the batch's longest. Errors if `train` is empty.
    pub fn new(train: &'a [SftExample], validation: &'a [SftExample], pad: u32, seed: u64) -> Result<Self> {
        Self::with_rows(train, validation, pad, seed, (0..train.len()).map(|i| vec![i]).collect(), None)
    }

    /// Examples packed into rows of at most `length` tokens, best-fit decreasing (TRL's `bfd`,
    /// [`phi_data::packing::pack_bfd`]), once, before training: each step draws `batch_size`
    /// rows, reshuffled every epoch. Each example is computed as if alone (positions restart,
    /// attention stays inside it), so a batch's loss is the mean over its examples' learned
    /// tokens, each as it would be alone — what padding gives, at the cost of the tokens only.
    /// (With LongRoPE, each example's own length picks the factors; a padded batch's padded
    /// length picks them for all its rows, and transformers under TRL's padding-free packing
    /// takes the longest position in the batch.) Errors if `train` is empty or an example is
    /// longer than `length`; [`Objective::check`] refuses a `length` beyond the context.
    ///
    /// ```no_run
    /// # use phi_train::*;
    /// # fn demo(train: &[phi_data::sft::SftExample], cfg: &TrainConfig) -> Result<()> {
    /// let mut objective = sft_objective::Sft::packed(train, &[], /* pad */ 0, cfg.seed, /* length */ 2048)?;
    /// println!("{} examples in {} rows", train.len(), objective.rows());
    /// # Ok(()) }
    /// ```
    pub fn packed(train: &'a [SftExample], validation: &'a [SftExample], pad: u32, seed: u64, length: usize) -> Result<Self> {
        let lengths: Vec<usize> = train.iter().map(|e| e.ids.len()).collect();
        let rows = pack_bfd(&lengths, length).map_err(|e| TrainError::Data(format!("packing the training examples: {e}")))?;
        Self::with_rows(train, validation, pad, seed, rows, Some(length))
    }

    fn with_rows(train: &'a [SftExample], validation: &'a [SftExample], pad: u32, seed: u64, rows: Vec<Vec<usize>>, packing: Option<usize>) -> Result<Self> {
        if train.is_empty() {
            return Err(TrainError::Data("SFT needs at least one training example".into()));
        }
        let sampler = TokenSampler::new(rows.len(), seed);
        Ok(Sft { train, validation, pad, rows, packing, sampler })
    }

    /// Rows an epoch draws: the examples, or the packed rows they fill.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }
}

impl<'a> Objective for Sft<'a> {
    /// Rows of examples: one each, or the examples of a packed row.
    type Batch = Vec<Vec<&'a SftExample>>;

    fn check(&self, model: &PhiConfig, _cfg: &TrainConfig) -> Result<()> {
        for (what, set) in [("training", self.train), ("validation", self.validation)] {
            for (i, e) in set.iter().enumerate() {
                if e.ids.len() > model.max_position_embeddings {
                    return Err(TrainError::Data(format!(
                        "{what} example {i} has {} tokens, more than the model's max_position_embeddings ({})",
                        e.ids.len(),
                        model.max_position_embeddings
                    )));
                }
                if let Some(&id) = e.ids.iter().find(|&&id| id as usize >= model.vocab_size) {
                    return Err(TrainError::Data(format!("{what} example {i} has token id {id}, but the model's vocab_size is {}", model.vocab_size)));
                }
            }
        }
        if let Some(n) = self.packing.filter(|&n| n > model.max_position_embeddings) {
            // A row's padding tail is one more sequence: it too must fit the context.
            return Err(TrainError::Data(format!("the packing length {n} is more than the model's max_position_embeddings ({})", model.max_position_embeddings)));
        }
        if let Some((i, e)) = self.packing.and_then(|n| self.train.iter().enumerate().find(|(_, e)| e.ids.len() > n)) {
            return Err(TrainError::Data(format!("training example {i} has {} tokens, more than the packing length {}", e.ids.len(), self.packing.unwrap_or(0))));
        }
        if self.pad as usize >= model.vocab_size {
            return Err(TrainError::Data(format!("the padding id {} is outside the model's vocab_size {}", self.pad, model.vocab_size)));
        }
        Ok(())
    }

    fn next_batch(&mut self, batch_size: usize) -> Self::Batch {
        (0..batch_size).map(|_| self.rows[self.sampler.next_window()].iter().map(|&i| &self.train[i]).collect()).collect()
    }

    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.iter().flatten().map(|e| e.ids.len()).sum()
    }

    fn weight(&self, batch: &Self::Batch) -> f64 {
        batch.iter().flatten().map(|e| learned(e)).sum::<usize>() as f64
    }

    fn loss(&self, model: &Forward<'_>, batch: &Self::Batch) -> BatchLoss {
        let loss = if self.packing.is_some() {
            packed_loss(model, batch, self.pad)
        } else {
            let examples: Vec<&SftExample> = batch.iter().flatten().copied().collect();
            let (ids, mask) = tensors(&examples, self.pad, &model.device());
            masked_causal_lm_loss(model.logits(ids.clone()), ids, mask)
        };
        BatchLoss { loss, metrics: Vec::new() }
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.sampler.state()).expect("sampler state serializes")
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let state: SamplerState = serde_json::from_value(state.clone()).map_err(|e| TrainError::Data(format!("the SFT sampler's state: {e}")))?;
        self.sampler = TokenSampler::resume(self.rows.len(), state);
        Ok(())
    }

    fn fingerprint(&self) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for set in [self.train, self.validation] {
            h.update(&(set.len() as u64).to_le_bytes());
            for e in set {
                h.update(&(e.ids.len() as u64).to_le_bytes());
                for (&id, &l) in e.ids.iter().zip(&e.learn) {
                    h.update(&id.to_le_bytes());
                    h.update(&[l as u8]);
                }
            }
        }
        let packing = self.packing.map_or(String::new(), |n| format!(", packed into {} rows of {n}", self.rows.len()));
        format!("sft {} train / {} validation examples, pad {}{packing}, {:016x}", self.train.len(), self.validation.len(), self.pad, h.digest())
    }

    fn validate_part(&self, model: &PhiForCausalLM, cfg: &TrainConfig, part: usize, parts: usize) -> Option<(f64, f64)> {
        (!self.validation.is_empty()).then(|| sft_loss_part(model, self.validation, cfg.batch_size, self.pad, part, parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phi_data::sft::parse_record;

    fn tokenizer() -> Tokenizer {
        let texts = ["hello world", "def f(x): return x", "<|user|> <|assistant|> <|end|>"];
        Tokenizer::train_bpe(texts.iter().cycle().take(30), 300).unwrap()
    }

    #[test]
    fn only_response_and_its_terminator_are_learned() {
        let tok = tokenizer();
        let turns = parse_record(r#"{"prompt": "hello world", "response": "def f(x): return x"}"#).unwrap();
        let (plain, _) = encode(&turns, &ChatTemplate::Plain, &tok, 7, 512).unwrap();
        let prompt_len = tok.encode("hello world").len();
        assert!(plain.learn[..prompt_len].iter().all(|&l| !l));
        assert!(plain.learn[prompt_len..].iter().all(|&l| l));
        assert_eq!(*plain.ids.last().unwrap(), 7, "EOS ends the response and is learned");
        let (phi3, _) = encode(&turns, &ChatTemplate::Phi3, &tok, 7, 512).unwrap();
        let text = tok.decode(&phi3.ids);
        assert_eq!(text, "<|user|>\nhello world<|end|>\n<|assistant|>\ndef f(x): return x<|end|>\n");
        let learned: Vec<u32> = phi3.ids.iter().zip(&phi3.learn).filter(|(_, l)| **l).map(|(i, _)| *i).collect();
        assert_eq!(tok.decode(&learned), "def f(x): return x<|end|>\n");
        let (cut, was_cut) = encode(&turns, &ChatTemplate::Phi3, &tok, 7, 5).unwrap();
        assert!(was_cut && cut.ids.len() == 5);
    }

    #[test]
    fn a_models_own_template_learns_its_responses_and_refuses_what_it_raises_on() {
        let tok = tokenizer();
        // Phi-3.5-mini's template, with a check of its own in the style of many fine-tunes'.
        let source = "{% for m in messages %}{% if m.role == 'user' and loop.previtem is defined and loop.previtem.role == 'user' %}\
                      {{ raise_exception('two user turns in a row') }}{% endif %}\
                      {{ '<|' + m.role + '|>\n' + m.content + '<|end|>\n' }}{% endfor %}\
                      {% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";
        let template = ChatTemplate::jinja(source, "", "<|endoftext|>", "test").unwrap();
        let turns = parse_record(r#"{"prompt": "hello world", "response": "def f(x): return x"}"#).unwrap();
        let (ex, _) = encode(&turns, &template, &tok, 7, 512).unwrap();
        assert_eq!(tok.decode(&ex.ids), "<|user|>\nhello world<|end|>\n<|assistant|>\ndef f(x): return x<|end|>\n<|endoftext|>");
        let learned: Vec<u32> = ex.ids.iter().zip(&ex.learn).filter(|(_, l)| **l).map(|(i, _)| *i).collect();
        assert_eq!(tok.decode(&learned), "def f(x): return x<|end|>\n<|endoftext|>");
        // The same as the built-in Phi-3 format up to the EOS the template writes at the end.
        let (builtin, _) = encode(&turns, &ChatTemplate::Phi3, &tok, 7, 512).unwrap();
        assert_eq!(ex.ids[..builtin.ids.len()], builtin.ids[..]);
        assert_eq!(ex.learn[..builtin.learn.len()], builtin.learn[..]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sft.jsonl");
        let bad = r#"{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}"#;
        std::fs::write(&path, format!("{{\"prompt\": \"hello\", \"response\": \"world\"}}\n{bad}\n")).unwrap();
        let (examples, report) = load_examples(&path, &template, &tok, 7, 512).unwrap();
        assert_eq!(examples.len(), 1);
        assert_eq!(report.skipped.len(), 1);
        assert_eq!(report.skipped[0].0, 2);
        assert!(report.skipped[0].1.contains("two user turns in a row"), "{:?}", report.skipped);
    }
}
