//! `phi data …`: the data pipeline's flags and report printing (the pipeline is `phi-data`'s).

use std::path::{Path, PathBuf};

use phi_data::filters::DocKind;
use phi_data::prepare::{Input, Manifest, PrepareConfig, TokenizerSource};
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
    /// Summary of a prepared dataset; every shard is verified (header, size, checksum, ids).
    Inspect {
        /// A folder written by `phi data prepare`.
        dir: PathBuf,
    },
}

/// The inputs: `--input DIR` with `--glob`/`--exclude`, and/or `--jsonl FILE`.
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
    /// The record field that holds the document.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// What JSONL documents are (python gets the code filters).
    #[arg(long, value_enum, default_value_t = Kind::Text)]
    pub kind: Kind,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Kind {
    Python,
    Text,
}

impl InputArgs {
    fn inputs(&self) -> Vec<Input> {
        let kind = match self.kind {
            Kind::Python => DocKind::Python,
            Kind::Text => DocKind::Text,
        };
        self.input
            .iter()
            .map(|root| Input::Files { root: root.clone(), pattern: self.glob.clone(), exclude: self.exclude.clone() })
            .chain(self.jsonl.iter().map(|p| Input::Jsonl { path: p.clone(), field: self.text_field.clone(), kind }))
            .collect()
    }
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
    /// Keep the filtered documents as documents.jsonl next to the shards.
    #[arg(long)]
    pub keep_documents: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl PrepareArgs {
    /// The config: defaults, then the TOML file, then the flags.
    pub fn config(&self) -> Result<PrepareConfig, String> {
        let tokenizer = match &self.tokenizer {
            Some(p) => TokenizerSource::File(p.clone()),
            None => TokenizerSource::Train { vocab_size: self.vocab_size },
        };
        let mut c = PrepareConfig::new(self.input.inputs(), tokenizer);
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut base = toml::Value::try_from(&c).map_err(|e| e.to_string())?;
            let over: toml::Value = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let schema = phi::overrides::Schema::of::<PrepareConfig>()
                .with::<phi_data::filters::QualityFilters>("filters")
                .with::<NearDup>("near_dedup");
            phi::overrides::check_keys(&over, &schema).map_err(|e| format!("{}: {e}", path.display()))?;
            phi::recipes::merge_toml(&mut base, over);
            c = base.try_into().map_err(|e: toml::de::Error| format!("{}: {e}", path.display()))?;
            if c.inputs.is_empty() {
                c.inputs = self.input.inputs();
            }
        }
        if c.inputs.is_empty() {
            return Err("no input: give --input DIR (with --glob) or --jsonl FILE".into());
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
        Ok(c)
    }
}

pub fn run(cmd: DataCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        DataCommand::Prepare(args) => {
            let config = args.config()?;
            let manifest = phi_data::prepare(&config, &args.out, !args.json)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&manifest.report)?);
            } else {
                print!("{}", manifest.report.table());
                println!("wrote {} (tokenizer vocab {}, {}-byte tokens)", args.out.join("manifest.json").display(), manifest.tokenizer.vocab_size, manifest.bytes_per_token);
            }
        }
        DataCommand::TrainTokenizer { input, vocab_size, out } => {
            let t = std::time::Instant::now();
            let files = phi_data::prepare::documents(&input.inputs())?;
            let tok = phi_data::Tokenizer::train_bpe(files.into_iter(), vocab_size)?;
            tok.save(&out)?;
            println!("wrote {} (vocab {}, {:.1}s)", out.display(), tok.vocab_size(), t.elapsed().as_secs_f64());
        }
        DataCommand::Inspect { dir } => inspect(&dir)?,
    }
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
