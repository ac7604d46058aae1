//! `phi bench`: forward and greedy-generation throughput on the bench-small shape of
//! `benches/torch_baseline.py`, with that script run in the same invocation so the ratio
//! compares like with like on the same machine state.

use std::process::Command;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use phi_core::{GenerationConfig, PhiConfig, PhiForCausalLM, WeightFormat};
use serde_json::{Value, json};

use phi_core::device::Backend;

/// What `phi bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Forward,
    Generate,
    /// One training step: forward, backward, global-norm clipping, AdamW (as the baseline's).
    Train,
    /// The same step with the base frozen and LoRA adapters (r 8, every projection) trained.
    Lora,
    /// The SFT step on the same tokens per step as the DPO steps.
    Sft,
    /// The DPO step, reference log-probabilities computed once before.
    Dpo,
    /// The DPO step with the reference model kept and run on every batch.
    DpoLive,
    /// `sft`, `dpo` and `dpo-live` in one process (speed; run them one per process to compare
    /// peak memory).
    Preference,
    /// `phi serve` at several numbers of concurrent clients ([`crate::serve_bench`]).
    Serve,
    /// SFT on length-skewed data, padded against packed ([`crate::sft_bench`]).
    SftPacking,
    All,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "forward" => Workload::Forward,
            "generate" => Workload::Generate,
            "serve" => Workload::Serve,
            "train" => Workload::Train,
            "lora" => Workload::Lora,
            "sft" => Workload::Sft,
            "sft-packing" => Workload::SftPacking,
            "dpo" => Workload::Dpo,
            "dpo-live" => Workload::DpoLive,
            "preference" => Workload::Preference,
            "all" => Workload::All,
            _ => return Err(format!("`{s}`: expected forward, generate, train, lora, sft, sft-packing, dpo, dpo-live, preference, serve or all")),
        })
    }
}

/// Which model family's bench shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Phi,
    Phi3,
    Both,
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "phi" => Arch::Phi,
            "phi3" => Arch::Phi3,
            "both" => Arch::Both,
            _ => return Err(format!("`{s}`: expected phi, phi3 or both")),
        })
    }
}

/// The bench shape (the baseline script's defaults) and what to compare against.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub workload: Workload,
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub vocab: usize,
    pub batch: usize,
    /// train and lora: micro-batches of `batch` sequences per optimizer step (1: the baseline's).
    /// Under a launcher (`mpirun -np N phi bench train`) the N processes share them, as in
    /// `phi train`: the same global batch at any N.
    pub grad_accum: usize,
    pub seq: usize,
    pub steps: usize,
    pub gen_tokens: usize,
    /// Print one JSON object per result instead of a table.
    pub json: bool,
    /// Also run this PyTorch baseline script (benches/torch_baseline.py) and report our/torch ratios.
    pub torch: Option<String>,
    /// Python interpreter for `torch` (needs torch and transformers).
    pub python: String,
    /// sft-packing: also run this TRL script (benches/trl_sft.py) padded and packed.
    pub trl: Option<String>,
    pub device: Backend,
    /// generate: the weight formats to decode with, one after another (`None` = f32).
    pub weights: Vec<Option<WeightFormat>>,
    /// generate: a PyTorch decode script (benches/torch_decode.py) run in f32 and in bf16.
    pub torch_decode: Option<String>,
    /// generate: a llama.cpp decode script (benches/llama_cpp_decode.py) run with Q8_0 beside our
    /// int8 and Q4_0 beside our int4 (and f32 beside f32), on the same shape and threads.
    pub llama_cpp: Option<String>,
    /// generate: also decode this many sequences together ([`bench_generate_batch`]); 0 or 1:
    /// not run.
    pub sequences: usize,
    /// Training workloads: the step's compute precision (the baseline script's is f32).
    pub precision: phi_train::Precision,
    /// generate: runs the packing of a model (its argument) so that the f32 weights it frees go
    /// back to the OS. The `phi` binary's allocator keeps freed memory otherwise (see its
    /// `returning_freed_memory`), and the decode's peak RSS would be the f32 model's.
    pub around_pack: Option<fn(&mut dyn FnMut())>,
    /// train and lora under a launcher: the ZeRO stage (see `TrainConfig::zero`).
    pub zero: u8,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            workload: Workload::All,
            arch: Arch::Both,
            hidden: 256,
            layers: 4,
            heads: 8,
            vocab: 8192,
            batch: 8,
            grad_accum: 1,
            seq: 256,
            steps: 5,
            gen_tokens: 64,
            json: false,
            torch: None,
            python: "python3".into(),
            trl: None,
            device: Backend::Cpu,
            weights: vec![None],
            torch_decode: None,
            llama_cpp: None,
            sequences: 0,
            precision: phi_train::Precision::F32,
            around_pack: None,
            zero: 0,
        }
    }
}

