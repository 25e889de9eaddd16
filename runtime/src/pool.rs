//! A thread pool that implements the bundles' `parallel_for` hook: persistent workers that
//! spin briefly, then sleep, between kernel calls; each call's items are split into one
//! contiguous range per thread, and the calling thread takes the first.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A work function as generated code defines it: items `begin..end` of a kernel call.
pub type TaskFn = unsafe extern "C" fn(args: *const i64, begin: i64, end: i64);
/// The hook's C signature.
pub type ParallelFor =
    unsafe extern "C" fn(pool: *mut std::ffi::c_void, task: TaskFn, args: *const i64, n: i64);

struct Job {
    task: Option<TaskFn>,
    args: *const i64,
    n: i64,
}

// SAFETY: the job's pointers are only read while the dispatching thread waits for the job.
unsafe impl Send for Job {}

struct Shared {
    threads: usize,
    /// Bumped once per job; workers run each epoch's job once.
    epoch: AtomicU64,
    job: Mutex<Job>,
    wake: Condvar,
    /// Workers still running the current job.
    pending: AtomicUsize,
    stop: AtomicI64,
}

/// A fixed set of worker threads for bundles' kernel calls.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl ThreadPool {
    /// A pool of `threads` threads in all (the caller's thread included); 1 runs inline.
    pub fn new(threads: usize) -> ThreadPool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            epoch: AtomicU64::new(0),
            job: Mutex::new(Job {
                task: None,
                args: std::ptr::null(),
                n: 0,
            }),
            wake: Condvar::new(),
            pending: AtomicUsize::new(0),
            stop: AtomicI64::new(0),
        });
        let workers = (1..threads)
            .map(|id| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("llmc-worker-{id}"))
                    .spawn(move || worker(s, id))
                    .expect("spawn a worker thread")
            })
            .collect();
        ThreadPool { shared, workers }
    }

    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// The pointer to pass as the hook's `pool` argument.
    pub fn as_ptr(&self) -> *mut std::ffi::c_void {
        Arc::as_ptr(&self.shared) as *mut std::ffi::c_void
    }

    /// The hook to pass to a bundle's init.
    pub fn hook() -> ParallelFor {
        parallel_for
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.stop.store(1, Ordering::SeqCst);
        {
            let _g = self.shared.job.lock().expect("pool lock");
            self.shared.epoch.fetch_add(1, Ordering::SeqCst);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn range(n: i64, threads: usize, id: usize) -> (i64, i64) {
    let t = threads as i64;
    let id = id as i64;
    (n * id / t, n * (id + 1) / t)
}

fn worker(s: Arc<Shared>, id: usize) {
    let mut seen = 0u64;
    loop {
        // spin a little for the next job, then sleep
        let mut spins = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            spins += 1;
            if spins < 20_000 {
                std::hint::spin_loop();
                continue;
            }
            let g = s.job.lock().expect("pool lock");
            let g = s
                .wake
                .wait_while(g, |_| s.epoch.load(Ordering::Acquire) == seen)
                .expect("pool wait");
            drop(g);
        };
        seen = epoch;
        if s.stop.load(Ordering::SeqCst) != 0 {
            return;
        }
        let (task, args, n) = {
            let j = s.job.lock().expect("pool lock");
            (j.task, j.args, j.n)
        };
        if let Some(task) = task {
            let (b, e) = range(n, s.threads, id);
            if b < e {
                // SAFETY: the dispatcher keeps args alive until every worker is done.
                unsafe { task(args, b, e) };
            }
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The `parallel_for` hook.
///
/// # Safety
/// `pool` must come from [`ThreadPool::as_ptr`] of a live pool, and `task`/`args` must be
/// valid for the items `0..n`, as generated code guarantees.
pub unsafe extern "C" fn parallel_for(
    pool: *mut std::ffi::c_void,
    task: TaskFn,
    args: *const i64,
    n: i64,
) {
    // SAFETY: the caller passes the pointer from ThreadPool::as_ptr.
    let s = unsafe { &*(pool as *const Shared) };
    if s.threads == 1 || n <= 1 {
        unsafe { task(args, 0, n) };
        return;
    }
    s.pending.store(s.threads - 1, Ordering::SeqCst);
    {
        let mut j = s.job.lock().expect("pool lock");
        j.task = Some(task);
        j.args = args;
        j.n = n;
        s.epoch.fetch_add(1, Ordering::AcqRel);
        s.wake.notify_all();
    }
    let (b, e) = range(n, s.threads, 0);
    if b < e {
        unsafe { task(args, b, e) };
    }
    // spin for the other shares, then yield: on an oversubscribed machine a worker may be
    // waiting for this very core
    let mut spins = 0u32;
    while s.pending.load(Ordering::Acquire) != 0 {
        spins += 1;
        if spins < 20_000 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    static SUM: AtomicI64 = AtomicI64::new(0);

    unsafe extern "C" fn add_items(args: *const i64, b: i64, e: i64) {
        let scale = unsafe { *args };
        for i in b..e {
            SUM.fetch_add(i * scale, Ordering::Relaxed);
        }
    }

    #[test]
    fn every_item_runs_once() {
        let pool = ThreadPool::new(3);
        let args = [2i64];
        for n in [0i64, 1, 2, 7, 1000] {
            SUM.store(0, Ordering::SeqCst);
            unsafe { parallel_for(pool.as_ptr(), add_items, args.as_ptr(), n) };
            assert_eq!(SUM.load(Ordering::SeqCst), 2 * n * (n - 1) / 2, "n = {n}");
        }
    }
}
