//! `phi bench sft-packing`: SFT on a length-skewed data set, padded batches against packed
//! rows, and TRL's `SFTTrainer` both ways on the same model and data in the same run.
//!
//! The data: prompts of 8–32 tokens and responses whose lengths spread 10× (`seq / 16` to
//! `10 · seq / 16`, log-uniform), so a padded batch pays for its longest example in every row.
//! Both modes draw `batch` rows a step (padded: one example each; packed: rows of `seq` tokens,
//! best-fit decreasing) and are timed over `steps` steps after one warm-up. Real tokens/s counts
//! the examples' tokens (not padding), learned tokens/s the loss terms: what an SFT run buys.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::tensor::Device;
use phi_core::{PhiConfig, PhiForCausalLM};
use phi_data::sft::SftExample;
use phi_train::Objective;
use phi_train::sft_objective::Sft;
use serde_json::{Value, json};

use crate::bench::{BenchOptions, baseline_train_config, peak_rss_mib, reset_peak_rss};

/// `n` examples for rows of `seq` tokens: prompts of 8–32 tokens, responses spread 10×.
pub fn skewed_examples(n: usize, seq: usize, vocab: usize, seed: u64) -> Vec<SftExample> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (lo, spread) = ((seq / 16).max(1) as f64, 10f64);
    (0..n)
        .map(|_| {
            let prompt = 8 + (next() % 25) as usize;
            let u = (next() % 1_000_000) as f64 / 1_000_000.0;
            let response = ((lo * spread.powf(u)) as usize).clamp(1, seq.saturating_sub(prompt).max(1));
            let len = (prompt + response).min(seq);
            // Ids from 1: 0 is the padding id.
            let ids = (0..len).map(|_| 1 + (next() % (vocab as u64 - 1)) as u32).collect();
            let learn = (0..len).map(|t| t >= prompt).collect();
            SftExample { ids, learn }
        })
        .collect()
}

/// What one mode of the bench measured.
#[derive(Debug, Clone)]
pub struct SftRates {
    pub tokens_per_s: f64,
    pub learned_tokens_per_s: f64,
    /// Row positions (tokens and padding) per second: what the model computed.
    pub positions_per_s: f64,
    /// Rows an epoch has (examples, or packed rows).
    pub rows: usize,
    pub peak_rss_mib: Option<f64>,
}

/// Times [`phi_train::Trainer::step`] on `examples`, padded or packed into rows of `a.seq`.
pub fn bench_sft(config: &PhiConfig, a: &BenchOptions, device: &Device, examples: &[SftExample], packed: bool) -> SftRates {
    let objective = || if packed { Sft::packed(examples, &[], 0, 0, a.seq) } else { Sft::new(examples, &[], 0, 0) };
    let (mut objective, mut shadow) = (objective().expect("bench data"), objective().expect("bench data"));
    let cfg = phi_train::TrainConfig { batch_size: a.batch, ..baseline_train_config(a) };
    let micro = cfg.grad_accum.max(1);
    reset_peak_rss();
    let model = PhiForCausalLM::init(config.clone(), &device.clone().autodiff(), 0).expect("valid bench config");
    let mut trainer = phi_train::Trainer::new(model, &cfg).expect("valid bench settings");
    let (mut time, mut tokens, mut learned, mut positions) = (0.0, 0usize, 0f64, 0usize);
    for i in 0..=a.steps {
        // The same seed draws the same batches: the shadow objective says what the step got
        // (its `grad_accum` micro-batches).
        let batches: Vec<_> = (0..micro).map(|_| shadow.next_batch(a.batch)).collect();
        let t = Instant::now();
        trainer.step(&mut objective).expect("a finite bench step");
        if i > 0 {
            time += t.elapsed().as_secs_f64();
            for batch in &batches {
                tokens += shadow.tokens(batch);
                learned += shadow.weight(batch);
                let longest = batch.iter().map(|row| row.iter().map(|e| e.ids.len()).sum::<usize>()).max().unwrap_or(0);
                positions += batch.len() * longest;
            }
        }
    }
    SftRates {
        tokens_per_s: tokens as f64 / time,
        learned_tokens_per_s: learned / time,
        positions_per_s: positions as f64 / time,
        rows: objective.rows(),
        peak_rss_mib: peak_rss_mib(),
    }
}

/// The model and data as TRL reads them: a transformers folder and JSONL of `input_ids` and
/// `labels` (-100 where a token is not learned).
fn write_for_trl(config: &PhiConfig, examples: &[SftExample], dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    PhiForCausalLM::init(config.clone(), &Device::default(), 0)?.save_pretrained(dir.join("model"))?;
    let mut jsonl = String::new();
    for e in examples {
        let labels: Vec<i64> = e.ids.iter().zip(&e.learn).map(|(&id, &l)| if l { i64::from(id) } else { -100 }).collect();
        jsonl.push_str(&json!({"input_ids": e.ids, "labels": labels}).to_string());
        jsonl.push('\n');
    }
    std::fs::write(dir.join("data.jsonl"), jsonl)?;
    Ok(())
}

