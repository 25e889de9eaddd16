//! The weights file of a bundle: a 64-byte header, then every tensor at a 64-byte aligned
//! offset, with a checksum over the data that generated code checks at init.
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `LLMCWGT\0` |
//! | 8 | format version (u32 LE) |
//! | 12 | header size (u32 LE, 64) |
//! | 16 | total file size in bytes (u64 LE) |
//! | 24 | model hash: ties the file to the code built with it (u64 LE) |
//! | 32 | checksum of bytes `64..total` (u64 LE, [`checksum`]) |
//! | 40 | number of tensors (u32 LE) |
//! | 44 | alignment (u32 LE, 64) |
//! | 48 | reserved, zero |

pub const MAGIC: [u8; 8] = *b"LLMCWGT\0";
/// Magic of an entropy-coded weights file (`llmc build --entropy`, see [`encode`]).
pub const CODED_MAGIC: [u8; 8] = *b"LLMCRANS";
/// Bytes before the chunk table: magic, decoded size (u64 LE), checksum of the decoded
/// file's header (its first 64 bytes, u64 LE, [`checksum`]), chunk count (u64 LE).
pub const CODED_HEADER: usize = 32;
pub const VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 64;
pub const ALIGN: usize = 64;

/// Error codes every generated entry point returns (the C header names them `LLMC_*`).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// A null pointer or a size of zero where one is needed.
    BadArgument = 1,
    /// The state buffer is smaller than the bundle's state size.
    StateTooSmall = 2,
    BadMagic = 3,
    BadVersion = 4,
    /// The weights buffer's size differs from the size in its header or in the code.
    BadWeightsSize = 5,
    /// The weights belong to another model or another build.
    WrongModel = 6,
    BadChecksum = 7,
    /// A token id outside the vocabulary.
    TokenOutOfRange = 8,
    /// The KV cache cannot hold the tokens given.
    ContextFull = 9,
    /// The state was not initialized (or was initialized for another bundle).
    NotInitialized = 10,
    /// More tokens in one call than the bundle was built for.
    TooManyTokens = 11,
    /// An input dimension outside what the bundle was built for.
    BadDimension = 12,
    /// An entropy-coded weights file is damaged.
    BadCoding = 13,
}

impl Status {
    pub const ALL: [Status; 14] = [
        Status::Ok,
        Status::BadArgument,
        Status::StateTooSmall,
        Status::BadMagic,
        Status::BadVersion,
        Status::BadWeightsSize,
        Status::WrongModel,
        Status::BadChecksum,
        Status::TokenOutOfRange,
        Status::ContextFull,
        Status::NotInitialized,
        Status::TooManyTokens,
        Status::BadDimension,
        Status::BadCoding,
    ];

    pub fn from_code(code: i32) -> Option<Status> {
        Status::ALL.into_iter().find(|s| *s as i32 == code)
    }

    /// The macro name in the C header.
    pub fn c_name(self) -> &'static str {
        match self {
            Status::Ok => "LLMC_OK",
            Status::BadArgument => "LLMC_ERR_ARGUMENT",
            Status::StateTooSmall => "LLMC_ERR_STATE_SIZE",
            Status::BadMagic => "LLMC_ERR_WEIGHTS_MAGIC",
            Status::BadVersion => "LLMC_ERR_WEIGHTS_VERSION",
            Status::BadWeightsSize => "LLMC_ERR_WEIGHTS_SIZE",
            Status::WrongModel => "LLMC_ERR_WEIGHTS_MODEL",
            Status::BadChecksum => "LLMC_ERR_WEIGHTS_CHECKSUM",
            Status::TokenOutOfRange => "LLMC_ERR_TOKEN_RANGE",
            Status::ContextFull => "LLMC_ERR_CONTEXT_FULL",
            Status::NotInitialized => "LLMC_ERR_NOT_INITIALIZED",
            Status::TooManyTokens => "LLMC_ERR_TOO_MANY_TOKENS",
            Status::BadDimension => "LLMC_ERR_DIMENSION",
            Status::BadCoding => "LLMC_ERR_WEIGHTS_CODING",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadArgument => "a null pointer or an empty size was passed",
            Status::StateTooSmall => "the state buffer is smaller than the bundle's state size",
            Status::BadMagic => "the weights are not an llmc weights file (bad magic)",
            Status::BadVersion => "the weights file has a format version this bundle does not read",
            Status::BadWeightsSize => {
                "the weights file's size is not the one this bundle was built with"
            }
            Status::WrongModel => "the weights file belongs to another model or build",
            Status::BadChecksum => "the weights file is corrupt (checksum mismatch)",
            Status::TokenOutOfRange => "a token id is outside the vocabulary",
            Status::ContextFull => {
                "the KV cache is full: reset, or build with a larger --max-context"
            }
            Status::NotInitialized => "the state was not initialized by this bundle's init",
            Status::TooManyTokens => "more tokens in one call than the bundle's maximum",
            Status::BadDimension => "an input dimension is outside what the bundle was built for",
            Status::BadCoding => "the entropy-coded weights file is damaged: rebuild the bundle",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.describe(), self.c_name())
    }
}

