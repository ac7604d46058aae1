//! HF `tokenizer.json` tokenizers: loading, and training a byte-level BPE on a corpus.

use std::path::Path;

/// A HF tokenizer (`tokenizer.json`).
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TokenizerError {
    pub path: String,
    pub message: String,
}

impl Tokenizer {
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError { path: path.display().to_string(), message: e.to_string() })?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text`, without added special tokens.
    ///
    /// A text of more than [`PIECE_BYTES`] is encoded piece by piece, cut only where the
    /// tokenizer itself separates pre-tokens, so the ids are the same as encoding it whole:
    /// `tokenizers` keeps ~250 bytes of offsets, strings and masks per token until it returns,
    /// which made one 20 MB line cost 4 GB.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_in_pieces(text, PIECE_BYTES)
    }

    fn encode_whole(&self, text: &str) -> Vec<u32> {
        self.inner.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }

    fn encode_in_pieces(&self, text: &str, piece: usize) -> Vec<u32> {
        pieces(&self.inner, text, piece).into_iter().flat_map(|p| self.encode_whole(p)).collect()
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).unwrap_or_default()
    }

    /// Id of a token such as `<|endoftext|>`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Every token (added ones included) by id: two tokenizers with the same give every id the
    /// same meaning, whatever else differs in their files.
    pub fn vocab_by_id(&self) -> std::collections::BTreeMap<u32, String> {
        self.inner.get_vocab(true).into_iter().map(|(token, id)| (id, token)).collect()
    }
}

/// The end-of-text token that separates documents (GPT-2 / Phi-1 convention).
pub const EOS: &str = "<|endoftext|>";

/// Texts longer than this are encoded (and trained on) in pieces (see [`Tokenizer::encode`]).
pub const PIECE_BYTES: usize = 1 << 20;

type Inner = tokenizers::TokenizerImpl<
    tokenizers::ModelWrapper,
    tokenizers::NormalizerWrapper,
    tokenizers::PreTokenizerWrapper,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

/// `text` cut into pieces of at most about `piece` bytes, only at places where `t` separates
/// pre-tokens: each piece tokenizes to what it contributes to the whole text.
fn pieces<'a>(t: &Inner, text: &'a str, piece: usize) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > piece {
        let mut end = piece;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        match last_pretoken_start(t, &rest[..end]) {
            Some(cut) if cut > 0 => {
                out.push(&rest[..cut]);
                rest = &rest[cut..];
            }
            // One pre-token fills the window (a tokenizer without a length cap on a long run):
            // no exact place to cut, so the rest stays whole.
            _ => break,
        }
    }
    out.push(rest);
    out
}

/// Where the last pre-token of `window` starts, splitting as `encode` does (added tokens first,
/// then the pre-tokenizer). Every pre-token before it is complete and the same as in any longer
/// text that starts like `window` (pre-tokenizers match left to right, looking at most one
/// character ahead), so this is an exact place to cut. `None` where cutting could change the
/// ids: a normalizer (e.g. one that prepends `▁` to every text) or no pre-tokenizer (the whole
/// text is one word).
fn last_pretoken_start(t: &Inner, window: &str) -> Option<usize> {
    use tokenizers::PreTokenizer;
    if t.get_normalizer().is_some() {
        return None;
    }
    let pre = t.get_pre_tokenizer()?;
    let mut split = t.get_added_vocabulary().extract_and_normalize(None::<&tokenizers::NormalizerWrapper>, window);
    pre.pre_tokenize(&mut split).ok()?;
    let splits = split.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Byte);
    splits.last().map(|(_, (start, _), _)| *start)
}

/// Longest pre-token, in bytes, of the BPE tokenizers trained here. GPT-2's pre-tokenizer keeps
/// a run of letters, digits or punctuation whole, and BPE cost grows with pre-token length
/// (training rescans the whole word at every merge): one 50 MB line without spaces took 20 GB.
/// Longer runs are cut into pieces of this size; no real token is anywhere near as long.
pub const MAX_PRETOKEN_BYTES: usize = 256;

/// The smallest vocabulary [`Tokenizer::train_bpe`] makes: 256 bytes, `<|endoftext|>` and one
/// merge (below it there is nothing to learn).
pub const MIN_BPE_VOCAB: usize = 258;

impl Tokenizer {
    /// Trains a byte-level BPE tokenizer (GPT-2 style: byte alphabet, no unknown token) with
    /// `<|endoftext|>` as a special token, on `texts`.
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
        use tokenizers::models::TrainerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::{AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder};
        let err = |e: &dyn std::fmt::Display| TokenizerError { path: "<training>".into(), message: e.to_string() };
        if vocab_size < MIN_BPE_VOCAB {
            return Err(err(&format!("vocab_size = {vocab_size}: a byte-level BPE needs at least {MIN_BPE_VOCAB} (256 bytes + {EOS} + one merge)")));
        }
        let mut trainer = TrainerWrapper::BpeTrainer(
            BpeTrainerBuilder::new()
                .vocab_size(vocab_size)
                .min_frequency(2)
                .show_progress(false)
                .special_tokens(vec![AddedToken::from(EOS, true)])
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .build(),
        );
        let byte_level = ByteLevel::default().add_prefix_space(false);
        // After the byte-level mapping every byte is one char, so this caps pre-tokens at
        // MAX_PRETOKEN_BYTES bytes; shorter ones pass through whole. Part of the saved
        // tokenizer.json, so encoding (here and in `transformers`) cuts the same way. `[\s\S]`,
        // not `(?s).`: Python `tokenizers` compiles the pattern with Oniguruma, which refuses the
        // inline flag, so a tokenizer.json with it does not load there.
        let cap = Split::new(
            SplitPattern::Regex(format!("[\\s\\S]{{1,{MAX_PRETOKEN_BYTES}}}")),
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| err(&e))?;
        let pre_tokenizer = Sequence::new(vec![PreTokenizerWrapper::ByteLevel(byte_level), PreTokenizerWrapper::Split(cap)]);
        let mut inner: tokenizers::TokenizerImpl<ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper> =
            TokenizerBuilder::new()
                .with_model(ModelWrapper::BPE(BPE::default()))
                .with_normalizer(None)
                .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre_tokenizer)))
                .with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)))
                .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)))
                .build()
                .map_err(|e| err(&e))?;
        // Long documents go in as pieces cut between pre-tokens: the same word counts, without
        // `tokenizers` holding per-byte offsets for a whole multi-megabyte text at once.
        let cutter = inner.clone();
        let texts = texts.flat_map(move |t| {
            let t = t.as_ref();
            if t.len() <= PIECE_BYTES { vec![t.to_owned()] } else { pieces(&cutter, t, PIECE_BYTES).into_iter().map(str::to_owned).collect() }
        });
        inner.train(&mut trainer, texts).map_err(|e| err(&e))?;
        Ok(Tokenizer { inner: inner.into() })
    }

    /// Writes `tokenizer.json` atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        let path = path.as_ref();
        let err = |e: &dyn std::fmt::Display| TokenizerError { path: path.display().to_string(), message: e.to_string() };
        let tmp = path.with_extension("json.tmp");
        self.inner.save(&tmp, false).map_err(|e| err(&e))?;
        std::fs::rename(&tmp, path).map_err(|e| err(&e))
    }

    /// Writes like [`Tokenizer::save`], but to a path the user named: a file already there is
    /// replaced only if [`check_replaceable`] says it is a tokenizer trained here. The temporary
    /// file is a fresh name of its own, so nothing beside `path` is touched either.
    pub fn save_replacing_only_ours(&self, path: impl AsRef<Path>) -> Result<(), TokenizerError> {
        use std::io::Write;
        let path = path.as_ref();
        let err = |p: &Path, e: &dyn std::fmt::Display| TokenizerError { path: p.display().to_string(), message: e.to_string() };
        check_replaceable(path)?;
        let json = self.inner.to_string(false).map_err(|e| err(path, &e))?;
        let name = path.file_name().ok_or_else(|| err(path, &"names no file"))?.to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let written = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).and_then(|mut f| f.write_all(json.as_bytes()).and_then(|_| f.sync_all()));
        if let Err(e) = written {
            // Ours only if create_new made it.
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                std::fs::remove_file(&tmp).ok();
            }
            return Err(err(&tmp, &e));
        }
        // Checked again: the file may have appeared while training.
        if let Err(e) = check_replaceable(path).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| err(path, &e))) {
            std::fs::remove_file(&tmp).ok();
            return Err(e);
        }
        Ok(())
    }

    /// Adds ordinary (not special) tokens `<extra_N>` until the vocabulary holds `size` ids, and
    /// returns how many it added; a vocabulary already that large is left as it is. For a model
    /// whose embedding must have exactly `size` rows, each id a token that decodes to text: the
    /// random model of `phi bench serve --vocab 50304` gets GPT-2's vocabulary size from a BPE
    /// that training on its synthetic words stops short of (~15k ids). A text names these
    /// tokens only by spelling `<extra_N>`.
    ///
    /// ```
    /// let corpus: Vec<String> = (0..20).map(|i| format!("def f{i}(x): return x + {i}")).collect();
    /// let mut tok = phi_data::Tokenizer::train_bpe(corpus.iter(), 300).unwrap();
    /// let added = tok.pad_vocab(1000);
    /// assert_eq!(tok.vocab_size(), 1000);
    /// assert_eq!(tok.decode(&[999]), format!("<extra_{}>", added - 1));
    /// ```
    pub fn pad_vocab(&mut self, size: usize) -> usize {
        let need = size.saturating_sub(self.vocab_size());
        // The first names not taken (a second padding, or a vocabulary that spells one already).
        let mut extra = Vec::with_capacity(need);
        for i in 0.. {
            if extra.len() == need {
                break;
            }
            let name = format!("<extra_{i}>");
            if self.inner.token_to_id(&name).is_none() {
                extra.push(tokenizers::AddedToken::from(name, false));
            }
        }
        self.inner.add_tokens(&extra)
    }

    /// Id of [`EOS`], if the vocabulary has it.
    pub fn eos_id(&self) -> Option<u32> {
        self.token_to_id(EOS)
    }
}

