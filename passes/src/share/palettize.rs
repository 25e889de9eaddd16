//! Weight sharing by palettization: each group of a linear weight (the whole tensor, or a run
//! of output rows) keeps a codebook of `2^bits` values found by 1-D k-means, and every element
//! stores the index of its nearest entry.
//!
//! Contract: only the weights of `linear` ops change (the ones quantization would change; an
//! embedding tied to the output head changes with it). The numeric error is each element's
//! distance to its nearest codebook entry; the report gives it per weight as the relative
//! Frobenius error and, when calibrated, the relative output error on calibration inputs.
//!
//! The k-means is weighted: an element counts with the calibration energy of its input column
//! (the diagonal of `XᵀX`) when statistics are at hand, so the entries sit where the layer's
//! output is most sensitive. In one dimension the clusters of sorted values are contiguous
//! ranges, so after one sort every Lloyd step is a binary search per boundary and a prefix-sum
//! difference per mean: `O(K log n)`.

use crate::calib::Stats;
use crate::core::edit::replace;
use crate::core::pass::{OptionKind, OptionSpec, Options, Pass, PassContext, PassInfo, Progress};
use crate::core::report::{PassRow, WeightRow};
use crate::{MatrixError, PassError};
use llmc_ir::types::EncodingError;
use llmc_ir::weights::pack_codes;
use llmc_ir::{
    Bytes, DType, Encoding, Format, Graph, Group, PaletteSpec, TensorType, ValueId, WeightData,
};
use rayon::prelude::*;

/// A 1-D k-means result: sorted centroids and the Lloyd steps taken.
#[derive(Clone, Debug)]
pub struct KMeans {
    pub centroids: Vec<f32>,
    pub iterations: usize,
}

/// Values sorted with their weights, and prefix sums of `w` and `w·x` for range means.
struct Sorted {
    xs: Vec<f32>,
    w: Vec<f64>,
    wx: Vec<f64>,
}

impl Sorted {
    fn new(xs: &[f32], weights: Option<&[f32]>) -> Sorted {
        let mut pairs: Vec<(f32, f64)> = match weights {
            Some(w) => {
                // a floor keeps elements of silent channels from having no say at all
                let mean =
                    w.iter().map(|&v| v.max(0.0) as f64).sum::<f64>() / w.len().max(1) as f64;
                let floor = (mean * 1e-6).max(f64::MIN_POSITIVE);
                xs.iter()
                    .zip(w)
                    .map(|(&x, &v)| (x, (v.max(0.0) as f64).max(floor)))
                    .collect()
            }
            None => xs.iter().map(|&x| (x, 1.0)).collect(),
        };
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut w = Vec::with_capacity(pairs.len() + 1);
        let mut wx = Vec::with_capacity(pairs.len() + 1);
        let (mut a, mut b) = (0f64, 0f64);
        w.push(0.0);
        wx.push(0.0);
        for &(x, v) in &pairs {
            a += v;
            b += v * x as f64;
            w.push(a);
            wx.push(b);
        }
        Sorted {
            xs: pairs.into_iter().map(|p| p.0).collect(),
            w,
            wx,
        }
    }

    /// The weighted mean of sorted elements `lo..hi`, `None` when the range is empty.
    fn mean(&self, lo: usize, hi: usize) -> Option<f32> {
        let w = self.w[hi] - self.w[lo];
        (hi > lo && w > 0.0).then(|| ((self.wx[hi] - self.wx[lo]) / w) as f32)
    }

    /// Where each cluster ends: elements below the midpoint of two neighbouring centroids go
    /// to the lower one.
    fn cuts(&self, c: &[f32]) -> Vec<usize> {
        c.windows(2)
            .map(|p| {
                let m = midpoint(p[0], p[1]);
                self.xs.partition_point(|&x| x < m)
            })
            .chain(std::iter::once(self.xs.len()))
            .collect()
    }
}

fn midpoint(a: f32, b: f32) -> f32 {
    a + (b - a) * 0.5
}

