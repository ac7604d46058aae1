//! A data mixture that changes over training: stages, each until a token count or a step, with
//! its own weights over named datasets, and per-dataset caps on repetition (Phi-3's staged
//! mixtures; OLMo's source mixtures with `target_ratio` and `max_repetition_ratio`).
//!
//! Within a stage the datasets are interleaved by smooth weighted round-robin (each draw goes to
//! the dataset furthest behind its share), so every dataset gives its share of the stage's
//! windows to within one window — a plan that is met, not approximated by chance — and each
//! dataset's windows come from its own seeded, per-epoch shuffle. A dataset that reaches its cap
//! (`max_epochs` passes over its windows) leaves the rotation and the others share its place.
//! Stage boundaries fall on optimizer steps (a batch never mixes two stages). The whole plan is
//! simulated when the curriculum is built, so a stage that would run out of data is an error
//! before training starts, and the state (one counter set and one sampler per dataset) resumes
//! exactly.
//!
//! ```
//! use phi_data::TokenDataset;
//! use phi_data::curriculum::{Curriculum, Source, StageSpec};
//! let web = TokenDataset::from_tokens((0..10_000).collect());
//! let books = TokenDataset::from_tokens((0..4_000).collect());
//! let stages = vec![
//!     StageSpec::until_tokens("broad", 48_000, [("web", 0.8), ("books", 0.2)]),
//!     StageSpec::rest("anneal", [("books", 1.0)]),
//! ];
//! let sources = vec![Source::new("web", web), Source::new("books", books).max_epochs(8.0)];
//! // seq_len 16, 4 windows per optimizer step, 1000 steps.
//! let c = Curriculum::new(sources, stages, 16, 4, 1000).unwrap();
//! let mut s = c.sampler(0);
//! let batch = s.next_batch(4);
//! assert_eq!(batch.len(), 4 * 17);
//! assert_eq!(c.stage_bounds()[0], (0, 750)); // 48,000 tokens = 750 steps of 4 × 16
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::sampler::{SamplerState, TokenDataset, TokenSampler, splitmix};

/// A named dataset of the curriculum.
pub struct Source {
    pub name: String,
    pub data: TokenDataset,
    /// At most this many passes over the dataset's windows in the whole run (`None`: no cap).
    pub max_epochs: Option<f64>,
}

impl Source {
    pub fn new(name: &str, data: TokenDataset) -> Self {
        Source { name: name.into(), data, max_epochs: None }
    }

    pub fn max_epochs(mut self, e: f64) -> Self {
        self.max_epochs = Some(e);
        self
    }
}

/// One stage: its weights over the sources (by name; missing means 0), until a cumulative token
/// count or step (the last stage may name neither: it runs to the end of training).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub name: String,
    /// The stage ends once training has seen this many tokens in all (cumulative, from step 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_tokens: Option<u64>,
    /// The stage ends after this optimizer step (cumulative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_step: Option<usize>,
    pub weights: BTreeMap<String, f64>,
}

impl StageSpec {
    pub fn until_tokens<const N: usize>(name: &str, tokens: u64, weights: [(&str, f64); N]) -> Self {
        StageSpec { name: name.into(), until_tokens: Some(tokens), until_step: None, weights: weights.iter().map(|(k, v)| (k.to_string(), *v)).collect() }
    }

    pub fn until_step<const N: usize>(name: &str, step: usize, weights: [(&str, f64); N]) -> Self {
        StageSpec { name: name.into(), until_tokens: None, until_step: Some(step), weights: weights.iter().map(|(k, v)| (k.to_string(), *v)).collect() }
    }

    /// A last stage that runs to the end of training.
    pub fn rest<const N: usize>(name: &str, weights: [(&str, f64); N]) -> Self {
        StageSpec { name: name.into(), until_tokens: None, until_step: None, weights: weights.iter().map(|(k, v)| (k.to_string(), *v)).collect() }
    }
}

