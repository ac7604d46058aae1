//! Datasets assembled from what a user names on a command line: prepared datasets mixed by
//! weight (`DIR` or `DIR:WEIGHT`), and evaluation data from prepared datasets, token shards or
//! plain text.
//!
//! ```no_run
//! use phi_data::assemble::{DatasetSpec, load_mixture};
//!
//! let specs: Vec<DatasetSpec> = ["textbooks:0.8", "code:0.2"].iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
//! let data = load_mixture(&specs)?;
//! // The mixture draws from both; validation comes from the first dataset.
//! assert_eq!(data.train.datasets().count(), 2);
//! let tokens: usize = data.train.datasets().map(|d| d.num_tokens()).sum();
//! assert!(tokens > 0);
//! # Ok::<(), phi_data::DataError>(())
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::corpus::collect_files;
use crate::error::DataError;
use crate::prepare::{MANIFEST, Manifest};
use crate::{Mixture, TokenDataset, Tokenizer};

/// One prepared dataset of a mixture and its weight: `DIR` (weight 1) or `DIR:WEIGHT`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    pub dir: PathBuf,
    pub weight: f64,
}

impl FromStr for DatasetSpec {
    type Err = DataError;

    fn from_str(spec: &str) -> Result<Self, DataError> {
        // A folder name may itself contain ':'; only a number after the last one is a weight.
        match spec.rsplit_once(':').and_then(|(d, w)| w.parse::<f64>().ok().map(|w| (d, w))) {
            Some((dir, weight)) if !(weight.is_finite() && weight > 0.0) => {
                Err(DataError::Invalid(format!("{spec:?}: the weight of {dir} must be a positive number, not {weight}")))
            }
            Some((dir, weight)) => Ok(DatasetSpec { dir: PathBuf::from(dir), weight }),
            None => {
                // `DIR:abc` is a mistyped weight, not a folder named so — unless such a folder
                // exists, or what follows the colon is a path (`c:/data`).
                if let Some((dir, weight)) = spec.rsplit_once(':')
                    && !weight.contains(['/', '\\'])
                    && !Path::new(spec).exists()
                {
                    return Err(DataError::Invalid(format!(
                        "{spec:?}: the weight `{weight}` is not a number (expected DIR or DIR:WEIGHT with a positive weight, e.g. {dir}:0.5; {dir} alone has weight 1)"
                    )));
                }
                Ok(DatasetSpec { dir: PathBuf::from(spec), weight: 1.0 })
            }
        }
    }
}

/// Prepared datasets loaded for training: the weighted mixture of their train splits, the
/// validation split and tokenizer of the first, and each one's manifest.
pub struct LoadedMixture {
    pub train: Mixture,
    pub validation: TokenDataset,
    pub tokenizer: Tokenizer,
    pub manifests: Vec<(DatasetSpec, Manifest)>,
}

/// Opens every dataset of `specs` (verifying its shards) into one mixture. All must share one
/// tokenizer (byte-identical `tokenizer.json`): ids from different vocabularies cannot be mixed.
pub fn load_mixture(specs: &[DatasetSpec]) -> Result<LoadedMixture, DataError> {
    let first = specs.first().ok_or_else(|| DataError::Invalid("a mixture needs at least one dataset".into()))?;
    let mut parts = Vec::with_capacity(specs.len());
    let mut manifests: Vec<(DatasetSpec, Manifest)> = Vec::with_capacity(specs.len());
    let tokenizer_bytes = |dir: &Path, m: &Manifest| {
        let path = dir.join(&m.tokenizer.file);
        std::fs::read(&path).map_err(|e| DataError::io(&path, e))
    };
    for spec in specs {
        let m = Manifest::read(&spec.dir)?;
        if let Some((f, fm)) = manifests.first()
            && tokenizer_bytes(&f.dir, fm)? != tokenizer_bytes(&spec.dir, &m)?
        {
            return Err(DataError::Invalid(format!(
                "{} and {} were tokenized with different tokenizers: a mixture needs one",
                f.dir.display(),
                spec.dir.display()
            )));
        }
        parts.push((m.dataset(&spec.dir, "train")?, spec.weight));
        manifests.push((spec.clone(), m));
    }
    let m = &manifests[0].1;
    Ok(LoadedMixture {
        validation: m.dataset(&first.dir, "validation")?,
        tokenizer: m.tokenizer(&first.dir)?,
        train: Mixture::new(parts)?,
        manifests,
    })
}

