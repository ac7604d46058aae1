//! Token shards: the binary files `phi data prepare` writes and training reads.
//!
//! ```text
//! offset  size  field (all little-endian)
//!      0     8  magic            b"PHISHARD"
//!      8     4  version          u32 = 1
//!     12     4  bytes per token  u32: 2 (u16 ids, vocab ≤ 65,536) or 4 (u32 ids)
//!     16     8  vocab size       u64: every id in the payload is below it
//!     24     8  token count      u64
//!     32     8  checksum         u64: XXH3-64 of the payload bytes
//!     40    24  reserved         zero
//!     64     …  payload          token count × bytes per token
//! ```
//!
//! A shard is written under a temporary name (`…​.tmp`), synced, and renamed only once the
//! header holds the final count and checksum, so a killed writer never leaves a file that
//! looks like a shard. [`Shard::open`] memory-maps a shard and checks the header, the file size,
//! the checksum and the id range; any mismatch is a [`DataError::Shard`] naming the file and the
//! byte offset.
//!
//! ```
//! use phi_data::shard::{Shard, ShardWriter};
//! let path = std::env::temp_dir().join(format!("doc-{}.bin", std::process::id()));
//! let mut w = ShardWriter::create(&path, 50_257)?; // GPT-2's vocabulary: u16 ids
//! w.write(&[464, 2068, 7586, 50256])?;
//! let info = w.finish()?;
//! let shard = Shard::open(&path)?;
//! assert_eq!((shard.len(), shard.get(3), info.tokens), (4, 50256, 4));
//! # std::fs::remove_file(path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use xxhash_rust::xxh3::Xxh3Default;

use crate::error::DataError;

pub const MAGIC: &[u8; 8] = b"PHISHARD";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;

/// Bytes per token a vocabulary needs: u16 when every id fits.
pub fn bytes_per_token(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 { 2 } else { 4 }
}

/// Writes one shard; see the module docs. Dropping it unfinished removes the temporary file.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    vocab_size: usize,
    width: usize,
    count: u64,
    hasher: Xxh3Default,
    buf: Vec<u8>,
}

impl ShardWriter {
    pub fn create(path: impl AsRef<Path>, vocab_size: usize) -> Result<Self, DataError> {
        let path = path.as_ref().to_path_buf();
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        let tmp = path.with_file_name(name);
        let mut out = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?);
        out.write_all(&[0u8; HEADER_LEN]).map_err(|e| DataError::io(&tmp, e))?;
        let width = bytes_per_token(vocab_size);
        Ok(ShardWriter { path, tmp, out: Some(out), vocab_size, width, count: 0, hasher: Xxh3Default::new(), buf: Vec::new() })
    }

    /// Tokens written so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `tokens`; an id ≥ the vocabulary size is an error.
    pub fn write(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(DataError::Invalid(format!(
                "{}: token id {bad} is not below the vocabulary size {}",
                self.path.display(),
                self.vocab_size
            )));
        }
        self.buf.clear();
        match self.width {
            2 => tokens.iter().for_each(|&t| self.buf.extend_from_slice(&(t as u16).to_le_bytes())),
            _ => tokens.iter().for_each(|&t| self.buf.extend_from_slice(&t.to_le_bytes())),
        }
        self.hasher.update(&self.buf);
        let out = self.out.as_mut().expect("writer is open until finish");
        out.write_all(&self.buf).map_err(|e| DataError::io(&self.tmp, e))?;
        self.count += tokens.len() as u64;
        Ok(())
    }

    /// Writes the header, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<ShardInfo, DataError> {
        let checksum = self.hasher.digest();
        let header = header(self.width, self.vocab_size, self.count, checksum);
        let io = |e| DataError::io(&self.tmp, e);
        let mut file = self.out.take().expect("open").into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| DataError::io(&self.path, e))?;
        if let Some(dir) = self.path.parent().and_then(|d| File::open(d).ok()) {
            let _ = dir.sync_all();
        }
        Ok(ShardInfo { path: self.path.clone(), tokens: self.count, checksum })
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn header(width: usize, vocab_size: usize, count: u64, checksum: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(width as u32).to_le_bytes());
    h[16..24].copy_from_slice(&(vocab_size as u64).to_le_bytes());
    h[24..32].copy_from_slice(&count.to_le_bytes());
    h[32..40].copy_from_slice(&checksum.to_le_bytes());
    h
}

/// What [`ShardWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub path: PathBuf,
    pub tokens: u64,
    pub checksum: u64,
}

/// Writes `tokens` as one shard at `path`.
pub fn write_shard(path: impl AsRef<Path>, vocab_size: usize, tokens: &[u32]) -> Result<ShardInfo, DataError> {
    let mut w = ShardWriter::create(path, vocab_size)?;
    w.write(tokens)?;
    w.finish()
}

/// A memory-mapped, validated shard.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    width: usize,
    vocab_size: usize,
    len: usize,
    checksum: u64,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("path", &self.path).field("tokens", &self.len).field("vocab_size", &self.vocab_size).finish()
    }
}

