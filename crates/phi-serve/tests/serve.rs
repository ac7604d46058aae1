//! `phi serve`'s API over plain HTTP/1.1 (a TCP socket, no client library): phi3-tiny (random
//! weights, context 128) with a word-level tokenizer over its 512 ids, served in-process on
//! 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{model_dir, start};
use phi_core::GenerationConfig;
use phi_serve::ServedModel;
use serde_json::{Value, json};

/// One HTTP/1.1 request; `(status, headers, body)` with a chunked body put back together.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let body = body.unwrap_or("");
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let (mut out, mut rest) = (String::new(), rest);
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, head.to_string(), body)
}

fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let (status, _, text) = http(addr, "POST", path, Some(&body.to_string()));
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

#[test]
fn chat_completions_are_the_model_greedy_reply_with_usage_and_stream_the_same_text() {
    let dir = model_dir();
    let addr = start(dir.path());
    let (status, _, text) = http(addr, "GET", "/v1/models", None);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"][0]["id"], "tiny");

    let messages = json!([{"role": "system", "content": "the cat"}, {"role": "user", "content": "the cat sat"}]);
    let (status, v) = post(addr, "/v1/chat/completions", json!({"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 6}));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    // The same through phi-core: the Phi-3 chat prompt, greedy, stop ids left out of the text.
    let served = ServedModel::load(dir.path(), None, None, &Default::default()).unwrap();
    let prompt = served.template.prompt([("system", "the cat"), ("user", "the cat sat")]).unwrap();
    let ids = served.tokenizer.encode(&prompt);
    let out = served.model.generate(&ids, &GenerationConfig::greedy(6).with_stop_tokens(served.stop_ids.clone())).unwrap();
    let new: Vec<u32> = out[ids.len()..].iter().copied().filter(|t| !served.stop_ids.contains(t)).collect();
    assert_eq!(content, served.tokenizer.decode(&new));
    let usage = &v["usage"];
    assert_eq!((usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()), (Some(ids.len() as u64), Some((out.len() - ids.len()) as u64)));
    assert_eq!(usage["total_tokens"].as_u64(), Some(out.len() as u64));
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert_eq!(finish, if out.len() - ids.len() == 6 && !served.stop_ids.contains(out.last().unwrap()) { "length" } else { "stop" });

    // Streamed: server-sent events whose deltas join into the same text, the usage in a last
    // chunk without choices (asked for with stream_options), then [DONE].
    let body = json!({"model": "tiny", "messages": messages, "temperature": 0, "max_tokens": 6, "stream": true, "stream_options": {"include_usage": true}}).to_string();
    let (status, head, events) = http(addr, "POST", "/v1/chat/completions", Some(&body));
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    let data: Vec<&str> = events.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(joined, content);
    let (last, usage_chunk) = (&chunks[chunks.len() - 2], &chunks[chunks.len() - 1]);
    assert_eq!(last["choices"][0]["finish_reason"], finish);
    assert_eq!((usage_chunk["choices"].as_array().map(Vec::len), &usage_chunk["usage"]), (Some(0), usage));

    // What newer clients send: nulls for defaults, max_completion_tokens, content as parts, the
    // developer role (the system turn).
    let parts = json!([
        {"role": "developer", "content": [{"type": "text", "text": "the cat"}]},
        {"role": "user", "content": [{"type": "text", "text": "the cat"}, {"type": "text", "text": " sat"}]}
    ]);
    let req = json!({"model": "tiny", "messages": parts, "temperature": 0, "top_p": null, "n": null, "stream": null, "max_completion_tokens": 6});
    let (status, v) = post(addr, "/v1/chat/completions", req);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"].as_str(), Some(content.as_str()));
}

#[test]
fn completions_take_n_seed_and_stop_strings() {
    let dir = model_dir();
    let addr = start(dir.path());
    let req = json!({"model": "tiny", "prompt": "the cat sat", "temperature": 1.0, "seed": 7, "n": 2, "max_tokens": 5});
    let (status, a) = post(addr, "/v1/completions", req.clone());
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["object"], "text_completion");
    assert_eq!(a["choices"].as_array().unwrap().len(), 2);
    // Same seed, same texts.
    let (_, b) = post(addr, "/v1/completions", req.clone());
    assert_eq!(a["choices"], b["choices"]);
    // Choice i is what seed 7 + i gives alone.
    for i in 0..2 {
        let mut one = req.clone();
        (one["n"], one["seed"]) = (json!(1), json!(7 + i));
        assert_eq!(post(addr, "/v1/completions", one).1["choices"][0]["text"], a["choices"][i]["text"], "choice {i}");
    }
    // Streamed, each index's pieces make its choice, and the
    // usage counts both.
    let mut streamed = req.clone();
    (streamed["stream"], streamed["stream_options"]) = (json!(true), json!({"include_usage": true}));
    let (status, _, events) = http(addr, "POST", "/v1/completions", Some(&streamed.to_string()));
    assert_eq!(status, 200);
    let data: Vec<&str> = events.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    for i in 0..2 {
        let text: String = chunks.iter().flat_map(|c| c["choices"].as_array().unwrap().iter()).filter(|c| c["index"] == i).filter_map(|c| c["text"].as_str()).collect();
        assert_eq!(text, a["choices"][i]["text"].as_str().unwrap(), "streamed choice {i}");
    }
    assert_eq!(chunks.last().unwrap()["usage"], a["usage"]);
    // A stop string ends the text before it.
    let greedy = json!({"model": "tiny", "prompt": "the cat sat", "temperature": 0, "max_tokens": 8});
    let (_, g) = post(addr, "/v1/completions", greedy.clone());
    let text = g["choices"][0]["text"].as_str().unwrap().to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 3, "{text}");
    let mut with_stop = greedy;
    with_stop["stop"] = json!([words[2]]);
    let (_, s) = post(addr, "/v1/completions", with_stop);
    let cut = s["choices"][0]["text"].as_str().unwrap();
    assert_eq!(cut, &text[..text.find(words[2]).unwrap()], "{text}");
    assert_eq!(s["choices"][0]["finish_reason"], "stop");
}

#[test]
fn bad_requests_get_openai_errors_and_concurrent_requests_are_served() {
    let dir = model_dir();
    let addr = start(dir.path());
    let (status, _, text) = http(addr, "POST", "/v1/chat/completions", Some("{not json"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, v["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{v}");
    let (status, v) = post(addr, "/v1/chat/completions", json!({"model": "gpt-4", "messages": [{"role": "user", "content": "the"}]}));
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("model_not_found")), "{v}");
    let long = vec!["the"; 200].join(" ");
    let (status, v) = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": long}));
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{v}");
    let (status, v) = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "the", "temperature": 3}));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("temperature")), "{v}");
    let (status, v) = post(addr, "/v1/chat/completions", json!({"model": "tiny", "messages": [{"role": "robot", "content": "the"}]}));
    assert_eq!(status, 400, "{v}");
    let image = json!({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
    let (status, v) = post(addr, "/v1/chat/completions", image);
    assert!(status == 400 && v["error"]["message"].as_str().unwrap().contains("image_url"), "{v}");
    // A max_tokens that would overflow a sum is refused, not wrapped.
    let (status, v) = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "the", "max_tokens": u64::MAX}));
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("context_length_exceeded")), "{v}");
    let (status, _, text) = http(addr, "GET", "/v2/nothing", None);
    assert_eq!(status, 404);
    assert!(text.contains("\"error\""));

    // Requests at once are all answered (each decodes on its own thread).
    let threads: Vec<_> = (0..4)
        .map(|i| std::thread::spawn(move || post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "the cat", "seed": i, "max_tokens": 4}))))
        .collect();
    for t in threads {
        let (status, v) = t.join().unwrap();
        assert_eq!(status, 200, "{v}");
    }
}

