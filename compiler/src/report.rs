//! The build report (`report.json`): what each pass did to each weight, the linear layers'
//! totals, the calibration text, the evaluation, and the table `llmc build` prints from it.

use crate::eval::EvalResult;
use llmc_passes::core::edit::{linear_weights, weight_bytes};
use llmc_passes::core::manager::PassTiming;
use llmc_passes::core::report::{
    CompensationRow, DistillCheck, DistillRow, FfnRow, HeadsRow, LayersRow, LowRankRow, PassRow,
    PruneRow, WeightRow,
};
use serde::Serialize;

/// What `llmc build` writes as `report.json`. No timings: the same build gives the same
/// bundle, byte for byte.
#[derive(Clone, Debug, Serialize)]
pub struct BuildReport {
    /// The pipeline's passes in order, with the graph's size after each.
    pub passes: Vec<PassRecord>,
    /// What the passes did, in order.
    pub rows: Vec<PassRow>,
    /// The calibration text, when a pass calibrated.
    pub calibration: Option<String>,
    /// The compressed model measured against the uncompressed one, with `--eval`.
    pub eval: Option<EvalRecord>,
    pub totals: Totals,
}

/// One pass of the pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct PassRecord {
    pub pass: &'static str,
    pub nodes_after: usize,
}

impl From<&PassTiming> for PassRecord {
    fn from(t: &PassTiming) -> PassRecord {
        PassRecord {
            pass: t.name,
            nodes_after: t.nodes_after,
        }
    }
}

/// The evaluation protocol's figures.
#[derive(Clone, Debug, Serialize)]
pub struct EvalRecord {
    pub windows: usize,
    pub window: usize,
    pub predicted: usize,
    pub perplexity: f64,
    pub reference_perplexity: Option<f64>,
    pub kl: Option<f64>,
    pub top1: Option<f64>,
}

impl From<&EvalResult> for EvalRecord {
    fn from(e: &EvalResult) -> EvalRecord {
        EvalRecord {
            windows: e.windows,
            window: e.window,
            predicted: e.predicted,
            perplexity: e.perplexity,
            reference_perplexity: e.reference_perplexity,
            kl: e.kl,
            top1: e.top1,
        }
    }
}

/// The linear layers' weights of a graph (the output head's only when `head`): values and
/// bytes as stored, scales, zeros and codebooks included.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Footprint {
    pub params: u64,
    pub bytes: u64,
}

impl Footprint {
    pub fn of(g: &llmc_ir::Graph, head: bool) -> Footprint {
        linear_weights(g, head)
            .iter()
            .map(|&(w, _)| {
                let params = g.weights[w].ty.shape.numel().unwrap_or(0);
                (params, weight_bytes(g, w))
            })
            .fold(Footprint::default(), |f, (p, b)| Footprint {
                params: f.params + p,
                bytes: f.bytes + b,
            })
    }
}

/// The linear layers before and after compression, with bits per weight over the original
/// parameter count (a factored or pruned layer stores fewer values).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Totals {
    pub params: u64,
    pub params_after: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bits_per_weight: f64,
}

impl Totals {
    pub fn new(before: Footprint, after: Footprint) -> Totals {
        Totals {
            params: before.params,
            params_after: after.params,
            bytes_before: before.bytes,
            bytes_after: after.bytes,
            bits_per_weight: if before.params > 0 {
                after.bytes as f64 * 8.0 / before.params as f64
            } else {
                0.0
            },
        }
    }
}

/// The rows of one kind.
fn rows_of<'a, T>(rows: &'a [PassRow], pick: impl Fn(&'a PassRow) -> Option<&'a T>) -> Vec<&'a T> {
    rows.iter().filter_map(pick).collect()
}

impl BuildReport {
    /// The rows of weights given a new encoding by `pass` (`quantize`, `palettize`).
    pub fn weight_rows(&self, pass: &str) -> Vec<&WeightRow> {
        rows_of(&self.rows, |r| match r {
            PassRow::Weight(w) if w.pass == pass => Some(w),
            _ => None,
        })
    }

