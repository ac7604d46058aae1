//! Supervised fine-tuning data: JSONL conversations or prompt/response pairs, rendered with the
//! model's chat template, tokenized with a mask so that only response tokens are learned.
//!
//! Records: `{"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}` or
//! `{"prompt": "…", "response": "…"}`. A bad record (invalid JSON or UTF-8, missing fields, an
//! empty response) is skipped and reported with its line number — never a crash mid-training.

use std::path::Path;

use serde_json::Value;

use crate::tokenizer::Tokenizer;

/// How a conversation becomes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// Phi-3: `<|system|>\n…<|end|>\n<|user|>\n…<|end|>\n<|assistant|>\n…<|end|>\n`.
    Phi3,
    /// Base models (Phi-1/2): the prompt, then the response, then the EOS token.
    Plain,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

/// One tokenized example: `ids`, and `learn[i]` says whether `ids[i]` is a response token the
/// loss counts.
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub ids: Vec<u32>,
    pub learn: Vec<bool>,
}

/// What loading a file did, for the user to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SftReport {
    pub examples: usize,
    /// `(line number, reason)` of every skipped record.
    pub skipped: Vec<(usize, String)>,
    /// Examples cut to the length limit.
    pub truncated: usize,
}

/// Parses one JSONL record into turns; the error says what is wrong with it.
pub fn parse_record(line: &str) -> Result<Vec<Turn>, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let turns = if let Some(messages) = v.get("messages") {
        let messages = messages.as_array().ok_or("`messages` is not a list")?;
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = m.get("role").and_then(Value::as_str).ok_or(format!("messages[{i}] has no `role`"))?;
                let content = m.get("content").and_then(Value::as_str).ok_or(format!("messages[{i}] has no `content`"))?;
                if !["system", "user", "assistant"].contains(&role) {
                    return Err(format!("messages[{i}] has unknown role `{role}`"));
                }
                Ok(Turn { role: role.to_string(), content: content.to_string() })
            })
            .collect::<Result<Vec<_>, String>>()?
    } else {
        let prompt = v.get("prompt").and_then(Value::as_str).ok_or("neither `messages` nor `prompt`")?;
        let response = v.get("response").and_then(Value::as_str).ok_or("no `response`")?;
        vec![Turn { role: "user".into(), content: prompt.into() }, Turn { role: "assistant".into(), content: response.into() }]
    };
    match turns.iter().rposition(|t| t.role == "assistant") {
        None => Err("no assistant turn".into()),
        Some(i) if turns[i].content.trim().is_empty() => Err("empty response".into()),
        Some(_) => Ok(turns),
    }
}

/// Renders and tokenizes `turns`; assistant contents and their terminator (`<|end|>` / EOS) are
/// learned, everything else is context. Cut to `max_len` tokens (`true` if cut).
pub fn encode(turns: &[Turn], template: ChatTemplate, tokenizer: &Tokenizer, eos: u32, max_len: usize) -> (SftExample, bool) {
    let mut ex = SftExample { ids: Vec::new(), learn: Vec::new() };
    let push = |text: &str, learn: bool, ex: &mut SftExample| {
        let ids = tokenizer.encode(text);
        ex.learn.extend(std::iter::repeat_n(learn, ids.len()));
        ex.ids.extend(ids);
    };
    match template {
        ChatTemplate::Phi3 => {
            for t in turns {
                push(&format!("<|{}|>\n", t.role), false, &mut ex);
                let learn = t.role == "assistant";
                push(&t.content, learn, &mut ex);
                // The model must learn to stop: the end marker of a response is a target too.
                push("<|end|>\n", learn, &mut ex);
            }
        }
        ChatTemplate::Plain => {
            for t in turns {
                let learn = t.role == "assistant";
                push(&t.content, learn, &mut ex);
                if learn {
                    ex.ids.push(eos);
                    ex.learn.push(true);
                }
            }
        }
    }
    let cut = ex.ids.len() > max_len;
    ex.ids.truncate(max_len);
    ex.learn.truncate(max_len);
    (ex, cut)
}

