//! Compilation targets: a target-lexicon triple, an LLVM CPU name and LLVM feature flags.

mod tables;

use std::fmt;
use std::str::FromStr;

use inkwell::targets::TargetMachine;
use target_lexicon::{Aarch64Architecture, Architecture, Triple};
use thiserror::Error;

/// The short target names `TargetSpec::parse` accepts besides full triples.
pub const SHORT_NAMES: &[&str] = &["host", "x86_64", "aarch64", "nvptx64"];

/// An instruction-set architecture llmc generates code for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// 64-bit x86 (SSE/AVX2/AVX-512 kernels).
    X86_64,
    /// Little-endian 64-bit Arm (NEON, dotprod, i8mm kernels).
    Aarch64,
    /// NVIDIA PTX, 64-bit addressing (CUDA kernels).
    Nvptx64,
}

impl Arch {
    /// Every supported architecture, in the order error messages list them.
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Nvptx64];

    /// The architecture's name as target-lexicon and LLVM spell it in triples.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Nvptx64 => "nvptx64",
        }
    }

    /// The triple a short name such as `aarch64` stands for.
    pub fn default_triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
            Arch::Nvptx64 => "nvptx64-nvidia-cuda",
        }
    }

    /// The CPU used when none is given: LLVM's baseline for the CPU targets, and
    /// Ampere (`sm_80`) for PTX.
    pub fn default_cpu(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Aarch64 => "generic",
            Arch::Nvptx64 => "sm_80",
        }
    }

    /// The CPU names LLVM accepts for this architecture, sorted.
    pub fn cpus(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => tables::X86_64_CPUS,
            Arch::Aarch64 => tables::AARCH64_CPUS,
            Arch::Nvptx64 => tables::NVPTX64_CPUS,
        }
    }

    /// The feature names (without `+`/`-`) LLVM accepts for this architecture, sorted.
    pub fn features(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => tables::X86_64_FEATURES,
            Arch::Aarch64 => tables::AARCH64_FEATURES,
            Arch::Nvptx64 => tables::NVPTX64_FEATURES,
        }
    }

    /// Whether LLVM knows `cpu` for this architecture.
    pub fn is_known_cpu(self, cpu: &str) -> bool {
        self.cpus().binary_search(&cpu).is_ok()
    }

    /// Whether LLVM knows the feature `name` (without `+`/`-`) for this architecture.
    pub fn is_known_feature(self, name: &str) -> bool {
        self.features().binary_search(&name).is_ok()
    }

    /// The llmc architecture of a target-lexicon architecture, if llmc supports it.
    pub fn from_lexicon(architecture: Architecture) -> Option<Arch> {
        match architecture {
            Architecture::X86_64 => Some(Arch::X86_64),
            Architecture::Aarch64(Aarch64Architecture::Aarch64) => Some(Arch::Aarch64),
            Architecture::Nvptx64 => Some(Arch::Nvptx64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One LLVM target feature switched on (`+name`) or off (`-name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Feature {
    /// The LLVM feature name, without the sign.
    pub name: String,
    /// `true` for `+name`, `false` for `-name`.
    pub enabled: bool,
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.enabled { '+' } else { '-' };
        write!(f, "{sign}{}", self.name)
    }
}

/// Why a target, CPU or feature string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    /// The target is neither a short name nor a triple target-lexicon can parse.
    #[error(
        "unknown target `{target}` ({reason}); supported: {}, or a triple whose architecture is {}",
        SHORT_NAMES.join(", "),
        arch_list()
    )]
    UnknownTarget {
        /// The target as given.
        target: String,
        /// What target-lexicon could not parse.
        reason: String,
    },
    /// The triple parsed, but llmc does not generate code for its architecture.
    #[error(
        "unsupported architecture `{architecture}` in target `{target}`; supported architectures: {}",
        arch_list()
    )]
    UnsupportedArchitecture {
        /// The target as given.
        target: String,
        /// The architecture part of the triple.
        architecture: String,
    },
    /// LLVM has no CPU of this name for the architecture.
    #[error("unknown CPU `{cpu}` for {arch}{}", did_you_mean(.suggestions))]
    UnknownCpu {
        /// The CPU as given.
        cpu: String,
        /// The target's architecture.
        arch: Arch,
        /// Known CPU names close to the one given.
        suggestions: Vec<String>,
    },
    /// A feature entry is not of the form `+name` or `-name`.
    #[error("malformed feature `{feature}` in `{features}`: expected a comma-separated list like `+avx2,-avx512f`")]
    MalformedFeature {
        /// The offending entry.
        feature: String,
        /// The whole feature string as given.
        features: String,
    },
    /// LLVM has no feature of this name for the architecture.
    #[error(
        "unknown feature `{feature}` for {arch}{} ({} features are known; `Arch::features` lists them)",
        did_you_mean(.suggestions),
        .arch.features().len()
    )]
    UnknownFeature {
        /// The feature name as given, without its sign.
        feature: String,
        /// The target's architecture.
        arch: Arch,
        /// Known feature names close to the one given.
        suggestions: Vec<String>,
    },
    /// `host` was asked for on a machine whose architecture llmc does not support.
    #[error(
        "the host architecture `{architecture}` is not supported; supported architectures: {}",
        arch_list()
    )]
    UnsupportedHost {
        /// The host's architecture.
        architecture: String,
    },
}

fn arch_list() -> String {
    Arch::ALL.map(Arch::name).join(", ")
}

fn did_you_mean(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = suggestions.iter().map(|s| format!("`{s}`")).collect();
        format!("; did you mean {}?", quoted.join(", "))
    }
}

/// What to generate code for: a triple, a CPU and a list of feature switches.
///
/// Feature switches are applied in order after the CPU's own features, so a later
/// entry overrides an earlier one, as in LLVM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    triple: Triple,
    arch: Arch,
    cpu: String,
    features: Vec<Feature>,
}

impl TargetSpec {
    /// Builds a target from a short name (`host`, `x86_64`, `aarch64`, `nvptx64`) or a
    /// triple (`aarch64-unknown-linux-gnu`), an optional LLVM CPU name (`haswell`,
    /// `neoverse-n1`, `sm_80`) and an optional comma-separated feature string
    /// (`+avx512vnni,-avx512f`).
    ///
    /// Without a CPU, `host` means the host's CPU and all its detected features
    /// (`features` are applied after them); other targets get
    /// [`Arch::default_cpu`]. CPU and feature names are checked against what LLVM
    /// knows for the architecture; an unknown one is an error naming it.
    pub fn parse(
        target: &str,
        cpu: Option<&str>,
        features: Option<&str>,
    ) -> Result<TargetSpec, TargetError> {
        let target = target.trim();
        let cpu = cpu.map(str::trim).filter(|c| !c.is_empty());

        let mut spec = if target == "host" {
            let host = TargetSpec::host()?;
            match cpu {
                None => host,
                Some(cpu) => TargetSpec::with_cpu(host.triple, host.arch, cpu)?,
            }
        } else {
            let (triple, arch) = parse_triple(target)?;
            let cpu = cpu.unwrap_or(arch.default_cpu());
            TargetSpec::with_cpu(triple, arch, cpu)?
        };

        if let Some(features) = features {
            let extra = parse_features(features, spec.arch)?;
            spec.features.extend(extra);
        }
        Ok(spec)
    }

    /// The machine this process runs on: its triple, the CPU LLVM detects and every
    /// feature LLVM reports for it.
    pub fn host() -> Result<TargetSpec, TargetError> {
        let triple = Triple::host();
        let Some(arch) = Arch::from_lexicon(triple.architecture) else {
            return Err(TargetError::UnsupportedHost {
                architecture: triple.architecture.to_string(),
            });
        };
        Ok(TargetSpec {
            triple,
            arch,
            cpu: host_cpu_name(),
            features: host_cpu_features(),
        })
    }

    fn with_cpu(triple: Triple, arch: Arch, cpu: &str) -> Result<TargetSpec, TargetError> {
        if !arch.is_known_cpu(cpu) {
            return Err(TargetError::UnknownCpu {
                cpu: cpu.to_string(),
                arch,
                suggestions: suggest(cpu, arch.cpus()),
            });
        }
        Ok(TargetSpec {
            triple,
            arch,
            cpu: cpu.to_string(),
            features: Vec::new(),
        })
    }

    /// The target triple.
    pub fn triple(&self) -> &Triple {
        &self.triple
    }

    /// The triple as LLVM expects it (`x86_64-unknown-linux-gnu`).
    pub fn llvm_triple(&self) -> String {
        self.triple.to_string()
    }

    /// Whether code for this target can be loaded into this process: the same architecture
    /// and operating system as the machine llmc runs on (its CPU features are checked when
    /// the code is loaded).
    pub fn runs_here(&self) -> bool {
        let host = Triple::host();
        self.triple.architecture == host.architecture
            && self.triple.operating_system == host.operating_system
    }

    /// The architecture of the triple.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The LLVM CPU name.
    pub fn cpu(&self) -> &str {
        &self.cpu
    }

    /// The feature switches, in the order they apply.
    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// The features as LLVM's comma-separated string (`+avx2,-avx512f`).
    pub fn llvm_features(&self) -> String {
        let parts: Vec<String> = self.features.iter().map(Feature::to_string).collect();
        parts.join(",")
    }

    /// Whether the feature string switches `name` on (`Some(true)`) or off
    /// (`Some(false)`), the last switch winning; `None` if it does not mention it.
    ///
    /// Only explicit switches count: features implied by the CPU name are not known
    /// here, except for `host`, whose feature list is LLVM's full detection.
    pub fn feature(&self, name: &str) -> Option<bool> {
        self.features
            .iter()
            .rev()
            .find(|f| f.name == name)
            .map(|f| f.enabled)
    }
}

impl fmt::Display for TargetSpec {
    /// Prints `triple` with the CPU and the feature string: `x86_64-unknown-linux-gnu cpu=haswell features=+avx2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} cpu={}", self.triple, self.cpu)?;
        if !self.features.is_empty() {
            write!(f, " features={}", self.llvm_features())?;
        }
        Ok(())
    }
}

fn parse_triple(target: &str) -> Result<(Triple, Arch), TargetError> {
    let text = match Arch::ALL.iter().find(|a| a.name() == target) {
        Some(arch) => arch.default_triple(),
        None => target,
    };
    // A bare word such as `x86-64` parses as a triple with only an architecture;
    // require at least `arch-vendor` or `arch-os` so typos of short names are caught.
    if !text.contains('-') {
        return Err(TargetError::UnknownTarget {
            target: target.to_string(),
            reason: "not a short name, and a triple needs at least two `-`-separated parts"
                .to_string(),
        });
    }
    let triple = Triple::from_str(text).map_err(|e| TargetError::UnknownTarget {
        target: target.to_string(),
        reason: e.to_string(),
    })?;
    let Some(arch) = Arch::from_lexicon(triple.architecture) else {
        return Err(TargetError::UnsupportedArchitecture {
            target: target.to_string(),
            architecture: triple.architecture.to_string(),
        });
    };
    Ok((triple, arch))
}

fn parse_features(features: &str, arch: Arch) -> Result<Vec<Feature>, TargetError> {
    let mut parsed = Vec::new();
    for entry in features.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let malformed = || TargetError::MalformedFeature {
            feature: entry.to_string(),
            features: features.to_string(),
        };
        let (enabled, name) = match entry.split_at_checked(1) {
            Some(("+", name)) => (true, name),
            Some(("-", name)) => (false, name),
            _ => return Err(malformed()),
        };
        let well_formed = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !well_formed {
            return Err(malformed());
        }
        if !arch.is_known_feature(name) {
            return Err(TargetError::UnknownFeature {
                feature: name.to_string(),
                arch,
                suggestions: suggest(name, arch.features()),
            });
        }
        parsed.push(Feature {
            name: name.to_string(),
            enabled,
        });
    }
    Ok(parsed)
}

