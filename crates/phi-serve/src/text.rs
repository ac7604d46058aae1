//! Text out of token ids as they are generated: the ids that end a reply, incremental decoding
//! that never splits a character, and OpenAI's `stop` strings.

use phi_core::PhiForCausalLM;
use phi_data::Tokenizer;

/// The ids that end a reply: the model's EOS ids, `generation_config.json`'s, and Phi-3's
/// `<|end|>` when the tokenizer has it. Sorted, without duplicates.
pub fn stop_ids(model_dir: &std::path::Path, model: &PhiForCausalLM, tokenizer: &Tokenizer) -> Vec<u32> {
    let mut ids = phi_core::generation::stop_token_ids(model_dir, model.config());
    ids.extend(tokenizer.token_to_id("<|end|>"));
    ids.sort();
    ids.dedup();
    ids
}

/// Generated text, released as it becomes final: never half a character (a byte-level token
/// may end inside one), and never the start of a `stop` string that the next tokens might
/// complete. A stop string found ends the text before it.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    stop: &'a [String],
    /// Bytes of the text already released.
    released: usize,
    /// Where a stop string began, once one has.
    stopped_at: Option<usize>,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer, stop: &'a [String]) -> Self {
        TextStream { tokenizer, ids: Vec::new(), stop, released: 0, stopped_at: None }
    }

    /// Adds a token; returns the text that is now final (possibly empty).
    pub fn push(&mut self, token: u32) -> String {
        self.ids.push(token);
        let text = self.tokenizer.decode(&self.ids);
        if text.ends_with('\u{FFFD}') {
            return String::new();
        }
        if let Some(at) = self.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text[self.released.min(text.len())..].find(s.as_str()).map(|i| i + self.released)).min() {
            self.stopped_at = Some(at);
            return self.release(&text, at);
        }
        // Hold back what could still become a stop string.
        let hold = self.stop.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        let mut end = text.len().saturating_sub(hold);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.release(&text, end)
    }

    fn release(&mut self, text: &str, end: usize) -> String {
        if end <= self.released {
            return String::new();
        }
        let out = text[self.released..end].to_string();
        self.released = end;
        out
    }

    /// Whether a stop string has been generated (nothing after it is released).
    pub fn stopped(&self) -> bool {
        self.stopped_at.is_some()
    }

    /// The rest of the text once generation has ended (what was held back), up to a stop string.
    pub fn finish(&mut self) -> String {
        let text = self.tokenizer.decode(&self.ids);
        let end = self.stopped_at.unwrap_or(text.len());
        self.release(&text, end)
    }
}
