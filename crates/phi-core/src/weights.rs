//! Where parameters come from and where they go: HF safetensors checkpoints (single file or
//! sharded with `model.safetensors.index.json`), fresh initialisation, and saving back.
//!
//! Models are loaded through one path for both cases: a model is built empty, then
//! [`load_leaves`] asks a [`ParamSource`] for each parameter of its listing
//! ([`crate::tree`]) by key, with the shape it expects — so a checkpoint key that is missing, of
//! the wrong shape or left over is caught in one place and named in the error.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, TensorView};

use crate::error::{Error, Result};
use crate::nn::{WEIGHT, param};
use crate::tree::{LeafMut, ParamMut, Role, join};

/// How a freshly initialised parameter is filled.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Normal(0, std): projections and embeddings.
    Normal(f64),
    Zeros,
    Ones,
}

/// Supplies parameters by checkpoint key.
pub trait ParamSource {
    /// Returns the tensor stored under `key`, which must have `shape`.
    fn take<const D: usize>(&mut self, key: &str, shape: [usize; D], init: Init) -> Result<Tensor<D>>;
    fn device(&self) -> &Device;
    /// Marks `key` as deliberately unused (e.g. a tied `lm_head.weight` some exports carry).
    fn ignore(&mut self, _key: &str) {}
}

