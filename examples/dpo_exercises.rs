//! Phi's recipe in miniature, the DPO step: preferences that need no human. From the exercises
//! `finetune_lora` learns from (functions of code the base never pre-trained on), those whose
//! docstrings hold examples are judged by running them in the HumanEval sandbox: `chosen` = the
//! reference body (it passes), `rejected` = a body that fails — the SFT model's own greedy
//! completion, or a mutation of the reference (an off-by-one, a flipped comparison, a dropped
//! branch, …). Then LoRA DPO on the SFT model, and the held-out figures before and after: reward
//! accuracy and margin on held-out pairs, and the pass rate of greedy completions on held-out
//! exercises.
//!
//! ```bash
//! cargo run --release --example dpo_exercises     # trains finetune_lora first if needed
//! ```

use std::path::{Path, PathBuf};

use phi::eval::humaneval::{Outcome, generate_completions, run_programs};
use phi::eval::tested_exercises::{TestedExercise, extract, mutants};
use phi::eval::{Limits, Sandbox};
use phi::progress::{Progress, Unit};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const OUT: &str = "runs/dpo_exercises";

/// The SFT model: `finetune_lora`'s merged output, trained first when absent.
fn sft_model() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let opts = phi::finetune::FinetuneOptions::default();
    let merged = opts.out.join("merged");
    if !merged.join("config.json").is_file() {
        println!("no {}: running finetune_lora first", merged.display());
        phi::finetune::run(opts)?;
    }
    Ok(merged)
}

/// Exercises with examples whose reference passes: from the files `finetune_lora` draws from
/// (code the base never pre-trained on), and — as those hold few functions with examples —
/// from the rest of the standard library too (the base pre-trained on part of it).
fn tested_exercises(sandbox: &Sandbox, workers: usize) -> phi::eval::Result<Vec<TestedExercise>> {
    let held_out = phi::finetune::held_out_files();
    let rest: Vec<PathBuf> = phi::data::corpus::python_stdlib_dir()
        .map(|root| phi::data::corpus::collect_files(&root, ".py", &["test", "tests", "idlelib", "lib2to3", "encodings"]))
        .unwrap_or_default()
        .into_iter()
        .filter(|f| !held_out.contains(f))
        .collect();
    let from = |files: &[PathBuf]| -> Vec<TestedExercise> { files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).flat_map(|src| extract(&src, 20)).collect() };
    let (unseen, seen) = (from(&held_out), from(&rest));
    println!("functions with examples: {} in the files finetune_lora draws from, {} in the rest of the standard library", unseen.len(), seen.len());
    let mut all: Vec<TestedExercise> = unseen.into_iter().chain(seen).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all.dedup_by(|a, b| a.name == b.name && a.response == b.response);
    // An exercise counts when its reference passes and a body that does nothing fails: examples
    // that never call this function (`>>> subprocess.getoutput(…)` calls the installed module's)
    // test nothing.
    let trivial = |e: &TestedExercise| {
        let indent: String = e.response.chars().take_while(|c| c.is_whitespace() && *c != '\n').collect();
        format!("{indent}return None\n")
    };
    let programs: Vec<String> = all.iter().flat_map(|e| [e.program(&e.response), e.program(&trivial(e))]).collect();
    let verdicts = run_programs(&programs, sandbox, workers)?;
    let n = all.len();
    let kept: Vec<TestedExercise> = all
        .into_iter()
        .zip(verdicts.chunks(2))
        .filter(|(_, v)| v[0] == Outcome::Passed && v[1] != Outcome::Passed)
        .map(|(e, _)| e)
        .collect();
    println!("{} of {n} references pass their examples in the sandbox while a body that does nothing fails them", kept.len());
    Ok(kept)
}

