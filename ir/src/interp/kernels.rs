//! Numeric kernels of the reference interpreter: matrix products, normalization, softmax,
//! attention, rotary embedding, elementwise math, and index shuffles.

use super::EvalError;
use crate::ops::{BinaryOp, RopeMode, UnaryOp};
use crate::tensor::{strides, Data, Tensor};
use crate::types::DType;
use rayon::prelude::*;

type R<T> = Result<T, EvalError>;

/// Elements above which elementwise work is split across threads.
const PAR_MIN: usize = 1 << 15;

/// `out[m, n] = Σ_k a[m, k] · b[k, n]` with arbitrary element strides (row, column).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: isize,
    a_cs: isize,
    b: &[f32],
    b_rs: isize,
    b_cs: isize,
    out: &mut [f32],
    threads: bool,
) {
    assert!(out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(0.0);
        return;
    }
    let reach = |rows: usize, cols: usize, rs: isize, cs: isize| {
        (rows as isize - 1) * rs.max(0) + (cols as isize - 1) * cs.max(0)
    };
    assert!(
        a_rs >= 0 && a_cs >= 0 && b_rs >= 0 && b_cs >= 0,
        "gemm_f32 takes non-negative strides"
    );
    assert!((reach(m, k, a_rs, a_cs) as usize) < a.len());
    assert!((reach(k, n, b_rs, b_cs) as usize) < b.len());
    // SAFETY: the asserts above keep every element the strides reach inside the slices.
    let (lhs, rhs, dst) = unsafe {
        (
            faer::MatRef::<f32>::from_raw_parts(a.as_ptr(), m, k, a_rs, a_cs),
            faer::MatRef::<f32>::from_raw_parts(b.as_ptr(), k, n, b_rs, b_cs),
            faer::MatMut::<f32>::from_raw_parts_mut(out.as_mut_ptr(), m, n, n as isize, 1),
        )
    };
    let par = if threads {
        faer::Par::rayon(0)
    } else {
        faer::Par::Seq
    };
    faer::linalg::matmul::matmul(dst, faer::Accum::Replace, lhs, rhs, 1.0f32, par);
}

/// `x [rows, k] · wᵀ` for `w [n, k]`, plus an optional bias.
pub fn linear(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    gemm_f32(
        rows, n, k, x, k as isize, 1, w, 1, k as isize, &mut out, true,
    );
    if let Some(b) = bias {
        out.par_chunks_mut(n)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b));
    }
    out
}

/// Quantizes each row of `cols` values to int8 as `act = i8_per_token` says
/// (`inv = 127 / max|x|`, `q = round_even(x · inv)`), leaving the dequantized values.
pub fn quantize_rows_i8(v: &mut [f32], cols: usize) {
    v.par_chunks_mut(cols.max(1)).for_each(|row| {
        let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        if amax == 0.0 || !amax.is_finite() {
            return;
        }
        let inv = 127.0f32 / amax;
        let scale = amax / 127.0f32;
        for x in row.iter_mut() {
            *x = (*x * inv).round_ties_even() * scale;
        }
    });
}

/// Numpy matmul of f32 tensors (batched, broadcast, 1-D promotion).
pub fn matmul(a: &Tensor, b: &Tensor) -> R<Tensor> {
    let (av, bv) = (a.to_f32_vec(), b.to_f32_vec());
    let mut sa = a.shape.clone();
    let mut sb = b.shape.clone();
    let (a1, b1) = (sa.len() == 1, sb.len() == 1);
    if a1 {
        sa.insert(0, 1);
    }
    if b1 {
        sb.push(1);
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    if k != k2 {
        return Err(EvalError::InnerDims {
            a: a.shape.clone(),
            b: b.shape.clone(),
        });
    }
    let ba = &sa[..sa.len() - 2];
    let bb = &sb[..sb.len() - 2];
    let batch = broadcast_shapes(ba, bb)?;
    let nb: usize = batch.iter().product();
    let ia = broadcast_index_map(ba, &batch);
    let ib = broadcast_index_map(bb, &batch);
    let mut out = vec![0f32; nb * m * n];
    let threads = nb == 1;
    let work = |(i, o): (usize, &mut [f32])| {
        let (pa, pb) = (ia[i] * m * k, ib[i] * k * n);
        gemm_f32(
            m,
            n,
            k,
            &av[pa..pa + m * k],
            k as isize,
            1,
            &bv[pb..pb + k * n],
            n as isize,
            1,
            o,
            threads,
        );
    };
    if threads {
        out.chunks_mut((m * n).max(1)).enumerate().for_each(work);
    } else {
        out.par_chunks_mut((m * n).max(1))
            .enumerate()
            .for_each(work);
    }
    let mut shape = batch;
    if !a1 {
        shape.push(m);
    }
    if !b1 {
        shape.push(n);
    }
    Ok(Tensor::f32(shape, out).cast(a.dtype()))
}

pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> R<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(EvalError::Broadcast {
                    a: a.to_vec(),
                    b: b.to_vec(),
                }),
            }
        })
        .collect()
}