/// Weighted 1-D k-means of `xs` into `k` clusters (`weights`: one per element, `None`: all
/// alike). Starts from the weighted quantiles (cluster `j` holds the `j`-th `1/k` of the
/// weight) and runs Lloyd's steps until no element changes cluster or `max_iter` is reached.
/// The centroids come back sorted; with fewer distinct values than `k`, some repeat.
pub fn kmeans_1d(xs: &[f32], weights: Option<&[f32]>, k: usize, max_iter: usize) -> KMeans {
    let k = k.max(1);
    if xs.is_empty() {
        return KMeans {
            centroids: vec![0.0; k],
            iterations: 0,
        };
    }
    let s = Sorted::new(xs, weights);
    let n = s.xs.len();
    let total = s.w[n];
    // quantile start: cluster j ends where the prefix weight reaches (j+1)/k of the total
    let mut cuts: Vec<usize> = (1..=k)
        .map(|j| {
            if j == k {
                n
            } else {
                s.w.partition_point(|&v| v < total * j as f64 / k as f64)
                    .min(n)
            }
        })
        .collect();
    let mut c = vec![0f32; k];
    let mut lo = 0;
    for j in 0..k {
        let hi = cuts[j].max(lo);
        c[j] = s.mean(lo, hi).unwrap_or(s.xs[lo.min(n - 1)]);
        lo = hi;
    }
    c.sort_by(f32::total_cmp);
    let mut iterations = 0;
    while iterations < max_iter {
        let next = s.cuts(&c);
        iterations += 1;
        let mut lo = 0;
        for j in 0..k {
            let hi = next[j];
            if let Some(m) = s.mean(lo, hi) {
                c[j] = m;
            }
            lo = hi;
        }
        c.sort_by(f32::total_cmp);
        if next == cuts {
            break;
        }
        cuts = next;
    }
    KMeans {
        centroids: c,
        iterations,
    }
}