/// The config `torch_baseline.py` builds for `arch` (same sizes, same rotary, same MLP).
pub fn baseline_config(a: &BenchOptions, phi3: bool) -> PhiConfig {
    let max_pos = 2048.max(a.seq + a.gen_tokens + 8);
    let mut c = if phi3 {
        let inter = match 8 * a.hidden / 3 / 64 * 64 {
            0 => 4 * a.hidden,
            i => i,
        };
        PhiConfig::phi3_family(a.hidden, a.layers, a.heads, a.heads, inter, a.vocab)
    } else {
        PhiConfig::phi_family(a.hidden, a.layers, a.heads, a.vocab, 0.5)
    };
    c.max_position_embeddings = max_pos;
    c.bos_token_id = None;
    c.eos_token_ids = vec![];
    c.pad_token_id = None;
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<i64> {
    // A small LCG: the ids only need to be spread over the vocabulary, reproducibly.
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as i64
        })
        .collect()
}

/// Forward tokens/s (median of `steps` after one warm-up).
pub fn bench_forward(model: &PhiForCausalLM, a: &BenchOptions, device: &Device) -> f64 {
    let ids = random_ids(a.batch * a.seq, a.vocab, 1);
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [a.batch, a.seq]), device);
    let run = || {
        let logits = model.forward(x.clone());
        // Reading one value back forces the (possibly asynchronous) backend to finish.
        let _ = logits.narrow(0, 0, 1).narrow(1, 0, 1).narrow(2, 0, 1).into_data();
    };
    run();
    let times = (0..a.steps)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    (a.batch * a.seq) as f64 / median(times)
}

/// The training settings of the baseline's step: AdamW lr 1e-4, betas (0.9, 0.95), weight
/// decay 0.1 on every parameter, global-norm clip 1.0, f32.
pub fn baseline_train_config(a: &BenchOptions) -> phi_train::TrainConfig {
    use phi_train::{AdamWSettings, Decay, LrSchedule, TrainConfig};
    TrainConfig {
        batch_size: a.batch,
        seq_len: a.seq,
        grad_accum: a.grad_accum.max(1),
        max_steps: a.steps + 1,
        optimizer: AdamWSettings { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, no_decay_for_bias_norm_embedding: false },
        schedule: LrSchedule { peak: 1e-4, warmup_steps: 0, total_steps: 0, floor: 1e-4, decay: Decay::Constant },
        eval_every: 0,
        eval_batches: 1,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        seed: 0,
        precision: a.precision,
        zero: a.zero,
        ..TrainConfig::default()
    }
}

/// Training tokens/s of [`phi_train::Trainer::step`] — the step `phi train`, `phi finetune`
/// and every objective run — with the baseline's settings on random token windows, median of
/// `steps` after one warm-up. With `lora`, the base is frozen and adapters (r 8, every
/// projection) train.
pub fn bench_train(config: &PhiConfig, a: &BenchOptions, device: &Device, lora: bool) -> f64 {
    bench_train_in(config, a, device, lora, phi_train::dist::world())
}