/// Sources, stages resolved to step ranges, and the plan they give.
pub struct Curriculum {
    sources: Vec<Source>,
    stages: Vec<StageSpec>,
    /// `[start, end)` optimizer steps of each stage.
    bounds: Vec<(usize, usize)>,
    /// Per stage, per source weight (0 where the stage does not use it).
    weights: Vec<Vec<f64>>,
    /// Per source, the most windows it may give (`max_epochs × windows`).
    caps: Vec<u64>,
    seq_len: usize,
    windows_per_step: usize,
    /// Windows per stage per source, as the run will draw them.
    plan: Vec<Vec<u64>>,
}

/// A curriculum over prepared datasets, as data (serde): the datasets by name, the stages,
/// whose validation split to use, and whether the learning rate anneals over the last stage.
/// [`load_curriculum`] opens it; dataset paths are relative to the folder it is given. The `phi`
/// tool reads it from a TOML file (`phi train --curriculum cur.toml`, paths relative to the
/// file):
///
/// ```toml
/// validation = "code"   # top-level keys before the tables; default: the first dataset
/// anneal = true         # constant learning rate after warmup, linear to 0 over the last stage
///
/// [[datasets]]
/// name = "code"
/// path = "data/code"
///
/// [[datasets]]
/// name = "exercises"
/// path = "data/exercises"
/// max_epochs = 3.0      # at most three passes over it in the whole run
///
/// [[stages]]
/// name = "broad"
/// until_tokens = 2_000_000
/// weights = { code = 0.9, exercises = 0.1 }
///
/// [[stages]]
/// name = "anneal"
/// weights = { code = 0.5, exercises = 0.5 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurriculumSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<String>,
    #[serde(default)]
    pub anneal: bool,
    pub datasets: Vec<DatasetEntry>,
    pub stages: Vec<StageSpec>,
}

/// A prepared dataset of a [`CurriculumSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    pub name: String,
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_epochs: Option<f64>,
}

/// A [`CurriculumSpec`]'s datasets opened and its plan built.
pub struct LoadedCurriculum {
    pub curriculum: Curriculum,
    pub validation: TokenDataset,
    pub tokenizer: crate::Tokenizer,
    pub anneal: bool,
    /// `(name, folder, train tokens)` of each dataset.
    pub datasets: Vec<(String, PathBuf, u64)>,
}

/// Opens the prepared datasets of `file` (their paths relative to `base`; verified; all
/// tokenized with one tokenizer) into a curriculum for a run of `max_steps` steps of
/// `windows_per_step` windows of `seq_len` tokens.
pub fn load_curriculum(file: CurriculumSpec, base: &Path, seq_len: usize, windows_per_step: usize, max_steps: usize) -> Result<LoadedCurriculum, DataError> {
    if file.datasets.is_empty() || file.stages.is_empty() {
        return Err(DataError::Invalid("a curriculum needs at least one dataset and one stage".into()));
    }
    let mut sources = Vec::new();
    let mut datasets = Vec::new();
    let mut first_tokenizer: Option<(PathBuf, Vec<u8>)> = None;
    let mut validation = None;
    let mut tokenizer = None;
    for d in &file.datasets {
        let dir = base.join(&d.path);
        let m = crate::Manifest::read(&dir)?;
        let tok_path = dir.join(&m.tokenizer.file);
        let bytes = std::fs::read(&tok_path).map_err(|e| DataError::io(&tok_path, e))?;
        match &first_tokenizer {
            Some((p, b)) if *b != bytes => {
                return Err(DataError::Invalid(format!("{} and {} were tokenized with different tokenizers: a curriculum needs one", p.display(), dir.display())));
            }
            Some(_) => {}
            None => {
                first_tokenizer = Some((dir.clone(), bytes));
                tokenizer = Some(m.tokenizer(&dir)?);
            }
        }
        if file.validation.as_ref().map_or(validation.is_none(), |v| v == &d.name) {
            validation = Some(m.dataset(&dir, "validation")?);
        }
        let train = m.dataset(&dir, "train")?;
        datasets.push((d.name.clone(), dir.clone(), train.num_tokens() as u64));
        let mut s = Source::new(&d.name, train);
        s.max_epochs = d.max_epochs;
        sources.push(s);
    }
    let validation = validation.ok_or_else(|| DataError::Invalid(format!("validation = \"{}\" is not one of the datasets", file.validation.clone().unwrap_or_default())))?;
    let curriculum = Curriculum::new(sources, file.stages, seq_len, windows_per_step, max_steps)?;
    Ok(LoadedCurriculum { curriculum, validation, tokenizer: tokenizer.expect("at least one dataset"), anneal: file.anneal, datasets })
}