    /// The report as `llmc build` prints it: a summary line per pass, the compensation and
    /// distillation checks, a table of re-encoded weights and the linear layers' totals.
    pub fn print_table(&self) {
        print_structured(&self.rows);
        print_compensations(&self.rows);
        print_distill(&self.rows);
        print_weights(&self.rows);
        let t = &self.totals;
        if t.bytes_before != t.bytes_after || t.params != t.params_after {
            println!(
                "linear layers: {} weights{} in {} -> {} bytes, {:.3} bits per weight",
                t.params,
                if t.params_after != t.params {
                    format!(" ({} after factoring/pruning)", t.params_after)
                } else {
                    String::new()
                },
                t.bytes_before,
                t.bytes_after,
                t.bits_per_weight
            );
        }
    }
}

/// Pruning, head and layer removal, and factoring: one line each.
fn print_structured(rows: &[PassRow]) {
    let pruned: Vec<&PruneRow> = rows_of(rows, |r| match r {
        PassRow::Prune(p) => Some(p),
        _ => None,
    });
    if let Some(first) = pruned.first() {
        let mean = pruned.iter().map(|r| r.sparsity).sum::<f64>() / pruned.len() as f64;
        let worst = pruned
            .iter()
            .filter_map(|r| r.out_error)
            .fold(0.0, f64::max);
        println!(
            "pruned {} weights ({}): mean sparsity {:.1}%, worst output error on calibration {worst:.4}",
            pruned.len(),
            first.method,
            mean * 100.0
        );
    }
    let ffns: Vec<&FfnRow> = rows_of(rows, |r| match r {
        PassRow::PruneFfn(f) => Some(f),
        _ => None,
    });
    if !ffns.is_empty() {
        println!(
            "removed FFN channels in {} blocks: {} -> {} channels",
            ffns.len(),
            ffns.iter().map(|f| f.channels_before).sum::<usize>(),
            ffns.iter().map(|f| f.channels_after).sum::<usize>(),
        );
    }
    let heads: Vec<&HeadsRow> = rows_of(rows, |r| match r {
        PassRow::PruneHeads(h) => Some(h),
        _ => None,
    });
    if !heads.is_empty() {
        let sum = |f: fn(&HeadsRow) -> u64| heads.iter().map(|h| f(h)).sum::<u64>();
        let energy = heads.iter().map(|h| h.energy_removed).sum::<f64>() / heads.len() as f64;
        println!(
            "removed attention heads in {} blocks: {} -> {} query heads, {} -> {} KV heads, {} -> {} bytes; mean share of output energy removed on calibration {:.1}%",
            heads.len(),
            sum(|h| h.heads_before as u64),
            sum(|h| h.heads_after as u64),
            sum(|h| h.kv_heads_before as u64),
            sum(|h| h.kv_heads_after as u64),
            sum(|h| h.bytes_before),
            sum(|h| h.bytes_after),
            energy * 100.0
        );
    }
    if let Some(r) = rows.iter().find_map(|r| match r {
        PassRow::DropLayers(l) => Some(l),
        _ => None,
    }) {
        let LayersRow {
            removed,
            layers_before,
            block_influence,
            ..
        } = r;
        let bi: Vec<String> = block_influence.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "removed layers {removed:?} of {layers_before} (block influence per layer: {})",
            bi.join(" ")
        );
    }
    let factored: Vec<&LowRankRow> = rows_of(rows, |r| match r {
        PassRow::LowRank(l) => Some(l),
        _ => None,
    });
    if let Some(first) = factored.first() {
        let worst = factored
            .iter()
            .map(|r| r.out_error.unwrap_or(r.weight_error))
            .fold(0.0, f64::max);
        println!(
            "factored {} weights ({}): {} -> {} values, worst relative error {worst:.4}",
            factored.len(),
            first.method,
            factored.iter().map(|r| r.params_before).sum::<usize>(),
            factored.iter().map(|r| r.params_after).sum::<usize>(),
        );
    }
    let distilled: Vec<&DistillRow> = rows_of(rows, |r| match r {
        PassRow::Distill(d) => Some(d),
        _ => None,
    });
    if !distilled.is_empty() {
        let n = distilled.len() as f64;
        let applied = |r: &&&DistillRow| !r.correction.starts_with("none");
        let skipped = rows
            .iter()
            .filter(|r| matches!(r, PassRow::DistillSkipped(_)))
            .count();
        println!(
            "distilled {} of {} changed layers ({}): mean output error on calibration {:.4} -> {:.4}, {} values added{}",
            distilled.iter().filter(applied).count(),
            distilled.len(),
            distilled
                .iter()
                .find(applied)
                .map_or("none", |r| r.correction.as_str()),
            distilled.iter().map(|r| r.out_error_before).sum::<f64>() / n,
            distilled.iter().map(|r| r.out_error_after).sum::<f64>() / n,
            distilled.iter().map(|r| r.params_added).sum::<usize>(),
            if skipped > 0 {
                format!(", {skipped} skipped")
            } else {
                String::new()
            }
        );
    }
}

