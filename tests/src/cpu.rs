//! Differential testing of the CPU backend: a graph is compiled for the host or for AArch64,
//! `tests/runner/runner.c` is built against the bundle, run natively or under
//! `qemu-aarch64 -cpu max` on a job file, and its outputs come back as tensors to compare with
//! the interpreter's.

use llmc_backends::cpu::emit::Entry;
use llmc_backends::cpu::shapes::{self, Binding, Symbols};
use llmc_backends::cpu::size::Size;
use llmc_backends::cpu::{self as backend, BackendError, BuildOptions};
use llmc_backends::TargetSpec;
use llmc_ir::{DType, Data, Dim, Graph, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod cases;

/// Where a bundle runs: `host` (this machine's CPU and features), `x86_64` (the baseline
/// x86-64 CPU, run natively on an x86-64 host) or `aarch64` (under qemu), with an optional LLVM
/// CPU name and feature string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub cpu: Option<String>,
    pub features: Option<String>,
}

impl Target {
    pub fn new(name: &str, cpu: Option<&str>, features: Option<&str>) -> Target {
        Target {
            name: name.to_string(),
            cpu: cpu.map(str::to_string),
            features: features.map(str::to_string),
        }
    }

    pub fn host() -> Target {
        Target::new("host", None, None)
    }

    /// AArch64 on the `generic` CPU with a feature string (`""`, `"+dotprod"`, `"+i8mm"`).
    pub fn aarch64(features: &str) -> Target {
        let f = (!features.is_empty()).then_some(features);
        Target::new("aarch64", Some("generic"), f)
    }

    pub fn spec(&self) -> TargetSpec {
        TargetSpec::parse(&self.name, self.cpu.as_deref(), self.features.as_deref())
            .unwrap_or_else(|e| panic!("target {self:?}: {e}"))
    }

    fn is_arm(&self) -> bool {
        self.name.starts_with("aarch64")
    }

    /// A short label for messages.
    pub fn label(&self) -> String {
        let mut s = self.name.clone();
        if let Some(c) = &self.cpu {
            s += &format!(" cpu={c}");
        }
        if let Some(f) = &self.features {
            s += &format!(" {f}");
        }
        s
    }
}

/// How the runner hands work items to the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exec {
    /// No `parallel_for` hook: every kernel call runs all its items at once.
    Serial,
    /// A hook that runs one item per task call, last item first.
    Split,
    /// A hook that splits the items among this many threads (2..=16).
    Threads(u32),
}

impl Exec {
    fn code(self) -> u32 {
        match self {
            Exec::Serial => 0,
            Exec::Split => 1,
            Exec::Threads(n) => n.clamp(2, 16),
        }
    }
}

/// One call of a decoder bundle.
#[derive(Clone, Debug)]
pub enum Call {
    Prefill(Vec<i32>),
    Decode(i32),
    Reset,
    Context,
}

/// What a decoder call returned: logits (`n × vocab`), a context length, or nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Logits(Vec<f32>),
    Context(i64),
    Done,
}

/// A compiled bundle with its runner, ready to run jobs. The build folder is removed on drop
/// unless `LLMC_KEEP_BUNDLES` is set.
pub struct Compiled {
    pub dir: PathBuf,
    pub name: String,
    pub target: Target,
    exe: PathBuf,
    weights: PathBuf,
    kind: Kind,
}

enum Kind {
    Decoder {
        vocab: usize,
    },
    Graph {
        /// Symbol names in the order of the bundle's `dims` array.
        syms: Vec<String>,
        inputs: Vec<(String, DType, Vec<Dim>)>,
        outputs: Vec<(String, DType, Vec<Size>)>,
    },
}

impl Drop for Compiled {
    fn drop(&mut self) {
        if std::env::var_os("LLMC_KEEP_BUNDLES").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "llmc-cpu-{}-{name}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create a scratch folder");
    d
}

fn runner_source() -> PathBuf {
    crate::repo_root().join("tests/runner/runner.c")
}

