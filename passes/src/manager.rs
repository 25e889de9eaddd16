//! The pass manager: passes by name with typed options, pipeline strings
//! (`canonicalize,quantize{bits=4,group=128,method=gptq}`), the verifier after every pass,
//! IR dumps after chosen passes, and timings.

use crate::PassError;
use llmc_ir::Graph;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One option a pass takes.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    pub name: &'static str,
    /// `int`, `float`, `bool`, or the choices as `a|b|c`.
    pub kind: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// What a pass is: its name, a one-line summary, and its options.
#[derive(Clone, Copy, Debug)]
pub struct PassInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub options: &'static [OptionSpec],
}

/// Options as given, checked against the pass's specs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pass: &'static str,
    values: BTreeMap<String, String>,
    specs: &'static [OptionSpec],
}

impl Options {
    /// Checks names and values against the specs.
    pub fn new(
        info: &'static PassInfo,
        values: BTreeMap<String, String>,
    ) -> Result<Options, PassError> {
        let bad = |msg: String| PassError::Options {
            pass: info.name.to_string(),
            msg,
        };
        for (k, v) in &values {
            let spec = info.options.iter().find(|o| o.name == k).ok_or_else(|| {
                let known: Vec<&str> = info.options.iter().map(|o| o.name).collect();
                bad(format!(
                    "unknown option '{k}' (options: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
            check_value(spec, v).map_err(bad)?;
        }
        Ok(Options {
            pass: info.name,
            values,
            specs: info.options,
        })
    }

    fn raw(&self, name: &str) -> &str {
        match self.values.get(name) {
            Some(v) => v,
            None => self
                .specs
                .iter()
                .find(|o| o.name == name)
                .map_or("", |o| o.default),
        }
    }

    pub fn str(&self, name: &str) -> &str {
        self.raw(name)
    }

    pub fn int(&self, name: &str) -> Result<i64, PassError> {
        self.raw(name).parse().map_err(|_| PassError::Options {
            pass: self.pass.into(),
            msg: format!("option '{name}' needs an integer"),
        })
    }

    pub fn float(&self, name: &str) -> Result<f64, PassError> {
        self.raw(name).parse().map_err(|_| PassError::Options {
            pass: self.pass.into(),
            msg: format!("option '{name}' needs a number"),
        })
    }

    pub fn bool(&self, name: &str) -> bool {
        matches!(self.raw(name), "true" | "1" | "yes")
    }

    /// Whether the option was given (not defaulted).
    pub fn given(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

fn check_value(spec: &OptionSpec, v: &str) -> Result<(), String> {
    let ok = match spec.kind {
        "int" => v.parse::<i64>().is_ok(),
        "float" => v.parse::<f64>().is_ok(),
        "bool" => matches!(v, "true" | "false" | "1" | "0" | "yes" | "no"),
        "string" => true,
        choices => choices.split('|').any(|c| c == v),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "option '{}' takes {}, not '{v}'",
            spec.name, spec.kind
        ))
    }
}

/// Progress of a long pass: `(what, done, total)`.
pub type Progress = std::sync::Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// Shared state of one pipeline run: what passes report, the calibration data, and the
/// statistics gathered from it (collected once, when the first pass asks).
#[derive(Default)]
pub struct PassContext {
    /// Rows for the build report, in pass order.
    pub report: Vec<serde_json::Value>,
    /// Inputs to run for calibration.
    pub calib: Option<crate::calib::Calibration>,
    /// Statistics of the graph as it stands; passes that rescale inputs keep them current,
    /// passes that rewrite the graph drop them.
    pub stats: Option<crate::calib::Stats>,
    /// Told how long passes and calibration are getting on.
    pub progress: Option<Progress>,
    /// Seconds spent running calibration.
    pub calib_seconds: f64,
    /// The linear weights as the pipeline found them, for passes that compare against them
    /// (local distillation); taken before the first pass when one asks for it. Passes that
    /// rescale a weight's input columns without changing the function keep it current.
    pub originals: Option<crate::distill::Originals>,
}

impl PassContext {
    /// Reports progress, when someone listens.
    pub fn tick(&self, what: &str, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            p(what, done, total)
        }
    }

    /// The calibration statistics of `g`, gathered now unless already at hand; the caller
    /// puts them back in `stats` when done. `pass` names who needs them in the error.
    pub fn take_stats(&mut self, g: &Graph, pass: &str) -> Result<crate::calib::Stats, PassError> {
        if let Some(s) = self.stats.take() {
            return Ok(s);
        }
        let calib = self.calib.as_ref().ok_or_else(|| {
            PassError::Calibration(format!(
                "{pass} needs calibration data (llmc build --calib FILES, or the default text that scripts/setup.sh fetches)"
            ))
        })?;
        let t0 = Instant::now();
        let total = calib.windows.len() as u64;
        let progress = self.progress.clone();
        let stats = crate::calib::collect(g, calib, |w| {
            if let Some(p) = &progress {
                p("calibration windows", w as u64, total)
            }
        })?;
        self.calib_seconds += t0.elapsed().as_secs_f64();
        Ok(stats)
    }
}

/// A pass over the graph.
pub trait Pass {
    fn info(&self) -> &'static PassInfo;
    /// Rewrites the graph; leaves a graph the verifier accepts.
    fn run(&mut self, g: &mut Graph, cx: &mut PassContext) -> Result<(), PassError>;
    /// Whether the pass reads calibration statistics.
    fn needs_calibration(&self) -> bool {
        false
    }
    /// Whether the pass reads the linear weights as they were before the pipeline
    /// ([`PassContext::originals`]).
    fn needs_originals(&self) -> bool {
        false
    }
}

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
            cx.originals = Some(crate::distill::Originals::snapshot(g));
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

    static INFO: PassInfo = PassInfo {
        name: "demo",
        summary: "a demo",
        options: &[
            OptionSpec {
                name: "method",
                kind: "rtn|gptq",
                default: "rtn",
                help: "",
            },
            OptionSpec {
                name: "bits",
                kind: "int",
                default: "4",
                help: "",
            },
        ],
    };

    #[test]
    fn options_are_checked() {
        let mut v = BTreeMap::new();
        v.insert("method".to_string(), "awq2".to_string());
        let e = Options::new(&INFO, v).unwrap_err().to_string();
        assert!(e.contains("takes rtn|gptq, not 'awq2'"), "{e}");
        let mut v = BTreeMap::new();
        v.insert("bogus".to_string(), "1".to_string());
        assert!(Options::new(&INFO, v)
            .unwrap_err()
            .to_string()
            .contains("unknown option 'bogus'"));
        let o = Options::new(&INFO, BTreeMap::new()).unwrap();
        assert_eq!(o.int("bits").unwrap(), 4);
        assert_eq!(o.str("method"), "rtn");
    }
}