/// Rounds a value to the entry type.
fn round_entry(x: f32, entry: DType) -> f32 {
    match entry {
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// One palettized matrix: canonical bytes, the values they decode to, and the most Lloyd
/// steps any group took.
#[derive(Clone, Debug)]
pub struct Palettized {
    pub bytes: Vec<u8>,
    pub approx: Vec<f32>,
    pub iterations: usize,
}

/// Rows per codebook of a spec over `rows` rows.
fn rows_per(spec: &PaletteSpec, rows: usize) -> Result<usize, MatrixError> {
    if !(1..=8).contains(&spec.bits) {
        return Err(EncodingError::PaletteBits { bits: spec.bits }.into());
    }
    match spec.group {
        Group::Tensor => Ok(rows.max(1)),
        Group::Channel => Ok(1),
        Group::Rows(g) if g > 0 => Ok(g as usize),
        group => Err(MatrixError::PaletteGroup { group }),
    }
}

/// A group's codebook, sorted, with the midpoints between neighbouring entries.
#[derive(Clone, Debug)]
struct Book {
    entries: Vec<f32>,
    mids: Vec<f32>,
}

impl Book {
    /// The index of the entry nearest `x`, and the entry.
    #[inline]
    fn nearest(&self, x: f32) -> (u8, f32) {
        let i = self.mids.partition_point(|&m| m <= x);
        (i as u8, self.entries[i])
    }
}

/// The codebook of every group by weighted k-means, entries rounded to the entry type; and
/// the most Lloyd steps a group took.
fn codebooks(
    v: &[f32],
    rows: usize,
    cols: usize,
    spec: &PaletteSpec,
    energy: Option<&[f32]>,
    max_iter: usize,
) -> Result<(Vec<Book>, usize), MatrixError> {
    let rows_per = rows_per(spec, rows)?;
    let k = 1usize << spec.bits;
    let books: Vec<(Book, usize)> = (0..rows.div_ceil(rows_per))
        .into_par_iter()
        .map(|gi| {
            let r0 = gi * rows_per;
            let r1 = (r0 + rows_per).min(rows);
            let w: Option<Vec<f32>> =
                energy.map(|e| (r0..r1).flat_map(|_| e.iter().copied()).collect());
            let km = kmeans_1d(&v[r0 * cols..r1 * cols], w.as_deref(), k, max_iter);
            let mut entries: Vec<f32> = km
                .centroids
                .iter()
                .map(|&c| round_entry(c, spec.entry))
                .collect();
            entries.sort_by(f32::total_cmp);
            let mids = entries.windows(2).map(|p| midpoint(p[0], p[1])).collect();
            (Book { entries, mids }, km.iterations)
        })
        .collect();
    let iterations = books.iter().map(|b| b.1).max().unwrap_or(0);
    Ok((books.into_iter().map(|b| b.0).collect(), iterations))
}

/// The canonical bytes of a palette: packed index rows, then the codebooks.
fn encode(codes: &[u8], cols: usize, books: &[Book], spec: &PaletteSpec) -> Vec<u8> {
    let mut out = Vec::new();
    for row in codes.chunks(cols.max(1)) {
        out.extend(pack_codes(row, spec.bits as u32));
    }
    for e in books.iter().flat_map(|b| &b.entries) {
        match spec.entry {
            DType::F16 => out.extend(half::f16::from_f32(*e).to_le_bytes()),
            DType::BF16 => out.extend(half::bf16::from_f32(*e).to_le_bytes()),
            _ => out.extend(e.to_le_bytes()),
        }
    }
    out
}

/// Palettizes a row-major `[rows, cols]` matrix under `spec` (groups `Tensor`, `Channel` or
/// `Rows(g)`), each element weighted by `energy[col]` when given. Entries are rounded to the
/// entry type before indices are chosen, so every element maps to its nearest stored entry.
pub fn palettize_matrix(
    v: &[f32],
    rows: usize,
    cols: usize,
    spec: &PaletteSpec,
    energy: Option<&[f32]>,
    max_iter: usize,
) -> Result<Palettized, MatrixError> {
    let rows_per = rows_per(spec, rows)?;
    let (books, iterations) = codebooks(v, rows, cols, spec, energy, max_iter)?;
    let (codes, approx): (Vec<u8>, Vec<f32>) = v
        .iter()
        .enumerate()
        .map(|(i, &x)| books[i / cols.max(1) / rows_per].nearest(x))
        .unzip();
    Ok(Palettized {
        bytes: encode(&codes, cols, &books, spec),
        approx,
        iterations,
    })
}

/// Palettization with GPTQ's error feedback: the codebooks come from k-means weighted by the
/// Hessian's diagonal, then columns are assigned to their nearest entries in order of
/// decreasing diagonal, each column's rounding error pushed into the columns not yet visited
/// through the inverse Hessian of `gram` (`XᵀX`, `cols × cols`), as GPTQ does with its grid.
pub fn palettize_gptq(
    v: &[f32],
    rows: usize,
    cols: usize,
    spec: &PaletteSpec,
    gram: &[f64],
    max_iter: usize,
    damp: f64,
) -> Result<Palettized, MatrixError> {
    use crate::core::linalg::{inverse_hessian_factor, obs_sweep, Columns};
    let rows_per = rows_per(spec, rows)?;
    let mut h = gram.to_vec();
    let mut diag: Vec<f64> = (0..cols).map(|c| h[c * cols + c]).collect();
    let mut w = v.to_vec();
    for c in 0..cols {
        if diag[c] <= 0.0 {
            // a channel that is always zero: its weights never matter
            h[c * cols + c] = 1.0;
            diag[c] = 1.0;
        }
    }
    let energy: Vec<f32> = diag.iter().map(|&d| d as f32).collect();
    let (books, iterations) = codebooks(&w, rows, cols, spec, Some(&energy), max_iter)?;
    for c in (0..cols).filter(|&c| gram[c * cols + c] <= 0.0) {
        (0..rows).for_each(|r| w[r * cols + c] = 0.0);
    }
    let mut perm: Vec<usize> = (0..cols).collect();
    perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]).then(a.cmp(&b)));
    let u = inverse_hessian_factor(&h, &perm, damp)?;
    let mut wp = vec![0f32; rows * cols];
    for (i, &c) in perm.iter().enumerate() {
        for r in 0..rows {
            wp[i * rows + r] = w[r * cols + c];
        }
    }
    struct Assign<'a> {
        perm: &'a [usize],
        books: &'a [Book],
        rows_per: usize,
        cols: usize,
        codes: Vec<u8>,
        approx: Vec<f32>,
    }
    impl Columns for Assign<'_> {
        fn column(&mut self, i: usize, wp: &[f32], out: &mut [f32]) {
            let rows = out.len();
            let c = self.perm[i];
            for (r, o) in out.iter_mut().enumerate() {
                let (code, a) = self.books[r / self.rows_per].nearest(wp[i * rows + r]);
                self.codes[r * self.cols + c] = code;
                self.approx[r * self.cols + c] = a;
                *o = a;
            }
        }
    }
    let mut f = Assign {
        perm: &perm,
        books: &books,
        rows_per,
        cols,
        codes: vec![0; rows * cols],
        approx: vec![0.0; rows * cols],
    };
    obs_sweep(&mut wp, rows, cols, &u, 128, &mut f);
    Ok(Palettized {
        bytes: encode(&f.codes, cols, &books, spec),
        approx: f.approx,
        iterations,
    })
}