/// Fills every parameter of `leaves` — a model's listing, see
/// [`PhiForCausalLM::leaves_mut`](crate::PhiForCausalLM::leaves_mut) — from `src`, in listing
/// order, each under its key and with the shape its module was built with (a projection's is
/// asked for in HF's `[out, in]` and transposed once). `std` is the initializer range.
pub fn load_leaves(leaves: Vec<(String, LeafMut<'_>)>, src: &mut impl ParamSource, std: f64) -> Result<()> {
    load_leaves_then(leaves, src, std, |_, _| Ok(()))
}

/// [`load_leaves`], handing each leaf to `loaded` (with its key prefix) as soon as its
/// parameters are in — before the next is read. Packing a projection there for inference keeps a
/// load's memory at one f32 matrix beside the packed ones.
pub fn load_leaves_then(
    leaves: Vec<(String, LeafMut<'_>)>,
    src: &mut impl ParamSource,
    std: f64,
    mut loaded: impl FnMut(&str, LeafMut<'_>) -> Result<()>,
) -> Result<()> {
    for (prefix, mut leaf) in leaves {
        if let LeafMut::Tied = leaf {
            src.ignore(&join(&prefix, WEIGHT)); // some tied exports still carry a copy
            continue;
        }
        for (name, role, p) in leaf.reborrow().params() {
            let key = join(&prefix, name);
            let init = match role {
                Role::Projection | Role::Embedding => Init::Normal(std),
                Role::Bias => Init::Zeros,
                Role::Scale => Init::Ones,
            };
            match p {
                ParamMut::Matrix(p) => {
                    let [rows, cols] = p.lazy_shape().dims::<2>();
                    *p = if role == Role::Projection {
                        let weight = src.take(&key, [cols, rows], init)?;
                        // Materialise the transpose once, contiguous.
                        param(&key, Tensor::from_data(weight.transpose().into_data(), src.device()))
                    } else {
                        param(&key, src.take(&key, [rows, cols], init)?)
                    };
                }
                ParamMut::Vector(p) => {
                    let [n] = p.lazy_shape().dims::<1>();
                    *p = param(&key, src.take(&key, [n], init)?);
                }
            }
        }
        loaded(&prefix, leaf)?;
    }
    Ok(())
}

/// Random initialisation (HF `_init_weights`: normal(0, initializer_range), zero biases, unit norms).
///
/// Values are drawn on the host from a generator seeded by `(seed, key)`: the same seed gives the
/// same model on every backend, whatever else uses the device's RNG meanwhile.
pub struct RandomInit {
    device: Device,
    seed: u64,
}

impl RandomInit {
    pub fn new(device: &Device, seed: u64) -> Self {
        RandomInit { device: device.clone(), seed }
    }

    fn normal(&self, key: &str, n: usize, std: f64) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let key_hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ key_hash);
        // Box–Muller: two normals per pair of uniforms.
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = std::f64::consts::TAU * u2;
            out.push((r * t.cos()) as f32);
            out.push((r * t.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

impl ParamSource for RandomInit {
    fn take<const D: usize>(&mut self, key: &str, shape: [usize; D], init: Init) -> Result<Tensor<D>> {
        Ok(match init {
            Init::Normal(std) => {
                let values = self.normal(key, shape.iter().product(), std);
                Tensor::from_data(TensorData::new(values, shape), &self.device)
            }
            Init::Zeros => Tensor::zeros(shape, &self.device),
            Init::Ones => Tensor::ones(shape, &self.device),
        })
    }
    fn device(&self) -> &Device {
        &self.device
    }
}

/// Location of one tensor inside a memory-mapped safetensors file.
struct Entry {
    file: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    range: (usize, usize),
}

/// A HF checkpoint folder opened for reading. Files are memory-mapped; a tensor is copied
/// (and converted to f32) only when a module asks for it.
pub struct CheckpointReader {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    entries: BTreeMap<String, Entry>,
    taken: BTreeSet<String>,
    device: Device,
    dtype: DType,
}

/// Keys that some exporters write but that are buffers recomputed from the config.
fn is_ignorable(key: &str) -> bool {
    key.ends_with("rotary_emb.inv_freq") || key.ends_with(".masked_bias") || key.ends_with(".attn.bias")
}

impl CheckpointReader {
    /// Opens `dir/model.safetensors` or, failing that, the shards listed in
    /// `dir/model.safetensors.index.json`. Tensors become `dtype` on `device`.
    pub fn open(dir: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_paths(&index)?
        } else {
            return Err(Error::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "neither model.safetensors nor model.safetensors.index.json found",
                ),
            ));
        };
        Self::from_files(dir, paths, device, dtype)
    }

    /// Opens the given safetensors files as one checkpoint (errors name `dir`).
    pub fn from_files(dir: impl Into<PathBuf>, paths: Vec<PathBuf>, device: &Device, dtype: DType) -> Result<Self> {
        let mut reader = CheckpointReader {
            dir: dir.into(),
            files: Vec::new(),
            entries: BTreeMap::new(),
            taken: BTreeSet::new(),
            device: device.clone(),
            dtype,
        };
        for path in paths {
            reader.add_file(path)?;
        }
        Ok(reader)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the map is read-only; a checkpoint rewritten while we read it is the user's race.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let bad = |message: String| Error::Safetensors { path: path.clone(), message };
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
        let data_start = 8 + header_len;
        let file_idx = self.files.len();
        for (name, info) in meta.tensors() {
            let (start, end) = info.data_offsets;
            if data_start + end > mmap.len() {
                return Err(bad(format!("tensor `{name}` runs past the end of the file")));
            }
            if self.entries.contains_key(&name) {
                return Err(bad(format!("tensor `{name}` is stored twice")));
            }
            self.entries.insert(
                name,
                Entry {
                    file: file_idx,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: (data_start + start, data_start + end),
                },
            );
        }
        self.files.push((path, mmap));
        Ok(())
    }

    /// Whether the checkpoint holds `key` (used for optional tensors such as a tied `lm_head`).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Errors with the keys no module asked for: a checkpoint for another architecture must not
    /// load silently.
    pub fn finish(self) -> Result<()> {
        let left: Vec<String> = self
            .entries
            .keys()
            .filter(|k| !self.taken.contains(*k) && !is_ignorable(k))
            .cloned()
            .collect();
        if left.is_empty() { Ok(()) } else { Err(Error::UnexpectedTensors { keys: left }) }
    }

    /// Drops the file pages of `key`'s bytes from this process's memory once they are copied.
    /// Touched pages of a mapping count in the resident set until it is unmapped, so a load
    /// otherwise peaked at the file's size plus the model's: 11 GiB for a phi-1.5 in f32, even
    /// when packed to int4 as it loads. The pages stay in the page cache; a later read faults
    /// them back in. Best effort: an error only leaves them resident.
    fn release(&self, key: &str) {
        #[cfg(unix)]
        if let Some(e) = self.entries.get(key) {
            let mmap = &self.files[e.file].1;
            // SAFETY: no borrow of the mapping is alive (`read_f32` returned owned values), and
            // it is a read-only view of the file: pages faulted in again hold the same bytes.
            let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, e.range.0, e.range.1 - e.range.0) };
        }
    }

    /// Reads `key` as f32 values, whatever its stored float dtype.
    pub fn read_f32(&self, key: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let e = self.entries.get(key).ok_or_else(|| Error::MissingTensor {
            key: key.to_string(),
            dir: self.dir.clone(),
        })?;
        let bytes = &self.files[e.file].1[e.range.0..e.range.1];
        let values = match e.dtype {
            StDtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            StDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedDtype { key: key.to_string(), dtype: format!("{other:?}") });
            }
        };
        Ok((values, e.shape.clone()))
    }
}

