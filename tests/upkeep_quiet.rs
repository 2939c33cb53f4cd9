//! Attacks on `gcpool::upkeep::return_jemalloc_cache_when_quiet` (commit ee974b0), each
//! a regression test now.
//!
//! The hook decides "quiet" from `thread.allocated` only. A thread's cache of freed blocks
//! fills on *frees* too: blocks allocated earlier (or on another thread) and freed on this
//! thread go into this thread's cache. Once the hook has returned the cache (`returned`),
//! a thread that then frees without allocating fills its cache again and the hook never
//! returns it: `thread.allocated` did not move.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The mallctl name of the bytes in the caches of freed blocks of every thread that uses
/// `arena`; made once, so that reading it allocates nothing on the measured thread.
fn cache_stat(arena: u32) -> String {
    format!("stats.arenas.{arena}.tcache_bytes\0")
}

/// Reads `stat` ([`cache_stat`]) without allocating.
fn cached(stat: &str) -> usize {
    use tikv_jemalloc_ctl::{Access, AsName};
    tikv_jemalloc_ctl::epoch::advance().expect("jemalloc's epoch");
    stat.as_bytes()
        .name()
        .read()
        .expect("jemalloc's cache stats")
}

/// 200 blocks of each size from 64 bytes to 16 KiB, allocated now.
fn blocks() -> Vec<Vec<u8>> {
    (6..=14)
        .flat_map(|shift| (0..200).map(move |i| vec![i as u8; 1 << shift]))
        .collect()
}

/// A thread went quiet (its cache was returned), then frees what it held without
/// allocating anything: a serving thread whose idle connections close after it went quiet
/// (in gcpool today closing 200 connections happens to allocate ~5 KB on the worker, which
/// hides this), or one that drops the last reference to memory another thread allocated.
/// Its cache fills with the freed blocks; the hook must return it once the thread is quiet
/// again. Fails on ee974b0: the cache is kept for good (463,104 of 463,104 bytes here).
/// Passes when the hook also watches `thread.deallocated`.
#[test]
fn a_thread_that_only_frees_after_its_cache_was_returned_returns_it_again() {
    use tikv_jemalloc_ctl::{Access, AsName};
    std::thread::spawn(|| {
        let arena: u32 = b"thread.arena\0"
            .name()
            .read()
            .expect("this thread's arena");
        let stat = cache_stat(arena);
        // Held: like the buffers of idle connections.
        let held = std::hint::black_box(blocks());
        // Quiet for two calls and more: the cache (of whatever the fill above freed) is returned.
        gcpool::upkeep::return_jemalloc_cache_when_quiet();
        gcpool::upkeep::return_jemalloc_cache_when_quiet();
        gcpool::upkeep::return_jemalloc_cache_when_quiet();
        let returned = cached(&stat);

        // The connections close: frees only.
        let allocated = tikv_jemalloc_ctl::thread::allocatedp::read().expect("allocatedp");
        let before = allocated.get();
        drop(held);
        let refilled = cached(&stat);
        assert!(
            refilled >= returned + 64 * 1024,
            "the frees went to the cache: {returned} -> {refilled} bytes"
        );

        // Quiet again, for as long as you like.
        for _ in 0..5 {
            gcpool::upkeep::return_jemalloc_cache_when_quiet();
        }
        let after = cached(&stat);
        assert_eq!(
            allocated.get(),
            before,
            "the test allocated nothing since the frees"
        );
        assert!(
            after + 64 * 1024 <= refilled,
            "a thread that only freed since its cache was returned kept {after} of {refilled} bytes"
        );
    })
    .join()
    .expect("the test thread");
}

/// An idle process allocates a little now and then (the config file's check every 2 s).
/// Returning the cache for each such trickle woke jemalloc's background thread every few
/// seconds and made the next request refill the cache (the attack on ee974b0 counted 24
/// `madvise` calls in 30 s idle, none before). Under 64 KiB moved since the last return, a
/// quiet thread keeps its cache; past it, it returns it.
#[test]
fn a_trickle_of_allocations_does_not_return_the_cache_each_time() {
    use tikv_jemalloc_ctl::{Access, AsName};
    std::thread::spawn(|| {
        let arena: u32 = b"thread.arena\0"
            .name()
            .read()
            .expect("this thread's arena");
        let stat = cache_stat(arena);
        drop(std::hint::black_box(blocks()));
        for _ in 0..3 {
            gcpool::upkeep::return_jemalloc_cache_when_quiet();
        }
        let returned = cached(&stat);
        // A trickle: 4 KiB allocated and freed (into the cache), two quiet calls, again.
        for round in 0..4 {
            drop(std::hint::black_box(vec![round as u8; 4096]));
            gcpool::upkeep::return_jemalloc_cache_when_quiet();
            gcpool::upkeep::return_jemalloc_cache_when_quiet();
            let kept = cached(&stat);
            assert!(
                kept >= returned + 4096,
                "round {round}: the cache was returned for 4 KiB ({returned} -> {kept} bytes)"
            );
        }
        // Past 64 KiB it is returned.
        drop(std::hint::black_box(blocks()));
        let full = cached(&stat);
        gcpool::upkeep::return_jemalloc_cache_when_quiet();
        gcpool::upkeep::return_jemalloc_cache_when_quiet();
        let after = cached(&stat);
        assert!(
            after + 64 * 1024 <= full,
            "returned after a fill: {full} -> {after} bytes"
        );
    })
    .join()
    .expect("the test thread");
}
