//! `phi experiment data-quality`: the seed's claim — data quality beats scale — measured here.
//! The same small model, the same token budget and the same seeds, trained on differently
//! prepared data, and evaluated on the same held-out sets that no arm trained on:
//!
//! - **raw**: the corpus as it is (no quality filters, no dedup);
//! - **filtered**: heuristic quality filters + exact and near dedup;
//! - **classified** (with a classifier): filtered, then the learned filter;
//! - **+synth** (with verified synthetic data): the last of the above mixed with it.
//!
//! Before any arm sees the corpus, a share of its files is carved out (by content hash): the
//! held-out set. Every arm is decontaminated against the held-out files and HumanEval — that
//! is evaluation hygiene, not a data-quality measure, so the raw arm gets it too. Evaluation:
//! loss on the held-out files that pass the quality filters ("clean held-out code", the
//! validation curve during training and the final figure), loss on all the held-out files
//! (unfiltered, so the filters' own idea of clean code does not decide alone), and greedy
//! pass@1 on HumanEval and on functions whose docstring examples their reference passes, from
//! files no arm trains on, in the sandbox. All arms share one tokenizer (trained on the raw training files), so losses compare.

use std::path::{Path, PathBuf};

use phi_data::prepare::{DocumentScorer, Input, PrepareConfig, ScoreFilter, TokenizerSource, prepare_with_or_reuse};
use phi_data::{Manifest, Mixture, Tokenizer};
use phi_eval::humaneval::{Outcome, generate_completions, program, run_programs};
use phi_eval::tested_exercises::{TestedExercise, extract};
use phi_sandbox::Sandbox;
use phi_train::{CausalLm, Resume, TrainConfig, Weights};
use serde::{Deserialize, Serialize};

use crate::plot::fit_and_plot;
use crate::recipes::Recipe;

/// What to run.
#[derive(Debug, Clone)]
pub struct ExperimentOptions {
    /// The raw corpus: a folder of `.py` files (default: the local Python installation's
    /// standard library with its site-packages).
    pub corpus: PathBuf,
    pub out: PathBuf,
    pub seeds: Vec<u64>,
    /// Optimizer steps of every run (the same token budget for every arm).
    pub steps: usize,
    /// At most this many MB of the corpus (a deterministic, spread-out subset of the files).
    pub max_corpus_mb: f64,
    /// Share of the files held out, by content hash.
    pub held_out_fraction: f64,
    pub vocab_size: usize,
    /// The classifier arm: its stage settings (the scorer is passed to [`run`]).
    pub classifier: Option<ScoreFilter>,
    /// The synthetic arm: a JSONL of verified synthetic data (`phi data synth`'s kept.jsonl).
    pub synthetic: Option<PathBuf>,
    /// Its share of the windows in that arm.
    pub synthetic_weight: f64,
    /// HumanEval problems evaluated (the first N).
    pub humaneval: usize,
    /// At most this many held-out exercises (functions with docstring examples from files no
    /// arm trains on: the held-out files, and the corpus files outside the budget's subset).
    pub exercises: usize,
    pub device: phi_core::device::Backend,
}

impl ExperimentOptions {
    pub fn new(corpus: PathBuf, out: PathBuf) -> Self {
        ExperimentOptions {
            corpus,
            out,
            seeds: vec![0, 1, 2],
            steps: 200,
            max_corpus_mb: 6.0,
            held_out_fraction: 0.05,
            vocab_size: 2048,
            classifier: None,
            synthetic: None,
            synthetic_weight: 0.2,
            humaneval: 164,
            exercises: 64,
            device: phi_core::device::Backend::Cpu,
        }
    }
}

/// One trained model's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Mean loss per token on the clean held-out code (all of it).
    pub held_out_loss: f64,
    /// The same on every held-out file, unfiltered.
    pub held_out_loss_all: f64,
    /// `None` when there was nothing to evaluate.
    pub humaneval_pass_at_1: Option<f64>,
    pub exercises_pass_at_1: Option<f64>,
    /// (step, held-out loss) during training.
    pub curve: Vec<(usize, f64)>,
}

