//! The one weight-edit API: how compression passes find linear layers, read a weight as f32,
//! replace it (dense f32, an encoding, 2:4), add to a layer's bias, and re-infer types after a
//! shape changed. Passes change weights only through these and the graph's own editing
//! methods ([`Graph::replace_weight`], [`Graph::replace_uses_except`]).

use crate::PassError;
use llmc_ir::{
    Bytes, DType, Encoding, Format, Graph, Op, Tensor, TensorType, ValueDef, ValueId, WeightData,
};
use std::collections::BTreeSet;

/// A row-major matrix: values, rows, columns.
pub type Matrix = (Vec<f32>, usize, usize);

fn edit_error(what: &'static str, weight: &str, msg: impl ToString) -> PassError {
    PassError::Edit {
        what,
        weight: weight.to_string(),
        msg: msg.to_string(),
    }
}

/// The index of the weight a value is, if it is one.
pub fn weight_index(g: &Graph, v: ValueId) -> Option<usize> {
    match g.def(v) {
        ValueDef::Weight(w) => Some(w as usize),
        _ => None,
    }
}

/// A weight's fixed dimensions as `(rows, cols)`: the last axis is the columns, the others
/// the rows (0 for a symbolic dimension).
pub fn rows_cols(g: &Graph, i: usize) -> (usize, usize) {
    let dims: Vec<u64> = g.weights[i]
        .ty
        .shape
        .0
        .iter()
        .map(|d| d.fixed().unwrap_or(0))
        .collect();
    let (r, c) = llmc_ir::types::rows_cols(&dims);
    (r as usize, c as usize)
}

/// A weight's values as f32, with its rows and columns.
pub fn weight_f32(g: &Graph, i: usize) -> Result<Matrix, PassError> {
    let w = &g.weights[i];
    let data = w.data.as_ref().ok_or_else(|| {
        edit_error(
            "read",
            &w.name,
            "the weight has no data (a graph parsed from text?)",
        )
    })?;
    let (rows, cols) = rows_cols(g, i);
    let t = data
        .decode_f32(&w.ty)
        .map_err(|e| edit_error("read", &w.name, e))?;
    Ok((t.to_f32_vec(), rows, cols))
}

/// The origin of weight `i`'s data with `note` appended: where the new data came from.
pub fn noted_origin(g: &Graph, i: usize, note: &str) -> String {
    let origin = g.weights[i].data.as_ref().map_or("", |d| d.origin.as_str());
    format!("{origin} ({note})")
}

/// Replaces weight `i` by `data` of type `ty` (an encoding of the same or a new shape).
pub fn replace(g: &mut Graph, i: usize, ty: TensorType, data: WeightData) -> Result<(), PassError> {
    g.replace_weight(i, ty, data)
        .map_err(|e| edit_error("replace", &g.weights[i].name, e))
}

/// Replaces weight `i` by canonical `bytes` of encoding `enc`, keeping its shape.
pub fn replace_encoded(
    g: &mut Graph,
    i: usize,
    enc: Encoding,
    bytes: Vec<u8>,
    note: &str,
) -> Result<(), PassError> {
    let ty = TensorType {
        shape: g.weights[i].ty.shape.clone(),
        enc,
    };
    let data = WeightData::new(
        Bytes::owned(bytes),
        Format::Canonical,
        noted_origin(g, i, note),
    );
    replace(g, i, ty, data)
}

/// Replaces a weight's values by dense f32 ones of the same shape.
pub fn set_weight_f32(
    g: &mut Graph,
    i: usize,
    values: Vec<f32>,
    note: &str,
) -> Result<(), PassError> {
    let shape: Vec<usize> = g.weights[i]
        .ty
        .shape
        .0
        .iter()
        .map(|d| d.fixed().unwrap_or(0) as usize)
        .collect();
    set_weight_f32_shaped(g, i, shape, values, note)
}

/// Replaces a weight by dense f32 values of a new shape (its readers must be re-inferred:
/// [`reinfer`]).
pub fn set_weight_f32_shaped(
    g: &mut Graph,
    i: usize,
    shape: Vec<usize>,
    values: Vec<f32>,
    note: &str,
) -> Result<(), PassError> {
    let ty = TensorType::fixed(&shape, DType::F32);
    let data = WeightData::from_tensor(&Tensor::f32(shape, values), noted_origin(g, i, note));
    replace(g, i, ty, data)
}

/// The kept values (`[rows, cols/2]`) and their 2-bit positions of a weight with at most two
/// non-zeros in every group of four consecutive inputs, as `Encoding::Sparse24` stores them;
/// `None` when some group holds more or `cols` is no multiple of 4. A group with fewer than
/// two non-zeros keeps zeros in its first free positions.
pub fn split_2of4(w: &[f32], rows: usize, cols: usize) -> Option<(Vec<f32>, Vec<u8>)> {
    if cols % 4 != 0 || w.len() != rows * cols {
        return None;
    }
    let mut kept = Vec::with_capacity(w.len() / 2);
    let mut pos = Vec::with_capacity(w.len() / 2);
    for group in w.chunks_exact(4) {
        let mut at: Vec<u8> = (0..4u8).filter(|&j| group[j as usize] != 0.0).collect();
        if at.len() > 2 {
            return None;
        }
        let mut j = 0u8;
        while at.len() < 2 {
            if !at.contains(&j) {
                at.push(j);
            }
            j += 1;
        }
        at.sort_unstable();
        for &j in &at {
            kept.push(group[j as usize]);
            pos.push(j);
        }
    }
    Some((kept, pos))
}

