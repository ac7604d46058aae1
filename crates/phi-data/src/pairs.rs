//! Preference data: JSONL pairs of a prompt with a chosen and a rejected completion, as TRL's
//! DPO datasets hold them, next to [`crate::sft`]'s fine-tuning examples.
//!
//! Records: token ids (`{"prompt_ids": […], "chosen_ids": […], "rejected_ids": […]}`, used as
//! they are), or text (`{"prompt": …, "chosen": …, "rejected": …}`), each field a string or a
//! message list (`[{"role": "system"|"user"|"assistant", "content": "…"}, …]`). Text is the
//! model's business to render and tokenize (its chat template: `phi_train::preference::PairEncoder`),
//! so [`load_jsonl`] takes the encoder as a closure, as [`crate::sft::load_jsonl`] does. A bad
//! record (invalid JSON or UTF-8, a missing field, an empty completion, an unknown role) is
//! skipped and reported with its line number — never a crash mid-training.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sft::Turn;

/// One preference pair as token ids: the prompt, and the completions that follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
}

/// A text field of a record: a plain string, or a message list.
#[derive(Debug, Clone, PartialEq)]
pub enum PairText {
    Text(String),
    Messages(Vec<Turn>),
}

/// One record, parsed and checked, before any tokenizer has seen it.
#[derive(Debug, Clone, PartialEq)]
pub enum PairRecord {
    /// Token ids: no tokenizer needed (both completions are non-empty).
    Ids(TokenPair),
    /// Text to render and tokenize (a string completion is not blank; a message list's
    /// roles are known ones).
    Text { prompt: PairText, chosen: PairText, rejected: PairText },
}

/// What loading a preference file did, for the user to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairReport {
    pub pairs: usize,
    /// `(line number, reason)` of every skipped record (unreadable, or nothing left to learn
    /// after truncation).
    pub skipped: Vec<(usize, String)>,
    /// Pairs with a row longer than the batching's `max_length`, kept cut.
    pub truncated: usize,
}

fn ids_field(v: &Value, key: &str) -> Result<Option<Vec<u32>>, String> {
    match v.get(key) {
        // A Parquet row's absent column is a null.
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().filter(|&n| n <= u32::MAX as u64).map(|n| n as u32).ok_or_else(|| format!("`{key}` holds {x}, not a token id")))
            .collect::<Result<Vec<u32>, String>>()
            .map(Some),
        Some(other) => Err(format!("`{key}` is {other}, not a list of token ids")),
    }
}

/// The messages of a field that is a message list.
fn messages(v: &Value, key: &str) -> Result<Vec<Turn>, String> {
    let list = v.as_array().ok_or_else(|| format!("`{key}` is neither text nor a list of messages"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| format!("{key}[{i}] has no `role`"))?;
            let content = m.get("content").and_then(Value::as_str).ok_or_else(|| format!("{key}[{i}] has no `content`"))?;
            if !["system", "user", "assistant"].contains(&role) {
                return Err(format!("{key}[{i}] has unknown role `{role}`"));
            }
            Ok(Turn { role: role.to_string(), content: content.to_string() })
        })
        .collect()
}

/// Parses one JSONL record; the error says what is wrong with it. Token ids win when
/// `prompt_ids` is there; otherwise the record is text.
pub fn parse_record(line: &str) -> Result<PairRecord, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    parse_value(&v)
}

