//! Supervised fine-tuning data: conversations or prompt/response pairs, from JSONL or from
//! Parquet (the hub's layout: a `messages` column of {role, content} structs, or `prompt` and
//! `response` columns), rendered with the model's chat template, tokenized with a mask so that
//! only response tokens are learned.
//!
//! Records: `{"messages": [{"role": "system"|"user"|"assistant", "content": "…"}, …]}` or
//! `{"prompt": "…", "response": "…"}`. A bad record (invalid JSON or UTF-8, missing fields, an
//! empty response) is skipped and reported with its line (or Parquet row) number — never a
//! crash mid-training.

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
    /// `(line number, reason)` of every skipped record (a Parquet file's row number).
    pub skipped: Vec<(usize, String)>,
    /// Examples cut to the length limit.
    pub truncated: usize,
}

/// Parses one JSONL record into turns; the error says what is wrong with it.
pub fn parse_record(line: &str) -> Result<Vec<Turn>, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    parse_value(&v)
}

/// [`parse_record`] of a record already parsed (a Parquet row, whose absent fields are nulls).
pub fn parse_value(v: &Value) -> Result<Vec<Turn>, String> {
    let turns = if let Some(messages) = v.get("messages").filter(|m| !m.is_null()) {
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
/// tokenizes the turns and says whether it cut them to a length limit, or why the record cannot
/// be rendered; `phi_train::sft_objective::encode` does it with a model's chat template). A
/// record that does not parse or render, or whose response the limit cut off entirely, is
/// skipped with its line number and the reason.
pub fn load_jsonl(path: &Path, mut encode: impl FnMut(&[Turn]) -> Result<(SftExample, bool), String>) -> std::io::Result<(Vec<SftExample>, SftReport)> {
    let bytes = std::fs::read(path)?;
    let mut report = SftReport::default();
    let mut examples = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let turns = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8".to_string()).and_then(parse_record);
        add(i + 1, turns, &mut encode, &mut examples, &mut report);
    }
    report.examples = examples.len();
    Ok((examples, report))
}

/// [`load_jsonl`] for JSONL, or the rows of a Parquet file (`.parquet`, one record per row:
/// [`crate::parquet::for_each_row`]), skipped rows reported by row number.
pub fn load(path: &Path, mut encode: impl FnMut(&[Turn]) -> Result<(SftExample, bool), String>) -> std::io::Result<(Vec<SftExample>, SftReport)> {
    if !crate::parquet::is_parquet(path) {
        return load_jsonl(path, encode);
    }
    let (mut examples, mut report) = (Vec::new(), SftReport::default());
    crate::parquet::for_each_row(path, |row, value| add(row, value.and_then(|v| parse_value(&v)), &mut encode, &mut examples, &mut report))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    report.examples = examples.len();
    Ok((examples, report))
}

/// One record's turns (or why it has none) into `examples`, or into the report's skipped.
fn add(at: usize, turns: Result<Vec<Turn>, String>, encode: &mut impl FnMut(&[Turn]) -> Result<(SftExample, bool), String>, examples: &mut Vec<SftExample>, report: &mut SftReport) {
    match turns.and_then(|turns| encode(&turns)) {
        Ok((ex, cut)) => {
            report.truncated += cut as usize;
            if ex.learn.iter().any(|&l| l) {
                examples.push(ex);
            } else {
                report.skipped.push((at, "the response was cut off entirely by the length limit".into()));
            }
        }
        Err(reason) => report.skipped.push((at, reason)),
    }
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
    fn encode(turns: &[Turn]) -> Result<(SftExample, bool), String> {
        let ids = (0..turns.len() as u32).collect();
        Ok((SftExample { ids, learn: turns.iter().map(|t| t.role == "assistant").collect() }, false))
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

    /// One row group of a Parquet file in the hub's SFT layout: a `messages` list of {role,
    /// content} structs, and `prompt`/`response` columns (null where a row has messages).
    fn write_sft_parquet(path: &Path, rows: &[(Option<Vec<(&str, &str)>>, Option<&[u8]>, Option<&[u8]>)]) {
        use parquet::data_type::{ByteArray, ByteArrayType};
        let schema = "message sft { optional group messages (LIST) { repeated group list { optional group element { \
                      optional binary role (UTF8); optional binary content (UTF8); } } } optional binary prompt (UTF8); optional binary response (UTF8); }";
        let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
        let props = std::sync::Arc::new(parquet::file::properties::WriterProperties::builder().build());
        let mut w = parquet::file::writer::SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
        let mut g = w.next_row_group().unwrap();
        // messages.list.element.role and .content: definition level 4 for a value (messages,
        // list, element and the field all present), 0 for a null list; repetition 1 after a
        // row's first message.
        for field in 0..2 {
            let (mut values, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
            for (messages, _, _) in rows {
                match messages {
                    None => (defs.push(0), reps.push(0)).1,
                    Some(m) => {
                        for (j, (role, content)) in m.iter().enumerate() {
                            values.push(ByteArray::from(if field == 0 { *role } else { *content }));
                            defs.push(4);
                            reps.push((j > 0) as i16);
                        }
                    }
                }
            }
            let mut col = g.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>().write_batch(&values, Some(&defs), Some(&reps)).unwrap();
            col.close().unwrap();
        }
        for field in 0..2 {
            let cells: Vec<Option<&[u8]>> = rows.iter().map(|r| if field == 0 { r.1 } else { r.2 }).collect();
            let values: Vec<ByteArray> = cells.iter().flatten().map(|v| ByteArray::from(v.to_vec())).collect();
            let defs: Vec<i16> = cells.iter().map(|c| c.is_some() as i16).collect();
            let mut col = g.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>().write_batch(&values, Some(&defs), None).unwrap();
            col.close().unwrap();
        }
        g.close().unwrap();
        w.close().unwrap();
    }

    #[test]
    fn a_parquet_file_in_the_hubs_layout_loads_as_its_jsonl_twin() {
        let rows: Vec<(Option<Vec<(&str, &str)>>, Option<&[u8]>, Option<&[u8]>)> = vec![
            (Some(vec![("user", "a"), ("assistant", "b")]), None, None),
            (None, Some(b"hi"), Some(b"hello")),
            (Some(vec![("robot", "a")]), None, None),
            (None, Some(b"hi"), None),
            (Some(vec![("system", "s"), ("user", "q"), ("assistant", "r")]), None, None),
            (None, Some(b"\xff\xfe"), Some(b"x")),
        ];
        let dir = tempfile::tempdir().unwrap();
        let parquet = dir.path().join("train-00000-of-00001.parquet");
        write_sft_parquet(&parquet, &rows);
        let mut jsonl = Vec::new();
        for (messages, prompt, response) in &rows {
            let mut line = match messages {
                Some(m) => serde_json::json!({"messages": m.iter().map(|(r, c)| serde_json::json!({"role": r, "content": c})).collect::<Vec<_>>()}).to_string().into_bytes(),
                None => {
                    let mut l = b"{\"prompt\": \"".to_vec();
                    l.extend(prompt.unwrap());
                    l.push(b'"');
                    if let Some(r) = response {
                        l.extend(b", \"response\": \"");
                        l.extend(*r);
                        l.push(b'"');
                    }
                    l.push(b'}');
                    l
                }
            };
            line.push(b'\n');
            jsonl.extend(line);
        }
        let twin = dir.path().join("train.jsonl");
        std::fs::write(&twin, jsonl).unwrap();
        let (from_parquet, rp) = load(&parquet, encode).unwrap();
        let (from_jsonl, rj) = load(&twin, encode).unwrap();
        assert_eq!(from_parquet.len(), 3, "{rp:?}");
        assert_eq!(from_parquet, from_jsonl);
        assert_eq!(rp.skipped.iter().map(|s| s.0).collect::<Vec<_>>(), [3, 4, 6]);
        assert_eq!(rp.skipped[..2], rj.skipped[..2], "the same reasons for the same records");
        assert!(rp.skipped[2].1.contains("not valid UTF-8") && rj.skipped[2].1.contains("not valid UTF-8"), "{rp:?} {rj:?}");
    }
}
