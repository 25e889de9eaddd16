//! `llmc bench`: prefill and batch-1 decode speed of a decoder bundle's compiled code, and the
//! decode's effective weight-read bandwidth, over several runs per thread count.

use crate::bundle::{BundleDir, BundleDirError, BundleKind};
use serde::Serialize;
use std::fmt::Write;
use std::time::Instant;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BenchError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Bundle(#[from] BundleDirError),
    #[error(transparent)]
    #[diagnostic(code(llmc::bench::bundle))]
    Runtime(#[from] llmc_runtime::BundleError),
    /// Options that do not fit the bundle.
    #[error("{0}")]
    #[diagnostic(code(llmc::bench::options))]
    Bad(String),
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Thread counts to measure, each with its own pool (1: no pool).
    pub threads: Vec<usize>,
    /// Tokens of the timed prefill, from an empty cache.
    pub prefill: usize,
    /// Tokens in the cache before the timed decode steps.
    pub context: usize,
    /// Decode steps timed per run.
    pub decode: usize,
    /// Timed runs per measurement, after one warm-up.
    pub runs: usize,
    /// Also measure the machine's read bandwidth and int8 dot-product peak, and report the
    /// bundle's figures as fractions of them.
    pub machine: bool,
}

/// What the machine can do at most, per thread count.
#[derive(Clone, Debug, Serialize)]
pub struct MachineLimits {
    /// Sustained read bandwidth, GB/s (best of 3 reads of 1 GiB).
    pub read_gb_per_s: f64,
    /// `vpdpbusd` peak in int8 GOPS (2 per multiply-add); absent without AVX-512 VNNI.
    pub vnni_gops: Option<f64>,
}

/// Summary of one measurement's runs, in tokens per second.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// First and third quartiles.
    pub q1: f64,
    pub q3: f64,
    pub runs: Vec<f64>,
}

impl Stats {
    fn of(runs: Vec<f64>) -> Stats {
        let mut v = runs.clone();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            let x = p * (v.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
        };
        Stats {
            median: q(0.5),
            min: v[0],
            max: v[v.len() - 1],
            q1: q(0.25),
            q3: q(0.75),
            runs,
        }
    }

    fn scaled(&self, k: f64) -> Stats {
        Stats {
            median: self.median * k,
            min: self.min * k,
            max: self.max * k,
            q1: self.q1 * k,
            q3: self.q3 * k,
            runs: self.runs.iter().map(|x| x * k).collect(),
        }
    }

    fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// The figures of one thread count.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadResult {
    pub threads: usize,
    /// Prefill tokens per second.
    pub prefill_tokens_per_s: Stats,
    /// Decode tokens per second at the given context.
    pub decode_tokens_per_s: Stats,
    /// Weight bytes a decoded token reads × decode tokens/s, in GB/s (10⁹ bytes).
    pub decode_weight_gb_per_s: Stats,
    /// Linear layers' int8/f32 operations per second during prefill, GOPS (2 per MAC).
    pub prefill_linear_gops: Stats,
    pub machine: Option<MachineLimits>,
}

/// A benchmark's result.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub bundle: String,
    pub name: String,
    pub target: String,
    pub cpu: String,
    pub kernels: String,
    /// Bytes of weights one decoded token reads (see [`BundleDir::weight_bytes_per_token`]).
    pub weight_bytes_per_token: u64,
    /// Multiply-adds of the linear layers per token.
    pub linear_macs_per_token: u64,
    /// Bytes of the weights file's tensors.
    pub weights_file_tensor_bytes: u64,
    pub prefill_tokens: usize,
    /// Prefill calls the timed prefill takes (more than one when it exceeds max_tokens).
    pub prefill_calls: usize,
    pub context: usize,
    pub decode_steps: usize,
    pub runs: usize,
    pub results: Vec<ThreadResult>,
}

