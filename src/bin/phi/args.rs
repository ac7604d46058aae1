//! The command-line flags of `phi train`/`finetune`/`dpo`/`bench`/`experiment`, parsed with
//! clap and turned into the command layer's option structs (`phi::recipes::RecipeOptions`, …):
//! neither the layer nor the libraries know anything of clap.

use std::path::PathBuf;

use phi::core::chat::TemplateChoice;
use phi::device::Backend;
use phi::train::Precision;
use phi::train::lora::BaseQuantization;

pub fn parse_precision(s: &str) -> Result<Precision, String> {
    serde_json::from_value(serde_json::Value::String(s.to_lowercase())).map_err(|_| format!("`{s}`: expected f32, bf16 or f16"))
}


/// A folder argument that may be a hub id (`org/name[@revision]`), resolved through the hub
/// cache (and downloaded into it where the network is allowed): `phi_core::hub`. A path that is
/// not UTF-8 is taken as it is.
#[derive(Clone, Copy)]
pub struct HubDir(phi::core::hub::Kind);

impl clap::builder::TypedValueParser for HubDir {
    type Value = PathBuf;
    fn parse_ref(&self, _cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<PathBuf, clap::Error> {
        phi::core::hub::resolve(value, self.0).map_err(|e| {
            let flag = arg.and_then(|a| a.get_long()).map_or(String::new(), |l| format!("--{l} "));
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{flag}{e}\n"))
        })
    }
}

/// A model folder or hub id.
pub fn model_dir() -> HubDir {
    HubDir(phi::core::hub::Kind::Model)
}

/// A PEFT adapter folder or hub id.
pub fn adapter_dir() -> HubDir {
    HubDir(phi::core::hub::Kind::Adapter)
}

/// A model folder or hub id of which only the config, tokenizer files and chat template are
/// read (no weights are downloaded for it).
pub fn config_dir() -> HubDir {
    HubDir(phi::core::hub::Kind::Config)
}

fn parse_quantize(s: &str) -> Result<BaseQuantization, String> {
    match s {
        "int8" => Ok(BaseQuantization::Int8),
        "int4" => Ok(BaseQuantization::Int4),
        _ => Err(format!("`{s}`: expected int8 or int4")),
    }
}

/// `--dtype` / `--quantize` of the inference commands (generate, chat, serve, eval perplexity):
/// how the CPU holds the frozen weights (`phi_core::quant`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct WeightArgs {
    /// Weight storage: f32 (default; on the CPU repacked in the order the decode kernels read
    /// it: the same values, and the same logits up to 64 positions at a time) or bf16 (read directly by the CPU kernels; activations
    /// stay f32).
    #[arg(long, value_parser = parse_weight_dtype)]
    pub dtype: Option<WeightDtype>,
    /// Quantize the weights: int8 or int4 (burn's symmetric scheme, blocks of 32). The products
    /// (decoding and prompts alike) quantize the activations to int8 in blocks of 32 too and
    /// multiply as integers (llama.cpp's Q8_0 scheme).
    #[arg(long = "quantize", conflicts_with = "dtype", value_parser = parse_weight_quantize)]
    pub quantize: Option<phi::core::WeightFormat>,
}

/// `--dtype`: f32 keeps the weights' values (on the CPU in strips: `decoding_format`).
#[derive(Debug, Clone, Copy)]
pub struct WeightDtype(Option<phi::core::WeightFormat>);

fn parse_weight_dtype(s: &str) -> Result<WeightDtype, String> {
    match s.to_ascii_lowercase().as_str() {
        "f32" => Ok(WeightDtype(None)),
        "bf16" => Ok(WeightDtype(Some(phi::core::WeightFormat::Bf16))),
        _ => Err(format!("`{s}`: expected f32 or bf16")),
    }
}

fn parse_weight_quantize(s: &str) -> Result<phi::core::WeightFormat, String> {
    match s.parse()? {
        phi::core::WeightFormat::Bf16 | phi::core::WeightFormat::F32 => Err(format!("`{s}`: expected int8 or int4 (f32 and bf16 are --dtype)")),
        f => Ok(f),
    }
}

impl WeightArgs {
    /// The packed format asked for, if any.
    pub fn format(self) -> Option<phi::core::WeightFormat> {
        self.quantize.or(self.dtype.and_then(|d| d.0))
    }
}