/// Where a [`CurriculumSampler`] is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurriculumState {
    pub seed: u64,
    /// Windows drawn so far.
    pub draws: u64,
    /// The round-robin credit of each source in the current stage.
    pub credit: Vec<f64>,
    /// Windows each source gave, per stage.
    pub per_stage: Vec<Vec<u64>>,
    pub samplers: Vec<SamplerState>,
}

fn invalid(m: String) -> DataError {
    DataError::Invalid(format!("curriculum: {m}"))
}

impl Curriculum {
    /// `seq_len`: tokens the model sees per window (a window is `seq_len + 1` tokens: its targets
    /// are shifted by one);
    /// `windows_per_step`: batch size × gradient accumulation; `max_steps`: the run's length.
    pub fn new(sources: Vec<Source>, stages: Vec<StageSpec>, seq_len: usize, windows_per_step: usize, max_steps: usize) -> Result<Self, DataError> {
        if sources.is_empty() || stages.is_empty() {
            return Err(invalid("needs at least one dataset and one stage".into()));
        }
        if seq_len == 0 || windows_per_step == 0 || max_steps == 0 {
            return Err(invalid(format!("seq_len ({seq_len}), windows per step ({windows_per_step}) and max_steps ({max_steps}) must be positive")));
        }
        let mut caps = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            if sources[..i].iter().any(|o| o.name == s.name) {
                return Err(invalid(format!("dataset `{}` is named twice", s.name)));
            }
            let windows = s.data.num_windows(seq_len) as u64;
            if windows == 0 {
                return Err(invalid(format!("dataset `{}` has {} tokens, fewer than one window of {}", s.name, s.data.num_tokens(), seq_len + 1)));
            }
            caps.push(match s.max_epochs {
                None => u64::MAX,
                Some(e) if e.is_finite() && e > 0.0 => (e * windows as f64).floor().max(1.0) as u64,
                Some(e) => return Err(invalid(format!("dataset `{}`: max_epochs = {e} must be a positive number", s.name))),
            });
        }
        let tokens_per_step = (windows_per_step * seq_len) as u64;
        let mut bounds = Vec::new();
        let mut weights = Vec::new();
        let mut start = 0usize;
        for (i, st) in stages.iter().enumerate() {
            let last = i + 1 == stages.len();
            let end = match (st.until_tokens, st.until_step) {
                (Some(_), Some(_)) => return Err(invalid(format!("stage `{}` names both until_tokens and until_step", st.name))),
                (Some(t), None) => t.div_ceil(tokens_per_step) as usize,
                (None, Some(s)) => s,
                (None, None) if last => max_steps,
                (None, None) => return Err(invalid(format!("stage `{}` needs until_tokens or until_step (only the last stage may run to the end)", st.name))),
            };
            if end <= start {
                return Err(invalid(format!("stage `{}` ends at step {end}, not after its start (step {start})", st.name)));
            }
            if end > max_steps {
                return Err(invalid(format!("stage `{}` ends at step {end}, after the run's last (max_steps = {max_steps})", st.name)));
            }
            if last && end < max_steps {
                return Err(invalid(format!("the last stage `{}` ends at step {end} but the run has {max_steps} steps: let it run to the end (no until_*) or add a stage", st.name)));
            }
            let mut w = vec![0.0; sources.len()];
            for (name, &v) in &st.weights {
                let Some(k) = sources.iter().position(|s| &s.name == name) else {
                    return Err(invalid(format!("stage `{}` weighs `{name}`, which is not a dataset (have: {})", st.name, sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "))));
                };
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(format!("stage `{}`: weight {v} of `{name}` must be a number >= 0", st.name)));
                }
                w[k] = v;
            }
            if w.iter().all(|&v| v == 0.0) {
                return Err(invalid(format!("stage `{}` gives no dataset a positive weight", st.name)));
            }
            bounds.push((start, end));
            weights.push(w);
            start = end;
        }
        let mut c = Curriculum { sources, stages, bounds, weights, caps, seq_len, windows_per_step, plan: Vec::new() };
        // Simulate the whole run: the plan, and any stage that would run dry.
        let mut state = c.fresh_state(0);
        for _ in 0..(max_steps * windows_per_step) as u64 {
            c.pick(&mut state)?;
        }
        c.plan = state.per_stage;
        Ok(c)
    }

