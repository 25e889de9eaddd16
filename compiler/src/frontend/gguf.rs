//! gguf frontend (being written).

use super::{FrontendError, Model, Result};
use std::path::Path;

pub fn load(path: &Path) -> Result<Model> {
    Err(FrontendError::unsupported(path, "the gguf frontend is not written yet"))
}
