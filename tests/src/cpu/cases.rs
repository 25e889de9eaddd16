//! Differential test cases for the CPU backend, one family per IR op group: small graphs with
//! deterministic random inputs, the tolerance each comparison allows, and the runner that
//! compiles a case for a target and compares every output with the interpreter's.
//!
//! Tolerances (`|got − want| ≤ atol + rtol·|want|`):
//! - copies, views, integer and bool results, casts, comparisons, selects: exact;
//! - f32 arithmetic of one rounding (add, mul, div, min/max, clip, floor/round): exact;
//! - f32 sums over rows (reductions, norms, softmax, products, attention; K ≤ 128 terms of
//!   magnitude ≤ 4): [`F32`], 1e-5 absolute + 1e-5 relative: the backend sums in a different
//!   order (vectorized, and the interpreter's gemm blocks differently);
//! - transcendental functions (exp, log, tanh, erf, sin, cos, sigmoid, gelu, softplus): the
//!   backend's own polynomials against the interpreter's libm, [`TRANSCENDENTAL`], 2e-6
//!   relative + 1e-6 absolute (near zeros of sin or 1 + erf only an absolute bound makes sense);
//! - pow as `exp(y·log|x|)`: [`POW`], 4e-6 relative: the error of log grows by |y·log x| ≤ 12;
//! - f16 and bf16 results additionally one unit in the last place of their type (see
//!   [`super::assert_close`]).

use super::{build, Compiled, Exec, Target, Tol};
use llmc_backends::cpu::BuildOptions;
use llmc_ir::weights::{encode_quant, pack_codes};
use llmc_ir::{
    ActQuant, BinaryOp, Bytes, DType, Data, Dim, Encoding, Format, Graph, Group, Op, PaletteSpec,
    QuantSpec, ReduceKind, RopeMode, Session, Shape, SliceSpec, Tensor, TensorType, UnaryOp,
    ValueId, WeightData, Zero,
};
use std::collections::BTreeMap;

use super::Rng;

pub const EXACT: Tol = Tol::EXACT;
pub const F32: Tol = Tol::new(1e-5, 1e-5);
pub const TRANSCENDENTAL: Tol = Tol::new(1e-6, 2e-6);
pub const POW: Tol = Tol::new(1e-6, 4e-6);

/// One graph, the input sets it runs on, and how its outputs compare.
pub struct Case {
    pub name: String,
    pub graph: Graph,
    pub runs: Vec<Vec<(String, Tensor)>>,
    /// Tolerance of outputs not named in `tols`.
    pub tol: Tol,
    pub tols: Vec<(String, Tol)>,
    /// Largest value of each input symbol (default: the largest the runs use).
    pub dims: BTreeMap<String, i64>,
    /// Status code a run must return where the interpreter fails.
    pub error_status: i32,
}

impl Case {
    pub fn new(name: &str, graph: Graph, tol: Tol) -> Case {
        Case {
            name: name.to_string(),
            graph,
            runs: vec![],
            tol,
            tols: vec![],
            dims: BTreeMap::new(),
            error_status: 8,
        }
    }

    /// Adds an input set.
    pub fn run(mut self, inputs: Vec<(&str, Tensor)>) -> Case {
        self.runs.push(
            inputs
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect(),
        );
        self
    }

    /// Adds an input set of random values in `[lo, hi)`, shaped by the inputs' types with
    /// symbols bound by `syms`.
    pub fn random_run(mut self, rng: &mut Rng, lo: f32, hi: f32, syms: &[(&str, usize)]) -> Case {
        let inputs: Vec<(String, Tensor)> = self
            .graph
            .inputs
            .iter()
            .map(|(n, v)| {
                let ty = self.graph.ty(*v);
                let shape: Vec<usize> = ty
                    .shape
                    .0
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(k) => *k as usize,
                        Dim::Sym(s) => {
                            syms.iter()
                                .find(|(m, _)| m == s)
                                .unwrap_or_else(|| panic!("no value for symbol {s}"))
                                .1
                        }
                        Dim::Any => panic!("input {n} has an unknown dimension"),
                    })
                    .collect();
                (n.clone(), rng.tensor(&shape, ty.dtype(), lo, hi))
            })
            .collect();
        self.runs.push(inputs);
        self
    }

    pub fn tol_for(mut self, output: &str, tol: Tol) -> Case {
        self.tols.push((output.to_string(), tol));
        self
    }

    pub fn max_dim(mut self, sym: &str, max: i64) -> Case {
        self.dims.insert(sym.to_string(), max);
        self
    }

    fn options(&self) -> BuildOptions {
        let mut dims = self.dims.clone();
        for run in &self.runs {
            for (name, v) in &self.graph.inputs {
                let Some((_, t)) = run.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                for (d, &n) in self.graph.ty(*v).shape.0.iter().zip(&t.shape) {
                    if let Dim::Sym(s) = d {
                        let e = dims.entry(s.clone()).or_insert(0);
                        *e = (*e).max(n as i64);
                    }
                }
            }
        }
        BuildOptions {
            name: self.name.clone(),
            dims,
            max_context: 64,
            max_tokens: 16,
        }
    }
}

/// Compiles a case for a target and checks every run under each way of splitting the work
/// against the interpreter; the error lists what differs.
pub fn check_case(case: &Case, target: &Target, execs: &[Exec]) -> Result<(), String> {
    let t0 = std::time::Instant::now();
    let c: Compiled = build(&case.graph, target, &case.options())
        .map_err(|e| format!("{}: compiling for {}: {e}", case.name, target.label()))?;
    let built = t0.elapsed();
    let mut want = vec![];
    for run in &case.runs {
        let inputs: Vec<(&str, Tensor)> =
            run.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        want.push(Session::new(&case.graph).and_then(|mut s| s.run(&inputs)));
    }
    let runs: Vec<Vec<(&str, Tensor)>> = case
        .runs
        .iter()
        .map(|r| r.iter().map(|(n, t)| (n.as_str(), t.clone())).collect())
        .collect();
    let mut errors = vec![];
    for &exec in execs {
        let got = c.run_many(&runs, exec);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let at = format!("{} run {k} on {} ({exec:?})", case.name, target.label());
            match (g, w) {
                (Ok(g), Ok(w)) => {
                    for ((name, gt), (_, wt)) in g.iter().zip(w) {
                        let tol = case
                            .tols
                            .iter()
                            .find(|(n, _)| n == name)
                            .map_or(case.tol, |(_, t)| *t);
                        if let Some(e) = super::compare(gt, wt, tol) {
                            errors.push(format!("{at}: output '{name}': {e}"));
                        }
                    }
                }
                (Err(code), Ok(_)) => errors.push(format!("{at}: returned status {code}")),
                (Ok(_), Err(e)) => errors.push(format!(
                    "{at}: succeeded where the interpreter fails ({e}); expected status {}",
                    case.error_status
                )),
                (Err(code), Err(_)) if *code != case.error_status => errors.push(format!(
                    "{at}: status {code}, expected {}",
                    case.error_status
                )),
                (Err(_), Err(_)) => {}
            }
        }
    }
    if std::env::var_os("LLMC_CASE_TIMES").is_some() {
        eprintln!(
            "{} on {}: build {:.2}s, total {:.2}s",
            case.name,
            target.label(),
            built.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Checks every case, two at a time, and panics listing all failures.
pub fn check_all(target: &Target, cases: Vec<Case>, execs: &[Exec]) {
    let failures = par_each(&cases, |c| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_case(c, target, execs)
        }))
        .unwrap_or_else(|p| Err(format!("{}: panicked: {}", c.name, panic_message(&*p))))
    });
    assert!(
        failures.is_empty(),
        "{} of {} cases failed on {}:\n{}",
        failures.len(),
        cases.len(),
        target.label(),
        failures.join("\n")
    );
}

/// A graph under construction.
pub struct Gb {
    pub g: Graph,
}

impl Gb {
    pub fn new(name: &str) -> Gb {
        Gb {
            g: Graph::new(name),
        }
    }

    pub fn input(&mut self, name: &str, dims: &[usize], dt: DType) -> ValueId {
        self.g.add_input(name, TensorType::fixed(dims, dt))
    }

    /// An input with symbolic dimensions.
    pub fn input_sym(&mut self, name: &str, dims: Vec<Dim>, dt: DType) -> ValueId {
        self.g.add_input(name, TensorType::new(Shape(dims), dt))
    }

    pub fn op(&mut self, op: Op, ins: &[ValueId]) -> ValueId {
        let what = format!("{op:?}");
        self.g
            .add1(op, ins)
            .unwrap_or_else(|e| panic!("building {}: {what}: {e}", self.g.name))
    }

    pub fn ops(&mut self, op: Op, ins: &[ValueId]) -> Vec<ValueId> {
        let what = format!("{op:?}");
        self.g
            .add(op, ins)
            .unwrap_or_else(|e| panic!("building {}: {what}: {e}", self.g.name))
    }

    pub fn out(&mut self, name: &str, v: ValueId) {
        self.g.set_output(name, v);
    }

    pub fn constant(&mut self, t: Tensor) -> ValueId {
        self.g.constant(t)
    }

    /// A dense weight holding `t`.
    pub fn weight(&mut self, name: &str, t: &Tensor) -> ValueId {
        self.g
            .add_weight(
                name,
                TensorType::fixed(&t.shape, t.dtype()),
                Some(WeightData::from_tensor(t, name)),
            )
            .unwrap_or_else(|e| panic!("weight {name}: {e}"))
    }

    /// A weight of any encoding from its canonical bytes.
    pub fn weight_enc(
        &mut self,
        name: &str,
        dims: &[usize],
        enc: Encoding,
        bytes: Vec<u8>,
    ) -> ValueId {
        let ty = TensorType {
            shape: Shape::fixed(dims),
            enc,
        };
        self.g
            .add_weight(
                name,
                ty,
                Some(WeightData::new(
                    Bytes::owned(bytes),
                    Format::Canonical,
                    name,
                )),
            )
            .unwrap_or_else(|e| panic!("weight {name}: {e}"))
    }

    pub fn finish(self) -> Graph {
        llmc_ir::verify(&self.g).unwrap_or_else(|e| panic!("{}: {e}", self.g.name));
        self.g
    }
}

fn scalar_f32(x: f32) -> Tensor {
    Tensor::scalar_f32(x)
}

// ---- encoded weights ----

/// Canonical bytes of a `[rows, cols]` block-quantized weight with random codes, scales
/// (either sign) and zero points.
pub fn quant_bytes(rng: &mut Rng, rows: usize, cols: usize, q: &QuantSpec) -> Vec<u8> {
    let levels = 1u64 << q.bits;
    let codes: Vec<u8> = (0..rows * cols)
        .map(|_| (rng.next_u64() % levels) as u8)
        .collect();
    let groups = q.group.count(rows as u64, cols as u64) as usize;
    let scales: Vec<f32> = (0..groups)
        .map(|_| {
            let s = rng.f32(0.005, 0.05);
            if rng.next_u64() & 1 == 0 {
                s
            } else {
                -s
            }
        })
        .collect();
    let zeros: Vec<f32> = (0..groups)
        .map(|_| match q.zero {
            Zero::Int => (rng.next_u64() % levels) as f32,
            Zero::Float => rng.f32(-0.2, 0.2),
            Zero::Symmetric => 0.0,
        })
        .collect();
    encode_quant(q, rows as u64, cols as u64, &codes, &scales, &zeros)
}

/// Canonical bytes of a palettized `[rows, cols]` weight with random indices and codebooks.
pub fn palette_bytes(rng: &mut Rng, rows: usize, cols: usize, p: &PaletteSpec) -> Vec<u8> {
    let entries = 1usize << p.bits;
    let mut out = vec![];
    for _ in 0..rows {
        let idx: Vec<u8> = (0..cols)
            .map(|_| (rng.next_u64() % entries as u64) as u8)
            .collect();
        out.extend(pack_codes(&idx, p.bits as u32));
    }
    let groups = p.group.count(rows as u64, cols as u64) as usize;
    let book = Data::F32(rng.vec_f32(groups * entries, -0.3, 0.3)).cast(p.entry);
    out.extend(book.to_le_bytes());
    out
}

