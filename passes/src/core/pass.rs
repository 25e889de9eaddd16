//! What a pass is: the [`Pass`] trait, its [`PassInfo`] (name, summary, typed options, and
//! how to make one from options), and the [`PassContext`] a pipeline run shares.

use crate::PassError;
use llmc_ir::Graph;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

/// The type of an option's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    Int,
    Float,
    Bool,
    /// Any text.
    Str,
    /// One of these words.
    Choice(&'static [&'static str]),
}

impl OptionKind {
    /// Whether `v` is a value of this kind.
    pub fn accepts(self, v: &str) -> bool {
        match self {
            OptionKind::Int => v.parse::<i64>().is_ok(),
            OptionKind::Float => v.parse::<f64>().is_ok(),
            OptionKind::Bool => matches!(v, "true" | "false" | "1" | "0" | "yes" | "no"),
            OptionKind::Str => true,
            OptionKind::Choice(words) => words.contains(&v),
        }
    }
}

impl fmt::Display for OptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionKind::Int => f.write_str("int"),
            OptionKind::Float => f.write_str("float"),
            OptionKind::Bool => f.write_str("bool"),
            OptionKind::Str => f.write_str("string"),
            OptionKind::Choice(words) => f.write_str(&words.join("|")),
        }
    }
}

/// One option a pass takes: its name, type, default (a value of that type) and help.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: OptionKind,
    pub default: &'static str,
    pub help: &'static str,
}

/// What a pass is: its name, a one-line summary, its options, and how to make one.
#[derive(Clone, Copy)]
pub struct PassInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub options: &'static [OptionSpec],
    /// The pass configured by checked options.
    pub create: fn(&Options) -> Result<Box<dyn Pass>, PassError>,
}

impl fmt::Debug for PassInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassInfo")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
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
            if !spec.kind.accepts(v) {
                return Err(bad(format!(
                    "option '{}' takes {}, not '{v}'",
                    spec.name, spec.kind
                )));
            }
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

    fn need(&self, name: &str, what: &str) -> PassError {
        PassError::Options {
            pass: self.pass.into(),
            msg: format!("option '{name}' needs {what}"),
        }
    }

    /// A `string` or choice option's value.
    pub fn str(&self, name: &str) -> &str {
        self.raw(name)
    }

    pub fn int(&self, name: &str) -> Result<i64, PassError> {
        self.raw(name)
            .parse()
            .map_err(|_| self.need(name, "an integer"))
    }

    /// An int option that must be at least 0.
    pub fn count(&self, name: &str) -> Result<usize, PassError> {
        usize::try_from(self.int(name)?).map_err(|_| self.need(name, "a count (0 or more)"))
    }

    pub fn float(&self, name: &str) -> Result<f64, PassError> {
        self.raw(name)
            .parse()
            .map_err(|_| self.need(name, "a number"))
    }

    pub fn bool(&self, name: &str) -> bool {
        matches!(self.raw(name), "true" | "1" | "yes")
    }

    /// Whether the option was given (not defaulted).
    pub fn given(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
}

/// Progress of a long pass: `(what, done, total)`.
pub type Progress = std::sync::Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// Shared state of one pipeline run: what passes report, the calibration data, and the
/// statistics gathered from it (collected once, when the first pass asks).
#[derive(Default)]
pub struct PassContext {
    /// Rows for the build report, in pass order.
    pub report: Vec<crate::core::report::PassRow>,
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
    pub originals: Option<crate::core::originals::Originals>,
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

#[cfg(test)]
mod tests {
    use super::*;

    static INFO: PassInfo = PassInfo {
        name: "demo",
        summary: "a demo",
        options: &[
            OptionSpec {
                name: "method",
                kind: OptionKind::Choice(&["rtn", "gptq"]),
                default: "rtn",
                help: "",
            },
            OptionSpec {
                name: "bits",
                kind: OptionKind::Int,
                default: "4",
                help: "",
            },
        ],
        create: |_| unreachable!("not made in this test"),
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
