//! Weight sharing: `palettize` (each weight's values drawn from small k-means codebooks,
//! indices stored in place of values and looked up in the kernel).

pub mod palettize;
