//! A model's Jinja chat template, rendered as transformers' `apply_chat_template` renders it:
//! the environment of `transformers.utils.chat_template_utils` (blocks trimmed and left-stripped,
//! `loopcontrols`, a Python-compatible `tojson`, `raise_exception`, Python's string and dict
//! methods) and its context (`messages`, `tools`, `add_generation_prompt` and the tokenizer's
//! special tokens: `bos_token`, `eos_token`, `unk_token`, `pad_token`).

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};

use super::{ChatError, Piece};

const NAME: &str = "chat_template";
/// transformers (≥ 4.51) saves a tokenizer's template beside it in this file; it wins over the
/// `chat_template` key of `tokenizer_config.json`.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// A parsed Jinja chat template and the special tokens it is rendered with.
pub struct JinjaTemplate {
    env: Environment<'static>,
    source: String,
    /// `bos_token`, `eos_token` and, where the tokenizer has them, `unk_token`, `pad_token`.
    tokens: Vec<(&'static str, String)>,
    origin: String,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate").field("origin", &self.origin).field("tokens", &self.tokens).finish_non_exhaustive()
    }
}

impl PartialEq for JinjaTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.tokens == other.tokens
    }
}

impl JinjaTemplate {
    /// `source` with BOS and EOS text `bos`, `eos` (an empty one is left undefined, as
    /// transformers leaves a token the tokenizer lacks); `origin` says where it came from.
    pub fn new(source: &str, bos: &str, eos: &str, origin: &str) -> Result<Self, ChatError> {
        let tokens = [("bos_token", bos), ("eos_token", eos)].into_iter().filter(|(_, t)| !t.is_empty()).map(|(k, t)| (k, t.to_string())).collect();
        Self::with_tokens(source, tokens, origin)
    }