/// For every element of `out` (row-major), the index of the element of a tensor of shape
/// `shape` that broadcasting reads.
pub fn broadcast_index_map(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let off = out.len() - shape.len();
    let st = strides(shape);
    let mut bst = vec![0usize; out.len()];
    for i in 0..shape.len() {
        bst[off + i] = if shape[i] == 1 { 0 } else { st[i] };
    }
    let mut idx = Vec::with_capacity(n);
    let mut counter = vec![0usize; out.len()];
    let mut cur = 0usize;
    for _ in 0..n {
        idx.push(cur);
        for d in (0..out.len()).rev() {
            counter[d] += 1;
            cur += bst[d];
            if counter[d] < out[d] {
                break;
            }
            cur -= bst[d] * counter[d];
            counter[d] = 0;
        }
    }
    idx
}

/// Expands a tensor to a broadcast shape.
pub fn broadcast_to(t: &Tensor, shape: &[usize]) -> Tensor {
    if t.shape == shape {
        return t.clone();
    }
    let idx = broadcast_index_map(&t.shape, shape);
    Tensor::new(shape.to_vec(), t.data.gather(&idx))
}

fn erf(x: f32) -> f32 {
    libm::erff(x)
}

pub fn unary_f32(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        UnaryOp::GeluTanh => {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::Erf => erf(x),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        }
        UnaryOp::Softplus => {
            if x > 20.0 {
                x
            } else {
                x.exp().ln_1p()
            }
        }
        UnaryOp::Not => unreachable!("bool op"),
    }
}

pub fn unary(op: UnaryOp, t: &Tensor) -> R<Tensor> {
    let data = match (&t.data, op) {
        (Data::Bool(v), UnaryOp::Not) => Data::Bool(v.iter().map(|b| !b).collect()),
        (Data::F32(v), _) => {
            let mut o = v.clone();
            if o.len() >= PAR_MIN {
                o.par_chunks_mut(4096)
                    .for_each(|c| c.iter_mut().for_each(|x| *x = unary_f32(op, *x)));
            } else {
                o.iter_mut().for_each(|x| *x = unary_f32(op, *x));
            }
            Data::F32(o)
        }
        (Data::F16(_) | Data::BF16(_), _) => {
            return unary(op, &t.cast(DType::F32)).map(|r| r.cast(t.dtype()))
        }
        (d, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu | UnaryOp::Sign) => {
            let v = d.to_i64();
            let f = |x: i64| match op {
                UnaryOp::Neg => x.wrapping_neg(),
                UnaryOp::Abs => x.wrapping_abs(),
                UnaryOp::Relu => x.max(0),
                _ => x.signum(),
            };
            Data::I64(v.into_iter().map(f).collect()).cast(t.dtype())
        }
        (d, _) => {
            return Err(EvalError::DType {
                what: "operand",
                expected: if op == UnaryOp::Not { "bool" } else { "float" },
                found: d.dtype(),
            })
        }
    };
    Ok(Tensor::new(t.shape.clone(), data))
}

fn binary_f32(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Max => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        }
        BinaryOp::Min => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.min(b)
            }
        }
        BinaryOp::Mod => a % b,
        _ => unreachable!("comparisons and logic are handled apart"),
    }
}

fn binary_i64(op: BinaryOp, a: i64, b: i64) -> R<i64> {
    Ok(match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        BinaryOp::Div => {
            if b == 0 {
                return Err(EvalError::DivisionByZero { what: "division" });
            }
            // ONNX integer Div truncates toward zero, as C does
            a.wrapping_div(b)
        }
        BinaryOp::Pow => {
            if b < 0 {
                0
            } else {
                a.wrapping_pow(b.min(u32::MAX as i64) as u32)
            }
        }
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::Mod => {
            if b == 0 {
                return Err(EvalError::DivisionByZero { what: "modulo" });
            }
            let r = a % b;
            if r != 0 && ((r < 0) != (b < 0)) {
                r + b
            } else {
                r
            }
        }
        _ => unreachable!(),
    })
}