/// Whether a trained tokenizer may be written to `path`: nothing is there, or a tokenizer this
/// module trained is (the same normalizer, pre-tokenizer, post-processor and decoder as
/// [`Tokenizer::train_bpe`] writes — the byte-level pre-tokenizer capped at
/// [`MAX_PRETOKEN_BYTES`] is ours alone — a BPE model, and `<|endoftext|>` as its only added
/// token). Anything else (a user's notes, a downloaded `tokenizer.json`, a folder, a symbolic
/// link) is an error naming the path: the framework never replaces a file it did not write.
pub fn check_replaceable(path: &Path) -> Result<(), TokenizerError> {
    let refuse = |why: String| {
        Err(TokenizerError {
            path: path.display().to_string(),
            message: format!("{why}; it is not a tokenizer this tool trained, so it is left as it is (remove it or write elsewhere)"),
        })
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TokenizerError { path: path.display().to_string(), message: e.to_string() }),
        Ok(m) if m.file_type().is_symlink() => return refuse("is a symbolic link".into()),
        Ok(m) if !m.is_file() => return refuse("exists and is not a file".into()),
        // Not read whole: a 200k-token vocabulary with its merges is a few tens of MB.
        Ok(m) if m.len() > 1 << 30 => return refuse(format!("exists and holds {} bytes, far more than a tokenizer", m.len())),
        Ok(_) => {}
    }
    let text = match std::fs::read(path).map(String::from_utf8) {
        Ok(Ok(t)) => t,
        Ok(Err(_)) => return refuse("exists and is not text".into()),
        Err(e) => return Err(TokenizerError { path: path.display().to_string(), message: e.to_string() }),
    };
    let Ok(found) = serde_json::from_str::<serde_json::Value>(&text) else {
        return refuse("exists and is not JSON".into());
    };
    // What training writes, whatever the corpus: the parts that do not depend on it.
    let reference = Tokenizer::train_bpe(std::iter::empty::<&str>(), MIN_BPE_VOCAB)?;
    let reference: serde_json::Value = serde_json::from_str(&reference.inner.to_string(false).map_err(|e| TokenizerError { path: "<training>".into(), message: e.to_string() })?)
        .expect("tokenizers writes JSON");
    let added: Vec<Option<&str>> = found["added_tokens"].as_array().map(|a| a.iter().map(|t| t["content"].as_str()).collect()).unwrap_or_default();
    let same = ["normalizer", "pre_tokenizer", "post_processor", "decoder"].iter().all(|k| found[k] == reference[k]);
    if !same || found["model"]["type"] != "BPE" || added != [Some(EOS)] {
        return refuse("exists and is not a tokenizer trained here".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_bpe_round_trips_text_and_knows_eos() {
        let corpus = ["def add(a, b):\n    return a + b\n", "def sub(a, b):\n    return a - b\n", "print(add(1, 2))\n"];
        let texts: Vec<String> = (0..20).flat_map(|_| corpus.iter().map(|s| s.to_string())).collect();
        let tok = Tokenizer::train_bpe(texts.iter(), 300).unwrap();
        assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 256);
        let text = "def add(x, y):\n    return x + y  # ünïcödé\n";
        assert_eq!(tok.decode(&tok.encode(text)), text);
        let eos = tok.eos_id().unwrap();
        assert_eq!(tok.encode(EOS), vec![eos]);
        let dir = std::env::temp_dir().join(format!("phi-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        tok.save(dir.join("tokenizer.json")).unwrap();
        let back = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert_eq!(back.encode(text), tok.encode(text));
        // Python `tokenizers` (transformers) compiles saved patterns with Oniguruma, which
        // refuses inline flags such as `(?s)`: the file must carry none to load there.
        let saved = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
        assert!(!saved.contains("(?"), "an inline regex flag in the saved tokenizer");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Padding gives exactly the size asked for, every new id decodes to its own text, and the
    /// ids of ordinary text do not change.
    #[test]
    fn a_padded_vocabulary_has_the_size_asked_and_encodes_text_as_before() {
        let corpus: Vec<String> = (0..20).map(|i| format!("def f{i}(x):\n    return x + {i}\n")).collect();
        let mut tok = Tokenizer::train_bpe(corpus.iter(), 300).unwrap();
        let (before, text) = (tok.vocab_size(), "def f7(y):\n    return y + 77 <extra\n");
        let ids = tok.encode(text);
        assert_eq!(tok.pad_vocab(before - 1), 0, "never shrinks");
        assert_eq!(tok.pad_vocab(before + 700), 700);
        assert_eq!(tok.vocab_size(), before + 700);
        assert_eq!(tok.encode(text), ids);
        for id in [before, before + 699] {
            let piece = tok.decode(&[id as u32]);
            assert_eq!(piece, format!("<extra_{}>", id - before));
            assert_eq!(tok.encode(&piece), vec![id as u32]);
        }
        assert_eq!(tok.pad_vocab(before + 700), 0);
        // Padding again grows it with new names.
        assert_eq!(tok.pad_vocab(before + 750), 50);
        assert_eq!(tok.vocab_size(), before + 750);
        assert_eq!(tok.decode(&[(before + 749) as u32]), "<extra_749>");
    }

    #[test]
    fn only_a_tokenizer_trained_here_is_replaced_and_a_vocabulary_below_258_is_refused() {
        let corpus: Vec<String> = (0..20).map(|i| format!("def f{i}(x):\n    return x + {i}\n")).collect();
        let tok = Tokenizer::train_bpe(corpus.iter(), 300).unwrap();
        let dir = std::env::temp_dir().join(format!("phi-tok-owned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ours = dir.join("tok.json");
        tok.save_replacing_only_ours(&ours).unwrap();
        // A second run replaces its own file.
        tok.save_replacing_only_ours(&ours).unwrap();
        assert_eq!(Tokenizer::from_file(&ours).unwrap().vocab_size(), tok.vocab_size());
        // A user's file, a downloaded tokenizer, a folder: refused by name, left as they were.
        let notes = dir.join("mynotes.txt");
        std::fs::write(&notes, "my notes").unwrap();
        let gpt2 = dir.join("tokenizer.json");
        std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizers/gpt2/tokenizer.json"), &gpt2).unwrap();
        let before = std::fs::read(&gpt2).unwrap();
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        for path in [&notes, &gpt2, &sub] {
            let e = tok.save_replacing_only_ours(path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()) && e.contains("not a tokenizer this tool trained"), "{e}");
        }
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes");
        assert_eq!(std::fs::read(&gpt2).unwrap(), before);
        // No temporary file is left behind.
        let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["mynotes.txt", "sub", "tok.json", "tokenizer.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = Tokenizer::train_bpe(corpus.iter(), 257).err().expect("refused").to_string();
        assert!(e.contains("vocab_size = 257") && e.contains("258"), "{e}");
    }

    #[test]
    fn encoding_in_pieces_gives_the_ids_of_encoding_whole() {
        let corpus: Vec<String> = (0..30).map(|i| format!("def f{i}(x):\n    return x * {i}  # it's abc\n")).collect();
        let trained = Tokenizer::train_bpe(corpus.iter(), 320).unwrap();
        let gpt2 = Tokenizer::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizers/gpt2/tokenizer.json")).unwrap();
        // Everything a cut could land in: words, numbers, punctuation, contractions, runs of
        // spaces and newlines, multi-byte characters, a long run (capped in `trained`), and the
        // special token, which is split out before pre-tokenization.
        let mut text = String::new();
        for i in 0..400 {
            text += &format!("def  f{i}(x):\n\n    return x*{i} # it's ünïcödé  \t\n{}<|endoftext|>  ", "z".repeat(i % 7 * 100));
        }
        for tok in [&trained, &gpt2] {
            let whole = tok.encode_whole(&text);
            for piece in [300, 1000, 4096] {
                assert_eq!(tok.encode_in_pieces(&text, piece), whole, "pieces of {piece} bytes");
            }
        }
    }

    #[test]
    fn long_runs_are_cut_into_capped_pre_tokens_and_short_text_is_untouched() {
        let corpus: Vec<String> = (0..30).map(|i| format!("def f{i}(x):\n    return x * {i}  # abcdefgh\n")).collect();
        let tok = Tokenizer::train_bpe(corpus.iter(), 300).unwrap();
        // A 2 MB single line with no spaces: one GPT-2 pre-token without the cap.
        let run = "abcdefgh".repeat(2 << 17);
        let chunk = &run[..MAX_PRETOKEN_BYTES];
        assert_eq!(run.len() % MAX_PRETOKEN_BYTES, 0);
        use tokenizers::PreTokenizer;
        let mut pieces = tokenizers::PreTokenizedString::from(run.as_str());
        tok.inner.get_pre_tokenizer().unwrap().pre_tokenize(&mut pieces).unwrap();
        let lens: Vec<usize> = pieces
            .get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Byte)
            .iter()
            .map(|(_, (a, b), _)| b - a)
            .collect();
        assert_eq!(lens.len(), run.len() / MAX_PRETOKEN_BYTES, "one pre-token per {MAX_PRETOKEN_BYTES} bytes");
        assert!(lens.iter().all(|&n| n == MAX_PRETOKEN_BYTES));
        let ids = tok.encode(&run);
        assert_eq!(ids.len(), tok.encode(chunk).len() * lens.len(), "every piece is encoded alike");
        assert_eq!(tok.decode(&ids), run);
        // Ordinary text keeps GPT-2's pre-tokens whole.
        let mut short = tokenizers::PreTokenizedString::from("def f(x): return x");
        tok.inner.get_pre_tokenizer().unwrap().pre_tokenize(&mut short).unwrap();
        let words: Vec<&str> = short.get_splits(tokenizers::OffsetReferential::Original, tokenizers::OffsetType::Byte).iter().map(|(s, _, _)| *s).collect();
        assert_eq!(words, ["def", "Ġf", "(", "x", "):", "Ġreturn", "Ġx"]);
        // Training on the long line itself is bounded the same way.
        Tokenizer::train_bpe([run.as_str()].into_iter(), 300).unwrap();
    }
}
