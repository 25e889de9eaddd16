//! Compensation after structured pruning: what the removed parts wrote on average stands in
//! for them (FLAP's bias compensation), or a fitted map bridges removed layers; each edit is
//! kept only if it lowers the next-token loss on calibration windows.

use crate::calib::InputStats;
use crate::core::check::{is_language_model, lm_loss, spread, CHECK_WINDOWS};
use crate::core::edit::{add_to_bias, all_weight_bytes};
use crate::core::pass::PassContext;
use crate::core::report::{Compensation, CompensationRow, EditRow, LossCheck, PassRow};
use crate::PassError;
use llmc_ir::Graph;

/// What the removed input columns of a `rows × cols` weight `w` contribute on average over
/// calibration: `Σ_{c removed} w[:, c] · mean(x_c)`, the bias that stands in for them (FLAP's
/// bias compensation).
pub(crate) fn removed_mean_output(
    w: &[f32],
    rows: usize,
    cols: usize,
    removed: &[usize],
    st: &InputStats,
) -> Vec<f32> {
    let n = st.tokens.max(1) as f64;
    (0..rows)
        .map(|r| {
            removed
                .iter()
                .map(|&c| w[r * cols + c] as f64 * st.sum[c] / n)
                .sum::<f64>() as f32
        })
        .collect()
}

/// One compensating bias: the linear node it joins, the name of a new bias weight (when the
/// node has none), and its values.
pub(crate) type Bias = (usize, String, Vec<f32>);

/// How an [`Edit`] changes a graph (false: it found nothing to change).
pub(crate) type Apply = Box<dyn Fn(&mut Graph) -> Result<bool, PassError>>;

/// One compensation that the check keeps or rejects as a whole: what it is, for the report,
/// and how it changes a graph.
pub(crate) struct Edit {
    pub what: String,
    pub apply: Apply,
}

impl Edit {
    /// Adds `biases` to their linear layers.
    pub(crate) fn biases(what: String, biases: Vec<Bias>, note: String) -> Edit {
        Edit {
            what,
            apply: Box::new(move |g| {
                let mut any = false;
                for (node, name, b) in &biases {
                    any |= add_to_bias(g, *node, name, b, &note)?;
                }
                Ok(any)
            }),
        }
    }
}

/// Applies compensating `edits` if they lower the next-token loss on
/// [`CHECK_WINDOWS`] calibration windows (always, for a graph that is not a
/// language model), and reports the check as `{"pass": pass, "compensation": ...}`.
///
/// The edits are tried in order: each stays if, applied after those kept before it, it lowers
/// the loss further. One edit is all or nothing; an edit per removed layer lets one layer's
/// compensation stay when another's would hurt.
pub(crate) fn compensate(
    g: &mut Graph,
    cx: &mut PassContext,
    edits: Vec<Edit>,
    pass: &'static str,
) -> Result<(), PassError> {
    let windows = match &cx.calib {
        Some(c) if is_language_model(g) => spread(&c.windows, CHECK_WINDOWS),
        _ => Vec::new(),
    };
    let bytes_before = all_weight_bytes(g);
    let steps = edits.len() as u64 + 1;
    let mut best = if windows.is_empty() {
        None
    } else {
        cx.tick("checking the compensation", 0, steps);
        Some(lm_loss(g, &windows)?)
    };
    let before = best;
    let mut tried = Vec::new();
    let mut kept = 0;
    for (i, edit) in edits.iter().enumerate() {
        let mut h = g.clone();
        if !(edit.apply)(&mut h)? {
            tried.push(EditRow {
                what: edit.what.clone(),
                loss: None,
                kept: false,
            });
            continue;
        }
        let (loss, keep) = match best {
            None => (None, true),
            Some(l) => {
                let after = lm_loss(&h, &windows)?;
                cx.tick("checking the compensation", i as u64 + 1, steps);
                (Some(after), after < l)
            }
        };
        if keep {
            *g = h;
            kept += 1;
            best = loss.or(best);
        }
        tried.push(EditRow {
            what: edit.what.clone(),
            loss,
            kept: keep,
        });
    }
    let check = match (before, best) {
        (Some(loss_before), Some(loss_after)) => Some(LossCheck {
            windows: windows.len(),
            loss_before,
            loss_after,
        }),
        _ => None,
    };
    cx.report.push(PassRow::Compensation(CompensationRow {
        pass,
        compensation: Compensation {
            check,
            kept: kept > 0,
            edits: tried,
            bytes_added: all_weight_bytes(g) as i64 - bytes_before as i64,
        },
    }));
    Ok(())
}