/// Parses an LLVM feature string such as the host's (`+sse2,-avx512f,...`) without
/// checking names against the tables: LLVM produced them.
fn parse_llvm_feature_list(features: &str) -> Vec<Feature> {
    features
        .split(',')
        .filter_map(|entry| {
            let (sign, name) = entry.trim().split_at_checked(1)?;
            let enabled = match sign {
                "+" => true,
                "-" => false,
                _ => return None,
            };
            (!name.is_empty()).then(|| Feature {
                name: name.to_string(),
                enabled,
            })
        })
        .collect()
}

/// Up to five known names close to `wanted`: those it is a prefix of, or within a
/// small edit distance, nearest first.
fn suggest(wanted: &str, known: &[&str]) -> Vec<String> {
    let limit = (wanted.len() / 3).max(1);
    let mut scored: Vec<(usize, &str)> = known
        .iter()
        .filter_map(|&name| {
            let distance = edit_distance(wanted, name);
            let close = distance <= limit || (wanted.len() >= 3 && name.starts_with(wanted));
            close.then_some((distance, name))
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(5)
        .map(|(_, n)| n.to_string())
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The host CPU's name as LLVM detects it (`znver4`, `neoverse-v2`, ...).
pub fn host_cpu_name() -> String {
    TargetMachine::get_host_cpu_name().to_string()
}

/// The host CPU's features as LLVM detects them, each switched on or off.
pub fn host_cpu_features() -> Vec<Feature> {
    parse_llvm_feature_list(&TargetMachine::get_host_cpu_features().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        for arch in Arch::ALL {
            assert!(arch.cpus().is_sorted(), "{arch} CPUs");
            assert!(arch.features().is_sorted(), "{arch} features");
            assert!(arch.is_known_cpu(arch.default_cpu()), "{arch} default CPU");
        }
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("avx512vnni", "avx512vnni"), 0);
        assert_eq!(edit_distance("avx512vnn", "avx512vnni"), 1);
        assert_eq!(edit_distance("haswel", "haswell"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn llvm_feature_lists_keep_signs() {
        let parsed = parse_llvm_feature_list("+sse2,-avx512f,,junk");
        assert_eq!(
            parsed,
            vec![
                Feature {
                    name: "sse2".into(),
                    enabled: true
                },
                Feature {
                    name: "avx512f".into(),
                    enabled: false
                },
            ]
        );
    }
}