const PRIME: u64 = 0x9e37_79b9_7f4a_7c15;

/// The checksum of the data region: eight 64-bit lanes over 64-byte blocks, each
/// `lane = (lane ^ word) · PRIME`, then folded. Every step is a bijection of the lane, so a
/// change to any one word always changes the result. `data.len()` must be a multiple of 64.
pub fn checksum(data: &[u8]) -> u64 {
    assert!(
        data.len() % 64 == 0,
        "checksummed data is padded to 64 bytes"
    );
    let mut acc: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    for block in data.chunks_exact(64) {
        for (i, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(block[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
            *a = (*a ^ w).wrapping_mul(PRIME);
        }
    }
    acc.iter()
        .fold(0u64, |h, &a| (h ^ a).wrapping_mul(PRIME).rotate_left(29))
}

/// Rounds up to the alignment.
pub fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Writes a weights file: `tensors` at their offsets (which must be aligned, ascending and
/// past the header), padded to a multiple of 64.
pub fn write_file(model_hash: u64, tensors: &[(usize, &[u8])]) -> Vec<u8> {
    let end = tensors
        .iter()
        .map(|(o, b)| o + b.len())
        .max()
        .unwrap_or(HEADER_SIZE)
        .max(HEADER_SIZE);
    let total = align(end);
    let mut out = vec![0u8; total];
    for (off, bytes) in tensors {
        assert!(
            *off >= HEADER_SIZE && off % ALIGN == 0,
            "tensor offset {off} must be aligned past the header"
        );
        out[*off..*off + bytes.len()].copy_from_slice(bytes);
    }
    let sum = checksum(&out[HEADER_SIZE..]);
    out[0..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
    out[16..24].copy_from_slice(&(total as u64).to_le_bytes());
    out[24..32].copy_from_slice(&model_hash.to_le_bytes());
    out[32..40].copy_from_slice(&sum.to_le_bytes());
    out[40..44].copy_from_slice(&(tensors.len() as u32).to_le_bytes());
    out[44..48].copy_from_slice(&(ALIGN as u32).to_le_bytes());
    out
}

/// What a weights file's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub total: u64,
    pub model_hash: u64,
    pub checksum: u64,
    pub tensors: u32,
}

/// Checks a weights file the way generated code's init does; `expect` gives the size and
/// model hash the code was built with.
pub fn check(bytes: &[u8], expect_total: u64, expect_hash: u64) -> Result<Header, Status> {
    if bytes.len() < HEADER_SIZE {
        return Err(if bytes.len() >= 8 && bytes[..8] == MAGIC {
            Status::BadWeightsSize
        } else {
            Status::BadMagic
        });
    }
    if bytes[..8] != MAGIC {
        return Err(Status::BadMagic);
    }
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
    let h = Header {
        version: u32_at(8),
        total: u64_at(16),
        model_hash: u64_at(24),
        checksum: u64_at(32),
        tensors: u32_at(40),
    };
    if h.version != VERSION {
        return Err(Status::BadVersion);
    }
    if h.total != bytes.len() as u64 || h.total != expect_total {
        return Err(Status::BadWeightsSize);
    }
    if h.model_hash != expect_hash {
        return Err(Status::WrongModel);
    }
    if checksum(&bytes[HEADER_SIZE..]) != h.checksum {
        return Err(Status::BadChecksum);
    }
    Ok(h)
}

/// Whether these bytes are an entropy-coded weights file.
pub fn is_coded(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..8] == CODED_MAGIC
}

/// Decoded bytes per independently coded chunk (the last may be shorter).
pub const CODED_CHUNK: usize = 1 << 20;
/// Symbol frequencies of a chunk sum to `1 << PROB_BITS`.
pub const PROB_BITS: u32 = 12;
/// The rANS state lives in `[RANS_L, RANS_L << 8)`; a chunk's coding starts and ends at `RANS_L`.
pub const RANS_L: u32 = 1 << 23;
/// Bytes of a chunk's frequency table: 256 × u16 LE.
pub const FREQ_BYTES: usize = 512;

/// Frequencies summing to `1 << PROB_BITS`, at least 1 for every byte value that occurs.
fn normalize(counts: &[u64; 256]) -> [u32; 256] {
    let total: u64 = counts.iter().sum();
    let scale = 1u64 << PROB_BITS;
    let mut f = [0u32; 256];
    for (f, &c) in f.iter_mut().zip(counts) {
        if c > 0 {
            *f = ((c * scale / total) as u32).max(1);
        }
    }
    let mut sum: i64 = f.iter().map(|&x| x as i64).sum();
    // rounding left the sum off: the most frequent values absorb the difference
    while sum != scale as i64 {
        let top = (0..256).max_by_key(|&s| f[s]).expect("256 values");
        if sum < scale as i64 {
            f[top] += (scale as i64 - sum) as u32;
            sum = scale as i64;
        } else {
            let take = (sum - scale as i64).min(f[top] as i64 - 1) as u32;
            if take == 0 {
                // every value at 1: cannot happen with 256 values and 4096 slots
                unreachable!("frequencies cannot be normalized");
            }
            f[top] -= take;
            sum -= take as i64;
        }
    }
    f
}

/// rANS-codes one chunk: its frequency table, then the stream (the final state, 4 bytes LE,
/// then the renormalization bytes in the order the decoder reads them).
fn encode_chunk(chunk: &[u8], out: &mut Vec<u8>) {
    let mut counts = [0u64; 256];
    chunk.iter().for_each(|&b| counts[b as usize] += 1);
    let freq = normalize(&counts);
    let mut cum = [0u32; 256];
    for s in 1..256 {
        cum[s] = cum[s - 1] + freq[s - 1];
    }
    freq.iter()
        .for_each(|&f| out.extend((f as u16).to_le_bytes()));
    let mut rev: Vec<u8> = Vec::with_capacity(chunk.len());
    let mut x = RANS_L;
    for &b in chunk.iter().rev() {
        let f = freq[b as usize];
        let x_max = ((RANS_L >> PROB_BITS) << 8) * f;
        while x >= x_max {
            rev.push(x as u8);
            x >>= 8;
        }
        x = ((x / f) << PROB_BITS) + (x % f) + cum[b as usize];
    }
    rev.extend(x.to_be_bytes());
    out.extend(rev.iter().rev());
}

/// Entropy-codes a weights file (lossless): the packed tensors in chunks of [`CODED_CHUNK`]
/// bytes, each rANS-coded over its own byte frequencies, behind a small header. The generated
/// code decodes it (`<name>_decode_weights`, no allocation: the caller gives the buffer),
/// and what init checks, the decoded file, is unchanged.
///
/// | offset | field |
/// |---|---|
/// | 0 | magic `LLMCRANS` |
/// | 8 | decoded size (u64 LE) |
/// | 16 | checksum of the decoded file's first 64 bytes (u64 LE) |
/// | 24 | number of chunks C (u64 LE) |
/// | 32 | end of each chunk's coding, from the end of this table (C × u64 LE) |
/// | 32 + 8C | the chunks: frequencies (256 × u16 LE, summing to 4096), then the stream |
pub fn encode(file: &[u8]) -> Vec<u8> {
    let chunks = file.len().div_ceil(CODED_CHUNK);
    let mut out = Vec::with_capacity(file.len());
    out.extend(CODED_MAGIC);
    out.extend((file.len() as u64).to_le_bytes());
    let head = &file[..HEADER_SIZE.min(file.len())];
    let mut padded = [0u8; HEADER_SIZE];
    padded[..head.len()].copy_from_slice(head);
    out.extend(checksum(&padded).to_le_bytes());
    out.extend((chunks as u64).to_le_bytes());
    let table = out.len();
    out.resize(table + 8 * chunks, 0);
    let data = out.len();
    for (i, c) in file.chunks(CODED_CHUNK).enumerate() {
        encode_chunk(c, &mut out);
        let end = (out.len() - data) as u64;
        out[table + 8 * i..table + 8 * i + 8].copy_from_slice(&end.to_le_bytes());
    }
    out
}

/// The decoded size an entropy-coded file announces (`None`: not a coded file).
pub fn coded_size(coded: &[u8]) -> Option<usize> {
    (is_coded(coded) && coded.len() >= CODED_HEADER)
        .then(|| u64::from_le_bytes(coded[8..16].try_into().expect("8 bytes")) as usize)
}

/// Decodes an entropy-coded weights file into `out` (of [`coded_size`] bytes): the reference
/// for the generated `<name>_decode_weights`, which bundles run. A damaged stream is an error
/// (every chunk must end in the state it started from, having read exactly its bytes); one
/// that still decodes to other bytes fails the weights checksum at init, as a damaged plain
/// file does.
pub fn decode(coded: &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
    let size = coded_size(coded).ok_or(DecodeError::NotCoded)?;
    if out.len() != size {
        return Err(DecodeError::Size {
            size,
            buffer: out.len(),
        });
    }
    let word = |at: usize| u64::from_le_bytes(coded[at..at + 8].try_into().expect("8 bytes"));
    let chunks = word(24) as usize;
    if chunks != size.div_ceil(CODED_CHUNK) || coded.len() < CODED_HEADER + 8 * chunks {
        return Err(DecodeError::ChunkTable);
    }
    let data = CODED_HEADER + 8 * chunks;
    let mut start = 0usize;
    for (i, dst) in out.chunks_mut(CODED_CHUNK).enumerate() {
        let end = word(CODED_HEADER + 8 * i) as usize;
        if end < start + FREQ_BYTES + 4 || end > coded.len() - data {
            return Err(DecodeError::ChunkBounds { chunk: i });
        }
        decode_chunk(&coded[data + start..data + end], dst)
            .map_err(|fault| DecodeError::Chunk { chunk: i, fault })?;
        start = end;
    }
    if data + start != coded.len() {
        return Err(DecodeError::Trailing);
    }
    let mut head = [0u8; HEADER_SIZE];
    let n = HEADER_SIZE.min(out.len());
    head[..n].copy_from_slice(&out[..n]);
    if checksum(&head) != word(16) {
        return Err(DecodeError::Header);
    }
    Ok(())
}

/// Why an entropy-coded weights file does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an entropy-coded llmc weights file")]
    NotCoded,
    #[error("decoded size {size} does not match the buffer of {buffer} bytes")]
    Size { size: usize, buffer: usize },
    #[error("entropy-coded weights are corrupt (chunk table); rebuild the bundle")]
    ChunkTable,
    #[error("entropy-coded weights are corrupt (chunk {chunk} bounds); rebuild the bundle")]
    ChunkBounds { chunk: usize },
    #[error("entropy-coded weights are corrupt (chunk {chunk}: {fault}); rebuild the bundle")]
    Chunk { chunk: usize, fault: ChunkFault },
    #[error("entropy-coded weights hold more bytes than their chunks")]
    Trailing,
    #[error("entropy-coded weights decode to a different header (corrupt file)")]
    Header,
}

/// What is wrong inside one coded chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkFault {
    #[error("frequencies")]
    Frequencies,
    #[error("initial state")]
    InitialState,
    #[error("truncated")]
    Truncated,
    #[error("final state")]
    FinalState,
}

