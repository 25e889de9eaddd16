//! Every pass by name: what `llmc passes` lists and what pipeline strings can name.

use crate::manager::{parse_pipeline, Options, Pass, PassContext, PassInfo};
use crate::quant::{QuantizePass, QUANTIZE_INFO};
use crate::PassError;
use llmc_ir::Graph;

static CANONICALIZE: PassInfo = PassInfo {
    name: "canonicalize",
    summary: "fold constants and shape arithmetic, drop identities, remove dead nodes",
    options: &[],
};
static FUSE: PassInfo = PassInfo {
    name: "fuse",
    summary: "canonicalize, then fuse layer norm, gelu, attention and linear layers",
    options: &[],
};

/// A pattern-rewrite pass (`canonicalize`, `fuse`).
struct Rewrite {
    info: &'static PassInfo,
}

impl Pass for Rewrite {
    fn info(&self) -> &'static PassInfo {
        self.info
    }

    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError> {
        // rewrites renumber values: statistics gathered before no longer apply
        cx.stats = None;
        let stats = if self.info.name == "fuse" {
            crate::fuse(g)?
        } else {
            crate::canonicalize(g)?
        };
        cx.report
            .push(serde_json::json!({ "pass": self.info.name, "rewrites": format!("{stats:?}") }));
        Ok(())
    }
}

/// The passes, in the order `llmc passes` lists them.
pub fn infos() -> Vec<&'static PassInfo> {
    vec![
        &CANONICALIZE,
        &FUSE,
        &crate::prune::PRUNE_INFO,
        &crate::structured::PRUNE_FFN_INFO,
        &crate::heads::PRUNE_HEADS_INFO,
        &crate::layers::DROP_LAYERS_INFO,
        &crate::lowrank::LOWRANK_INFO,
        &crate::caldera::CALDERA_INFO,
        &crate::palettize::PALETTIZE_INFO,
        &crate::smooth::SMOOTH_INFO,
        &QUANTIZE_INFO,
        &crate::distill::DISTILL_INFO,
    ]
}

/// A pass from its name and option values.
pub fn create(
    name: &str,
    values: std::collections::BTreeMap<String, String>,
) -> Result<Box<dyn Pass>, PassError> {
    let info = infos()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| PassError::Pipeline {
            pipeline: name.to_string(),
            msg: format!(
                "unknown pass '{name}' (passes: {})",
                infos()
                    .iter()
                    .map(|i| i.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
    let opts = Options::new(info, values)?;
    Ok(match name {
        "quantize" => Box::new(QuantizePass::from_options(&opts)?),
        "prune" => Box::new(crate::prune::PrunePass::from_options(&opts)?),
        "prune-ffn" => Box::new(crate::structured::PruneFfnPass::from_options(&opts)?),
        "prune-heads" => Box::new(crate::heads::PruneHeadsPass::from_options(&opts)?),
        "drop-layers" => Box::new(crate::layers::DropLayersPass::from_options(&opts)?),
        "lowrank" => Box::new(crate::lowrank::LowRankPass::from_options(&opts)?),
        "caldera" => Box::new(crate::caldera::CalderaPass::from_options(&opts)?),
        "palettize" => Box::new(crate::palettize::PalettizePass::from_options(&opts)?),
        "distill" => Box::new(crate::distill::DistillPass::from_options(&opts)?),
        "smooth" => Box::new(crate::smooth::SmoothPass {
            alpha: opts.float("alpha")? as f32,
        }),
        _ => Box::new(Rewrite { info }),
    })
}

/// The passes a pipeline string names, options checked.
pub fn pipeline(s: &str) -> Result<Vec<Box<dyn Pass>>, PassError> {
    parse_pipeline(s)?
        .into_iter()
        .map(|e| {
            create(&e.name, e.options).map_err(|err| match err {
                PassError::Pipeline { msg, .. } => PassError::Pipeline {
                    pipeline: s.to_string(),
                    msg,
                },
                other => other,
            })
        })
        .collect()
}