/// [`bench_train`] as one rank of `world` (ranks as threads of one process, one per GPU:
/// [`phi_train::dist::LocalGroup`]): each rank runs its share of the step's `grad_accum`
/// micro-batches, and the ranks' weights are checked to be the same at the end.
pub fn bench_train_in(config: &PhiConfig, a: &BenchOptions, device: &Device, lora: bool, world: std::sync::Arc<dyn phi_train::dist::Collective>) -> f64 {
    let ad = device.clone().autodiff();
    let mut model = PhiForCausalLM::init(config.clone(), &ad, 0).expect("valid bench config");
    if lora {
        let cfg = phi_train::lora::LoraConfig {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: phi_core::lora::default_targets(config.family),
            use_rslora: false,
        };
        model = phi_train::lora::attach(model, &cfg).expect("projections to adapt");
    }
    let cfg = baseline_train_config(a);
    let micro = a.grad_accum.max(1);
    let tokens: Vec<u32> = random_ids((a.steps + 1) * micro * a.batch * (a.seq + 1), a.vocab, 3).into_iter().map(|t| t as u32).collect();
    let data = phi_data::Mixture::single(phi_data::TokenDataset::from_tokens(tokens));
    let val = phi_data::TokenDataset::from_tokens(vec![0; a.seq + 1]);
    let mut objective = phi_train::CausalLm::new(&data, &val, a.seq, cfg.seed).expect("bench data");
    let mut trainer = phi_train::Trainer::new(model, &cfg).expect("valid bench settings").with_world(world.clone());
    let mut times = Vec::new();
    for i in 0..=a.steps {
        let t = Instant::now();
        // The step reads the loss and checks the updated weights: it has waited for the device.
        trainer.step(&mut objective).expect("a finite bench step");
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    if world.size() > 1 {
        phi_train::dist::check_same_weights(trainer.model(), &*world, trainer.steps_done()).expect("the ranks hold the same weights");
    }
    // The step's tokens, all ranks' together in a data-parallel run.
    (micro * a.batch * a.seq) as f64 / median(times)
}

/// Which step [`bench_preference`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferenceBench {
    /// SFT on `batch` sequences of `seq` tokens, the second half learned.
    Sft,
    /// DPO on `batch / 2` pairs (prompt `seq / 2`, each completion `seq / 2` tokens: the same
    /// `batch × seq` tokens through the policy), reference log-probs computed before the timing.
    DpoPrecomputed,
    /// The same with the reference model kept and run on every batch (TRL's default).
    DpoLive,
}

