//! `finetune_lora` / `phi finetune`: phi-1's recipe in miniature — LoRA fine-tuning of a base
//! model on "exercises" (Python functions with docstrings: prompt = signature + docstring,
//! response = body) taken from code the base model never saw in pre-training.

use std::path::PathBuf;

use phi_core::{GenerationConfig, PhiForCausalLM};
use phi_data::corpus::{collect_files, python_stdlib_dir};
use phi_data::exercises::extract;
use phi_core::chat::{ChatTemplate, TemplateChoice};
use phi_data::sft::{SftExample, Turn};
use phi_data::Tokenizer;
use phi_train::checkpoint::{CHECKPOINTS_DIR, CONFIG_FILE, TOKENIZER_FILE};
use phi_train::lora::{self, LoraConfig};
use phi_train::sft_objective::{Sft, encode, sft_loss};
use phi_train::{AdamWSettings, Adapter, Decay, LrSchedule, Resume, TrainConfig, Weights};

use phi_core::device::Backend;
use crate::progress::{Progress, Unit};
use crate::recipes::{Recipe, RecipeOptions, default_corpus};

/// How to run `phi finetune` / the `finetune_lora` example.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// Base checkpoint (HF folder with tokenizer.json). Default: the newest checkpoint of the
    /// phi-1 recipe's default output, trained first (briefly) if there is none.
    pub base: Option<PathBuf>,
    pub out: PathBuf,
    pub steps: usize,
    pub rank: usize,
    pub alpha: f64,
    pub lr: f64,
    pub batch_size: usize,
    /// Micro-batches per optimizer step (the effective batch is batch_size × this).
    pub grad_accum: usize,
    /// Global gradient-norm clip (0: no clipping).
    pub clip: f64,
    /// Compute precision (bf16/f16 keep f32 master weights; half precision is for GPUs).
    pub precision: phi_train::Precision,
    /// Save a checkpoint (the adapter and optimizer state) every this many steps (0: at the end).
    pub checkpoint_every: usize,
    /// Start over: remove this run's checkpoints (only ours) instead of resuming from them.
    pub fresh: bool,
    /// PEFT target module names; `None`: the base model family's ([`phi_core::lora::default_targets`]:
    /// q_proj, k_proj, v_proj, dense, fc1, fc2 for Phi-1/1.5/2; qkv_proj, o_proj, gate_up_proj,
    /// down_proj for Phi-3/3.5/4-mini).
    pub targets: Option<Vec<String>>,
    /// SFT data instead of the built-in exercises: JSONL with `{"messages": [...]}` or
    /// `{"prompt", "response"}` records (a tenth is held out for validation).
    pub data: Option<PathBuf>,
    /// Chat template for `data` (default: the base model's own, else its family's format).
    pub template: TemplateChoice,
    /// QLoRA-style: quantize the frozen base projections (int8 or int4, blocks of 32).
    pub quantize: Option<lora::BaseQuantization>,
    /// AdamW for the adapters (default: torch's, without weight decay).
    pub optimizer: AdamWSettings,
    pub device: Backend,
    /// ZeRO stage of a data-parallel run (see `TrainConfig::zero`).
    pub zero: u8,
    /// Pack examples into rows of `max_len` tokens (best-fit decreasing, each example computed
    /// as if alone) instead of padding each batch to its longest example.
    pub packing: bool,
    /// Examples are cut to this many tokens, and packed rows hold this many (default: the
    /// model's context, at most 2048 with packing).
    pub max_len: Option<usize>,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        FinetuneOptions {
            base: None,
            out: PathBuf::from("runs/finetune_lora"),
            steps: 200,
            rank: 8,
            alpha: 16.0,
            lr: 2e-3,
            batch_size: 16,
            grad_accum: 1,
            clip: 1.0,
            precision: phi_train::Precision::F32,
            checkpoint_every: 50,
            fresh: false,
            targets: None,
            data: None,
            template: TemplateChoice::Model,
            quantize: None,
            packing: false,
            max_len: None,
            optimizer: AdamWSettings { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, no_decay_for_bias_norm_embedding: false },
            device: Backend::Cpu,
            zero: 0,
        }
    }
}