impl BenchReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "bundle   {} ({}, {} cpu={})",
            self.bundle, self.name, self.target, self.cpu
        );
        let _ = writeln!(t, "kernels  {}", self.kernels);
        let _ = writeln!(
            t,
            "weights  {:.1} MB read per decoded token (weights file: {:.1} MB of tensors)",
            self.weight_bytes_per_token as f64 / 1e6,
            self.weights_file_tensor_bytes as f64 / 1e6
        );
        let _ = writeln!(
            t,
            "method   prefill of {} tokens from an empty cache, logits of the last only ({} call{}); {} decode steps after filling the cache to {} tokens; {} runs each: median (min–max)\n",
            self.prefill_tokens,
            self.prefill_calls,
            if self.prefill_calls == 1 { "" } else { "s" },
            self.decode_steps,
            self.context,
            self.runs
        );
        let _ = writeln!(
            t,
            "{:<8} {:<28} {:<28} {:<24} {:<24}",
            "threads", "prefill tok/s", "decode tok/s", "decode weight GB/s", "prefill linear GOPS"
        );
        for r in &self.results {
            let _ = writeln!(
                t,
                "{:<8} {:<28} {:<28} {:<24} {:<24}",
                r.threads,
                r.prefill_tokens_per_s.show(1),
                r.decode_tokens_per_s.show(2),
                r.decode_weight_gb_per_s.show(2),
                r.prefill_linear_gops.show(1)
            );
        }
        let machine: Vec<&ThreadResult> = self
            .results
            .iter()
            .filter(|r| r.machine.is_some())
            .collect();
        if !machine.is_empty() {
            let _ = writeln!(t, "\nagainst the machine (measured in this run)");
            for r in machine {
                let m = r.machine.as_ref().expect("filtered");
                let bw = r.decode_weight_gb_per_s.median / m.read_gb_per_s * 100.0;
                let vnni = match m.vnni_gops {
                    Some(p) => format!(
                        "VNNI peak {p:.0} GOPS: prefill at {:.0}%",
                        r.prefill_linear_gops.median / p * 100.0
                    ),
                    None => "no AVX-512 VNNI".to_string(),
                };
                let _ = writeln!(
                    t,
                    "{} thread(s): read bandwidth {:.1} GB/s: decode at {bw:.0}%; {vnni}",
                    r.threads, m.read_gb_per_s
                );
            }
        }
        t
    }
}

/// Deterministic token ids in `1..vocab` (the content does not change the timing).
fn tokens(n: usize, vocab: usize) -> Vec<i32> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (1 + x % (vocab as u64 - 1).max(1)) as i32
        })
        .collect()
}

/// Prefills `toks` in calls of at most `chunk` tokens.
fn prefill(
    rt: &mut llmc_runtime::Bundle,
    toks: &[i32],
    chunk: usize,
    vocab: usize,
    logits: &mut [f32],
) -> Result<(), BenchError> {
    for c in toks.chunks(chunk) {
        rt.prefill_last_into(c, &mut logits[..vocab])?;
    }
    Ok(())
}

