//! llmc runtime: what a host program needs beside a bundle — the weights-file format and its
//! checks, a thread pool implementing the `parallel_for` hook, a loader for host bundles, and
//! samplers. Depends on nothing else in llmc.

pub mod bundle;
pub mod pool;
pub mod sampler;
pub mod weights;

pub use bundle::{Bundle, BundleError};
pub use pool::ThreadPool;
pub use sampler::{Sampler, SamplerConfig};
pub use weights::Status;
