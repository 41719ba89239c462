//! `sandpitd`, the Sandpit daemon (see the `sandpitd` crate).

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    sandpitd::main()
}

/// glibc gives each thread that allocates an arena of its own (up to eight
/// per core), and each arena keeps what was freed in it for reuse. With
/// tokio's workers and the store's writer and readers that was about 3 MiB
/// of resident memory holding little (the 500-sandbox benchmark: 27.5 MiB
/// against 24.2 MiB with one store thread). The daemon's threads mostly
/// wait, so two arenas serve them without contention worth measuring.
/// `MALLOC_ARENA_MAX` in the environment still wins (glibc reads it first).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator, and this
        // runs first in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
