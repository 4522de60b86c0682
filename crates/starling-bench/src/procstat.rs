//! CPU time and resident memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.

use anyhow::{Context, Result, anyhow};

/// Linux reports utime and stime in USER_HZ ticks, 100 per second on every mainstream
/// architecture.
const TICKS_PER_S: f64 = 100.0;

/// `pid` or `"self"`.
#[derive(Debug, Clone)]
pub(crate) struct Proc {
    dir: String,
}

impl Proc {
    pub(crate) fn pid(pid: u32) -> Self {
        Self {
            dir: format!("/proc/{pid}"),
        }
    }

    pub(crate) fn this() -> Self {
        Self {
            dir: "/proc/self".into(),
        }
    }

    /// User plus system CPU time of all the process's threads, in seconds.
    pub(crate) fn cpu_s(&self) -> Result<f64> {
        let path = format!("{}/stat", self.dir);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name (field 2) is in parentheses and may contain spaces.
        let rest = text
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("{path}: no ')'"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state is field 3, utime field 14, stime field 15.
        let field = |n: usize| -> Result<u64> {
            fields
                .get(n - 3)
                .ok_or_else(|| anyhow!("{path}: field {n} missing"))?
                .parse::<u64>()
                .with_context(|| format!("{path}: field {n}"))
        };
        Ok((field(14)? + field(15)?) as f64 / TICKS_PER_S)
    }

    /// Resident set size in KiB.
    pub(crate) fn rss_kb(&self) -> Result<u64> {
        self.field("status", "VmRSS:")
    }

    /// Peak resident set size in KiB.
    pub(crate) fn hwm_kb(&self) -> Result<u64> {
        self.field("status", "VmHWM:")
    }

    /// Bytes the process caused to be written to storage (`write_bytes` of `/proc/<pid>/io`):
    /// what a durable broker writes to its store, page cache flushes included.
    pub(crate) fn write_bytes(&self) -> Result<u64> {
        self.field("io", "write_bytes:")
    }

    /// The number after `key` on its line of `/proc/<pid>/<file>`.
    fn field(&self, file: &str, key: &str) -> Result<u64> {
        let path = format!("{}/{file}", self.dir);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .ok_or_else(|| anyhow!("{path}: no {key}"))?;
        line.split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("{path}: bad {key} line"))?
            .parse()
            .with_context(|| format!("{path}: {key}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let p = Proc::this();
        assert!(p.cpu_s().unwrap() >= 0.0);
        assert!(p.rss_kb().unwrap() > 0);
        p.write_bytes().unwrap();
    }
}
