//! Low-rank factorization: `lowrank` (W ≈ L·R by SVD or SVD-LLM, one linear layer becomes
//! two) and `caldera` (W ≈ Q + L·R: a low-bit backbone plus quantized low-rank factors).

pub mod caldera;
pub mod svd;