/// 32 requests at once, prompts of different lengths, decode as one continuous batch and each
/// gets what it gets alone: greedy ones the same text, seeded sampled ones the same draws — also
/// with their prompts prefilled in chunks between the decode steps. A
/// KV budget that holds two of them at a time makes the rest wait, not fail; a request larger
/// than the whole budget runs alone.
#[test]
fn concurrent_requests_decode_together_and_each_gets_what_it_gets_alone() {
    let dir = model_dir();
    let model = || phi_serve::ServedModel::load(dir.path(), None, Some("tiny".into()), &Default::default()).unwrap();
    let words = ["the", "cat", "sat", "w7", "w12", "w40", "w99"];
    let requests: Vec<Value> = (0..32)
        .map(|i| {
            let prompt: Vec<&str> = (0..1 + i % 9).map(|j| words[(i + j) % words.len()]).collect();
            let mut r = json!({"model": "tiny", "prompt": prompt.join(" "), "max_tokens": 6 + i % 5});
            r["temperature"] = if i % 4 == 3 { json!(1.0) } else { json!(0) };
            r["seed"] = json!(i);
            r
        })
        .collect();
    let texts = |addr: SocketAddr, at_once: bool| -> Vec<Value> {
        if !at_once {
            return requests.iter().map(|r| post(addr, "/v1/completions", r.clone()).1["choices"].clone()).collect();
        }
        let threads: Vec<_> = requests.iter().cloned().map(|r| std::thread::spawn(move || post(addr, "/v1/completions", r))).collect();
        threads
            .into_iter()
            .map(|t| {
                let (status, v) = t.join().unwrap();
                assert_eq!(status, 200, "{v}");
                v["choices"].clone()
            })
            .collect()
    };
    let mut wide = common::Stoppable::start(model(), phi_serve::Limits { max_concurrent: 32, ..Default::default() });
    let alone = texts(wide.addr, false);
    assert_eq!(texts(wide.addr, true), alone);
    wide.stop();
    // Prompts prefilled 2 tokens a step (most of these are chunked): the same replies.
    let mut chunked = common::Stoppable::start(model(), phi_serve::Limits { max_concurrent: 32, prefill_chunk: 2, ..Default::default() });
    assert_eq!(texts(chunked.addr, true), alone);
    chunked.stop();
    // A budget of two of the longest requests' caches: the others wait their turn.
    let m = model();
    let budget = 2 * m.model.kv_cache_bytes(9 + 10);
    let mut narrow = common::Stoppable::start(m, phi_serve::Limits { max_concurrent: 32, kv_cache_bytes: budget, ..Default::default() });
    assert_eq!(texts(narrow.addr, true), alone);
    // Larger than the whole budget: it runs alone, and gets what it gets on the wide server.
    let big = json!({"model": "tiny", "prompt": "the cat", "max_tokens": 60, "temperature": 0});
    let (status, v) = post(narrow.addr, "/v1/completions", big.clone());
    assert_eq!(status, 200, "{v}");
    narrow.stop();
    let mut wide = common::Stoppable::start(model(), phi_serve::Limits { max_concurrent: 32, ..Default::default() });
    assert_eq!(post(wide.addr, "/v1/completions", big).1["choices"], v["choices"]);
    wide.stop();
}

