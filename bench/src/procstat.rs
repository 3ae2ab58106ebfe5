//! What a proxy process tree costs, read from /proc.
//!
//! - CPU: `utime + stime` of /proc/<pid>/stat (clock ticks, usually 10 ms) and, for precision
//!   on short windows, the on-CPU nanoseconds of every thread from /proc/<pid>/task/*/schedstat.
//! - Memory: VmRSS of /proc/<pid>/status (userspace resident memory; kernel socket buffers are
//!   not in it).
//! - Open files: entries of /proc/<pid>/fd.
//!
//! A "tree" is the pid and all its descendants, so nginx's master plus worker count together;
//! several roots (processes sharing a port with SO_REUSEPORT) are summed into one sample.

use std::fs;

#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime, in clock ticks, summed over the tree.
    pub cpu_ticks: u64,
    /// On-CPU time of every live thread, in ns (schedstat), summed over the tree.
    pub cpu_ns: u64,
    pub rss_kb: u64,
    pub fds: u64,
    pub processes: u64,
}

/// Clock ticks per second (USER_HZ): 100 on every Linux build that matters here.
pub const TICKS_PER_SEC: u64 = 100;

impl Sample {
    /// CPU seconds between two samples: schedstat when it was readable, ticks otherwise.
    pub fn cpu_secs_since(&self, earlier: &Sample) -> f64 {
        if self.cpu_ns > 0 && earlier.cpu_ns > 0 {
            self.cpu_ns.saturating_sub(earlier.cpu_ns) as f64 / 1e9
        } else {
            self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / TICKS_PER_SEC as f64
        }
    }

    pub fn tick_secs_since(&self, earlier: &Sample) -> f64 {
        self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / TICKS_PER_SEC as f64
    }
}

/// The roots and their descendants (by scanning /proc for parent pids once), each pid once.
pub fn tree(roots: &[u32]) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|s| s.parse().ok()))
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out: Vec<u32> = Vec::with_capacity(roots.len());
    for &r in roots {
        if !out.contains(&r) {
            out.push(r);
        }
    }
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for &(c, _) in parents.iter().filter(|(c, pp)| *pp == p && *c != p) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

/// Fields of /proc/<pid>/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Samples the trees rooted at `roots`, summed; `None` when there is no root or one is gone
/// (a sum missing a process would pass for a drop in its cost).
pub fn sample(roots: &[u32]) -> Option<Sample> {
    if roots.is_empty() {
        return None;
    }
    for &r in roots {
        stat_fields(r)?;
    }
    let mut s = Sample::default();
    for pid in tree(roots) {
        let Some(f) = stat_fields(pid) else { continue };
        // utime and stime are fields 14 and 15 of stat; index 11 and 12 after the name.
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        s.cpu_ticks += ticks;
        s.cpu_ns += schedstat_ns(pid);
        s.rss_kb += vm_rss_kb(pid).unwrap_or(0);
        s.fds += fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        s.processes += 1;
    }
    Some(s)
}

fn schedstat_ns(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