/// Canonical bytes of a 2:4 sparse `[rows, cols]` weight whose kept values are `inner`.
pub fn sparse_bytes(rng: &mut Rng, rows: usize, cols: usize, inner: &Encoding) -> Vec<u8> {
    let half = cols / 2;
    let mut out = match inner {
        Encoding::Dense(d) => Data::F32(rng.vec_f32(rows * half, -0.3, 0.3))
            .cast(*d)
            .to_le_bytes(),
        Encoding::Quant(q) => quant_bytes(rng, rows, half, q),
        other => panic!("no 2:4 weights of {other}"),
    };
    for _ in 0..rows {
        let mut pos = vec![];
        for _ in 0..cols / 4 {
            let a = rng.int(0, 4) as u8;
            let mut b = rng.int(0, 3) as u8;
            if b >= a {
                b += 1;
            }
            pos.push(a.min(b));
            pos.push(a.max(b));
        }
        out.extend(pack_codes(&pos, 2));
    }
    out
}

/// Every block quantization the IR has for one bit width: the three group kinds by the three
/// zero kinds, the scale type rotating through f16, bf16 and f32.
pub fn quant_specs(bits: u8, group: u32) -> Vec<QuantSpec> {
    let mut v = vec![];
    let scales = [DType::F16, DType::BF16, DType::F32];
    let mut k = bits as usize;
    for g in [Group::Size(group), Group::Channel, Group::Tensor] {
        for zero in [Zero::Symmetric, Zero::Int, Zero::Float] {
            v.push(QuantSpec {
                bits,
                group: g,
                scale: scales[k % 3],
                zero,
            });
            k += 1;
        }
    }
    v
}

fn enc_name(e: &Encoding) -> String {
    e.to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

// ---- families ----

/// Unary ops on f32 over a general input, a positive one (log, sqrt, rsqrt, reciprocal) and
/// special values; with a transposed (strided) input; f16 and bf16; integer and bool ops.
pub fn unary() -> Vec<Case> {
    let mut rng = Rng::new(11);
    let mut cases = vec![];
    let positive = [
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Rsqrt,
        UnaryOp::Reciprocal,
    ];
    let exact = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Relu,
        UnaryOp::Floor,
        UnaryOp::Ceil,
        UnaryOp::Round,
        UnaryOp::Sign,
        UnaryOp::Sqrt,
        UnaryOp::Reciprocal,
    ];
    for (dt, shape) in [
        (DType::F32, vec![37usize]),
        (DType::F32, vec![]),
        (DType::F32, vec![2, 3, 5, 7]),
        (DType::F16, vec![3, 11]),
        (DType::BF16, vec![3, 11]),
    ] {
        let name = format!("unary_{dt}_{}", shape.len());
        let mut b = Gb::new(&name);
        let x = b.input("x", &shape, dt);
        let p = b.input("p", &shape, dt);
        let mut c_tols = vec![];
        for u in UnaryOp::ALL {
            if u == UnaryOp::Not {
                continue;
            }
            let src = if positive.contains(&u) { p } else { x };
            let y = b.op(Op::Unary(u), &[src]);
            b.out(u.name(), y);
            if exact.contains(&u) {
                c_tols.push((u.name(), EXACT));
            }
        }
        let mut c = Case::new(&name, b.finish(), TRANSCENDENTAL);
        for (n, t) in c_tols {
            c = c.tol_for(n, t);
        }
        let n: usize = shape.iter().product();
        let xs = Data::F32(rng.vec_f32(n, -6.0, 6.0)).cast(dt);
        let ps = Data::F32(rng.vec_f32(n, 0.001, 20.0)).cast(dt);
        c = c.run(vec![
            ("x", Tensor::new(shape.clone(), xs)),
            ("p", Tensor::new(shape.clone(), ps)),
        ]);
        // small magnitudes, where relative accuracy of tanh, erf, sin and log1p-like forms shows
        let xs = Data::F32(rng.vec_f32(n, -0.6, 0.6)).cast(dt);
        let ps = Data::F32(rng.vec_f32(n, 0.5, 2.0)).cast(dt);
        c = c.run(vec![
            ("x", Tensor::new(shape.clone(), xs)),
            ("p", Tensor::new(shape.clone(), ps)),
        ]);
        cases.push(c);
    }
    // special values through every op
    let specials = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        1e30,
        -1e30,
        88.0,
        89.0,
        -87.0,
        -104.0,
        20.5,
        -20.5,
        9.5,
        -9.5,
        0.5,
        -0.5,
        1.5,
        2.5,
        -2.5,
        1e-3,
        -1e-3,
        8388609.0,
        -8388609.0,
        1e7,
        100.0,
        -100.0,
        3.0e-5,
    ];
    let n = specials.len();
    // sin and cos reduce exactly below 2^28 only (and give NaN beyond)
    let trig: Vec<f32> = specials
        .iter()
        .map(|&v| {
            if v.abs() > 1e8 && v.is_finite() {
                2.5e8f32.copysign(v)
            } else {
                v
            }
        })
        .collect();
    let mut b = Gb::new("unary_special");
    let x = b.input("x", &[n], DType::F32);
    let xt = b.input("trig", &[n], DType::F32);
    for u in UnaryOp::ALL {
        if u == UnaryOp::Not {
            continue;
        }
        let src = if matches!(u, UnaryOp::Sin | UnaryOp::Cos) {
            xt
        } else {
            x
        };
        let y = b.op(Op::Unary(u), &[src]);
        b.out(u.name(), y);
    }
    let mut c = Case::new("unary_special", b.finish(), TRANSCENDENTAL).run(vec![
        ("x", Tensor::f32(vec![n], specials.to_vec())),
        ("trig", Tensor::f32(vec![n], trig)),
    ]);
    for u in exact {
        c = c.tol_for(u.name(), EXACT);
    }
    cases.push(c);
    // relative accuracy near zero, and trigonometry far from it
    let mut b = Gb::new("unary_small");
    let x = b.input("x", &[64], DType::F32);
    for u in [
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Sin,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Silu,
        UnaryOp::Exp,
    ] {
        let y = b.op(Op::Unary(u), &[x]);
        b.out(u.name(), y);
    }
    let big = b.input("big", &[64], DType::F32);
    for u in [UnaryOp::Sin, UnaryOp::Cos] {
        let y = b.op(Op::Unary(u), &[big]);
        b.out(&format!("{}_big", u.name()), y);
    }
    let mut tiny = rng.vec_f32(64, -0.05, 0.05);
    tiny[0] = 1e-4;
    tiny[1] = -3e-3;
    tiny[2] = 5e-6;
    cases.push(
        Case::new("unary_small", b.finish(), Tol::new(1e-12, 2e-6))
            .tol_for("sin_big", TRANSCENDENTAL)
            .tol_for("cos_big", TRANSCENDENTAL)
            .run(vec![
                ("x", Tensor::f32(vec![64], tiny)),
                ("big", Tensor::f32(vec![64], rng.vec_f32(64, -1e5, 1e5))),
            ]),
    );
    // a transposed input feeds the kernels through a copy
    let mut b = Gb::new("unary_strided");
    let x = b.input("x", &[6, 5], DType::F32);
    let t = b.op(Op::Transpose { perm: vec![1, 0] }, &[x]);
    for u in [UnaryOp::Exp, UnaryOp::Neg, UnaryOp::Tanh] {
        let y = b.op(Op::Unary(u), &[t]);
        b.out(u.name(), y);
    }
    cases.push(
        Case::new("unary_strided", b.finish(), TRANSCENDENTAL).random_run(&mut rng, -3.0, 3.0, &[]),
    );
    // integer ops, with the values at the ends of each type
    for dt in [DType::I64, DType::I32, DType::I8] {
        let name = format!("unary_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("x", &[9], dt);
        for u in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu, UnaryOp::Sign] {
            let y = b.op(Op::Unary(u), &[x]);
            b.out(u.name(), y);
        }
        let (lo, hi) = match dt {
            DType::I8 => (-128i64, 127),
            DType::I32 => (i32::MIN as i64, i32::MAX as i64),
            _ => (i64::MIN + 1, i64::MAX),
        };
        let v = Data::I64(vec![0, 1, -1, 5, -7, lo, hi, lo + 1, 100]).cast(dt);
        cases.push(Case::new(&name, b.finish(), EXACT).run(vec![("x", Tensor::new(vec![9], v))]));
    }
    let mut b = Gb::new("unary_not");
    let x = b.input("x", &[2, 7], DType::Bool);
    let y = b.op(Op::Unary(UnaryOp::Not), &[x]);
    b.out("not", y);
    cases.push(Case::new("unary_not", b.finish(), EXACT).random_run(&mut rng, 0.0, 1.0, &[]));
    cases
}

/// Broadcast patterns of two operands (both shapes, rank up to 6).
fn broadcast_patterns() -> Vec<(&'static str, Vec<usize>, Vec<usize>)> {
    vec![
        ("same", vec![3, 17], vec![3, 17]),
        ("scalar_b", vec![2, 3, 5], vec![]),
        ("scalar_a", vec![], vec![4, 5]),
        ("trailing", vec![2, 3, 7], vec![7]),
        ("middle", vec![2, 3, 7], vec![3, 1]),
        ("leading", vec![2, 3, 7], vec![2, 1, 1]),
        ("outer", vec![5, 1], vec![1, 6]),
        ("rank5", vec![2, 3, 1, 4, 5], vec![2, 1, 3, 1, 5]),
        ("rank6", vec![2, 1, 3, 2, 1, 3], vec![1, 2, 1, 2, 4, 1]),
        ("rank6_full", vec![2, 2, 2, 3, 2, 3], vec![2, 2, 2, 3, 2, 3]),
    ]
}