/// The base checkpoint: given, or `train_phi1`'s newest, or a short `train_phi1` run now.
pub fn base_checkpoint(args: &FinetuneOptions) -> Result<PathBuf, Box<dyn std::error::Error>> {
    if let Some(b) = &args.base {
        return Ok(b.clone());
    }
    let recipe = Recipe::phi_1();
    let root = recipe.default_out().join(CHECKPOINTS_DIR);
    if let Some(dir) = phi_train::checkpoint::latest(&root).filter(|d| d.join(TOKENIZER_FILE).is_file()) {
        return Ok(dir);
    }
    // The small base is a one-process run (its steps are one micro-batch each): under a launcher
    // it is trained first, alone.
    let world = phi_train::dist::world();
    if world.size() > 1 {
        return Err(format!(
            "{}: no {} checkpoint in {} to fine-tune: give --base, or train the default base first in one process \
             (phi finetune trains it when run alone)",
            world.describe(),
            recipe.name,
            root.display()
        )
        .into());
    }
    println!("no {} checkpoint in {}: training a small base first", recipe.name, root.display());
    crate::recipes::run(recipe, RecipeOptions { steps: Some(150), ..RecipeOptions::default() })?;
    Ok(phi_train::checkpoint::latest(&root).ok_or("train_phi1 wrote no checkpoint")?)
}

/// Source files the default base did not pre-train on: the standard-library files that
/// `train_phi1`'s default corpus budget left out (else the shipped corpus). The built-in
/// exercises come from these.
pub fn held_out_files() -> Vec<PathBuf> {
    let (_, pretrain) = default_corpus(&RecipeOptions::default());
    match python_stdlib_dir() {
        Some(root) => collect_files(&root, ".py", &["test", "tests", "idlelib", "lib2to3", "encodings"])
            .into_iter()
            .filter(|f| !pretrain.contains(f))
            .collect(),
        None => collect_files(&PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/corpus/python")), ".py", &[]),
    }
}

/// Exercises from [`held_out_files`], at most 12 body lines each.
fn held_out_exercises() -> Vec<phi_data::exercises::Exercise> {
    held_out_files().iter().filter_map(|f| std::fs::read_to_string(f).ok()).flat_map(|src| extract(&src, 12)).collect()
}

fn to_examples(ex: &[phi_data::exercises::Exercise], tok: &Tokenizer, eos: u32, max_len: usize) -> (Vec<SftExample>, usize) {
    let mut truncated = 0;
    let examples = ex
        .iter()
        .map(|e| {
            let turns = [
                Turn { role: "user".into(), content: e.prompt.clone() },
                Turn { role: "assistant".into(), content: e.response.clone() },
            ];
            let (x, cut) = encode(&turns, &ChatTemplate::Plain, tok, eos, max_len).expect("the plain format renders every conversation");
            truncated += cut as usize;
            x
        })
        .filter(|x| x.learn.iter().any(|&l| l))
        .collect();
    (examples, truncated)
}

fn complete(model: &PhiForCausalLM, tok: &Tokenizer, prompt: &str, eos: u32) -> Result<String, Box<dyn std::error::Error>> {
    let ids = tok.encode(prompt);
    let out = model.generate(&ids, &GenerationConfig::greedy(48).with_stop_tokens([eos]))?;
    Ok(tok.decode(&out[ids.len()..]))
}

/// The settings a run cannot start with, named by their flag.
fn check_args(args: &FinetuneOptions) -> Result<(), String> {
    for (flag, v) in [("--steps", args.steps), ("--batch-size", args.batch_size), ("--rank", args.rank), ("--grad-accum", args.grad_accum)] {
        if v == 0 {
            return Err(format!("{flag} must be at least 1"));
        }
    }
    for (flag, v) in [("--lr", args.lr), ("--alpha", args.alpha)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{flag} {v} must be a positive finite number"));
        }
    }
    if !(args.clip.is_finite() && args.clip >= 0.0) {
        return Err(format!("--clip {} must be ≥ 0 (0: no clipping)", args.clip));
    }
    // The run prunes checkpoints, rewrites metrics and replaces adapter/ and merged/ under
    // --out: none of that may reach what it reads (a base among this folder's own checkpoints
    // would be pruned away under the run). Without --base, the base is the phi-1 recipe's newest
    // checkpoint.
    let default_base = Recipe::phi_1().default_out().join(CHECKPOINTS_DIR);
    let inputs_base = match &args.base {
        Some(b) => ("--base", b.as_path()),
        None => ("the default base (the phi-1 recipe's checkpoints)", default_base.as_path()),
    };
    let mut inputs = vec![inputs_base];
    if let Some(data) = &args.data {
        inputs.push(("--data", data.as_path()));
    }
    phi_train::run_dir::check_inputs(&inputs, ("--out", &args.out), &["adapter", "merged"])
}

