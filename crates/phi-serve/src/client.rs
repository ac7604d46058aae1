//! A small blocking client for any OpenAI-compatible endpoint (`phi serve`, vLLM, llama.cpp's
//! server, mistral.rs, hosted APIs): one chat completion, with retries and exponential backoff
//! on the failures worth retrying (connection errors, 408, 409, 429, 5xx). Built on `ureq`
//! (rustls for HTTPS), so the callers that fan out use plain threads.
//!
//! ```no_run
//! use phi_serve::client::Client;
//! let client = Client::new("http://127.0.0.1:8000/v1", "merged", std::env::var("OPENAI_API_KEY").ok());
//! let reply = client.chat(&[("user", "def add(a, b):")], 0.0, 64, 3)?;
//! // The first choice's content, and how many tries it took (1 = no retry, at most 1 + 3).
//! let (text, attempts) = (reply.text, reply.attempts);
//! assert!((1..=4).contains(&attempts), "{text}");
//! # Ok::<(), phi_serve::ServeError>(())
//! ```

use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{Result, ServeError};

/// Where to send requests.
#[derive(Debug, Clone)]
pub struct Client {
    /// The API base, e.g. `http://127.0.0.1:8000/v1` (`/chat/completions` is appended).
    pub base: String,
    pub model: String,
    pub api_key: Option<String>,
    /// The first retry waits this long; each next one twice as long (at most 30 s).
    pub backoff: Duration,
    agent: ureq::Agent,
}

/// One reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub text: String,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Attempts it took (1 = no retry).
    pub attempts: usize,
}

impl Client {
    pub fn new(base: &str, model: &str, api_key: Option<String>) -> Self {
        let config = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(600))).http_status_as_error(false).build();
        Client { base: base.trim_end_matches('/').to_string(), model: model.to_string(), api_key, backoff: Duration::from_millis(500), agent: config.into() }
    }

    /// A chat completion of `messages` streamed (server-sent events, no retries): `on_piece`
    /// gets each piece of the reply's text as it arrives; the reply is the whole text, with
    /// the usage the server sends at the end.
    pub fn chat_stream(&self, messages: &[(&str, &str)], temperature: f64, max_tokens: usize, mut on_piece: impl FnMut(&str)) -> Result<Reply> {
        use std::io::BufRead;
        let body = json!({
            "model": self.model,
            "messages": messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect::<Vec<_>>(),
            "temperature": temperature,
            "max_tokens": max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let url = format!("{}/chat/completions", self.base);
        let mut req = self.agent.post(&url).header("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.header("Authorization", &format!("Bearer {key}"));
        }
        let mut resp = req.send(body.to_string().as_bytes()).map_err(|e| ServeError::Request { url: url.clone(), source: Box::new(e) })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(ServeError::Http { url, status, body: text.chars().take(300).collect() });
        }
        let mut reply = Reply { text: String::new(), prompt_tokens: None, completion_tokens: None, attempts: 1 };
        for line in std::io::BufReader::new(resp.body_mut().as_reader()).lines() {
            let line = line.map_err(|e| ServeError::Request { url: url.clone(), source: Box::new(ureq::Error::Io(e)) })?;
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                break;
            }
            let v: Value = serde_json::from_str(data).map_err(|source| ServeError::ReplyNotJson { url: url.clone(), source })?;
            if let Some(piece) = v["choices"][0]["delta"]["content"].as_str().filter(|p| !p.is_empty()) {
                on_piece(piece);
                reply.text.push_str(piece);
            }
            if v["usage"].is_object() {
                reply.prompt_tokens = v["usage"]["prompt_tokens"].as_u64();
                reply.completion_tokens = v["usage"]["completion_tokens"].as_u64();
            }
        }
        Ok(reply)
    }

    /// A chat completion of `messages` (`(role, content)`), retried up to `retries` times
    /// (when [`ServeError::is_retryable`]); the error is the last attempt's.
    pub fn chat(&self, messages: &[(&str, &str)], temperature: f64, max_tokens: usize, retries: usize) -> Result<Reply> {
        let body = json!({
            "model": self.model,
            "messages": messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect::<Vec<_>>(),
            "temperature": temperature,
            "max_tokens": max_tokens,
        });
        let url = format!("{}/chat/completions", self.base);
        let mut last = None;
        for attempt in 0..=retries {
            if attempt > 0 {
                std::thread::sleep(self.backoff.saturating_mul(1 << (attempt - 1).min(6)).min(Duration::from_secs(30)));
            }
            let mut req = self.agent.post(&url).header("Content-Type", "application/json");
            if let Some(key) = &self.api_key {
                req = req.header("Authorization", &format!("Bearer {key}"));
            }
            let mut resp = match req.send(body.to_string().as_bytes()) {
                Ok(r) => r,
                Err(e) => {
                    last = Some(ServeError::Request { url: url.clone(), source: Box::new(e) });
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            if status == 200 {
                let v: Value = serde_json::from_str(&text).map_err(|source| ServeError::ReplyNotJson { url: url.clone(), source })?;
                let content = v["choices"][0]["message"]["content"].as_str().ok_or_else(|| ServeError::NoContent { url: url.clone(), reply: v.to_string() })?;
                return Ok(Reply {
                    text: content.to_string(),
                    prompt_tokens: v["usage"]["prompt_tokens"].as_u64(),
                    completion_tokens: v["usage"]["completion_tokens"].as_u64(),
                    attempts: attempt + 1,
                });
            }
            let e = ServeError::Http { url: url.clone(), status, body: text.chars().take(300).collect() };
            let retry = e.is_retryable();
            last = Some(e);
            if !retry {
                break;
            }
        }
        Err(last.expect("at least one attempt"))
    }
}
