//! Supervised fine-tuning data: JSONL conversations or prompt/response pairs, rendered with the
//! model's chat template, tokenized with a mask so that only response tokens are learned.
//!
//! Records: `{"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}` or
//! `{"prompt": "…", "response": "…"}`. A bad record (invalid JSON or UTF-8, missing fields, an
//! empty response) is skipped and reported with its line number — never a crash mid-training.

use std::path::Path;

use serde_json::Value;


/// One message of a conversation record (`role` is `system`, `user` or `assistant`). How it
/// is rendered is the model's business: `phi_core::chat::ChatTemplate`.
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

/// Loads a JSONL file of records, each turned into an example by `encode` (which renders and
/// tokenizes the turns and says whether it cut them to a length limit; `phi_train::sft_objective::encode`
/// does it with a model's chat template). A record that does not parse, or whose response the
/// limit cut off entirely, is skipped with its line number and the reason.
pub fn load_jsonl(path: &Path, mut encode: impl FnMut(&[Turn]) -> (SftExample, bool)) -> std::io::Result<(Vec<SftExample>, SftReport)> {
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
                let (ex, cut) = encode(&turns);
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

    /// A stand-in encoder: one id per turn, the assistant's learned.
    fn encode(turns: &[Turn]) -> (SftExample, bool) {
        let ids = (0..turns.len() as u32).collect();
        (SftExample { ids, learn: turns.iter().map(|t| t.role == "assistant").collect() }, false)
    }

    #[test]
    fn bad_records_are_skipped_with_line_numbers() {
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
        let (examples, report) = load_jsonl(&path, encode).unwrap();
        assert_eq!(examples.len(), 2);
        let lines: Vec<usize> = report.skipped.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 7], "{:?}", report.skipped);
        assert!(report.skipped[1].1.contains("empty response"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