fn compare<T: PartialOrd>(op: BinaryOp, a: T, b: T) -> bool {
    match op {
        BinaryOp::Equal => a == b,
        BinaryOp::Less => a < b,
        BinaryOp::LessEqual => a <= b,
        BinaryOp::Greater => a > b,
        BinaryOp::GreaterEqual => a >= b,
        _ => unreachable!(),
    }
}

/// Applies `f` over two broadcast operands, with fast paths for equal shapes, a scalar, and a
/// trailing-dimension operand (bias, scale).
fn zip_broadcast<A: Copy + Sync, B: Copy + Sync, O: Copy + Send + Default>(
    a: &[A],
    sa: &[usize],
    b: &[B],
    sb: &[usize],
    f: impl Fn(A, B) -> O + Sync,
) -> R<(Vec<usize>, Vec<O>)> {
    let shape = broadcast_shapes(sa, sb)?;
    let n: usize = shape.iter().product();
    let mut out = vec![O::default(); n];
    if sa == shape.as_slice() && sb == shape.as_slice() {
        if n >= PAR_MIN {
            out.par_iter_mut()
                .zip(a.par_iter().zip(b.par_iter()))
                .for_each(|(o, (x, y))| *o = f(*x, *y));
        } else {
            out.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (x, y))| *o = f(*x, *y));
        }
    } else if sa == shape.as_slice() && (b.len() == 1 || shape.ends_with(sb) && !sb.is_empty()) {
        let m = b.len();
        let body = |(o, x): (&mut [O], &[A])| {
            o.iter_mut()
                .zip(x)
                .zip(b.iter().cycle())
                .for_each(|((o, x), y)| *o = f(*x, *y))
        };
        if n >= PAR_MIN && m <= 4096 {
            let c = m * (4096 / m).max(1);
            out.par_chunks_mut(c).zip(a.par_chunks(c)).for_each(body);
        } else {
            out.chunks_mut(m.max(1))
                .zip(a.chunks(m.max(1)))
                .for_each(body);
        }
    } else if sb == shape.as_slice() && (a.len() == 1 || shape.ends_with(sa) && !sa.is_empty()) {
        let m = a.len();
        out.chunks_mut(m.max(1))
            .zip(b.chunks(m.max(1)))
            .for_each(|(o, y)| {
                o.iter_mut()
                    .zip(y)
                    .zip(a.iter().cycle())
                    .for_each(|((o, y), x)| *o = f(*x, *y))
            });
    } else {
        let ia = broadcast_index_map(sa, &shape);
        let ib = broadcast_index_map(sb, &shape);
        out.iter_mut()
            .enumerate()
            .for_each(|(i, o)| *o = f(a[ia[i]], b[ib[i]]));
    }
    Ok((shape, out))
}

pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> R<Tensor> {
    if a.dtype() != b.dtype() {
        return Err(EvalError::DTypesDiffer {
            what: "operand",
            a: a.dtype(),
            b: b.dtype(),
        });
    }
    let (sa, sb) = (&a.shape, &b.shape);
    if op.is_logical() {
        let (Data::Bool(x), Data::Bool(y)) = (&a.data, &b.data) else {
            return Err(EvalError::DType {
                what: "operands",
                expected: "bool",
                found: a.dtype(),
            });
        };
        let f = |p: bool, q: bool| match op {
            BinaryOp::And => p && q,
            BinaryOp::Or => p || q,
            _ => p ^ q,
        };
        let (s, v) = zip_broadcast(x, sa, y, sb, f)?;
        return Ok(Tensor::new(s, Data::Bool(v)));
    }
    if op.is_comparison() {
        let (s, v) = match (&a.data, &b.data) {
            (Data::F32(x), Data::F32(y)) => zip_broadcast(x, sa, y, sb, |p, q| compare(op, p, q))?,
            (Data::Bool(x), Data::Bool(y)) => {
                zip_broadcast(x, sa, y, sb, |p, q| compare(op, p, q))?
            }
            (d, e) if d.dtype().is_float() => {
                zip_broadcast(&d.to_f32(), sa, &e.to_f32(), sb, |p, q| compare(op, p, q))?
            }
            (d, e) => zip_broadcast(&d.to_i64(), sa, &e.to_i64(), sb, |p, q| compare(op, p, q))?,
        };
        return Ok(Tensor::new(s, Data::Bool(v)));
    }
    match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => {
            let (s, v) = zip_broadcast(x, sa, y, sb, |p, q| binary_f32(op, p, q))?;
            Ok(Tensor::f32(s, v))
        }
        (Data::F16(_) | Data::BF16(_), _) => {
            binary(op, &a.cast(DType::F32), &b.cast(DType::F32)).map(|r| r.cast(a.dtype()))
        }
        (Data::Bool(_), _) => Err(EvalError::DType {
            what: "operands",
            expected: "numbers",
            found: DType::Bool,
        }),
        (x, y) => {
            let err = std::sync::Mutex::new(None);
            let (s, v) = zip_broadcast(&x.to_i64(), sa, &y.to_i64(), sb, |p, q| {
                binary_i64(op, p, q).unwrap_or_else(|e| {
                    *err.lock().unwrap() = Some(e);
                    0
                })
            })?;
            if let Some(e) = err.into_inner().unwrap() {
                return Err(e);
            }
            Ok(Tensor::new(s, Data::I64(v).cast(a.dtype())))
        }
    }
}

