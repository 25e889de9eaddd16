//! The build report's rows: what each pass did, one typed row per weight, layer or decision.
//! `report.json` holds them as written here (each row an object with its `pass`); `llmc build`
//! prints its table from them.

use serde::Serialize;
use std::collections::BTreeMap;

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum PassRow {
    /// `canonicalize` and `fuse`: the patterns that fired.
    Rewrite(RewriteRow),
    /// `quantize` and `palettize`: one weight's new encoding.
    Weight(WeightRow),
    /// `smooth`: one rescaled site.
    Smooth(SmoothRow),
    /// `prune`: one weight's zeros.
    Prune(PruneRow),
    /// `prune-ffn`: one FFN's channels.
    PruneFfn(FfnRow),
    /// `prune-heads`: one attention block's heads.
    PruneHeads(HeadsRow),
    /// `drop-layers`: the layers removed.
    DropLayers(LayersRow),
    /// Structured pruning's compensation and its check.
    Compensation(CompensationRow),
    /// `lowrank`: one weight factored.
    LowRank(LowRankRow),
    /// `caldera`: one weight decomposed.
    Caldera(CalderaRow),
    /// `distill`: one layer's correction.
    Distill(DistillRow),
    /// `distill`: a changed layer it could not compare.
    DistillSkipped(DistillSkippedRow),
    /// `distill`: the next-token loss check.
    DistillCheck(DistillCheckRow),
}

/// What the rewrite driver did.
#[derive(Clone, Debug, Serialize)]
pub struct RewriteRow {
    pub pass: &'static str,
    /// How often each pattern fired.
    pub fired: BTreeMap<&'static str, usize>,
    pub sweeps: usize,
    pub nodes_before: usize,
    pub nodes_after: usize,
}

/// One weight given a new encoding (quantized or palettized).
#[derive(Clone, Debug, Serialize)]
pub struct WeightRow {
    pub pass: &'static str,
    pub weight: String,
    /// The encodings before and after, as the IR prints them.
    pub from: String,
    pub to: String,
    /// How: `rtn`, `rtn+clip`, `gptq`, `awq-scale` (AWQ's search, a row per site),
    /// `kmeans`, `kmeans+calib`, `kmeans+gptq`.
    pub method: String,
    /// Values in the tensor.
    pub params: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Bytes after per value, in bits: codes, scales, zeros and codebooks.
    pub bits_per_weight: f64,
    /// ‖W − Ŵ‖ / ‖W‖ (for `awq-scale` rows: the searched loss over plain rounding's).
    pub rel_error: f64,
    /// ‖(W − Ŵ)X‖ / ‖WX‖ over the calibration inputs, when calibrated.
    pub out_error: Option<f64>,
    /// Palettes: the k-means iterations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
}

impl WeightRow {
    /// `bytes_after · 8 / params`, 0 for an empty tensor.
    pub fn bits(bytes_after: u64, params: u64) -> f64 {
        if params > 0 {
            bytes_after as f64 * 8.0 / params as f64
        } else {
            0.0
        }
    }
}

/// One site SmoothQuant rescaled.
#[derive(Clone, Debug, Serialize)]
pub struct SmoothRow {
    pub pass: &'static str,
    /// The linear layers reading the site.
    pub weights: Vec<String>,
    pub alpha: f32,
    /// The largest |activation| over the site's channels, before and after.
    pub act_max_before: f32,
    pub act_max_after: f32,
}

/// One weight pruned.
#[derive(Clone, Debug, Serialize)]
pub struct PruneRow {
    pub pass: &'static str,
    pub weight: String,
    pub method: &'static str,
    /// Fraction of zeros.
    pub sparsity: f64,
    pub rel_error: f64,
    pub out_error: Option<f64>,
}

/// One FFN narrowed.
#[derive(Clone, Debug, Serialize)]
pub struct FfnRow {
    pub pass: &'static str,
    /// The down projection.
    pub weight: String,
    pub channels_before: usize,
    pub channels_after: usize,
    /// Bytes of the three projections after, as dense f32.
    pub f32_bytes_after: u64,
    pub bytes_before: u64,
}