/// Replaces weight `i` by its 2:4 form: `values`, the kept values' canonical bytes in
/// `inner`, and their positions (one per kept value, from [`split_2of4`]).
pub fn set_weight_sparse24(
    g: &mut Graph,
    i: usize,
    inner: Encoding,
    mut values: Vec<u8>,
    pos: &[u8],
    note: &str,
) -> Result<(), PassError> {
    let (rows, cols) = rows_cols(g, i);
    let half = cols / 2;
    for r in 0..rows {
        values.extend(llmc_ir::weights::pack_codes(
            &pos[r * half..(r + 1) * half],
            2,
        ));
    }
    replace_encoded(
        g,
        i,
        Encoding::Sparse24(Box::new(inner)),
        values,
        &format!("{note}, 2:4"),
    )
}

/// Adds `b` to the bias of the linear layer at `node`: to its bias weight, or as a new f32
/// weight named `name` when it has none. False (and nothing changed) when its bias is computed
/// by the graph rather than stored.
pub fn add_to_bias(
    g: &mut Graph,
    node: usize,
    name: &str,
    b: &[f32],
    note: &str,
) -> Result<bool, PassError> {
    match g.nodes[node].inputs.get(2).copied() {
        Some(bv) => {
            let Some(bi) = weight_index(g, bv) else {
                return Ok(false);
            };
            let (mut v, _, _) = weight_f32(g, bi)?;
            v.iter_mut().zip(b).for_each(|(a, d)| *a += d);
            set_weight_f32(g, bi, v, note)?;
        }
        None => {
            let bv = g
                .add_weight(
                    name,
                    TensorType::fixed(&[b.len()], DType::F32),
                    Some(WeightData::from_tensor(
                        &Tensor::f32(vec![b.len()], b.to_vec()),
                        note.to_string(),
                    )),
                )
                .map_err(|e| edit_error("add bias", name, e))?;
            g.nodes[node].inputs.push(bv);
        }
    }
    Ok(true)
}

/// Every node's result types inferred anew, in order (after weights changed shape).
pub fn reinfer(g: &mut Graph) -> Result<(), PassError> {
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        let tys = g
            .infer_node(&n.op, &n.inputs)
            .map_err(|e| PassError::Reinfer {
                node: i,
                source: Box::new(e),
            })?;
        for (k, ty) in tys.into_iter().enumerate() {
            let o = g.nodes[i].outputs[k];
            g.values[o.0 as usize].ty = ty;
        }
    }
    Ok(())
}

/// The weights of linear layers (indices, each once) and, for each, the value its linear
/// layer reads; the output head's only when `head`. What quantization and pruning change.
pub fn linear_weights(g: &Graph, head: bool) -> Vec<(usize, ValueId)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for n in &g.nodes {
        if let Op::Linear { .. } = n.op {
            let is_head = g.outputs.iter().any(|(_, o)| n.outputs.contains(o));
            if is_head && !head {
                continue;
            }
            if let Some(w) = weight_index(g, n.inputs[1]) {
                if seen.insert(w) {
                    out.push((w, n.inputs[0]));
                }
            }
        }
    }
    out.sort();
    out
}

/// The [`linear_weights`] that are not palettes: a palette is a weight's compression
/// already, not a source to round or prune again.
pub fn unpalettized_linear_weights(g: &Graph, head: bool) -> Vec<(usize, ValueId)> {
    linear_weights(g, head)
        .into_iter()
        .filter(|&(i, _)| !matches!(g.weights[i].ty.enc, Encoding::Palette(_)))
        .collect()
}

/// `(node, weight, input)` of each linear layer that alone reads its 2-D weight (the output
/// head's only when `head`): the layers a rewrite may split without touching anything else
/// (a tied embedding, say).
pub fn sole_linear_sites(g: &Graph, head: bool) -> Vec<(usize, usize, ValueId)> {
    let users = g.users();
    linear_weights(g, head)
        .into_iter()
        .filter_map(|(w, x)| {
            let v = g.weights[w].value;
            let [node] = users[v.0 as usize][..] else {
                return None;
            };
            let n = &g.nodes[node];
            (n.inputs[1] == v && n.inputs[0] == x && g.weights[w].ty.rank() == 2)
                .then_some((node, w, x))
        })
        .collect()
}

/// Bytes a weight takes in its encoding.
pub fn weight_bytes(g: &Graph, i: usize) -> u64 {
    let t = &g.weights[i].ty;
    let dims: Option<Vec<u64>> = t.shape.0.iter().map(|d| d.fixed()).collect();
    dims.and_then(|d| t.enc.byte_size(&d)).unwrap_or(0)
}

/// Bytes all of `g`'s weights take in their encodings.
pub fn all_weight_bytes(g: &Graph) -> u64 {
    (0..g.weights.len()).map(|i| weight_bytes(g, i)).sum()
}