/// [`parse_record`] of a record already parsed (a Parquet row, whose absent fields are nulls).
pub fn parse_value(v: &Value) -> Result<PairRecord, String> {
    if let Some(prompt_ids) = ids_field(v, "prompt_ids")? {
        let chosen_ids = ids_field(v, "chosen_ids")?.ok_or("no `chosen_ids`")?;
        let rejected_ids = ids_field(v, "rejected_ids")?.ok_or("no `rejected_ids`")?;
        if chosen_ids.is_empty() || rejected_ids.is_empty() {
            return Err("an empty completion".into());
        }
        return Ok(PairRecord::Ids(TokenPair { prompt_ids, chosen_ids, rejected_ids }));
    }
    let field = |key: &str, completion: bool| -> Result<PairText, String> {
        match v.get(key).filter(|x| !x.is_null()).ok_or_else(|| format!("no `{key}` (nor `{key}_ids`)"))? {
            Value::String(s) if completion && s.trim().is_empty() => Err(format!("empty `{key}`")),
            Value::String(s) => Ok(PairText::Text(s.clone())),
            other => messages(other, key).map(PairText::Messages),
        }
    };
    Ok(PairRecord::Text { prompt: field("prompt", false)?, chosen: field("chosen", true)?, rejected: field("rejected", true)? })
}

/// Loads a JSONL file of preference records, each turned into a pair by `encode` (which
/// tokenizes a text record and says whether the batching will cut the pair;
/// `phi_train::preference::load_pairs` does it with a model's tokenizer and chat template). A
/// record that does not parse, or that `encode` refuses (`Err(why)`: a text record without a
/// tokenizer, a pair the truncation would leave nothing of), is skipped with its line number
/// and the reason.
pub fn load_jsonl(path: &Path, mut encode: impl FnMut(PairRecord) -> Result<(TokenPair, bool), String>) -> std::io::Result<(Vec<TokenPair>, PairReport)> {
    let bytes = std::fs::read(path)?;
    let (mut pairs, mut report) = (Vec::new(), PairReport::default());
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8".to_string()).and_then(parse_record).and_then(&mut encode);
        match parsed {
            Ok((pair, cut)) => {
                report.truncated += cut as usize;
                pairs.push(pair)
            }
            Err(why) => report.skipped.push((i + 1, why)),
        }
    }
    report.pairs = pairs.len();
    Ok((pairs, report))
}