/// Flags of `phi train` ([`phi::recipes::RecipeOptions`]).
#[derive(clap::Parser, Debug)]
pub struct RecipeArgs {
    /// The published model and recipe (needs a GPU backend: `--features cuda --device cuda`).
    #[arg(long)]
    pub full: bool,
    /// Output folder (checkpoints, metrics.jsonl, data cache). Default: runs/<recipe>.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The number of optimizer steps (the same as `max_steps` in --config). The LR schedule
    /// follows the run's length: the recipe's warmup and decay steps are scaled by steps over
    /// the recipe's, unless --config sets `schedule.warmup_steps`/`schedule.total_steps`.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Source files to train on (default: the local python3 standard library, else the corpus
    /// shipped in data/corpus).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Train on datasets prepared by `phi data prepare` instead: `DIR` or `DIR:WEIGHT`,
    /// repeatable for a mixture (e.g. `--data textbooks:0.8 --data code:0.2`).
    #[arg(long)]
    pub data: Vec<String>,
    /// A staged curriculum over prepared datasets instead: a TOML file with [[datasets]]
    /// (name, path, max_epochs) and [[stages]] (name, until_tokens or until_step, weights),
    /// `validation` and `anneal` (see the README).
    #[arg(long, conflicts_with_all = ["data", "corpus"])]
    pub curriculum: Option<PathBuf>,
    /// At most this many MB of source text (CPU runs stay short).
    #[arg(long, default_value_t = phi::recipes::RecipeOptions::default().max_corpus_mb)]
    pub max_corpus_mb: f64,
    #[arg(long, default_value_t = phi::recipes::RecipeOptions::default().vocab_size)]
    pub vocab_size: usize,
    /// Start over instead of resuming from the newest checkpoint in --out.
    #[arg(long)]
    pub fresh: bool,
    /// A TOML file whose keys override the recipe's training config (`max_steps = 500`,
    /// `[schedule]` `peak = 3e-4`, `[optimizer]` `weight_decay = 0.0`, …). `max_steps` here
    /// and --steps mean the same, schedule scaling included; --steps wins if both are given.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// cpu, ndarray, cuda or wgpu (the last three need their cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: Backend,
    /// Compute dtype: f32 (CPU default), bf16 (`--full` default) or f16 (with loss scaling);
    /// master weights and AdamW state stay f32.
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<Precision>,
    /// The device's peak FLOP/s, for the MFU figure (default: a known GPU's from its name;
    /// without it a CPU run reports no MFU).
    #[arg(long)]
    pub peak_flops: Option<f64>,
    /// ZeRO stage under a launcher: 0 (each process keeps the whole AdamW state) or 1 (each of N
    /// processes keeps and updates its 1/N; the same training and checkpoints).
    #[arg(long, value_parser = parse_zero)]
    pub zero: Option<u8>,
}

/// `--zero`: a ZeRO stage this tool has.
pub fn parse_zero(s: &str) -> Result<u8, String> {
    match s.trim() {
        "0" => Ok(0),
        "1" => Ok(1),
        _ => Err(format!("`{s}`: expected 0 (no sharding) or 1 (AdamW state sharded across the processes, ZeRO-1)")),
    }
}

impl RecipeArgs {
    pub fn options(self) -> phi::recipes::RecipeOptions {
        phi::recipes::RecipeOptions {
            full: self.full,
            out: self.out,
            steps: self.steps,
            corpus: self.corpus,
            data: self.data,
            curriculum: self.curriculum,
            max_corpus_mb: self.max_corpus_mb,
            vocab_size: self.vocab_size,
            fresh: self.fresh,
            config: self.config,
            device: self.device,
            precision: self.precision,
            peak_flops: self.peak_flops,
            zero: self.zero,
        }
    }
}

