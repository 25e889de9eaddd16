//! The linear weights as a pipeline found them: the reference that passes comparing against
//! the uncompressed model (local distillation) read, kept current by passes that rescale a
//! weight's input columns without changing the function (SmoothQuant, AWQ).

use crate::core::edit::{linear_weights, Matrix};
use llmc_ir::{Graph, TensorType, WeightData, WeightError};
use std::collections::BTreeMap;

/// One linear weight as the pipeline found it.
#[derive(Clone, Debug)]
pub struct Original {
    pub ty: TensorType,
    pub data: WeightData,
    pub hash: u64,
    /// Input columns multiplied since (SmoothQuant, AWQ): the same function, rescaled.
    col_scale: Option<Vec<f32>>,
}

/// The linear layers' weights as the pipeline found them, by name.
#[derive(Clone, Debug, Default)]
pub struct Originals {
    weights: BTreeMap<String, Original>,
}

impl Originals {
    /// Every linear layer's weight of `g` (the output head's included). The data is shared,
    /// not copied.
    pub fn snapshot(g: &Graph) -> Originals {
        let weights = linear_weights(g, true)
            .into_iter()
            .filter_map(|(i, _)| {
                let w = &g.weights[i];
                let data = w.data.clone()?;
                Some((
                    w.name.clone(),
                    Original {
                        ty: w.ty.clone(),
                        data,
                        hash: w.hash,
                        col_scale: None,
                    },
                ))
            })
            .collect();
        Originals { weights }
    }

    /// Records that weight `name`'s input columns were multiplied by `s` (its input divided
    /// by `s`): the reference follows, so it keeps computing the same function.
    pub fn scale_columns(&mut self, name: &str, s: &[f32]) {
        if let Some(o) = self.weights.get_mut(name) {
            match &mut o.col_scale {
                Some(c) => c.iter_mut().zip(s).for_each(|(a, b)| *a *= b),
                None => o.col_scale = Some(s.to_vec()),
            }
        }
    }

    /// Weight `name` as it was, if it was there when the snapshot was taken.
    pub fn get(&self, name: &str) -> Option<&Original> {
        self.weights.get(name)
    }

    /// Whether weight `name` was there when the snapshot was taken.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains_key(name)
    }

    /// The weight `name` as it was, in f32, with its rescalings: values, rows, columns.
    pub fn weight_f32(&self, name: &str) -> Option<Result<Matrix, WeightError>> {
        let o = self.weights.get(name)?;
        Some((|| {
            let dims: Vec<u64> = o.ty.shape.0.iter().filter_map(|d| d.fixed()).collect();
            let (rows, cols) = llmc_ir::types::rows_cols(&dims);
            let mut v = o.data.decode_f32(&o.ty)?.to_f32_vec();
            if let Some(s) = &o.col_scale {
                for row in v.chunks_mut(cols as usize) {
                    row.iter_mut().zip(s).for_each(|(x, s)| *x *= s);
                }
            }
            Ok((v, rows as usize, cols as usize))
        })())
    }
}
