//! Chat templates: how a conversation becomes the text a model was trained on. The one
//! implementation behind SFT data, preference prompts, `phi chat` and `phi serve`'s chat endpoint.
//!
//! A model's own template is the Jinja `chat_template` of its `tokenizer_config.json` (or its
//! `chat_template.jinja`), rendered as transformers' `apply_chat_template` renders it
//! ([`ChatTemplate::for_model`]); the built-in Phi-3 and plain formats serve models without one
//! (Phi-1, 1.5 and 2, and checkpoints this framework pre-trained).
//!
//! ```
//! use phi_core::chat::ChatTemplate;
//! let text = ChatTemplate::Phi3.prompt([("system", "Be brief."), ("user", "Hi")])?;
//! assert_eq!(text, "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n");
//!
//! // A model's own template, as its tokenizer_config.json holds it:
//! let phi35 = ChatTemplate::jinja(
//!     "{% for m in messages %}{% if m['role'] == 'system' and m['content'] %}{{ '<|system|>\n' + m['content'] + '<|end|>\n' }}\
//!      {% elif m['role'] != 'system' %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endif %}{% endfor %}\
//!      {% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}",
//!     "<s>", "<|endoftext|>", "tokenizer_config.json")?;
//! assert_eq!(phi35.prompt([("system", ""), ("user", "Hi")])?, "<|user|>\nHi<|end|>\n<|assistant|>\n");
//! # Ok::<(), phi_core::chat::ChatError>(())
//! ```

mod jinja;
mod pyjson;

use std::path::Path;
use std::sync::Arc;

use crate::config::Family;
pub use jinja::JinjaTemplate;

/// What went wrong reading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template file, or the key holding it, is unreadable or malformed.
    #[error("{path}: {message}")]
    File { path: std::path::PathBuf, message: String },
    /// The Jinja source does not parse.
    #[error("chat template ({origin}): {message}")]
    Syntax { origin: String, message: String },
    /// Rendering failed: the template called `raise_exception` (its own check of the
    /// conversation, such as roles that must alternate) or used something undefined.
    #[error("chat template ({origin}): {message}")]
    Render { origin: String, message: String },
    /// The conversation given to render is not a list of messages.
    #[error("messages: {0}")]
    Messages(String),
    /// SFT needs each response to extend the rendering of the conversation before it; this
    /// template renders an earlier part of the conversation differently once more follows.
    #[error("chat template ({origin}): {message}")]
    NotPrefixStable { origin: String, message: String },
}

/// A conversation format.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// Phi-3 (and 3.5, 4-mini): `<|system|>\n…<|end|>\n<|user|>\n…<|end|>\n<|assistant|>\n…<|end|>\n`,
    /// as the models' own `chat_template` renders it.
    Phi3,
    /// Base models (Phi-1, 1.5, 2): the contents one after the other, each response followed by
    /// the EOS token.
    Plain,
    /// A model's own Jinja template, rendered as transformers renders it.
    Jinja(Arc<JinjaTemplate>),
}

/// Which template renders a model's conversations (`phi finetune --template`, `phi chat
/// --template`): parsed from `model`, `phi3`, `plain` or the path of a Jinja file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TemplateChoice {
    /// The model's own template, else its family's built-in format.
    #[default]
    Model,
    Phi3,
    Plain,
    /// A Jinja file, rendered with the model's special tokens.
    File(std::path::PathBuf),
}

impl std::str::FromStr for TemplateChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "model" => Ok(TemplateChoice::Model),
            "phi3" => Ok(TemplateChoice::Phi3),
            "plain" => Ok(TemplateChoice::Plain),
            path if Path::new(path).is_file() => Ok(TemplateChoice::File(path.into())),
            other => Err(format!("`{other}`: expected model, phi3, plain or a Jinja file (no file has that path)")),
        }
    }
}

/// A piece of a rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    /// Part of an assistant turn (its content, and the marker that ends it): what SFT learns.
    pub response: bool,
    /// The EOS token follows this piece (the plain template's end of a response).
    pub eos_after: bool,
}

impl ChatTemplate {
    /// The format a model family was tuned with: Phi-3's chat format for `phi3`, plain text for
    /// the `phi` base models.
    pub fn for_family(family: Family) -> Self {
        match family {
            Family::Phi3 => ChatTemplate::Phi3,
            Family::Phi => ChatTemplate::Plain,
        }
    }

    /// A Jinja chat template with its tokenizer's BOS and EOS text; `origin` names where it came
    /// from in messages. Fails when the source does not parse.
    pub fn jinja(source: &str, bos: &str, eos: &str, origin: &str) -> Result<Self, ChatError> {
        Ok(ChatTemplate::Jinja(Arc::new(JinjaTemplate::new(source, bos, eos, origin)?)))
    }

    /// The template of the model folder `dir`: its `chat_template.jinja`, else the
    /// `chat_template` of its `tokenizer_config.json` (the one named `default` where it holds a
    /// list), else the built-in format of `family` ([`ChatTemplate::for_family`]).
    pub fn for_model(dir: &Path, family: Family) -> Result<Self, ChatError> {
        Ok(jinja::from_folder(dir)?.map_or_else(|| Self::for_family(family), |t| ChatTemplate::Jinja(Arc::new(t))))
    }

    /// The template `choice` picks for the model folder `dir` of `family`.
    pub fn choose(dir: &Path, family: Family, choice: &TemplateChoice) -> Result<Self, ChatError> {
        match choice {
            TemplateChoice::Model => Self::for_model(dir, family),
            TemplateChoice::Phi3 => Ok(ChatTemplate::Phi3),
            TemplateChoice::Plain => Ok(ChatTemplate::Plain),
            TemplateChoice::File(file) => Ok(ChatTemplate::Jinja(Arc::new(jinja::from_file(file, dir)?))),
        }
    }

