//! Chat templates against transformers: the Phi instruct models' own templates (and a tool-use
//! template in a fine-tune's style) rendered by `ChatTemplate::for_model` equal
//! `apply_chat_template(..., tokenize=False)` byte for byte (fixtures/chat-templates/,
//! make_renderings.py); SFT's pieces of a Jinja template join to the rendering and mark
//! exactly the responses.

use phi_core::Family;
use phi_core::chat::{ChatError, ChatTemplate};
use serde_json::Value;

use crate::common::fixture;

fn renderings() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("chat-templates/renderings.json")).unwrap()).unwrap()
}

fn template(model: &str) -> ChatTemplate {
    ChatTemplate::for_model(&fixture("chat-templates").join(model), Family::Phi3).unwrap()
}

#[test]
fn every_rendering_equals_transformers() {
    let all = renderings();
    let cases = all["renderings"].as_array().unwrap();
    assert_eq!(cases.len(), 40);
    for case in cases {
        let model = case["model"].as_str().unwrap();
        let t = template(model);
        assert!(matches!(t, ChatTemplate::Jinja(_)), "{model}: {}", t.describe());
        // As a request body carries it: messages and tools, key order as Python wrote them.
        let json = case["request"].as_str().unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render_json(json, agp).unwrap();
        let want = case["text"].as_str().unwrap();
        assert_eq!(got, want, "{model} / {} / add_generation_prompt={agp}", case["conversation"]);
    }
}

#[test]
fn a_templates_own_exception_is_its_error() {
    let all = renderings();
    let case = &all["errors"][0];
    let t = template(case["model"].as_str().unwrap());
    let err = t.render_json(&case["messages"].to_string(), false).unwrap_err();
    assert!(matches!(err, ChatError::Render { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(case["message"].as_str().unwrap()), "{message}");
    assert!(message.contains("tokenizer_config.json"), "{message}");
}

#[test]
fn role_content_prompts_equal_the_renderings_with_a_generation_prompt() {
    let all = renderings();
    for case in all["renderings"].as_array().unwrap() {
        let messages = case["messages"].as_array().unwrap();
        if case["add_generation_prompt"] != true || messages.iter().any(|m| m.as_object().unwrap().keys().any(|k| k != "role" && k != "content")) {
            continue;
        }
        let pairs: Vec<(&str, &str)> = messages.iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
        let t = template(case["model"].as_str().unwrap());
        assert_eq!(t.prompt(pairs).unwrap(), case["text"].as_str().unwrap(), "{} / {}", case["model"], case["conversation"]);
    }
}

#[test]
fn sft_pieces_join_to_the_rendering_and_mark_the_responses() {
    let all = renderings();
    let mut checked = 0;
    for case in all["renderings"].as_array().unwrap() {
        let messages = case["messages"].as_array().unwrap();
        if case["add_generation_prompt"] != false || case["conversation"] != "multi_turn" {
            continue;
        }
        let pairs: Vec<(&str, &str)> = messages.iter().map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap())).collect();
        let model = case["model"].as_str().unwrap();
        let pieces = template(model).pieces(pairs.clone()).unwrap();
        let text: String = pieces.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(text, case["text"].as_str().unwrap(), "{model}");
        let learned: Vec<&str> = pieces.iter().filter(|p| p.response).map(|p| p.text.as_str()).collect();
        // Each response is its content and the end marker; the last also the EOS the template
        // writes after the conversation. Nothing of a user turn is learned.
        let newline = if model == "phi-4-mini-instruct" { "" } else { "\n" };
        assert_eq!(learned, [format!("    return a + b<|end|>{newline}"), format!("def sub(a, b):\n    return a - b<|end|>{newline}<|endoftext|>")], "{model}");
        assert!(pieces.iter().all(|p| !p.eos_after));
        checked += 1;
    }
    assert_eq!(checked, 3);
}

