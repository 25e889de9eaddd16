//! The pass manager: pipeline strings (`canonicalize,quantize{bits=4,group=128,method=gptq}`),
//! the verifier after every pass, IR dumps after chosen passes, timings, and the analyses
//! the passes share (the linear weights as the pipeline found them).

use crate::core::pass::{Pass, PassContext};
use crate::PassError;
use llmc_ir::Graph;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One entry of a pipeline string: a pass name and its `key=value` options.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineEntry {
    pub name: String,
    pub options: BTreeMap<String, String>,
}

/// Parses `a,b{k=v,k2=v2},c` (spaces allowed around names, keys and values).
pub fn parse_pipeline(s: &str) -> Result<Vec<PipelineEntry>, PassError> {
    let bad = |msg: String| PassError::Pipeline {
        pipeline: s.to_string(),
        msg,
    };
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| c == ',' || c == '{' || c.is_whitespace())
            .unwrap_or(rest.len());
        let name = rest[..end].trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(format!("expected a pass name at '{rest}'")));
        }
        rest = rest[end..].trim_start();
        let mut options = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let close = body
                .find('}')
                .ok_or_else(|| bad(format!("'{{' after '{name}' is not closed")))?;
            for kv in body[..close]
                .split(',')
                .map(str::trim)
                .filter(|kv| !kv.is_empty())
            {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| bad(format!("option '{kv}' of '{name}' must be key=value")))?;
                if options
                    .insert(k.trim().to_string(), v.trim().to_string())
                    .is_some()
                {
                    return Err(bad(format!(
                        "option '{}' of '{name}' is given twice",
                        k.trim()
                    )));
                }
            }
            rest = body[close + 1..].trim_start();
        }
        out.push(PipelineEntry {
            name: name.to_string(),
            options,
        });
        match rest.strip_prefix(',') {
            Some(r) => rest = r.trim_start(),
            None if rest.is_empty() => {}
            None => return Err(bad(format!("expected ',' before '{rest}'"))),
        }
    }
    Ok(out)
}

/// How long a pass took and what it left.
#[derive(Clone, Debug)]
pub struct PassTiming {
    pub name: &'static str,
    pub time: Duration,
    pub nodes_after: usize,
}

/// Runs passes in order, verifying after each and dumping the IR where asked.
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    /// Verify the graph after every pass (always on in tests; cheap next to the passes).
    pub verify: bool,
    /// Pass names after which to print the IR.
    pub dump_after: Vec<String>,
}

impl PassManager {
    pub fn new(passes: Vec<Box<dyn Pass>>) -> PassManager {
        PassManager {
            passes,
            verify: true,
            dump_after: Vec::new(),
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.info().name).collect()
    }

    /// Whether a pass of the pipeline reads calibration statistics.
    pub fn needs_calibration(&self) -> bool {
        self.passes.iter().any(|p| p.needs_calibration())
    }

    /// Runs the pipeline; `dump` receives `(pass, IR text)` for the passes named in
    /// `dump_after`.
    pub fn run(
        &mut self,
        g: &mut Graph,
        cx: &mut PassContext,
        mut dump: impl FnMut(&str, &str),
    ) -> Result<Vec<PassTiming>, PassError> {
        let mut timings = Vec::new();
        if cx.originals.is_none() && self.passes.iter().any(|p| p.needs_originals()) {
            cx.originals = Some(crate::core::originals::Originals::snapshot(g));
        }
        for p in &mut self.passes {
            let name = p.info().name;
            let t0 = Instant::now();
            p.run(g, cx)?;
            let time = t0.elapsed();
            if self.verify {
                llmc_ir::verify(g).map_err(|source| PassError::Ir {
                    pass: name.to_string(),
                    source,
                })?;
            }
            if self.dump_after.iter().any(|d| d == name || d == "all") {
                dump(name, &llmc_ir::print(g));
            }
            timings.push(PassTiming {
                name,
                time,
                nodes_after: g.nodes.len(),
            });
        }
        Ok(timings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_parse_with_options() {
        let p =
            parse_pipeline(" canonicalize, quantize{bits=4, group=128,method=gptq} ,fuse").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "quantize");
        assert_eq!(p[1].options["group"], "128");
        assert!(p[2].options.is_empty());
        let e = parse_pipeline("quantize{bits=4").unwrap_err().to_string();
        assert!(e.contains("is not closed"), "{e}");
        let e = parse_pipeline("quantize{bits}").unwrap_err().to_string();
        assert!(e.contains("must be key=value"), "{e}");
        let e = parse_pipeline("a b").unwrap_err().to_string();
        assert!(e.contains("expected ','"), "{e}");
    }
}
