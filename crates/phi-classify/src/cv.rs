//! k-fold cross-validation: every labelled document is predicted once by heads that never saw
//! it, and the pooled out-of-fold predictions are scored — accuracy and macro-F1 on the labels'
//! classes (a prediction counts as the nearest class), F1 of the keep decision (what filtering
//! needs; FineWeb-Edu reports ~82% at score 3), and Spearman's rank correlation (what
//! re-thresholding needs). A majority-class baseline is reported next to the heads, so a number
//! means something.
//!
//! The keep decision compares the label with the threshold (`label >= 3`) and the continuous
//! predicted score with the cut half a class below it (`score >= 2.5`): the midpoint between
//! the classes either side, FineWeb-Edu's `round(score) >= 3`. The cut is what `phi data
//! prepare` uses as `--min-score` unless told otherwise.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::{ClassifyError, Result};
use crate::heads::{Forest, HeadKind, Logistic};

/// How well one predictor did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The nearest of the labels' classes to the prediction = the rounded label.
    pub accuracy: f32,
    /// Mean over the labels' classes of each class's F1.
    pub macro_f1: f32,
    /// F1 of "keep" (score ≥ cut) against the labels' keep (label ≥ threshold).
    pub f1_at_threshold: f32,
    pub precision_at_threshold: f32,
    pub recall_at_threshold: f32,
    /// `None` when the predictions are constant.
    pub spearman: Option<f32>,
    /// Mean absolute error.
    pub mae: f32,
}

/// The cross-validation report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvReport {
    pub folds: usize,
    pub seed: u64,
    pub documents: usize,
    pub threshold: f32,
    /// The score cut of the keep decision: `threshold - 0.5`.
    pub cut: f32,
    /// Labelled documents per class.
    pub class_counts: Vec<(i32, usize)>,
    pub forest: Metrics,
    pub logistic: Metrics,
    /// Always the most common class.
    pub majority: Metrics,
}

impl CvReport {
    /// The head with the better F1 at the threshold (the forest on a tie).
    pub fn best(&self) -> HeadKind {
        if self.logistic.f1_at_threshold > self.forest.f1_at_threshold { HeadKind::Logistic } else { HeadKind::Forest }
    }

    /// The table `phi data classifier train` prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{}-fold cross-validation (seed {}) on {} labelled documents; classes {}; keep = label >= {} vs score >= {}\n",
            self.folds,
            self.seed,
            self.documents,
            self.class_counts.iter().map(|(c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", "),
            self.threshold,
            self.cut
        );
        out += "head       accuracy  macro-F1  F1@keep  P@keep  R@keep  Spearman   MAE\n";
        for (name, m) in [("forest", &self.forest), ("logistic", &self.logistic), ("majority", &self.majority)] {
            let rho = m.spearman.map_or("-".to_string(), |r| format!("{r:.3}"));
            out += &format!(
                "{name:<9}  {:>8.3}  {:>8.3}  {:>7.3}  {:>6.3}  {:>6.3}  {rho:>8}  {:>5.3}\n",
                m.accuracy, m.macro_f1, m.f1_at_threshold, m.precision_at_threshold, m.recall_at_threshold, m.mae
            );
        }
        out
    }
}

/// Class of a score: the nearest integer.
pub fn class_of(score: f32) -> i32 {
    score.round() as i32
}

fn ranks(v: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0f64; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        // Ties share the mean of their ranks.
        let mean = (i + j) as f64 / 2.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's ρ: Pearson's correlation of the (tie-averaged) ranks.
pub fn spearman(a: &[f32], b: &[f32]) -> Option<f32> {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| (cov / (va * vb).sqrt()) as f32)
}

fn f1(tp: usize, fp: usize, fn_: usize) -> f32 {
    if tp == 0 { 0.0 } else { 2.0 * tp as f32 / (2 * tp + fp + fn_) as f32 }
}

/// The score cut that matches "label >= threshold".
pub fn cut_of(threshold: f32) -> f32 {
    threshold - 0.5
}

/// Scores predictions against labels; keep = `label >= threshold` vs `pred >= cut_of(threshold)`.
pub fn metrics(pred: &[f32], labels: &[f32], threshold: f32) -> Metrics {
    let n = labels.len().max(1) as f32;
    let mut classes: Vec<i32> = labels.iter().map(|&l| class_of(l)).collect();
    classes.sort_unstable();
    classes.dedup();
    // The nearest of the labels' classes (the lower on a tie).
    let nearest = |p: f32| *classes.iter().min_by(|&&a, &&b| (a as f32 - p).abs().total_cmp(&(b as f32 - p).abs())).unwrap_or(&0);
    let predicted: Vec<i32> = pred.iter().map(|&p| nearest(p)).collect();
    let truth: Vec<i32> = labels.iter().map(|&l| class_of(l)).collect();
    let accuracy = predicted.iter().zip(&truth).filter(|(p, t)| p == t).count() as f32 / n;
    let macro_f1 = classes
        .iter()
        .map(|&c| {
            let tp = predicted.iter().zip(&truth).filter(|&(&p, &t)| p == c && t == c).count();
            let fp = predicted.iter().zip(&truth).filter(|&(&p, &t)| p == c && t != c).count();
            let fn_ = predicted.iter().zip(&truth).filter(|&(&p, &t)| p != c && t == c).count();
            f1(tp, fp, fn_)
        })
        .sum::<f32>()
        / classes.len().max(1) as f32;
    let (mut tp, mut fp, mut fn_) = (0, 0, 0);
    for (&p, &l) in pred.iter().zip(labels) {
        match (p >= cut_of(threshold), l >= threshold) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
    }
    Metrics {
        accuracy,
        macro_f1,
        f1_at_threshold: f1(tp, fp, fn_),
        precision_at_threshold: if tp + fp == 0 { 0.0 } else { tp as f32 / (tp + fp) as f32 },
        recall_at_threshold: if tp + fn_ == 0 { 0.0 } else { tp as f32 / (tp + fn_) as f32 },
        spearman: spearman(pred, labels),
        mae: pred.iter().zip(labels).map(|(p, l)| (p - l).abs()).sum::<f32>() / n,
    }
}

