//! `phi data …`: the data pipeline's flags and report printing (the pipeline is `phi-data`'s).

use std::path::{Path, PathBuf};

use phi_data::filters::DocKind;
use phi::device::Backend;
use phi_data::prepare::{Input, Manifest, PrepareConfig, ScoreFilter, TokenizerSource};
use phi_data::quality::NearDup;

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Raw corpus → quality filters → exact/near dedup → decontamination → token shards.
    Prepare(PrepareArgs),
    /// Train a byte-level BPE tokenizer (with <|endoftext|>) on files or JSONL.
    TrainTokenizer {
        #[command(flatten)]
        input: InputArgs,
        #[arg(long)]
        vocab_size: usize,
        /// Where to write tokenizer.json.
        #[arg(long, default_value = "tokenizer.json")]
        out: PathBuf,
    },
    /// Labels for the quality classifier from any OpenAI-compatible endpoint (`phi serve`, vLLM,
    /// llama.cpp, a hosted API): a seeded sample of documents scored on a versioned 0–5 rubric,
    /// appended to --out as answers arrive; a rerun never asks again for what it has.
    Annotate(AnnotateArgs),
    /// Synthetic textbook material or exercises from any OpenAI-compatible endpoint (or a local
    /// model): seeded topic × audience × style prompts, a resumable log, exercises kept only if
    /// their solution passes their own tests in the sandbox, MinHash dedup, HumanEval
    /// decontamination; --out/kept.jsonl feeds `phi data prepare --jsonl`.
    Synth(SynthArgs),
    /// The learned quality filter: train it on labels, then `phi data prepare --classifier`.
    Classifier {
        #[command(subcommand)]
        cmd: ClassifierCommand,
    },
    /// Summary of a prepared dataset; every shard is verified (header, size, checksum, ids).
    Inspect {
        /// A folder written by `phi data prepare`.
        dir: PathBuf,
    },
}