    /// What the template is, for a line telling the user which one renders their chat.
    pub fn describe(&self) -> String {
        match self {
            ChatTemplate::Phi3 => "the built-in Phi-3 chat format".into(),
            ChatTemplate::Plain => "the plain format (contents one after the other; the model has no chat template)".into(),
            ChatTemplate::Jinja(t) => format!("the model's chat template ({})", t.origin()),
        }
    }

    /// `messages` (role, content) as pieces, responses marked. A Jinja template's pieces are
    /// found by rendering the conversation up to each assistant turn with the generation prompt
    /// and to its end without: the text between is the response, and its end marker (and the EOS
    /// a template writes after the last turn) is learned with it, as TRL's `assistant_only_loss`
    /// learns what a template's `{% generation %}` block holds.
    pub fn pieces<'a>(&self, messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Vec<Piece>, ChatError> {
        let mut out = Vec::new();
        match self {
            ChatTemplate::Jinja(t) => return t.pieces(&messages.into_iter().collect::<Vec<_>>()),
            ChatTemplate::Phi3 => {
                for (role, content) in messages {
                    let response = role == "assistant";
                    out.push(Piece { text: format!("<|{role}|>\n"), response: false, eos_after: false });
                    out.push(Piece { text: content.to_string(), response, eos_after: false });
                    // The model must learn to stop: the end marker of a response is a target too.
                    out.push(Piece { text: "<|end|>\n".into(), response, eos_after: false });
                }
            }
            ChatTemplate::Plain => {
                for (role, content) in messages {
                    let response = role == "assistant";
                    out.push(Piece { text: content.to_string(), response, eos_after: response });
                }
            }
        }
        Ok(out)
    }

    /// The text that asks the model for the next assistant turn (HF's
    /// `apply_chat_template(..., add_generation_prompt=True)`); the plain template has no
    /// marker and only joins the contents.
    pub fn prompt<'a>(&self, messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<String, ChatError> {
        if let ChatTemplate::Jinja(t) = self {
            let messages: Vec<_> = messages.into_iter().collect();
            return t.render(&jinja::messages_value(&messages), None, true);
        }
        let mut text: String = self.pieces(messages)?.into_iter().map(|p| p.text).collect();
        if *self == ChatTemplate::Phi3 {
            text.push_str("<|assistant|>\n");
        }
        Ok(text)
    }

    /// The text a `completion` adds to its `prompt` in this format: the two rendered together
    /// without the generation prompt, less the prompt rendered with it (how TRL renders
    /// conversational preference data). Fails when the first does not begin with the second.
    pub fn completion(&self, prompt: &[(&str, &str)], completion: &[(&str, &str)]) -> Result<String, ChatError> {
        let head = self.prompt(prompt.iter().copied())?;
        let all: Vec<(&str, &str)> = prompt.iter().chain(completion).copied().collect();
        let full: String = match self {
            ChatTemplate::Jinja(t) => t.render(&jinja::messages_value(&all), None, false)?,
            builtin => builtin.pieces(all)?.into_iter().map(|p| p.text).collect(),
        };
        match full.strip_prefix(&head) {
            Some(rest) => Ok(rest.to_string()),
            None => Err(ChatError::NotPrefixStable {
                origin: match self {
                    ChatTemplate::Jinja(t) => t.origin().to_string(),
                    other => other.describe(),
                },
                message: "the prompt rendered with the generation prompt is not how the prompt and its completion begin, so the completion cannot be cut off it".into(),
            }),
        }
    }

    /// A conversation given as JSON — a list of messages, or an object with `messages` and
    /// optionally `tools` (an OpenAI-style request) — rendered as `apply_chat_template(messages,
    /// tools=tools, tokenize=False, add_generation_prompt=…)` renders it. Messages may carry
    /// any keys the template reads (`tool_calls`, `tools`, `name`); key order is kept, as
    /// Python keeps it. The built-in formats read `role` and `content` only.
    pub fn render_json(&self, json: &str, add_generation_prompt: bool) -> Result<String, ChatError> {
        let (messages, tools) = jinja::parse_conversation(json)?;
        match self {
            ChatTemplate::Jinja(t) => t.render(&messages, tools.as_ref(), add_generation_prompt),
            builtin => {
                let pairs = jinja::role_content_pairs(&messages)?;
                let pairs = pairs.iter().map(|(r, c)| (r.as_str(), c.as_str()));
                if add_generation_prompt { builtin.prompt(pairs) } else { Ok(builtin.pieces(pairs)?.into_iter().map(|p| p.text).collect()) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi3_marks_responses_and_their_end() {
        let pieces = ChatTemplate::Phi3.pieces([("user", "hi"), ("assistant", "hello")]).unwrap();
        let text: String = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(text, "<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n");
        let learned: String = pieces.iter().filter(|p| p.response).map(|p| p.text.as_str()).collect();
        assert_eq!(learned, "hello<|end|>\n");
        assert!(pieces.iter().all(|p| !p.eos_after));
    }

    #[test]
    fn plain_ends_responses_with_eos() {
        let pieces = ChatTemplate::Plain.pieces([("user", "def f():"), ("assistant", " return 1")]).unwrap();
        assert_eq!(pieces.iter().map(|p| (p.response, p.eos_after)).collect::<Vec<_>>(), [(false, false), (true, true)]);
        assert_eq!(ChatTemplate::Plain.prompt([("user", "def f():")]).unwrap(), "def f():");
        assert_eq!(ChatTemplate::for_family(Family::Phi3), ChatTemplate::Phi3);
    }
}
