//! Loading a host bundle: its shared library, its weights (the file read into aligned memory,
//! or the library's embedded copy), and a state buffer, with typed calls to the entry points.

use crate::pool::{ParallelFor, ThreadPool};
use crate::weights::Status;
use std::ffi::c_void;
use std::path::{Path, PathBuf};

/// What went wrong loading or calling a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file of the bundle is missing or cannot be loaded.
    #[error("{path}: {msg}")]
    Load { path: PathBuf, msg: String },
    /// An entry point returned an error code.
    #[error("{entry}: {status}")]
    Status { entry: String, status: Status },
    /// An entry point returned a code this runtime does not know.
    #[error("{entry} returned unknown code {code}")]
    Code { entry: String, code: i32 },
    /// A call that does not fit the bundle (a decoder call on a graph bundle, say).
    #[error("{0}")]
    Bad(String),
}

impl BundleError {
    /// The entry point's status, when that is what failed.
    pub fn status(&self) -> Option<Status> {
        match self {
            BundleError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

type InitFn = unsafe extern "C" fn(
    *mut c_void,
    u64,
    *const c_void,
    u64,
    Option<ParallelFor>,
    *mut c_void,
) -> i32;
type SizeFn = unsafe extern "C" fn() -> u64;
type DecodeWeightsFn = unsafe extern "C" fn(*const c_void, u64, *mut c_void, u64) -> i32;
type PrefillFn = unsafe extern "C" fn(*mut c_void, *const i32, i32, *mut f32) -> i32;
type DecodeFn = unsafe extern "C" fn(*mut c_void, i32, *mut f32) -> i32;
type ResetFn = unsafe extern "C" fn(*mut c_void) -> i32;
type ContextFn = unsafe extern "C" fn(*mut c_void) -> i64;
type RunFn =
    unsafe extern "C" fn(*mut c_void, *const i64, *const *const c_void, *const *mut c_void) -> i32;

/// A buffer of 64-byte aligned zeroed memory.
pub struct Aligned {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain memory owned by this value.
unsafe impl Send for Aligned {}

impl Aligned {
    /// `len` zero bytes (at least 64 are allocated).
    pub fn zeroed(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len.max(64), 64).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {len} bytes");
        Aligned { ptr, len }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr holds len initialized bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr holds len initialized bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(64), 64).expect("layout");
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

fn check(entry: &str, code: i32) -> Result<(), BundleError> {
    match Status::from_code(code) {
        Some(Status::Ok) => Ok(()),
        Some(status) => Err(BundleError::Status {
            entry: entry.to_string(),
            status,
        }),
        None => Err(BundleError::Code {
            entry: entry.to_string(),
            code,
        }),
    }
}

/// Where a bundle's weights live.
enum Weights {
    /// Read from `<name>.weights` into 64-byte aligned memory.
    Owned(Aligned),
    /// The library's own `<name>_weights` symbol (`--embed-weights`).
    Embedded { ptr: *const u8, len: usize },
}

impl Weights {
    fn as_ptr(&self) -> *const u8 {
        match self {
            Weights::Owned(a) => a.ptr,
            Weights::Embedded { ptr, .. } => *ptr,
        }
    }

    fn len(&self) -> usize {
        match self {
            Weights::Owned(a) => a.len(),
            Weights::Embedded { len, .. } => *len,
        }
    }
}

/// A loaded bundle with its weights and state, ready to call.
pub struct Bundle {
    name: String,
    state: Aligned,
    weights: Weights,
    pool: Option<ThreadPool>,
    init: InitFn,
    prefill: Option<PrefillFn>,
    prefill_last: Option<PrefillFn>,
    decode: Option<DecodeFn>,
    reset: Option<ResetFn>,
    context: Option<ContextFn>,
    run: Option<RunFn>,
    /// Dropped last: every function pointer above points into it.
    _lib: libloading::Library,
}

/// Reads a whole file into 64-byte aligned memory. An entropy-coded file (`llmc build
/// --entropy`) is decoded by the bundle's own `<name>_decode_weights`, as a host linking the
/// library would, before init checks it.
fn read_aligned(path: &Path, decode: Option<DecodeWeightsFn>) -> Result<Aligned, BundleError> {
    use std::io::Read;
    let err = |msg: String| BundleError::Load {
        path: path.to_path_buf(),
        msg,
    };
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let len = f.metadata().map_err(|e| err(e.to_string()))?.len() as usize;
    let mut a = Aligned::zeroed(len);
    f.read_exact(a.as_mut_slice())
        .map_err(|e| err(e.to_string()))?;
    let Some(size) = crate::weights::coded_size(a.as_slice()) else {
        return Ok(a);
    };
    // every chunk of decoded bytes costs its frequency table, a state and a table entry
    let most = (len / (crate::weights::FREQ_BYTES + 12) + 1) * crate::weights::CODED_CHUNK;
    if size > most {
        return Err(err(format!(
            "the entropy-coded header claims {size} bytes from {len}: the file is corrupt"
        )));
    }
    let decode = decode.ok_or_else(|| {
        err("entropy-coded, and the library has no decoder for it (a bundle built before llmc coded with rANS): rebuild the bundle".into())
    })?;
    let mut d = Aligned::zeroed(size);
    // SAFETY: both buffers are live for the call and of the lengths given.
    let code = unsafe {
        decode(
            a.as_slice().as_ptr().cast(),
            len as u64,
            d.as_mut_slice().as_mut_ptr().cast(),
            size as u64,
        )
    };
    match crate::weights::Status::from_code(code) {
        Some(crate::weights::Status::Ok) => Ok(d),
        Some(s) => Err(err(format!("entropy-coded weights: {s}"))),
        None => Err(err(format!("entropy-coded weights: unknown status {code}"))),
    }
}

impl Bundle {
    /// Loads `lib<name>.so` and `<name>.weights` from a bundle directory and initializes a
    /// state with `threads` threads (1: no pool).
    pub fn open(dir: &Path, name: &str, threads: usize) -> Result<Bundle, BundleError> {
        let mut b = Bundle::load(dir, name, threads)?;
        b.init_state()?;
        Ok(b)
    }

    /// Loads a bundle like [`Bundle::open`] but leaves the state uninitialized: every entry
    /// point but init answers `NotInitialized` until [`Bundle::init_state`] runs. The weights
    /// come from `<name>.weights`, or from the library's embedded `<name>_weights` symbol
    /// when the bundle was built with `--embed-weights` and has no weights file.
    pub fn load(dir: &Path, name: &str, threads: usize) -> Result<Bundle, BundleError> {
        let so = dir.join(format!("lib{name}.so"));
        let wpath = dir.join(format!("{name}.weights"));
        let load_err = |p: &Path, msg: String| BundleError::Load {
            path: p.to_path_buf(),
            msg,
        };
        if !so.is_file() {
            return Err(load_err(
                &so,
                "no such file (llmc build links it for a target this machine runs: rebuild the bundle for the host)".into(),
            ));
        }
        // SAFETY: loading a library runs its initializers; llmc bundles have none.
        let lib = unsafe { libloading::Library::new(&so) }.map_err(|e| {
            load_err(
                &so,
                format!("{e} (rebuild the bundle for this machine: llmc build MODEL -o DIR)"),
            )
        })?;
        macro_rules! sym {
            ($t:ty, $n:expr) => {{
                let n = format!("{}_{}", name, $n);
                // SAFETY: the symbol has the C signature the header declares.
                unsafe { lib.get::<$t>(n.as_bytes()).map(|s| *s).ok() }
            }};
        }
        let init = sym!(InitFn, "init").ok_or_else(|| {
            load_err(
                &so,
                format!("no symbol {name}_init: is this the bundle '{name}'?"),
            )
        })?;
        let state_bytes = sym!(SizeFn, "state_bytes")
            .ok_or_else(|| load_err(&so, "no state size symbol".into()))?;
        let weights = if wpath.is_file() {
            Weights::Owned(read_aligned(
                &wpath,
                sym!(DecodeWeightsFn, "decode_weights"),
            )?)
        } else {
            let n = format!("{name}_weights");
            let s = format!("{name}_weights_size");
            // SAFETY: data symbols of the types the header declares.
            let embedded = unsafe {
                match (
                    lib.get::<*const u8>(n.as_bytes()),
                    lib.get::<*const u64>(s.as_bytes()),
                ) {
                    (Ok(p), Ok(len)) => Some((*p, **len as usize)),
                    _ => None,
                }
            };
            match embedded {
                Some((ptr, len)) => Weights::Embedded { ptr, len },
                None => {
                    return Err(load_err(
                        &wpath,
                        "no such file, and the library embeds no weights".into(),
                    ))
                }
            }
        };
        // SAFETY: a function without arguments.
        let sb = unsafe { state_bytes() } as usize;
        Ok(Bundle {
            init,
            prefill: sym!(PrefillFn, "prefill"),
            prefill_last: sym!(PrefillFn, "prefill_last"),
            decode: sym!(DecodeFn, "decode"),
            reset: sym!(ResetFn, "reset"),
            context: sym!(ContextFn, "context"),
            run: sym!(RunFn, "run"),
            name: name.to_string(),
            state: Aligned::zeroed(sb),
            weights,
            pool: (threads > 1).then(|| ThreadPool::new(threads)),
            _lib: lib,
        })
    }

    /// The bundle's name (prefix of its symbols).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Threads kernel calls run on (1: the caller's only).
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, ThreadPool::threads)
    }

    /// Bytes of the state buffer.
    pub fn state_bytes(&self) -> usize {
        self.state.len()
    }

    /// Bytes of the weights (file or embedded).
    pub fn weights_bytes(&self) -> usize {
        self.weights.len()
    }

    /// Whether the weights are the library's embedded ones.
    pub fn weights_embedded(&self) -> bool {
        matches!(self.weights, Weights::Embedded { .. })
    }

    /// Runs init again (after the weights buffer changed, say).
    pub fn init_state(&mut self) -> Result<(), BundleError> {
        let (hook, pool) = match &self.pool {
            Some(p) => (Some(ThreadPool::hook()), p.as_ptr()),
            None => (None, std::ptr::null_mut()),
        };
        // SAFETY: buffers of the sizes passed; the pool outlives the state's use.
        let code = unsafe {
            (self.init)(
                self.state.as_mut_ptr() as *mut c_void,
                self.state.len() as u64,
                self.weights.as_ptr() as *const c_void,
                self.weights.len() as u64,
                hook,
                pool,
            )
        };
        check(&format!("{}_init", self.name), code)
    }

    /// The weights buffer, to corrupt in tests (embedded weights are copied first). Run
    /// [`Bundle::init_state`] after changing it.
    pub fn weights_mut(&mut self) -> &mut Aligned {
        if let Weights::Embedded { ptr, len } = self.weights {
            let mut a = Aligned::zeroed(len);
            // SAFETY: the library's symbol holds len bytes and outlives this call.
            a.as_mut_slice()
                .copy_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) });
            self.weights = Weights::Owned(a);
        }
        match &mut self.weights {
            Weights::Owned(a) => a,
            Weights::Embedded { .. } => unreachable!("copied above"),
        }
    }

    /// Replaces the weights buffer (a truncated file, say) and runs init.
    pub fn set_weights(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        let mut w = Aligned::zeroed(bytes.len());
        w.as_mut_slice().copy_from_slice(bytes);
        self.weights = Weights::Owned(w);
        self.init_state()
    }

    /// Raw init call with given sizes (clamped to the buffers'), for checks of argument
    /// handling; returns the entry point's code.
    pub fn init_raw(&mut self, state_bytes: u64, weights_bytes: u64) -> i32 {
        // SAFETY: the sizes passed never exceed the buffers'.
        unsafe {
            (self.init)(
                self.state.as_mut_ptr() as *mut c_void,
                state_bytes.min(self.state.len() as u64),
                self.weights.as_ptr() as *const c_void,
                weights_bytes.min(self.weights.len() as u64),
                None,
                std::ptr::null_mut(),
            )
        }
    }

    /// Appends tokens into a caller's buffer of `tokens.len() × vocab` logits.
    ///
    /// `logits` must hold `tokens.len()` rows of the bundle's vocabulary (its header's
    /// `VOCAB`); the generated code writes that many.
    pub fn prefill_into(&mut self, tokens: &[i32], logits: &mut [f32]) -> Result<(), BundleError> {
        let f = self
            .prefill
            .ok_or_else(|| BundleError::Bad("this bundle is not a decoder".into()))?;
        if tokens.is_empty() || logits.len() % tokens.len() != 0 {
            return Err(BundleError::Bad(format!(
                "{} logits do not make rows for {} tokens",
                logits.len(),
                tokens.len()
            )));
        }
        let n = i32::try_from(tokens.len())
            .map_err(|_| BundleError::Bad(format!("{} tokens in one call", tokens.len())))?;
        // SAFETY: buffers sized as the header says (the caller's contract on vocab).
        let code = unsafe {
            f(
                self.state.as_mut_ptr() as *mut c_void,
                tokens.as_ptr(),
                n,
                logits.as_mut_ptr(),
            )
        };
        check(&format!("{}_prefill", self.name), code)
    }

    /// Appends tokens; writes only the last token's `vocab` logits (the output head runs
    /// once: what generation needs).
    pub fn prefill_last_into(
        &mut self,
        tokens: &[i32],
        logits: &mut [f32],
    ) -> Result<(), BundleError> {
        let f = self
            .prefill_last
            .ok_or_else(|| BundleError::Bad("this bundle is not a decoder".into()))?;
        if tokens.is_empty() || logits.is_empty() {
            return Err(BundleError::Bad(
                "prefill needs tokens and a logits buffer".into(),
            ));
        }
        let n = i32::try_from(tokens.len())
            .map_err(|_| BundleError::Bad(format!("{} tokens in one call", tokens.len())))?;
        // SAFETY: logits holds the header's VOCAB floats (the caller's contract).
        let code = unsafe {
            f(
                self.state.as_mut_ptr() as *mut c_void,
                tokens.as_ptr(),
                n,
                logits.as_mut_ptr(),
            )
        };
        check(&format!("{}_prefill_last", self.name), code)
    }

    /// Appends tokens; returns `tokens.len() × vocab` logits.
    pub fn prefill(&mut self, tokens: &[i32], vocab: usize) -> Result<Vec<f32>, BundleError> {
        let mut logits = vec![0f32; tokens.len() * vocab];
        self.prefill_into(tokens, &mut logits)?;
        Ok(logits)
    }

    /// Appends one token; writes `vocab` logits (the header's `VOCAB`).
    pub fn decode(&mut self, token: i32, logits: &mut [f32]) -> Result<(), BundleError> {
        let f = self
            .decode
            .ok_or_else(|| BundleError::Bad("this bundle is not a decoder".into()))?;
        // SAFETY: logits holds vocab floats (the caller sizes it).
        let code = unsafe {
            f(
                self.state.as_mut_ptr() as *mut c_void,
                token,
                logits.as_mut_ptr(),
            )
        };
        check(&format!("{}_decode", self.name), code)
    }

    /// Empties the KV cache.
    pub fn reset(&mut self) -> Result<(), BundleError> {
        let f = self
            .reset
            .ok_or_else(|| BundleError::Bad("this bundle is not a decoder".into()))?;
        // SAFETY: the state this bundle initialized.
        check(&format!("{}_reset", self.name), unsafe {
            f(self.state.as_mut_ptr() as *mut c_void)
        })
    }

    /// Tokens in the KV cache.
    pub fn context(&mut self) -> Result<i64, BundleError> {
        let f = self
            .context
            .ok_or_else(|| BundleError::Bad("this bundle is not a decoder".into()))?;
        // SAFETY: the state this bundle initialized.
        let v = unsafe { f(self.state.as_mut_ptr() as *mut c_void) };
        if v < 0 {
            check(&format!("{}_context", self.name), -v as i32)?;
        }
        Ok(v)
    }

    /// Runs a graph bundle: `dims` per run-time dimension, inputs and outputs as raw buffers.
    pub fn run(
        &mut self,
        dims: &[i64],
        inputs: &[&[u8]],
        outputs: &mut [&mut [u8]],
    ) -> Result<(), BundleError> {
        let f = self.run.ok_or_else(|| {
            BundleError::Bad("this bundle is a decoder: use prefill/decode".into())
        })?;
        let ins: Vec<*const c_void> = inputs.iter().map(|b| b.as_ptr() as *const c_void).collect();
        let outs: Vec<*mut c_void> = outputs
            .iter_mut()
            .map(|b| b.as_mut_ptr() as *mut c_void)
            .collect();
        // SAFETY: buffers sized by the caller from the manifest.
        let code = unsafe {
            f(
                self.state.as_mut_ptr() as *mut c_void,
                dims.as_ptr(),
                ins.as_ptr(),
                outs.as_ptr(),
            )
        };
        check(&format!("{}_run", self.name), code)
    }
}