    fn with_tokens(source: &str, tokens: Vec<(&'static str, String)>, origin: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        // jinja2's defaults that transformers keeps (`keep_trailing_newline=False`), and the two
        // it sets.
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().expect("the default delimiters are valid");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", super::pyjson::tojson);
        env.add_function("raise_exception", |message: String| -> Result<Value, Error> { Err(Error::new(ErrorKind::InvalidOperation, message)) });
        // transformers' `strftime_now(format)` (Llama-3-style templates date their system turn).
        env.add_function("strftime_now", |format: String| -> Value {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            Value::from(strftime(&format, secs))
        });
        env.add_template_owned(NAME, without_generation_blocks(source))
            .map_err(|e| ChatError::Syntax { origin: origin.to_string(), message: describe(&e) })?;
        Ok(JinjaTemplate { env, source: source.to_string(), tokens, origin: origin.to_string() })
    }

    /// Where the template came from (a file, or a file and key).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `messages` (a list of message maps) and `tools` rendered.
    pub fn render(&self, messages: &Value, tools: Option<&Value>, add_generation_prompt: bool) -> Result<String, ChatError> {
        let mut ctx: std::collections::BTreeMap<String, Value> = [
            ("messages", messages.clone()),
            ("tools", tools.cloned().unwrap_or(Value::from(()))),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        ctx.extend(self.tokens.iter().map(|(k, v)| (k.to_string(), Value::from(v.as_str()))));
        let ctx = Value::from_object(ctx);
        let template = self.env.get_template(NAME).expect("added in new");
        template.render(ctx).map_err(|e| ChatError::Render { origin: self.origin.clone(), message: describe(&e) })
    }

    /// The conversation in pieces, responses marked (see [`super::ChatTemplate::pieces`]).
    pub fn pieces(&self, messages: &[(&str, &str)]) -> Result<Vec<Piece>, ChatError> {
        let render = |upto: usize, prompt: bool| self.render(&messages_value(&messages[..upto]), None, prompt);
        let full = render(messages.len(), false)?;
        let eos = self.tokens.iter().find(|(k, _)| *k == "eos_token").map_or("", |(_, v)| v.as_str());
        let unstable = |turn: usize, what: &str| ChatError::NotPrefixStable {
            origin: self.origin.clone(),
            message: format!(
                "message {} (the assistant's): {what}, so the response cannot be told apart from the text around it for SFT; give prompt/response records or a template that renders a conversation as the extension of its beginning",
                turn + 1
            ),
        };
        let mut pieces = Vec::new();
        let mut pos = 0;
        for (i, (role, _)) in messages.iter().enumerate() {
            if *role != "assistant" {
                continue;
            }
            let before = render(i, true)?;
            if !full.starts_with(&before) || before.len() < pos {
                return Err(unstable(i, "the conversation before it, rendered with the generation prompt, is not how the whole conversation begins"));
            }
            let through = render(i + 1, false)?;
            // A template that ends a conversation with EOS (Phi-3's) writes it after the last
            // turn only: a response in the middle ends where that EOS would start.
            let end = if full.starts_with(&through) {
                through.len()
            } else if !eos.is_empty() && through.ends_with(eos) && full.starts_with(&through[..through.len() - eos.len()]) {
                through.len() - eos.len()
            } else {
                return Err(unstable(i, "the conversation through it is not how the whole conversation begins"));
            };
            if end < before.len() {
                return Err(unstable(i, "its rendering is shorter than the prompt before it"));
            }
            if before.len() > pos {
                pieces.push(Piece { text: full[pos..before.len()].to_string(), response: false, eos_after: false });
            }
            pieces.push(Piece { text: full[before.len()..end].to_string(), response: true, eos_after: false });
            pos = end;
        }
        if pos < full.len() {
            pieces.push(Piece { text: full[pos..].to_string(), response: false, eos_after: false });
        }
        Ok(pieces)
    }
}

/// `source` with transformers' `{% generation %}` … `{% endgeneration %}` (the marks of what
/// `return_assistant_tokens_mask` learns; they render their body unchanged) turned into
/// `{% if true %}` … `{% endif %}`, which render the same, whitespace control included —
/// minijinja has no such tag. [`JinjaTemplate::pieces`] finds the responses by rendering instead.
fn without_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else { break };
        let inner = &tag[2..end];
        let (open, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, close) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{open} if true {close}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{open} endif {close}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `format` with the time `secs` after the Unix epoch, in UTC, as C's `strftime` writes it for
/// the codes templates use (`%Y %y %m %d %-d %e %H %I %M %S %p %b %B %a %A %j %%`); other codes
/// are left as written. transformers formats the local time; a server's is usually UTC.
pub fn strftime(format: &str, secs: u64) -> String {
    const MONTHS: [&str; 12] = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let days = (secs / 86_400) as i64;
    let (h, min, sec) = ((secs % 86_400) / 3600, (secs % 3600) / 60, secs % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(m - 1) as usize];
    let yday = before + d + i64::from(leap && m > 2);
    let month = MONTHS[(m - 1) as usize];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let pad2 = |v: i64| if no_pad { v.to_string() } else { format!("{v:02}") };
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&pad2(y.rem_euclid(100))),
            Some('m') => out.push_str(&pad2(m)),
            Some('d') => out.push_str(&pad2(d)),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('H') => out.push_str(&pad2(h as i64)),
            Some('I') => out.push_str(&pad2(((h + 11) % 12 + 1) as i64)),
            Some('M') => out.push_str(&pad2(min as i64)),
            Some('S') => out.push_str(&pad2(sec as i64)),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(weekday),
            Some('j') => out.push_str(&if no_pad { yday.to_string() } else { format!("{yday:03}") }),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// A minijinja error with its cause chain and, where it has one, the template line.
fn describe(e: &Error) -> String {
    let mut text = match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_string(),
        _ => e.to_string(),
    };
    if let Some(line) = e.line() {
        if !text.contains("line") {
            text.push_str(&format!(" (line {line})"));
        }
    }
    text
}

/// `(role, content)` pairs as transformers' message list.
pub fn messages_value(messages: &[(&str, &str)]) -> Value {
    #[derive(serde::Serialize)]
    struct Message<'a> {
        role: &'a str,
        content: &'a str,
    }
    let list: Vec<Message> = messages.iter().map(|&(role, content)| Message { role, content }).collect();
    Value::from(minijinja::value::Serde(list))
}

