//! The evaluation protocol for language models (ASSETS.md): perplexity over non-overlapping
//! windows, each from an empty KV cache, and KL / top-1 agreement against a reference model;
//! the model and the reference run in the interpreter or as compiled bundles.

use crate::frontend::{Model, ModelKind};
use llmc_ir::interp::WeightCache;
use llmc_ir::{IrError, Session, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum EvalError {
    #[error("{path}: {source}")]
    #[diagnostic(code(llmc::eval::io))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text, window or model does not fit the protocol.
    #[error("{0}")]
    #[diagnostic(code(llmc::eval::bad_input))]
    Bad(String),
    /// The interpreter could not run the model.
    #[error(transparent)]
    #[diagnostic(code(llmc::eval::interpreter))]
    Ir(#[from] IrError),
    /// The compiled code returned an error.
    #[error(transparent)]
    #[diagnostic(code(llmc::eval::bundle))]
    Runtime(#[from] llmc_runtime::BundleError),
}

/// The protocol's text: each file's content with surrounding whitespace stripped, joined by
/// a blank line, files in the order given.
pub fn join_texts(files: &[PathBuf]) -> Result<String, EvalError> {
    let mut parts = Vec::with_capacity(files.len());
    for f in files {
        let s = std::fs::read_to_string(f).map_err(|source| EvalError::Io {
            path: f.clone(),
            source,
        })?;
        parts.push(s.trim().to_string());
    }
    Ok(parts.join("\n\n"))
}

/// Windows to evaluate and their length.
#[derive(Clone, Copy, Debug)]
pub struct Protocol {
    pub window: usize,
    pub windows: usize,
}

impl Default for Protocol {
    fn default() -> Self {
        Protocol {
            window: 512,
            windows: 16,
        }
    }
}

/// What an evaluation measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EvalResult {
    pub tokens: usize,
    pub windows: usize,
    pub window: usize,
    pub predicted: usize,
    pub nll: f64,
    pub perplexity: f64,
    /// Mean KL(reference ‖ model) per predicted token, with a reference.
    pub kl: Option<f64>,
    /// Fraction of predicted positions where the model's top token is the reference's.
    pub top1: Option<f64>,
    /// The reference's perplexity on the same windows.
    pub reference_perplexity: Option<f64>,
    pub seconds: f64,
}

/// A language model that scores windows: the log-probabilities of every position of a
/// window, each window from an empty KV cache.
pub trait WindowScorer {
    /// Logits per position.
    fn vocab(&self) -> usize;
    /// Fails, saying why and what to do, when it cannot score windows of this length.
    fn check_window(&self, window: usize) -> Result<(), EvalError>;
    /// Log-probabilities `[len, vocab]` of every position of one window.
    fn log_probs(&mut self, ids: &[u32]) -> Result<Vec<f32>, EvalError>;
}

/// A causal LM in the interpreter, ready to score windows.
pub struct Scorer<'m> {
    session: Session<'m>,
    vocab: usize,
    max_context: usize,
}

impl<'m> Scorer<'m> {
    pub fn new(m: &'m Model) -> Result<Scorer<'m>, EvalError> {
        let ModelKind::CausalLm {
            vocab, max_context, ..
        } = m.kind
        else {
            return Err(EvalError::Bad(format!(
                "{}: eval measures language models; this model is {:?}",
                m.path.display(),
                m.kind
            )));
        };
        let session = Session::with_cache(&m.graph, Arc::new(WeightCache::new(&m.graph)))?;
        Ok(Scorer {
            session,
            vocab,
            max_context,
        })
    }
}

impl WindowScorer for Scorer<'_> {
    fn vocab(&self) -> usize {
        self.vocab
    }

    fn check_window(&self, window: usize) -> Result<(), EvalError> {
        if window > self.max_context {
            return Err(EvalError::Bad(format!(
                "window {window} exceeds the model's context of {}",
                self.max_context
            )));
        }
        Ok(())
    }

    fn log_probs(&mut self, ids: &[u32]) -> Result<Vec<f32>, EvalError> {
        self.session.reset();
        let mut v = interpreter_logits(&mut self.session, ids, 0, self.vocab)?;
        use rayon::prelude::*;
        v.par_chunks_mut(self.vocab).for_each(log_softmax);
        Ok(v)
    }
}

/// The interpreter continues `session` with `ids` at positions `start..`: the `logits` output,
/// `ids.len()` rows of `vocab`.
pub fn interpreter_logits(
    session: &mut Session,
    ids: &[u32],
    start: usize,
    vocab: usize,
) -> Result<Vec<f32>, EvalError> {
    let n = ids.len();
    let tokens = Tensor::i64(vec![1, n], ids.iter().map(|&t| t as i64).collect());
    let positions = Tensor::i64(vec![1, n], (start as i64..(start + n) as i64).collect());
    let out = session.run(&[("tokens", tokens), ("positions", positions)])?;
    let logits = out
        .into_iter()
        .find(|(k, _)| k == "logits")
        .ok_or_else(|| EvalError::Bad("the graph has no 'logits' output".into()))?
        .1
        .to_f32_vec();
    if logits.len() != n * vocab {
        return Err(EvalError::Bad(format!(
            "logits have {} values, expected {n} x {vocab}",
            logits.len()
        )));
    }
    Ok(logits)
}

/// A compiled decoder bundle scoring windows: each window is prefilled from an empty cache
/// in calls of at most the bundle's `max_tokens`, keeping every position's logits.
pub struct BundleScorer<'b> {
    rt: &'b mut llmc_runtime::Bundle,
    vocab: usize,
    max_tokens: usize,
    max_context: usize,
    label: String,
}