/// The inputs: `--input DIR` with `--glob`/`--exclude`, and/or `--jsonl FILE`, and/or
/// `--parquet GLOB`.
#[derive(clap::Args, Debug)]
pub struct InputArgs {
    /// Folders whose files matching --glob are documents (one per file).
    #[arg(long)]
    pub input: Vec<PathBuf>,
    /// Glob relative to each --input folder.
    #[arg(long, default_value = "**/*.py")]
    pub glob: String,
    /// Globs (relative to the --input folder) of files to leave out, e.g. '**/test/**'.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// JSONL files (or .jsonl.gz), one document per record.
    #[arg(long)]
    pub jsonl: Vec<PathBuf>,
    /// Parquet files, one document per row (the hub's dataset shards): a file, a folder (every
    /// .parquet under it) or a glob such as 'DIR/**/*.parquet' (quoted, so the shell leaves it).
    #[arg(long)]
    pub parquet: Vec<String>,
    /// The JSONL field or Parquet column that holds the document.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Each --input folder is a dataset laid out as the hub lays one out (data/train-00000-of-00004.parquet,
    /// default/train/0000.parquet, …): read this split's Parquet files (with --text-field).
    #[arg(long)]
    pub split: Option<String>,
    /// Parquet: a string column that names each document in the report (e.g. The Stack's
    /// max_stars_repo_path; default: file:row N).
    #[arg(long)]
    pub path_field: Option<String>,
    /// What JSONL and Parquet documents are (python gets the code filters).
    #[arg(long, value_enum, default_value_t = Kind::Text)]
    pub kind: Kind,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Kind {
    Python,
    Text,
}

impl InputArgs {
    fn inputs(&self) -> Result<Vec<Input>, phi_data::DataError> {
        let kind = match self.kind {
            Kind::Python => DocKind::Python,
            Kind::Text => DocKind::Text,
        };
        let folders = self
            .input
            .iter()
            .map(|root| match &self.split {
                // A dataset in the hub's layout: its split's Parquet files.
                Some(split) => Input::hub_split(root, split, &self.text_field, kind, self.path_field.as_deref()),
                None => Ok(Input::Files { root: root.clone(), pattern: self.glob.clone(), exclude: self.exclude.clone() }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(folders
            .into_iter()
            .chain(self.jsonl.iter().map(|p| Input::Jsonl { path: p.clone(), field: self.text_field.clone(), kind }))
            .chain(self.parquet.iter().map(|g| Input::parquet(g, &self.text_field, kind, self.path_field.as_deref())))
            .collect())
    }
}

#[derive(clap::Args, Debug)]
pub struct AnnotateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Or a prepared dataset's kept documents (`phi data prepare --keep-documents`).
    #[arg(long)]
    pub prepared: Option<PathBuf>,
    /// The API base, e.g. http://127.0.0.1:8000/v1 (the key comes from OPENAI_API_KEY if set).
    #[arg(long, required_unless_present = "local", conflicts_with = "local", requires = "model")]
    pub endpoint: Option<String>,
    /// The model name the endpoint serves.
    #[arg(long, requires = "endpoint")]
    pub model: Option<String>,
    /// Judge with this model folder in-process instead (served on 127.0.0.1, its requests
    /// decoded together as one continuous batch).
    #[arg(long)]
    pub local: Option<PathBuf>,
    /// Documents to sample.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Your own prompt (a text file holding `{document}` once) instead of the built-in
    /// educational-value rubric for code (edu-code-v1).
    #[arg(long)]
    pub prompt: Option<PathBuf>,
    /// Requests in flight at once (default 4; with --local 16, the batch's rows).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Retries per request on connection errors, 429 and 5xx (exponential backoff).
    #[arg(long, default_value_t = 4)]
    pub retries: usize,
    /// Documents are cut to this many characters.
    #[arg(long, default_value_t = 6000)]
    pub max_doc_chars: usize,
    /// Tokens the judge may answer with.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[arg(long, default_value = "annotations.jsonl")]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// textbook or exercise.
    #[arg(long)]
    pub kind: phi::synth::SynthKind,
    /// Prompts to ask (a rerun with a larger --n asks only the new ones).
    #[arg(long, default_value_t = 100)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A TOML file with your own `topics`, `audiences`, `styles`, `verbs`, `nouns` lists.
    #[arg(long)]
    pub lists: Option<PathBuf>,
    /// The API base, e.g. http://127.0.0.1:8000/v1 (the key comes from OPENAI_API_KEY if set).
    #[arg(long, required_unless_present = "local", conflicts_with = "local")]
    pub endpoint: Option<String>,
    /// The model name the endpoint serves.
    #[arg(long, requires = "endpoint")]
    pub model: Option<String>,
    /// Generate in-process with this model folder instead (served on 127.0.0.1).
    #[arg(long)]
    pub local: Option<PathBuf>,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Tokens an answer may take (default 1024; with --local at most what the model's context
    /// leaves after the longest prompt, and a larger value is refused before any request).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Requests in flight at once (default 4; with --local 16, the batch's rows).
    #[arg(long)]
    pub concurrency: Option<usize>,
    #[arg(long, default_value_t = 4)]
    pub retries: usize,
    /// Textbook material shorter than this many characters is dropped.
    #[arg(long, default_value_t = 300)]
    pub min_chars: usize,
    /// The output folder: generations.jsonl, kept.jsonl, report.json.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClassifierCommand {
    /// Embed labelled documents with a Phi model, cross-validate a random forest and a logistic
    /// head (k folds), fit both on all labels and save them with the model's identity.
    Train(ClassifierTrainArgs),
}

#[derive(clap::Args, Debug)]
pub struct ClassifierTrainArgs {
    /// `phi data annotate` output (records with `text` and `score`; null scores are skipped).
    #[arg(long)]
    pub annotations: Vec<PathBuf>,
    /// Your own labels: JSONL records `{"text": …, "score": 3}` or `{"path": "file.py", "score": 3}`
    /// (paths relative to the JSONL file); later records relabel earlier ones.
    #[arg(long)]
    pub labels: Vec<PathBuf>,
    /// The model folder whose embeddings the classifier learns on (config, weights, tokenizer.json).
    #[arg(long, value_parser = crate::args::model_dir())]
    pub embed_model: PathBuf,
    /// The classifier folder to write (classifier.json, report.txt).
    #[arg(long)]
    pub out: PathBuf,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Labels at least this are "keep" (the prepare stage then keeps scores >= it - 0.5).
    #[arg(long, default_value_t = 3.0)]
    pub keep_threshold: f32,
    /// Trees of the random forest.
    #[arg(long, default_value_t = 100)]
    pub trees: usize,
    /// L2 strength of the logistic head.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f32,
    /// The head that scores by default (default: the better cross-validated F1 at keep).
    #[arg(long)]
    pub head: Option<phi::classify::HeadKind>,
    /// Which hidden state to embed with (0 = embeddings; default: the last, after the final norm).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Tokens of a document that are embedded (default: the model's context).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Chunks per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: Backend,
}

#[derive(clap::Args, Debug)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output folder (shards, tokenizer.json, manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Use this tokenizer.json instead of training one.
    #[arg(long, conflicts_with = "vocab_size")]
    pub tokenizer: Option<PathBuf>,
    /// Train a byte-level BPE of this size on the kept training documents.
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// A TOML file with any PrepareConfig keys (`[filters]` min_bytes = 500, `[near_dedup]`
    /// threshold = 0.8, …); flags given on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Skip the heuristic quality filters.
    #[arg(long)]
    pub no_filters: bool,
    /// Skip exact dedup.
    #[arg(long)]
    pub no_exact_dedup: bool,
    /// Skip near dedup.
    #[arg(long)]
    pub no_near_dedup: bool,
    /// Jaccard similarity at which a document is a near duplicate.
    #[arg(long)]
    pub near_threshold: Option<f64>,
    /// Do not decontaminate against the built-in HumanEval.
    #[arg(long)]
    pub no_humaneval: bool,
    /// More evaluation sets to decontaminate against (JSONL or text).
    #[arg(long)]
    pub eval_set: Vec<PathBuf>,
    /// n of the shared n-gram that marks contamination.
    #[arg(long)]
    pub ngram: Option<usize>,
    #[arg(long)]
    pub validation_fraction: Option<f64>,
    /// Tokens per shard (closed at the next document boundary).
    #[arg(long)]
    pub shard_tokens: Option<usize>,
    /// Keep the filtered documents as documents.jsonl next to the shards (with their scores
    /// when the classifier stage runs).
    #[arg(long)]
    pub keep_documents: bool,
    /// The classifier stage: score every document left after decontamination with this
    /// classifier (`phi data classifier train`) and drop those below --min-score.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Keep scores at least this (default: the classifier's, half a class below its keep
    /// threshold). Without --classifier: filter on the `score` the JSONL inputs already carry
    /// (a prepared dataset's documents.jsonl), without scoring again.
    #[arg(long, allow_hyphen_values = true)]
    pub min_score: Option<f32>,
    /// The classifier's embedding model, if it moved since training (its files must be the same).
    #[arg(long, value_parser = crate::args::model_dir())]
    pub embed_model: Option<PathBuf>,
    /// Score with this head instead of the classifier's choice.
    #[arg(long)]
    pub classifier_head: Option<phi::classify::HeadKind>,
    /// Documents per forward pass of the classifier stage.
    #[arg(long, default_value_t = 16)]
    pub classifier_batch: usize,
    /// Where the classifier's embedding model runs.
    #[arg(long, default_value = "cpu")]
    pub device: Backend,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Split the work into N tasks (`--stages` lists the stages): without --stage, every stage
    /// runs here, each stage's tasks as processes, --workers at a time; with --stage, one task.
    /// The result is the same as one process's, whatever N.
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Task processes at a time (default: one per CPU core, at most N); the cores are shared
    /// out among them.
    #[arg(long, requires = "tasks")]
    pub workers: Option<usize>,
    /// Print the stages of a run as --tasks N in order, with each stage's task count.
    #[arg(long, requires = "tasks", conflicts_with = "stage")]
    pub stages: bool,
    /// Run one task of this stage (what a cluster's array job runs, one stage after another).
    #[arg(long, requires = "tasks")]
    pub stage: Option<String>,
    /// Which task of --stage, from 0 (default: $SLURM_ARRAY_TASK_ID).
    #[arg(long, requires = "stage")]
    pub task: Option<usize>,
}

impl PrepareArgs {
    /// The config: defaults, then the TOML file, then the flags.
    pub fn config(&self) -> Result<PrepareConfig, String> {
        let tokenizer = match &self.tokenizer {
            Some(p) => TokenizerSource::File(p.clone()),
            None => TokenizerSource::Train { vocab_size: self.vocab_size },
        };
        let mut c = PrepareConfig::new(self.input.inputs().map_err(|e| e.to_string())?, tokenizer);
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut base = toml::Value::try_from(&c).map_err(|e| e.to_string())?;
            let over: toml::Value = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let schema = phi::overrides::Schema::of::<PrepareConfig>()
                .with::<phi_data::filters::QualityFilters>("filters")
                .with::<NearDup>("near_dedup")
                .with::<ScoreFilter>("classifier");
            phi::overrides::check_keys(&over, &schema).map_err(|e| format!("{}: {e}", path.display()))?;
            phi::recipes::merge_toml(&mut base, over);
            c = base.try_into().map_err(|e: toml::de::Error| format!("{}: {e}", path.display()))?;
            if c.inputs.is_empty() {
                c.inputs = self.input.inputs().map_err(|e| e.to_string())?;
            }
        }
        if c.inputs.is_empty() {
            return Err("no input: give --input DIR (with --glob), --jsonl FILE or --parquet GLOB".into());
        }
        if self.no_filters {
            c.filters = None;
        }
        if self.no_exact_dedup {
            c.exact_dedup = false;
        }
        if self.no_near_dedup {
            c.near_dedup = None;
        } else if let Some(t) = self.near_threshold {
            c.near_dedup = Some(NearDup { threshold: t, ..c.near_dedup.unwrap_or_default() });
        }
        if self.no_humaneval {
            c.decontaminate_humaneval = false;
        }
        c.eval_sets.extend(self.eval_set.iter().cloned());
        c.ngram = self.ngram.unwrap_or(c.ngram);
        c.validation_fraction = self.validation_fraction.unwrap_or(c.validation_fraction);
        c.shard_tokens = self.shard_tokens.unwrap_or(c.shard_tokens);
        c.keep_documents |= self.keep_documents;
        // The flags change only what they name of a `[classifier]` table from --config.
        if self.classifier.is_some() || self.min_score.is_some() {
            let f = c.classifier.get_or_insert(ScoreFilter { classifier: None, min_score: f32::NAN, head: None });
            if let Some(dir) = &self.classifier {
                f.classifier = Some(dir.clone());
            }
            if let Some(m) = self.min_score {
                f.min_score = m;
            }
        }
        if let Some(f) = &mut c.classifier {
            match &f.classifier {
                Some(dir) => {
                    // The classifier's cut and head unless told otherwise.
                    let clf = phi::classify::Classifier::load(dir).map_err(|e| e.to_string())?;
                    if f.min_score.is_nan() {
                        f.min_score = clf.min_score;
                    }
                    let head = self.classifier_head.map(|h| h.to_string()).or(f.head.take()).unwrap_or_else(|| clf.head.to_string());
                    head.parse::<phi::classify::HeadKind>().map_err(|e| format!("classifier head: {e}"))?;
                    f.head = Some(head);
                }
                None if f.min_score.is_nan() => return Err("the classifier stage needs --classifier CLF, or --min-score to filter on stored scores".into()),
                None => {}
            }
        }
        if c.classifier.as_ref().is_none_or(|f| f.classifier.is_none()) && (self.embed_model.is_some() || self.classifier_head.is_some()) {
            return Err("--embed-model and --classifier-head go with --classifier".into());
        }
        Ok(c)
    }

    /// The classifier stage's scorer, when the config has a classifier.
    fn scorer(&self, c: &PrepareConfig) -> Result<Option<phi::classify::Scorer>, String> {
        let Some(f) = c.classifier.as_ref().filter(|f| f.classifier.is_some()) else { return Ok(None) };
        let dir = f.classifier.as_ref().expect("checked");
        let head = f.head.as_deref().map(str::parse).transpose().map_err(|e: phi::classify::ClassifyError| e.to_string())?;
        let device = self.device.device()?;
        phi::classify::Scorer::load(dir, self.embed_model.as_deref(), &device, head, self.classifier_batch).map(Some).map_err(|e| e.to_string())
    }
}

/// `phi data prepare --tasks N`: the stages (`--stages`), one task (`--stage S --task I`), or
/// every stage with this program's own processes as the tasks.
fn prepare_tasks(args: &PrepareArgs, config: &PrepareConfig, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    use phi_data::prepare::tasks::{self, TaskOutcome, TaskStage};
    if n == 0 {
        return Err("--tasks 0: give at least 1".into());
    }
    if args.stages {
        for s in tasks::stages(config) {
            println!("{:<10} {:>5} task(s)  {}", s.name(), s.tasks(n), s.what());
        }
        return Ok(());
    }
    if let Some(stage) = &args.stage {
        let stage: TaskStage = stage.parse()?;
        let task = match (args.task, std::env::var("SLURM_ARRAY_TASK_ID")) {
            (Some(t), _) => t,
            (None, Ok(id)) => id.trim().parse().map_err(|_| format!("SLURM_ARRAY_TASK_ID = {id:?}: not a task number"))?,
            (None, Err(_)) => return Err("--stage needs --task I (or SLURM_ARRAY_TASK_ID, as a Slurm array job has)".into()),
        };
        let scorer = if stage == TaskStage::Filter { args.scorer(config)? } else { None };
        let scorer = scorer.as_ref().map(|s| s as &dyn phi_data::prepare::DocumentScorer);
        match tasks::run_task(config, scorer, &args.out, n, stage, task)? {
            TaskOutcome::Ran(d) => {
                let memory = d.peak_memory_mb.map_or(String::new(), |mb| format!(", peak {mb:.0} MB"));
                println!("{stage} {}/{}: {} ({:.1}s{memory})", task + 1, stage.tasks(n), d.summary, d.seconds);
            }
            TaskOutcome::AlreadyDone(d) => println!("{stage} {}/{}: already done ({})", task + 1, stage.tasks(n), d.summary),
            TaskOutcome::AlreadyPrepared => println!("{} already holds this dataset", args.out.display()),
        }
        return Ok(());
    }
    // The local executor: each task is this program again with --stage and --task added; what
    // it prints comes back as a progress line on stderr, its error as the run's.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let workers = args.workers.unwrap_or(cores).clamp(1, n);
    let threads = (cores / workers).max(1).to_string();
    let exe = std::env::current_exe()?;
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let launch = |stage: TaskStage, task: usize| -> Result<(), phi_data::DataError> {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(&argv).args(["--stage", stage.name(), "--task", &task.to_string()]).stdin(std::process::Stdio::null());
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            cmd.env("RAYON_NUM_THREADS", &threads);
        }
        let out = cmd.output().map_err(|e| phi_data::DataError::io(&exe, e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(phi_data::DataError::Invalid(format!("{} ({})", err.trim().trim_start_matches("error: "), out.status)));
        }
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        Ok(())
    };
    let manifest = tasks::run_local(config, &args.out, n, workers, &launch)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest.report)?);
    } else {
        print!("{}", manifest.report.table());
        println!("wrote {} (tokenizer vocab {}, {}-byte tokens; {n} tasks)", args.out.join("manifest.json").display(), manifest.tokenizer.vocab_size, manifest.bytes_per_token);
    }
    Ok(())
}