/// Every binary op over the broadcast patterns; f16, bf16 and the integer types; strided
/// operands (transposed, sliced with a step, expanded).
pub fn binary() -> Vec<Case> {
    let mut rng = Rng::new(12);
    let mut cases = vec![];
    let arith = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Mod,
    ];
    let cmp = [
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::LessEqual,
        BinaryOp::Greater,
        BinaryOp::GreaterEqual,
    ];
    for (pat, sa, sb) in broadcast_patterns() {
        let name = format!("binary_f32_{pat}");
        let mut b = Gb::new(&name);
        let x = b.input("a", &sa, DType::F32);
        let y = b.input("b", &sb, DType::F32);
        for op in arith.iter().chain(&cmp) {
            let z = b.op(Op::Binary(*op), &[x, y]);
            b.out(op.name(), z);
        }
        let mut c = Case::new(&name, b.finish(), EXACT)
            .tol_for("pow", POW)
            .tol_for("mod", F32)
            .random_run(&mut rng, -4.0, 4.0, &[]);
        // equal values, so that equal and the non-strict comparisons see ties
        let a = rng.tensor(&sa, DType::F32, -2.0, 2.0).to_f32_vec();
        let nb: usize = sb.iter().product();
        let bv: Vec<f32> = (0..nb)
            .map(|i| a.get(i).copied().unwrap_or(1.0).round())
            .collect();
        let av: Vec<f32> = a.iter().map(|v| v.round()).collect();
        c = c.run(vec![
            ("a", Tensor::f32(sa.clone(), av)),
            ("b", Tensor::f32(sb.clone(), bv)),
        ]);
        cases.push(c);
    }
    // fmod near integer quotients, pow with integer and special exponents
    let mut b = Gb::new("binary_f32_special");
    let x = b.input("a", &[12], DType::F32);
    let y = b.input("b", &[12], DType::F32);
    for op in [
        BinaryOp::Mod,
        BinaryOp::Pow,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
    ] {
        let z = b.op(Op::Binary(op), &[x, y]);
        b.out(op.name(), z);
    }
    cases.push(
        Case::new("binary_f32_special", b.finish(), EXACT)
            .tol_for("pow", POW)
            .tol_for("mod", Tol::new(1e-6, 1e-6))
            .run(vec![
                (
                    "a",
                    Tensor::f32(
                        vec![12],
                        vec![
                            6.0,
                            -6.0,
                            1.0,
                            5.3,
                            0.0,
                            -2.0,
                            -2.0,
                            2.0,
                            0.0,
                            7.0,
                            1e6,
                            f32::NAN,
                        ],
                    ),
                ),
                (
                    "b",
                    Tensor::f32(
                        vec![12],
                        vec![0.1, 0.1, 0.1, 0.7, 2.0, 3.0, 0.5, -1.0, -1.0, 0.0, 3.0, 2.0],
                    ),
                ),
            ]),
    );
    for dt in [DType::F16, DType::BF16] {
        let name = format!("binary_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("a", &[3, 9], dt);
        let y = b.input("b", &[9], dt);
        for op in arith.iter().chain(&cmp) {
            let z = b.op(Op::Binary(*op), &[x, y]);
            b.out(op.name(), z);
        }
        cases.push(
            Case::new(&name, b.finish(), EXACT)
                .tol_for("pow", POW)
                .tol_for("mod", F32)
                .random_run(&mut rng, 0.25, 4.0, &[]),
        );
    }
    for dt in [DType::I64, DType::I32, DType::I8, DType::U8] {
        let name = format!("binary_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("a", &[4, 6], dt);
        let y = b.input("b", &[6], dt);
        for op in arith.iter().chain(&cmp) {
            let z = b.op(Op::Binary(*op), &[x, y]);
            b.out(op.name(), z);
        }
        let signed = dt != DType::U8;
        let a: Vec<i64> = (0..24)
            .map(|_| rng.int(if signed { -100 } else { 0 }, 120))
            .collect();
        let bv: Vec<i64> = vec![3, -7, 1, 5, -1, 4]
            .into_iter()
            .map(|v: i64| if signed { v } else { v.abs() + 1 })
            .collect();
        let mut c = Case::new(&name, b.finish(), EXACT).run(vec![
            ("a", Tensor::new(vec![4, 6], Data::I64(a).cast(dt))),
            ("b", Tensor::new(vec![6], Data::I64(bv).cast(dt))),
        ]);
        // pow with small bases and exponents (no zero divisor: the interpreter fails on those
        // where the backend gives 0)
        let a: Vec<i64> = (0..24)
            .map(|_| rng.int(if signed { -5 } else { 0 }, 6))
            .collect();
        let bv: Vec<i64> = vec![6, 1, 2, 3, 4, 5];
        c = c.run(vec![
            ("a", Tensor::new(vec![4, 6], Data::I64(a).cast(dt))),
            ("b", Tensor::new(vec![6], Data::I64(bv).cast(dt))),
        ]);
        cases.push(c);
    }
    let mut b = Gb::new("binary_bool");
    let x = b.input("a", &[3, 1, 4], DType::Bool);
    let y = b.input("b", &[5, 1], DType::Bool);
    for op in [
        BinaryOp::And,
        BinaryOp::Or,
        BinaryOp::Xor,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::GreaterEqual,
    ] {
        let z = b.op(Op::Binary(op), &[x, y]);
        b.out(op.name(), z);
    }
    cases.push(Case::new("binary_bool", b.finish(), EXACT).random_run(&mut rng, 0.0, 1.0, &[]));
    // strided operands: a transpose, a slice with a step, an expand
    let mut b = Gb::new("binary_strided");
    let x = b.input("a", &[5, 4], DType::F32);
    let y = b.input("b", &[4, 10], DType::F32);
    let z = b.input("c", &[1, 5], DType::F32);
    let xt = b.op(Op::Transpose { perm: vec![1, 0] }, &[x]);
    let ys = b.op(
        Op::Slice {
            spec: Some(SliceSpec {
                starts: vec![9],
                ends: vec![i64::MIN],
                axes: vec![1],
                steps: vec![-2],
            }),
        },
        &[y],
    );
    let ze = b.op(
        Op::Expand {
            shape: Some(vec![4, 5]),
        },
        &[z],
    );
    let s1 = b.op(Op::Binary(BinaryOp::Sub), &[xt, ys]);
    let s2 = b.op(Op::Binary(BinaryOp::Mul), &[ze, xt]);
    let s3 = b.op(Op::Binary(BinaryOp::Add), &[ys, ze]);
    b.out("sub", s1);
    b.out("mul", s2);
    b.out("add", s3);
    cases.push(Case::new("binary_strided", b.finish(), EXACT).random_run(&mut rng, -3.0, 3.0, &[]));
    cases
}

/// `where` over broadcast patterns for f32, i64, bool and f16 branches.
pub fn where_() -> Vec<Case> {
    let mut rng = Rng::new(13);
    let mut cases = vec![];
    for (dt, sc, sa, sb) in [
        (DType::F32, vec![3, 5], vec![3, 5], vec![3, 5]),
        (DType::F32, vec![3, 1], vec![1, 5], vec![]),
        (DType::I64, vec![2, 1, 4], vec![3, 1], vec![2, 3, 4]),
        (DType::Bool, vec![6], vec![2, 6], vec![1]),
        (
            DType::F16,
            vec![2, 3, 1, 2, 1],
            vec![2, 1, 4, 1, 3],
            vec![3],
        ),
    ] {
        let name = format!("where_{dt}_{}", sc.len() + sa.len() + sb.len());
        let mut b = Gb::new(&name);
        let c = b.input("c", &sc, DType::Bool);
        let x = b.input("a", &sa, dt);
        let y = b.input("b", &sb, dt);
        let z = b.op(Op::Where, &[c, x, y]);
        b.out("where", z);
        cases.push(Case::new(&name, b.finish(), EXACT).random_run(&mut rng, -50.0, 50.0, &[]));
    }
    cases
}

/// Casts between every pair of element types, with fractions, negatives, values out of each
/// narrow type's range, and (for floats) infinities and NaN.
pub fn cast() -> Vec<Case> {
    let mut cases = vec![];
    let floats = vec![
        0.0f32,
        -0.0,
        1.5,
        -1.5,
        2.7,
        -2.7,
        127.9,
        128.5,
        -128.5,
        255.9,
        256.0,
        -1.0,
        300.7,
        -300.7,
        65504.0,
        70000.0,
        3e9,
        -3e9,
        1e30,
        -1e30,
        1e-6,
        6e-8,
        1.0009766,
        std::f32::consts::PI,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ];
    let ints = vec![
        0i64,
        1,
        -1,
        127,
        128,
        -128,
        -129,
        255,
        256,
        300,
        -300,
        65535,
        65536,
        2147483647,
        2147483648,
        -2147483649,
        16777217,
        -5,
        42,
    ];
    for from in DType::ALL {
        let name = format!("cast_from_{from}");
        let mut b = Gb::new(&name);
        let (data, n) = if from.is_float() {
            (Data::F32(floats.clone()).cast(from), floats.len())
        } else if from == DType::Bool {
            (Data::Bool(vec![true, false, true]), 3)
        } else {
            (Data::I64(ints.clone()).cast(from), ints.len())
        };
        let x = b.input("x", &[n], from);
        for to in DType::ALL {
            let y = b.op(Op::Cast { to }, &[x]);
            b.out(to.name(), y);
        }
        cases
            .push(Case::new(&name, b.finish(), EXACT).run(vec![("x", Tensor::new(vec![n], data))]));
    }
    cases
}

/// Clip with either, both or no bound, on f32 (with NaN), f16, i64 and u8 (fractional bounds),
/// and with min above max.
pub fn clip() -> Vec<Case> {
    let mut rng = Rng::new(14);
    let mut cases = vec![];
    for dt in [DType::F32, DType::F16, DType::I64, DType::U8, DType::I32] {
        let name = format!("clip_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("x", &[4, 9], dt);
        for (n, min, max) in [
            ("both", Some(-1.5f32), Some(2.5f32)),
            ("min", Some(0.5), None),
            ("max", None, Some(-0.5)),
            ("none", None, None),
            ("crossed", Some(3.0), Some(-2.0)),
        ] {
            let y = b.op(Op::Clip { min, max }, &[x]);
            b.out(n, y);
        }
        let lo = if dt == DType::U8 { 0.0 } else { -5.0 };
        let mut c = Case::new(&name, b.finish(), EXACT).random_run(&mut rng, lo, 5.0, &[]);
        if dt == DType::F32 {
            let mut v = rng.vec_f32(36, -5.0, 5.0);
            v[3] = f32::NAN;
            v[7] = f32::INFINITY;
            v[8] = f32::NEG_INFINITY;
            c = c.run(vec![("x", Tensor::f32(vec![4, 9], v))]);
        }
        cases.push(c);
    }
    cases
}

/// Numpy matmul: plain, batched, broadcast batches, 1-D operands, transposed operands, f16
/// operands, and weights (dense f32, f16, and an encoded one decoded to f32) as `b`.
pub fn matmul() -> Vec<Case> {
    let mut rng = Rng::new(15);
    let mut cases = vec![];
    for (n, sa, sb) in [
        ("2d", vec![5, 7], vec![7, 9]),
        ("batched", vec![3, 4, 6], vec![3, 6, 5]),
        ("bcast_b", vec![2, 3, 4, 6], vec![6, 5]),
        ("bcast_a", vec![1, 4, 6], vec![3, 6, 5]),
        ("bcast_both", vec![2, 1, 4, 6], vec![3, 6, 5]),
        ("vec_mat", vec![6], vec![2, 6, 5]),
        ("mat_vec", vec![2, 4, 6], vec![6]),
        ("vec_vec", vec![17], vec![17]),
        ("long_k", vec![2, 130], vec![130, 3]),
    ] {
        let name = format!("matmul_{n}");
        let mut b = Gb::new(&name);
        let x = b.input("a", &sa, DType::F32);
        let y = b.input("b", &sb, DType::F32);
        let z = b.op(Op::MatMul, &[x, y]);
        b.out("y", z);
        cases.push(Case::new(&name, b.finish(), F32).random_run(&mut rng, -1.0, 1.0, &[]));
    }
    // transposed operands: k of attention scores as q · kᵀ
    let mut b = Gb::new("matmul_strided");
    let x = b.input("a", &[2, 5, 3, 4], DType::F32);
    let y = b.input("b", &[2, 7, 3, 4], DType::F32);
    let xt = b.op(
        Op::Transpose {
            perm: vec![0, 2, 1, 3],
        },
        &[x],
    );
    let yt = b.op(
        Op::Transpose {
            perm: vec![0, 2, 3, 1],
        },
        &[y],
    );
    let z = b.op(Op::MatMul, &[xt, yt]);
    b.out("y", z);
    cases.push(Case::new("matmul_strided", b.finish(), F32).random_run(&mut rng, -1.0, 1.0, &[]));
    // half operands give a half result
    for dt in [DType::F16, DType::BF16] {
        let name = format!("matmul_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("a", &[3, 8], dt);
        let y = b.input("b", &[8, 5], dt);
        let z = b.op(Op::MatMul, &[x, y]);
        b.out("y", z);
        cases.push(Case::new(&name, b.finish(), F32).random_run(&mut rng, -1.0, 1.0, &[]));
    }
    // weights as the right operand
    let mut b = Gb::new("matmul_weights");
    let x = b.input("a", &[3, 32], DType::F32);
    let w32 = b.weight("w32", &rng.tensor(&[32, 6], DType::F32, -1.0, 1.0));
    let w16 = b.weight("w16", &rng.tensor(&[32, 6], DType::F16, -1.0, 1.0));
    let q = QuantSpec {
        bits: 4,
        group: Group::Channel,
        scale: DType::F16,
        zero: Zero::Int,
    };
    let wq = b.weight_enc(
        "wq",
        &[32, 6],
        Encoding::Quant(q),
        quant_bytes(&mut rng, 32, 6, &q),
    );
    let x16 = b.op(Op::Cast { to: DType::F16 }, &[x]);
    let z = b.op(Op::MatMul, &[x, w32]);
    b.out("f32", z);
    let z = b.op(Op::MatMul, &[x16, w16]);
    b.out("f16", z);
    let z = b.op(Op::MatMul, &[x, wq]);
    b.out("quant", z);
    cases.push(Case::new("matmul_weights", b.finish(), F32).random_run(&mut rng, -1.0, 1.0, &[]));
    cases
}

/// A linear case over weight encodings: each with a bias on a rank-3 input of 15 rows (19
/// output columns: past one block of 16), the first also without a bias on a transposed
/// (strided) input of 5 rows.
fn linear_case(
    rng: &mut Rng,
    name: &str,
    encs: &[(Encoding, Vec<u8>)],
    n: usize,
    k: usize,
    act: ActQuant,
    tol: Tol,
) -> Case {
    let mut b = Gb::new(name);
    let x = b.input("x", &[3, 5, k], DType::F32);
    let xs = b.input("xs", &[k, 5], DType::F32);
    let xt = b.op(Op::Transpose { perm: vec![1, 0] }, &[xs]);
    let bias = b.weight("bias", &rng.tensor(&[n], DType::F32, -1.0, 1.0));
    for (i, (enc, bytes)) in encs.iter().enumerate() {
        let wn = format!("w{i}_{}", enc_name(enc));
        let w = b.weight_enc(&wn, &[n, k], enc.clone(), bytes.clone());
        let y = b.op(Op::Linear { act }, &[x, w, bias]);
        b.out(&wn, y);
        if i == 0 {
            let y = b.op(Op::Linear { act }, &[xt, w]);
            b.out(&format!("{wn}_strided"), y);
        }
    }
    Case::new(name, b.finish(), tol).random_run(rng, -1.0, 1.0, &[])
}

/// The block quantizations of one bit width that a family checks: all nine group and zero
/// kinds (`full`), or three where every group kind and every zero kind appears once (the group
/// kind rotating with the bit width, so that over all widths each pair occurs).
fn linear_specs(bits: u8, full: bool) -> Vec<QuantSpec> {
    let all = quant_specs(bits, 32);
    if full {
        return all;
    }
    (0..3)
        .map(|z| all[((bits as usize + z) % 3) * 3 + z])
        .collect()
}

/// Linear layers over every weight encoding the IR has: dense f32/f16/bf16, block
/// quantizations (bits 2–8, g32/pc/pt, sym/asym/min, scales f16/bf16/f32: every combination
/// with `full`, else all nine for 4 and 8 bits and three per other width, see
/// [`linear_specs`]), palettes (bits 1–8) and 2:4 sparse (dense and quantized values).
pub fn linear(act: ActQuant, full: bool) -> Vec<Case> {
    let mut rng = Rng::new(16 + act as u64);
    let mut cases = vec![];
    // One step of i8 activation rounding may fall the other way when the kernel forms x·(127/max)
    // differently: allow a few such steps of (max|x|/127)·max|w| per output.
    let tol = match act {
        ActQuant::None => F32,
        ActQuant::I8PerToken => Tol::new(2e-3, 1e-4),
    };
    let suffix = match act {
        ActQuant::None => "",
        ActQuant::I8PerToken => "_a8",
    };
    let (n, k) = (19, 64);
    let dense: Vec<(Encoding, Vec<u8>)> = [DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .map(|d| {
            let t = rng.tensor(&[n, k], d, -0.3, 0.3);
            (Encoding::Dense(d), t.data.to_le_bytes())
        })
        .collect();
    cases.push(linear_case(
        &mut rng,
        &format!("linear_dense{suffix}"),
        &dense,
        n,
        k,
        act,
        tol,
    ));
    let groups: Vec<(String, Vec<u8>)> = if full {
        (2..=8).map(|b| (format!("q{b}"), vec![b])).collect()
    } else {
        vec![
            ("q4".into(), vec![4]),
            ("q8".into(), vec![8]),
            ("q_other".into(), vec![2, 3, 5, 6, 7]),
        ]
    };
    for (gname, widths) in groups {
        let encs: Vec<(Encoding, Vec<u8>)> = widths
            .iter()
            .flat_map(|&bits| linear_specs(bits, full || bits == 4 || bits == 8))
            .map(|q| (Encoding::Quant(q), quant_bytes(&mut rng, n, k, &q)))
            .collect();
        cases.push(linear_case(
            &mut rng,
            &format!("linear_{gname}{suffix}"),
            &encs,
            n,
            k,
            act,
            tol,
        ));
    }
    // odd group sizes and rows whose codes straddle bytes: K = 96 in groups of 16 and 96;
    // panel kernels with groups that are no power of two (48, 96: CALDERA's 192 on rows of 576)
    let mut encs = vec![];
    for (bits, g, zero) in [
        (3u8, 16u32, Zero::Float),
        (5, 96, Zero::Float),
        (6, 16, Zero::Float),
        (7, 32, Zero::Float),
        (4, 48, Zero::Int),
        (8, 96, Zero::Int),
    ] {
        let q = QuantSpec {
            bits,
            group: Group::Size(g),
            scale: DType::F16,
            zero,
        };
        encs.push((Encoding::Quant(q), quant_bytes(&mut rng, 7, 96, &q)));
    }
    cases.push(linear_case(
        &mut rng,
        &format!("linear_groups{suffix}"),
        &encs,
        7,
        96,
        act,
        tol,
    ));
    let mut encs = vec![];
    for bits in 1..=8u8 {
        let p = PaletteSpec {
            bits,
            group: [Group::Tensor, Group::Channel, Group::Size(32)][bits as usize % 3],
            entry: [DType::F16, DType::F32, DType::BF16][bits as usize % 3],
        };
        encs.push((Encoding::Palette(p), palette_bytes(&mut rng, n, k, &p)));
    }
    // 4-bit palettes with one codebook per panel take the lookup kernel
    for (group, entry) in [
        (Group::Tensor, DType::F16),
        (Group::Rows(16), DType::F32),
        (Group::Rows(32), DType::BF16),
    ] {
        let p = PaletteSpec {
            bits: 4,
            group,
            entry,
        };
        encs.push((Encoding::Palette(p), palette_bytes(&mut rng, n, k, &p)));
    }
    cases.push(linear_case(
        &mut rng,
        &format!("linear_palette{suffix}"),
        &encs,
        n,
        k,
        act,
        tol,
    ));
    let mut encs = vec![];
    for inner in [
        Encoding::Dense(DType::F32),
        Encoding::Dense(DType::F16),
        Encoding::Quant(QuantSpec {
            bits: 4,
            group: Group::Size(32),
            scale: DType::F16,
            zero: Zero::Symmetric,
        }),
        Encoding::Quant(QuantSpec {
            bits: 8,
            group: Group::Channel,
            scale: DType::F32,
            zero: Zero::Int,
        }),
        Encoding::Dense(DType::BF16),
        Encoding::Quant(QuantSpec {
            bits: 4,
            group: Group::Size(16),
            scale: DType::BF16,
            zero: Zero::Float,
        }),
    ] {
        let bytes = sparse_bytes(&mut rng, n, k, &inner);
        encs.push((Encoding::Sparse24(Box::new(inner)), bytes));
    }
    cases.push(linear_case(
        &mut rng,
        &format!("linear_sparse{suffix}"),
        &encs,
        n,
        k,
        act,
        tol,
    ));
    cases.push(linear_tied(&mut rng, act, tol, suffix));
    // a half input gives a half output; one row; a graph input of symbolic rows
    let mut b = Gb::new(&format!("linear_misc{suffix}"));
    let x = b.input("x", &[4, k], DType::F16);
    let r = b.input("r", &[k], DType::F32);
    let s = b.input_sym(
        "s",
        vec![Dim::sym("rows"), Dim::Fixed(k as u64)],
        DType::F32,
    );
    let w = b.weight("w", &rng.tensor(&[n, k], DType::F32, -0.3, 0.3));
    let y = b.op(Op::Linear { act }, &[x, w]);
    b.out("half", y);
    let y = b.op(Op::Linear { act }, &[r, w]);
    b.out("one_row", y);
    let y = b.op(Op::Linear { act }, &[s, w]);
    b.out("sym_rows", y);
    let c = Case::new(&format!("linear_misc{suffix}"), b.finish(), tol)
        .max_dim("rows", 9)
        .random_run(&mut rng, -1.0, 1.0, &[("rows", 9)])
        .random_run(&mut rng, -1.0, 1.0, &[("rows", 1)])
        .random_run(&mut rng, -1.0, 1.0, &[("rows", 4)]);
    // a row of zeros stays zero under i8 quantization
    let zero_run = vec![
        ("x", Tensor::zeros(vec![4, k], DType::F16)),
        ("r", Tensor::zeros(vec![k], DType::F32)),
        ("s", Tensor::zeros(vec![2, k], DType::F32)),
    ];
    cases.push(c.run(zero_run));
    cases
}

/// Quantized tables that a linear layer and a gather both read (a tied embedding): the gather
/// reads rows out of the linear kernel's panels, every layout and zero kind, rows in the padded
/// last panel included.
pub fn tied_quant_specs() -> Vec<QuantSpec> {
    let q = |bits, group, scale, zero| QuantSpec {
        bits,
        group,
        scale,
        zero,
    };
    vec![
        q(4, Group::Size(32), DType::F16, Zero::Symmetric),
        q(4, Group::Size(16), DType::BF16, Zero::Float),
        q(8, Group::Channel, DType::F32, Zero::Int),
        q(8, Group::Size(32), DType::F16, Zero::Symmetric),
        q(4, Group::Channel, DType::F16, Zero::Int),
    ]
}

fn linear_tied(rng: &mut Rng, act: ActQuant, tol: Tol, suffix: &str) -> Case {
    let (n, k) = (19, 64);
    let name = format!("linear_tied{suffix}");
    let mut b = Gb::new(&name);
    let x = b.input("x", &[3, k], DType::F32);
    let ids = b.input("ids", &[6], DType::I64);
    let mut rows = vec![];
    for (i, q) in tied_quant_specs().into_iter().enumerate() {
        let w = b.weight_enc(
            &format!("w{i}"),
            &[n, k],
            Encoding::Quant(q),
            quant_bytes(rng, n, k, &q),
        );
        let y = b.op(Op::Linear { act }, &[x, w]);
        b.out(&format!("y{i}"), y);
        let r = b.op(Op::Gather { axis: 0 }, &[w, ids]);
        b.out(&format!("rows{i}"), r);
        rows.push(format!("rows{i}"));
    }
    let mut c = Case::new(&name, b.finish(), tol)
        .run(vec![
            ("x", rng.tensor(&[3, k], DType::F32, -1.0, 1.0)),
            ("ids", Tensor::i64(vec![6], vec![0, 18, 16, 15, 7, -1])),
        ])
        .run(vec![
            ("x", rng.tensor(&[3, k], DType::F32, -1.0, 1.0)),
            ("ids", Tensor::i64(vec![6], vec![3, 17, 1, -19, 12, 9])),
        ]);
    // decoding may fuse `s·q + m` into one rounding where the interpreter rounds twice
    for r in rows {
        c = c.tol_for(&r, Tol::new(1e-7, 2.5e-7));
    }
    c
}

/// Gathers: rows of dense f32/f16/bf16 weights (kept in their type), of every quantized
/// encoding, palette and 2:4 tables (decoded), of computed tables on every axis, with i64 and
/// i32, negative, scalar and 2-D indices; out-of-range indices give the error status.
pub fn gather() -> Vec<Case> {
    let mut rng = Rng::new(17);
    let mut cases = vec![];
    let (rows, cols) = (11usize, 64usize);
    let idx_vals = vec![0i64, 10, 3, -1, 5, 5, -11, 7];
    let mut b = Gb::new("gather_weights");
    let ids = b.input("ids", &[2, 4], DType::I64);
    let ids32 = b.input("ids32", &[3], DType::I32);
    let one = b.input("one", &[], DType::I64);
    for d in [DType::F32, DType::F16, DType::BF16] {
        let w = b.weight(&format!("t_{d}"), &rng.tensor(&[rows, cols], d, -1.0, 1.0));
        let y = b.op(Op::Gather { axis: 0 }, &[w, ids]);
        b.out(&format!("dense_{d}"), y);
        let y = b.op(Op::Gather { axis: 0 }, &[w, ids32]);
        b.out(&format!("dense_{d}_i32"), y);
        let y = b.op(Op::Gather { axis: 0 }, &[w, one]);
        b.out(&format!("dense_{d}_scalar"), y);
    }
    // a dense weight gathered along its columns
    let w = b.weight("t_cols", &rng.tensor(&[4, cols], DType::F32, -1.0, 1.0));
    let y = b.op(Op::Gather { axis: 1 }, &[w, ids]);
    b.out("dense_axis1", y);
    let mut names = vec![];
    for bits in 2..=8u8 {
        for q in quant_specs(bits, 32) {
            let enc = Encoding::Quant(q);
            let wn = format!("q_{}", enc_name(&enc));
            let w = b.weight_enc(
                &wn,
                &[rows, cols],
                enc,
                quant_bytes(&mut rng, rows, cols, &q),
            );
            let y = b.op(Op::Gather { axis: 0 }, &[w, ids]);
            b.out(&wn, y);
            names.push(wn);
        }
    }
    let p = PaletteSpec {
        bits: 3,
        group: Group::Channel,
        entry: DType::F16,
    };
    let w = b.weight_enc(
        "pal",
        &[rows, cols],
        Encoding::Palette(p),
        palette_bytes(&mut rng, rows, cols, &p),
    );
    let y = b.op(Op::Gather { axis: 0 }, &[w, ids]);
    b.out("palette", y);
    let inner = Encoding::Dense(DType::F32);
    let bytes = sparse_bytes(&mut rng, rows, cols, &inner);
    let w = b.weight_enc(
        "sp",
        &[rows, cols],
        Encoding::Sparse24(Box::new(inner)),
        bytes,
    );
    let y = b.op(Op::Gather { axis: 0 }, &[w, ids32]);
    b.out("sparse", y);
    let good = vec![
        ("ids", Tensor::i64(vec![2, 4], idx_vals.clone())),
        ("ids32", Tensor::new(vec![3], Data::I32(vec![2, -3, 0]))),
        ("one", Tensor::scalar_i64(4)),
    ];
    let bad_neg = vec![
        (
            "ids",
            Tensor::i64(vec![2, 4], vec![0, 1, 2, -12, 4, 5, 6, 7]),
        ),
        ("ids32", Tensor::new(vec![3], Data::I32(vec![2, -3, 0]))),
        ("one", Tensor::scalar_i64(4)),
    ];
    let bad_pos = vec![
        ("ids", Tensor::i64(vec![2, 4], idx_vals.clone())),
        ("ids32", Tensor::new(vec![3], Data::I32(vec![2, 11, 0]))),
        ("one", Tensor::scalar_i64(4)),
    ];
    let bad_scalar = vec![
        ("ids", Tensor::i64(vec![2, 4], idx_vals.clone())),
        ("ids32", Tensor::new(vec![3], Data::I32(vec![2, -3, 0]))),
        ("one", Tensor::scalar_i64(1 << 40)),
    ];
    let mut c = Case::new("gather_weights", b.finish(), EXACT)
        .run(good)
        .run(bad_neg)
        .run(bad_pos)
        .run(bad_scalar);
    // decoding may fuse `s·q + m` into one rounding where the interpreter rounds twice
    for n in names {
        c = c.tol_for(&n, Tol::new(1e-7, 2.5e-7));
    }
    cases.push(c);
    // computed tables of every type, on every axis
    for (dt, shape) in [
        (DType::F32, vec![5, 6, 7]),
        (DType::I64, vec![4, 9]),
        (DType::Bool, vec![3, 4, 2]),
        (DType::F16, vec![6, 3]),
        (DType::I8, vec![7]),
    ] {
        let name = format!("gather_computed_{dt}");
        let mut b = Gb::new(&name);
        let t = b.input("t", &shape, dt);
        let ids = b.input("ids", &[2, 2], DType::I64);
        for ax in 0..shape.len() as i64 {
            let y = b.op(Op::Gather { axis: ax }, &[t, ids]);
            b.out(&format!("axis{ax}"), y);
        }
        // a transposed table is gathered through a copy
        if shape.len() >= 2 {
            let tt = b.op(Op::Transpose { perm: vec![] }, &[t]);
            let y = b.op(Op::Gather { axis: -1 }, &[tt, ids]);
            b.out("transposed", y);
        }
        let min = *shape.iter().min().unwrap() as i64;
        let mut c = Case::new(&name, b.finish(), EXACT);
        let tv = rng.tensor(&shape, dt, -9.0, 9.0);
        let iv = Tensor::i64(vec![2, 2], vec![0, min - 1, -1, -min]);
        c = c.run(vec![("t", tv.clone()), ("ids", iv)]);
        c = c.run(vec![
            ("t", tv),
            ("ids", Tensor::i64(vec![2, 2], vec![0, 1, min, 0])),
        ]);
        cases.push(c);
    }
    cases
}

/// Softmax and log-softmax over the last, first and a middle axis, strided input, f16, large
/// and -inf entries, symbolic rows.
pub fn softmax() -> Vec<Case> {
    let mut rng = Rng::new(18);
    let mut cases = vec![];
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let name = format!("softmax_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("x", &[3, 5, 7], dt);
        for ax in [-1i64, 0, 1] {
            let y = b.op(Op::Softmax { axis: ax }, &[x]);
            b.out(&format!("softmax{ax}"), y);
            let y = b.op(Op::LogSoftmax { axis: ax }, &[x]);
            b.out(&format!("log_softmax{ax}"), y);
        }
        let xt = b.op(
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            &[x],
        );
        let y = b.op(Op::Softmax { axis: -1 }, &[xt]);
        b.out("strided", y);
        let mut c = Case::new(&name, b.finish(), F32).random_run(&mut rng, -8.0, 8.0, &[]);
        if dt == DType::F32 {
            let mut v = rng.vec_f32(105, -8.0, 8.0);
            v[0] = 80.0;
            v[1] = f32::NEG_INFINITY;
            v[9] = -1e30;
            v[20] = 1e4;
            c = c.run(vec![("x", Tensor::f32(vec![3, 5, 7], v))]);
        }
        cases.push(c);
    }
    let mut b = Gb::new("softmax_sym");
    let x = b.input_sym(
        "x",
        vec![Dim::sym("n"), Dim::Fixed(2), Dim::sym("m")],
        DType::F32,
    );
    let y = b.op(Op::Softmax { axis: -1 }, &[x]);
    b.out("last", y);
    let y = b.op(Op::LogSoftmax { axis: 0 }, &[x]);
    b.out("first", y);
    cases.push(
        Case::new("softmax_sym", b.finish(), F32)
            .max_dim("n", 6)
            .max_dim("m", 40)
            .random_run(&mut rng, -5.0, 5.0, &[("n", 6), ("m", 33)])
            .random_run(&mut rng, -5.0, 5.0, &[("n", 1), ("m", 1)])
            .random_run(&mut rng, -5.0, 5.0, &[("n", 3), ("m", 40)])
            .random_run(&mut rng, -5.0, 5.0, &[("n", 0), ("m", 4)]),
    );
    cases
}

/// Layer and RMS norms over the last axis and over two axes, with weight and computed scales
/// and biases (broadcast), strided and f16 inputs.
pub fn norms() -> Vec<Case> {
    let mut rng = Rng::new(19);
    let mut cases = vec![];
    for dt in [DType::F32, DType::F16] {
        let name = format!("norm_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("x", &[2, 3, 4, 24], dt);
        let sc = b.input("scale", &[4, 24], dt);
        let bi = b.input("bias", &[24], dt);
        let ws = b.weight("ws", &rng.tensor(&[24], dt, 0.5, 1.5));
        let wb = b.weight("wb", &rng.tensor(&[24], dt, -0.5, 0.5));
        let w2 = b.weight("w2", &rng.tensor(&[4, 1], dt, 0.5, 1.5));
        let xt = b.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[x],
        );
        let ops: Vec<(&str, Op, Vec<ValueId>)> = vec![
            (
                "ln_last_w",
                Op::LayerNorm {
                    axis: -1,
                    eps: 1e-5,
                },
                vec![x, ws, wb],
            ),
            (
                "ln_last_noskip",
                Op::LayerNorm {
                    axis: -1,
                    eps: 1e-3,
                },
                vec![x, ws],
            ),
            (
                "ln_two_axes",
                Op::LayerNorm { axis: 2, eps: 1e-5 },
                vec![x, sc, bi],
            ),
            (
                "ln_two_axes_w",
                Op::LayerNorm {
                    axis: -2,
                    eps: 1e-5,
                },
                vec![x, ws, wb],
            ),
            (
                "ln_bcast_inner",
                Op::LayerNorm {
                    axis: -2,
                    eps: 1e-5,
                },
                vec![x, w2],
            ),
            (
                "rms_last",
                Op::RmsNorm {
                    axis: -1,
                    eps: 1e-6,
                },
                vec![x, ws],
            ),
            (
                "rms_computed",
                Op::RmsNorm { axis: 3, eps: 1e-6 },
                vec![x, bi],
            ),
            (
                "rms_two_axes",
                Op::RmsNorm {
                    axis: -2,
                    eps: 1e-6,
                },
                vec![x, sc],
            ),
            (
                "rms_strided",
                Op::RmsNorm {
                    axis: -1,
                    eps: 1e-6,
                },
                vec![xt, ws],
            ),
            (
                "ln_strided",
                Op::LayerNorm {
                    axis: -1,
                    eps: 1e-6,
                },
                vec![xt, ws, bi],
            ),
        ];
        for (n, op, ins) in ops {
            let y = b.op(op, &ins);
            b.out(n, y);
        }
        cases.push(Case::new(&name, b.finish(), F32).random_run(&mut rng, -2.0, 3.0, &[]));
    }
    cases
}

/// Every reduction over no axis (all), one, two and negative axes, with and without keepdims,
/// on f32, f16, i64 and i32; argmax on every axis with ties.
pub fn reduce() -> Vec<Case> {
    let mut rng = Rng::new(20);
    let mut cases = vec![];
    for dt in [DType::F32, DType::F16, DType::I64, DType::I32] {
        let name = format!("reduce_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("x", &[3, 4, 5], dt);
        for kind in ReduceKind::ALL {
            if !dt.is_float() && kind == ReduceKind::L2 {
                continue;
            }
            for (an, axes) in [
                ("all", vec![]),
                ("a0", vec![0]),
                ("a-1", vec![-1]),
                ("a02", vec![0, 2]),
                ("a1", vec![1]),
            ] {
                for keepdims in [true, false] {
                    let y = b.op(
                        Op::Reduce {
                            kind,
                            axes: axes.clone(),
                            keepdims,
                        },
                        &[x],
                    );
                    b.out(&format!("{}_{an}_{keepdims}", kind.name()), y);
                }
            }
        }
        for ax in [0i64, 1, -1] {
            for keepdims in [true, false] {
                let y = b.op(Op::ArgMax { axis: ax, keepdims }, &[x]);
                b.out(&format!("argmax_{ax}_{keepdims}"), y);
            }
        }
        let (lo, hi) = if dt.is_float() {
            (0.5, 1.5)
        } else {
            (-3.0, 4.0)
        };
        cases.push(
            Case::new(&name, b.finish(), if dt.is_float() { F32 } else { EXACT })
                .random_run(&mut rng, lo, hi, &[])
                .random_run(&mut rng, -2.0, 2.0, &[]),
        );
    }
    // rank 6: reductions over alternate axes, softmax and argmax over a middle one
    let mut b = Gb::new("reduce_rank6");
    let x = b.input("x", &[2, 3, 1, 4, 2, 3], DType::F32);
    let y = b.op(
        Op::Reduce {
            kind: ReduceKind::Sum,
            axes: vec![1, 3, 5],
            keepdims: true,
        },
        &[x],
    );
    b.out("sum_odd_axes", y);
    let y = b.op(
        Op::Reduce {
            kind: ReduceKind::Max,
            axes: vec![0, -2],
            keepdims: false,
        },
        &[x],
    );
    b.out("max_0_4", y);
    let y = b.op(Op::Softmax { axis: 3 }, &[x]);
    b.out("softmax3", y);
    let y = b.op(
        Op::ArgMax {
            axis: 1,
            keepdims: false,
        },
        &[x],
    );
    b.out("argmax1", y);
    cases.push(Case::new("reduce_rank6", b.finish(), F32).random_run(&mut rng, -3.0, 3.0, &[]));
    // a strided input, and symbolic reduced dimensions (including none at all)
    let mut b = Gb::new("reduce_sym");
    let x = b.input_sym("x", vec![Dim::sym("n"), Dim::Fixed(3)], DType::F32);
    let xt = b.op(Op::Transpose { perm: vec![1, 0] }, &[x]);
    for kind in [ReduceKind::Sum, ReduceKind::Max, ReduceKind::Mean] {
        let y = b.op(
            Op::Reduce {
                kind,
                axes: vec![-1],
                keepdims: false,
            },
            &[xt],
        );
        b.out(kind.name(), y);
    }
    let y = b.op(
        Op::ArgMax {
            axis: 0,
            keepdims: false,
        },
        &[x],
    );
    b.out("argmax", y);
    cases.push(
        Case::new("reduce_sym", b.finish(), F32)
            .max_dim("n", 50)
            .random_run(&mut rng, -3.0, 3.0, &[("n", 50)])
            .random_run(&mut rng, -3.0, 3.0, &[("n", 1)])
            .random_run(&mut rng, -3.0, 3.0, &[("n", 17)]),
    );
    cases
}

fn slice(starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Op {
    Op::Slice {
        spec: Some(SliceSpec {
            starts: starts.to_vec(),
            ends: ends.to_vec(),
            axes: axes.to_vec(),
            steps: steps.to_vec(),
        }),
    }
}

/// Views and copies: reshape, squeeze, unsqueeze, flatten, transpose (ranks 0–6), slices
/// (negative steps and starts, steps above 1), split, expand, concat of strided parts, tile;
/// each result both returned directly and fed to a kernel.
pub fn shape_ops() -> Vec<Case> {
    let mut rng = Rng::new(21);
    let mut cases = vec![];
    for dt in [DType::F32, DType::I64, DType::Bool, DType::F16] {
        let name = format!("views_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("x", &[2, 3, 4, 5], dt);
        let s = b.input("s", &[], dt);
        let v6 = b.input("v6", &[2, 1, 3, 2, 2, 3], dt);
        let mut outs: Vec<(String, ValueId)> = vec![];
        let add =
            |b: &mut Gb, outs: &mut Vec<(String, ValueId)>, n: &str, op: Op, ins: &[ValueId]| {
                let y = b.op(op, ins);
                outs.push((n.to_string(), y));
                y
            };
        add(
            &mut b,
            &mut outs,
            "reshape",
            Op::Reshape {
                shape: Some(vec![0, -1, 10]),
            },
            &[x],
        );
        let t = add(
            &mut b,
            &mut outs,
            "transpose",
            Op::Transpose {
                perm: vec![3, 1, 0, 2],
            },
            &[x],
        );
        add(
            &mut b,
            &mut outs,
            "reshape_of_transpose",
            Op::Reshape {
                shape: Some(vec![5, 24]),
            },
            &[t],
        );
        add(
            &mut b,
            &mut outs,
            "transpose_rev",
            Op::Transpose { perm: vec![] },
            &[x],
        );
        add(
            &mut b,
            &mut outs,
            "transpose6",
            Op::Transpose {
                perm: vec![5, 3, 1, 4, 0, 2],
            },
            &[v6],
        );
        add(
            &mut b,
            &mut outs,
            "transpose0",
            Op::Transpose { perm: vec![] },
            &[s],
        );
        add(
            &mut b,
            &mut outs,
            "unsqueeze0",
            Op::Unsqueeze { axes: vec![0, 1] },
            &[s],
        );
        let u = add(
            &mut b,
            &mut outs,
            "unsqueeze",
            Op::Unsqueeze { axes: vec![1, -1] },
            &[x],
        );
        add(
            &mut b,
            &mut outs,
            "squeeze",
            Op::Squeeze { axes: vec![] },
            &[u],
        );
        add(
            &mut b,
            &mut outs,
            "squeeze6",
            Op::Squeeze { axes: vec![1] },
            &[v6],
        );
        add(&mut b, &mut outs, "flatten", Op::Flatten { axis: 2 }, &[t]);
        add(&mut b, &mut outs, "flatten0", Op::Flatten { axis: 0 }, &[x]);
        add(
            &mut b,
            &mut outs,
            "slice_step",
            slice(&[1, 0], &[i64::MAX, 5], &[1, 3], &[1, 2]),
            &[x],
        );
        add(
            &mut b,
            &mut outs,
            "slice_neg",
            slice(&[-1, 3], &[i64::MIN, -5], &[3, 2], &[-2, -1]),
            &[x],
        );
        add(
            &mut b,
            &mut outs,
            "slice_of_transpose",
            slice(&[1], &[3], &[0], &[1]),
            &[t],
        );
        add(
            &mut b,
            &mut outs,
            "slice_empty",
            slice(&[3], &[1], &[2], &[1]),
            &[x],
        );
        let parts = b.ops(
            Op::Split {
                axis: 2,
                sizes: vec![1, 2, 1],
            },
            &[x],
        );
        for (i, p) in parts.iter().enumerate() {
            outs.push((format!("split{i}"), *p));
        }
        let parts_t = b.ops(
            Op::Split {
                axis: -1,
                sizes: vec![3, 1],
            },
            &[t],
        );
        outs.push(("split_t".into(), parts_t[0]));
        add(
            &mut b,
            &mut outs,
            "expand",
            Op::Expand {
                shape: Some(vec![3, 2, 3, 4, 5]),
            },
            &[x],
        );
        add(
            &mut b,
            &mut outs,
            "expand_scalar",
            Op::Expand {
                shape: Some(vec![2, 3]),
            },
            &[s],
        );
        add(
            &mut b,
            &mut outs,
            "concat0",
            Op::Concat { axis: 0 },
            &[x, x],
        );
        add(
            &mut b,
            &mut outs,
            "concat_mixed",
            Op::Concat { axis: 2 },
            &[parts[1], parts[0], parts[2]],
        );
        let xs = b.op(slice(&[0], &[i64::MAX], &[3], &[2]), &[x]);
        add(
            &mut b,
            &mut outs,
            "concat_strided",
            Op::Concat { axis: -1 },
            &[xs, x, xs],
        );
        add(
            &mut b,
            &mut outs,
            "tile",
            Op::Tile {
                repeats: Some(vec![1, 2, 1, 3]),
            },
            &[x],
        );
        add(
            &mut b,
            &mut outs,
            "tile_all",
            Op::Tile {
                repeats: Some(vec![2, 2, 2, 2]),
            },
            &[x],
        );
        add(
            &mut b,
            &mut outs,
            "tile_transposed",
            Op::Tile {
                repeats: Some(vec![2, 1, 1, 2]),
            },
            &[t],
        );
        // views feeding a kernel
        let fed = outs.clone();
        for (n, v) in fed {
            if dt == DType::Bool {
                let y = b.op(Op::Unary(UnaryOp::Not), &[v]);
                b.out(&format!("{n}_fed"), y);
            } else {
                let y = b.op(Op::Unary(UnaryOp::Neg), &[v]);
                b.out(&format!("{n}_fed"), y);
            }
        }
        for (n, v) in outs {
            b.out(&n, v);
        }
        cases.push(Case::new(&name, b.finish(), EXACT).random_run(&mut rng, -9.0, 9.0, &[]));
    }
    // outputs that are inputs, weights, constants, views of other outputs, or given twice
    let mut b = Gb::new("outputs");
    let x = b.input("x", &[2, 3], DType::F32);
    let w = b.weight("w", &rng.tensor(&[3, 2], DType::F16, -1.0, 1.0));
    let c = b.constant(Tensor::f32(vec![2], vec![1.5, -2.0]));
    let ci = b.constant(Tensor::i64(vec![3], vec![7, -1, 4]));
    let cb = b.constant(Tensor::new(vec![2], Data::Bool(vec![true, false])));
    let e = b.op(Op::Unary(UnaryOp::Exp), &[x]);
    let t = b.op(Op::Transpose { perm: vec![1, 0] }, &[e]);
    let e0 = b.op(Op::Gather { axis: 0 }, &[e, ci]);
    b.out("x", x);
    b.out("w", w);
    b.out("const", c);
    b.out("const_i64", ci);
    b.out("const_bool", cb);
    b.out("exp", e);
    b.out("exp_t", t);
    b.out("exp_again", e);
    b.out("gathered_by_const", e0);
    let ciw = b.op(Op::Gather { axis: 0 }, &[ci, ci]);
    b.out("shape_like", ciw);
    cases.push(Case::new("outputs", b.finish(), TRANSCENDENTAL).run(vec![(
        "x",
        Tensor::f32(vec![2, 3], vec![0.5, 1.0, -1.0, 2.0, 0.0, 3.0]),
    )]));
    // symbolic views
    let mut b = Gb::new("views_sym");
    let x = b.input_sym("x", vec![Dim::sym("n"), Dim::Fixed(6)], DType::F32);
    let r = b.op(
        Op::Reshape {
            shape: Some(vec![0, 2, 3]),
        },
        &[x],
    );
    let t = b.op(
        Op::Transpose {
            perm: vec![2, 0, 1],
        },
        &[r],
    );
    b.out("transpose", t);
    let s = b.op(slice(&[1], &[i64::MAX], &[0], &[1]), &[x]);
    b.out("slice_from_1", s);
    let s = b.op(slice(&[-2], &[i64::MAX], &[0], &[1]), &[x]);
    b.out("slice_last_2", s);
    let c = b.op(Op::Concat { axis: 0 }, &[x, x]);
    b.out("concat", c);
    let e = b.op(Op::Unary(UnaryOp::Abs), &[t]);
    b.out("fed", e);
    let sh = b.op(
        Op::Shape {
            start: 0,
            end: None,
        },
        &[x],
    );
    let r2 = b.op(Op::Reshape { shape: None }, &[t, sh]);
    b.out("reshape_to_shape", r2);
    let tiled = b.op(
        Op::Tile {
            repeats: Some(vec![2, 1]),
        },
        &[x],
    );
    b.out("tile", tiled);
    cases.push(
        Case::new("views_sym", b.finish(), EXACT)
            .max_dim("n", 7)
            .random_run(&mut rng, -3.0, 3.0, &[("n", 7)])
            .random_run(&mut rng, -3.0, 3.0, &[("n", 2)]),
    );
    cases
}

/// Shape arithmetic and the ops that make tensors from it: shape, constant_of_shape, range
/// (constant and symbolic bounds, negative steps), reshape and expand from computed shapes,
/// dynamic slices from computed starts, int constants.
pub fn shape_math() -> Vec<Case> {
    let mut rng = Rng::new(22);
    let mut cases = vec![];
    let mut b = Gb::new("shape_math");
    let x = b.input_sym("x", vec![Dim::sym("n"), Dim::Fixed(4)], DType::F32);
    let sh = b.op(
        Op::Shape {
            start: 0,
            end: None,
        },
        &[x],
    );
    b.out("shape", sh);
    let n = b.op(
        Op::Shape {
            start: 0,
            end: Some(1),
        },
        &[x],
    );
    let n0 = b.op(Op::Squeeze { axes: vec![0] }, &[n]);
    let zero = b.constant(Tensor::scalar_i64(0));
    let one = b.constant(Tensor::scalar_i64(1));
    let r = b.op(Op::Range, &[zero, n0, one]);
    b.out("range_n", r);
    let rf = b.op(Op::Cast { to: DType::F32 }, &[r]);
    let r2 = b.op(Op::Unsqueeze { axes: vec![1] }, &[rf]);
    let y = b.op(Op::Binary(BinaryOp::Mul), &[x, r2]);
    b.out("scaled_rows", y);
    let c = b.op(
        Op::ConstantOfShape {
            value: Tensor::new(vec![1], Data::F32(vec![2.5])),
        },
        &[sh],
    );
    let y = b.op(Op::Binary(BinaryOp::Add), &[x, c]);
    b.out("cos_add", y);
    let ci = b.op(
        Op::ConstantOfShape {
            value: Tensor::new(vec![1], Data::I32(vec![-7])),
        },
        &[sh],
    );
    b.out("cos_i32", ci);
    let cb = b.op(
        Op::ConstantOfShape {
            value: Tensor::new(vec![1], Data::Bool(vec![true])),
        },
        &[n],
    );
    b.out("cos_bool", cb);
    let three = b.constant(Tensor::scalar_i64(3));
    let seventeen = b.constant(Tensor::scalar_i64(17));
    let two = b.constant(Tensor::scalar_i64(2));
    let mtwo = b.constant(Tensor::scalar_i64(-2));
    let r = b.op(Op::Range, &[three, seventeen, two]);
    b.out("range_const", r);
    let r = b.op(Op::Range, &[seventeen, three, mtwo]);
    b.out("range_down", r);
    // reshape to a computed shape: [n·2, 2]
    let two1 = b.constant(Tensor::i64(vec![1], vec![2]));
    let n2 = b.op(Op::Binary(BinaryOp::Mul), &[n, two1]);
    let tgt = b.op(Op::Concat { axis: 0 }, &[n2, two1]);
    let y = b.op(Op::Reshape { shape: None }, &[x, tgt]);
    b.out("reshape_computed", y);
    // expand to a computed shape and slice from computed starts
    let e3 = b.constant(Tensor::i64(vec![1], vec![3]));
    let one1 = b.constant(Tensor::i64(vec![1], vec![1]));
    let tshape = b.op(Op::Concat { axis: 0 }, &[e3, one1, one1]);
    let y = b.op(Op::Expand { shape: None }, &[x, tshape]);
    b.out("expand_computed", y);
    let st = b.constant(Tensor::i64(vec![1], vec![1]));
    let en = b.op(Op::Binary(BinaryOp::Sub), &[n, one1]);
    let ax = b.constant(Tensor::i64(vec![1], vec![0]));
    let y = b.op(Op::Slice { spec: None }, &[x, st, en, ax]);
    b.out("slice_computed", y);
    // int constants: a gather of a shape, arithmetic on shape values, a computed tile
    let idx = b.constant(Tensor::i64(vec![2], vec![1, 0]));
    let g = b.op(Op::Gather { axis: 0 }, &[sh, idx]);
    b.out("shape_gathered", g);
    let k = b.constant(Tensor::i64(vec![2], vec![-7, 3]));
    let q = b.op(Op::Binary(BinaryOp::Div), &[k, two1]);
    b.out("int_div", q);
    let q = b.op(Op::Binary(BinaryOp::Div), &[seventeen, mtwo]);
    b.out("int_div_neg", q);
    let q = b.op(Op::Binary(BinaryOp::Mod), &[k, three]);
    b.out("int_mod", q);
    let reps = b.constant(Tensor::i64(vec![2], vec![1, 2]));
    let y = b.op(Op::Tile { repeats: None }, &[x, reps]);
    b.out("tile_computed", y);
    cases.push(
        Case::new("shape_math", b.finish(), EXACT)
            .max_dim("n", 9)
            .random_run(&mut rng, -2.0, 2.0, &[("n", 9)])
            .random_run(&mut rng, -2.0, 2.0, &[("n", 3)]),
    );
    // float ranges from constants
    let mut b = Gb::new("range_f32");
    let s = b.constant(scalar_f32(0.5));
    let l = b.constant(scalar_f32(3.7));
    let d = b.constant(scalar_f32(0.3));
    let r = b.op(Op::Range, &[s, l, d]);
    b.out("range", r);
    let s = b.constant(scalar_f32(1.0));
    let l = b.constant(scalar_f32(-1.0));
    let d = b.constant(scalar_f32(-0.25));
    let r = b.op(Op::Range, &[s, l, d]);
    b.out("range_down", r);
    let x = b.input("x", &[2], DType::F32);
    b.out("x", x);
    cases.push(Case::new("range_f32", b.finish(), EXACT).random_run(&mut rng, 0.0, 1.0, &[]));
    cases
}

/// Rotary embeddings: both modes, all or some dimensions rotated, positions per batch row or
/// shared, large positions, strided and f16 inputs.
pub fn rope() -> Vec<Case> {
    let mut rng = Rng::new(23);
    let mut cases = vec![];
    for dt in [DType::F32, DType::F16] {
        let name = format!("rope_{dt}");
        let mut b = Gb::new(&name);
        let x = b.input("x", &[2, 5, 3, 16], dt);
        let pos = b.input("pos", &[2, 5], DType::I64);
        let pos1 = b.input("pos1", &[1, 5], DType::I64);
        let xh = b.input("xh", &[2, 3, 5, 16], dt);
        let xt = b.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[xh],
        );
        for mode in [RopeMode::Interleaved, RopeMode::Half] {
            let m = match mode {
                RopeMode::Interleaved => "inter",
                RopeMode::Half => "half",
            };
            for (dn, dims) in [("all", None), ("part", Some(8))] {
                let op = Op::Rope {
                    base: 10000.0,
                    mode,
                    dims,
                };
                let y = b.op(op.clone(), &[x, pos]);
                b.out(&format!("{m}_{dn}"), y);
                let y = b.op(op.clone(), &[x, pos1]);
                b.out(&format!("{m}_{dn}_shared"), y);
                let y = b.op(op, &[xt, pos]);
                b.out(&format!("{m}_{dn}_strided"), y);
            }
        }
        let y = b.op(
            Op::Rope {
                base: 500000.0,
                mode: RopeMode::Half,
                dims: Some(4),
            },
            &[x, pos],
        );
        b.out("base500k", y);
        let xv = rng.tensor(&[2, 5, 3, 16], dt, -2.0, 2.0);
        let xhv = rng.tensor(&[2, 3, 5, 16], dt, -2.0, 2.0);
        cases.push(
            Case::new(&name, b.finish(), F32)
                .run(vec![
                    ("x", xv.clone()),
                    ("pos", Tensor::i64(vec![2, 5], (0..10).collect())),
                    ("pos1", Tensor::i64(vec![1, 5], vec![3, 4, 5, 6, 7])),
                    ("xh", xhv.clone()),
                ])
                .run(vec![
                    ("x", xv),
                    (
                        "pos",
                        Tensor::i64(
                            vec![2, 5],
                            vec![0, 1, 2, 100, 1000, 2047, 4095, 9, 77, 30000],
                        ),
                    ),
                    ("pos1", Tensor::i64(vec![1, 5], vec![65535, 0, 1, 2, 3])),
                    ("xh", xhv),
                ]),
        );
    }
    cases
}

/// Attention: causal and not, grouped KV heads, additive masks of several shapes, more keys
/// than queries, strided q/k/v, value heads of another size, f16.
pub fn attention() -> Vec<Case> {
    let mut rng = Rng::new(24);
    let mut cases = vec![];
    for dt in [DType::F32, DType::F16] {
        let name = format!("attention_{dt}");
        let mut b = Gb::new(&name);
        let (bs, h, hk, s, t, d, dv) = (2usize, 4usize, 2usize, 5usize, 8usize, 16usize, 12usize);
        let q = b.input("q", &[bs, h, s, d], dt);
        let k = b.input("k", &[bs, hk, t, d], dt);
        let v = b.input("v", &[bs, hk, t, dv], dt);
        let k1 = b.input("k1", &[bs, 1, t, d], dt);
        let v1 = b.input("v1", &[bs, 1, t, dv], dt);
        let ks = b.input("ks", &[bs, h, s, d], dt);
        let vs = b.input("vs", &[bs, h, s, d], dt);
        let m2 = b.input("m2", &[s, t], dt);
        let m4 = b.input("m4", &[bs, 1, s, t], dt);
        let qt_in = b.input("qt", &[bs, s, h, d], dt);
        let kt_in = b.input("kt", &[bs, t, hk, d], dt);
        let qt = b.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[qt_in],
        );
        let kt = b.op(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[kt_in],
        );
        let sc = 1.0 / (d as f32).sqrt();
        let att = |causal| Op::Attention { causal, scale: sc };
        let outs: Vec<(&str, Op, Vec<ValueId>)> = vec![
            ("gqa_causal", att(true), vec![q, k, v]),
            ("gqa_full", att(false), vec![q, k, v]),
            ("mqa_causal", att(true), vec![q, k1, v1]),
            ("self_causal", att(true), vec![q, ks, vs]),
            ("mask2", att(false), vec![q, k, v, m2]),
            ("mask4_causal", att(true), vec![q, k, v, m4]),
            ("strided", att(true), vec![qt, kt, v]),
            ("strided_mask", att(false), vec![qt, kt, v, m2]),
        ];
        for (n, op, ins) in outs {
            let y = b.op(op, &ins);
            b.out(n, y);
        }
        let mut c = Case::new(&name, b.finish(), F32).random_run(&mut rng, -1.5, 1.5, &[]);
        // masks with -inf: whole rows masked give zeros
        let mut run = c.runs[0].clone();
        let mut m = vec![0f32; s * t];
        for (i, e) in m.iter_mut().enumerate() {
            if i % 3 == 0 || i / t == 2 {
                *e = f32::NEG_INFINITY;
            }
        }
        for (n, tv) in run.iter_mut() {
            if n == "m2" {
                *tv = Tensor::f32(vec![s, t], m.clone()).cast(dt);
            }
        }
        c.runs.push(run);
        cases.push(c);
    }
    cases
}

/// Attention and matmul over run-time lengths: `s` queries, `t ≥ s` keys.
pub fn attention_sym() -> Vec<Case> {
    let mut rng = Rng::new(25);
    let mut b = Gb::new("attention_sym");
    let q = b.input_sym(
        "q",
        vec![Dim::Fixed(1), Dim::Fixed(4), Dim::sym("s"), Dim::Fixed(8)],
        DType::F32,
    );
    let k = b.input_sym(
        "k",
        vec![Dim::Fixed(1), Dim::Fixed(2), Dim::sym("t"), Dim::Fixed(8)],
        DType::F32,
    );
    let v = b.input_sym(
        "v",
        vec![Dim::Fixed(1), Dim::Fixed(2), Dim::sym("t"), Dim::Fixed(8)],
        DType::F32,
    );
    let y = b.op(
        Op::Attention {
            causal: true,
            scale: 0.3,
        },
        &[q, k, v],
    );
    b.out("causal", y);
    let y = b.op(
        Op::Attention {
            causal: false,
            scale: 0.3,
        },
        &[q, k, v],
    );
    b.out("full", y);
    let kt = b.op(
        Op::Transpose {
            perm: vec![0, 1, 3, 2],
        },
        &[k],
    );
    let qg = b.op(
        Op::Slice {
            spec: Some(SliceSpec {
                starts: vec![0],
                ends: vec![2],
                axes: vec![1],
                steps: vec![1],
            }),
        },
        &[q],
    );
    let sc = b.op(Op::MatMul, &[qg, kt]);
    b.out("scores", sc);
    let e = b.op(
        Op::Expand {
            shape: Some(vec![2, 1, 1, 1]),
        },
        &[sc],
    );
    b.out("expanded", e);
    vec![Case::new("attention_sym", b.finish(), F32)
        .max_dim("s", 6)
        .max_dim("t", 12)
        .random_run(&mut rng, -1.0, 1.0, &[("s", 6), ("t", 12)])
        .random_run(&mut rng, -1.0, 1.0, &[("s", 1), ("t", 7)])
        .random_run(&mut rng, -1.0, 1.0, &[("s", 3), ("t", 3)])]
}

/// A tiny decoder (embedding, rope, grouped KV heads with the cache, a head) in the form the
/// frontends build.
pub fn tiny_decoder(rng: &mut Rng, table_enc: Option<QuantSpec>) -> Graph {
    let (vocab, e, h, hk, d) = (50usize, 32usize, 4usize, 2usize, 8usize);
    let mut b = Gb::new("tiny_decoder");
    let seq = || vec![Dim::sym("batch"), Dim::sym("seq")];
    let tokens = b.input_sym("tokens", seq(), DType::I64);
    let positions = b.input_sym("positions", seq(), DType::I64);
    let state_ty = TensorType::new(
        Shape(vec![
            Dim::sym("batch"),
            Dim::Fixed(hk as u64),
            Dim::sym("ctx"),
            Dim::Fixed(d as u64),
        ]),
        DType::F32,
    );
    let ks = b.g.add_state("k.0", state_ty.clone());
    let vs = b.g.add_state("v.0", state_ty);
    let table = match table_enc {
        None => b.weight("embed", &rng.tensor(&[vocab, e], DType::F32, -1.0, 1.0)),
        Some(q) => b.weight_enc(
            "embed",
            &[vocab, e],
            Encoding::Quant(q),
            quant_bytes(rng, vocab, e, &q),
        ),
    };
    let x = b.op(Op::Gather { axis: 0 }, &[table, tokens]);
    let lin = |b: &mut Gb, rng: &mut Rng, name: &str, x, n: usize| {
        let w = b.weight(name, &rng.tensor(&[n, e], DType::F32, -0.4, 0.4));
        b.op(Op::LINEAR, &[x, w])
    };
    let q = lin(&mut b, rng, "wq", x, h * d);
    let k = lin(&mut b, rng, "wk", x, hk * d);
    let v = lin(&mut b, rng, "wv", x, hk * d);
    let q = b.op(
        Op::Reshape {
            shape: Some(vec![0, 0, h as i64, d as i64]),
        },
        &[q],
    );
    let k = b.op(
        Op::Reshape {
            shape: Some(vec![0, 0, hk as i64, d as i64]),
        },
        &[k],
    );
    let v = b.op(
        Op::Reshape {
            shape: Some(vec![0, 0, hk as i64, d as i64]),
        },
        &[v],
    );
    let rope = Op::Rope {
        base: 10000.0,
        mode: RopeMode::Half,
        dims: None,
    };
    let q = b.op(rope.clone(), &[q, positions]);
    let k = b.op(rope, &[k, positions]);
    let heads = Op::Transpose {
        perm: vec![0, 2, 1, 3],
    };
    let q = b.op(heads.clone(), &[q]);
    let k = b.op(heads.clone(), &[k]);
    let v = b.op(heads.clone(), &[v]);
    let k = b.op(Op::CacheConcat { state: ks, axis: 2 }, &[k]);
    let v = b.op(Op::CacheConcat { state: vs, axis: 2 }, &[v]);
    let a = b.op(
        Op::Attention {
            causal: true,
            scale: 1.0 / (d as f32).sqrt(),
        },
        &[q, k, v],
    );
    let a = b.op(heads, &[a]);
    let a = b.op(
        Op::Reshape {
            shape: Some(vec![0, 0, (h * d) as i64]),
        },
        &[a],
    );
    let o = lin(&mut b, rng, "wo", a, e);
    let x = b.op(Op::Binary(BinaryOp::Add), &[x, o]);
    let nw = b.weight("norm", &rng.tensor(&[e], DType::F32, 0.5, 1.5));
    let x = b.op(
        Op::RmsNorm {
            axis: -1,
            eps: 1e-5,
        },
        &[x, nw],
    );
    let logits = lin(&mut b, rng, "head", x, vocab);
    b.out("logits", logits);
    let mut g = b.finish();
    g.kind = llmc_ir::ModelKind::Decoder;
    g
}

/// Logits of an interpreter session over calls that each append tokens (a prefill of `n`
/// tokens is one call).
pub fn interpreter_calls(g: &Graph, chunks: &[&[i32]]) -> Vec<Vec<f32>> {
    let mut s = Session::new(g).expect("the graph verifies");
    let mut past = 0i64;
    chunks
        .iter()
        .map(|c| {
            let n = c.len();
            let out = s
                .run(&[
                    (
                        "tokens",
                        Tensor::i64(vec![1, n], c.iter().map(|&t| t as i64).collect()),
                    ),
                    (
                        "positions",
                        Tensor::i64(vec![1, n], (past..past + n as i64).collect()),
                    ),
                ])
                .expect("the interpreter runs");
            past += n as i64;
            out.into_iter()
                .find(|(n, _)| n == "logits")
                .expect("logits")
                .1
                .to_f32_vec()
        })
        .collect()
}

/// How decoder logits must agree with the interpreter's.
#[derive(Clone, Copy, Debug)]
pub struct LogitTol {
    /// Every element, except in outlier rows.
    pub tol: Tol,
    /// Rows (one token's logits) that may exceed `tol`, per this many rows (0: none).
    pub outlier_per_rows: usize,
    /// The largest absolute difference an outlier row may have.
    pub outlier_cap: f32,
}

impl LogitTol {
    pub const fn strict(tol: Tol) -> LogitTol {
        LogitTol {
            tol,
            outlier_per_rows: 0,
            outlier_cap: 0.0,
        }
    }
}

/// Runs `chunks` on a compiled decoder, one call each (`decode` for single tokens, `prefill`
/// otherwise), and compares every call's logits with an interpreter session's.
pub fn check_decoder_calls(
    c: &Compiled,
    g: &Graph,
    chunks: &[&[i32]],
    exec: Exec,
    tol: Tol,
) -> Result<(), String> {
    check_decoder_rows(c, g, chunks, exec, LogitTol::strict(tol))
}

/// As [`check_decoder_calls`], row by row, allowing a few outlier rows.
pub fn check_decoder_rows(
    c: &Compiled,
    g: &Graph,
    chunks: &[&[i32]],
    exec: Exec,
    lt: LogitTol,
) -> Result<(), String> {
    let want = interpreter_calls(g, chunks);
    let calls: Vec<super::Call> = chunks
        .iter()
        .map(|ch| match ch {
            [t] => super::Call::Decode(*t),
            _ => super::Call::Prefill(ch.to_vec()),
        })
        .collect();
    let got = c.calls(&calls, exec);
    let rows: usize = chunks.iter().map(|c| c.len()).sum();
    let allowed = if lt.outlier_per_rows == 0 {
        0
    } else {
        rows.div_ceil(lt.outlier_per_rows)
    };
    let mut errors = vec![];
    let mut outliers = vec![];
    for (k, ((g, w), ch)) in got.into_iter().zip(want).zip(chunks).enumerate() {
        let at = format!("{} call {k} on {} ({exec:?})", c.name, c.target.label());
        let l = match g {
            Ok(super::Reply::Logits(l)) => l,
            other => {
                errors.push(format!("{at}: {other:?}"));
                continue;
            }
        };
        if std::env::var_os("LLMC_CASE_TIMES").is_some() {
            eprintln!("{at}: max abs diff {:e}", crate::max_abs_diff(&l, &w));
        }
        if l.len() != w.len() {
            errors.push(format!("{at}: {} logits instead of {}", l.len(), w.len()));
            continue;
        }
        let vocab = w.len() / ch.len().max(1);
        for (r, (a, b)) in l.chunks(vocab).zip(w.chunks(vocab)).enumerate() {
            let t = |v: &[f32]| Tensor::f32(vec![v.len()], v.to_vec());
            if let Some(e) = super::compare(&t(a), &t(b), lt.tol) {
                let d = crate::max_abs_diff(a, b);
                if d <= lt.outlier_cap {
                    outliers.push(format!("{at} row {r}: {e}"));
                } else {
                    errors.push(format!("{at} row {r}: {e}"));
                }
            }
        }
    }
    if outliers.len() > allowed {
        errors.extend(outliers);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// A small Llama with random weights (f32, Gguf names), built by the frontend's builder: 2
/// layers, width 128, 4 query and 2 KV heads of 32, a feed-forward of 256, 96 tokens; with a
/// tied head and q/k/v biases when asked.
pub fn random_llama(seed: u64, tied: bool, biases: bool) -> Graph {
    random_llama_layers(seed, tied, biases, 2)
}

/// [`random_llama`] with `layers` layers.
pub fn random_llama_layers(seed: u64, tied: bool, biases: bool, layers: usize) -> Graph {
    use llmc::frontend::llama::{build_llama, LlamaConfig, NameScheme};
    let cfg = LlamaConfig {
        layers,
        hidden: 128,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        ffn: 256,
        vocab: 96,
        rms_eps: 1e-5,
        rope_base: 10000.0,
        rope_mode: RopeMode::Interleaved,
        tied_embeddings: tied,
        max_context: 256,
        bos: None,
        eos: None,
    };
    let mut rng = Rng::new(seed);
    let (d, q, kv, f) = (
        cfg.hidden,
        cfg.heads * cfg.head_dim,
        cfg.kv_heads * cfg.head_dim,
        cfg.ffn,
    );
    let mut source = |name: &str| -> llmc::frontend::Result<Option<(TensorType, WeightData)>> {
        let tail = name.rsplit_once('.').map_or(name, |(a, _)| a);
        let kind = tail.rsplit('.').next().unwrap_or(tail);
        let (shape, lo, hi): (Vec<usize>, f32, f32) = match (kind, name.ends_with(".bias")) {
            ("token_embd", _) => (vec![cfg.vocab, d], -1.0, 1.0),
            ("output", _) => (vec![cfg.vocab, d], -0.15, 0.15),
            ("attn_norm" | "ffn_norm" | "output_norm", _) => (vec![d], 0.7, 1.3),
            ("attn_q", true) if biases => (vec![q], -0.5, 0.5),
            ("attn_k" | "attn_v", true) if biases => (vec![kv], -0.5, 0.5),
            (_, true) => return Ok(None),
            ("attn_q", _) => (vec![q, d], -0.2, 0.2),
            ("attn_k" | "attn_v", _) => (vec![kv, d], -0.2, 0.2),
            ("attn_output", _) => (vec![d, q], -0.15, 0.15),
            ("ffn_gate" | "ffn_up", _) => (vec![f, d], -0.15, 0.15),
            ("ffn_down", _) => (vec![d, f], -0.1, 0.1),
            _ => return Ok(None),
        };
        let t = rng.tensor(&shape, DType::F32, lo, hi);
        Ok(Some((
            TensorType::fixed(&shape, DType::F32),
            WeightData::from_tensor(&t, name),
        )))
    };
    build_llama(
        &cfg,
        NameScheme::Gguf,
        std::path::Path::new("random-llama.gguf"),
        &mut source,
    )
    .expect("the random Llama builds")
}

/// The message a panic carried.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs `f` on every item, two at a time; the errors of those that failed (or panicked).
pub fn par_each<T: Sync>(items: &[T], f: impl Fn(&T) -> Result<(), String> + Sync) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut errs = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break errs };
                        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item))) {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => errs.push(e),
                            Err(p) => errs.push(format!("panicked: {}", panic_message(&*p))),
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("joined"))
            .collect()
    })
}

