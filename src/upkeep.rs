//! Per-thread upkeep the binary may install: a function that every thread serving the API
//! calls once a second, and one thread of the main runtime too.
//!
//! It exists for the allocator, which the binary chooses (`src/main.rs`): jemalloc keeps a
//! cache of freed blocks per thread and trims it only as that thread allocates again, so a
//! thread that goes quiet after a burst would hold its cache, and the pages under it, for
//! good. Only code running on that thread can return it, hence a hook called on each
//! thread rather than a task of its own. Without a hook installed nothing runs.
//! [`return_jemalloc_cache_when_quiet`] is the binary's hook.

use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often each thread calls the hook.
pub const EVERY: Duration = Duration::from_secs(1);

static HOOK: OnceLock<fn()> = OnceLock::new();

/// Installs the hook, once per process; `false` when one was installed already.
pub fn install(hook: fn()) -> bool {
    HOOK.set(hook).is_ok()
}

/// Calls the hook on the current thread every [`EVERY`] until `stop`; returns at once when
/// none is installed. Spawned on a current-thread runtime it runs on that runtime's thread.
pub async fn run(stop: CancellationToken) {
    let Some(&hook) = HOOK.get() else {
        return;
    };
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => hook(),
        }
    }
}

/// Bytes a thread must have allocated or freed since its cache was last returned before a
/// quiet second returns it again. Below it the cache holds little, and returning it would
/// cost more than it gives: an idle process allocates a little now and then (the config
/// file's check every 2 s), and returning its cache each time woke jemalloc's background
/// thread to purge pages every few seconds, and made the next request refill the cache.
const RETURN_AFTER_BYTES: u64 = 64 * 1024;

thread_local! {
    /// This thread's bytes allocated plus freed at the last upkeep, and at the last return
    /// of its cache.
    static SEEN: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// The binary's hook, for a process whose global allocator is jemalloc: a thread that
/// allocated and freed nothing since the last call returns its cache of freed blocks to
/// its arena, by turning the cache off and on (what `thread.tcache.flush` does, through the
/// safe API), once it moved 64 KiB (`RETURN_AFTER_BYTES`) since the last return; jemalloc's
/// background thread then gives the pages back. Frees count as much as allocations: they
/// are what fills the cache (a worker whose idle connections close only frees). A busy
/// thread keeps its cache: it is what makes its allocations cheap (without caches a request
/// costs 30 % more instructions, `bench/instructions.sh`).
pub fn return_jemalloc_cache_when_quiet() {
    use tikv_jemalloc_ctl::{Access, AsName};
    let (Ok(allocated), Ok(freed)) = (
        tikv_jemalloc_ctl::thread::allocatedp::read(),
        tikv_jemalloc_ctl::thread::deallocatedp::read(),
    ) else {
        return;
    };
    let moved = || allocated.get().wrapping_add(freed.get());
    let now = moved();
    let (last, returned_at) = SEEN.get();
    if now != last {
        SEEN.set((now, returned_at));
        return;
    }
    if now.wrapping_sub(returned_at) < RETURN_AFTER_BYTES {
        return;
    }
    let cache = b"thread.tcache.enabled\0".name();
    // Only a cache that is on: turning it on would override an operator's `tcache:false`.
    if cache.read() == Ok(true) {
        let _ = cache.write(false);
        let _ = cache.write(true);
    }
    // Turning the cache off and on frees and allocates: count from after it.
    let after = moved();
    SEEN.set((after, after));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static CALLS: Cell<u32> = const { Cell::new(0) };
    }

    /// Counts calls on the calling thread: other tests' servers call it on their own threads.
    fn count() {
        CALLS.set(CALLS.get() + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hook_runs_on_the_runtimes_thread_once_a_second_until_stopped() {
        assert!(install(count), "no other test installs a hook");
        assert!(!install(count), "a second hook is refused");
        let stop = CancellationToken::new();
        // A current-thread runtime: the task runs on this thread.
        let upkeep = tokio::spawn(run(stop.clone()));
        tokio::time::sleep(EVERY * 3 + EVERY / 2).await;
        // At once, then after 1, 2 and 3 s.
        assert_eq!(CALLS.get(), 4);
        stop.cancel();
        upkeep.await.expect("the upkeep task");
        tokio::time::sleep(EVERY * 3).await;
        assert_eq!(CALLS.get(), 4, "no call once stopped");
    }
}