pub fn run(cmd: DataCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        DataCommand::Prepare(args) => {
            let config = args.config()?;
            if let Some(n) = args.tasks {
                return prepare_tasks(&args, &config, n);
            }
            let scorer = args.scorer(&config)?;
            // Bars on stderr as the stages go (not with --json: its output is for programs).
            let bars = (!args.json).then(phi::progress::PrepareBars::new);
            let progress = bars.as_ref().map(|b| b as &dyn phi_data::PrepareProgress);
            let manifest = phi_data::prepare_with(&config, scorer.as_ref().map(|s| s as &dyn phi_data::prepare::DocumentScorer), &args.out, progress)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&manifest.report)?);
            } else {
                print!("{}", manifest.report.table());
                println!("wrote {} (tokenizer vocab {}, {}-byte tokens)", args.out.join("manifest.json").display(), manifest.tokenizer.vocab_size, manifest.bytes_per_token);
            }
        }
        DataCommand::TrainTokenizer { input, vocab_size, out } => {
            use phi_data::tokenizer::MIN_BPE_VOCAB;
            // Both refusals come before reading the corpus, not after training on it.
            if vocab_size < MIN_BPE_VOCAB {
                return Err(format!("--vocab-size {vocab_size}: a byte-level BPE needs at least {MIN_BPE_VOCAB} (256 bytes + <|endoftext|> + one merge)").into());
            }
            phi_data::tokenizer::check_replaceable(&out)?;
            let t = std::time::Instant::now();
            let files = phi_data::prepare::documents(&input.inputs()?)?;
            let tok = phi_data::Tokenizer::train_bpe(files.into_iter(), vocab_size)?;
            tok.save_replacing_only_ours(&out)?;
            println!("wrote {} (vocab {}, {:.1}s)", out.display(), tok.vocab_size(), t.elapsed().as_secs_f64());
            if tok.vocab_size() < vocab_size {
                eprintln!(
                    "warning: the vocabulary came out at {} tokens, not the {vocab_size} asked for: training stops when no pair of tokens occurs at least twice, and this corpus has no more (more text gives more)",
                    tok.vocab_size()
                );
            }
        }
        DataCommand::Annotate(a) => annotate(a)?,
        DataCommand::Synth(a) => synth(a)?,
        DataCommand::Classifier { cmd: ClassifierCommand::Train(a) } => train_classifier(a)?,
        DataCommand::Inspect { dir } => inspect(&dir)?,
    }
    Ok(())
}

