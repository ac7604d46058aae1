//! Chat templates: how a conversation becomes the text a model was trained on. The one
//! implementation behind SFT data, preference prompts and `phi chat`.
//!
//! ```
//! use phi_core::chat::ChatTemplate;
//! let text = ChatTemplate::Phi3.prompt([("system", "Be brief."), ("user", "Hi")]);
//! assert_eq!(text, "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n");
//! ```

use crate::config::Family;

/// A conversation format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// Phi-3 (and 3.5, 4-mini): `<|system|>\n…<|end|>\n<|user|>\n…<|end|>\n<|assistant|>\n…<|end|>\n`,
    /// as the models' own `chat_template` renders it.
    Phi3,
    /// Base models (Phi-1, 1.5, 2): the contents one after the other, each response followed by
    /// the EOS token.
    Plain,
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

    /// `messages` (role, content) as pieces, responses marked.
    pub fn pieces<'a>(self, messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Piece> {
        let mut out = Vec::new();
        for (role, content) in messages {
            let response = role == "assistant";
            match self {
                ChatTemplate::Phi3 => {
                    out.push(Piece { text: format!("<|{role}|>\n"), response: false, eos_after: false });
                    out.push(Piece { text: content.to_string(), response, eos_after: false });
                    // The model must learn to stop: the end marker of a response is a target too.
                    out.push(Piece { text: "<|end|>\n".into(), response, eos_after: false });
                }
                ChatTemplate::Plain => out.push(Piece { text: content.to_string(), response, eos_after: response }),
            }
        }
        out
    }

    /// The text that asks the model for the next assistant turn (HF's
    /// `apply_chat_template(..., add_generation_prompt=True)`); the plain template has no
    /// marker and only joins the contents.
    pub fn prompt<'a>(self, messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
        let mut text: String = self.pieces(messages).into_iter().map(|p| p.text).collect();
        if self == ChatTemplate::Phi3 {
            text.push_str("<|assistant|>\n");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi3_marks_responses_and_their_end() {
        let pieces = ChatTemplate::Phi3.pieces([("user", "hi"), ("assistant", "hello")]);
        let text: String = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(text, "<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n");
        let learned: String = pieces.iter().filter(|p| p.response).map(|p| p.text.as_str()).collect();
        assert_eq!(learned, "hello<|end|>\n");
        assert!(pieces.iter().all(|p| !p.eos_after));
    }

    #[test]
    fn plain_ends_responses_with_eos() {
        let pieces = ChatTemplate::Plain.pieces([("user", "def f():"), ("assistant", " return 1")]);
        assert_eq!(pieces.iter().map(|p| (p.response, p.eos_after)).collect::<Vec<_>>(), [(false, false), (true, true)]);
        assert_eq!(ChatTemplate::Plain.prompt([("user", "def f():")]), "def f():");
        assert_eq!(ChatTemplate::for_family(Family::Phi3), ChatTemplate::Phi3);
    }
}
