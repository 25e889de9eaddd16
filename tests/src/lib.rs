//! Shared helpers for the integration tests: where the pinned assets live (fetching them
//! through the setup script when they are missing) and small comparison utilities.

pub mod agreement;
pub mod assets;
pub mod cpu;
pub mod probes;
pub use assets::*;

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