/// One arm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmResult {
    pub name: String,
    pub data: String,
    pub train_documents: u64,
    pub train_tokens: u64,
    pub seeds: Vec<SeedResult>,
}

impl ArmResult {
    /// (mean, min, max) of a figure over the seeds.
    pub fn spread(&self, f: impl Fn(&SeedResult) -> f64) -> (f64, f64, f64) {
        let v: Vec<f64> = self.seeds.iter().map(f).collect();
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        (mean, v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
    }
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExperimentResults {
    pub corpus: PathBuf,
    pub corpus_files: usize,
    pub held_out_files: usize,
    pub held_out_tokens: u64,
    pub held_out_exercises: usize,
    pub humaneval_problems: usize,
    pub steps: usize,
    pub tokens_per_run: u64,
    pub model_parameters: u64,
    pub arms: Vec<ArmResult>,
}

impl ExperimentResults {
    /// The table printed at the end.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} files ({} held out: {} tokens of clean code, {} exercises; HumanEval {}); {} steps = {} tokens per run, {:.2}M parameters\n",
            self.corpus_files, self.held_out_files, self.held_out_tokens, self.held_out_exercises, self.humaneval_problems, self.steps, self.tokens_per_run, self.model_parameters as f64 / 1e6
        );
        s += "arm          train docs  train tokens  held-out loss, clean (mean [min, max])  all held-out  HumanEval pass@1  exercises pass@1\n";
        let rate = |a: &ArmResult, f: &dyn Fn(&SeedResult) -> Option<f64>| {
            if a.seeds.iter().any(|r| f(r).is_none()) { "n/a".to_string() } else { format!("{:.3}", a.spread(|r| f(r).unwrap_or(0.0)).0) }
        };
        for a in &self.arms {
            let (m, lo, hi) = a.spread(|r| r.held_out_loss);
            let (all, _, _) = a.spread(|r| r.held_out_loss_all);
            let (h, e) = (rate(a, &|r| r.humaneval_pass_at_1), rate(a, &|r| r.exercises_pass_at_1));
            s += &format!("{:<12} {:>10}  {:>12}  {m:>8.4} [{lo:.4}, {hi:.4}]                 {all:>12.4}  {h:>16}  {e:>16}\n", a.name, a.train_documents, a.train_tokens);
        }
        s
    }
}