/// Head settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadSettings {
    pub trees: usize,
    /// L2 strength of the logistic head (on the summed log-loss).
    pub alpha: f32,
    pub seed: u64,
}

impl Default for HeadSettings {
    fn default() -> Self {
        HeadSettings { trees: 100, alpha: 1.0, seed: 0 }
    }
}

/// Both heads fit on `x`, `y`.
pub fn fit_heads(x: &[Vec<f32>], y: &[f32], s: &HeadSettings) -> Result<(Forest, Logistic)> {
    let classes: Vec<i32> = y.iter().map(|&v| class_of(v)).collect();
    Ok((Forest::fit(x, y, s.trees, s.seed)?, Logistic::fit(x, &classes, s.alpha)?))
}

/// `folds`-fold cross-validation of both heads (a seeded shuffle, then every `folds`-th
/// document to a fold).
pub fn cross_validate(x: &[Vec<f32>], y: &[f32], folds: usize, threshold: f32, s: &HeadSettings) -> Result<CvReport> {
    let n = x.len();
    if folds < 2 || n < folds {
        return Err(ClassifyError::Folds { folds, needed: folds, documents: n });
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(s.seed));
    let mut forest = vec![0f32; n];
    let mut logistic = vec![0f32; n];
    let mut majority = vec![0f32; n];
    for f in 0..folds {
        let test: Vec<usize> = order.iter().skip(f).step_by(folds).copied().collect();
        let mut is_test = vec![false; n];
        test.iter().for_each(|&i| is_test[i] = true);
        let train: Vec<usize> = (0..n).filter(|&i| !is_test[i]).collect();
        let tx: Vec<Vec<f32>> = train.iter().map(|&i| x[i].clone()).collect();
        let ty: Vec<f32> = train.iter().map(|&i| y[i]).collect();
        let vx: Vec<Vec<f32>> = test.iter().map(|&i| x[i].clone()).collect();
        let (fo, lo) = fit_heads(&tx, &ty, &HeadSettings { seed: s.seed.wrapping_add(f as u64), ..*s })?;
        let common = most_common(&ty);
        for ((&i, a), b) in test.iter().zip(fo.predict(&vx)?).zip(lo.predict(&vx)) {
            forest[i] = a;
            logistic[i] = b;
            majority[i] = common as f32;
        }
    }
    let mut counts: Vec<(i32, usize)> = Vec::new();
    let mut classes: Vec<i32> = y.iter().map(|&v| class_of(v)).collect();
    classes.sort_unstable();
    for c in classes {
        match counts.last_mut() {
            Some((k, m)) if *k == c => *m += 1,
            _ => counts.push((c, 1)),
        }
    }
    Ok(CvReport {
        folds,
        seed: s.seed,
        documents: n,
        threshold,
        cut: cut_of(threshold),
        class_counts: counts,
        forest: metrics(&forest, y, threshold),
        logistic: metrics(&logistic, y, threshold),
        majority: metrics(&majority, y, threshold),
    })
}

/// The most common class (the smallest on a tie).
fn most_common(y: &[f32]) -> i32 {
    let mut c: Vec<i32> = y.iter().map(|&v| class_of(v)).collect();
    c.sort_unstable();
    let mut best = (0usize, c.first().copied().unwrap_or(0));
    let mut i = 0;
    while i < c.len() {
        let j = c[i..].iter().take_while(|&&v| v == c[i]).count();
        if j > best.0 {
            best = (j, c[i]);
        }
        i += j;
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_handles_ties_and_order() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        // scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]) = 0.9486832980505138
        let r = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((r - 0.948_683_3).abs() < 1e-5, "{r}");
    }

    #[test]
    fn metrics_count_nearest_classes_and_the_keep_decision() {
        // With classes {1, 4} only, 2.4 is a 1 and 2.6 a 4.
        let m = metrics(&[2.4, 2.6, 3.0, 1.0], &[1.0, 4.0, 4.0, 1.0], 3.0);
        assert_eq!(m.accuracy, 1.0);
        let labels = [0.0, 1.0, 3.0, 4.0, 5.0, 2.0];
        let pred = [0.2, 1.4, 2.6, 4.4, 3.0, 2.9];
        let m = metrics(&pred, &labels, 3.0);
        // classes: 0 1 3 4 3 3 vs 0 1 3 4 5 2 → 4 of 6 right.
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-6);
        // keep (score >= 2.5): pred [F F T T T T] vs labels [F F T T T F]: tp 3, fp 1, fn 0.
        assert!((m.f1_at_threshold - 6.0 / 7.0).abs() < 1e-6);
        assert_eq!(m.precision_at_threshold, 0.75);
        assert_eq!(m.recall_at_threshold, 1.0);
        // per class F1: 0 → 1, 1 → 1, 2 → 0, 3 → 2·1/(2+2+0) = 0.5, 4 → 1, 5 → 0.
        assert!((m.macro_f1 - 3.5 / 6.0).abs() < 1e-6, "{}", m.macro_f1);
    }

    #[test]
    fn most_common_breaks_ties_low() {
        assert_eq!(most_common(&[3.0, 1.0, 3.0, 1.0, 2.0]), 1);
        assert_eq!(most_common(&[4.0, 4.0, 1.0]), 4);
    }
}
