//! Pruning: weights set to zero (`prune`: magnitude, Wanda, SparseGPT; unstructured or n:m,
//! 2:4 stored compressed), and parts of the graph removed outright (`prune-ffn`: FFN channels;
//! `prune-heads`: attention heads or KV groups; `drop-layers`: whole decoder layers), each
//! with an optional compensation checked on the next-token loss.

mod compensate;
pub mod ffn;
pub mod heads;
pub mod layers;
pub mod unstructured;