/// An entropy-coded weights file (`--entropy`) decoded by the bundle's own generated
/// `decode_weights` before init: a graph whose weights span three coding chunks (a dense
/// table, a quantized tied table, a constant run) gives the interpreter's outputs from the
/// coded file; damaged coded files are refused with an error status (never a crash, never
/// a run on wrong weights).
pub fn check_coded_weights(target: &Target) {
    use llmc_runtime::weights::{Status, CODED_HEADER, FREQ_BYTES};
    let mut rng = Rng::new(31);
    let mut b = Gb::new("coded_weights");
    let x = b.input("x", &[2, 256], DType::F32);
    let ids = b.input("ids", &[3], DType::I64);
    // 1.25 MB of f32 over a narrow range, 0.5 MB of 4-bit codes, 1 MB of zeros
    let dense = b.weight("dense", &rng.tensor(&[1200, 256], DType::F32, -0.1, 0.1));
    let q = QuantSpec {
        bits: 4,
        group: Group::Size(32),
        scale: DType::F16,
        zero: Zero::Int,
    };
    let tied = b.weight_enc(
        "tied",
        &[4000, 256],
        Encoding::Quant(q),
        quant_bytes(&mut rng, 4000, 256, &q),
    );
    let zeros = b.weight("zeros", &Tensor::zeros(vec![1024, 256], DType::F32));
    let y = b.op(Op::LINEAR, &[x, dense]);
    b.out("dense", y);
    let y = b.op(Op::LINEAR, &[x, tied]);
    b.out("head", y);
    let r = b.op(Op::Gather { axis: 0 }, &[tied, ids]);
    b.out("rows", r);
    let y = b.op(Op::LINEAR, &[x, zeros]);
    b.out("zeros", y);
    let g = b.finish();
    let inputs = vec![
        ("x", rng.tensor(&[2, 256], DType::F32, -1.0, 1.0)),
        ("ids", Tensor::i64(vec![3], vec![0, 3999, 1717])),
    ];
    let want = llmc_ir::Session::new(&g).unwrap().run(&inputs).unwrap();
    let c = build(&g, target, &super::options_for(&g, &inputs)).expect("builds");
    let plain = std::fs::read(c.dir.join(format!("{}.weights", c.name))).unwrap();
    let coded = c.entropy_code_weights();
    assert!(
        coded.len() < plain.len() * 8 / 10,
        "{} of {}",
        coded.len(),
        plain.len()
    );
    let chunks = u64::from_le_bytes(coded[24..32].try_into().unwrap());
    assert_eq!(chunks, 3, "{} plain bytes", plain.len());
    let got = c.run(&inputs).expect("runs on the decoded weights");
    for ((n, g), (_, w)) in got.iter().zip(&want) {
        if let Some(e) = super::compare(g, w, Tol::new(1e-4, 1e-4)) {
            panic!("{} output {n}: {e}", target.label());
        }
    }
    // damaged files: the decoder's status (or init's checksum), never a crash
    let status = |bytes: &[u8]| {
        c.set_weights(bytes);
        c.start()
    };
    let refused = |what: &str, bytes: Vec<u8>, want: &[Status]| {
        let (code, err) = status(&bytes);
        let ok = match code {
            Some(4) => want
                .iter()
                .any(|s| err.contains(&format!("returned {}", *s as i32))),
            Some(3) => {
                want.contains(&Status::BadChecksum)
                    && err.contains(&format!("returned {}", Status::BadChecksum as i32))
            }
            _ => false,
        };
        assert!(ok, "{} {what}: exit {code:?}: {err}", target.label());
    };
    refused(
        "truncated",
        coded[..coded.len() / 2].to_vec(),
        &[Status::BadCoding],
    );
    refused(
        "cut to its header",
        coded[..CODED_HEADER].to_vec(),
        &[Status::BadCoding],
    );
    let mut size = coded.clone();
    size[8] ^= 1;
    refused("with another decoded size", size, &[Status::BadWeightsSize]);
    let mut table = coded.clone();
    table[CODED_HEADER + 8] ^= 0x10;
    refused("with a moved chunk end", table, &[Status::BadCoding]);
    let mut freq = coded.clone();
    freq[CODED_HEADER + 24 + 7] ^= 0x01;
    refused(
        "with other frequencies",
        freq,
        &[Status::BadCoding, Status::BadChecksum],
    );
    for at in [
        CODED_HEADER + 24 + FREQ_BYTES + 9,
        coded.len() / 3,
        coded.len() - 5,
    ] {
        let mut bad = coded.clone();
        bad[at] ^= 0x24;
        refused(
            &format!("with byte {at} changed"),
            bad,
            &[Status::BadCoding, Status::BadChecksum],
        );
    }
    // and the intact file still runs
    assert_eq!(status(&coded).0, Some(0));
}
