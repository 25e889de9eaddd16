//! Token samplers: greedy, or temperature with top-k and top-p, from a seeded generator.

/// How to pick the next token from logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0x5eed,
        }
    }
}

/// A sampler with its random state.
pub struct Sampler {
    cfg: SamplerConfig,
    state: u64,
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        // splitmix64 of the seed, so that seed 0 works too
        let mut z = cfg.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Sampler {
            cfg,
            state: (z ^ (z >> 31)) | 1,
            scratch: Vec::new(),
        }
    }

    /// The next 64 random bits (xorshift64*).
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform number in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// An index drawn uniformly from `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }

    /// Picks a token index from logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.temperature <= 0.0 || logits.len() <= 1 {
            return argmax(logits);
        }
        let t = self.cfg.temperature;
        self.scratch.clear();
        self.scratch
            .extend(logits.iter().enumerate().map(|(i, &l)| (l / t, i as u32)));
        self.scratch.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        let mut keep = self.scratch.len();
        if self.cfg.top_k > 0 {
            keep = keep.min(self.cfg.top_k);
        }
        let max = self.scratch[0].0;
        let mut sum = 0f32;
        for e in &mut self.scratch[..keep] {
            e.0 = (e.0 - max).exp();
            sum += e.0;
        }
        if self.cfg.top_p < 1.0 {
            let mut acc = 0f32;
            for (i, e) in self.scratch[..keep].iter().enumerate() {
                acc += e.0 / sum;
                if acc >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            sum = self.scratch[..keep].iter().map(|e| e.0).sum();
        }
        let mut r = self.uniform() * sum;
        for e in &self.scratch[..keep] {
            r -= e.0;
            if r <= 0.0 {
                return e.1;
            }
        }
        self.scratch[keep - 1].1
    }
}

/// Index of the largest value (the first on ties; NaN never wins).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_covers_its_range_evenly() {
        let mut s = Sampler::new(SamplerConfig::default());
        let mut seen = [0usize; 5];
        for _ in 0..5000 {
            seen[s.below(5)] += 1;
        }
        assert!(seen.iter().all(|&c| (850..1150).contains(&c)), "{seen:?}");
    }

    #[test]
    fn greedy_takes_the_largest() {
        let mut s = Sampler::new(SamplerConfig::default());
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_sampling_follows_probabilities() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 7,
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&[0.0, 1.0, 0.5]), 1);
        }
        // two tokens with probabilities 0.73 / 0.27: the frequencies come out close
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 1,
        });
        let n = 20000;
        let ones = (0..n).filter(|_| s.sample(&[0.0, 1.0]) == 1).count() as f32 / n as f32;
        let p = 1.0f32.exp() / (1.0 + 1.0f32.exp());
        assert!((ones - p).abs() < 0.02, "{ones} vs {p}");
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // probabilities ~0.84, 0.11, 0.04: top_p 0.8 keeps only the first
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.8,
            seed: 3,
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&[3.0, 1.0, 0.0]), 0);
        }
    }
}
