//! Pre-training recipes of the Phi papers as data, and the one routine the `train_*` examples
//! share: corpus → tokenizer → token streams → training with a progress bar → sample.
//!
//! Each recipe has the published architecture and hyper-parameters (`--full`, for a GPU) and a
//! scaled-down model of the same family — same block type, norm, MLP and rotary fraction — that
//! trains on a CPU in minutes.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use phi_core::{GenerationConfig, PhiConfig, PhiForCausalLM};
use phi_data::assemble::{DatasetSpec, load_mixture};
use phi_data::corpus::{collect_files, python_stdlib_dir};
use phi_data::prepare::{Input, Manifest, PrepareConfig, TokenizerSource, prepare_or_reuse};
use phi_data::{Mixture, TokenDataset, Tokenizer};
use phi_core::device::Backend;
use phi_data::curriculum::{CurriculumSpec, LoadedCurriculum};
use phi_train::{AdamWSettings, CausalLm, Decay, LossScaler, LrSchedule, Precision, Resume, TrainConfig, Weights, evaluate};

use crate::plot::fit_and_plot;
use crate::progress::{PrepareBars, Progress, Unit};

/// A model family's pre-training recipe.
pub struct Recipe {
    pub name: &'static str,
    /// The published architecture (vocabulary size is taken from the tokenizer).
    pub full_model: PhiConfig,
    pub full: TrainConfig,
    /// The CPU-sized model of the same family.
    pub mini_model: PhiConfig,
    pub mini: TrainConfig,
}

fn mini_of(full: &PhiConfig, hidden: usize, layers: usize, heads: usize) -> PhiConfig {
    let head_dim = hidden / heads;
    PhiConfig {
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: (heads * full.num_key_value_heads / full.num_attention_heads).max(1),
        head_dim,
        intermediate_size: hidden * full.intermediate_size / full.hidden_size,
        max_position_embeddings: 256,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        longrope: None,
        ..full.clone()
    }
}

fn adamw(beta2: f64, eps: f64, weight_decay: f64) -> AdamWSettings {
    AdamWSettings { beta1: 0.9, beta2, eps, weight_decay, no_decay_for_bias_norm_embedding: true }
}

fn mini_train(optimizer: AdamWSettings, peak: f64, decay: Decay) -> TrainConfig {
    TrainConfig {
        batch_size: 16,
        seq_len: 128,
        grad_accum: 1,
        max_steps: 300,
        optimizer,
        schedule: LrSchedule { peak, warmup_steps: 30, total_steps: 300, floor: peak * 0.1, decay },
        eval_every: 50,
        eval_batches: 16,
        checkpoint_every: 100,
        seed: 1234,
        ..TrainConfig::default()
    }
}

/// A GPU-scale run: `batch` sequences per micro-batch × `grad_accum` micro-batches per step.
fn full_train(opt: AdamWSettings, batch_size: usize, seq_len: usize, grad_accum: usize, schedule: LrSchedule) -> TrainConfig {
    TrainConfig {
        batch_size,
        seq_len,
        grad_accum,
        max_steps: schedule.total_steps.max(schedule.warmup_steps).max(1),
        schedule,
        eval_every: 1000,
        eval_batches: 50,
        checkpoint_every: 1000,
        precision: Precision::Bf16,
        ..mini_train(opt, schedule.peak, schedule.decay)
    }
}

impl Recipe {
    /// phi-1 ("Textbooks Are All You Need"): AdamW, lr 1e-3, 750 warmup steps, linear decay,
    /// weight decay 0.1, batch 1024 × 2048 tokens, residual dropout 0.1, 36k steps.
    pub fn phi_1() -> Self {
        let full_model = PhiConfig { resid_pdrop: 0.1, ..PhiConfig::phi_1() };
        let opt = adamw(0.98, 1e-7, 0.1);
        Recipe {
            name: "phi-1",
            mini_model: mini_of(&full_model, 128, 4, 4),
            full: full_train(opt, 8, 2048, 128, LrSchedule { peak: 1e-3, warmup_steps: 750, total_steps: 36_000, floor: 0.0, decay: Decay::Linear }),
            mini: mini_train(opt, 1e-3, Decay::Linear),
            full_model,
        }
    }