impl<'b> BundleScorer<'b> {
    /// Wraps a loaded bundle; `label` names it in errors (its directory).
    pub fn new(
        rt: &'b mut llmc_runtime::Bundle,
        vocab: usize,
        max_tokens: usize,
        max_context: usize,
        label: String,
    ) -> BundleScorer<'b> {
        BundleScorer {
            rt,
            vocab,
            max_tokens: max_tokens.max(1),
            max_context,
            label,
        }
    }
}

impl WindowScorer for BundleScorer<'_> {
    fn vocab(&self) -> usize {
        self.vocab
    }

    fn check_window(&self, window: usize) -> Result<(), EvalError> {
        if window > self.max_context {
            return Err(EvalError::Bad(format!(
                "{}: a window of {window} tokens does not fit the bundle's KV cache of {} tokens (build eval bundles with --max-context {window} --max-tokens {window}, or pass a smaller --window)",
                self.label, self.max_context
            )));
        }
        Ok(())
    }

    fn log_probs(&mut self, ids: &[u32]) -> Result<Vec<f32>, EvalError> {
        self.check_window(ids.len())?;
        self.rt.reset()?;
        let mut v = vec![0f32; ids.len() * self.vocab];
        let toks: Vec<i32> = ids.iter().map(|&t| t as i32).collect();
        for (k, chunk) in toks.chunks(self.max_tokens).enumerate() {
            let at = k * self.max_tokens * self.vocab;
            self.rt
                .prefill_into(chunk, &mut v[at..at + chunk.len() * self.vocab])?;
        }
        use rayon::prelude::*;
        v.par_chunks_mut(self.vocab).for_each(log_softmax);
        Ok(v)
    }
}

/// In-place log-softmax of one row, accumulating in f64.
pub fn log_softmax(row: &mut [f32]) {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    row.iter_mut().for_each(|x| *x = (*x as f64 - lse) as f32);
}

/// Runs the protocol on `ids` with an optional reference model, both in the interpreter;
/// `progress` is told after each window.
pub fn evaluate(
    model: &Model,
    reference: Option<&Model>,
    ids: &[u32],
    p: Protocol,
    progress: impl FnMut(usize),
) -> Result<EvalResult, EvalError> {
    let mut scorer = Scorer::new(model)?;
    let mut ref_scorer = reference.map(Scorer::new).transpose()?;
    evaluate_with(
        &mut scorer,
        ref_scorer.as_mut().map(|r| r as &mut dyn WindowScorer),
        ids,
        p,
        progress,
    )
}

/// Runs the protocol on `ids` with any scorers (interpreter or compiled bundles).
pub fn evaluate_with(
    scorer: &mut dyn WindowScorer,
    mut reference: Option<&mut dyn WindowScorer>,
    ids: &[u32],
    p: Protocol,
    mut progress: impl FnMut(usize),
) -> Result<EvalResult, EvalError> {
    let start = std::time::Instant::now();
    let available = ids.len() / p.window.max(1);
    if p.window < 2 {
        return Err(EvalError::Bad(
            "the window must hold at least 2 tokens".into(),
        ));
    }
    if available < p.windows {
        return Err(EvalError::Bad(format!(
            "the text makes {} tokens: {available} windows of {}, fewer than the {} asked for (pass more text or --windows {available})",
            ids.len(),
            p.window,
            p.windows
        )));
    }
    scorer.check_window(p.window)?;
    if let Some(r) = &reference {
        r.check_window(p.window)?;
        if r.vocab() != scorer.vocab() {
            return Err(EvalError::Bad(format!(
                "the reference's vocabulary ({}) differs from the model's ({})",
                r.vocab(),
                scorer.vocab()
            )));
        }
    }
    let has_ref = reference.is_some();
    let v = scorer.vocab();
    let (mut nll, mut ref_nll, mut kl, mut agree, mut count) = (0f64, 0f64, 0f64, 0usize, 0usize);
    for w in 0..p.windows {
        let win = &ids[w * p.window..(w + 1) * p.window];
        let lp = scorer.log_probs(win)?;
        let rp = match reference.as_mut() {
            Some(r) => Some(r.log_probs(win)?),
            None => None,
        };
        for i in 0..p.window - 1 {
            let row = &lp[i * v..(i + 1) * v];
            let next = win[i + 1] as usize;
            if next >= v {
                return Err(EvalError::Bad(format!(
                    "token id {next} is outside the vocabulary of {v}"
                )));
            }
            nll -= row[next] as f64;
            if let Some(rp) = &rp {
                let rrow = &rp[i * v..(i + 1) * v];
                ref_nll -= rrow[next] as f64;
                kl += rrow
                    .iter()
                    .zip(row)
                    .map(|(&r, &m)| (r as f64).exp() * (r as f64 - m as f64))
                    .sum::<f64>();
                if llmc_runtime::sampler::argmax(rrow) == llmc_runtime::sampler::argmax(row) {
                    agree += 1;
                }
            }
            count += 1;
        }
        progress(w + 1);
    }
    let mean = nll / count as f64;
    Ok(EvalResult {
        tokens: ids.len(),
        windows: p.windows,
        window: p.window,
        predicted: count,
        nll: mean,
        perplexity: mean.exp(),
        kl: has_ref.then(|| kl / count as f64),
        top1: has_ref.then(|| agree as f64 / count as f64),
        reference_perplexity: has_ref.then(|| (ref_nll / count as f64).exp()),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The protocol's default test files: names starting with 2016 … 2021 in a directory, sorted.
pub fn year_files(dir: &Path, from: u32, to: u32) -> Result<Vec<PathBuf>, EvalError> {
    let rd = std::fs::read_dir(dir).map_err(|source| EvalError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.get(..4))
                .and_then(|y| y.parse::<u32>().ok())
                .is_some_and(|y| (from..=to).contains(&y))
        })
        .collect();
    files.sort();
    Ok(files)
}