/// Each structured pruning's compensation: what was tried, what the loss said, what stayed.
fn print_compensations(rows: &[PassRow]) {
    for CompensationRow {
        pass,
        compensation: c,
    } in rows_of(rows, |r| match r {
        PassRow::Compensation(c) => Some(c),
        _ => None,
    }) {
        let verdict = |kept: bool| if kept { "kept" } else { "rejected" };
        let windows = c.check.map_or(0, |k| k.windows);
        let (outcome, losses) = match &c.edits[..] {
            [one] => (
                format!("{}, {}", one.what, verdict(one.kept)),
                match (c.check, one.loss) {
                    (Some(k), Some(a)) => format!(
                        " (next-token loss on {windows} calibration windows {:.4} without, {a:.4} with)",
                        k.loss_before
                    ),
                    _ => String::new(),
                },
            ),
            edits => (
                format!(
                    "{} of {} kept, each tried after those kept before it",
                    edits.iter().filter(|e| e.kept).count(),
                    edits.len()
                ),
                match c.check {
                    Some(k) => format!(
                        " (next-token loss on {windows} calibration windows {:.4} without, {:.4} with those kept)",
                        k.loss_before, k.loss_after
                    ),
                    None => String::new(),
                },
            ),
        };
        let each: String = if c.edits.len() > 1 {
            c.edits
                .iter()
                .map(|e| match e.loss {
                    Some(l) => format!("\n  {}: {l:.4}, {}", e.what, verdict(e.kept)),
                    None => format!("\n  {}: {}", e.what, verdict(e.kept)),
                })
                .collect()
        } else {
            String::new()
        };
        let added = match c.bytes_added {
            0 => String::new(),
            b => format!(", {:+.3} MB of weights", b as f64 / 1e6),
        };
        println!("{pass} compensation: {outcome}{added}{losses}{each}");
    }
}

/// Distillation's next-token loss check.
fn print_distill(rows: &[PassRow]) {
    for c in rows_of::<DistillCheck>(rows, |r| match r {
        PassRow::DistillCheck(c) => Some(&c.check),
        _ => None,
    }) {
        let kept = &c.groups_kept;
        println!(
            "distill check on {} calibration windows: next-token loss {:.4} uncorrected, {:.4} with every correction, {:.4} as kept: {}",
            c.windows,
            c.loss_before,
            c.loss_all,
            c.loss_after,
            if kept.is_empty() {
                "corrections rejected, the graph is as it was before distill".to_string()
            } else if kept.len() == c.groups {
                "every correction kept".to_string()
            } else {
                format!(
                    "kept for {} of {} layer roles ({})",
                    kept.len(),
                    c.groups,
                    kept.join(", ")
                )
            }
        );
    }
}

/// One line per quantized or palettized weight.
fn print_weights(rows: &[PassRow]) {
    let q: Vec<&WeightRow> = rows_of(rows, |r| match r {
        PassRow::Weight(w) if w.params > 0 => Some(w),
        _ => None,
    });
    if q.is_empty() {
        return;
    }
    println!(
        "{:<28} {:<34} {:<8} {:>6} {:>10} {:>10} {:>8} {:>8}",
        "weight", "encoding", "method", "bpw", "bytes", "after", "w err", "out err"
    );
    for r in q {
        let out = r.out_error.map_or("-".to_string(), |e| format!("{e:.4}"));
        println!(
            "{:<28} {:<34} {:<8} {:>6.3} {:>10} {:>10} {:>8.4} {:>8}",
            r.weight,
            r.to,
            r.method,
            r.bits_per_weight,
            r.bytes_before,
            r.bytes_after,
            r.rel_error,
            out
        );
    }
}