/// Flags of `phi finetune` ([`phi::finetune::FinetuneOptions`]).
#[derive(clap::Parser, Debug)]
pub struct FinetuneArgs {
    /// Base checkpoint (HF folder with tokenizer.json). Default: the newest `train_phi1`
    /// checkpoint in runs/phi-1, trained first (briefly) if there is none.
    #[arg(long, value_parser = crate::args::model_dir())]
    pub base: Option<PathBuf>,
    #[arg(long, default_value = "runs/finetune_lora")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (the effective batch is batch-size × this).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Global gradient-norm clip (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Compute precision (bf16/f16 keep f32 master weights; half precision is for GPUs).
    #[arg(long, value_parser = parse_precision, default_value = "f32")]
    pub precision: Precision,
    /// Save a checkpoint (the adapter and optimizer state) every this many steps (0: at the end).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Start over: remove this run's checkpoints (only ours) instead of resuming from them.
    #[arg(long)]
    pub fresh: bool,
    /// PEFT target module names (default: the base model family's: q_proj,k_proj,v_proj,dense,
    /// fc1,fc2 for Phi-1/1.5/2; qkv_proj,o_proj,gate_up_proj,down_proj for Phi-3/3.5/4-mini).
    #[arg(long, value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    /// SFT data instead of the built-in exercises: JSONL with `{"messages": [...]}` or
    /// `{"prompt", "response"}` records, or Parquet (`.parquet`, the hub's layout: a `messages`
    /// column or `prompt`/`response` columns); a tenth is held out for validation.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Chat template for `--data`: model (the base's own `chat_template`, else phi3 for Phi-3
    /// models and plain otherwise), phi3, plain, or a Jinja file.
    #[arg(long, default_value = "model")]
    pub template: TemplateChoice,
    /// QLoRA-style: quantize the frozen base projections (int8 or int4, blocks of 32).
    #[arg(long, value_parser = parse_quantize)]
    pub quantize: Option<BaseQuantization>,
    #[arg(long, default_value = "cpu")]
    pub device: Backend,
    /// ZeRO stage under a launcher: 0 (each process keeps the whole AdamW state) or 1 (each of N
    /// processes keeps and updates its 1/N; the same training and checkpoints).
    #[arg(long, value_parser = parse_zero, default_value = "0")]
    pub zero: u8,
    /// Pack examples into full rows of --max-len tokens (best-fit decreasing, as TRL's `bfd`;
    /// positions restart and attention stays inside each example) instead of padding every
    /// batch to its longest example. --batch-size then counts rows.
    #[arg(long)]
    pub packing: bool,
    /// Cut examples to this many tokens; with --packing, the length of a packed row (default:
    /// the model's context, at most 2048 with --packing).
    #[arg(long)]
    pub max_len: Option<usize>,
}

impl FinetuneArgs {
    pub fn options(self) -> phi::finetune::FinetuneOptions {
        phi::finetune::FinetuneOptions {
            base: self.base,
            out: self.out,
            steps: self.steps,
            rank: self.rank,
            alpha: self.alpha,
            lr: self.lr,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            clip: self.clip,
            precision: self.precision,
            checkpoint_every: self.checkpoint_every,
            fresh: self.fresh,
            targets: self.targets,
            data: self.data,
            template: self.template,
            quantize: self.quantize,
            device: self.device,
            zero: self.zero,
            packing: self.packing,
            max_len: self.max_len,
            ..Default::default()
        }
    }
}