/// Loads a JSONL file of records.
pub fn load_jsonl(
    path: &Path,
    template: ChatTemplate,
    tokenizer: &Tokenizer,
    eos: u32,
    max_len: usize,
) -> std::io::Result<(Vec<SftExample>, SftReport)> {
    let bytes = std::fs::read(path)?;
    let mut report = SftReport::default();
    let mut examples = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            report.skipped.push((line_no, "not valid UTF-8".into()));
            continue;
        };
        match parse_record(line) {
            Ok(turns) => {
                let (ex, cut) = encode(&turns, template, tokenizer, eos, max_len);
                report.truncated += cut as usize;
                if ex.learn.iter().any(|&l| l) {
                    examples.push(ex);
                } else {
                    report.skipped.push((line_no, "the response was cut off entirely by the length limit".into()));
                }
            }
            Err(reason) => report.skipped.push((line_no, reason)),
        }
    }
    report.examples = examples.len();
    Ok((examples, report))
}

/// Pads examples to a batch `[n, len]` (right padding with `pad`) and the matching target mask
/// for next-token prediction: `mask[i][t]` is 1 when token `t + 1` is a learned token.
pub fn batch(examples: &[&SftExample], pad: u32) -> (Vec<u32>, Vec<f32>, usize) {
    let len = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(2);
    let mut ids = Vec::with_capacity(examples.len() * len);
    let mut mask = Vec::with_capacity(examples.len() * (len - 1));
    for e in examples {
        ids.extend(e.ids.iter().copied().chain(std::iter::repeat(pad)).take(len));
        mask.extend((1..len).map(|t| if e.learn.get(t).copied().unwrap_or(false) { 1.0 } else { 0.0 }));
    }
    (ids, mask, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let texts = ["hello world", "def f(x): return x", "<|user|> <|assistant|> <|end|>"];
        Tokenizer::train_bpe(texts.iter().cycle().take(30), 300).unwrap()
    }

    #[test]
    fn bad_records_are_skipped_with_line_numbers() {
        let tok = tokenizer();
        let dir = std::env::temp_dir().join(format!("phi-sft-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("data.jsonl");
        let mut content = b"{\"prompt\": \"hi\", \"response\": \"hello\"}\n".to_vec();
        content.extend(b"{\"prompt\": \"hi\"}\n");
        content.extend(b"{\"prompt\": \"hi\", \"response\": \"  \"}\n");
        content.extend(b"not json\n");
        content.extend(b"{\"prompt\": \"\xff\xfe\", \"response\": \"x\"}\n");
        content.extend(b"{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\"}]}\n");
        content.extend(b"{\"messages\": [{\"role\": \"robot\", \"content\": \"a\"}]}\n");
        std::fs::write(&path, content).unwrap();
        let (examples, report) = load_jsonl(&path, ChatTemplate::Phi3, &tok, 0, 512).unwrap();
        assert_eq!(examples.len(), 2);
        let lines: Vec<usize> = report.skipped.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 7], "{:?}", report.skipped);
        assert!(report.skipped[1].1.contains("empty response"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_response_and_its_terminator_are_learned() {
        let tok = tokenizer();
        let turns = parse_record(r#"{"prompt": "hello world", "response": "def f(x): return x"}"#).unwrap();
        let (plain, _) = encode(&turns, ChatTemplate::Plain, &tok, 7, 512);
        let prompt_len = tok.encode("hello world").len();
        assert!(plain.learn[..prompt_len].iter().all(|&l| !l));
        assert!(plain.learn[prompt_len..].iter().all(|&l| l));
        assert_eq!(*plain.ids.last().unwrap(), 7, "EOS ends the response and is learned");
        let (phi3, _) = encode(&turns, ChatTemplate::Phi3, &tok, 7, 512);
        let text = tok.decode(&phi3.ids);
        assert_eq!(text, "<|user|>\nhello world<|end|>\n<|assistant|>\ndef f(x): return x<|end|>\n");
        let learned: Vec<u32> = phi3.ids.iter().zip(&phi3.learn).filter(|(_, l)| **l).map(|(i, _)| *i).collect();
        assert_eq!(tok.decode(&learned), "def f(x): return x<|end|>\n");
        let (cut, was_cut) = encode(&turns, ChatTemplate::Phi3, &tok, 7, 5);
        assert!(was_cut && cut.ids.len() == 5);
    }
}