    /// `[start, end)` optimizer steps of each stage.
    pub fn stage_bounds(&self) -> Vec<(usize, usize)> {
        self.bounds.clone()
    }

    pub fn stage_names(&self) -> Vec<&str> {
        self.stages.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn source_names(&self) -> Vec<&str> {
        self.sources.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Windows per optimizer step the plan was built for.
    pub fn windows_per_step(&self) -> usize {
        self.windows_per_step
    }

    /// The run length the plan was built for.
    pub fn max_steps(&self) -> usize {
        self.bounds.last().map_or(0, |b| b.1)
    }

    /// Windows per stage per source, as the run draws them.
    pub fn plan(&self) -> &[Vec<u64>] {
        &self.plan
    }

    /// Tokens in all the datasets.
    pub fn train_tokens(&self) -> usize {
        self.sources.iter().map(|s| s.data.num_tokens()).sum()
    }

    /// Every id of every dataset is below this.
    pub fn vocab_bound(&self) -> usize {
        self.sources.iter().map(|s| s.data.vocab_bound()).max().unwrap_or(0)
    }

    /// Identifies the data and the plan (datasets' checksums, names, caps, stages).
    pub fn fingerprint(&self) -> String {
        let sources: Vec<String> = self.sources.iter().zip(&self.caps).map(|(s, c)| format!("{}={:016x}/cap{c}", s.name, s.data.fingerprint())).collect();
        let stages: Vec<String> = self.stages.iter().zip(&self.bounds).map(|(s, b)| format!("{}@{}-{}:{:?}", s.name, b.0, b.1, s.weights)).collect();
        format!("curriculum [{}] [{}]", sources.join(","), stages.join(","))
    }

    fn fresh_state(&self, seed: u64) -> CurriculumState {
        let n = self.sources.len();
        CurriculumState {
            seed,
            draws: 0,
            credit: vec![0.0; n],
            per_stage: vec![vec![0; n]; self.stages.len()],
            samplers: (0..n).map(|i| SamplerState { seed: splitmix(seed ^ ((i as u64 + 1) << 40)), epoch: 0, cursor: 0 }).collect(),
        }
    }

    /// The stage of the draw numbered `draw`.
    fn stage_of(&self, draw: u64) -> usize {
        let step = (draw / self.windows_per_step as u64) as usize;
        self.bounds.iter().position(|&(_, e)| step < e).unwrap_or(self.bounds.len() - 1)
    }

    /// The source of the next draw (smooth weighted round-robin over the stage's sources that
    /// are under their cap); advances the counters.
    fn pick(&self, s: &mut CurriculumState) -> Result<usize, DataError> {
        let stage = self.stage_of(s.draws);
        if s.draws > 0 && self.stage_of(s.draws - 1) != stage {
            s.credit.iter_mut().for_each(|c| *c = 0.0);
        }
        let drawn = |k: usize| s.per_stage.iter().map(|v| v[k]).sum::<u64>();
        let active: Vec<usize> = (0..self.sources.len()).filter(|&k| self.weights[stage][k] > 0.0 && drawn(k) < self.caps[k]).collect();
        if active.is_empty() {
            return Err(invalid(format!(
                "stage `{}` runs out of data at step {}: every dataset it draws from has reached its max_epochs cap ({})",
                self.stages[stage].name,
                s.draws / self.windows_per_step as u64,
                (0..self.sources.len())
                    .filter(|&k| self.weights[stage][k] > 0.0)
                    .map(|k| format!("{}: {} windows", self.sources[k].name, self.caps[k]))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let total: f64 = active.iter().map(|&k| self.weights[stage][k]).sum();
        for &k in &active {
            s.credit[k] += self.weights[stage][k];
        }
        // The largest credit; the first on a tie.
        let best = active.iter().copied().fold(active[0], |b, k| if s.credit[k] > s.credit[b] { k } else { b });
        s.credit[best] -= total;
        s.per_stage[stage][best] += 1;
        s.draws += 1;
        Ok(best)
    }

    /// A fresh sampler.
    pub fn sampler(&self, seed: u64) -> CurriculumSampler<'_> {
        self.resume(&self.fresh_state(seed)).expect("a fresh state matches its curriculum")
    }

    /// A sampler continuing from `state`.
    pub fn resume(&self, state: &CurriculumState) -> Result<CurriculumSampler<'_>, DataError> {
        let n = self.sources.len();
        if state.samplers.len() != n || state.credit.len() != n || state.per_stage.len() != self.stages.len() || state.per_stage.iter().any(|v| v.len() != n) {
            return Err(invalid(format!("the sampler state is for another curriculum ({} datasets, {} stages expected)", n, self.stages.len())));
        }
        let samplers = self.sources.iter().zip(&state.samplers).map(|(s, st)| TokenSampler::resume(s.data.num_windows(self.seq_len), *st)).collect();
        Ok(CurriculumSampler { c: self, state: state.clone(), samplers })
    }
}

/// Draws windows by the curriculum.
pub struct CurriculumSampler<'a> {
    c: &'a Curriculum,
    state: CurriculumState,
    samplers: Vec<TokenSampler>,
}

/// Tokens one source gave in one stage, against its share of the stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSourceTokens {
    pub stage: String,
    pub source: String,
    pub tokens: u64,
    /// The stage's tokens so far × the source's weight share (before caps).
    pub target: f64,
}

impl CurriculumSampler<'_> {
    pub fn state(&self) -> CurriculumState {
        let mut s = self.state.clone();
        s.samplers = self.samplers.iter().map(TokenSampler::state).collect();
        s
    }

    /// The stage the last window came from (the first before any draw).
    pub fn stage(&self) -> &str {
        &self.c.stages[self.c.stage_of(self.state.draws.saturating_sub(1))].name
    }

    /// Appends the next window to `out`; returns its source. Panics only where the plan said
    /// the run would run out, which [`Curriculum::new`] refused.
    pub fn next_window(&mut self, out: &mut Vec<u32>) -> usize {
        let k = self.c.pick(&mut self.state).expect("the plan was checked when the curriculum was built");
        let w = self.samplers[k].next_window();
        self.c.sources[k].data.read_window(w, self.c.seq_len, out);
        k
    }

    /// The next batch, row-major `[batch, seq_len + 1]`.
    pub fn next_batch(&mut self, batch: usize) -> Vec<u32> {
        let mut rows = Vec::with_capacity(batch * (self.c.seq_len + 1));
        for _ in 0..batch {
            self.next_window(&mut rows);
        }
        rows
    }

    /// Tokens each source gave in each stage so far, with its weighted share.
    pub fn report(&self) -> Vec<StageSourceTokens> {
        let mut out = Vec::new();
        for (i, st) in self.c.stages.iter().enumerate() {
            let stage_windows: u64 = self.state.per_stage[i].iter().sum();
            let total: f64 = self.c.weights[i].iter().sum();
            for (k, src) in self.c.sources.iter().enumerate() {
                if self.c.weights[i][k] == 0.0 && self.state.per_stage[i][k] == 0 {
                    continue;
                }
                out.push(StageSourceTokens {
                    stage: st.name.clone(),
                    source: src.name.clone(),
                    tokens: self.state.per_stage[i][k] * self.c.seq_len as u64,
                    target: stage_windows as f64 * self.c.weights[i][k] / total * self.c.seq_len as f64,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(base: u32, n: u32) -> TokenDataset {
        TokenDataset::from_tokens((base..base + n).collect())
    }

    #[test]
    fn each_stage_gives_each_dataset_its_share_within_one_window() {
        let sources = vec![Source::new("a", data(0, 5000)), Source::new("b", data(10_000, 5000)), Source::new("c", data(20_000, 5000))];
        let stages = vec![
            StageSpec::until_step("one", 100, [("a", 0.7), ("b", 0.3)]),
            StageSpec::until_tokens("two", 300 * 8 * 8, [("a", 1.0), ("b", 1.0), ("c", 2.0)]),
            StageSpec::rest("three", [("c", 1.0)]),
        ];
        let c = Curriculum::new(sources, stages, 8, 8, 400).unwrap();
        assert_eq!(c.stage_bounds(), vec![(0, 100), (100, 300), (300, 400)]);
        let mut s = c.sampler(3);
        let mut from = vec![vec![0u64; 3]; 3];
        for step in 0..400 {
            for _ in 0..8 {
                let mut w = Vec::new();
                let k = s.next_window(&mut w);
                assert_eq!(w[0] / 10_000, k as u32, "the window comes from the source it names");
                from[c.stage_of((step * 8) as u64)][k] += 1;
            }
        }
        assert_eq!(from, c.plan());
        assert_eq!(from, vec![vec![560, 240, 0], vec![400, 400, 800], vec![0, 0, 800]]);
        for r in s.report() {
            assert!((r.tokens as f64 - r.target).abs() <= 8.0, "{r:?}");
        }
    }

    #[test]
    fn caps_redistribute_and_a_stage_that_runs_dry_is_refused() {
        // `b` has 10 windows of 8 (+1): 81 tokens and may be seen twice: 20 windows in all.
        let mk = || vec![Source::new("a", data(0, 5000)), Source::new("b", data(10_000, 81)).max_epochs(2.0)];
        let c = Curriculum::new(mk(), vec![StageSpec::rest("all", [("a", 1.0), ("b", 1.0)])], 8, 4, 25).unwrap();
        assert_eq!(c.plan(), &[vec![80, 20]]);
        let e = Curriculum::new(mk(), vec![StageSpec::rest("b only", [("b", 1.0)])], 8, 4, 25).err().unwrap().to_string();
        assert!(e.contains("stage `b only` runs out of data at step 5") && e.contains("b: 20 windows"), "{e}");
        for (stages, want) in [
            (vec![StageSpec::rest("x", [("nope", 1.0)])], "not a dataset"),
            (vec![StageSpec::rest("x", [("a", 0.0)])], "no dataset a positive weight"),
            (vec![StageSpec::until_step("x", 30, [("a", 1.0)])], "after the run's last"),
            (vec![StageSpec::until_step("x", 10, [("a", 1.0)])], "let it run to the end"),
            (vec![StageSpec::rest("x", [("a", 1.0)]), StageSpec::rest("y", [("a", 1.0)])], "needs until_tokens or until_step"),
            (vec![StageSpec::until_step("x", 10, [("a", 1.0)]), StageSpec::until_step("y", 5, [("a", 1.0)])], "not after its start"),
        ] {
            let e = Curriculum::new(mk(), stages, 8, 4, 25).err().unwrap().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn resumes_exactly_across_a_stage_boundary() {
        let mk = || {
            let sources = vec![Source::new("a", data(0, 3000)), Source::new("b", data(10_000, 3000))];
            Curriculum::new(sources, vec![StageSpec::until_step("one", 10, [("a", 0.5), ("b", 0.5)]), StageSpec::rest("two", [("b", 0.9), ("a", 0.1)])], 8, 2, 20).unwrap()
        };
        let c = mk();
        let mut straight = c.sampler(5);
        let all: Vec<Vec<u32>> = (0..40).map(|_| straight.next_batch(1)).collect();
        for cut in [19, 20, 21] {
            let mut a = c.sampler(5);
            for _ in 0..cut {
                a.next_batch(1);
            }
            let state: CurriculumState = serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
            let c2 = mk();
            let mut b = c2.resume(&state).unwrap();
            let rest: Vec<Vec<u32>> = (cut..40).map(|_| b.next_batch(1)).collect();
            assert_eq!(rest, all[cut..], "cut at window {cut}");
            assert_eq!(b.state(), straight.state());
        }
    }
}