/// Training tokens/s (tokens through the policy) of [`phi_train::Trainer::step`] on the SFT or DPO
/// objective, full-parameter with the baseline's settings, median of `steps` after one warm-up.
pub fn bench_preference(config: &PhiConfig, a: &BenchOptions, device: &Device, which: PreferenceBench) -> f64 {
    use phi_train::preference::{Dpo, PreferenceSettings, TokenPair};
    let ad = device.clone().autodiff();
    let model = PhiForCausalLM::init(config.clone(), &ad, 0).expect("valid bench config");
    // Rows per micro-batch are `batch` either way: `batch` sequences, or `batch / 2` pairs.
    let batch_size = if which == PreferenceBench::Sft { a.batch } else { (a.batch / 2).max(1) };
    let cfg = phi_train::TrainConfig { batch_size, ..baseline_train_config(a) };
    let (half, n) = (a.seq / 2, (a.steps + 1) * a.batch);
    let ids = |i: usize, len: usize| -> Vec<u32> { random_ids(len, a.vocab, 10 + i as u64).into_iter().map(|t| t as u32).collect() };
    let mut trainer = phi_train::Trainer::new(model, &cfg).expect("valid bench settings");
    let mut times = Vec::new();
    let mut time = |step: &mut dyn FnMut()| {
        for i in 0..=a.steps {
            let t = Instant::now();
            step();
            if i > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
    };
    match which {
        PreferenceBench::Sft => {
            let examples: Vec<phi_data::sft::SftExample> =
                (0..n).map(|i| phi_data::sft::SftExample { ids: ids(i, a.seq), learn: (0..a.seq).map(|j| j > half).collect() }).collect();
            let mut objective = phi_train::sft_objective::Sft::new(&examples, &[], 0, 0).expect("bench data");
            time(&mut || {
                trainer.step(&mut objective).expect("a finite bench step");
            });
        }
        PreferenceBench::DpoPrecomputed | PreferenceBench::DpoLive => {
            let pairs: Vec<TokenPair> = (0..n).map(|i| TokenPair { prompt_ids: ids(3 * i, half), chosen_ids: ids(3 * i + 1, a.seq - half), rejected_ids: ids(3 * i + 2, a.seq - half) }).collect();
            let reference = PhiForCausalLM::init(config.clone(), device, 1).expect("valid bench config");
            let settings = PreferenceSettings::dpo(0);
            // Precomputed: the reference is scored, then dropped before training starts.
            let mut objective = if which == PreferenceBench::DpoLive {
                Dpo::live(&pairs, &[], reference, settings, 0)
            } else {
                let o = Dpo::new(&pairs, &[], Some(&reference), settings, 0);
                drop(reference);
                o
            }
            .expect("bench data");
            time(&mut || {
                trainer.step(&mut objective).expect("a finite bench step");
            });
        }
    }
    // Rows actually put through the policy per step (an odd `batch` gives `batch - 1` pair rows).
    let rows = if which == PreferenceBench::Sft { a.batch } else { 2 * batch_size };
    (rows * a.seq) as f64 / median(times)
}

/// Greedy generation tokens/s: a 32-token prompt, `gen_tokens` new tokens, KV cache — with the
/// weights as `phi generate` loads them (on the CPU, f32 in strips: `decoding_format`).
pub fn bench_generate(model: &PhiForCausalLM, a: &BenchOptions) -> f64 {
    match phi_core::quant::decoding_format(None, &model.device()) {
        Some(format) => {
            let mut packed = model.clone();
            packed.pack_weights(format).expect("a model of the bench's shape packs");
            bench_generate_split(&packed, a).tokens_per_s
        }
        None => bench_generate_split(model, a).tokens_per_s,
    }
}

/// How fast greedy generation goes, whole and in its two phases.
#[derive(Debug, Clone, Copy)]
pub struct GenerateRate {
    /// New tokens over the whole call, prompt included (what PyTorch's `generate` is timed at).
    pub tokens_per_s: f64,
    /// The prompt and the first new token (time to first token).
    pub first_token_s: f64,
    /// The tokens after the first over the time after it: decoding alone (llama-bench's "tg"),
    /// where every token reads all the weights once.
    pub decode_tokens_per_s: f64,
}

/// [`bench_generate`], with the prompt phase timed apart from the decode.
pub fn bench_generate_split(model: &PhiForCausalLM, a: &BenchOptions) -> GenerateRate {
    let prompt: Vec<u32> = random_ids(32, a.vocab, 2).into_iter().map(|t| t as u32).collect();
    model.generate(&prompt, &GenerationConfig::greedy(4)).expect("warm-up generation");
    let t = Instant::now();
    model.generate(&prompt, &GenerationConfig::greedy(1)).expect("generation");
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let out = model.generate(&prompt, &GenerationConfig::greedy(a.gen_tokens)).expect("generation");
    let all = t.elapsed().as_secs_f64();
    let new = (out.len() - prompt.len()) as f64;
    GenerateRate { tokens_per_s: new / all, first_token_s: first, decode_tokens_per_s: (new - 1.0) / (all - first).max(1e-9) }
}

/// [`bench_generate_split`] for `sequences` sequences decoded together
/// ([`PhiForCausalLM::generate_batch`]): `sequences` different 32-token prompts, prefilled
/// together, then `gen_tokens` greedy tokens each, one row each a step. Rates count the new
/// tokens of all sequences; `first_token_s` is the prompts' prefill and the first token of each,
/// `decode_tokens_per_s` the steps after it (llama.cpp's batched-bench reports the same two
/// phases, as S_PP and S_TG).
pub fn bench_generate_batch(model: &PhiForCausalLM, a: &BenchOptions, sequences: usize) -> GenerateRate {
    let requests = |new: usize| -> Vec<(Vec<u32>, GenerationConfig)> {
        (0..sequences).map(|i| (random_ids(32, a.vocab, 100 + i as u64).into_iter().map(|t| t as u32).collect(), GenerationConfig::greedy(new))).collect()
    };
    let run = |new: usize| {
        let reqs = requests(new);
        let t = Instant::now();
        let out = model.generate_batch(&reqs, sequences, |_, _| true).expect("batched generation");
        (t.elapsed().as_secs_f64(), out.iter().zip(&reqs).map(|(o, (p, _))| o.len() - p.len()).sum::<usize>() as f64)
    };
    run(4);
    let (first, _) = run(1);
    let (all, new) = run(a.gen_tokens);
    GenerateRate { tokens_per_s: new / all, first_token_s: first, decode_tokens_per_s: (new - sequences as f64) / (all - first).max(1e-9) }
}

fn torch_results(a: &BenchOptions, arch: &str) -> Result<Vec<Value>, String> {
    let Some(script) = &a.torch else { return Ok(vec![]) };
    torch_script(a, script, arch, &[])
}

/// `torch_decode.py` in f32 and bf16 (one process each, so each peak RSS is its own).
fn torch_decode_results(a: &BenchOptions, arch: &str) -> Result<Vec<Value>, String> {
    let Some(script) = &a.torch_decode else { return Ok(vec![]) };
    let mut out = torch_script(a, script, arch, &["--dtype", "f32"])?;
    out.extend(torch_script(a, script, arch, &["--dtype", "bf16"])?);
    Ok(out)
}

/// `llama_cpp_decode.py` for each llama.cpp type that matches one of `a.weights` (f32 → f32,
/// int8 → Q8_0, int4 → Q4_0), one process each. bf16 has no counterpart of the same kind
/// (llama.cpp's bf16 is a storage type, not a quantization).
fn llama_cpp_results(a: &BenchOptions, arch: &str) -> Result<Vec<Value>, String> {
    let Some(script) = &a.llama_cpp else { return Ok(vec![]) };
    let mut out = vec![];
    for format in &a.weights {
        if let Some(kind) = llama_cpp_type(*format) {
            out.extend(torch_script(a, script, arch, &["--type", kind])?);
        }
    }
    Ok(out)
}

/// The llama.cpp weight type compared with one of ours: the same bits a weight's integer part,
/// blocks of 32, one scale a block (llama.cpp's an f16, ours an f32).
fn llama_cpp_type(format: Option<WeightFormat>) -> Option<&'static str> {
    match format {
        None => Some("f32"),
        Some(WeightFormat::Int8) => Some("q8_0"),
        Some(WeightFormat::Int4) => Some("q4_0"),
        Some(_) => None,
    }
}