/// The `palettize` pass's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PaletteOptions {
    pub bits: u8,
    /// `Tensor`, `Channel` or `Rows(g)`.
    pub group: Group,
    pub entry: DType,
    /// Palettize the output head (and an embedding tied to it) too.
    pub head: bool,
    /// Lloyd steps at most per group.
    pub iters: usize,
    /// Weigh elements by their input column's calibration energy when statistics exist.
    pub weighted: bool,
    /// Assign indices with GPTQ's error feedback when statistics exist (else nearest entry).
    pub gptq: bool,
    /// GPTQ's dampening of the Hessian's diagonal, as a fraction of its mean.
    pub damp: f64,
}

impl Default for PaletteOptions {
    fn default() -> Self {
        PaletteOptions {
            bits: 4,
            group: Group::Tensor,
            entry: DType::F16,
            head: true,
            iters: 100,
            weighted: true,
            gptq: true,
            damp: 0.01,
        }
    }
}

/// A `group` option value that is not a palette grouping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("group '{text}': rows:N takes a positive number of rows")]
    RowCount { text: String },
    #[error("group '{text}' is not a palette grouping (write tensor, channel or rows:128)")]
    Unknown { text: String },
}

/// Parses a palette grouping: `tensor` (or `pt`), `channel` (`pc`), `rows:N` (`rN`).
pub fn parse_group(s: &str) -> Result<Group, GroupError> {
    let rows = s.strip_prefix("rows:").or_else(|| s.strip_prefix('r'));
    match (s, rows) {
        ("tensor" | "pt", _) => Ok(Group::Tensor),
        ("channel" | "pc", _) => Ok(Group::Channel),
        (_, Some(n)) => match n.parse::<u32>() {
            Ok(g) if g > 0 => Ok(Group::Rows(g)),
            _ => Err(GroupError::RowCount { text: s.into() }),
        },
        _ => Err(GroupError::Unknown { text: s.into() }),
    }
}

/// One palettized weight, for the report.
#[derive(Clone, Debug)]
pub struct PaletteReport {
    pub name: String,
    pub from: String,
    pub to: String,
    pub params: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// ‖W − Ŵ‖ / ‖W‖.
    pub rel_error: f64,
    /// ‖(W − Ŵ)X‖ / ‖WX‖ over the calibration inputs, when calibrated.
    pub out_error: Option<f64>,
    /// `kmeans`, `kmeans+calib` (weighted by calibration energy) or `kmeans+gptq` (weighted,
    /// then indices assigned with GPTQ's error feedback).
    pub method: &'static str,
    pub iterations: usize,
}