/// Greedy completions of `exercises` by the model in `dir` (or `model`), and whether each passes.
fn greedy(model: &phi::core::PhiForCausalLM, tok: &phi::data::Tokenizer, exercises: &[TestedExercise], sandbox: &Sandbox, workers: usize) -> Result<Vec<(String, bool)>, Box<dyn std::error::Error>> {
    let problems: Vec<_> = exercises.iter().map(|e| e.problem()).collect();
    let completions = generate_completions(model, tok, &problems, 1, 0.0, 160, |_| {})?;
    let programs: Vec<String> = exercises.iter().zip(&completions).map(|(e, (_, c))| e.program(c)).collect();
    let verdicts = run_programs(&programs, sandbox, workers)?;
    Ok(completions.into_iter().zip(verdicts).map(|((_, c), v)| (c, v == Outcome::Passed)).collect())
}

/// Rejected candidates per exercise: the SFT model's greedy completion and up to this many
/// mutants of the reference.
const MUTANTS_PER_EXERCISE: usize = 6;

/// `(prompt, chosen, rejected, kind)` for every failing candidate of every exercise.
fn pairs(exercises: &[TestedExercise], own: &[(String, bool)], sandbox: &Sandbox, workers: usize) -> phi::eval::Result<Vec<(String, String, String, String)>> {
    let mut candidates = Vec::new();
    for (i, e) in exercises.iter().enumerate() {
        if !own[i].1 && !own[i].0.trim().is_empty() {
            candidates.push((i, "sft_completion".to_string(), own[i].0.clone()));
        }
        candidates.extend(mutants(&e.response).into_iter().take(MUTANTS_PER_EXERCISE).map(|(k, m)| (i, k.to_string(), m)));
    }
    let programs: Vec<String> = candidates.iter().map(|(i, _, body)| exercises[*i].program(body)).collect();
    let verdicts = run_programs(&programs, sandbox, workers)?;
    Ok(candidates
        .into_iter()
        .zip(verdicts)
        .filter(|(_, v)| *v != Outcome::Passed)
        .map(|((i, kind, body), _)| (exercises[i].prompt.clone(), exercises[i].response.clone(), body, kind))
        .collect())
}

fn write_pairs(path: &Path, pairs: &[(String, String, String, String)]) -> std::io::Result<()> {
    let text: String = pairs
        .iter()
        .map(|(p, c, r, kind)| serde_json::json!({ "prompt": p, "chosen": c, "rejected": r, "rejected_kind": kind }).to_string() + "\n")
        .collect();
    std::fs::write(path, text)
}