    /// phi-1.5: same architecture as phi-1; Adam betas (0.9, 0.98), eps 1e-7, constant lr 2e-4,
    /// weight decay 0.1, batch 2048 × 2048.
    pub fn phi_1_5() -> Self {
        let full_model = PhiConfig::phi_1_5();
        let opt = adamw(0.98, 1e-7, 0.1);
        Recipe {
            name: "phi-1.5",
            mini_model: mini_of(&full_model, 128, 4, 4),
            full: TrainConfig {
                max_steps: 70_000,
                ..full_train(opt, 8, 2048, 256, LrSchedule { peak: 2e-4, warmup_steps: 0, total_steps: 0, floor: 2e-4, decay: Decay::Constant })
            },
            // A constant 2e-4 barely moves a small model in 300 steps: the mini run keeps the
            // schedule's shape (constant) at a CPU-sized rate.
            mini: TrainConfig {
                schedule: LrSchedule { peak: 1e-3, warmup_steps: 30, total_steps: 0, floor: 1e-3, decay: Decay::Constant },
                ..mini_train(opt, 1e-3, Decay::Constant)
            },
            full_model,
        }
    }

    /// phi-2 (2.7B, partial rotary 0.4, residual dropout 0.1); Microsoft published no optimizer
    /// details, so this follows phi-1.5's with cosine decay.
    pub fn phi_2() -> Self {
        let full_model = PhiConfig::phi_2();
        let opt = adamw(0.98, 1e-7, 0.1);
        Recipe {
            name: "phi-2",
            mini_model: mini_of(&full_model, 160, 4, 4),
            full: full_train(opt, 4, 2048, 256, LrSchedule { peak: 2e-4, warmup_steps: 1000, total_steps: 100_000, floor: 2e-5, decay: Decay::Cosine }),
            mini: mini_train(opt, 1e-3, Decay::Cosine),
            full_model,
        }
    }

    /// Phi-3-mini (3.8B: sequential block, RMSNorm, SwiGLU, fused qkv); recipe per the Phi-3
    /// report's scale (4k context), cosine decay.
    pub fn phi_3_mini() -> Self {
        let full_model = PhiConfig::phi_3_mini();
        let opt = adamw(0.95, 1e-8, 0.1);
        Recipe {
            name: "phi-3-mini",
            mini_model: mini_of(&full_model, 128, 4, 4),
            full: full_train(opt, 2, 4096, 512, LrSchedule { peak: 3e-4, warmup_steps: 2000, total_steps: 100_000, floor: 3e-5, decay: Decay::Cosine }),
            mini: mini_train(opt, 1e-3, Decay::Cosine),
            full_model,
        }
    }
}

/// How to run a recipe (the `train_*` examples' and `phi train`'s flags).
#[derive(Debug, Clone)]
pub struct RecipeOptions {
    /// The published model and recipe (needs a GPU backend).
    pub full: bool,
    /// Output folder (checkpoints, metrics.jsonl, data cache); default `runs/<recipe>`.
    pub out: Option<PathBuf>,
    /// Override the number of optimizer steps.
    pub steps: Option<usize>,
    /// Source files to train on (default: the local python3 standard library, else the corpus
    /// shipped in data/corpus).
    pub corpus: Option<PathBuf>,
    /// Datasets prepared by `phi data prepare` instead: `DIR` or `DIR:WEIGHT` for a mixture.
    pub data: Vec<String>,
    /// A staged curriculum over prepared datasets instead (a TOML file of a
    /// [`phi_data::curriculum::CurriculumSpec`], read by [`read_curriculum`]).
    pub curriculum: Option<PathBuf>,
    /// At most this many MB of source text (CPU runs stay short).
    pub max_corpus_mb: f64,
    pub vocab_size: usize,
    /// Start over instead of resuming from the newest checkpoint in `out`.
    pub fresh: bool,
    /// A TOML file whose keys override the recipe's training config.
    pub config: Option<PathBuf>,
    pub device: Backend,
    /// Compute dtype (default: the recipe's).
    pub precision: Option<Precision>,
    /// The device's peak FLOP/s for the MFU figure (default: a GPU's from its name; a CPU
    /// reports no MFU without it).
    pub peak_flops: Option<f64>,
    /// ZeRO stage of a data-parallel run (default: the config's, 0): see `TrainConfig::zero`.
    pub zero: Option<u8>,
}