/// Requests in flight: as given, else 4 against an endpoint (a polite client) and, against a
/// local model, the server's rows — its continuous batch decodes that many together.
fn concurrency(given: Option<usize>, local: bool) -> usize {
    given.unwrap_or(if local { phi::serve::DEFAULT_MAX_CONCURRENT } else { 4 })
}

fn annotate(a: AnnotateArgs) -> Result<(), Box<dyn std::error::Error>> {
    use phi::annotate::{AnnotateOptions, PromptTemplate};
    let inputs = a.input.inputs()?;
    let documents = match (&a.prepared, inputs.is_empty()) {
        (Some(dir), true) if !dir.join("documents.jsonl").is_file() => {
            return Err(format!("{}: no documents.jsonl (prepare with --keep-documents to keep them)", dir.display()).into());
        }
        (Some(dir), true) => phi_data::prepare::prepared_documents(dir)?,
        (None, false) => phi_data::prepare::documents_with_origin(&inputs)?,
        (Some(_), false) => return Err("give --prepared or --input/--jsonl/--parquet, not both".into()),
        (None, true) => return Err("nothing to annotate: give --input DIR, --jsonl FILE, --parquet GLOB or --prepared DATA".into()),
    };
    let prompt = match &a.prompt {
        Some(p) => PromptTemplate::from_file(p)?,
        None => PromptTemplate::builtin(),
    };
    // The judge: an endpoint, or a local folder served in-process for the run.
    let local = match &a.local {
        Some(dir) => Some(phi::serve::LocalServer::start(local_model(dir)?, phi::serve::Limits::default())?),
        None => None,
    };
    let client = match (&local, &a.endpoint, &a.model) {
        (Some(l), _, _) => phi::serve::client::Client::new(&l.url, &l.model, None),
        (None, Some(url), Some(model)) => phi::serve::client::Client::new(url, model, std::env::var("OPENAI_API_KEY").ok()),
        _ => return Err("give --endpoint URL --model NAME, or --local DIR".into()),
    };
    let opts = AnnotateOptions {
        n: a.n,
        seed: a.seed,
        concurrency: concurrency(a.concurrency, local.is_some()),
        retries: a.retries,
        max_doc_chars: a.max_doc_chars,
        max_tokens: a.max_tokens,
        ..AnnotateOptions::new(documents, client, prompt, a.out.clone())
    };
    println!("{} candidate documents; sampling {} (seed {}), prompt {}, judge `{}` at {}", opts.documents.len(), a.n, a.seed, opts.prompt.version, opts.client.model, opts.client.base);
    let bar = indicatif::ProgressBar::new(a.n.min(opts.documents.len()) as u64);
    let t = std::time::Instant::now();
    let r = phi::annotate::annotate(&opts, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    println!(
        "{} sampled: {} already answered, {} asked in {:.1}s ({} retried): {} scored, {} without a parsable score, {} failed",
        r.sampled,
        r.already,
        r.asked,
        t.elapsed().as_secs_f64(),
        r.retried,
        r.scored,
        r.unparsed,
        r.failed.len()
    );
    println!("score histogram 0..5: {:?}; tokens: {} prompt, {} completion", r.histogram, r.prompt_tokens, r.completion_tokens);
    for (origin, why) in r.failed.iter().take(5) {
        eprintln!("failed: {origin}: {why}");
    }
    println!("appended to {}", a.out.display());
    if !r.failed.is_empty() {
        return Err(format!("{} requests failed (a rerun asks for them again)", r.failed.len()).into());
    }
    Ok(())
}

fn synth(a: SynthArgs) -> Result<(), Box<dyn std::error::Error>> {
    use phi::synth::{Lists, SynthRun, run};
    let lists = match &a.lists {
        Some(p) => Lists::from_file(p)?,
        None => Lists::builtin(),
    };
    // The model: an endpoint, or a local folder served in-process for the run, whose context
    // decides what max_tokens fits before anything is asked.
    let mut max_tokens = a.max_tokens.unwrap_or(phi::synth::DEFAULT_MAX_TOKENS);
    let local = match &a.local {
        Some(dir) => {
            let model = local_model(dir)?;
            let prompts = phi::synth::prompts(&lists, a.kind, a.n, a.seed);
            max_tokens = phi::synth::fit_max_tokens(&model, &prompts, a.max_tokens).map_err(|e| format!("{}: {e}", dir.display()))?;
            Some(phi::serve::LocalServer::start(model, phi::serve::Limits::default())?)
        }
        None => None,
    };
    let client = match (&local, &a.endpoint, &a.model) {
        (Some(l), _, _) => phi::serve::client::Client::new(&l.url, &l.model, None),
        (None, Some(url), Some(model)) => phi::serve::client::Client::new(url, model, std::env::var("OPENAI_API_KEY").ok()),
        _ => return Err("give --endpoint URL --model NAME, or --local DIR".into()),
    };
    let sandbox = crate::isolated_sandbox(phi::sandbox::Limits::default(), "model-written tests run only isolated")?;
    let o = SynthRun {
        lists,
        kind: a.kind,
        n: a.n,
        seed: a.seed,
        client,
        temperature: a.temperature,
        max_tokens,
        concurrency: concurrency(a.concurrency, local.is_some()),
        retries: a.retries,
        min_chars: a.min_chars,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()).min(phi::humaneval::MAX_WORKERS),
        out: a.out.clone(),
    };
    println!("{} {} prompts (seed {}) from `{}` at {}, answers of up to {max_tokens} tokens", a.n, a.kind, a.seed, o.client.model, o.client.base);
    let bar = indicatif::ProgressBar::new(a.n as u64);
    let t = std::time::Instant::now();
    let (g, v) = run(&o, &sandbox, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    println!(
        "generation: {} prompts, {} already answered, {} asked in {:.1}s ({} retried, {} failed); tokens: {} prompt + {} completion",
        g.prompts,
        g.already,
        g.asked,
        t.elapsed().as_secs_f64(),
        g.retried,
        g.failed.len(),
        g.prompt_tokens,
        g.completion_tokens
    );
    println!("verification: {} generations in the log, {} kept", v.generations, v.kept);
    for (why, n) in &v.dropped {
        println!("  dropped {n}: {why}");
    }
    println!(
        "diversity: {:.3} distinct word 4-grams, near-duplicate rate {:.3}, topic × audience coverage {}/{}",
        v.distinct_4grams, v.near_duplicate_rate, v.topic_audience_covered, v.topic_audience_total
    );
    // The next step only when there is something to take it with: exercises are code, textbook
    // material is prose.
    let kept = a.out.join("kept.jsonl");
    match (v.kept, a.kind) {
        (0, _) => println!("wrote {}: nothing was kept (see why above)", kept.display()),
        (_, phi::synth::SynthKind::Exercise) => println!("wrote {} (phi data prepare --jsonl {0} --kind python ...)", kept.display()),
        (_, phi::synth::SynthKind::Textbook) => println!("wrote {} (phi data prepare --jsonl {0} --kind text ...)", kept.display()),
    }
    for (id, why) in g.failed.iter().take(5) {
        eprintln!("failed: {id}: {why}");
    }
    if !g.failed.is_empty() {
        return Err(format!("{} requests failed (a rerun asks for them again)", g.failed.len()).into());
    }
    Ok(())
}

fn train_classifier(a: ClassifierTrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    use phi::classify::{HeadSettings, TrainOptions};
    let files: Vec<&Path> = a.annotations.iter().chain(&a.labels).map(PathBuf::as_path).collect();
    if files.is_empty() {
        return Err("no labels: give --annotations FILE (phi data annotate) and/or --labels FILE".into());
    }
    let options = TrainOptions {
        folds: a.folds,
        threshold: a.keep_threshold,
        heads: HeadSettings { trees: a.trees, alpha: a.alpha, seed: a.seed },
        head: a.head,
    };
    // Refused before any embedding, not after: a folder that is not a classifier of ours.
    phi_data::owned::check(&a.out, &phi::classify::classifier::LAYOUT)?;
    let device = a.device.device()?;
    let t = std::time::Instant::now();
    let clf = phi::classify::train_classifier(&files, &a.embed_model, &device, a.layer, a.max_tokens, a.batch, &options)?;
    clf.save(&a.out)?;
    print!("{}", clf.report());
    println!("wrote {} ({:.1}s)", a.out.join(phi::classify::classifier::FILE).display(), t.elapsed().as_secs_f64());
    Ok(())
}

fn inspect(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let m = Manifest::read(dir)?;
    println!("{}: {} v{}, fingerprint {}", dir.display(), m.format, m.version, m.fingerprint);
    println!("tokenizer: {} (vocab {}, eos {}, from {}), {}-byte tokens", m.tokenizer.file, m.tokenizer.vocab_size, m.tokenizer.eos_id, m.tokenizer.source, m.bytes_per_token);
    for split in m.splits.keys() {
        let data = m.dataset(dir, split)?;
        let e = &m.splits[split];
        println!("{split}: {} documents, {} tokens in {} shard(s), all verified", e.documents, data.num_tokens(), e.shards.len());
    }
    print!("{}", m.report.table());
    Ok(())
}

/// A `--local` folder loaded as `phi serve` loads it (on the CPU, f32 in strips), the f32 weights
/// the packing frees returned to the OS.
fn local_model(dir: &Path) -> Result<phi::serve::ServedModel, Box<dyn std::error::Error>> {
    let mut model = phi::serve::ServedModel::load(dir, None, None, &Backend::Cpu.device()?)?;
    let mut packed = Ok(());
    crate::returning_freed_memory(&mut || packed = model.pack_for_decoding(None));
    packed?;
    Ok(model)
}