impl ParamSource for CheckpointReader {
    fn take<const D: usize>(&mut self, key: &str, shape: [usize; D], _init: Init) -> Result<Tensor<D>> {
        let (values, found) = self.read_f32(key)?;
        if found != shape {
            return Err(Error::ShapeMismatch { key: key.to_string(), expected: shape.to_vec(), found });
        }
        self.release(key);
        self.taken.insert(key.to_string());
        let tensor = Tensor::<D>::from_data(TensorData::new(values, shape), &self.device);
        Ok(if self.dtype == DType::F32 { tensor } else { tensor.cast(self.dtype) })
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn ignore(&mut self, key: &str) {
        self.taken.insert(key.to_string());
    }
}

fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| Error::Json { path: index.to_path_buf(), source })?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Safetensors {
        path: index.to_path_buf(),
        message: "missing `weight_map` object".into(),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files = BTreeSet::new();
    for (key, file) in map {
        let file = file.as_str().ok_or_else(|| Error::Safetensors {
            path: index.to_path_buf(),
            message: format!("weight_map[`{key}`] is not a file name"),
        })?;
        // A shard lives in the model folder: an index (downloaded, so untrusted) must not make
        // us open `../../etc/shadow` or `/dev/zero`. Checked on the path's text, not through
        // `canonicalize`, so that folders of symlinks (the HF hub cache) keep working.
        let inside = !file.is_empty()
            && Path::new(file).components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
        if !inside {
            return Err(Error::Safetensors {
                path: index.to_path_buf(),
                message: format!("weight_map[`{key}`] = {file:?} points outside the model folder; shards must be files inside it"),
            });
        }
        files.insert(file.to_string());
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// The weights of an unsharded model folder.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The index of a sharded one: `weight_map` from each key to its shard file.
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
/// transformers' default `max_shard_size` (`"50GB"`).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 50_000_000_000;

/// One part of a state-dict key, ordered as transformers' `dot_natural_key` orders them: numbers
/// first (numerically), then names, a name's trailing digits compared as a number.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum KeyPart {
    Number(u128),
    Name(String, Option<u128>),
}

fn dot_natural_key(key: &str) -> Vec<KeyPart> {
    key.split('.')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                return KeyPart::Number(part.parse().unwrap_or(u128::MAX));
            }
            let text = part.trim_end_matches(|c: char| c.is_ascii_digit());
            let digits = &part[text.len()..];
            KeyPart::Name(text.to_string(), (!digits.is_empty()).then(|| digits.parse().unwrap_or(u128::MAX)))
        })
        .collect()
}

/// Removes the weight files of an earlier save in `dir` that `kept` does not list — a
/// `model.safetensors`, an index, shards of another count — as transformers' `save_pretrained`
/// does: a stale `model.safetensors` would be read instead of new shards (it wins over an
/// index), and stale shards would sit beside the new ones.
fn remove_stale_weights(dir: &Path, kept: &[&str]) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let weights = name == SAFETENSORS_FILE || name == SAFETENSORS_INDEX_FILE || is_shard_name(&name);
        if weights && !kept.contains(&name.as_str()) && entry.path().is_file() {
            std::fs::remove_file(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Whether `name` is a shard file name as [`StateDict::save_sharded`] (and transformers)
/// writes them: `model-00001-of-00003.safetensors`.
pub fn is_shard_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("model-").and_then(|r| r.strip_suffix(".safetensors")) else { return false };
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    matches!(rest.split_once("-of-"), Some((i, n)) if digits(i) && digits(n))
}

/// A shard size as transformers' `max_shard_size` takes it: bytes (`"2000000"`) or a number
/// with a decimal unit, `KB`, `MB`, `GB` or `TB` (`"5GB"` is 5·10⁹ bytes; case-insensitive).
pub fn parse_shard_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let bad = || format!("`{s}`: expected a size such as 5GB, 500MB or a number of bytes");
    let (number, unit) = match t.len().checked_sub(2).map(|i| t.split_at(i)) {
        Some((n, u)) if u.chars().all(|c| c.is_ascii_alphabetic()) => (n.trim(), u.to_ascii_uppercase()),
        _ => (t, String::new()),
    };
    let scale: f64 = match unit.as_str() {
        "" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * scale;
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(format!("`{s}`: a shard must hold at least one byte"));
    }
    Ok(bytes as u64)
}