fn decode_chunk(c: &[u8], out: &mut [u8]) -> Result<(), ChunkFault> {
    let mut freq = [0u32; 256];
    let mut cum = [0u32; 256];
    let mut slot = [0u8; 1 << PROB_BITS];
    let mut total = 0u32;
    for s in 0..256 {
        freq[s] = u16::from_le_bytes([c[2 * s], c[2 * s + 1]]) as u32;
        cum[s] = total;
        total += freq[s];
        if total > 1 << PROB_BITS {
            break;
        }
        slot[cum[s] as usize..total as usize].fill(s as u8);
    }
    if total != 1 << PROB_BITS {
        return Err(ChunkFault::Frequencies);
    }
    let stream = &c[FREQ_BYTES..];
    let mut x = u32::from_le_bytes(stream[..4].try_into().expect("4 bytes"));
    if !(RANS_L..RANS_L << 8).contains(&x) {
        return Err(ChunkFault::InitialState);
    }
    let mut pos = 4;
    let mask = (1u32 << PROB_BITS) - 1;
    for o in out.iter_mut() {
        let m = x & mask;
        let s = slot[m as usize];
        *o = s;
        x = freq[s as usize] * (x >> PROB_BITS) + m - cum[s as usize];
        while x < RANS_L {
            let &b = stream.get(pos).ok_or(ChunkFault::Truncated)?;
            x = (x << 8) | b as u32;
            pos += 1;
        }
    }
    if x != RANS_L || pos != stream.len() {
        return Err(ChunkFault::FinalState);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_checks_and_each_corruption_is_told_apart() {
        let a = [7u8; 100];
        let b = [9u8; 10];
        let f = write_file(42, &[(64, &a), (192, &b)]);
        assert_eq!(f.len(), 256);
        let h = check(&f, 256, 42).unwrap();
        assert_eq!(h.tensors, 2);
        let mut flipped = f.clone();
        flipped[200] ^= 1;
        assert_eq!(check(&flipped, 256, 42), Err(Status::BadChecksum));
        assert_eq!(check(&f[..128], 256, 42), Err(Status::BadWeightsSize));
        assert_eq!(check(&f, 256, 43), Err(Status::WrongModel));
        let mut v = f.clone();
        v[8] = 2;
        assert_eq!(check(&v, 256, 42), Err(Status::BadVersion));
        let mut m = f;
        m[0] = b'X';
        assert_eq!(check(&m, 256, 42), Err(Status::BadMagic));
    }

    #[test]
    fn entropy_coding_round_trips_and_shrinks_skewed_bytes() {
        // 4-bit codes from a peaked distribution: far from uniform bytes
        let mut x = 12345u64;
        let codes: Vec<u8> = (0..1 << 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let a = (x % 16) as u8;
                let b = ((x >> 8) % 16) as u8;
                (a / 4 + 6) | ((b / 4 + 6) << 4)
            })
            .collect();
        let f = write_file(7, &[(64, &codes)]);
        let c = encode(&f);
        assert!(is_coded(&c) && !is_coded(&f));
        assert!(c.len() < f.len() * 6 / 10, "{} of {}", c.len(), f.len());
        let mut out = vec![0u8; coded_size(&c).unwrap()];
        decode(&c, &mut out).unwrap();
        assert_eq!(out, f);
        // a truncated stream is an error, not a short file
        let mut short = vec![0u8; out.len()];
        assert!(decode(&c[..c.len() / 2], &mut short).is_err());
        assert_eq!(decode(&f, &mut short), Err(DecodeError::NotCoded));
        // a changed byte anywhere in a stream is caught
        for at in [CODED_HEADER + 8 + FREQ_BYTES + 2, c.len() / 2, c.len() - 3] {
            let mut bad = c.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad, &mut short).is_err(), "byte {at}");
        }
    }

    #[test]
    fn entropy_coding_handles_chunk_edges_and_one_valued_chunks() {
        let mut x = 99u64;
        for len in [
            64usize,
            65,
            CODED_CHUNK - 1,
            CODED_CHUNK,
            CODED_CHUNK + 64,
            2 * CODED_CHUNK + 7,
        ] {
            // a constant run, uniform bytes and a skewed tail
            let f: Vec<u8> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match i * 3 / len {
                        0 => 0,
                        1 => x as u8,
                        _ => (x % 3) as u8 * 85,
                    }
                })
                .collect();
            let c = encode(&f);
            let mut out = vec![1u8; len];
            decode(&c, &mut out).unwrap();
            assert!(out == f, "length {len}");
        }
        let c = encode(&[]);
        decode(&c, &mut []).unwrap();
    }

    #[test]
    fn checksum_sees_every_word() {
        let base = vec![0u8; 64 * 4];
        let c = checksum(&base);
        for i in (0..base.len()).step_by(8) {
            let mut v = base.clone();
            v[i] = 1;
            assert_ne!(checksum(&v), c, "word at {i}");
        }
    }
}
