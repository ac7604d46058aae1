//! The OpenAI API's request and response shapes that `phi serve` speaks, and its errors.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// A chat message. `content` may be text, a list of parts (their `text` parts are joined) or
/// null.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Content,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
    #[default]
    Null,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl Content {
    /// The text, or the kind of a part that is not text.
    pub fn text(&self) -> crate::Result<String> {
        match self {
            Content::Text(t) => Ok(t.clone()),
            Content::Null => Ok(String::new()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(crate::ServeError::ContentPart { kind: kind.to_string() }),
                })
                .collect(),
        }
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// The sampling parameters both endpoints take (null means the default, as OpenAI).
#[derive(Debug, Clone, Deserialize)]
pub struct Sampling {
    /// Default 1 (OpenAI's); 0 is greedy.
    pub temperature: Option<f64>,
    /// Default 1.
    pub top_p: Option<f64>,
    /// Default: whatever the context leaves (chat), 16 (completions, as OpenAI).
    /// `max_completion_tokens`, newer clients' name, is the same.
    #[serde(alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    pub stop: Option<Stop>,
    /// Same seed, same reply; choice `i` of `n` uses `seed + i`. Default: drawn per request.
    pub seed: Option<u64>,
    /// Default 1.
    pub n: Option<usize>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Every other field of the request, for [`Sampling::check_rest`].
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

impl Sampling {
    /// Refuses a request that asks for something this server does not do, naming the field:
    /// ignoring `logprobs`, `echo`, `best_of` or a penalty would answer a question the client
    /// did not ask. Such a field with its no-op value (`logprobs: false`, `presence_penalty: 0`,
    /// null, …) is taken, as clients send defaults explicitly; fields that do not change the
    /// reply (`user`, `metadata`, `store`, `service_tier`, `parallel_tool_calls`) are taken; any
    /// other field is refused as OpenAI refuses it ("Unrecognized request argument").
    pub fn check_rest(&self) -> Result<(), ApiError> {
        use serde_json::Value;
        let number = |v: &Value, noop: f64| v.is_null() || v.as_f64() == Some(noop);
        let empty = |v: &Value| match v {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            Value::String(s) => s.is_empty(),
            _ => false,
        };
        for (key, value) in &self.rest {
            let (noop, what) = match key.as_str() {
                "user" | "metadata" | "store" | "service_tier" | "parallel_tool_calls" => continue,
                "logprobs" => (value.is_null() || value == false, "log probabilities"),
                "top_logprobs" => (number(value, 0.0), "log probabilities"),
                "echo" => (value.is_null() || value == false, "echoing the prompt"),
                "best_of" => (number(value, 1.0), "best-of sampling (n gives that many choices)"),
                "presence_penalty" | "frequency_penalty" => (number(value, 0.0), "penalties"),
                "repetition_penalty" => (number(value, 1.0), "penalties"),
                "logit_bias" => (empty(value), "logit biases"),
                "suffix" => (empty(value), "a suffix (fill-in-the-middle)"),
                "tools" | "functions" => (empty(value), "tools"),
                "tool_choice" | "function_call" => (value.is_null() || value == "none", "tools"),
                "response_format" => (value.is_null() || value.get("type").is_some_and(|t| t == "text"), "response formats other than text"),
                "top_k" => (value.is_null() || matches!(value.as_i64(), Some(-1 | 0)), "top_k (use top_p)"),
                "min_p" => (number(value, 0.0), "min_p (use top_p)"),
                _ => {
                    return Err(ApiError::invalid(format!("Unrecognized request argument supplied: {key}"), Some(key)));
                }
            };
            if !noop {
                return Err(ApiError::invalid(format!("`{key}` = {value}: this server does not support {what}"), Some(key)));
            }
        }
        Ok(())
    }
}

/// `stream_options`: `include_usage` adds a last chunk with no choices and the usage.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `POST /v1/completions` (one prompt string, or a list holding one).
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// An error as OpenAI returns it: `{"error": {"message", "type", "param", "code"}}` with a
/// 4xx/5xx status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into(), kind: "invalid_request_error", param: param.map(str::to_string), code: None }
    }

    /// 413: a body over the server's limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::PAYLOAD_TOO_LARGE, code: Some("request_too_large"), ..ApiError::invalid(message, None) }
    }

    /// 503: the server stopped this request (it is shutting down).
    pub fn stopping(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, code: Some("server_shutting_down"), ..ApiError::internal(message) }
    }

    pub fn not_found(message: impl Into<String>, code: &'static str) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, message: message.into(), kind: "invalid_request_error", param: None, code: Some(code) }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), kind: "server_error", param: None, code: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        });
        (self.status, Json(body)).into_response()
    }
}
