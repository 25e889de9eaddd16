//! llmc runtime: what a host program needs beside a bundle. Depends on nothing else in llmc.

pub mod sampler;

pub use sampler::{Sampler, SamplerConfig};