/// Runs the fine-tuning end to end (see the module docs), printing what it does; the training's
/// warnings are printed as they happen ([`crate::progress::print_warnings`]).
pub fn run(args: FinetuneOptions) -> Result<(), Box<dyn std::error::Error>> {
    crate::progress::print_warnings();
    check_args(&args)?;
    let device = crate::world::device(args.device)?;
    // The outputs are written at the end: a folder there that is not ours stops us now.
    for sub in ["adapter", "merged"] {
        crate::export::check_writable(&args.out.join(sub))?;
    }
    // Held from --fresh to the last output written; `fit` takes it again within.
    // Data-parallel: rank 0's (see `crate::world`).
    let lead = crate::world::lead();
    let _lock = if lead { Some(phi_train::run_dir::RunLock::acquire(&args.out)?) } else { None };
    let base_dir = base_checkpoint(&args)?;
    // The config first: a folder that is no model (a run's, say) is named as such, with the
    // models under it, rather than as a missing tokenizer.json.
    phi_core::PhiConfig::from_file(base_dir.join(CONFIG_FILE))?;
    let tok_path = base_dir.join(TOKENIZER_FILE);
    let tok = Tokenizer::from_file(&tok_path)?;
    let base = PhiForCausalLM::from_pretrained(&base_dir, &device)?;
    // Training looks every id up in the embedding table: a tokenizer that can produce ids the
    // model has no row for would fail mid-run (a panic inside the backend), so refuse it here.
    if tok.vocab_size() > base.config().vocab_size {
        return Err(format!(
            "{}: the tokenizer has {} tokens but the model's vocab_size is {} ({}): they do not belong together",
            tok_path.display(),
            tok.vocab_size(),
            base.config().vocab_size,
            base_dir.join(CONFIG_FILE).display()
        )
        .into());
    }
    let eos = base.config().eos_token_ids.first().copied().or(tok.eos_id()).ok_or("the base has no EOS token")?;
    let context = base.config().max_position_embeddings;
    let max_len = match args.max_len {
        Some(n) if n < 2 => return Err(format!("--max-len {n}: an example needs at least 2 tokens").into()),
        Some(n) => n,
        // A packed row of a long-context model's whole context would be one huge row per item.
        None if args.packing => context.min(2048),
        None => context,
    };
    let (train, val, probe) = match &args.data {
        Some(path) => {
            let template = ChatTemplate::choose(&base_dir, base.config().family, &args.template)?;
            println!("{}: rendered with {}", path.display(), template.describe());
            let (mut examples, report) = phi_train::sft_objective::load_examples(path, &template, &tok, eos, max_len)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "{}: {} examples, {} skipped, {} truncated to {max_len} tokens",
                path.display(),
                report.examples,
                report.skipped.len(),
                report.truncated
            );
            let unit = if phi_data::parquet::is_parquet(path) { "row" } else { "line" };
            for (line, why) in report.skipped.iter().take(10) {
                println!("  skipped {unit} {line}: {why}");
            }
            if examples.len() < 2 {
                return Err(format!("{}: fewer than 2 usable examples", path.display()).into());
            }
            let val = examples.split_off(examples.len() - (examples.len() / 10).max(1));
            // The probe is the first validation example's context, up to its first learned token.
            let first = &val[0];
            let cut = first.learn.iter().position(|&l| l).unwrap_or(first.ids.len());
            let probe = tok.decode(&first.ids[..cut]);
            (examples, val, probe)
        }
        None => {
            let mut exercises = held_out_exercises();
            if exercises.len() < 20 {
                return Err(format!("only {} exercises found: not enough to fine-tune", exercises.len()).into());
            }
            exercises.truncate(3000);
            let n_val = (exercises.len() / 10).clamp(10, 200);
            let val_ex = exercises.split_off(exercises.len() - n_val);
            let (train, cut_train) = to_examples(&exercises, &tok, eos, max_len);
            let (val, cut_val) = to_examples(&val_ex, &tok, eos, max_len);
            println!(
                "exercises from held-out files: {} train / {} validation ({} truncated to {max_len} tokens)",
                train.len(),
                val.len(),
                cut_train + cut_val
            );
            (train, val, val_ex[0].prompt.clone())
        }
    };
    println!("base: {}", base_dir.display());
    let pad = eos;
    let probe = &probe;
    // The "before" figures are rank 0's to print.
    let (loss_before, completion_before) = if lead { (sft_loss(&base, &val, args.batch_size, pad), complete(&base, &tok, probe, eos)?) } else { (f64::NAN, String::new()) };

    let config = LoraConfig { r: args.rank, lora_alpha: args.alpha, lora_dropout: 0.0, target_modules: args.targets.clone().unwrap_or_else(|| phi_core::lora::default_targets(base.config().family)), use_rslora: false };
    let quantize = args.quantize;
    let weights = Weights::Lora { base: base_dir.clone(), adapter: Adapter::Fresh(config.clone()), quantize };
    let cfg = TrainConfig {
        batch_size: args.batch_size,
        seq_len: max_len,
        grad_accum: args.grad_accum,
        max_steps: args.steps,
        optimizer: args.optimizer,
        schedule: LrSchedule { peak: args.lr, warmup_steps: args.steps / 20, total_steps: args.steps, floor: args.lr * 0.1, decay: Decay::Cosine },
        clip_norm: (args.clip > 0.0).then_some(args.clip),
        eval_every: 0,
        eval_batches: usize::MAX,
        checkpoint_every: args.checkpoint_every,
        seed: 7,
        precision: args.precision,
        zero: args.zero,
        ..TrainConfig::default()
    };
    {
        // What the run will train, reported before it starts (the probe is dropped after).
        let plain = Weights::Lora { base: base_dir.clone(), adapter: Adapter::Fresh(config.clone()), quantize: None };
        let probe = plain.build(&device.clone().autodiff(), cfg.seed)?;
        let total = probe.num_params();
        let trainable = lora::trainable_params(&probe);
        println!(
            "LoRA r={} alpha={} on {}: {trainable} trainable of {total} parameters ({:.2}%); AdamW state {:.1} KiB instead of {:.1} KiB for full fine-tuning",
            config.r,
            config.lora_alpha,
            config.target_modules.join(", "),
            100.0 * trainable as f64 / total as f64,
            (8 * trainable) as f64 / 1024.0,
            (8 * total) as f64 / 1024.0
        );
        if let Some(bits) = quantize {
            let (_, before, after) = lora::quantize_base(probe, bits);
            println!(
                "base projections quantized to {bits}: {:.1} KiB → {:.1} KiB ({:.1}%)",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                100.0 * after as f64 / before as f64
            );
        }
    }
    if args.fresh && lead {
        phi_train::checkpoint::remove_all(&args.out.join(CHECKPOINTS_DIR))?;
    }
    let bar = Progress::new(args.steps as u64, "finetune", Unit::Count("steps"), "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise}]");
    let mut objective = if args.packing {
        let objective = Sft::packed(&train, &val, pad, cfg.seed, max_len)?;
        let tokens: usize = train.iter().map(|e| e.ids.len()).sum();
        if lead {
            println!(
                "packing: {} examples in {} rows of {max_len} tokens ({:.1}% filled; padded batches would fill {:.1}%)",
                train.len(),
                objective.rows(),
                100.0 * tokens as f64 / (objective.rows() * max_len) as f64,
                100.0 * phi_data::packing::padded_fill(&train, args.batch_size)
            );
        }
        objective
    } else {
        Sft::new(&train, &val, pad, cfg.seed)?
    };
    let resume = if args.fresh { Resume::No } else { Resume::Auto };
    let outcome = crate::plot::fit_and_plot(&weights, &mut objective, &cfg, &args.out, resume, &device, |m| {
        bar.set_position(m.step as u64);
        bar.set_message(format!("loss {:.3}", m.loss));
    })
    .map_err(crate::recipes::in_tool_words)?;
    bar.finish();
    if !lead {
        return Ok(());
    }
    if let Some(from) = outcome.resumed_from {
        println!("(resumed from the checkpoint at step {from})");
    }
    let losses: Vec<f64> = outcome.metrics.iter().map(|m| m.loss).collect();
    // The training curve in a few numbers: mean loss over each fifth of the run.
    let fifth = (losses.len() / 5).max(1);
    let curve: Vec<String> = losses.chunks(fifth).map(|c| format!("{:.3}", c.iter().sum::<f64>() / c.len() as f64)).collect();
    println!("training loss by fifths of the run: {}", curve.join(" → "));
    let model = outcome.model;
    let tuned = model.clone();
    let loss_after = sft_loss(&tuned, &val, args.batch_size, pad);
    println!("held-out loss (response tokens): {loss_before:.3} → {loss_after:.3}");
    println!("--- prompt ---\n{probe}--- base model ---\n{completion_before}\n--- after LoRA ---\n{}\n---", complete(&tuned, &tok, probe, eos)?);

    let adapter_dir = args.out.join("adapter");
    let source = format!("LoRA fine-tuning of {}", base_dir.display());
    crate::export::write_model_folder(&adapter_dir, &source, |dir| Ok(lora::save(&model, &config, dir)?))?;
    let merged_dir = args.out.join("merged");
    crate::export::write_model_folder(&merged_dir, &source, |dir| {
        lora::merge(tuned).save_pretrained(dir)?;
        tok.save(dir.join(TOKENIZER_FILE))?;
        // The chat template the data was rendered with goes along with the tokenizer.
        crate::export::copy_template_files(&base_dir, dir)
    })?;
    println!("adapter (PEFT format): {}\nmerged model: {}", adapter_dir.display(), merged_dir.display());
    Ok(())
}