impl Default for RecipeOptions {
    fn default() -> Self {
        RecipeOptions {
            full: false,
            out: None,
            steps: None,
            corpus: None,
            data: Vec::new(),
            curriculum: None,
            max_corpus_mb: 4.0,
            vocab_size: 2048,
            fresh: false,
            config: None,
            device: Backend::Cpu,
            precision: None,
            peak_flops: None,
            zero: None,
        }
    }
}

impl Recipe {
    /// Where a run writes without `out`: `runs/<name>`.
    pub fn default_out(&self) -> PathBuf {
        PathBuf::from("runs").join(self.name)
    }

    /// Looks a recipe up by model name.
    pub fn by_name(name: &str) -> Option<Self> {
        Some(match name {
            "phi-1" => Self::phi_1(),
            "phi-1.5" | "phi-1_5" => Self::phi_1_5(),
            "phi-2" => Self::phi_2(),
            "phi-3-mini" => Self::phi_3_mini(),
            _ => return None,
        })
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces.
pub fn merge_toml(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_toml(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `base` with the keys of the TOML file at `path` laid over it (nested tables merge).
/// (The keys alone: [`run_config`] also fits the schedule to the run's length.)
pub fn apply_toml_overrides(base: &TrainConfig, path: &std::path::Path) -> Result<TrainConfig, String> {
    merge_overrides(base, read_overrides(path)?, path)
}

/// A run's training config: `base` (a recipe's) with the keys of the `config` TOML file and
/// `steps` (`--steps`) laid over it. `--steps N` and `max_steps = N` in the file mean the same:
/// the run's length. The schedule follows it — `schedule.warmup_steps` and
/// `schedule.total_steps` are scaled by the run's length over the recipe's, so a short run
/// still warms up and decays over its own steps (the recipe's 30 of 300 warmup steps become 1
/// of 10) — except a key the file sets itself, which is kept as written.
pub fn run_config(base: &TrainConfig, config: Option<&std::path::Path>, steps: Option<usize>) -> Result<TrainConfig, String> {
    let (mut cfg, explicit) = match config {
        Some(path) => {
            let over = read_overrides(path)?;
            let set = |key: &str| over.get("schedule").and_then(|t| t.get(key)).is_some();
            let explicit = (set("warmup_steps"), set("total_steps"));
            (merge_overrides(base, over, path)?, explicit)
        }
        None => (base.clone(), (false, false)),
    };
    if let Some(steps) = steps {
        cfg.max_steps = steps;
    }
    if cfg.max_steps != base.max_steps && base.max_steps > 0 {
        let scale = |n: usize| (n as u128 * cfg.max_steps as u128 / base.max_steps as u128) as usize;
        let s = &mut cfg.schedule;
        if !explicit.0 {
            s.warmup_steps = scale(base.schedule.warmup_steps);
        }
        if !explicit.1 && base.schedule.total_steps > 0 {
            s.total_steps = scale(base.schedule.total_steps);
            // A decaying schedule ends after its warmup (validate's rule), however short the run.
            if s.decay != Decay::Constant {
                s.total_steps = s.total_steps.max(s.warmup_steps + 1);
            }
        }
    }
    Ok(cfg)
}

fn read_overrides(path: &std::path::Path) -> Result<toml::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let over: toml::Value = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let schema = crate::overrides::Schema::of::<TrainConfig>()
        .with::<AdamWSettings>("optimizer")
        .with::<LrSchedule>("schedule")
        .with::<LossScaler>("loss_scaler");
    crate::overrides::check_keys(&over, &schema).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(over)
}

fn merge_overrides(base: &TrainConfig, over: toml::Value, path: &std::path::Path) -> Result<TrainConfig, String> {
    let mut value = toml::Value::try_from(base).map_err(|e| e.to_string())?;
    merge_toml(&mut value, over);
    value.try_into().map_err(|e: toml::de::Error| format!("{}: {e}", path.display()))
}

/// The code corpus: `--corpus`, else the local Python standard library (without its tests),
/// else the modules shipped in `data/corpus/python`.
pub fn default_corpus(args: &RecipeOptions) -> (PathBuf, Vec<PathBuf>) {
    let shipped = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/corpus/python"));
    let root = args.corpus.clone().or_else(python_stdlib_dir).unwrap_or(shipped.clone());
    // Codec tables (`encodings/`) are data, not code: low-quality text for a code model.
    let mut files = collect_files(&root, ".py", &["test", "tests", "idlelib", "lib2to3", "encodings"]);
    if files.is_empty() {
        files = collect_files(&shipped, ".py", &[]);
        return (shipped, files);
    }
    // Keep the run CPU-sized: a deterministic, spread-out subset up to the byte budget.
    let budget = (args.max_corpus_mb * 1e6) as u64;
    let total: u64 = files.iter().filter_map(|f| f.metadata().ok()).map(|m| m.len()).sum();
    if total > budget {
        let keep_every = (total as f64 / budget as f64).ceil() as usize;
        files = files.into_iter().enumerate().filter(|(i, _)| i % keep_every == 0).map(|(_, f)| f).collect();
    }
    (root, files)
}

/// The training data: the `--data` datasets (prepared by `phi data prepare`, mixed by weight;
/// validation from the first), else the default corpus prepared through the phi-data pipeline
/// into `out/data` (reused while its inputs and settings are unchanged).
pub fn training_data(args: &RecipeOptions, out: &std::path::Path) -> Result<(Mixture, TokenDataset, Tokenizer), Box<dyn std::error::Error>> {
    if !args.data.is_empty() {
        let specs = args.data.iter().map(|s| s.parse()).collect::<Result<Vec<DatasetSpec>, _>>()?;
        let loaded = load_mixture(&specs)?;
        for (spec, m) in &loaded.manifests {
            println!("data: {} ({} train tokens, weight {})", spec.dir.display(), m.splits.get("train").map_or(0, |s| s.tokens), spec.weight);
        }
        return Ok((loaded.train, loaded.validation, loaded.tokenizer));
    }
    let (root, files) = default_corpus(args);
    println!("corpus: {} files from {}", files.len(), root.display());
    // The Phi recipe's hygiene: quality filters, no duplicates, nothing that overlaps HumanEval.
    let mut config = PrepareConfig::new(vec![Input::List { files }], TokenizerSource::Train { vocab_size: args.vocab_size });
    config.validation_fraction = 0.05;
    let dir = out.join("data");
    // The data of a resumable run is never replaced in place: the checkpoint would go on with
    // other token ids (and the old data would be gone if the new preparation failed).
    if let (false, Some(ckpt), Ok(old)) = (args.fresh, phi_train::checkpoint::latest(&out.join(phi_train::checkpoint::CHECKPOINTS_DIR)), Manifest::read(&dir)) {
        let now = phi_data::prepare::fingerprint(&config)?;
        if old.fingerprint != now {
            return Err(format!(
                "{} holds the data of the run checkpointed in {}, prepared from other inputs or settings \
                 (fingerprint {} then, {now} now: --corpus, --max-corpus-mb, --vocab-size, or the corpus files changed). \
                 Resuming would train on other token ids. Start over with --fresh, or use another --out.",
                dir.display(),
                ckpt.display(),
                old.fingerprint
            )
            .into());
        }
    }
    // In a data-parallel run the other ranks only read what rank 0 prepared (see `crate::world`).
    let (m, reused) = if crate::world::lead() {
        prepare_or_reuse(&config, &dir, Some(&PrepareBars::new()))?
    } else {
        match Manifest::read(&dir) {
            Ok(m) if m.fingerprint == phi_data::prepare::fingerprint(&config)? => (m, true),
            _ => {
                return Err(format!(
                    "{}: this rank does not see the data rank 0 prepared there (--out must be on a file system every rank \
                     sees, and --corpus the same files on every machine)",
                    dir.display()
                )
                .into());
            }
        }
    };
    if reused {
        println!("data: reusing {} (same inputs and settings)", dir.display());
    } else {
        print!("{}", m.report.table());
    }
    Ok((Mixture::single(m.dataset(&dir, "train")?), m.dataset(&dir, "validation")?, m.tokenizer(&dir)?))
}

/// The curriculum in the TOML file at `path` ([`phi_data::curriculum::CurriculumSpec`], dataset
/// paths relative to the file), its datasets opened for a run of `max_steps` steps of
/// `windows_per_step` windows of `seq_len` tokens; every error names the file.
pub fn read_curriculum(path: &std::path::Path, seq_len: usize, windows_per_step: usize, max_steps: usize) -> Result<LoadedCurriculum, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
    let spec: CurriculumSpec = toml::from_str(&text).map_err(|e| at(&e))?;
    if spec.datasets.is_empty() || spec.stages.is_empty() {
        return Err(at(&"needs at least one [[datasets]] and one [[stages]] table"));
    }
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    phi_data::curriculum::load_curriculum(spec, base, seq_len, windows_per_step, max_steps).map_err(|e| at(&e))
}

/// Runs `recipe` end to end; see the module docs. The training's warnings are printed as they
/// happen ([`crate::progress::print_warnings`]).
pub fn run(recipe: Recipe, args: RecipeOptions) -> Result<(), Box<dyn std::error::Error>> {
    crate::progress::print_warnings();
    let device: Device = crate::world::device(args.device)?;
    if args.full && args.device == Backend::Cpu {
        return Err(format!("--full trains the published {} ({:.1}B parameters): use a GPU backend (--features cuda, --device cuda)",
            recipe.name, recipe.full_model.num_parameters() as f64 / 1e9).into());
    }
    let out = args.out.clone().unwrap_or_else(|| recipe.default_out());
    let (mut model_config, mut cfg) = if args.full { (recipe.full_model, recipe.full) } else { (recipe.mini_model, recipe.mini) };
    cfg = run_config(&cfg, args.config.as_deref(), args.steps)?;
    if let Some(p) = args.precision {
        cfg.precision = p;
    }
    if let Some(p) = args.peak_flops {
        cfg.peak_flops = Some(p);
    }
    if let Some(z) = args.zero {
        cfg.zero = z;
    }
    // Before the data is prepared or a model built: a bad setting is an error naming its key.
    cfg.validate(&model_config).map_err(|e| match &args.config {
        Some(path) => format!("{e} (after the overrides in {})", path.display()),
        None => e.to_string(),
    })?;
    // A run that cannot fit in memory is refused before the data is prepared (the vocabulary is
    // then the one asked of the tokenizer) and again once it is known, before any model exists.
    if args.data.is_empty() && args.curriculum.is_none() {
        check_memory(&PhiConfig { vocab_size: args.vocab_size, ..model_config.clone() }, &cfg, &device)?;
    }
    // One run at a time in `out`, from --fresh and the data preparation to the tokenizer
    // written beside the last checkpoint; `fit` takes it again within.
    // Data-parallel: rank 0's (see `crate::world`).
    let lead = crate::world::lead();
    let _lock = if lead { Some(phi_train::run_dir::RunLock::acquire(&out)?) } else { None };
    if args.fresh && lead {
        // Before the data is prepared again: only checkpoints of ours go, and a folder holding
        // anything else stops the run here with nothing changed.
        phi_train::checkpoint::remove_all(&out.join(phi_train::checkpoint::CHECKPOINTS_DIR))?;
    }
    let t = Instant::now();
    let (train_data, val_data, tokenizer) = match &args.curriculum {
        Some(path) => {
            if !args.data.is_empty() {
                return Err("--curriculum names its own datasets: give it or --data, not both".into());
            }
            let loaded = read_curriculum(path, cfg.seq_len, cfg.batch_size * cfg.grad_accum, cfg.max_steps)?;
            for (name, dir, tokens) in &loaded.datasets {
                println!("data: {name} = {} ({tokens} train tokens)", dir.display());
            }
            if loaded.anneal {
                phi_train::anneal_over_last_stage(&mut cfg, &loaded.curriculum);
                cfg.validate(&model_config)?;
            }
            let c = &loaded.curriculum;
            for ((name, (a, b)), plan) in c.stage_names().iter().zip(c.stage_bounds()).zip(c.plan()) {
                let parts: Vec<String> = c.source_names().iter().zip(plan).filter(|(_, n)| **n > 0).map(|(s, n)| format!("{s} {}", n * cfg.seq_len as u64)).collect();
                println!("stage {name}: steps {a}..{b}, tokens: {}", parts.join(", "));
            }
            (TrainData::Curriculum(loaded.curriculum), loaded.validation, loaded.tokenizer)
        }
        None => {
            // Rank 0 prepares (or checks and reuses) the data, the others reuse it.
            let (m, v, t) = crate::world::lead_first(|| training_data(&args, &out))?;
            (TrainData::Mixture(m), v, t)
        }
    };
    println!(
        "tokens: {} train / {} validation, vocab {} ({:.1}s)",
        train_data.tokens(),
        val_data.num_tokens(),
        tokenizer.vocab_size(),
        t.elapsed().as_secs_f64()
    );
    model_config.vocab_size = tokenizer.vocab_size();
    let eos = tokenizer.eos_id().ok_or("the tokenizer has no <|endoftext|> token")?;
    model_config.bos_token_id = Some(eos);
    model_config.eos_token_ids = vec![eos];
    check_memory(&model_config, &cfg, &device)?;
    println!(
        "model: {} family, {:.2}M parameters ({} layers × {}, {} heads, rotary {} of {} dims); {} steps of {} × {} tokens",
        recipe.name,
        model_config.num_parameters() as f64 / 1e6,
        model_config.num_hidden_layers,
        model_config.hidden_size,
        model_config.num_attention_heads,
        model_config.rotary_ndims(),
        model_config.head_dim,
        cfg.max_steps,
        cfg.batch_size * cfg.grad_accum,
        cfg.seq_len
    );
    let resume = if args.fresh { Resume::No } else { Resume::Auto };
    // Rank 0's figure: the other ranks build no model before training.
    let val_before = if lead {
        let initial = PhiForCausalLM::init(model_config.clone(), &device, cfg.seed)?;
        evaluate(&initial, &val_data, cfg.seq_len, cfg.batch_size, cfg.eval_batches)
    } else {
        f64::NAN
    };
    println!("validation loss before training: {val_before:.3}");

    let bar = Progress::new(cfg.max_steps as u64, "train", Unit::Count("steps"), "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]");
    let mut last_val = None;
    // Fault injection for the tests: every step at least this long, so that a test can kill a
    // process of a data-parallel run mid-run (the other ranks wait for rank 0's step).
    let delay = std::env::var("PHI_TEST_STEP_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()).map(std::time::Duration::from_millis);
    let on_step = |m: &phi_train::StepMetrics| {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        bar.set_position(m.step as u64);
        if m.val_loss.is_some() {
            last_val = m.val_loss;
        }
        let val = last_val.map_or(String::new(), |v| format!(" val {v:.3}"));
        let stage = m.stage.as_ref().map_or(String::new(), |s| format!("[{s}] "));
        let mfu = m.mfu.map_or(String::new(), |u| format!(" mfu {:.2}%", 100.0 * u));
        bar.set_message(format!("{stage}loss {:.3}{val} lr {:.1e} {:.0} tok/s{mfu}", m.loss, m.lr, m.tokens_per_s));
    };
    let mut objective = match &train_data {
        TrainData::Mixture(m) => CausalLm::new(m, &val_data, cfg.seq_len, cfg.seed)?,
        TrainData::Curriculum(c) => CausalLm::curriculum(c, &val_data, cfg.seed),
    };
    let outcome = fit_and_plot(&Weights::Scratch(model_config.clone()), &mut objective, &cfg, &out, resume, &device, on_step).map_err(in_tool_words)?;
    bar.finish();
    if !lead {
        return Ok(());
    }
    if let Ok(report) = std::fs::read_to_string(out.join(phi_train::checkpoint::DATA_REPORT_FILE)).map(|t| serde_json::from_str::<serde_json::Value>(&t)) {
        if let (TrainData::Curriculum(_), Ok(r)) = (&train_data, report) {
            println!("tokens per dataset per stage (target = the stage's tokens × the dataset's weight share):");
            for row in r["tokens"].as_array().into_iter().flatten() {
                println!("  {:<12} {:<12} {:>12} (target {:.0})", row["stage"].as_str().unwrap_or(""), row["source"].as_str().unwrap_or(""), row["tokens"], row["target"].as_f64().unwrap_or(0.0));
            }
        }
    }
    if let Some(from) = outcome.resumed_from {
        println!("(resumed from the checkpoint at step {from})");
    }
    let val_after = outcome.metrics.iter().rev().find_map(|m| m.val_loss).unwrap_or(f64::NAN);
    println!("validation loss: {val_before:.3} → {val_after:.3} (perplexity {:.1} → {:.1})", val_before.exp(), val_after.exp());
    let ckpt = phi_train::checkpoint::latest(&out.join(phi_train::checkpoint::CHECKPOINTS_DIR)).expect("the last step writes a checkpoint");
    tokenizer.save(ckpt.join(phi_train::checkpoint::TOKENIZER_FILE))?;
    println!("model: {}  (phi generate --model {0} --prompt ...)", ckpt.display());
    sample(&outcome.model, &tokenizer, eos)?;
    Ok(())
}

/// A training error in the tool's words: a run that cannot resume from its folder's checkpoints
/// says how to start over (`--fresh`, which `phi train`, `phi finetune` and `phi dpo` take).
pub(crate) fn in_tool_words(e: phi_train::TrainError) -> Box<dyn std::error::Error> {
    match e {
        phi_train::TrainError::NotResumable(why) => format!("{why}\nStart over with --fresh or use another output folder.").into(),
        e => e.into(),
    }
}

/// Refuses a full-parameter run of `model` that cannot fit in this machine's memory.
fn check_memory(model: &PhiConfig, cfg: &TrainConfig, device: &Device) -> phi_train::Result<()> {
    let run = phi_train::memory::RunShape { model, trainable: model.num_parameters(), adapters: 0, rows_per_item: 1 };
    phi_train::memory::check_device(run, cfg, device)
}

/// A run's training windows: a weighted mixture or a staged curriculum.
enum TrainData {
    Mixture(Mixture),
    Curriculum(phi_data::curriculum::Curriculum),
}

impl TrainData {
    fn tokens(&self) -> usize {
        match self {
            TrainData::Mixture(m) => m.datasets().map(TokenDataset::num_tokens).sum(),
            TrainData::Curriculum(c) => c.train_tokens(),
        }
    }
}

fn sample(model: &PhiForCausalLM, tokenizer: &phi_data::Tokenizer, eos: u32) -> Result<(), Box<dyn std::error::Error>> {
    let prompt = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";
    let ids = tokenizer.encode(prompt);
    let config = GenerationConfig::sampling(96, 0.7, 0).with_top_k(40).with_stop_tokens([eos]);
    let out = model.generate(&ids, &config)?;
    println!("--- sample (temperature 0.7) ---\n{}{}\n---", prompt, tokenizer.decode(&out[ids.len()..]));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mini_models_keep_the_family_and_full_ones_are_published() {
        for (r, preset) in [
            (Recipe::phi_1(), "phi-1"),
            (Recipe::phi_1_5(), "phi-1.5"),
            (Recipe::phi_2(), "phi-2"),
            (Recipe::phi_3_mini(), "phi-3-mini"),
        ] {
            let (full, mini) = (&r.full_model, &r.mini_model);
            mini.validate().unwrap();
            // The full settings fit the full model: phi-1 trains at seq 2048 on its whole
            // 2048-position context (tests/integration/train_guards.rs runs that case).
            r.full.validate(full).unwrap_or_else(|e| panic!("{preset}: {e}"));
            assert_eq!(full.num_parameters(), PhiConfig::preset(preset).unwrap().num_parameters(), "{preset}");
            assert_eq!((mini.block, mini.norm, mini.mlp, mini.hidden_act), (full.block, full.norm, full.mlp, full.hidden_act));
            assert_eq!(mini.partial_rotary_factor, full.partial_rotary_factor, "{preset}");
            assert_eq!((mini.fused_qkv, mini.linear_bias, mini.tie_word_embeddings), (full.fused_qkv, full.linear_bias, full.tie_word_embeddings));
            // The vocabulary comes from the trained tokenizer (2048 by default).
            let cpu = PhiConfig { vocab_size: 2048, ..mini.clone() };
            assert!(cpu.num_parameters() < 5_000_000, "{preset} mini must train on a CPU in minutes");
            assert!(r.full.schedule.lr(r.full.max_steps / 2) > 0.0);
        }
        let phi1 = Recipe::phi_1();
        assert_eq!((phi1.full.schedule.peak, phi1.full.schedule.warmup_steps, phi1.full.optimizer.weight_decay), (1e-3, 750, 0.1));
        assert_eq!(phi1.full.schedule.decay, Decay::Linear);
        assert_eq!(phi1.full.seq_len * phi1.full.batch_size * phi1.full.grad_accum, 2048 * 1024);
        let phi15 = Recipe::phi_1_5();
        assert_eq!((phi15.full.optimizer.beta2, phi15.full.optimizer.eps, phi15.full.schedule.lr(5000)), (0.98, 1e-7, 2e-4));
    }

    fn overrides(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("over.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn max_steps_in_the_config_and_steps_give_the_same_schedule_fitted_to_the_run() {
        let base = Recipe::phi_1().mini;
        assert_eq!((base.max_steps, base.schedule.warmup_steps, base.schedule.total_steps), (300, 30, 300));
        let (_d, file) = overrides("max_steps = 5\n");
        let by_file = run_config(&base, Some(&file), None).unwrap();
        let by_flag = run_config(&base, None, Some(5)).unwrap();
        assert_eq!(by_file, by_flag);
        // The schedule is the run's: it decays to the floor at its last step, and reaches its
        // peak (the recipe's 30-step warmup would have kept a 5-step run below it throughout).
        let s = &by_flag.schedule;
        assert_eq!((s.warmup_steps, s.total_steps), (0, 5));
        assert_eq!(s.lr(0), s.peak);
        // Longer than the recipe: warmup and decay stretch with it.
        let long = run_config(&base, None, Some(3000)).unwrap().schedule;
        assert_eq!((long.warmup_steps, long.total_steps), (300, 3000));
        // Set in the file, a schedule key is kept as written; the other still follows.
        let (_d, file) = overrides("max_steps = 100\n[schedule]\nwarmup_steps = 7\n");
        let s = run_config(&base, Some(&file), None).unwrap().schedule;
        assert_eq!((s.warmup_steps, s.total_steps), (7, 100));
        let (_d, file) = overrides("[schedule]\ntotal_steps = 250\n");
        let c = run_config(&base, Some(&file), Some(50)).unwrap();
        assert_eq!((c.max_steps, c.schedule.warmup_steps, c.schedule.total_steps), (50, 5, 250));
        // The recipe's own length: nothing moves.
        assert_eq!(run_config(&base, None, Some(300)).unwrap(), base);
        // A constant schedule has no decay to stretch (phi-1.5's total_steps 0 stays 0).
        let constant = Recipe::phi_1_5().mini;
        let s = run_config(&constant, None, Some(60)).unwrap().schedule;
        assert_eq!((s.warmup_steps, s.total_steps), (6, 0));
    }
}
