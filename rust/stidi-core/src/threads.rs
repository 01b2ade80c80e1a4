//! The engine's own rayon pool, so that callers' global pools are left alone.

use std::sync::{Arc, Mutex, MutexGuard};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Arc<ThreadPool>>> {
    // The guarded value is replaced atomically, so a poisoned lock is still sound.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n = 0` lets rayon choose: `RAYON_NUM_THREADS` if set, else the available cores.
pub(crate) fn build_pool(n: usize) -> Result<ThreadPool> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("stidi-{i}"))
        .build()
        .map_err(|e| Error::Invalid(format!("cannot build a thread pool of {n} threads: {e}")))
}

/// The current pool, built with the default size on first use.
pub(crate) fn current_pool() -> Result<Arc<ThreadPool>> {
    let mut guard = lock();
    if let Some(pool) = guard.as_ref() {
        return Ok(Arc::clone(pool));
    }
    let pool = Arc::new(build_pool(0)?);
    *guard = Some(Arc::clone(&pool));
    Ok(pool)
}

/// Rebuilds the engine's thread pool with `n` threads (`0` = the default).
/// Calls already running finish on the previous pool. Results never depend on it.
pub fn set_num_threads(n: usize) -> Result<()> {
    let pool = Arc::new(build_pool(n)?);
    *lock() = Some(pool);
    Ok(())
}

/// Number of threads of the engine's pool.
pub fn num_threads() -> usize {
    current_pool().map_or(1, |p| p.current_num_threads())
}