/// Palettizes the linear weights quantization would change (dense or block-quantized; weights
/// already palettized stay as they are). `stats` weighs the k-means and measures output error.
pub fn palettize(
    g: &mut Graph,
    o: &PaletteOptions,
    stats: Option<&Stats>,
    progress: Option<&Progress>,
) -> Result<Vec<PaletteReport>, PassError> {
    let work: Vec<(usize, ValueId)> = crate::core::edit::linear_weights(g, o.head)
        .into_iter()
        .filter(|&(i, _)| !matches!(g.weights[i].ty.enc, Encoding::Palette(_)))
        .collect();
    let spec = PaletteSpec {
        bits: o.bits,
        group: o.group,
        entry: o.entry,
    };
    let total = work.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<Result<(usize, TensorType, WeightData, PaletteReport), PassError>> = work
        .par_iter()
        .map(|&(i, input)| {
            let w = &g.weights[i];
            let (v, rows, cols) = crate::core::edit::weight_f32(g, i)?;
            let dims = [rows as u64, cols as u64];
            let enc = Encoding::Palette(spec);
            let err = |e| PassError::matrix("palettize", &w.name, e);
            enc.check_shape(&dims).map_err(|e| err(e.into()))?;
            let st = stats
                .and_then(|s| s.inputs.get(&input))
                .filter(|s| s.cols == cols);
            let energy: Option<Vec<f32>> = st
                .filter(|_| o.weighted)
                .map(|s| (0..cols).map(|j| s.gram[j * cols + j] as f32).collect());
            let gptq = st.filter(|_| o.weighted && o.gptq);
            let p = match gptq {
                Some(s) => palettize_gptq(&v, rows, cols, &spec, &s.gram, o.iters, o.damp),
                None => palettize_matrix(&v, rows, cols, &spec, energy.as_deref(), o.iters),
            }
            .map_err(err)?;
            let (mut num, mut den) = (0f64, 0f64);
            for (a, b) in v.iter().zip(&p.approx) {
                num += ((a - b) as f64).powi(2);
                den += (*a as f64).powi(2);
            }
            let out_error = st.map(|s| {
                let e = crate::core::linalg::output_error(&v, &p.approx, rows, cols, &s.gram);
                let zero = vec![0f32; v.len()];
                let base = crate::core::linalg::output_error(&v, &zero, rows, cols, &s.gram);
                if base > 0.0 {
                    (e / base).sqrt()
                } else {
                    0.0
                }
            });
            let origin = w.data.as_ref().map_or("", |d| d.origin.as_str());
            let wd = WeightData::new(
                Bytes::owned(p.bytes),
                Format::Canonical,
                format!("{origin} (palettized {})", enc),
            );
            let ty = TensorType {
                shape: w.ty.shape.clone(),
                enc: enc.clone(),
            };
            let rep = PaletteReport {
                name: w.name.clone(),
                from: w.ty.enc.to_string(),
                to: enc.to_string(),
                params: (rows * cols) as u64,
                bytes_before: w.ty.enc.byte_size(&dims).unwrap_or(0),
                bytes_after: enc.byte_size(&dims).unwrap_or(0),
                rel_error: if den > 0.0 { (num / den).sqrt() } else { 0.0 },
                out_error,
                method: match (gptq, &energy) {
                    (Some(_), _) => "kmeans+gptq",
                    (None, Some(_)) => "kmeans+calib",
                    (None, None) => "kmeans",
                },
                iterations: p.iterations,
            };
            let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if let Some(pr) = progress {
                pr("palettized weights", k, total);
            }
            Ok((i, ty, wd, rep))
        })
        .collect();
    let mut reports = Vec::new();
    for r in results {
        let (i, ty, wd, rep) = r?;
        replace(g, i, ty, wd)?;
        reports.push(rep);
    }
    Ok(reports)
}

/// The `palettize` pass.
pub struct PalettizePass {
    pub opts: PaletteOptions,
}

pub static PALETTIZE_INFO: PassInfo = PassInfo {
    name: "palettize",
    summary: "weight sharing: 1-D k-means codebooks of 2^bits entries per tensor or per run of rows, indices packed (weighted by calibration energy when calibrated)",
    options: &[
        OptionSpec {
            name: "bits",
            kind: OptionKind::Int,
            default: "4",
            help: "bits per index: codebooks of 2^bits entries (1-8)",
        },
        OptionSpec {
            name: "group",
            kind: OptionKind::Str,
            default: "tensor",
            help: "what shares a codebook: tensor, channel, or rows:N (N consecutive output rows)",
        },
        OptionSpec {
            name: "entry",
            kind: OptionKind::Choice(&["f16", "bf16", "f32"]),
            default: "f16",
            help: "type of the codebook entries",
        },
        OptionSpec {
            name: "head",
            kind: OptionKind::Bool,
            default: "true",
            help: "palettize the output head (and an embedding tied to it)",
        },
        OptionSpec {
            name: "iters",
            kind: OptionKind::Int,
            default: "100",
            help: "Lloyd steps at most per codebook",
        },
        OptionSpec {
            name: "weighted",
            kind: OptionKind::Bool,
            default: "true",
            help: "weigh each element by its input column's calibration energy (calibrates; without calibration data the k-means is unweighted)",
        },
        OptionSpec {
            name: "gptq",
            kind: OptionKind::Bool,
            default: "true",
            help: "when calibrated, assign indices column by column with GPTQ's error feedback instead of to the nearest entry",
        },
        OptionSpec {
            name: "damp",
            kind: OptionKind::Float,
            default: "0.01",
            help: "GPTQ: dampening of the Hessian's diagonal, as a fraction of its mean",
        },
    ],
    create: |o| Ok(Box::new(PalettizePass::from_options(o)?)),
};

