//! The engine's own rayon pool, so that callers' global pools are left alone.

use std::sync::{Arc, Mutex, MutexGuard};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Arc<ThreadPool>>> {
    // The guarded value is replaced atomically, so a poisoned lock is still sound.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Most threads a pool may have: 4 per available core, at least 64. Results never
/// depend on the count, so more only costs memory and start-up time (and a typo
/// such as `RAYON_NUM_THREADS=100000` would otherwise bring the machine down).
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_mul(4).max(64)
}

/// `n = 0` lets rayon choose: `RAYON_NUM_THREADS` if set, else the available cores.
pub(crate) fn build_pool(n: usize) -> Result<ThreadPool> {
    let cap = max_threads();
    if n > cap {
        return Err(Error::Invalid(format!(
            "{n} threads is more than the cap of {cap} (4 per core, at least 64)"
        )));
    }
    if n == 0 {
        let env = std::env::var("RAYON_NUM_THREADS").unwrap_or_default();
        // rayon ignores a value that is not a count; a count above the cap is refused
        if env.trim().parse::<u128>().is_ok_and(|v| v > cap as u128) {
            return Err(Error::Invalid(format!(
                "RAYON_NUM_THREADS={env} is more than the cap of {cap} threads \
                 (4 per core, at least 64); results do not depend on the count"
            )));
        }
    }
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