/// Flags of `phi bench` ([`phi::bench::BenchOptions`]).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// forward, generate, train, lora, sft, sft-packing (padded against packed SFT on
    /// length-skewed data), dpo, dpo-live (DPO step with the reference run on every batch),
    /// preference (sft + dpo + dpo-live), serve (`phi serve` over HTTP at --clients concurrent
    /// clients) or all.
    pub workload: phi::bench::Workload,
    /// phi, phi3 or both.
    #[arg(long, default_value = "both")]
    pub arch: phi::bench::Arch,
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 8)]
    pub heads: usize,
    #[arg(long, default_value_t = 8192)]
    pub vocab: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// train and lora: micro-batches per step (under `mpirun -np N`, shared by the N processes).
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Print one JSON object per result instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also run this PyTorch baseline script (benches/torch_baseline.py) and report our/torch ratios.
    #[arg(long)]
    pub torch: Option<String>,
    /// Python interpreter for --torch (needs torch and transformers) and --trl.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// sft-packing: also run this TRL script (benches/trl_sft.py; needs torch and trl), padded
    /// and packed, on the same model and data.
    #[arg(long)]
    pub trl: Option<String>,
    #[arg(long, default_value = "cpu")]
    pub device: Backend,
    /// serve: the numbers of concurrent clients, one level after another.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub clients: Vec<usize>,
    /// serve: requests per level.
    #[arg(long, default_value_t = 32)]
    pub requests: usize,
    /// serve: serve this model folder (its tokenizer and chat template) instead of a random
    /// model of the bench shape.
    #[arg(long, conflicts_with = "endpoint")]
    pub model: Option<std::path::PathBuf>,
    /// serve: load this OpenAI-compatible server instead of ours (its base URL, e.g.
    /// http://127.0.0.1:8000/v1; `transformers serve`, vLLM, …), with --served-model as the
    /// requests' model name.
    #[arg(long, requires = "served_model")]
    pub endpoint: Option<String>,
    /// serve: the model name the --endpoint's requests carry.
    #[arg(long)]
    pub served_model: Option<String>,
    /// serve: words added to each request's short prompt (long prompts: prefill under load).
    #[arg(long, default_value_t = 0)]
    pub prompt_words: usize,
    /// serve: our server's prompt tokens prefilled per decode step (0: each prompt whole, alone).
    #[arg(long, default_value_t = phi::serve::DEFAULT_PREFILL_CHUNK)]
    pub prefill_chunk: usize,
    /// generate: decode with each of these weight formats (f32, bf16, int8, int4), reported
    /// against the first f32 one; serve: serve with each of them in turn.
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = parse_bench_weights)]
    pub weights: Vec<Option<phi::core::WeightFormat>>,
    /// generate: also run this PyTorch decode script (benches/torch_decode.py) in f32 and bf16.
    #[arg(long)]
    pub torch_decode: Option<String>,
    /// generate: also run this llama.cpp decode script (benches/llama_cpp_decode.py): Q8_0 beside
    /// our int8, Q4_0 beside our int4, f32 beside f32 (needs llama-cpp-python; see the script).
    #[arg(long)]
    pub llama_cpp: Option<String>,
    /// generate: also decode this many sequences together (continuous batching: their 32-token
    /// prompts prefilled together, then one row each a step), as llama.cpp's `llama-batched-bench`
    /// does; reported beside the one-sequence figures (0 or 1: not run).
    #[arg(long, default_value_t = 0)]
    pub sequences: usize,
    /// Training workloads: compute precision, f32 (the baseline's), bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    pub precision: Precision,
    /// train and lora under `mpirun -np N`: the ZeRO stage (1: AdamW state sharded).
    #[arg(long, value_parser = parse_zero, default_value = "0")]
    pub zero: u8,
}

fn parse_bench_weights(s: &str) -> Result<Option<phi::core::WeightFormat>, String> {
    if s.eq_ignore_ascii_case("f32") { Ok(None) } else { s.parse().map(Some) }
}

impl BenchArgs {
    pub fn options(self) -> phi::bench::BenchOptions {
        phi::bench::BenchOptions {
            workload: self.workload,
            arch: self.arch,
            hidden: self.hidden,
            layers: self.layers,
            heads: self.heads,
            vocab: self.vocab,
            batch: self.batch,
            grad_accum: self.grad_accum,
            seq: self.seq,
            steps: self.steps,
            gen_tokens: self.gen_tokens,
            json: self.json,
            torch: self.torch,
            python: self.python,
            trl: self.trl,
            device: self.device,
            weights: self.weights,
            torch_decode: self.torch_decode,
            llama_cpp: self.llama_cpp,
            sequences: self.sequences,
            precision: self.precision,
            around_pack: None,
            zero: self.zero,
        }
    }
}

fn parse_truncation(s: &str) -> Result<phi::train::preference::Truncation, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| format!("`{s}`: expected keep_start or keep_end"))
}

/// The preference loss and batching flags shared by `phi dpo` and `phi eval dpo`.
#[derive(clap::Args, Debug, Clone)]
pub struct PreferenceArgs {
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// sigmoid (DPO), ipo, hinge, or the reference-free simpo and orpo.
    #[arg(long, default_value = "sigmoid")]
    pub loss: String,
    /// cDPO's ε for the sigmoid (and simpo) loss.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// SimPO's target reward margin γ (default 0.5).
    #[arg(long)]
    pub simpo_gamma: Option<f64>,
    /// Cut each prompt + completion row to this many tokens (default: the model's context).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// keep_start (TRL's default; pairs whose prompt fills max_length are skipped) or keep_end.
    #[arg(long, value_parser = parse_truncation, default_value = "keep_start")]
    pub truncation: phi::train::preference::Truncation,
}