impl PalettizePass {
    pub fn from_options(o: &Options) -> Result<PalettizePass, PassError> {
        let bad = |msg: String| PassError::Options {
            pass: "palettize".into(),
            msg,
        };
        let bits = o.int("bits")?;
        if !(1..=8).contains(&bits) {
            return Err(bad(format!(
                "bits must be 1 to 8 (codebooks of 2 to 256 entries), not {bits}"
            )));
        }
        let group = parse_group(o.str("group")).map_err(|source| PassError::Group {
            pass: "palettize",
            source,
        })?;
        let entry = match o.str("entry") {
            "bf16" => DType::BF16,
            "f32" => DType::F32,
            _ => DType::F16,
        };
        let damp = o.float("damp")?;
        if !(0.0..1.0).contains(&damp) {
            return Err(bad(format!("damp must lie in [0, 1), not {damp}")));
        }
        let iters = o.int("iters")?;
        if iters < 1 {
            return Err(bad(format!("iters must be at least 1, not {iters}")));
        }
        Ok(PalettizePass {
            opts: PaletteOptions {
                bits: bits as u8,
                group,
                entry,
                head: o.bool("head"),
                iters: iters as usize,
                weighted: o.bool("weighted"),
                gptq: o.bool("gptq"),
                damp,
            },
        })
    }
}