/// A JSON conversation: a list of messages, or `{"messages": [...], "tools": [...]}`. Parsed
/// into minijinja values so that maps keep their key order (a template's `tojson` writes them
/// in it, as Python does).
pub fn parse_conversation(json: &str) -> Result<(Value, Option<Value>), ChatError> {
    let v: Value = serde_json::from_str(json).map_err(|e| ChatError::Messages(format!("invalid JSON: {e}")))?;
    let (messages, tools) = match v.kind() {
        minijinja::value::ValueKind::Seq => (v, None),
        minijinja::value::ValueKind::Map => {
            let messages = v.get_attr("messages").unwrap_or_default();
            if messages.is_undefined() {
                return Err(ChatError::Messages("an object needs `messages` (a list of messages)".into()));
            }
            let tools = v.get_attr("tools").ok().filter(|t| !t.is_undefined() && !t.is_none());
            (messages, tools)
        }
        kind => return Err(ChatError::Messages(format!("expected a list of messages or an object with `messages`, found a {kind}"))),
    };
    if messages.kind() != minijinja::value::ValueKind::Seq {
        return Err(ChatError::Messages(format!("`messages` must be a list, found a {}", messages.kind())));
    }
    let mut normalized = Vec::new();
    for (i, m) in messages.try_iter().map_err(|e| ChatError::Messages(e.to_string()))?.enumerate() {
        if m.kind() != minijinja::value::ValueKind::Map {
            return Err(ChatError::Messages(format!("message {}: expected an object with `role` and `content`, found a {}", i + 1, m.kind())));
        }
        if m.get_attr("role").ok().and_then(|r| r.as_str().map(str::to_string)).is_none() {
            return Err(ChatError::Messages(format!("message {}: `role` must be a string", i + 1)));
        }
        // As transformers does: a key whose value is null (OpenAI's `content: null` beside
        // `tool_calls`) is left out, so that templates see it undefined rather than `None`.
        let mut kept = indexmap::IndexMap::new();
        for key in m.try_iter().map_err(|e| ChatError::Messages(e.to_string()))? {
            let value = m.get_item(&key).unwrap_or_default();
            if !value.is_none() {
                kept.insert(key, value);
            }
        }
        normalized.push(Value::from_object(kept));
    }
    Ok((Value::from(normalized), tools))
}

/// The `role` and string `content` of each message, for the built-in formats.
pub fn role_content_pairs(messages: &Value) -> Result<Vec<(String, String)>, ChatError> {
    let mut out = Vec::new();
    for (i, m) in messages.try_iter().map_err(|e| ChatError::Messages(e.to_string()))?.enumerate() {
        let role = m.get_attr("role").ok().and_then(|r| r.as_str().map(str::to_string)).unwrap_or_default();
        let content = m.get_attr("content").unwrap_or_default();
        let Some(content) = content.as_str() else {
            return Err(ChatError::Messages(format!("message {}: the built-in formats need `content` as a string", i + 1)));
        };
        out.push((role, content.to_string()));
    }
    Ok(out)
}

/// A model folder's `tokenizer_config.json`, if it has one.
fn tokenizer_config(dir: &Path) -> Result<(PathBuf, Option<serde_json::Value>), ChatError> {
    let path = dir.join(TOKENIZER_CONFIG_FILE);
    let config = match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).map_err(|e| file_error(&path, format!("invalid JSON: {e}")))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(file_error(&path, e.to_string())),
    };
    Ok((path, config))
}