/// Runs a baseline script with the bench's shape; its stdout's JSON lines are the results.
fn torch_script(a: &BenchOptions, script: &str, arch: &str, extra: &[&str]) -> Result<Vec<Value>, String> {
    let out = Command::new(&a.python)
        .arg(script)
        .args(extra)
        .args(["--arch", arch])
        .args(["--hidden", &a.hidden.to_string(), "--layers", &a.layers.to_string()])
        .args(["--heads", &a.heads.to_string(), "--vocab", &a.vocab.to_string()])
        .args(["--batch", &a.batch.to_string(), "--seq", &a.seq.to_string()])
        .args(["--steps", &a.steps.to_string(), "--gen-tokens", &a.gen_tokens.to_string()])
        .output()
        .map_err(|e| format!("running {} {script}: {e}", a.python))?;
    if !out.status.success() {
        return Err(format!("{script} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect())
}

pub fn run(a: BenchOptions) -> Result<(), Box<dyn std::error::Error>> {
    if a.workload == Workload::Serve {
        return Err("the serve workload runs in phi::serve_bench (the `phi` tool dispatches it)".into());
    }
    if a.workload == Workload::SftPacking {
        return crate::sft_bench::run(&a);
    }
    let device = crate::world::device(a.device)?;
    let world = phi_train::dist::world();
    if world.size() > 1 {
        // The processes share each step's micro-batches, as in `phi train`.
        if a.grad_accum % world.size() != 0 {
            return Err(format!("{}: --grad-accum {} cannot be shared by {} processes: give a multiple of {}", world.describe(), a.grad_accum, world.size(), world.size()).into());
        }
        if a.torch.is_some() {
            return Err("--torch compares one process with PyTorch's: run it without a launcher".into());
        }
    }
    let archs: &[&str] = match a.arch {
        Arch::Phi => &["phi"],
        Arch::Phi3 => &["phi3"],
        Arch::Both => &["phi", "phi3"],
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for &arch in archs {
        let config = baseline_config(&a, arch == "phi3");
        let params = config.num_parameters();
        let model = PhiForCausalLM::init(config.clone(), &device, 0)?;
        // A training workload that cannot fit (`--batch 100000`) is refused with the estimate
        // rather than killed by the allocator or the OOM killer.
        if !matches!(a.workload, Workload::Forward | Workload::Generate) {
            let cfg = baseline_train_config(&a);
            cfg.validate(&config)?;
            // Every training workload puts `batch` rows a micro-batch through the model (the
            // preference ones as `batch / 2` pairs).
            let run = phi_train::memory::RunShape { model: &config, trainable: params, adapters: 0, rows_per_item: 1 };
            phi_train::memory::check_device(run, &cfg, &device)?;
        }
        let torch = torch_results(&a, arch)?;
        let mut workloads: Vec<(&str, f64, Option<f64>)> = vec![];
        if matches!(a.workload, Workload::Train | Workload::All) {
            workloads.push(("train_step", bench_train(&config, &a, &device, false), peak_rss_mib()));
        }
        if a.workload == Workload::Lora {
            workloads.push(("lora_step", bench_train(&config, &a, &device, true), peak_rss_mib()));
        }
        // (Peak memory only grows within a process: compare it between one-workload runs.)
        if matches!(a.workload, Workload::Sft | Workload::Preference) {
            workloads.push(("sft_step", bench_preference(&config, &a, &device, PreferenceBench::Sft), peak_rss_mib()));
        }
        if matches!(a.workload, Workload::Dpo | Workload::Preference) {
            workloads.push(("dpo_step", bench_preference(&config, &a, &device, PreferenceBench::DpoPrecomputed), peak_rss_mib()));
        }
        if matches!(a.workload, Workload::DpoLive | Workload::Preference) {
            workloads.push(("dpo_step_live", bench_preference(&config, &a, &device, PreferenceBench::DpoLive), peak_rss_mib()));
        }
        if matches!(a.workload, Workload::Forward | Workload::All) {
            workloads.push(("forward", bench_forward(&model, &a, &device), peak_rss_mib()));
        }
        // Narrow formats and batched decoding are reported per format.
        let narrow = a.weights.iter().any(Option::is_some) || a.sequences > 1;
        if matches!(a.workload, Workload::Generate | Workload::All) && !narrow {
            workloads.push(("generate", bench_generate(&model, &a), peak_rss_mib()));
        }
        for (name, ours, peak) in workloads {
            let theirs = torch
                .iter()
                .find(|v| v["workload"] == name)
                .and_then(|v| v["tokens_per_s"].as_f64());
            let result = json!({
                "workload": name, "arch": arch, "params": params, "batch": a.batch, "seq": a.seq,
                "peak_rss_mib": peak,
                "device": a.device.to_string(), "threads": threads,
                "tokens_per_s": ours, "torch_tokens_per_s": theirs, "ratio_vs_torch": theirs.map(|t| ours / t),
            });
            if a.json {
                println!("{result}");
            } else {
                let ratio = theirs.map_or(String::from("-"), |t| format!("{:.2}x", ours / t));
                let theirs = theirs.map_or(String::from("-"), |t| format!("{t:.0}"));
                let peak = peak.map_or(String::from("-"), |p| format!("{p:.0} MiB"));
                println!("{name:<13} {arch:<5} phi {ours:>10.0} tok/s   torch {theirs:>10} tok/s   ratio {ratio:>6}   peak RSS {peak}");
            }
        }
        if matches!(a.workload, Workload::Generate | Workload::All) && narrow {
            bench_generate_weights(model, &a, arch, params, threads)?;
        }
    }
    Ok(())
}

/// Greedy decode with each of `a.weights`, against our f32 (when listed) and PyTorch f32 and
/// bf16 (with `torch_decode`). Peak RSS is reset before each decode, so it is the decode's own
/// high-water mark (the model plus what decoding allocates); the last format packs the model in
/// place, so a one-format run's figure holds no f32 copy.
fn bench_generate_weights(model: PhiForCausalLM, a: &BenchOptions, arch: &str, params: u64, threads: usize) -> Result<(), Box<dyn std::error::Error>> {
    let torch = torch_decode_results(a, arch)?;
    let torch_rate = |dtype: &str, key: &str| {
        torch.iter().find(|v| v["workload"] == "generate" && v["dtype"] == dtype).and_then(|v| v[key].as_f64())
    };
    let (torch_f32, torch_bf16) = (torch_rate("f32", "tokens_per_s"), torch_rate("bf16", "tokens_per_s"));
    let (torch_f32_dec, torch_bf16_dec) = (torch_rate("f32", "decode_tokens_per_s"), torch_rate("bf16", "decode_tokens_per_s"));
    let llama = llama_cpp_results(a, arch)?;
    let llama_rate = |format: Option<WeightFormat>, key: &str| {
        let kind = llama_cpp_type(format)?;
        llama.iter().find(|v| v["type"] == kind).and_then(|v| v[key].as_f64())
    };
    let mut ours_f32 = None;
    let mut ours_f32_dec = None;
    let mut model = Some(model);
    for (i, &format) in a.weights.iter().enumerate() {
        let mut m = if i + 1 == a.weights.len() { model.take().expect("kept until the last") } else { model.clone().expect("kept") };
        // f32 as `phi generate` decodes it: in strips on the CPU.
        let bytes = match phi_core::quant::decoding_format(format, &m.device()) {
            Some(f) => {
                let mut packed = None;
                let mut pack = || packed = Some(m.pack_weights(f));
                match a.around_pack {
                    Some(around) => around(&mut pack),
                    None => pack(),
                }
                packed.expect("the packing ran")?.bytes_after
            }
            None => 0,
        };
        reset_peak_rss();
        let rate = bench_generate_split(&m, a);
        let peak = peak_rss_mib();
        let batch = (a.sequences > 1).then(|| bench_generate_batch(&m, a, a.sequences));
        drop(m);
        let (tps, dec) = (rate.tokens_per_s, rate.decode_tokens_per_s);
        let label = format.map_or("f32".to_string(), |f| f.to_string());
        let (llama_cpp, llama_first) = (llama_rate(format, "decode_tokens_per_s"), llama_rate(format, "first_token_s"));
        if format.is_none() {
            ours_f32 = Some(tps);
            ours_f32_dec = Some(dec);
        }
        let result = json!({
            "workload": "generate", "weights": label, "arch": arch, "params": params, "threads": threads,
            "prompt": 32, "new_tokens": a.gen_tokens, "tokens_per_s": tps, "peak_rss_mib": peak,
            "first_token_s": rate.first_token_s, "decode_tokens_per_s": dec,
            "packed_bytes": (bytes > 0).then_some(bytes),
            "vs_our_f32": ours_f32.map(|f| tps / f), "decode_vs_our_f32": ours_f32_dec.map(|f| dec / f),
            "torch_f32_tokens_per_s": torch_f32, "torch_bf16_tokens_per_s": torch_bf16,
            "vs_torch_f32": torch_f32.map(|t| tps / t), "vs_torch_bf16": torch_bf16.map(|t| tps / t),
            "decode_vs_torch_f32": torch_f32_dec.map(|t| dec / t), "decode_vs_torch_bf16": torch_bf16_dec.map(|t| dec / t),
            "llama_cpp_type": llama_cpp.map(|_| llama_cpp_type(format)), "llama_cpp_decode_tokens_per_s": llama_cpp,
            "decode_vs_llama_cpp": llama_cpp.map(|l| dec / l),
            "first_token_vs_llama_cpp": llama_first.map(|l| rate.first_token_s / l),
            "sequences": batch.map(|_| a.sequences),
            "batch_tokens_per_s": batch.map(|b| b.tokens_per_s), "batch_first_token_s": batch.map(|b| b.first_token_s),
            "batch_decode_tokens_per_s": batch.map(|b| b.decode_tokens_per_s),
            "batch_decode_vs_one": batch.map(|b| b.decode_tokens_per_s / dec),
        });
        if a.json {
            println!("{result}");
        } else {
            let r = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}x"));
            let peak = peak.map_or("-".to_string(), |p| format!("{p:.0} MiB"));
            println!(
                "generate {label:<5} {arch:<5} phi {tps:>7.2} tok/s (decode {dec:>6.2}, first token {:.2} s)   vs our f32 {:>6} (decode {:>6})   vs torch f32 {:>6} (decode {:>6})   vs torch bf16 {:>6} (decode {:>6})   peak RSS {peak}",
                rate.first_token_s,
                r(ours_f32.map(|f| tps / f)), r(ours_f32_dec.map(|f| dec / f)),
                r(torch_f32.map(|t| tps / t)), r(torch_f32_dec.map(|t| dec / t)),
                r(torch_bf16.map(|t| tps / t)), r(torch_bf16_dec.map(|t| dec / t)),
            );
            if let Some(b) = batch {
                println!(
                    "         {label:<5} {arch:<5} {} sequences together: {:>7.2} tok/s (decode {:>6.2}, {:.2}x one sequence's; prompts and first tokens {:.2} s)",
                    a.sequences, b.tokens_per_s, b.decode_tokens_per_s, b.decode_tokens_per_s / dec, b.first_token_s
                );
            }
            if let (Some(l), Some(kind)) = (llama_cpp, llama_cpp_type(format)) {
                println!("         {label:<5} {arch:<5} decode vs llama.cpp {kind} {:.2}x ({dec:.2} against {l:.2} tok/s), first token {:.2}x its time", dec / l, llama_first.map_or(f64::NAN, |f| rate.first_token_s / f));
            }
        }
    }
    for dtype in ["f32", "bf16"] {
        if let Some(v) = torch.iter().find(|v| v["dtype"] == dtype) {
            if a.json {
                println!(
                    "{}",
                    json!({"workload": "generate", "weights": dtype, "arch": arch, "torch": true, "tokens_per_s": v["tokens_per_s"],
                           "decode_tokens_per_s": v["decode_tokens_per_s"], "first_token_s": v["first_token_s"], "peak_rss_mib": v["peak_rss_mib"]})
                );
            } else {
                let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                println!(
                    "torch    {dtype:<5} {arch:<5}     {:>7.2} tok/s (decode {:>6.2}, first token {:.2} s)   peak RSS {:.0} MiB",
                    f("tokens_per_s"), f("decode_tokens_per_s"), f("first_token_s"), f("peak_rss_mib")
                );
            }
        }
    }
    for v in &llama {
        if a.json {
            println!("{}", json!({"workload": "generate", "weights": v["type"], "arch": arch, "llama_cpp": true, "tokens_per_s": v["tokens_per_s"],
                                  "decode_tokens_per_s": v["decode_tokens_per_s"], "first_token_s": v["first_token_s"], "peak_rss_mib": v["peak_rss_mib"],
                                  "file_bytes": v["file_bytes"], "version": v["llama_cpp_python"]}));
        } else {
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "llama.cpp {:<5} {arch:<5}    {:>7.2} tok/s (decode {:>6.2}, first token {:.2} s)   peak RSS {:.0} MiB   file {:.0} MiB",
                v["type"].as_str().unwrap_or("?"), f("tokens_per_s"), f("decode_tokens_per_s"), f("first_token_s"), f("peak_rss_mib"), f("file_bytes") / (1024.0 * 1024.0)
            );
        }
    }
    Ok(())
}

/// Starts a new peak-RSS window (Linux: writing 5 to `clear_refs` resets `VmHWM`).
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory so far (Linux `VmHWM`), in MiB.
pub(crate) fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
