//! The two classifiers that learn a quality score from embeddings: a random forest (phi-1's
//! choice, over a pretrained code model's embeddings) and a logistic head (FineWeb-Edu put a
//! linear head on frozen embeddings). Both come from smartcore; both predict a continuous score
//! on the labels' scale, so a dataset can be re-thresholded without re-scoring.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_regressor::{RandomForestRegressor, RandomForestRegressorParameters};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

use crate::error::{ClassifyError, Result};

/// Which head scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Forest,
    Logistic,
}

impl std::str::FromStr for HeadKind {
    type Err = ClassifyError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "forest" => Ok(HeadKind::Forest),
            "logistic" => Ok(HeadKind::Logistic),
            _ => Err(ClassifyError::UnknownHead(s.to_string())),
        }
    }
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeadKind::Forest => "forest",
            HeadKind::Logistic => "logistic",
        })
    }
}

fn matrix(x: &[Vec<f32>]) -> Result<DenseMatrix<f32>> {
    let cols = x.first().map_or(0, Vec::len);
    if x.iter().any(|r| r.len() != cols) {
        return Err(ClassifyError::Ragged);
    }
    DenseMatrix::new(x.len(), cols, x.concat(), false).map_err(|source| ClassifyError::Smartcore { what: "embedding matrix", source })
}

fn forest_error(source: smartcore::error::Failed) -> ClassifyError {
    ClassifyError::Smartcore { what: "random forest", source }
}

type Rf = RandomForestRegressor<f32, f32, DenseMatrix<f32>, Vec<f32>>;

/// A random forest regressor on the scores. Its trees are grown as a few independent forests
/// in parallel (smartcore grows one forest's trees one after another); their mean is the mean
/// over all trees, the same estimator.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forest {
    /// (trees, forest)
    parts: Vec<(usize, Rf)>,
}

impl Forest {
    /// `trees` in all; each split considers √features candidates, as random forests usually do.
    /// The same seed grows the same trees on any machine (the parts do not depend on the cores).
    pub fn fit(x: &[Vec<f32>], y: &[f32], trees: usize, seed: u64) -> Result<Self> {
        if trees == 0 {
            return Err(ClassifyError::NoTrees);
        }
        let m = matrix(x)?;
        let y = y.to_vec();
        let features = x.first().map_or(1, Vec::len);
        let parts = trees.min(8);
        let parts: Vec<(usize, Rf)> = (0..parts)
            .into_par_iter()
            .map(|p| {
                let n = trees / parts + usize::from(p < trees % parts);
                // smartcore seeds tree i of a forest with `seed + i`: parts start `trees` apart,
                // so no two trees share a seed.
                let params = RandomForestRegressorParameters::default()
                    .with_n_trees(n)
                    .with_m(((features as f64).sqrt().round() as usize).max(1))
                    .with_seed(seed.wrapping_mul(0x9E37_79B9).wrapping_add((p * trees) as u64));
                RandomForestRegressor::fit(&m, &y, params).map(|f| (n, f)).map_err(forest_error)
            })
            .collect::<Result<_>>()?;
        Ok(Forest { parts })
    }

    pub fn predict(&self, x: &[Vec<f32>]) -> Result<Vec<f32>> {
        let m = matrix(x)?;
        let mut sum = vec![0f32; x.len()];
        let mut trees = 0f32;
        for (n, p) in &self.parts {
            let n = *n as f32;
            let y = p.predict(&m).map_err(forest_error)?;
            sum.iter_mut().zip(y).for_each(|(s, v)| *s += v * n);
            trees += n;
        }
        Ok(sum.into_iter().map(|s| s / trees).collect())
    }
}

/// Multinomial logistic regression (binary when two classes) on standardized embeddings, L2
/// `alpha`, fit by smartcore's L-BFGS; the score is the expected class under its
/// probabilities, so it is continuous between the lowest and the highest label.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logistic {
    mean: Vec<f32>,
    scale: Vec<f32>,
    classes: Vec<i32>,
    /// One row per class (one row in all when binary: the logit of the second class).
    weights: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

impl Logistic {
    pub fn fit(x: &[Vec<f32>], y: &[i32], alpha: f32) -> Result<Self> {
        let n = x.len().max(1) as f64;
        let d = x.first().map_or(0, Vec::len);
        let mut mean = vec![0f64; d];
        for r in x {
            mean.iter_mut().zip(r).for_each(|(m, &v)| *m += v as f64 / n);
        }
        let mut var = vec![0f64; d];
        for r in x {
            var.iter_mut().zip(r).zip(&mean).for_each(|((s, &v), m)| *s += (v as f64 - m).powi(2) / n);
        }
        let mean: Vec<f32> = mean.into_iter().map(|m| m as f32).collect();
        // A constant feature gets scale 1: it is all zeros after centering either way.
        let scale: Vec<f32> = var.into_iter().map(|v| if v > 1e-12 { v.sqrt() as f32 } else { 1.0 }).collect();
        let mut classes: Vec<i32> = y.to_vec();
        classes.sort_unstable();
        classes.dedup();
        let mut head = Logistic { mean, scale, classes, weights: Vec::new(), bias: Vec::new() };
        if head.classes.len() < 2 {
            return Ok(head); // one class: that class, always
        }
        let z = matrix(&x.iter().map(|r| head.standardize(r)).collect::<Vec<_>>())?;
        let params = LogisticRegressionParameters::default().with_alpha(alpha);
        let lr: LogisticRegression<f32, i32, DenseMatrix<f32>, Vec<i32>> =
            LogisticRegression::fit(&z, &y.to_vec(), params).map_err(|source| ClassifyError::Smartcore { what: "logistic regression", source })?;
        use smartcore::linalg::basic::arrays::Array;
        let (rows, cols) = lr.coefficients().shape();
        head.weights = (0..rows).map(|r| (0..cols).map(|c| *lr.coefficients().get((r, c))).collect()).collect();
        head.bias = (0..rows).map(|r| *lr.intercept().get((r, 0))).collect();
        debug_assert_eq!(lr.classes(), &head.classes);
        Ok(head)
    }

    fn standardize(&self, r: &[f32]) -> Vec<f32> {
        r.iter().zip(&self.mean).zip(&self.scale).map(|((v, m), s)| (v - m) / s).collect()
    }

    pub fn classes(&self) -> &[i32] {
        &self.classes
    }

    /// Class probabilities, one row per input, columns in [`classes`](Self::classes) order.
    pub fn probabilities(&self, x: &[Vec<f32>]) -> Vec<Vec<f32>> {
        x.par_iter()
            .map(|r| {
                if self.classes.len() < 2 {
                    return vec![1.0];
                }
                let z = self.standardize(r);
                let logits: Vec<f32> = self.weights.iter().zip(&self.bias).map(|(w, b)| w.iter().zip(&z).map(|(a, b)| a * b).sum::<f32>() + b).collect();
                if logits.len() == 1 {
                    let p = 1.0 / (1.0 + (-logits[0]).exp());
                    return vec![1.0 - p, p];
                }
                let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
                let s: f32 = e.iter().sum();
                e.into_iter().map(|v| v / s).collect()
            })
            .collect()
    }

    /// The expected class.
    pub fn predict(&self, x: &[Vec<f32>]) -> Vec<f32> {
        self.probabilities(x).into_iter().map(|p| p.iter().zip(&self.classes).map(|(p, &c)| p * c as f32).sum()).collect()
    }
}