/// Raw bytes to the server; everything it sends back until it closes (a reset after a reply
/// counts as the close: what arrived before it is returned).
fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !out.is_empty() => break,
            Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&out)),
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn unsupported_parameters_are_refused_by_name_and_their_no_op_values_are_taken() {
    let dir = model_dir();
    let addr = start(dir.path());
    let base = json!({"model": "tiny", "prompt": "the cat", "max_tokens": 2, "temperature": 0});
    let asks = [
        ("logprobs", json!(3)),
        ("echo", json!(true)),
        ("best_of", json!(2)),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(-1)),
        ("logit_bias", json!({"5": 10})),
        ("suffix", json!(" the end")),
        // A misspelt field is not a default silently used instead.
        ("max_token", json!(3)),
    ];
    for (key, value) in asks {
        let mut req = base.clone();
        req[key] = value;
        let (status, v) = post(addr, "/v1/completions", req);
        assert_eq!((status, v["error"]["param"].as_str()), (400, Some(key)), "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(key), "{v}");
    }
    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "the"}], "max_tokens": 2, "logprobs": true});
    let (status, v) = post(addr, "/v1/chat/completions", chat);
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("logprobs")), "{v}");
    // What clients send as explicit defaults, and fields that do not change the reply.
    let mut req = base.clone();
    for (key, value) in [
        ("logprobs", json!(null)),
        ("echo", json!(false)),
        ("best_of", json!(1)),
        ("presence_penalty", json!(0)),
        ("frequency_penalty", json!(0.0)),
        ("logit_bias", json!({})),
        ("user", json!("me")),
    ] {
        req[key] = value;
    }
    let (status, v) = post(addr, "/v1/completions", req);
    assert_eq!(status, 200, "{v}");
    let (_, plain) = post(addr, "/v1/completions", base);
    assert_eq!(v["choices"][0]["text"], plain["choices"][0]["text"]);
}