/// [`load_jsonl`] for JSONL, or the rows of a Parquet file (`.parquet`, one record per row:
/// `prompt`/`chosen`/`rejected` as strings or message lists, or the `_ids` columns;
/// [`crate::parquet::for_each_row`]), skipped rows reported by row number.
pub fn load(path: &Path, mut encode: impl FnMut(PairRecord) -> Result<(TokenPair, bool), String>) -> std::io::Result<(Vec<TokenPair>, PairReport)> {
    if !crate::parquet::is_parquet(path) {
        return load_jsonl(path, encode);
    }
    let (mut pairs, mut report) = (Vec::new(), PairReport::default());
    crate::parquet::for_each_row(path, |row, value| match value.and_then(|v| parse_value(&v)).and_then(&mut encode) {
        Ok((pair, cut)) => {
            report.truncated += cut as usize;
            pairs.push(pair)
        }
        Err(why) => report.skipped.push((row, why)),
    })
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    report.pairs = pairs.len();
    Ok((pairs, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_as_ids_or_text_and_bad_ones_say_why() {
        let ids = parse_record(r#"{"prompt_ids": [1], "chosen_ids": [2, 3], "rejected_ids": [4]}"#).unwrap();
        assert_eq!(ids, PairRecord::Ids(TokenPair { prompt_ids: vec![1], chosen_ids: vec![2, 3], rejected_ids: vec![4] }));
        let text = parse_record(r#"{"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}"#).unwrap();
        let user = Turn { role: "user".into(), content: "hi".into() };
        assert_eq!(text, PairRecord::Text { prompt: PairText::Messages(vec![user]), chosen: PairText::Text("a".into()), rejected: PairText::Text("b".into()) });
        for (line, why) in [
            ("{", "invalid JSON"),
            (r#"{"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [4]}"#, "an empty completion"),
            (r#"{"prompt_ids": [1], "chosen_ids": [-2], "rejected_ids": [4]}"#, "`chosen_ids` holds -2, not a token id"),
            (r#"{"prompt_ids": [1], "chosen_ids": [2]}"#, "no `rejected_ids`"),
            (r#"{"prompt": "a", "rejected": "c"}"#, "no `chosen` (nor `chosen_ids`)"),
            (r#"{"prompt": "a", "chosen": "  ", "rejected": "c"}"#, "empty `chosen`"),
            (r#"{"prompt": [{"role": "robot", "content": "a"}], "chosen": "b", "rejected": "c"}"#, "prompt[0] has unknown role `robot`"),
            (r#"{"prompt": "a", "chosen": 3, "rejected": "c"}"#, "`chosen` is neither text nor a list of messages"),
        ] {
            let e = parse_record(line).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn bad_records_are_skipped_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairs.jsonl");
        let mut content = b"{\"prompt_ids\": [1], \"chosen_ids\": [2], \"rejected_ids\": [3]}\n\n".to_vec();
        content.extend(b"{\"prompt\": \"a\", \"chosen\": \"b\", \"rejected\": \"c\"}\n");
        content.extend(b"{\"prompt_ids\": [1], \"chosen_ids\": [2, 2, 2], \"rejected_ids\": [3]}\n");
        content.extend(b"{\"prompt\": \"\xff\"}\n");
        std::fs::write(&path, content).unwrap();
        // An encoder without a tokenizer, cutting pairs longer than 3 tokens.
        let (pairs, report) = load_jsonl(&path, |r| match r {
            PairRecord::Ids(p) => {
                let cut = p.prompt_ids.len() + p.chosen_ids.len().max(p.rejected_ids.len()) > 3;
                Ok((p, cut))
            }
            PairRecord::Text { .. } => Err("a text record needs a tokenizer".into()),
        })
        .unwrap();
        assert_eq!((pairs.len(), report.pairs, report.truncated), (2, 2, 1));
        assert_eq!(report.skipped, vec![(3, "a text record needs a tokenizer".to_string()), (5, "not valid UTF-8".to_string())]);
    }

    #[test]
    fn a_parquet_file_of_text_pairs_loads_as_its_jsonl_twin() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<[Option<&str>; 3]> = vec![[Some("p1"), Some("good"), Some("bad")], [Some("p2"), None, Some("bad")], [Some("p3"), Some("yes"), Some("no")]];
        let cells: Vec<Vec<Option<Vec<u8>>>> = rows.iter().map(|r| r.iter().map(|c| c.map(|s| s.as_bytes().to_vec())).collect()).collect();
        let parquet = dir.path().join("pairs.parquet");
        crate::parquet::write_string_columns(&parquet, &["prompt", "chosen", "rejected"], &[cells]).unwrap();
        let jsonl: String = rows
            .iter()
            .map(|r| {
                let mut o = serde_json::Map::new();
                for (k, v) in ["prompt", "chosen", "rejected"].iter().zip(r) {
                    if let Some(v) = v {
                        o.insert(k.to_string(), serde_json::Value::from(*v));
                    }
                }
                serde_json::Value::Object(o).to_string() + "\n"
            })
            .collect();
        let twin = dir.path().join("pairs.jsonl");
        std::fs::write(&twin, jsonl).unwrap();
        // Text to ids by bytes: enough to see that the same texts came through.
        let encode = |r: PairRecord| match r {
            PairRecord::Text { prompt: PairText::Text(p), chosen: PairText::Text(c), rejected: PairText::Text(x) } => {
                let ids = |s: &str| s.bytes().map(u32::from).collect::<Vec<u32>>();
                Ok((TokenPair { prompt_ids: ids(&p), chosen_ids: ids(&c), rejected_ids: ids(&x) }, false))
            }
            other => Err(format!("unexpected {other:?}")),
        };
        let (a, ra) = load(&parquet, encode).unwrap();
        let (b, rb) = load(&twin, encode).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        assert_eq!(ra.skipped, rb.skipped);
        assert_eq!(ra.skipped, [(2, "no `chosen` (nor `chosen_ids`)".to_string())]);
    }
}