/// `cond ? a : b`, broadcast.
pub fn where_(c: &Tensor, a: &Tensor, b: &Tensor) -> R<Tensor> {
    let Data::Bool(cv) = &c.data else {
        return Err(EvalError::DType {
            what: "condition",
            expected: "bool",
            found: c.dtype(),
        });
    };
    let shape = broadcast_shapes(&broadcast_shapes(&c.shape, &a.shape)?, &b.shape)?;
    let ic = broadcast_index_map(&c.shape, &shape);
    let ia = broadcast_index_map(&a.shape, &shape);
    let ib = broadcast_index_map(&b.shape, &shape);
    // pick from a or b element by element, keeping the type
    let ta = a.data.gather(&ia);
    let tb = b.data.gather(&ib);
    let pick = |i: usize| cv[ic[i]];
    let data = match (ta, tb) {
        (Data::F32(x), Data::F32(y)) => Data::F32(
            (0..x.len())
                .map(|i| if pick(i) { x[i] } else { y[i] })
                .collect(),
        ),
        (Data::I64(x), Data::I64(y)) => Data::I64(
            (0..x.len())
                .map(|i| if pick(i) { x[i] } else { y[i] })
                .collect(),
        ),
        (Data::Bool(x), Data::Bool(y)) => Data::Bool(
            (0..x.len())
                .map(|i| if pick(i) { x[i] } else { y[i] })
                .collect(),
        ),
        (x, y) => {
            let t = x.dtype();
            let (x, y) = (x.to_f64(), y.to_f64());
            let v: Vec<f64> = (0..x.len())
                .map(|i| if pick(i) { x[i] } else { y[i] })
                .collect();
            if t.is_float() {
                Data::F32(v.iter().map(|&z| z as f32).collect()).cast(t)
            } else {
                Data::I64(v.iter().map(|&z| z as i64).collect()).cast(t)
            }
        }
    };
    Ok(Tensor::new(shape, data))
}

/// Splits a shape around an axis: (outer, axis length, inner).
pub fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Softmax (or log-softmax) over one axis.
pub fn softmax(t: &Tensor, axis: usize, log: bool) -> Tensor {
    let x = t.to_f32_vec();
    let (outer, n, inner) = around(&t.shape, axis);
    let mut out = vec![0f32; x.len()];
    let row = |o: &mut [f32], xs: &[f32]| {
        for i in 0..inner {
            let mut m = f32::NEG_INFINITY;
            for j in 0..n {
                m = m.max(xs[j * inner + i]);
            }
            let mut s = 0f32;
            for j in 0..n {
                let e = (xs[j * inner + i] - m).exp();
                o[j * inner + i] = e;
                s += e;
            }
            for j in 0..n {
                let v = &mut o[j * inner + i];
                *v = if log {
                    xs[j * inner + i] - m - s.ln()
                } else {
                    *v / s
                };
            }
        }
    };
    let chunk = (n * inner).max(1);
    if outer > 1 && x.len() >= PAR_MIN {
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, xs)| row(o, xs));
    } else {
        out.chunks_mut(chunk)
            .zip(x.chunks(chunk))
            .for_each(|(o, xs)| row(o, xs));
    }
    Tensor::f32(t.shape.clone(), out).cast(t.dtype())
}