#[test]
fn a_folder_without_a_template_falls_back_to_its_familys_format() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(ChatTemplate::for_model(dir.path(), Family::Phi).unwrap(), ChatTemplate::Plain);
    assert!(ChatTemplate::Plain.describe().contains("no chat template"));
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "<|endoftext|>", "chat_template": null}"#).unwrap();
    assert_eq!(ChatTemplate::for_model(dir.path(), Family::Phi3).unwrap(), ChatTemplate::Phi3);
}

#[test]
fn chat_template_jinja_wins_and_named_lists_pick_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"{"eos_token": {"content": "</s>", "__type": "AddedToken"}, "chat_template": [
        {"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "{{ messages[0].content }}{{ eos_token }}"}]}"#;
    std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
    let t = ChatTemplate::for_model(dir.path(), Family::Phi3).unwrap();
    assert_eq!(t.prompt([("user", "hi")]).unwrap(), "hi</s>");
    assert!(t.describe().contains("\"default\""), "{}", t.describe());
    std::fs::write(dir.path().join("chat_template.jinja"), "[{{ bos_token }}{{ messages | length }}]\n").unwrap();
    let t = ChatTemplate::for_model(dir.path(), Family::Phi3).unwrap();
    // jinja2 drops the file's one trailing newline, as transformers renders it.
    assert_eq!(t.prompt([("user", "hi")]).unwrap(), "[1]");
    assert!(t.describe().contains("chat_template.jinja"));
}

#[test]
fn bad_templates_and_files_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(&config, r#"{"chat_template": "{% for m in messages %}{{ m.content }"}"#).unwrap();
    let err = ChatTemplate::for_model(dir.path(), Family::Phi3).unwrap_err();
    assert!(matches!(err, ChatError::Syntax { .. }) && err.to_string().contains("tokenizer_config.json"), "{err}");
    std::fs::write(&config, r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#).unwrap();
    let err = ChatTemplate::for_model(dir.path(), Family::Phi3).unwrap_err().to_string();
    assert!(err.contains("no template named `default` among tool_use"), "{err}");
    std::fs::write(&config, r#"{"chat_template": 7}"#).unwrap();
    assert!(ChatTemplate::for_model(dir.path(), Family::Phi3).unwrap_err().to_string().contains("chat_template: expected a string"));
    std::fs::write(&config, "{").unwrap();
    let err = ChatTemplate::for_model(dir.path(), Family::Phi3).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("invalid JSON"), "{err}");

    let t = template("phi-3-mini-4k-instruct");
    for (json, want) in [
        ("{}", "needs `messages`"),
        ("[1]", "message 1: expected an object"),
        (r#"[{"content": "x"}]"#, "message 1: `role` must be a string"),
        (r#"{"messages": 3}"#, "`messages` must be a list"),
        ("nope", "invalid JSON"),
    ] {
        let err = t.render_json(json, true).unwrap_err().to_string();
        assert!(err.contains(want), "{json}: {err}");
    }
}

#[test]
fn a_template_that_rewrites_earlier_turns_cannot_mark_responses() {
    // Renders only the last assistant turn in full (as reasoning models' templates drop earlier
    // thoughts): the conversation's rendering does not extend its beginning.
    let t = ChatTemplate::jinja(
        "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<a/>{% else %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
        "",
        "",
        "test",
    )
    .unwrap();
    let err = t.pieces([("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]).unwrap_err();
    assert!(matches!(err, ChatError::NotPrefixStable { .. }), "{err:?}");
    assert!(err.to_string().contains("message 2"), "{err}");
}

#[test]
fn strftime_now_dates_a_template_as_transformers_does() {
    // Llama-3-style: `{{ strftime_now("%d %b %Y") }}` in the system turn.
    let t = ChatTemplate::jinja("Today: {{ strftime_now('%Y') }}{% for m in messages %}|{{ m.content }}{% endfor %}", "", "", "test").unwrap();
    let text = t.prompt([("user", "hi")]).unwrap();
    let year: u32 = text["Today: ".len().."Today: ".len() + 4].parse().unwrap();
    assert!(year >= 2026 && text.ends_with("|hi"), "{text}");
}