/// Named tensors on their way to a safetensors file.
#[derive(Default)]
pub struct StateDict {
    pub tensors: Vec<(String, TensorData)>,
}

impl StateDict {
    /// Records `tensor` under `key`, as f32 (a quantized tensor is dequantized).
    pub fn put<const D: usize>(&mut self, key: impl Into<String>, tensor: Tensor<D>) {
        self.tensors.push((key.into(), tensor.dequantize().into_data().convert::<f32>()));
    }

    /// Writes one safetensors file atomically: a temporary file in the same folder, fsync,
    /// rename — a crash never leaves a truncated `model.safetensors` behind.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        Self::write_file(&self.tensors, path.as_ref())
    }

    /// Writes the weights into `dir` as transformers' `save_pretrained` does at a
    /// `max_shard_size` of `max_shard_bytes`: one `model.safetensors` when they fit, else
    /// `model-0000i-of-0000n.safetensors` shards filled in transformers' key order (names split
    /// on dots, numbers compared as numbers; a tensor that would tip a shard over the limit
    /// starts the next, one larger than the limit gets a shard of its own)
    /// and `model.safetensors.index.json` mapping each key to its shard. Returns the files
    /// written; each is written atomically, the index last, and then the weight files of an
    /// earlier save that the new set does not hold are removed.
    pub fn save_sharded(&self, dir: impl AsRef<Path>, max_shard_bytes: u64, total_parameters: u64) -> Result<Vec<String>> {
        let dir = dir.as_ref();
        let size = |d: &TensorData| d.as_bytes().len() as u64;
        let mut shards: Vec<Vec<(String, TensorData)>> = Vec::new();
        let mut current: Vec<(String, TensorData)> = Vec::new();
        let mut current_size = 0;
        // transformers 5 sorts the state dict before splitting it (`revert_weight_conversion`
        // orders it by `dot_natural_key`): the same order gives the same shards.
        let mut order: Vec<&(String, TensorData)> = self.tensors.iter().collect();
        order.sort_by_cached_key(|(key, _)| dot_natural_key(key));
        for (key, data) in order {
            let n = size(data);
            if n > max_shard_bytes {
                shards.push(vec![(key.clone(), data.clone())]);
                continue;
            }
            if current_size + n > max_shard_bytes && !current.is_empty() {
                shards.push(std::mem::take(&mut current));
                current_size = 0;
            }
            current.push((key.clone(), data.clone()));
            current_size += n;
        }
        if !current.is_empty() || shards.is_empty() {
            shards.push(current);
        }
        if shards.len() == 1 {
            Self::write_file(&shards[0], &dir.join(SAFETENSORS_FILE))?;
            remove_stale_weights(dir, &[SAFETENSORS_FILE])?;
            return Ok(vec![SAFETENSORS_FILE.to_string()]);
        }
        let n = shards.len();
        let mut files = Vec::with_capacity(n + 1);
        // Sorted, as transformers writes the index (`json.dumps(..., sort_keys=True)`).
        let mut weight_map = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            Self::write_file(shard, &dir.join(&file))?;
            for (key, _) in shard {
                weight_map.insert(key.clone(), file.clone());
            }
            files.push(file);
        }
        let total_size: u64 = self.tensors.iter().map(|(_, d)| size(d)).sum();
        let index = serde_json::json!({
            "metadata": {"total_parameters": total_parameters, "total_size": total_size},
            "weight_map": weight_map,
        });
        let text = serde_json::to_string_pretty(&index).expect("JSON value serializes") + "\n";
        write_atomic(&dir.join(SAFETENSORS_INDEX_FILE), text.as_bytes())?;
        files.push(SAFETENSORS_INDEX_FILE.to_string());
        remove_stale_weights(dir, &files.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(files)
    }

    fn write_file(tensors: &[(String, TensorData)], path: &Path) -> Result<()> {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(k, d)| {
                let view = TensorView::new(StDtype::F32, d.shape().to_vec(), d.as_bytes())
                    .expect("f32 data matches its shape");
                (k.clone(), view)
            })
            .collect();
        let metadata = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
        let bytes = safetensors::serialize(views, metadata).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod shard_tests {
    use super::*;

    #[test]
    fn keys_sort_as_transformers_sorts_them() {
        let mut keys = ["model.layers.10.mlp.fc1.weight", "lm_head.weight", "model.layers.2.mlp.fc1.weight", "model.layers.2.mlp.fc10.weight", "model.layers.2.mlp.fc2.weight", "model.embed_tokens.weight", "model.layers.2.mlp.fc.weight"];
        keys.sort_by_key(|k| dot_natural_key(k));
        assert_eq!(keys, ["lm_head.weight", "model.embed_tokens.weight", "model.layers.2.mlp.fc.weight", "model.layers.2.mlp.fc1.weight", "model.layers.2.mlp.fc2.weight", "model.layers.2.mlp.fc10.weight", "model.layers.10.mlp.fc1.weight"]);
    }

    #[test]
    fn shard_sizes_parse_as_transformers_reads_them() {
        assert_eq!(parse_shard_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_shard_size("0.5 mb"), Ok(500_000));
        assert_eq!(parse_shard_size("1234"), Ok(1234));
        assert_eq!(parse_shard_size("2TB"), Ok(2_000_000_000_000));
        for bad in ["5GiB", "GB", "-1MB", "0", "five"] {
            assert!(parse_shard_size(bad).is_err(), "{bad}");
        }
        assert!(is_shard_name("model-00001-of-00003.safetensors"));
        for bad in ["model-1-of-3.safetensors", "model-00001-of-00003.bin", "x-00001-of-00003.safetensors", "model.safetensors"] {
            assert!(!is_shard_name(bad), "{bad}");
        }
    }

    /// huggingface_hub's documented example: tensors of 6, 6, 2, 6, 2, 2 (GB) at a 10 GB limit
    /// shard as [6], [6, 2], [6, 2, 2]; a tensor over the limit gets a shard of its own.
    #[test]
    fn shards_fill_in_key_order_as_huggingface_hub_splits() {
        let dir = std::env::temp_dir().join(format!("phi-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dict = |sizes: &[usize]| StateDict {
            tensors: sizes.iter().enumerate().map(|(i, &n)| (format!("t{i}"), TensorData::new(vec![i as f32; n], [n]))).collect(),
        };
        // 4 bytes a value: limit 40 bytes = 10 values.
        let files = dict(&[6, 6, 2, 6, 2, 2]).save_sharded(&dir, 40, 24).unwrap();
        assert_eq!(files, ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json"]);
        let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(SAFETENSORS_INDEX_FILE)).unwrap()).unwrap();
        fn shard_of_in(index: &serde_json::Value) -> impl Fn(&str) -> u32 + '_ {
            move |k| index["weight_map"][k].as_str().unwrap()[6..11].parse().unwrap()
        }
        assert_eq!(["t0", "t1", "t2", "t3", "t4", "t5"].map(shard_of_in(&index)), [1, 2, 2, 3, 3, 3]);
        assert_eq!(index["metadata"], serde_json::json!({"total_parameters": 24, "total_size": 96}));
        // The large tensor's shard is closed at once; the small ones around it share the next.
        let files = dict(&[2, 30, 2]).save_sharded(&dir, 40, 34).unwrap();
        assert_eq!(files.len(), 2 + 1, "{files:?}");
        let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(SAFETENSORS_INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(["t0", "t1", "t2"].map(shard_of_in(&index)), [2, 1, 2]);
        // Under the limit: one model.safetensors and no index.
        let single = std::env::temp_dir().join(format!("phi-shards-one-{}", std::process::id()));
        std::fs::create_dir_all(&single).unwrap();
        assert_eq!(dict(&[2, 3]).save_sharded(&single, 40, 5).unwrap(), ["model.safetensors"]);
        assert!(!single.join(SAFETENSORS_INDEX_FILE).exists());
        // Into the folder of the 3-shard save: its shards and index go, other files stay.
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        assert_eq!(dict(&[2, 3]).save_sharded(&dir, 40, 5).unwrap(), ["model.safetensors"]);
        let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["model.safetensors", "notes.txt"]);
        // And back to shards: the single file goes, or it would be read instead of them.
        dict(&[6, 6]).save_sharded(&dir, 40, 12).unwrap();
        assert!(!dir.join(SAFETENSORS_FILE).exists() && dir.join(SAFETENSORS_INDEX_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&single).unwrap();
    }
}