fn trl(a: &BenchOptions, script: &str, dir: &Path, packed: bool) -> Result<Value, String> {
    let mut cmd = Command::new(&a.python);
    cmd.arg(script)
        .args(["--model", &dir.join("model").display().to_string(), "--data", &dir.join("data.jsonl").display().to_string()])
        .args(["--max-length", &a.seq.to_string(), "--batch", &a.batch.to_string(), "--steps", &a.steps.to_string()]);
    if packed {
        cmd.arg("--packing");
    }
    let out = cmd.output().map_err(|e| format!("running {} {script}: {e}", a.python))?;
    if !out.status.success() {
        return Err(format!("{script} failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .last()
        .ok_or_else(|| format!("{script} printed no result"))
}

/// Runs the bench for each architecture of `a`, printing a line (or a JSON object) per mode.
pub fn run(a: &BenchOptions) -> Result<(), Box<dyn std::error::Error>> {
    if phi_train::dist::world().size() > 1 {
        return Err("sft-packing compares one process's modes (and TRL's): run it without a launcher".into());
    }
    let device = crate::world::device(a.device)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Enough examples that neither mode runs out of data or wraps round mid-bench.
    let n = (a.steps + 1) * a.batch * 8;
    let examples = skewed_examples(n, a.seq, a.vocab, 7);
    let archs: &[&str] = match a.arch {
        crate::bench::Arch::Phi => &["phi"],
        crate::bench::Arch::Phi3 => &["phi3"],
        crate::bench::Arch::Both => &["phi", "phi3"],
    };
    let tokens: usize = examples.iter().map(|e| e.ids.len()).sum();
    println!(
        "{} examples, {tokens} tokens (responses {}–{} tokens); padded batches of {} fill {:.1}% of their positions",
        examples.len(),
        examples.iter().map(|e| e.learn.iter().filter(|&&l| l).count()).min().unwrap_or(0),
        examples.iter().map(|e| e.learn.iter().filter(|&&l| l).count()).max().unwrap_or(0),
        a.batch,
        100.0 * phi_data::packing::padded_fill(&examples, a.batch)
    );
    for &arch in archs {
        let config = crate::bench::baseline_config(a, arch == "phi3");
        // TRL's copy of the model and data, made here and removed at the end.
        let scratch = std::env::temp_dir().join(format!("phi-bench-sft-{}-{arch}", std::process::id()));
        if a.trl.is_some() {
            write_for_trl(&config, &examples, &scratch)?;
        }
        let mut padded_rate = None;
        for packed in [false, true] {
            let ours = bench_sft(&config, a, &device, &examples, packed);
            let theirs = match &a.trl {
                Some(script) => Some(trl(a, script, &scratch, packed)?),
                None => None,
            };
            let mode = if packed { "packed" } else { "padded" };
            let trl_learned = theirs.as_ref().and_then(|v| v["learned_tokens_per_s"].as_f64());
            let vs_padded = padded_rate.map(|p: f64| ours.learned_tokens_per_s / p);
            if !packed {
                padded_rate = Some(ours.learned_tokens_per_s);
            }
            let result = json!({
                "workload": format!("sft_{mode}"), "arch": arch, "batch": a.batch, "seq": a.seq, "threads": threads,
                "device": a.device.to_string(), "rows": ours.rows,
                "tokens_per_s": ours.tokens_per_s, "learned_tokens_per_s": ours.learned_tokens_per_s,
                "positions_per_s": ours.positions_per_s, "peak_rss_mib": ours.peak_rss_mib,
                "learned_vs_padded": vs_padded,
                "trl": theirs, "learned_ratio_vs_trl": trl_learned.map(|t| ours.learned_tokens_per_s / t),
            });
            if a.json {
                println!("{result}");
                continue;
            }
            let peak = ours.peak_rss_mib.map_or("-".into(), |p| format!("{p:.0} MiB"));
            let versus = vs_padded.map_or(String::new(), |r| format!("   learned {r:.2}x padded"));
            println!(
                "sft {mode} {arch:<5} {:>5} rows   tokens {:>8.0}/s   learned {:>8.0}/s   positions {:>8.0}/s   peak RSS {peak}{versus}",
                ours.rows, ours.tokens_per_s, ours.learned_tokens_per_s, ours.positions_per_s
            );
            if let Some(t) = &theirs {
                let f = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
                println!(
                    "trl {mode} {arch:<5} {:>5} rows   tokens {:>8.0}/s   learned {:>8.0}/s   peak RSS {:.0} MiB   ours/TRL learned {:.2}x",
                    t["rows_in_dataset"].as_u64().unwrap_or(0),
                    f("tokens_per_s"),
                    f("learned_tokens_per_s"),
                    f("peak_rss_mib"),
                    ours.learned_tokens_per_s / f("learned_tokens_per_s")
                );
            }
        }
        if scratch.exists() {
            std::fs::remove_dir_all(&scratch)?;
        }
    }
    Ok(())
}