/// One attention block's heads removed.
#[derive(Clone, Debug, Serialize)]
pub struct HeadsRow {
    pub pass: &'static str,
    /// The output projection.
    pub weight: String,
    pub heads_before: usize,
    pub heads_after: usize,
    pub kv_heads_before: usize,
    pub kv_heads_after: usize,
    /// The query heads removed.
    pub removed: Vec<usize>,
    /// Each head's output energy on calibration.
    pub energy: Vec<f64>,
    /// Share of the output energy removed.
    pub energy_removed: f64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The decoder layers removed.
#[derive(Clone, Debug, Serialize)]
pub struct LayersRow {
    pub pass: &'static str,
    pub layers_before: usize,
    pub layers_after: usize,
    pub removed: Vec<usize>,
    /// `1 − mean cos(h_i, h_{i+1})` per layer, on calibration.
    pub block_influence: Vec<f64>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// The calibration text.
    pub calibration: String,
}

/// What compensated a structured pruning, and whether the loss check kept it.
#[derive(Clone, Debug, Serialize)]
pub struct CompensationRow {
    /// The pruning pass compensated.
    pub pass: &'static str,
    pub compensation: Compensation,
}

#[derive(Clone, Debug, Serialize)]
pub struct Compensation {
    /// The next-token loss before and after, when the model is a language model.
    pub check: Option<LossCheck>,
    /// Whether any edit stayed.
    pub kept: bool,
    pub edits: Vec<EditRow>,
    /// Bytes of weights the kept edits added.
    pub bytes_added: i64,
}

/// A next-token loss check over calibration windows.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LossCheck {
    pub windows: usize,
    pub loss_before: f64,
    pub loss_after: f64,
}

/// One compensating edit: what it is, the loss with it (none: it changed nothing, or there
/// was no check), and whether it stayed.
#[derive(Clone, Debug, Serialize)]
pub struct EditRow {
    pub what: String,
    pub loss: Option<f64>,
    pub kept: bool,
}

/// One weight factored `W ≈ L·R`.
#[derive(Clone, Debug, Serialize)]
pub struct LowRankRow {
    pub pass: &'static str,
    pub weight: String,
    pub method: &'static str,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    pub rank: usize,
    pub params_before: usize,
    pub params_after: usize,
    /// ‖W − LR‖_F / ‖W‖_F.
    pub weight_error: f64,
    /// Output error on calibration relative to the output's energy, when calibrated.
    pub out_error: Option<f64>,
}

/// One weight decomposed `W ≈ Q + L·R`.
#[derive(Clone, Debug, Serialize)]
pub struct CalderaRow {
    pub pass: &'static str,
    pub weight: String,
    pub shape: [usize; 2],
    pub rank: usize,
    pub bits: u8,
    pub lr_bits: u8,
    pub params: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub bits_per_weight: f64,
    pub weight_error: f64,
    pub out_error: f64,
    pub out_error_by_iteration: Vec<f64>,
}

/// One layer's distillation correction.
#[derive(Clone, Debug, Serialize)]
pub struct DistillRow {
    pub pass: &'static str,
    pub weight: String,
    /// `direct`, `caldera` or `lowrank`.
    pub form: &'static str,
    pub shape: [usize; 2],
    /// `bias`, `bias+rank8`, ... or `none` when nothing lowered the error.
    pub correction: String,
    /// Relative output error on calibration, `‖(W − Ŵ)X‖ / ‖WX‖`, before and after.
    pub out_error_before: f64,
    pub out_error_after: f64,
    /// Values the correction stores (bias and branch).
    pub params_added: usize,
}

/// A changed layer distillation could not compare with its original, and why.
#[derive(Clone, Debug, Serialize)]
pub struct DistillSkippedRow {
    pub pass: &'static str,
    pub weight: String,
    pub skipped: String,
}

/// Distillation's next-token loss check: the loss without corrections, with all of them, with
/// each layer role's alone (when all together did not lower it), and as kept.
#[derive(Clone, Debug, Serialize)]
pub struct DistillCheckRow {
    pub pass: &'static str,
    pub check: DistillCheck,
}

#[derive(Clone, Debug, Serialize)]
pub struct DistillCheck {
    pub windows: usize,
    pub loss_before: f64,
    pub loss_all: f64,
    pub loss_by_group: BTreeMap<String, f64>,
    pub loss_after: f64,
    pub kept: bool,
    pub groups_kept: Vec<String>,
    pub groups: usize,
}