#[test]
fn bodies_over_the_limit_get_413_and_header_stalls_are_cut_off() {
    let dir = model_dir();
    let addr = start(dir.path());
    // A declared 50 MB body is refused on its length, before any of it is sent.
    let reply = raw(addr, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("\"request_too_large\"") && reply.contains("52428800"), "{reply}");

    let model = || ServedModel::load(dir.path(), None, Some("tiny".into()), &Default::default()).unwrap();
    let limits = phi_serve::Limits { max_body_bytes: 4096, header_timeout: std::time::Duration::from_millis(300), ..Default::default() };
    let mut server = common::Stoppable::start(model(), limits);
    // A body without a length (chunked) is cut at the limit while it is read: 413, not a
    // "malformed request".
    let padding = "x".repeat(16 << 10);
    let body = json!({"model": "tiny", "prompt": "the", "user": padding}).to_string();
    let chunked = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let reply = raw(server.addr, chunked.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    // Half a request's headers, or nothing at all: the connection is closed after the header
    // timeout rather than held open.
    for stall in [&b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le"[..], b""] {
        let t = std::time::Instant::now();
        let reply = raw(server.addr, stall);
        let waited = t.elapsed();
        assert!(!reply.contains(" 200 "), "{reply}");
        assert!(waited >= std::time::Duration::from_millis(250) && waited < std::time::Duration::from_secs(10), "closed after {waited:?}");
    }
    // A request that comes in time is served as usual.
    let (status, v) = post(server.addr, "/v1/completions", json!({"model": "tiny", "prompt": "the", "max_tokens": 2}));
    assert_eq!(status, 200, "{v}");
    server.stop();
}

#[test]
fn shutdown_ends_requests_in_flight_with_an_error_never_a_length_finish() {
    let dir = model_dir();
    // A context long enough, and no stop ids, that the requests below are still decoding when
    // the server stops.
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["max_position_embeddings"] = json!(4096);
    config["original_max_position_embeddings"] = json!(4096);
    std::fs::write(&path, config.to_string()).unwrap();
    let mut model = ServedModel::load(dir.path(), None, Some("tiny".into()), &Default::default()).unwrap();
    model.stop_ids.clear();
    let mut server = common::Stoppable::start(model, phi_serve::Limits { max_concurrent: 4, ..Default::default() });
    let addr = server.addr;
    let long = json!({"model": "tiny", "prompt": "the cat", "max_tokens": 4000, "n": 16, "temperature": 1, "seed": 1});
    let plain = {
        let long = long.clone();
        std::thread::spawn(move || post(addr, "/v1/completions", long))
    };
    let mut streamed = long;
    streamed["stream"] = json!(true);
    let body = streamed.to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0, "the stream ended before its first token");
    }
    // Both are decoding now (the plain one was sent first); stop the server.
    std::thread::sleep(std::time::Duration::from_millis(200));
    server.signal();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let data: Vec<&str> = rest.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "server_shutting_down", "{last}");
    assert!(last["error"]["message"].as_str().unwrap().contains("cut off"), "{last}");
    assert!(!rest.contains("[DONE]") && !rest.contains("\"length\""), "a cut-off stream looks complete: {rest}");
    let (status, v) = plain.join().unwrap();
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("server_shutting_down")), "{v}");
    assert!(v.get("choices").is_none(), "{v}");
    server.stop();
}

/// What the server logs at `info` and above, as the fmt subscriber writes it (no colours): a
/// global subscriber, as the server's threads are not the test's; every test's events land
/// here, so a test finds its own by a name only it uses.
fn captured_log() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let to = log.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::INFO).with_writer(move || Buffer(to.clone())).finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        log
    })
    .clone()
}

#[test]
fn requests_are_logged_as_tracing_events_served_at_info_refused_at_warn() {
    let log = captured_log();
    let dir = model_dir();
    let model = ServedModel::load(dir.path(), None, Some("logged".into()), &Default::default()).unwrap();
    let mut server = common::Stoppable::start(model, phi_serve::Limits::default());
    let (status, v) = post(server.addr, "/v1/chat/completions", json!({"model": "logged", "messages": [{"role": "user", "content": "the cat"}], "max_tokens": 2, "temperature": 0}));
    assert_eq!(status, 200, "{v}");
    let (status, v) = post(server.addr, "/v1/completions", json!({"model": "nope-logged", "prompt": "the cat"}));
    assert_eq!(status, 404, "{v}");
    let (status, _, _) = http(server.addr, "GET", "/v1/logged-nowhere", None);
    assert_eq!(status, 404);
    server.stop();
    let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    let line = |needle: &str| text.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle}:\n{text}")).to_string();
    let served = line("model=\"logged\"");
    for want in [" INFO ", "request served", "endpoint=\"/v1/chat/completions\"", "status=200", "n=1", "stream=false", "prompt_tokens=", "completion_tokens=", "ms="] {
        assert!(served.contains(want), "{want}: {served}");
    }
    let refused = line("nope-logged");
    for want in [" WARN ", "request refused", "endpoint=\"/v1/completions\"", "status=404", "code=\"model_not_found\""] {
        assert!(refused.contains(want), "{want}: {refused}");
    }
    let nowhere = line("/v1/logged-nowhere");
    assert!(nowhere.contains(" WARN ") && nowhere.contains("status=404"), "{nowhere}");
}