/// Measures a decoder bundle; `log` hears what is being timed.
pub fn bench(
    bd: &BundleDir,
    o: &BenchOptions,
    mut log: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    bd.expect_kind(BundleKind::Decoder, "bench")?;
    let vocab = bd.vocab.ok_or_else(|| {
        BenchError::Bad(format!(
            "{}: the manifest gives no vocabulary size",
            bd.dir.display()
        ))
    })?;
    if o.prefill == 0 || o.decode == 0 || o.runs == 0 || o.threads.is_empty() {
        return Err(BenchError::Bad(
            "--prefill, --decode, --runs and --threads must be at least 1".into(),
        ));
    }
    let need = o.prefill.max(o.context + o.decode);
    if need > bd.max_context {
        return Err(BenchError::Bad(format!(
            "{}: the benchmark needs a KV cache of {need} tokens (a prefill of {}, or {} decode steps after {} tokens), and the bundle holds {} (rebuild it with --max-context {need}, or pass smaller --prefill/--context/--decode)",
            bd.dir.display(),
            o.prefill,
            o.decode,
            o.context,
            bd.max_context
        )));
    }
    let chunk = bd.max_tokens.max(1);
    let toks = tokens(need, vocab);
    let mut logits = vec![0f32; chunk.min(need) * vocab];
    let bytes = bd.weight_bytes_per_token();
    let model = bd.manifest.model.as_ref();
    let macs = model.map_or(0, |m| m.linear_macs_per_token);
    // prefill runs the output head on the last token of each call only
    let head = model.map_or(0, |m| m.head_macs).min(macs);
    let prefill_ops = 2.0
        * ((o.prefill as u64 * (macs - head)) as f64
            + (o.prefill.div_ceil(chunk) as u64 * head) as f64);
    let mut results = Vec::new();
    for &threads in &o.threads {
        let mut rt = bd.load(threads)?;
        log(&format!("{threads} thread(s): warming up"));
        rt.reset()?;
        prefill(&mut rt, &toks[..o.prefill], chunk, vocab, &mut logits)?;
        rt.decode(toks[0], &mut logits[..vocab])?;
        log(&format!(
            "{threads} thread(s): prefill of {} tokens",
            o.prefill
        ));
        let mut pre = Vec::with_capacity(o.runs);
        for _ in 0..o.runs {
            rt.reset()?;
            let t0 = Instant::now();
            prefill(&mut rt, &toks[..o.prefill], chunk, vocab, &mut logits)?;
            pre.push(o.prefill as f64 / t0.elapsed().as_secs_f64());
        }
        log(&format!(
            "{threads} thread(s): {} decode steps at context {}",
            o.decode, o.context
        ));
        let mut dec = Vec::with_capacity(o.runs);
        for _ in 0..o.runs {
            rt.reset()?;
            if o.context > 0 {
                prefill(&mut rt, &toks[..o.context], chunk, vocab, &mut logits)?;
            }
            let t0 = Instant::now();
            for &t in &toks[o.context..o.context + o.decode] {
                rt.decode(t, &mut logits[..vocab])?;
            }
            dec.push(o.decode as f64 / t0.elapsed().as_secs_f64());
        }
        let decode = Stats::of(dec);
        let prefill = Stats::of(pre);
        let machine = o.machine.then(|| {
            log(&format!("{threads} thread(s): machine limits"));
            MachineLimits {
                read_gb_per_s: llmc_backends::cpu::machine::read_bandwidth(1 << 30, threads, 3),
                vnni_gops: llmc_backends::cpu::machine::vnni_peak(threads),
            }
        });
        results.push(ThreadResult {
            threads,
            prefill_linear_gops: prefill.scaled(prefill_ops / o.prefill as f64 / 1e9),
            prefill_tokens_per_s: prefill,
            decode_weight_gb_per_s: decode.scaled(bytes as f64 / 1e9),
            decode_tokens_per_s: decode,
            machine,
        });
    }
    let target = &bd.manifest.backend.target;
    Ok(BenchReport {
        bundle: bd.dir.display().to_string(),
        name: bd.name.clone(),
        target: bd.triple.clone(),
        cpu: target.cpu.clone(),
        kernels: target.kernels.clone(),
        weight_bytes_per_token: bytes,
        linear_macs_per_token: macs,
        weights_file_tensor_bytes: bd.tensor_bytes(),
        prefill_tokens: o.prefill,
        prefill_calls: o.prefill.div_ceil(chunk),
        context: o.context,
        decode_steps: o.decode,
        runs: o.runs,
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_median_and_quartiles() {
        let s = Stats::of(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(
            (s.median, s.min, s.max, s.q1, s.q3),
            (3.0, 1.0, 5.0, 2.0, 4.0)
        );
        let s = Stats::of(vec![2.0, 1.0]);
        assert_eq!(s.median, 1.5);
        assert!(tokens(100, 10).iter().all(|&t| (1..10).contains(&t)));
    }
}
