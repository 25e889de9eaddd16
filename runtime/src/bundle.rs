//! Loading a host bundle: its shared library, its weights file (memory-mapped), and a state
//! buffer, with typed calls to the entry points.

use crate::pool::{ParallelFor, ThreadPool};
use crate::weights::Status;
use std::ffi::c_void;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {msg}")]
    Load { path: PathBuf, msg: String },
    #[error("{entry}: {status}")]
    Status { entry: String, status: Status },
    #[error("{entry} returned unknown code {code}")]
    Code { entry: String, code: i32 },
    #[error("{0}")]
    Bad(String),
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

/// A loaded bundle with its weights and state, ready to call.
pub struct Bundle {
    _lib: libloading::Library,
    name: String,
    state: Aligned,
    weights: Aligned,
    pool: Option<ThreadPool>,
    init: InitFn,
    prefill: Option<PrefillFn>,
    decode: Option<DecodeFn>,
    reset: Option<ResetFn>,
    context: Option<ContextFn>,
    run: Option<RunFn>,
}

impl Bundle {
    /// Loads `lib<name>.so` and `<name>.weights` from a bundle directory and initializes a
    /// state with `threads` threads (1: no pool).
    pub fn open(dir: &Path, name: &str, threads: usize) -> Result<Bundle, BundleError> {
        let so = dir.join(format!("lib{name}.so"));
        let wpath = dir.join(format!("{name}.weights"));
        let load_err = |p: &Path, msg: String| BundleError::Load {
            path: p.to_path_buf(),
            msg,
        };
        // SAFETY: loading a library runs its initializers; llmc bundles have none.
        let lib = unsafe { libloading::Library::new(&so) }
            .map_err(|e| load_err(&so, format!("{e} (build with --emit so for the host)")))?;
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
        let wbytes = std::fs::read(&wpath).map_err(|e| load_err(&wpath, e.to_string()))?;
        let mut weights = Aligned::zeroed(wbytes.len());
        weights.as_mut_slice().copy_from_slice(&wbytes);
        // SAFETY: a function without arguments.
        let sb = unsafe { state_bytes() } as usize;
        let state = Aligned::zeroed(sb);
        let mut b = Bundle {
            init,
            prefill: sym!(PrefillFn, "prefill"),
            decode: sym!(DecodeFn, "decode"),
            reset: sym!(ResetFn, "reset"),
            context: sym!(ContextFn, "context"),
            run: sym!(RunFn, "run"),
            _lib: lib,
            name: name.to_string(),
            state,
            weights,
            pool: (threads > 1).then(|| ThreadPool::new(threads)),
        };
        b.init_state()?;
        Ok(b)
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
                self.weights.as_mut_ptr() as *const c_void,
                self.weights.len() as u64,
                hook,
                pool,
            )
        };
        check(&format!("{}_init", self.name), code)
    }

    /// The weights buffer, to corrupt in tests.
    pub fn weights_mut(&mut self) -> &mut Aligned {
        &mut self.weights
    }

    /// Replaces the weights buffer (a truncated file, say) and runs init.
    pub fn set_weights(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        let mut w = Aligned::zeroed(bytes.len());
        w.as_mut_slice().copy_from_slice(bytes);
        self.weights = w;
        self.init_state()
    }

    /// Raw init call with given sizes, for checks of argument handling.
    pub fn init_raw(&mut self, state_bytes: u64, weights_bytes: u64) -> i32 {
        // SAFETY: the sizes passed never exceed the buffers' (callers pass smaller ones).
        unsafe {
            (self.init)(
                self.state.as_mut_ptr() as *mut c_void,
                state_bytes.min(self.state.len() as u64),
                self.weights.as_mut_ptr() as *const c_void,
                weights_bytes.min(self.weights.len() as u64),
                None,
                std::ptr::null_mut(),
            )
        }
    }

    /// Appends tokens; returns `tokens.len() × vocab` logits.
    pub fn prefill(&mut self, tokens: &[i32], vocab: usize) -> Result<Vec<f32>, BundleError> {
        let f = self
            .prefill
            .ok_or_else(|| BundleError::Bad("this bundle is not a decoder".into()))?;
        let mut logits = vec![0f32; tokens.len() * vocab];
        // SAFETY: buffers sized as the header says.
        let code = unsafe {
            f(
                self.state.as_mut_ptr() as *mut c_void,
                tokens.as_ptr(),
                tokens.len() as i32,
                logits.as_mut_ptr(),
            )
        };
        check(&format!("{}_prefill", self.name), code)?;
        Ok(logits)
    }

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

    pub fn reset(&mut self) -> Result<(), BundleError> {
        let f = self
            .reset
            .ok_or_else(|| BundleError::Bad("this bundle is not a decoder".into()))?;
        // SAFETY: the state this bundle initialized.
        check(&format!("{}_reset", self.name), unsafe {
            f(self.state.as_mut_ptr() as *mut c_void)
        })
    }

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
