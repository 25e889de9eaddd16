//! Every pass by name: what `llmc passes` lists and what pipeline strings can name. A pass
//! is registered by its [`PassInfo`], declared beside it.

use crate::core::manager::parse_pipeline;
use crate::core::pass::{Options, Pass, PassInfo};
use crate::PassError;
use std::collections::BTreeMap;

/// The passes, in the order `llmc passes` lists them.
pub fn infos() -> Vec<&'static PassInfo> {
    vec![
        &crate::canon::CANONICALIZE_INFO,
        &crate::canon::FUSE_INFO,
        &crate::prune::unstructured::PRUNE_INFO,
        &crate::prune::ffn::PRUNE_FFN_INFO,
        &crate::prune::heads::PRUNE_HEADS_INFO,
        &crate::prune::layers::DROP_LAYERS_INFO,
        &crate::lowrank::svd::LOWRANK_INFO,
        &crate::lowrank::caldera::CALDERA_INFO,
        &crate::share::palettize::PALETTIZE_INFO,
        &crate::quant::smoothquant::SMOOTH_INFO,
        &crate::quant::QUANTIZE_INFO,
        &crate::distill::DISTILL_INFO,
    ]
}

/// A pass from its name and option values.
pub fn create(name: &str, values: BTreeMap<String, String>) -> Result<Box<dyn Pass>, PassError> {
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
    (info.create)(&Options::new(info, values)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_is_a_value_of_its_kind_and_makes_a_pass() {
        for info in infos() {
            for o in info.options {
                assert!(
                    o.kind.accepts(o.default),
                    "{}: option '{}' defaults to '{}', not a {}",
                    info.name,
                    o.name,
                    o.default,
                    o.kind
                );
            }
            let pass = create(info.name, BTreeMap::new())
                .unwrap_or_else(|e| panic!("{} with its defaults: {e}", info.name));
            assert_eq!(pass.info().name, info.name);
        }
    }
}