/// What an evaluation path is.
fn is_prepared(path: &Path) -> bool {
    path.join(MANIFEST).exists()
}

fn is_shard(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "bin")
}

/// Whether [`eval_dataset`] needs a tokenizer for `paths` (some are text).
pub fn needs_tokenizer(paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| !is_prepared(p) && !is_shard(p))
}

/// Evaluation tokens from `paths`, in order: a prepared dataset gives its `split`, a `.bin`
/// token shard its tokens, and a text file (or a folder of `.py`, `.txt`, `.md` files) is
/// tokenized with `text`'s tokenizer, each document followed by `text`'s EOS id.
pub fn eval_dataset(paths: &[PathBuf], split: &str, text: Option<(&Tokenizer, u32)>) -> Result<TokenDataset, DataError> {
    let mut parts = Vec::with_capacity(paths.len());
    for path in paths {
        if is_prepared(path) {
            parts.push(Manifest::read(path)?.dataset(path, split)?);
            continue;
        }
        if is_shard(path) {
            parts.push(TokenDataset::from_shards([path])?);
            continue;
        }
        let (tok, eos) = text.ok_or_else(|| {
            DataError::Invalid(format!("{} is text: tokenizing it needs a tokenizer (the model folder's tokenizer.json)", path.display()))
        })?;
        let files = if path.is_dir() {
            [".py", ".txt", ".md"].iter().flat_map(|s| collect_files(path, s, &[])).collect()
        } else {
            vec![path.clone()]
        };
        let mut tokens = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| DataError::io(&f, e))?;
            tokens.extend(tok.encode(&text));
            tokens.push(eos);
        }
        parts.push(TokenDataset::from_tokens(tokens));
    }
    Ok(TokenDataset::concat(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_weights() {
        assert_eq!("a/b".parse::<DatasetSpec>().unwrap(), DatasetSpec { dir: "a/b".into(), weight: 1.0 });
        assert_eq!("a/b:0.25".parse::<DatasetSpec>().unwrap(), DatasetSpec { dir: "a/b".into(), weight: 0.25 });
        // A colon that is not followed by a number belongs to the folder name.
        assert_eq!("c:/data".parse::<DatasetSpec>().unwrap().dir, PathBuf::from("c:/data"));
        for bad in ["d:0", "d:-1", "d:inf", "d:NaN"] {
            let e = bad.parse::<DatasetSpec>().unwrap_err().to_string();
            assert!(e.contains("positive"), "{bad}: {e}");
        }
        // A weight that is no number is an error naming it, not a folder `d:abc` to open.
        let e = "data/code:abc".parse::<DatasetSpec>().unwrap_err().to_string();
        assert!(e.contains("the weight `abc` is not a number") && e.contains("data/code:0.5"), "{e}");
        // …unless a folder of that name exists.
        let dir = std::env::temp_dir().join(format!("assemble-colon-{}:x", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(dir.to_str().unwrap().parse::<DatasetSpec>().unwrap().dir, dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_without_a_tokenizer_is_an_error_naming_the_path() {
        let dir = std::env::temp_dir().join(format!("assemble-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.txt");
        std::fs::write(&f, "hello").unwrap();
        assert!(needs_tokenizer(std::slice::from_ref(&f)));
        let e = eval_dataset(std::slice::from_ref(&f), "validation", None).err().expect("a missing dataset is an error").to_string();
        assert!(e.contains("a.txt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
