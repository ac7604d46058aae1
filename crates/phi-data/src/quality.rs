//! Corpus hygiene: exact and near-duplicate removal and decontamination against evaluation sets.
//!
//! - Exact duplicates: a hash of the whitespace-normalised content.
//! - Near duplicates: MinHash over word 3-gram shingles with LSH banding (`bands × rows`
//!   permutations); a candidate pair is kept apart only if its estimated Jaccard similarity is
//!   below the threshold.
//! - Decontamination: a document sharing any 13-gram of normalised words with an evaluation
//!   problem is dropped (the n-gram test of the GPT-3 and phi-1 papers).

use std::collections::{HashMap, HashSet};

/// Lowercased words of alphanumeric characters and `_`: formatting and punctuation do not hide
/// a copy.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn ngram_hashes(words: &[String], n: usize) -> impl Iterator<Item = u64> + '_ {
    words.windows(n).map(|w| fnv(w.iter().flat_map(|s| s.bytes().chain([0xff]))))
}

/// Hash of the whitespace-normalised content: documents that differ only in spacing, indentation
/// style or line endings hash alike.
pub fn content_hash(text: &str) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    for w in text.split_whitespace() {
        h.update(w.as_bytes());
        h.update(b" ");
    }
    h.digest()
}

/// Indices of documents that repeat an earlier one after whitespace normalisation.
pub fn exact_duplicates(docs: &[&str]) -> Vec<usize> {
    let mut seen = HashSet::new();
    docs.iter().enumerate().filter(|(_, d)| !seen.insert(content_hash(d))).map(|(i, _)| i).collect()
}

/// The hash of one LSH band: its rows as little-endian bytes (as a stored signature holds them).
pub(crate) fn band_key(rows_le: impl IntoIterator<Item = u8>) -> u64 {
    fnv(rows_le)
}

/// MinHash + LSH near-duplicate detection.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NearDup {
    pub shingle: usize,
    pub bands: usize,
    pub rows: usize,
    /// Estimated Jaccard similarity at or above which a document is a duplicate.
    pub threshold: f64,
}

impl Default for NearDup {
    /// 3-word shingles, 32 bands × 4 rows (128 permutations: a pair at Jaccard 0.7 becomes a
    /// candidate with probability > 0.99), threshold 0.7.
    fn default() -> Self {
        NearDup { shingle: 3, bands: 32, rows: 4, threshold: 0.7 }
    }
}

impl NearDup {
    /// MinHash signature of `text` (`bands × rows` values).
    pub fn signature(&self, text: &str) -> Vec<u64> {
        let w = words(text);
        let shingles: Vec<u64> = if w.len() < self.shingle {
            vec![fnv(w.iter().flat_map(|s| s.bytes().chain([0xff])))]
        } else {
            ngram_hashes(&w, self.shingle).collect()
        };
        (0..self.bands * self.rows)
            .map(|k| {
                let (a, b) = ((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, (k as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
                shingles.iter().map(|h| h.wrapping_mul(a).wrapping_add(b).rotate_left(31)).min().unwrap_or(u64::MAX)
            })
            .collect()
    }

    /// The LSH keys of a signature: for each band, its number and a hash of its rows. Two
    /// documents are compared when they share a key.
    pub fn band_keys(&self, sig: &[u64]) -> Vec<(u32, u64)> {
        let rows = self.rows;
        (0..self.bands).map(|b| (b as u32, band_key(sig[b * rows..(b + 1) * rows].iter().flat_map(|v| v.to_le_bytes())))).collect()
    }

    /// Whether two signatures estimate a Jaccard similarity at or above the threshold.
    pub fn similar(&self, a: &[u64], b: &[u64]) -> bool {
        let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
        same as f64 / a.len() as f64 >= self.threshold
    }

    /// Indices of documents that are near duplicates of an earlier kept document.
    pub fn duplicates(&self, docs: &[&str]) -> Vec<usize> {
        let mut index = NearDupIndex::new(self.clone());
        docs.iter().enumerate().filter(|(_, d)| index.insert(self.signature(d)).is_some()).map(|(i, _)| i).collect()
    }
}

/// The LSH index of the documents kept so far, filled one signature at a time so that a corpus
/// streams through it: memory is one signature (`bands × rows` u64) per kept document.
pub struct NearDupIndex {
    params: NearDup,
    buckets: HashMap<(u32, u64), Vec<u32>>,
    kept: Vec<Vec<u64>>,
}

impl NearDupIndex {
    pub fn new(params: NearDup) -> Self {
        NearDupIndex { params, buckets: HashMap::new(), kept: Vec::new() }
    }

    /// If `sig` is a near duplicate of a kept document, that document's number (in insertion
    /// order of kept documents) and nothing is stored; otherwise `sig` is kept.
    pub fn insert(&mut self, sig: Vec<u64>) -> Option<usize> {
        let keys = self.params.band_keys(&sig);
        let matched = keys.iter().filter_map(|k| self.buckets.get(k)).flatten().copied().find(|&j| self.params.similar(&sig, &self.kept[j as usize]));
        if let Some(j) = matched {
            return Some(j as usize);
        }
        let id = self.kept.len() as u32;
        for k in keys {
            self.buckets.entry(k).or_default().push(id);
        }
        self.kept.push(sig);
        None
    }
}

/// The n-grams of an evaluation set, to test training documents against.
pub struct Decontaminator {
    n: usize,
    grams: HashSet<u64>,
}

impl Decontaminator {
    pub fn new(eval_texts: impl IntoIterator<Item = impl AsRef<str>>, n: usize) -> Self {
        let mut grams = HashSet::new();
        for t in eval_texts {
            grams.extend(ngram_hashes(&words(t.as_ref()), n));
        }
        Decontaminator { n, grams }
    }

    /// Whether `doc` shares an n-gram with the evaluation set.
    pub fn is_contaminated(&self, doc: &str) -> bool {
        ngram_hashes(&words(doc), self.n).any(|h| self.grams.contains(&h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "def mean(xs):\n    \"\"\"Average of a list.\"\"\"\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)\n\n\ndef variance(xs):\n    m = mean(xs)\n    return sum((x - m) ** 2 for x in xs) / len(xs)\n";
    const B: &str = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n\n    def empty(self):\n        return not self.items\n";

    #[test]
    fn exact_duplicates_ignore_whitespace() {
        let reformatted = A.replace("    ", "\t");
        assert_eq!(exact_duplicates(&[A, B, &reformatted, A]), vec![2, 3]);
    }

    #[test]
    fn one_changed_line_is_a_near_duplicate_unrelated_files_are_not() {
        // A file of a realistic size (a few functions), and the same file with one line changed.
        let file = format!("{A}\n{}\n{}", A.replace("mean", "median").replace("total", "acc"), A.replace("xs", "values"));
        let edited = file.replacen("    return total / len(xs)", "    return total / max(len(xs), 1)", 1);
        let nd = NearDup::default();
        assert_eq!(nd.duplicates(&[&file, B, &edited]), vec![2]);
        assert!(nd.duplicates(&[&file, B]).is_empty());
    }

    #[test]
    fn a_pasted_eval_solution_is_contaminated() {
        let solution = "def has_close_elements(numbers, threshold):\n    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n                distance = abs(elem - elem2)\n                if distance < threshold:\n                    return True\n    return False\n";
        let d = Decontaminator::new([solution], 13);
        let doc = format!("{B}\n# copied from somewhere\n{solution}\nprint('done')\n");
        assert!(d.is_contaminated(&doc));
        assert!(!d.is_contaminated(A) && !d.is_contaminated(B));
    }
}