impl Shard {
    /// Maps `path` and checks everything: header, size, checksum, and that every id is below the
    /// vocabulary size. One pass over the file at XXH3 speed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let shard = Self::open_header(path)?;
        shard.verify()?;
        Ok(shard)
    }

    /// Maps `path` and checks the header and the file size only (for very large datasets whose
    /// shards were verified when written); [`Shard::verify`] does the rest.
    pub fn open_header(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref().to_path_buf();
        let bad = |offset: usize, message: String| DataError::Shard { path: path.clone(), offset: offset as u64, message };
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        // Safety: shards are immutable once renamed into place; nothing in this process writes
        // them while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
        if map.len() < HEADER_LEN {
            return Err(bad(map.len(), format!("file is {} bytes, shorter than the {HEADER_LEN}-byte header", map.len())));
        }
        if &map[..8] != MAGIC {
            return Err(bad(0, format!("not a token shard: magic {:?}, expected {:?}", String::from_utf8_lossy(&map[..8]), "PHISHARD")));
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(8, format!("format version {version}, this build reads version {VERSION}")));
        }
        let width = u32_at(12) as usize;
        if width != 2 && width != 4 {
            return Err(bad(12, format!("bytes per token is {width}, must be 2 or 4")));
        }
        let vocab_size = u64_at(16) as usize;
        if vocab_size == 0 || (width == 2 && vocab_size > 1 << 16) {
            return Err(bad(16, format!("vocabulary size {vocab_size} does not fit {width}-byte tokens")));
        }
        let len = u64_at(24) as usize;
        let expected = len.checked_mul(width).and_then(|n| n.checked_add(HEADER_LEN));
        if expected != Some(map.len()) {
            return Err(bad(
                map.len().min(HEADER_LEN + len.saturating_mul(width)),
                format!(
                    "header says {len} tokens ({} payload bytes) but the file holds {} payload bytes: truncated or corrupt",
                    len.saturating_mul(width),
                    map.len() - HEADER_LEN
                ),
            ));
        }
        let checksum = u64_at(32);
        Ok(Shard { path, map, width, vocab_size, len, checksum })
    }

    /// Checks the checksum and the id range.
    pub fn verify(&self) -> Result<(), DataError> {
        let payload = &self.map[HEADER_LEN..];
        let actual = xxhash_rust::xxh3::xxh3_64(payload);
        if actual != self.checksum {
            return Err(DataError::Shard {
                path: self.path.clone(),
                offset: HEADER_LEN as u64,
                message: format!("payload checksum {actual:016x} does not match the header's {:016x}: corrupt", self.checksum),
            });
        }
        let first_bad = match self.width {
            2 => payload.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) as usize >= self.vocab_size),
            _ => payload.chunks_exact(4).position(|c| u32::from_le_bytes(c.try_into().unwrap()) as usize >= self.vocab_size),
        };
        if let Some(i) = first_bad {
            return Err(DataError::Shard {
                path: self.path.clone(),
                offset: (HEADER_LEN + i * self.width) as u64,
                message: format!("token id {} is not below the vocabulary size {}", self.get(i), self.vocab_size),
            });
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        let o = HEADER_LEN + i * self.width;
        match self.width {
            2 => u16::from_le_bytes([self.map[o], self.map[o + 1]]) as u32,
            _ => u32::from_le_bytes(self.map[o..o + 4].try_into().unwrap()),
        }
    }

    /// Appends tokens `start..start + len` to `out`.
    pub fn read_into(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        assert!(start + len <= self.len, "{}: tokens {start}..{} out of {}", self.path.display(), start + len, self.len);
        let bytes = &self.map[HEADER_LEN + start * self.width..HEADER_LEN + (start + len) * self.width];
        match self.width {
            2 => out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)),
            _ => out.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()))),
        }
    }

    /// Every token.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut v = Vec::with_capacity(self.len);
        self.read_into(0, self.len, &mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard path in a fresh folder, removed when the guard drops.
    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        (dir, path)
    }

    #[test]
    fn round_trip_u16_and_u32() {
        for vocab in [50_257usize, 100_352] {
            let (_dir, path) = temp();
            let tokens: Vec<u32> = (0..10_000u32).map(|i| (i * 7919) % vocab as u32).collect();
            let mut w = ShardWriter::create(&path, vocab).unwrap();
            w.write(&tokens[..3000]).unwrap();
            w.write(&tokens[3000..]).unwrap();
            let info = w.finish().unwrap();
            assert_eq!(info.tokens, 10_000);
            assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, HEADER_LEN + 10_000 * bytes_per_token(vocab));
            let s = Shard::open(&path).unwrap();
            assert_eq!((s.len(), s.vocab_size()), (10_000, vocab));
            assert_eq!(s.to_vec(), tokens);
            let mut part = vec![];
            s.read_into(17, 5, &mut part);
            assert_eq!(part, &tokens[17..22]);
            assert!(!path.with_file_name("s.bin.tmp").exists());
        }
    }

    #[test]
    fn ids_outside_the_vocabulary_are_refused_when_written() {
        let (_dir, path) = temp();
        let mut w = ShardWriter::create(&path, 100).unwrap();
        let e = w.write(&[1, 2, 100]).unwrap_err().to_string();
        assert!(e.contains("token id 100") && e.contains("100"), "{e}");
        drop(w);
        assert!(!path.exists() && !path.with_file_name("s.bin.tmp").exists(), "an unfinished shard leaves nothing behind");
    }
}