/// The Jinja template in `file`, rendered with the special tokens of the model folder `dir`.
pub fn from_file(file: &Path, dir: &Path) -> Result<JinjaTemplate, ChatError> {
    let (config_path, config) = tokenizer_config(dir)?;
    let tokens = special_tokens(config.as_ref(), &config_path)?;
    let source = std::fs::read_to_string(file).map_err(|e| file_error(file, e.to_string()))?;
    JinjaTemplate::with_tokens(&source, tokens, &file.display().to_string())
}

/// The template of a model folder, if it has one: `chat_template.jinja`, else the
/// `chat_template` key of `tokenizer_config.json`.
pub fn from_folder(dir: &Path) -> Result<Option<JinjaTemplate>, ChatError> {
    let (config_path, config) = tokenizer_config(dir)?;
    let tokens = special_tokens(config.as_ref(), &config_path)?;
    let file = dir.join(TEMPLATE_FILE);
    match std::fs::read_to_string(&file) {
        Ok(source) => return JinjaTemplate::with_tokens(&source, tokens, TEMPLATE_FILE).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(&file, e.to_string())),
    }
    let Some(template) = config.as_ref().and_then(|c| c.get("chat_template")) else { return Ok(None) };
    let origin = format!("{TOKENIZER_CONFIG_FILE}, chat_template");
    match template {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(source) => JinjaTemplate::with_tokens(source, tokens, &origin).map(Some),
        // Several named templates (`[{"name": "default", "template": …}, {"name": "tool_use", …}]`):
        // transformers renders `default` unless told otherwise.
        serde_json::Value::Array(named) => {
            let mut names = Vec::new();
            for entry in named {
                let (Some(name), Some(source)) = (entry.get("name").and_then(|n| n.as_str()), entry.get("template").and_then(|t| t.as_str())) else {
                    return Err(file_error(&config_path, "chat_template: each entry of the list needs a string `name` and `template`".into()));
                };
                if name == "default" {
                    return JinjaTemplate::with_tokens(source, tokens, &format!("{origin} \"default\"")).map(Some);
                }
                names.push(name.to_string());
            }
            Err(file_error(&config_path, format!("chat_template: no template named `default` among {}", names.join(", "))))
        }
        other => Err(file_error(&config_path, format!("chat_template: expected a string or a list of named templates, found {other}"))),
    }
}

fn file_error(path: &Path, message: String) -> ChatError {
    ChatError::File { path: PathBuf::from(path), message }
}

/// The special tokens transformers puts in a template's context, from `tokenizer_config.json`:
/// each a string or an `AddedToken` object (`{"content": …}`).
fn special_tokens(config: Option<&serde_json::Value>, path: &Path) -> Result<Vec<(&'static str, String)>, ChatError> {
    let mut out = Vec::new();
    for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        let text = match config.and_then(|c| c.get(key)) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(v @ serde_json::Value::Object(_)) => match v.get("content").and_then(|c| c.as_str()) {
                Some(s) => Some(s.to_string()),
                None => return Err(file_error(path, format!("{key}: an object without a string `content`"))),
            },
            Some(other) => return Err(file_error(path, format!("{key}: expected a string, found {other}"))),
        };
        // A token the tokenizer lacks stays undefined in the template, as in transformers.
        if let Some(t) = text {
            out.push((key, t));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_writes_what_c_writes() {
        // date -u -d @1796607245 '+%d %b %Y|%A %a %B %j %H:%M:%S %I %p %y %-d %e|%%|%Q'
        // → "07 Dec 2026|Monday Mon December 341 01:34:05 01 AM 26 7  7|%|%Q"
        assert_eq!(strftime("%d %b %Y|%A %a %B %j %H:%M:%S %I %p %y %-d %e|%%|%Q", 1_796_607_245), "07 Dec 2026|Monday Mon December 341 01:34:05 01 AM 26 7  7|%|%Q");
        assert_eq!(strftime("%Y-%m-%d %H:%M", 951_782_400), "2000-02-29 00:00"); // a leap day
        assert_eq!(strftime("%j %A", 0), "001 Thursday");
    }
}