/// Compiles `g` for `target` with `opts` (its `name` is made unique here) and builds the runner.
pub fn build(g: &Graph, target: &Target, opts: &BuildOptions) -> Result<Compiled, BackendError> {
    let id = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("llmc_t{id}_{}", sanitize(&opts.name));
    let opts = BuildOptions {
        name: name.clone(),
        ..opts.clone()
    };
    let b = backend::compile(g, &target.spec(), &opts, Default::default())?;
    let dir = scratch(&name);
    let write = |file: String, bytes: &[u8]| {
        std::fs::write(dir.join(&file), bytes).unwrap_or_else(|e| panic!("write {file}: {e}"))
    };
    write(format!("{name}.o"), &b.object);
    write(format!("{name}.h"), b.header.as_bytes());
    write(format!("{name}.weights"), &b.weights);
    let decoder = matches!(b.entry, Entry::Decoder { .. });
    let exe = dir.join("runner");
    let (cc, extra): (&str, &[&str]) = if target.is_arm() {
        ("aarch64-linux-gnu-gcc", &["-static"])
    } else {
        ("cc", &[])
    };
    let mut cmd = Command::new(cc);
    cmd.args(["-O1", "-std=c11", "-D_POSIX_C_SOURCE=200809L"])
        .arg(format!("-DLLMC_BUNDLE={name}"))
        .arg(format!("-I{}", dir.display()))
        .args(extra);
    if decoder {
        cmd.arg("-DLLMC_DECODER");
    }
    cmd.arg(runner_source())
        .arg(dir.join(format!("{name}.o")))
        .arg("-o")
        .arg(&exe)
        .arg("-lpthread");
    let res = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        res.status.success(),
        "{cc} could not build the runner for {name}:\n{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let kind = match b.entry {
        Entry::Decoder { vocab, .. } => Kind::Decoder {
            vocab: vocab as usize,
        },
        Entry::Graph => graph_kind(g, &opts, &b.manifest),
    };
    Ok(Compiled {
        weights: dir.join(format!("{name}.weights")),
        dir,
        name,
        target: target.clone(),
        exe,
        kind,
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The symbols and output shapes of a graph bundle, found as the backend finds them.
fn graph_kind(
    g: &Graph,
    opts: &BuildOptions,
    manifest: &llmc_backends::cpu::manifest::Manifest,
) -> Kind {
    let mut syms = Symbols::default();
    for (_, v) in &g.inputs {
        for d in &g.ty(*v).shape.0 {
            if let Dim::Sym(n) = d {
                syms.add(n, opts.dims.get(n).copied().unwrap_or(1));
            }
        }
    }
    let listed: Vec<String> = manifest.dims.iter().map(|d| d.name.clone()).collect();
    assert_eq!(
        listed, syms.names,
        "the manifest's dims are the inputs' symbols in order"
    );
    let dim_fn = |d: &Dim| -> Option<Size> {
        match d {
            Dim::Fixed(n) => Some(Size::c(*n as i64)),
            Dim::Sym(n) => syms.find(n).map(Size::sym),
            Dim::Any => None,
        }
    };
    let sh = shapes::propagate(
        g,
        &Binding {
            dim: &dim_fn,
            cache: None,
        },
    )
    .expect("the backend compiled it, so its shapes propagate");
    Kind::Graph {
        syms: syms.names.clone(),
        inputs: g
            .inputs
            .iter()
            .map(|(n, v)| (n.clone(), g.ty(*v).dtype(), g.ty(*v).shape.0.clone()))
            .collect(),
        outputs: g
            .outputs
            .iter()
            .map(|(n, v)| (n.clone(), g.ty(*v).dtype(), sh[v.0 as usize].dims.clone()))
            .collect(),
    }
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend(v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend(v.to_le_bytes());
}

/// Reads the result file.
struct Results {
    bytes: Vec<u8>,
    at: usize,
}

impl Results {
    fn take(&mut self, n: usize) -> &[u8] {
        assert!(self.at + n <= self.bytes.len(), "truncated result file");
        self.at += n;
        &self.bytes[self.at - n..self.at]
    }
    fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn blob(&mut self) -> Vec<u8> {
        let n = self.u64() as usize;
        self.take(n).to_vec()
    }
}

impl Compiled {
    /// Rewrites the bundle's weights file entropy-coded (`llmc build --entropy`): the runner
    /// then decodes it with the bundle's `<name>_decode_weights` before init.
    pub fn entropy_code_weights(&self) -> Vec<u8> {
        let plain = std::fs::read(&self.weights).expect("the weights file");
        let coded = llmc_runtime::weights::encode(&plain);
        std::fs::write(&self.weights, &coded).expect("write the weights");
        coded
    }

    /// Replaces the bundle's weights file with `bytes`.
    pub fn set_weights(&self, bytes: &[u8]) {
        std::fs::write(&self.weights, bytes).expect("write the weights");
    }

    /// Runs the runner (natively, or under qemu for AArch64) on a job file.
    fn runner(&self, job: &Path, result: &Path) -> std::process::Output {
        let mut cmd = if self.target.is_arm() {
            let mut c = Command::new("qemu-aarch64");
            c.args(["-cpu", "max"]).arg(&self.exe);
            c
        } else {
            Command::new(&self.exe)
        };
        cmd.arg(&self.weights)
            .arg(job)
            .arg(result)
            .output()
            .expect("start the runner")
    }

    /// Starts the runner on an empty job: its exit code (`None`: killed by a signal) and what
    /// it wrote to stderr. 0 when decoding and init succeed, 3 when init fails, 4 when
    /// `decode_weights` does (the stderr gives the status).
    pub fn start(&self) -> (Option<i32>, String) {
        let jp = self
            .dir
            .join(format!("job{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        let mut job = b"LLMCJOB1".to_vec();
        job.extend(0u32.to_le_bytes());
        job.extend(0u32.to_le_bytes());
        std::fs::write(&jp, job).expect("write the job");
        let rp = jp.with_extension("out");
        let res = self.runner(&jp, &rp);
        let _ = std::fs::remove_file(&jp);
        let _ = std::fs::remove_file(&rp);
        (
            res.status.code(),
            String::from_utf8_lossy(&res.stderr).into_owned(),
        )
    }

    /// Runs the runner on a job; returns the result file's entries (after the magic).
    fn exec(&self, job: Vec<u8>) -> Results {
        let jp = self
            .dir
            .join(format!("job{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        let rp = jp.with_extension("out");
        std::fs::write(&jp, job).expect("write the job");
        let res = self.runner(&jp, &rp);
        assert!(
            res.status.success(),
            "runner for {} ({}) failed with {}:\n{}",
            self.name,
            self.target.label(),
            res.status,
            String::from_utf8_lossy(&res.stderr)
        );
        let bytes = std::fs::read(&rp).expect("read the results");
        let _ = std::fs::remove_file(&jp);
        let _ = std::fs::remove_file(&rp);
        assert_eq!(&bytes[..8], b"LLMCRES1", "not a result file");
        Results { bytes, at: 8 }
    }

    /// Runs a graph bundle once per input set in one process; each run's outputs or the
    /// status code it returned.
    pub fn run_many(
        &self,
        runs: &[Vec<(&str, Tensor)>],
        exec: Exec,
    ) -> Vec<Result<Vec<(String, Tensor)>, i32>> {
        let Kind::Graph {
            syms,
            inputs,
            outputs,
        } = &self.kind
        else {
            panic!("{} is a decoder: use calls()", self.name)
        };
        let mut job = b"LLMCJOB1".to_vec();
        put_u32(&mut job, exec.code());
        put_u32(&mut job, runs.len() as u32);
        let mut shapes_per_run = vec![];
        for run in runs {
            let mut vals: BTreeMap<&str, i64> = BTreeMap::new();
            let mut ordered = vec![];
            for (name, dt, dims) in inputs {
                let t = run
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t)
                    .unwrap_or_else(|| panic!("input '{name}' is missing"));
                assert_eq!(t.dtype(), *dt, "input '{name}' type");
                assert_eq!(t.rank(), dims.len(), "input '{name}' rank");
                for (d, &n) in dims.iter().zip(&t.shape) {
                    match d {
                        Dim::Sym(s) => {
                            let prev = *vals.entry(s.as_str()).or_insert(n as i64);
                            assert_eq!(prev, n as i64, "symbol {s} bound twice");
                        }
                        Dim::Fixed(f) => assert_eq!(*f, n as u64, "input '{name}' shape"),
                        Dim::Any => {}
                    }
                }
                ordered.push(t);
            }
            let symv: Vec<i64> = syms.iter().map(|s| vals[s.as_str()]).collect();
            put_u32(&mut job, symv.len() as u32);
            for v in &symv {
                job.extend(v.to_le_bytes());
            }
            put_u32(&mut job, ordered.len() as u32);
            for t in ordered {
                let bytes = t.data.to_le_bytes();
                put_u64(&mut job, bytes.len() as u64);
                job.extend(bytes);
            }
            put_u32(&mut job, outputs.len() as u32);
            let mut oshapes = vec![];
            for (_, dt, dims) in outputs {
                let shape: Vec<usize> = dims.iter().map(|d| d.eval(&symv) as usize).collect();
                put_u64(
                    &mut job,
                    (shape.iter().product::<usize>() * dt.size()) as u64,
                );
                oshapes.push(shape);
            }
            shapes_per_run.push(oshapes);
        }
        let mut res = self.exec(job);
        shapes_per_run
            .into_iter()
            .map(|oshapes| {
                let status = res.i32();
                if status != 0 {
                    return Err(status);
                }
                Ok(outputs
                    .iter()
                    .zip(oshapes)
                    .map(|((name, dt, _), shape)| {
                        let bytes = res.blob();
                        let data = Data::from_le_bytes(*dt, &bytes).expect("whole elements");
                        (name.clone(), Tensor::new(shape, data))
                    })
                    .collect())
            })
            .collect()
    }

    /// Runs a graph bundle once.
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>, i32> {
        self.run_many(&[inputs.to_vec()], Exec::Serial)
            .pop()
            .expect("one run")
    }

    /// Makes calls on one state of a decoder bundle, in one process.
    pub fn calls(&self, calls: &[Call], exec: Exec) -> Vec<Result<Reply, i32>> {
        let Kind::Decoder { vocab } = self.kind else {
            panic!("{} is not a decoder: use run()", self.name)
        };
        let mut job = b"LLMCJOB1".to_vec();
        put_u32(&mut job, exec.code());
        put_u32(&mut job, calls.len() as u32);
        for c in calls {
            let (op, toks): (u32, Vec<i32>) = match c {
                Call::Prefill(t) => (0, t.clone()),
                Call::Decode(t) => (1, vec![*t]),
                Call::Reset => (2, vec![]),
                Call::Context => (3, vec![]),
            };
            put_u32(&mut job, op);
            put_u32(&mut job, toks.len() as u32);
            for t in toks {
                job.extend(t.to_le_bytes());
            }
            put_u32(&mut job, vocab as u32);
        }
        let mut res = self.exec(job);
        calls
            .iter()
            .map(|c| {
                let status = res.i32();
                if status != 0 {
                    return Err(status);
                }
                Ok(match c {
                    Call::Prefill(_) | Call::Decode(_) => Reply::Logits(
                        res.blob()
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                            .collect(),
                    ),
                    Call::Context => Reply::Context(res.u64() as i64),
                    Call::Reset => Reply::Done,
                })
            })
            .collect()
    }

    /// Prefills each chunk of tokens in turn; the logits of every call.
    pub fn prefill_chunks(&self, chunks: &[&[i32]], exec: Exec) -> Vec<Vec<f32>> {
        let calls: Vec<Call> = chunks.iter().map(|c| Call::Prefill(c.to_vec())).collect();
        self.calls(&calls, exec)
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Ok(Reply::Logits(l)) => l,
                other => panic!("call {i} of {}: {other:?}", self.name),
            })
            .collect()
    }
}

/// Build options for a graph bundle whose symbols' largest values are those of `inputs`.
pub fn options_for(g: &Graph, inputs: &[(&str, Tensor)]) -> BuildOptions {
    let mut dims = BTreeMap::new();
    for (name, v) in &g.inputs {
        let Some((_, t)) = inputs.iter().find(|(n, _)| n == name) else {
            continue;
        };
        for (d, &n) in g.ty(*v).shape.0.iter().zip(&t.shape) {
            if let Dim::Sym(s) = d {
                let e = dims.entry(s.clone()).or_insert(0i64);
                *e = (*e).max(n as i64);
            }
        }
    }
    BuildOptions {
        name: g.name.clone(),
        dims,
        ..BuildOptions::default()
    }
}

/// Compiles `g` for `target` (`"host"`, `"x86_64"` or `"aarch64"`, with an optional feature
/// string; aarch64 uses the `generic` CPU), runs it once on `inputs` and returns its outputs.
/// Panics when the build fails or an entry point returns an error code.
pub fn run_bundle(
    g: &Graph,
    target: &str,
    features: Option<&str>,
    inputs: &[(&str, Tensor)],
) -> Vec<(String, Tensor)> {
    let t = if target == "aarch64" {
        Target::aarch64(features.unwrap_or(""))
    } else {
        Target::new(target, None, features)
    };
    let c = build(g, &t, &options_for(g, inputs))
        .unwrap_or_else(|e| panic!("compiling {} for {}: {e}", g.name, t.label()));
    c.run(inputs)
        .unwrap_or_else(|code| panic!("{} on {} returned {code}", g.name, t.label()))
}

/// Tolerance of a float comparison: `|got − want| ≤ atol + rtol·|want|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

impl Tol {
    pub const EXACT: Tol = Tol {
        atol: 0.0,
        rtol: 0.0,
    };

    pub const fn new(atol: f32, rtol: f32) -> Tol {
        Tol { atol, rtol }
    }
}

/// Checks that two tensors agree: same type and shape, integers and bools exactly, floats
/// within `tol` (NaN matches NaN, infinities match exactly). f16 and bf16 results also allow
/// one unit in the last place of their type, since both sides round an f32 result that may
/// differ in its last bits.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: Tol) {
    if let Some(e) = compare(got, want, tol) {
        panic!("{what}: {e}");
    }
}

/// What [`assert_close`] checks; `None` when the tensors agree, else what differs.
pub fn compare(got: &Tensor, want: &Tensor, tol: Tol) -> Option<String> {
    if got.dtype() != want.dtype() {
        return Some(format!(
            "element type {} instead of {}",
            got.dtype(),
            want.dtype()
        ));
    }
    if got.shape != want.shape {
        return Some(format!("shape {:?} instead of {:?}", got.shape, want.shape));
    }
    let dt = want.dtype();
    if !dt.is_float() {
        let (g, w) = (got.to_i64_vec(), want.to_i64_vec());
        let bad: Vec<usize> = (0..g.len()).filter(|&i| g[i] != w[i]).collect();
        return bad.first().map(|&i| {
            format!(
                "element {i} (index {:?}) is {} but the interpreter gives {} ({} of {} differ)",
                unravel(i, &want.shape),
                g[i],
                w[i],
                bad.len(),
                g.len()
            )
        });
    }
    let tol = match dt {
        DType::F16 => Tol::new(tol.atol.max(6e-8), tol.rtol.max(1.0 / 1024.0)),
        DType::BF16 => Tol::new(tol.atol.max(1e-38), tol.rtol.max(1.0 / 128.0)),
        _ => tol,
    };
    let (g, w) = (got.to_f32_vec(), want.to_f32_vec());
    let mut worst: Option<(usize, f32)> = None;
    let mut bad = 0;
    for i in 0..g.len() {
        let (a, b) = (g[i], w[i]);
        let ok = if b.is_nan() {
            a.is_nan()
        } else if b.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= tol.atol + tol.rtol * b.abs()
        };
        if !ok {
            bad += 1;
            let excess = if a.is_finite() {
                (a - b).abs() / (tol.atol + tol.rtol * b.abs()).max(f32::MIN_POSITIVE)
            } else {
                f32::INFINITY
            };
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    worst.map(|(i, _)| {
        format!(
            "{bad} of {} elements differ beyond {tol:?}; worst at index {:?}: got {:e} want {:e} (diff {:e})",
            g.len(),
            unravel(i, &want.shape),
            g[i],
            w[i],
            (g[i] - w[i]).abs()
        )
    })
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d].max(1);
        i /= shape[d].max(1);
    }
    idx
}

/// Deterministic pseudo-random numbers (xorshift64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[lo, hi)`.
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// Uniform in `lo..hi`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo) as u64) as i64
    }

    pub fn vec_f32(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(lo, hi)).collect()
    }

    /// A tensor of `dtype` with values in `[lo, hi)` (integers: `lo..hi`, bools: fair coins).
    pub fn tensor(&mut self, shape: &[usize], dtype: DType, lo: f32, hi: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let data = if dtype.is_float() {
            Data::F32(self.vec_f32(n, lo, hi)).cast(dtype)
        } else if dtype == DType::Bool {
            Data::Bool((0..n).map(|_| self.next_u64() & 1 == 1).collect())
        } else {
            Data::I64((0..n).map(|_| self.int(lo as i64, hi as i64)).collect()).cast(dtype)
        };
        Tensor::new(shape.to_vec(), data)
    }
}

/// Whether `path` exists and is executable by name on `PATH` (for tools the tests need).
pub fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(name).is_file()))
}
