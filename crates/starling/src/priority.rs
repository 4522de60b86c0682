//! The scheduling priority of the committer thread (`[storage] commit_priority`). The thread
//! that writes to the store and the threads that serve clients share the machine's cores; at
//! `low` the committer runs at the lowest nice value and its transactions give the core back
//! every few dozen operations, so that a client's message does not wait behind a commit for a
//! core, while commits still get the time the client threads leave. Both are needed: the
//! kernel preempts the committer when a client thread wakes, but a client thread that lost the
//! core to it at a timer tick (the scheduler's fair share) gets it back only at the next tick,
//! 4 ms later at 250 Hz, unless the committer yields first (`bench/RESULTS.md`, "Mixed load",
//! for the measurements).

use tracing::warn;

use crate::config::CommitPriority;

/// The nice value of the committer at `low`: the lowest priority a normal thread can have.
const LOW_NICE: i32 = 19;

/// Operations of a transaction between two yields of the committer at `low` (about a tenth of
/// a millisecond of work): a client thread that lost the core to it at a timer tick gets it
/// back within that, not at the next tick.
const LOW_YIELD_EVERY: usize = 64;

/// How often the committer's transactions give the core back (`RedbStore::set_yield_every`).
pub(crate) fn yield_every(priority: CommitPriority) -> usize {
    match priority {
        CommitPriority::Normal => 0,
        CommitPriority::Low => LOW_YIELD_EVERY,
    }
}

/// Sets the calling thread's priority; a failure is logged, and the thread runs on at the
/// priority it had.
pub(crate) fn set_commit_priority(priority: CommitPriority) {
    match priority {
        CommitPriority::Normal => {}
        CommitPriority::Low => {
            if let Err(e) = lower_this_thread(LOW_NICE) {
                warn!(error = %e, "cannot lower the committer thread's priority; it runs at the broker's");
            }
        }
    }
}

/// Sets the nice value of the calling thread only (on Linux, `setpriority` with `PRIO_PROCESS`
/// and id 0 applies to the calling thread, not to the whole process). Raising the nice value
/// needs no privilege. Elsewhere: nothing.
#[allow(unsafe_code)]
fn lower_this_thread(nice: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `setpriority` takes plain integers and touches no memory of ours.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
    Ok(())
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;

    /// The nice value of a thread, from `/proc/thread-self/stat` (field 19).
    fn nice_of_this_thread() -> Option<i32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // The command name, in parentheses, may hold spaces: fields are counted after it.
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        rest.split_whitespace().nth(16)?.parse().ok()
    }

    /// The nice value a new thread has after `set_commit_priority(priority)`.
    fn nice_after(priority: CommitPriority) -> Option<i32> {
        std::thread::spawn(move || {
            set_commit_priority(priority);
            nice_of_this_thread()
        })
        .join()
        .ok()
        .flatten()
    }

    #[test]
    fn low_lowers_only_the_calling_thread() {
        let before = nice_of_this_thread().unwrap_or_default();
        assert_eq!(nice_after(CommitPriority::Low), Some(LOW_NICE));
        assert_eq!(
            nice_of_this_thread(),
            Some(before),
            "the other threads keep theirs"
        );
        assert_eq!(nice_after(CommitPriority::Normal), Some(before));
    }
}