fn rate(v: &[(String, bool)]) -> f64 {
    v.iter().filter(|x| x.1).count() as f64 / v.len().max(1) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sft = sft_model()?;
    let sandbox = Sandbox::new(Limits::default()).map_err(|e| format!("the sandbox cannot isolate here ({e}); the example runs model-written code only isolated"))?;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(phi::eval::humaneval::MAX_WORKERS);
    let exercises = tested_exercises(&sandbox, workers)?;
    if exercises.len() < 8 {
        return Err(format!("only {} tested exercises: not enough for a held-out split", exercises.len()).into());
    }
    // Every fourth exercise (by name) is held out: its pairs validate, its pass rate is reported.
    let (held, train): (Vec<_>, Vec<_>) = exercises.into_iter().enumerate().partition(|(i, _)| i % 4 == 3);
    let (held, train): (Vec<TestedExercise>, Vec<TestedExercise>) = (held.into_iter().map(|x| x.1).collect(), train.into_iter().map(|x| x.1).collect());

    let device = burn::tensor::Device::default();
    let model = phi::core::PhiForCausalLM::from_pretrained(&sft, &device)?;
    let tok = phi::data::Tokenizer::from_file(sft.join("tokenizer.json"))?;
    let own_train = greedy(&model, &tok, &train, &sandbox, workers)?;
    let own_held = greedy(&model, &tok, &held, &sandbox, workers)?;
    drop(model);
    let train_pairs = pairs(&train, &own_train, &sandbox, workers)?;
    let held_pairs = pairs(&held, &own_held, &sandbox, workers)?;
    std::fs::create_dir_all(OUT)?;
    let (train_file, held_file) = (Path::new(OUT).join("train_pairs.jsonl"), Path::new(OUT).join("heldout_pairs.jsonl"));
    write_pairs(&train_file, &train_pairs)?;
    write_pairs(&held_file, &held_pairs)?;
    let kinds = |p: &[(String, String, String, String)]| {
        let mut m = std::collections::BTreeMap::<String, usize>::new();
        p.iter().for_each(|x| *m.entry(x.3.clone()).or_default() += 1);
        m
    };
    println!(
        "pairs: {} train from {} exercises, {} held out from {} exercises; rejected kinds {:?}",
        train_pairs.len(),
        train.len(),
        held_pairs.len(),
        held.len(),
        kinds(&train_pairs)
    );

    let lora = phi::train::lora::LoraConfig { r: 8, lora_alpha: 16.0, lora_dropout: 0.0, target_modules: Vec::new(), use_rslora: false };
    let opts = phi::dpo_run::DpoRunOptions {
        tuning: phi::dpo_run::Tuning::Lora(lora),
        val_data: Some(held_file),
        steps: 120,
        lr: 5e-4,
        warmup_steps: 6,
        batch_size: 8,
        checkpoint_every: 40,
        // The pairs are rebuilt on every run: train them afresh.
        fresh: true,
        ..phi::dpo_run::DpoRunOptions::new(&sft, &train_file, Path::new(OUT).join("dpo"))
    };
    let run = phi::dpo_run::prepare(&opts)?;
    for (report, what) in [(Some(&run.report), "train"), (run.val_report.as_ref(), "held-out")] {
        if let Some(r) = report {
            println!("{what} pairs: {} kept, {} skipped (longer than the context), {} truncated", r.pairs, r.skipped.len(), r.truncated);
        }
    }
    println!("DPO (LoRA r=8, sigmoid, beta {}), {} steps of {} pairs; the reference is the SFT model, scored once", run.settings.beta, opts.steps, opts.batch_size);
    let bar = Progress::new(opts.steps as u64, "dpo", Unit::Count("steps"), "{bar:30} {pos}/{len} steps  {msg}");
    // The run's warnings (if any) are printed as they happen, above the bar.
    let done = phi::dpo_run::train(&run, |m| {
        bar.set_position(m.step as u64);
        bar.set_message(format!("loss {:.4} acc {:.2}", m.loss, m.extra.get("rewards/accuracies").copied().unwrap_or(f64::NAN)));
    })?;
    bar.finish();
    let after_held = greedy(&done.outcome.model, &tok, &held, &sandbox, workers)?;
    let (b, a) = (done.before.unwrap_or_default(), done.after.unwrap_or_default());
    let report = serde_json::json!({
        "sft_model": sft,
        "exercises": { "train": train.len(), "held_out": held.len() },
        "pairs": { "train": train_pairs.len(), "held_out": held_pairs.len(), "rejected_kinds": kinds(&train_pairs) },
        "held_out_pairs": { "before": b, "after": a },
        "held_out_greedy_pass_rate": { "before": rate(&own_held), "after": rate(&after_held) },
        "train_greedy_pass_rate_before": rate(&own_train),
        "held_out_greedy": held.iter().zip(own_held.iter().zip(&after_held)).map(|(e, (b, a))| serde_json::json!({
            "name": e.name, "before": b.0, "passed_before": b.1, "after": a.0, "passed_after": a.1,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(Path::new(OUT).join("report.json"), serde_json::to_string_pretty(&report)?)?;
    println!("held-out pairs:      reward accuracy {:.3} → {:.3}, margin {:.3} → {:.3}, loss {:.4} → {:.4}", b.rewards_accuracies, a.rewards_accuracies, b.rewards_margins, a.rewards_margins, b.loss, a.loss);
    println!("                     log-prob of chosen {:.2} → {:.2}, of rejected {:.2} → {:.2}", b.logps_chosen, a.logps_chosen, b.logps_rejected, a.logps_rejected);
    println!("held-out exercises:  greedy pass rate {:.3} → {:.3} ({} exercises)", rate(&own_held), rate(&after_held), held.len());
    println!("report: {}/report.json", OUT);
    Ok(())
}