impl PreferenceArgs {
    pub fn loss(&self) -> Result<phi::train::preference::PreferenceLoss, String> {
        phi::train::preference::PreferenceLoss::from_name(&self.loss, self.label_smoothing, self.simpo_gamma).map_err(|e| format!("--loss: {e}"))
    }
}

/// Flags of `phi dpo` ([`phi::dpo_run::DpoRunOptions`]).
#[derive(clap::Parser, Debug)]
pub struct DpoArgs {
    /// The policy's HF model folder (the SFT model; the base of a LoRA run).
    #[arg(long, value_parser = crate::args::model_dir())]
    pub policy: PathBuf,
    /// Preference pairs, JSONL or Parquet (`.parquet`, one pair per row):
    /// `prompt_ids`/`chosen_ids`/`rejected_ids`, or `prompt`/`chosen`/`rejected` as text or
    /// message lists (tokenized with the policy's tokenizer.json).
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out pairs (default: the last --holdout fraction of --data).
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// The fraction of --data held out without --val-data (default 0.1, from 10 pairs on).
    #[arg(long, conflicts_with = "val_data")]
    pub holdout: Option<f64>,
    #[arg(long, default_value = "runs/dpo")]
    pub out: PathBuf,
    /// The reference model folder (default: the policy as it starts — with --adapter the
    /// adapter as loaded, with --lora the base).
    #[arg(long, value_parser = crate::args::model_dir())]
    pub reference: Option<PathBuf>,
    /// Keep the reference in memory and run it on every batch (TRL's default) instead of
    /// scoring every pair with it once before training.
    #[arg(long)]
    pub live_reference: bool,
    /// Train a fresh LoRA adapter instead of every parameter.
    #[arg(long)]
    pub lora: bool,
    /// Train this PEFT adapter further (the policy is its base).
    #[arg(long, value_parser = crate::args::adapter_dir(), conflicts_with = "lora")]
    pub adapter: Option<PathBuf>,
    /// LoRA rank of a fresh adapter (with --lora; default 8).
    #[arg(long, requires = "lora")]
    pub rank: Option<usize>,
    /// LoRA alpha of a fresh adapter (with --lora; default 16).
    #[arg(long, requires = "lora")]
    pub alpha: Option<f64>,
    /// PEFT target module names of a fresh adapter (with --lora; default: the policy family's:
    /// q_proj,k_proj,v_proj,dense,fc1,fc2 for Phi-1/1.5/2; qkv_proj,o_proj,gate_up_proj,down_proj
    /// for Phi-3/3.5/4-mini).
    #[arg(long, value_delimiter = ',', requires = "lora")]
    pub targets: Option<Vec<String>>,
    /// QLoRA-style: quantize the frozen base projections (int8 or int4).
    #[arg(long, value_parser = parse_quantize)]
    pub quantize: Option<BaseQuantization>,
    #[command(flatten)]
    pub preference: PreferenceArgs,
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Peak learning rate (TRL's default 1e-6), decayed linearly to 0.
    #[arg(long, default_value_t = 1e-6)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// Pairs per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Global gradient-norm clip (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    #[arg(long, value_parser = parse_precision, default_value = "f32")]
    pub precision: Precision,
    /// Validate every this many steps (0: at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Start over: remove this run's checkpoints (only ours) instead of resuming from them.
    #[arg(long)]
    pub fresh: bool,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: Backend,
    /// ZeRO stage under a launcher: 0 (each process keeps the whole AdamW state) or 1 (each of N
    /// processes keeps and updates its 1/N; the same training and checkpoints).
    #[arg(long, value_parser = parse_zero, default_value = "0")]
    pub zero: u8,
}

impl DpoArgs {
    pub fn options(self) -> Result<phi::dpo_run::DpoRunOptions, String> {
        use phi::dpo_run::Tuning;
        let tuning = match (self.lora, self.adapter) {
            (_, Some(dir)) => Tuning::Adapter(dir),
            (true, None) => Tuning::Lora(phi::core::lora::LoraConfig {
                r: self.rank.unwrap_or(8),
                lora_alpha: self.alpha.unwrap_or(16.0),
                lora_dropout: 0.0,
                // Empty: the policy family's default targets, filled in once its config is read.
                target_modules: self.targets.unwrap_or_default(),
                use_rslora: false,
            }),
            (false, None) => Tuning::Full,
        };
        Ok(phi::dpo_run::DpoRunOptions {
            tuning,
            quantize: self.quantize,
            reference: self.reference,
            live_reference: self.live_reference,
            val_data: self.val_data,
            holdout: self.holdout.unwrap_or(0.1),
            beta: self.preference.beta,
            loss: self.preference.loss()?,
            max_length: self.preference.max_length,
            truncation: self.preference.truncation,
            steps: self.steps,
            lr: self.lr,
            warmup_steps: self.warmup_steps,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            clip: self.clip,
            precision: self.precision,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            fresh: self.fresh,
            seed: self.seed,
            device: self.device,
            zero: self.zero,
            ..phi::dpo_run::DpoRunOptions::new(self.policy, self.data, self.out)
        })
    }
}

/// `phi experiment data-quality`.
#[derive(clap::Args, Debug, Clone)]
pub struct DataQualityArgs {
    /// The raw corpus, a folder of .py files (default: the local Python installation's standard
    /// library with its site-packages).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long, default_value = "runs/data_quality")]
    pub out: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    pub seeds: Vec<u64>,
    /// Optimizer steps of every run: the same token budget for every arm.
    #[arg(long, default_value_t = 200)]
    pub steps: usize,
    /// At most this many MB of the corpus (a spread-out subset of its files).
    #[arg(long, default_value_t = 6.0)]
    pub max_corpus_mb: f64,
    /// Share of the corpus's files held out for evaluation.
    #[arg(long, default_value_t = 0.05)]
    pub held_out: f64,
    #[arg(long, default_value_t = 2048)]
    pub vocab_size: usize,
    /// Add the classifier arm with this classifier (`phi data classifier train`).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Its cut (default: the classifier's).
    #[arg(long, allow_hyphen_values = true)]
    pub min_score: Option<f32>,
    /// Add an arm mixing the best filtered data with this verified synthetic data (kept.jsonl).
    #[arg(long)]
    pub synthetic: Option<PathBuf>,
    #[arg(long, default_value_t = 0.2)]
    pub synthetic_weight: f64,
    /// HumanEval problems evaluated (the first N).
    #[arg(long, default_value_t = 164)]
    pub humaneval: usize,
    /// At most this many held-out exercises (docstring-tested functions from files no arm trains on).
    #[arg(long, default_value_t = 64)]
    pub exercises: usize,
    #[arg(long, default_value = "cpu")]
    pub device: Backend,
}

impl DataQualityArgs {
    /// Runs the experiment, printing progress and the table.
    pub fn run(self) -> Result<(), Box<dyn std::error::Error>> {
        use phi::experiment::{ExperimentOptions, default_corpus, run};
        let corpus = self.corpus.clone().or_else(default_corpus).ok_or("no python3 standard library found: give --corpus DIR")?;
        let mut o = ExperimentOptions::new(corpus, self.out.clone());
        o.seeds = self.seeds;
        o.steps = self.steps;
        o.max_corpus_mb = self.max_corpus_mb;
        o.held_out_fraction = self.held_out;
        o.vocab_size = self.vocab_size;
        o.synthetic = self.synthetic;
        o.synthetic_weight = self.synthetic_weight;
        o.humaneval = self.humaneval;
        o.exercises = self.exercises;
        o.device = self.device;
        let device = self.device.device()?;
        let scorer = match &self.classifier {
            Some(dir) => {
                let s = phi::classify::Scorer::load(dir, None, &device, None, 16)?;
                let min_score = self.min_score.unwrap_or(s.classifier().min_score);
                o.classifier = Some(phi::data::prepare::ScoreFilter { classifier: Some(dir.clone()), min_score, head: Some(s.head().to_string()) });
                Some(s)
            }
            None => None,
        };
        let sandbox = crate::isolated_sandbox(phi::sandbox::Limits::default(), "model-written code runs only isolated")?;
        let t = std::time::Instant::now();
        let r = run(&o, scorer.as_ref().map(|s| s as &dyn phi::data::prepare::DocumentScorer), &sandbox, |line| println!("{line}"))?;
        print!("{}", r.table());
        println!("wrote {} and {} ({:.0}s)", o.out.join("results.json").display(), o.out.join("results.png").display(), t.elapsed().as_secs_f64());
        Ok(())
    }
}