impl Pass for PalettizePass {
    fn info(&self) -> &'static PassInfo {
        &PALETTIZE_INFO
    }

    fn needs_calibration(&self) -> bool {
        self.opts.weighted
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        // statistics weigh the k-means and give output errors when calibration is at hand
        let stats = if cx.stats.is_some() || (self.opts.weighted && cx.calib.is_some()) {
            Some(cx.take_stats(g, "palettize")?)
        } else {
            None
        };
        let progress = cx.progress.clone();
        let reports = palettize(g, &self.opts, stats.as_ref(), progress.as_ref())?;
        cx.stats = stats;
        for r in &reports {
            cx.report.push(PassRow::Weight(WeightRow {
                pass: "palettize",
                weight: r.name.clone(),
                from: r.from.clone(),
                to: r.to.clone(),
                method: r.method.to_string(),
                params: r.params,
                bytes_before: r.bytes_before,
                bytes_after: r.bytes_after,
                bits_per_weight: WeightRow::bits(r.bytes_after, r.params),
                rel_error: r.rel_error,
                out_error: r.out_error,
                iterations: Some(r.iterations),
            }));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::linalg::testing::lcg;

    /// A standard normal sample from the test generator (Box–Muller).
    fn normal(seed: &mut u64) -> f32 {
        let u1 = (lcg(seed) + 0.5).clamp(1e-7, 1.0);
        let u2 = lcg(seed) + 0.5;
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    #[test]
    fn kmeans_recovers_a_known_codebook() {
        let centers = [-3.0f32, -1.25, 0.5, 4.0];
        let mut seed = 7u64;
        // unequal cluster sizes, noise far below the spacing
        let xs: Vec<f32> = (0..4000)
            .map(|i| centers[(i * i + i / 3) % 4] + 0.02 * lcg(&mut seed))
            .collect();
        let km = kmeans_1d(&xs, None, 4, 100);
        for (c, t) in km.centroids.iter().zip(&centers) {
            assert!((c - t).abs() < 0.01, "{:?} vs {centers:?}", km.centroids);
        }
        assert!(km.iterations < 100, "converged: {}", km.iterations);
    }

    #[test]
    fn weights_pull_centroids_toward_heavy_elements() {
        // two points share one centroid: it lands at their weighted mean
        let km = kmeans_1d(&[0.0, 1.0], Some(&[3.0, 1.0]), 1, 10);
        assert!((km.centroids[0] - 0.25).abs() < 1e-6, "{:?}", km.centroids);
    }

    #[test]
    fn palettes_decode_to_the_reported_values_and_beat_rtn_on_gaussian_weights() {
        let (rows, cols) = (64, 256);
        let mut seed = 3u64;
        let v: Vec<f32> = (0..rows * cols).map(|_| normal(&mut seed)).collect();
        let energy =
            |a: &[f32]| -> f64 { v.iter().zip(a).map(|(x, y)| ((x - y) as f64).powi(2)).sum() };
        for group in [Group::Tensor, Group::Rows(16)] {
            let spec = PaletteSpec {
                bits: 4,
                group,
                entry: DType::F16,
            };
            let p = palettize_matrix(&v, rows, cols, &spec, None, 100).unwrap();
            let ty = TensorType {
                shape: llmc_ir::Shape::fixed(&[rows, cols]),
                enc: Encoding::Palette(spec),
            };
            assert_eq!(
                p.bytes.len() as u64,
                ty.enc.byte_size(&[rows as u64, cols as u64]).unwrap()
            );
            let d = WeightData::new(Bytes::owned(p.bytes.clone()), Format::Canonical, "t")
                .decode_f32(&ty)
                .unwrap()
                .to_f32_vec();
            assert_eq!(d, p.approx, "{group}");
            // 16 Lloyd–Max levels of a unit Gaussian: mean squared error 0.0095
            let mse = energy(&p.approx) / v.len() as f64;
            assert!(mse < 0.0105, "{group}: {mse}");
            // round to nearest at the same 4 bits, per output channel with a zero point
            let q = llmc_ir::QuantSpec {
                bits: 4,
                group: Group::Channel,
                scale: DType::F16,
                zero: llmc_ir::Zero::Int,
            };
            let (_, rtn) = crate::core::grid::rtn(&v, rows, cols, &q);
            let rtn_mse = energy(&rtn) / v.len() as f64;
            assert!(
                mse < 0.9 * rtn_mse,
                "{group}: palette {mse} vs rtn {rtn_mse}"
            );
        }
    }

    #[test]
    fn error_feedback_lowers_the_output_error_of_a_palette() {
        let (rows, cols, tokens) = (32, 64, 512);
        let mut seed = 13u64;
        let w: Vec<f32> = (0..rows * cols).map(|_| normal(&mut seed)).collect();
        // correlated inputs with a few loud channels
        let x: Vec<f32> = (0..tokens)
            .flat_map(|_| {
                let common = normal(&mut seed);
                (0..cols)
                    .map(|j| (normal(&mut seed) + common) * if j < 4 { 6.0 } else { 1.0 })
                    .collect::<Vec<f32>>()
            })
            .collect();
        let gram = crate::core::linalg::testing::gram_of(&x, cols);
        let energy: Vec<f32> = (0..cols).map(|j| gram[j * cols + j] as f32).collect();
        let spec = PaletteSpec {
            bits: 3,
            group: Group::Rows(8),
            entry: DType::F16,
        };
        let near = palettize_matrix(&w, rows, cols, &spec, Some(&energy), 100).unwrap();
        let fed = palettize_gptq(&w, rows, cols, &spec, &gram, 100, 0.01).unwrap();
        let e = |a: &[f32]| crate::core::linalg::output_error(&w, a, rows, cols, &gram);
        assert!(
            e(&fed.approx) < 0.8 * e(&near.approx),
            "gptq {} vs nearest {}",
            e(&fed.approx),
            e(&near.approx)
        );
        let ty = TensorType {
            shape: llmc_ir::Shape::fixed(&[rows, cols]),
            enc: Encoding::Palette(spec),
        };
        let d = WeightData::new(Bytes::owned(fed.bytes), Format::Canonical, "t")
            .decode_f32(&ty)
            .unwrap()
            .to_f32_vec();
        assert_eq!(d, fed.approx);
    }

    #[test]
    fn groupings_parse() {
        assert_eq!(parse_group("tensor").unwrap(), Group::Tensor);
        assert_eq!(parse_group("rows:128").unwrap(), Group::Rows(128));
        assert_eq!(parse_group("r64").unwrap(), Group::Rows(64));
        assert_eq!(
            parse_group("rows:0"),
            Err(GroupError::RowCount {
                text: "rows:0".into()
            })
        );
        assert!(parse_group("g128")
            .unwrap_err()
            .to_string()
            .contains("not a palette grouping"));
    }
}