/// Layer norm (with `center`) or RMS norm over the trailing `cols` elements of each row.
pub fn norm(
    t: &Tensor,
    cols: usize,
    scale: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    center: bool,
) -> Tensor {
    let x = t.to_f32_vec();
    let mut out = vec![0f32; x.len()];
    let body = |(o, xs): (&mut [f32], &[f32])| {
        let n = xs.len() as f32;
        let mean = if center {
            xs.iter().map(|&v| v as f64).sum::<f64>() as f32 / n
        } else {
            0.0
        };
        let var = xs.iter().map(|&v| ((v - mean) as f64).powi(2)).sum::<f64>() as f32 / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, (o, &v)) in o.iter_mut().zip(xs).enumerate() {
            let mut y = (v - mean) * inv * scale[j % scale.len()];
            if let Some(b) = bias {
                y += b[j % b.len()];
            }
            *o = y;
        }
    };
    let cols = cols.max(1);
    if x.len() >= PAR_MIN {
        out.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .for_each(body);
    } else {
        out.chunks_mut(cols).zip(x.chunks(cols)).for_each(body);
    }
    Tensor::f32(t.shape.clone(), out).cast(t.dtype())
}

/// Permutes dimensions.
pub fn transpose(t: &Tensor, perm: &[usize]) -> Tensor {
    let shape: Vec<usize> = perm.iter().map(|&p| t.shape[p]).collect();
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return t.clone();
    }
    let st = strides(&t.shape);
    let pst: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let n = t.numel();
    let mut idx = Vec::with_capacity(n);
    let mut counter = vec![0usize; shape.len()];
    let mut cur = 0usize;
    for _ in 0..n {
        idx.push(cur);
        for d in (0..shape.len()).rev() {
            counter[d] += 1;
            cur += pst[d];
            if counter[d] < shape[d] {
                break;
            }
            cur -= pst[d] * counter[d];
            counter[d] = 0;
        }
    }
    Tensor::new(shape, t.data.gather(&idx))
}

/// Rotary embedding of `x [B, S, H, D]` at `pos [B, S]`.
pub fn rope(x: &Tensor, pos: &[i64], base: f32, mode: RopeMode, dims: usize) -> Tensor {
    let (h, d) = (x.shape[2], x.shape[3]);
    let mut v = x.to_f32_vec();
    let half = dims / 2;
    let inv: Vec<f64> = (0..half)
        .map(|i| (base as f64).powf(-((2 * i) as f64) / dims as f64))
        .collect();
    v.par_chunks_mut(h * d).enumerate().for_each(|(bs, row)| {
        // positions are [B, S] or [1, S] shared by every batch row
        let p = pos[bs % pos.len().max(1)] as f64;
        let cs: Vec<(f32, f32)> = inv
            .iter()
            .map(|f| ((p * f).cos() as f32, (p * f).sin() as f32))
            .collect();
        for head in row.chunks_mut(d) {
            for (i, &(c, sn)) in cs.iter().enumerate() {
                let (i0, i1) = match mode {
                    RopeMode::Interleaved => (2 * i, 2 * i + 1),
                    RopeMode::Half => (i, i + half),
                };
                let (x0, x1) = (head[i0], head[i1]);
                head[i0] = x0 * c - x1 * sn;
                head[i1] = x0 * sn + x1 * c;
            }
        }
    });
    Tensor::f32(x.shape.clone(), v).cast(x.dtype())
}

