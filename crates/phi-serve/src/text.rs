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
///
/// Decoding is incremental, as text-generation-inference does it: only the ids since the last
/// released piece are decoded (with the few before them for context), so the cost per token
/// stays constant, and a decoder whose output is not prefix-stable (SentencePiece byte
/// fallback turns an unfinished character into several U+FFFD) cannot move text that was
/// already released.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Ids `prefix..read` decode to the text just before the pending ids.
    prefix: usize,
    read: usize,
    /// All the text decoded so far.
    text: String,
    stop: &'a [String],
    /// Bytes of `text` released.
    released: usize,
    /// Where a stop string began, once one has.
    stopped_at: Option<usize>,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer, stop: &'a [String]) -> Self {
        TextStream { tokenizer, ids: Vec::new(), prefix: 0, read: 0, text: String::new(), stop, released: 0, stopped_at: None }
    }

    /// Decodes the pending ids; with `last`, even if they end inside a character.
    fn decode(&mut self, last: bool) {
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read]);
        let now = self.tokenizer.decode(&self.ids[self.prefix..]);
        if now.len() <= before.len() || (!last && now.ends_with('\u{FFFD}')) {
            return;
        }
        if let Some(new) = now.get(before.len()..) {
            self.text.push_str(new);
            self.prefix = self.read;
            self.read = self.ids.len();
        }
    }

    /// Adds a token; returns the text that is now final (possibly empty).
    pub fn push(&mut self, token: u32) -> String {
        if self.stopped_at.is_some() {
            return String::new();
        }
        self.ids.push(token);
        self.decode(false);
        self.release(false)
    }

    /// Releases what is final: up to a stop string, else all but what could still become one.
    fn release(&mut self, last: bool) -> String {
        let from = self.released;
        let found = self.stop.iter().filter(|s| !s.is_empty()).filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i)).min();
        let mut end = match found {
            Some(at) => {
                self.stopped_at = Some(at);
                at
            }
            None if last => self.text.len(),
            None => self.text.len().saturating_sub(self.stop.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0)),
        };
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        if end <= from {
            return String::new();
        }
        self.released = end;
        self.text[from..end].to_string()
    }

    /// Whether a stop string has been generated (nothing after it is released).
    pub fn stopped(&self) -> bool {
        self.stopped_at.is_some()
    }

    /// The rest of the text once generation has ended (what was held back, an unfinished
    /// character as U+FFFD), up to a stop string.
    pub fn finish(&mut self) -> String {
        if self.stopped_at.is_some() {
            return String::new();
        }
        self.decode(true);
        self.release(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let texts = ["hello world, the café is open", "é è ü 🦀 crab emoji", "stop here please"];
        Tokenizer::train_bpe(texts.iter().cycle().take(60).copied(), 300).unwrap()
    }

    #[test]
    fn pieces_join_into_the_whole_decode_and_never_split_a_character() {
        let tok = tokenizer();
        let ids = tok.encode("the café 🦀 is open");
        let mut s = TextStream::new(&tok, &[]);
        let mut out = String::new();
        for &t in &ids {
            let piece = s.push(t);
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&s.finish());
        assert_eq!(out, tok.decode(&ids));
    }

    #[test]
    fn a_stop_string_ends_the_text_before_it_even_across_tokens_and_at_the_end() {
        let tok = tokenizer();
        let ids = tok.encode("hello world, stop here please");
        let stop = vec!["stop here".to_string()];
        let mut s = TextStream::new(&tok, &stop);
        let mut out = String::new();
        for &t in &ids {
            out.push_str(&s.push(t));
            if s.stopped() {
                break;
            }
        }
        out.push_str(&s.finish());
        assert!(s.stopped());
        assert_eq!(out, "hello world, ");
        // Generation that ends while the stop string is still held back: found by finish.
        let ids = tok.encode("hello stop here");
        let mut s = TextStream::new(&tok, &stop);
        let mut out: String = ids.iter().map(|&t| s.push(t)).collect();
        out.push_str(&s.finish());
        assert_eq!(out, "hello ");
        assert!(s.stopped());
    }
}