fn held_out(text: &str, fraction: f64) -> bool {
    ((xxhash_rust::xxh3::xxh3_64(text.as_bytes()) >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// Runs every arm for every seed (a rerun reuses prepared data and finished runs) and writes
/// `results.json` and `results.png`; `say` gets progress lines. The training runs' warnings are
/// printed as they happen ([`crate::progress::print_warnings`]).
pub fn run(o: &ExperimentOptions, scorer: Option<&dyn DocumentScorer>, sandbox: &Sandbox, mut say: impl FnMut(&str)) -> Result<ExperimentResults, String> {
    crate::progress::print_warnings();
    if o.seeds.is_empty() || o.steps == 0 {
        return Err("at least one seed and one step".into());
    }
    if (1..o.seeds.len()).any(|i| o.seeds[..i].contains(&o.seeds[i])) {
        return Err(format!("seeds {:?}: a seed given twice would count one run twice", o.seeds));
    }
    if o.synthetic.is_some() && !(o.synthetic_weight > 0.0 && o.synthetic_weight < 1.0) {
        return Err(format!("synthetic_weight = {}: the synthetic data's share must be in (0, 1)", o.synthetic_weight));
    }
    if o.classifier.as_ref().is_some_and(|c| c.classifier.is_some()) != scorer.is_some() {
        return Err("the classifier arm needs both its settings and its scorer".into());
    }
    // Our folder, or a new one.
    let marker = o.out.join("experiment.json");
    if o.out.exists() && !marker.is_file() {
        return Err(format!("{} exists and is not a data-quality experiment of ours (no experiment.json): use another --out", o.out.display()));
    }
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;

    // The corpus, a spread-out subset within the budget, split by content hash.
    let files = phi_data::corpus::collect_files_with_site_packages(&o.corpus, ".py", &["test", "tests"]);
    let budget = (o.max_corpus_mb * 1e6) as u64;
    let total: u64 = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    let every = (total as f64 / budget.max(1) as f64).ceil().max(1.0) as usize;
    let (files, outside): (Vec<(usize, PathBuf)>, Vec<(usize, PathBuf)>) = files.into_iter().enumerate().partition(|(i, _)| i % every == 0);
    let files: Vec<PathBuf> = files.into_iter().map(|(_, f)| f).collect();
    let outside: Vec<PathBuf> = outside.into_iter().map(|(_, f)| f).collect();
    let (mut train_files, mut held) = (Vec::new(), Vec::new());
    for f in &files {
        let Ok(text) = std::fs::read_to_string(f) else { continue };
        if held_out(&text, o.held_out_fraction) { held.push(f.clone()) } else { train_files.push(f.clone()) }
    }
    if train_files.is_empty() || held.is_empty() {
        return Err(format!("{}: {} files give {} training and {} held-out files: need both", o.corpus.display(), files.len(), train_files.len(), held.len()));
    }
    say(&format!("corpus: {} files from {} ({} held out)", files.len(), o.corpus.display(), held.len()));
    // What the folder's tokenizer, data and runs were made with: a rerun with other settings
    // would mix them (a tokenizer trained on files now held out, runs of another length).
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    train_files.iter().chain(&held).for_each(|f| h.update(f.as_os_str().as_encoded_bytes()));
    let settings = serde_json::json!({
        "corpus": o.corpus, "max_corpus_mb": o.max_corpus_mb, "held_out_fraction": o.held_out_fraction,
        "vocab_size": o.vocab_size, "steps": o.steps, "files_xxh3": format!("{:016x}", h.digest()),
    });
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let old: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", marker.display()))?;
        if let Some(old) = old.get("settings").and_then(|s| s.as_object()) {
            let differ: Vec<String> = old.iter().filter(|(k, v)| settings.get(k.as_str()) != Some(v)).map(|(k, v)| format!("{k} (was {v}, now {})", settings[k.as_str()])).collect();
            if !differ.is_empty() {
                return Err(format!("{} holds an experiment with other settings: {}; use another --out", o.out.display(), differ.join(", ")));
            }
        }
    }
    let marker_json = serde_json::json!({"format": "phi-data-quality-experiment", "version": 1, "settings": settings});
    phi_core::weights::write_atomic(&marker, marker_json.to_string().as_bytes()).map_err(|e| e.to_string())?;

    // One tokenizer for every arm, from the raw training files.
    let tok_path = o.out.join("tokenizer.json");
    if !tok_path.is_file() {
        let texts: Vec<String> = train_files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
        Tokenizer::train_bpe(texts.into_iter(), o.vocab_size).map_err(|e| e.to_string())?.save(&tok_path).map_err(|e| e.to_string())?;
    }
    let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| e.to_string())?;

    // Held-out sets: clean code (what passes the quality filters) and tested exercises.
    let mut clean = PrepareConfig::new(vec![Input::List { files: held.clone() }], TokenizerSource::File(tok_path.clone()));
    clean.validation_fraction = 0.0;
    clean.decontaminate_humaneval = false;
    let (m, _) = phi_data::prepare::prepare_or_reuse(&clean, &o.out.join("held-out"), None).map_err(|e| format!("the held-out set ({} files): {e}", held.len()))?;
    let held_tokens = m.dataset(&o.out.join("held-out"), "train").map_err(|e| e.to_string())?;
    let mut all = clean.clone();
    all.filters = None;
    all.exact_dedup = false;
    all.near_dedup = None;
    let (m, _) = phi_data::prepare::prepare_or_reuse(&all, &o.out.join("held-out-all"), None).map_err(|e| format!("the held-out set ({} files): {e}", held.len()))?;
    let held_all = m.dataset(&o.out.join("held-out-all"), "train").map_err(|e| e.to_string())?;
    // Exercises: functions whose docstring examples their reference passes (and a body that does
    // nothing fails), from files no arm trains on; their files join the decontamination set.
    let mut candidates: Vec<(PathBuf, TestedExercise)> = Vec::new();
    for f in held.iter().chain(&outside) {
        let Ok(src) = std::fs::read_to_string(f) else { continue };
        if src.contains(">>> ") {
            candidates.extend(extract(&src, 20).into_iter().map(|e| (f.clone(), e)));
        }
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(phi_eval::humaneval::MAX_WORKERS);
    let programs: Vec<String> = candidates.iter().flat_map(|(_, e)| [e.program(&e.response), e.program("    pass\n")]).collect();
    let verdicts = run_programs(&programs, sandbox, workers).map_err(|e| e.to_string())?;
    let mut exercises: Vec<TestedExercise> = Vec::new();
    let mut exercise_files: Vec<PathBuf> = Vec::new();
    for ((f, e), v) in candidates.into_iter().zip(verdicts.chunks(2)) {
        if v[0] == Outcome::Passed && v[1] != Outcome::Passed && exercises.len() < o.exercises {
            exercises.push(e);
            if !held.contains(&f) && !exercise_files.contains(&f) {
                exercise_files.push(f);
            }
        }
    }
    let mut humaneval = phi_eval::humaneval::load_problems().map_err(|e| e.to_string())?;
    humaneval.truncate(o.humaneval);
    say(&format!("held out: {} tokens of clean code, {} tested exercises; HumanEval: {} problems", held_tokens.num_tokens(), exercises.len(), humaneval.len()));

    // The arms' data.
    let base = |filtered: bool| {
        let mut c = PrepareConfig::new(vec![Input::List { files: train_files.clone() }], TokenizerSource::File(tok_path.clone()));
        if !filtered {
            c.filters = None;
            c.exact_dedup = false;
            c.near_dedup = None;
        }
        c.decontaminate_humaneval = true;
        c.eval_sets = held.iter().chain(&exercise_files).cloned().collect();
        c.validation_fraction = 0.0;
        c
    };
    let mut arms: Vec<(String, String, PrepareConfig, Option<&dyn DocumentScorer>)> = vec![
        ("raw".into(), "no quality filters, no dedup".into(), base(false), None),
        ("filtered".into(), "quality filters + exact and near dedup".into(), base(true), None),
    ];
    if let (Some(f), Some(s)) = (&o.classifier, scorer) {
        let mut c = base(true);
        c.classifier = Some(f.clone());
        arms.push(("classified".into(), format!("filtered + the classifier stage ({})", s.describe()), c, Some(s)));
    }
    let mut prepared = Vec::new();
    for (name, what, config, s) in &arms {
        let dir = o.out.join(format!("data-{name}"));
        let (m, reused) = prepare_with_or_reuse(config, *s, &dir, None).map_err(|e| format!("arm {name}: {e}"))?;
        say(&format!("arm {name}: {} documents, {} tokens{}", m.splits["train"].documents, m.splits["train"].tokens, if reused { " (reused)" } else { "" }));
        prepared.push((name.clone(), what.clone(), m.splits["train"].documents, m.splits["train"].tokens, vec![(dir, 1.0)]));
    }
    if let Some(path) = &o.synthetic {
        let mut c = PrepareConfig::new(vec![Input::Jsonl { path: path.clone(), field: "text".into(), kind: phi_data::filters::DocKind::Python }], TokenizerSource::File(tok_path.clone()));
        c.filters = None;
        c.eval_sets = held.iter().chain(&exercise_files).cloned().collect();
        c.validation_fraction = 0.0;
        let dir = o.out.join("data-synthetic");
        let (m, _) = phi_data::prepare::prepare_or_reuse(&c, &dir, None).map_err(|e| format!("synthetic data: {e}"))?;
        let (name, _, docs, tokens, parts) = prepared.last().cloned().expect("an arm");
        let mut parts = parts.into_iter().map(|(d, _)| (d, 1.0 - o.synthetic_weight)).collect::<Vec<_>>();
        parts.push((dir, o.synthetic_weight));
        prepared.push((format!("{name}+synth"), format!("{name} ({:.0}%) + verified synthetic data ({:.0}%)", 100.0 * (1.0 - o.synthetic_weight), 100.0 * o.synthetic_weight), docs + m.splits["train"].documents, tokens + m.splits["train"].tokens, parts));
    }

    // The same model and budget for every arm and seed.
    let recipe = Recipe::phi_1();
    let mut model = recipe.mini_model.clone();
    model.vocab_size = tokenizer.vocab_size();
    let eos = tokenizer.eos_id().ok_or("the tokenizer has no <|endoftext|>")?;
    model.bos_token_id = Some(eos);
    model.eos_token_ids = vec![eos];
    let windows = held_tokens.num_windows(recipe.mini.seq_len);
    if windows == 0 {
        return Err(format!("the clean held-out code is {} tokens, less than one window of {}: hold out more (held_out_fraction)", held_tokens.num_tokens(), recipe.mini.seq_len + 1));
    }
    let cfg = TrainConfig {
        max_steps: o.steps,
        // Validation scores every held-out window, not the recipe's sample of them.
        eval_batches: windows.div_ceil(recipe.mini.batch_size),
        eval_every: (o.steps / 8).max(1),
        checkpoint_every: 0,
        keep_checkpoints: 1,
        schedule: phi_train::LrSchedule { total_steps: o.steps, warmup_steps: (o.steps / 10).min(recipe.mini.schedule.warmup_steps), ..recipe.mini.schedule },
        ..recipe.mini.clone()
    };
    let device = o.device.device()?;
    let mut results = ExperimentResults {
        corpus: o.corpus.clone(),
        corpus_files: files.len(),
        held_out_files: held.len(),
        held_out_tokens: held_tokens.num_tokens() as u64,
        held_out_exercises: exercises.len(),
        humaneval_problems: humaneval.len(),
        steps: o.steps,
        tokens_per_run: (o.steps * cfg.batch_size * cfg.grad_accum * cfg.seq_len) as u64,
        model_parameters: model.num_parameters(),
        arms: Vec::new(),
    };
    let ex_problems: Vec<_> = exercises.iter().map(|e| e.problem()).collect();
    for (name, what, docs, tokens, parts) in prepared {
        let datasets = parts
            .iter()
            .map(|(dir, w)| Manifest::read(dir).and_then(|m| m.dataset(dir, "train")).map(|d| (d, *w)).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mixture = Mixture::new(datasets).map_err(|e| e.to_string())?;
        let mut arm = ArmResult { name: name.clone(), data: what, train_documents: docs, train_tokens: tokens, seeds: Vec::new() };
        for &seed in &o.seeds {
            let run_dir = o.out.join(format!("run-{name}-seed{seed}"));
            let cfg = TrainConfig { seed, ..cfg.clone() };
            // `phi experiment` has no --fresh: an arm's folder that cannot be resumed is removed by hand.
            let arm_err = |e: phi_train::TrainError| match e {
                phi_train::TrainError::NotResumable(why) => format!("arm {name}, seed {seed}: {why}\nRemove {} or use another --out.", run_dir.display()),
                e => format!("arm {name}, seed {seed}: {e}"),
            };
            let mut objective = CausalLm::new(&mixture, &held_tokens, cfg.seq_len, cfg.seed).map_err(arm_err)?;
            let out = fit_and_plot(&Weights::Scratch(model.clone()), &mut objective, &cfg, &run_dir, Resume::Auto, &device, |_| {}).map_err(arm_err)?;
            let curve: Vec<(usize, f64)> = out.metrics.iter().filter_map(|m| m.val_loss.map(|v| (m.step, v))).collect();
            let held_out_loss = curve.last().map_or(f64::NAN, |c| c.1);
            let held_out_loss_all = phi_train::evaluate(&out.model, &held_all, cfg.seq_len, cfg.batch_size, usize::MAX);
            let pass = |problems: &[phi_eval::humaneval::Problem], prog: &dyn Fn(usize, &str) -> String| -> Result<Option<f64>, String> {
                if problems.is_empty() {
                    return Ok(None);
                }
                let completions = generate_completions(&out.model, &tokenizer, problems, 1, 0.0, 128, |_| {}).map_err(|e| e.to_string())?;
                let programs: Vec<String> = completions.iter().enumerate().map(|(i, (_, c))| prog(i, c)).collect();
                let verdicts = run_programs(&programs, sandbox, workers).map_err(|e| e.to_string())?;
                Ok(Some(verdicts.iter().filter(|v| **v == Outcome::Passed).count() as f64 / problems.len() as f64))
            };
            let humaneval_pass_at_1 = pass(&humaneval, &|i, c| program(&humaneval[i], c))?;
            let exercises_pass_at_1 = pass(&ex_problems, &|i, c| exercises[i].program(c))?;
            let show = |p: Option<f64>| p.map_or("n/a".to_string(), |p| format!("{p:.3}"));
            say(&format!(
                "arm {name}, seed {seed}: held-out loss {held_out_loss:.4} (all held-out files {held_out_loss_all:.4}), HumanEval pass@1 {}, exercises pass@1 {}",
                show(humaneval_pass_at_1),
                show(exercises_pass_at_1)
            ));
            arm.seeds.push(SeedResult { seed, held_out_loss, held_out_loss_all, humaneval_pass_at_1, exercises_pass_at_1, curve });
        }
        results.arms.push(arm);
    }
    let json = serde_json::to_string_pretty(&results).expect("serializes");
    let path = o.out.join("results.json");
    phi_core::weights::write_atomic(&path, json.as_bytes()).map_err(|e| e.to_string())?;
    let bars: Vec<(String, f64, f64, f64)> = results.arms.iter().map(|a| {
        let (m, lo, hi) = a.spread(|r| r.held_out_loss);
        (a.name.clone(), m, lo, hi)
    }).collect();
    let curves: Vec<(String, Vec<(usize, f64)>)> = results.arms.iter().map(|a| {
        // The mean curve over the seeds (every seed validates at the same steps).
        let n = a.seeds.len() as f64;
        let steps: Vec<usize> = a.seeds[0].curve.iter().map(|c| c.0).collect();
        (a.name.clone(), steps.iter().enumerate().map(|(i, &s)| (s, a.seeds.iter().map(|r| r.curve.get(i).map_or(f64::NAN, |c| c.1)).sum::<f64>() / n)).collect())
    }).collect();
    if let Err(e) = crate::plot::write_experiment_plot(&bars, &curves, &o.out.join("results.png")) {
        say(&format!("warning: results.png not written: {e}"));
    }
    Ok(results)
}

/// The default raw corpus: the local Python installation (standard library + site-packages).
pub fn default_corpus() -> Option<PathBuf> {
    phi_data::corpus::python_stdlib_dir()
}

/// Whether `path` is an experiment folder of ours.
pub fn is_experiment(path: &Path) -> bool {
    path.join("experiment.json").is_file()
}
