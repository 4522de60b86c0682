//! Giving memory the broker no longer uses back to the system. glibc's `malloc` keeps what is
//! freed in the middle of its heaps for later allocations, so after a burst (the queues of
//! offline sessions that then expire, a flood drained) the process stays at its peak size
//! although the memory is free. `malloc_trim` hands the free pages back; the tick loop calls
//! [`release_free_memory`] every [`TRIM_EVERY`], which costs a walk over the allocator's free
//! lists (about a millisecond with a 150 MB heap; `bench/RESULTS.md`, "Memory after the
//! churn").

use std::time::Duration;

/// How often freed memory is given back.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Gives the allocator's free pages back to the system; does nothing where the allocator is
/// not glibc's.
#[allow(unsafe_code)]
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` takes no pointer and is thread-safe (it locks each arena in
    // turn); its result only says whether memory was released.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_given_back() {
        // Many small blocks (below the mmap threshold, so inside the heap), then all but the
        // last freed: glibc cannot shrink the heap past the live block at its top.
        let mut blocks: Vec<Vec<u8>> = (0..10_000).map(|i| vec![i as u8; 8192]).collect();
        let last = blocks.pop();
        let before = rss_kb();
        drop(blocks);
        release_free_memory();
        let after = rss_kb();
        drop(last);
        let (Some(before), Some(after)) = (before, after) else {
            panic!("no VmRSS in /proc/self/status");
        };
        // 80 MB were freed; at least 60 MB of it must leave the process (other tests running
        // at the same time allocate too, but not that much within a few milliseconds).
        assert!(
            after + 60_000 < before,
            "RSS {before} kB before the trim, {after} kB after"
        );
    }

    fn rss_kb() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}