/// Attention over `q [B, H, S, D]`, `k [B, Hk, T, D]`, `v [B, Hk, T, Dv]` with an optional
/// additive mask broadcast to `[B, H, S, T]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
    scale: f32,
) -> R<Tensor> {
    let (b, h, s, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let (bk, hk, t, dk) = (k.shape[0], k.shape[1], k.shape[2], k.shape[3]);
    let dv = v.shape[3];
    if bk != b || v.shape[0] != b || dk != d || v.shape[1] != hk || v.shape[2] != t {
        return Err(EvalError::Attention {
            q: q.shape.clone(),
            k: k.shape.clone(),
            v: v.shape.clone(),
        });
    }
    if hk == 0 || h % hk != 0 {
        return Err(EvalError::Heads {
            heads: h,
            kv_heads: hk,
        });
    }
    if causal && t < s {
        return Err(EvalError::Causal {
            keys: t,
            queries: s,
        });
    }
    let (qv, kv, vv) = (q.to_f32_vec(), k.to_f32_vec(), v.to_f32_vec());
    let mask = match mask {
        Some(m) => {
            let full = [b, h, s, t];
            broadcast_shapes(&m.shape, &full).map_err(|_| EvalError::BroadcastTo {
                what: "mask",
                shape: m.shape.clone(),
                to: full.to_vec(),
            })?;
            Some(broadcast_to(&m.cast(DType::F32), &full).to_f32_vec())
        }
        None => None,
    };
    let group = h / hk;
    let mut out = vec![0f32; b * h * s * dv];
    out.par_chunks_mut(s * dv).enumerate().for_each(|(bh, o)| {
        let (bi, hi) = (bh / h, bh % h);
        let kh = hi / group;
        let qs = &qv[bh * s * d..(bh + 1) * s * d];
        let ks = &kv[(bi * hk + kh) * t * d..(bi * hk + kh + 1) * t * d];
        let vs = &vv[(bi * hk + kh) * t * dv..(bi * hk + kh + 1) * t * dv];
        let mut p = vec![0f32; s * t];
        gemm_f32(s, t, d, qs, d as isize, 1, ks, 1, d as isize, &mut p, false);
        for i in 0..s {
            let row = &mut p[i * t..(i + 1) * t];
            let limit = if causal { i + t - s + 1 } else { t };
            let mrow = mask
                .as_ref()
                .map(|m| &m[(bh * s + i) * t..(bh * s + i + 1) * t]);
            let mut mx = f32::NEG_INFINITY;
            for (j, x) in row.iter_mut().enumerate() {
                *x = if j < limit {
                    *x * scale + mrow.map_or(0.0, |m| m[j])
                } else {
                    f32::NEG_INFINITY
                };
                mx = mx.max(*x);
            }
            let mut sum = 0f32;
            for x in row.iter_mut() {
                *x = if mx == f32::NEG_INFINITY {
                    0.0
                } else {
                    (*x - mx).exp()
                };
                sum += *x;
            }
            if sum > 0.0 {
                row.iter_mut().for_each(|x| *x /= sum);
            }
        }
        gemm_f32(s, dv, t, &p, t as isize, 1, vs, dv as isize, 1, o, false);
    });
    Ok(Tensor::f32(vec![b, h, s, dv], out).cast(q.dtype()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_with_transposed_weight() {
        // x [2, 3] · wᵀ for w [2, 3]
        let x = [1., 2., 3., 4., 5., 6.];
        let w = [1., 0., 0., 0., 1., 1.];
        assert_eq!(
            linear(&x, 2, 3, &w, 2, Some(&[10., 20.])),
            vec![11., 25., 14., 31.]
        );
    }

    #[test]
    fn broadcast_map_matches_numpy() {
        assert_eq!(
            broadcast_index_map(&[3, 1], &[3, 2]),
            vec![0, 0, 1, 1, 2, 2]
        );
        assert_eq!(broadcast_index_map(&[2], &[3, 2]), vec![0, 1, 0, 1, 0, 1]);
        assert_eq!(broadcast_index_map(&[], &[2]), vec![0, 0]);
    }

    #[test]
    fn causal_attention_with_past() {
        // one head, 2 queries over 3 keys (one cached): query 0 sees keys 0..=1
        let q = Tensor::f32(vec![1, 1, 2, 1], vec![0., 0.]);
        let k = Tensor::f32(vec![1, 1, 3, 1], vec![0., 0., 0.]);
        let v = Tensor::f32(vec![1, 1, 3, 1], vec![1., 3., 8.]);
        let o = attention(&q, &k, &v, None, true, 1.0).unwrap();
        assert_eq!(o.as_f32().unwrap(), &[2.0, 4.0]);
    }

    #[test]
    fn integer_mod_follows_divisor_sign() {
        let a = Tensor::i64(vec![3], vec![-7, 7, 6]);
        let b = Tensor::i64(vec![3], vec![3, -3, 3]);
        assert_eq!(
            binary(BinaryOp::Mod, &a, &b).unwrap().as_i64().unwrap(),
            &[2, -2, 0]
        );
        assert!(binary(BinaryOp::Div, &a, &Tensor::i64(vec![1], vec![0])).is_err());
    }
}
