//! What every pass builds on, and the only modules passes share: the [`Pass`](pass::Pass)
//! trait and typed options; the pass manager; the rewrite driver and the
//! symbolic shape arithmetic its patterns read; the weight-edit API; the linear algebra and
//! quantization grids of the compression methods; the next-token loss check; and the linear
//! weights as the pipeline found them.

pub mod check;
pub mod edit;
pub mod grid;
pub mod linalg;
pub mod manager;
pub mod originals;
pub mod pass;
pub mod report;
pub mod rewrite;
pub(crate) mod symbolic;
