//! The `gcpool` binary: everything lives in the library; see `cli.rs`. It owns only the
//! choice of allocator.
//!
//! jemalloc, for memory given back: with glibc's malloc, the memory of 10,000 caller
//! connections stayed with the process after they closed (its arenas keep freed chunks
//! between live ones; only `malloc_trim`, an `unsafe` call, would return them), and RSS
//! stayed at the burst's peak. jemalloc's background thread purges freed pages after
//! `DIRTY_DECAY_MS` (`bench/memory.sh`; figures in bench/README.md). It cannot purge what
//! a thread's cache of freed blocks holds: a thread that has gone quiet returns its cache
//! (`gcpool::upkeep::return_jemalloc_cache_when_quiet`). An operator may set jemalloc's
//! options in `_RJEM_MALLOC_CONF` instead (e.g. `narenas:1`): then they all are theirs.

use tikv_jemalloc_ctl::{Access, AsName};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long freed pages stay with the process before the background thread returns them
/// (jemalloc's default is 10 s).
const DIRTY_DECAY_MS: isize = 1_000;

fn main() -> std::process::ExitCode {
    if std::env::var_os("_RJEM_MALLOC_CONF").is_none() {
        return_freed_memory();
        gcpool::upkeep::install(gcpool::upkeep::return_jemalloc_cache_when_quiet);
    }
    gcpool::cli::main()
}

/// Starts jemalloc's background thread (one) with `DIRTY_DECAY_MS` for every arena: arenas
/// made later take `arenas.dirty_decay_ms`; the first one exists already. Should a setting
/// fail, memory is still freed, only given back later (jemalloc purges as it allocates).
fn return_freed_memory() {
    let _ = b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS);
    let _ = b"arena.0.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS);
    let _ = tikv_jemalloc_ctl::max_background_threads::write(1);
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}
