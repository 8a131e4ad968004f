//! CPU time of a process and its descendants, read from Linux's `/proc`, for benchmark reports.
//!
//! A benchmark on a shared machine is limited by the CPU each process takes per unit of work; the
//! transfer benchmark reports it for itself and for the processes it is told about (the server,
//! PostgreSQL's postmaster with its backends). Elsewhere than Linux the snapshots are empty and
//! nothing is reported.

use std::collections::{BTreeMap, BTreeSet};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, fixed at 100 in Linux's ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process to watch, with its descendants, under a name of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// Parses `NAME=PID`.
pub fn parse_watched(s: &str) -> Result<Watched, String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=PID"))?;
    let pid = pid
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("`{pid}` is not a process id"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("`{s}` has no name before `=`"));
    }
    Ok(Watched {
        name: name.to_owned(),
        pid,
    })
}

/// CPU ticks (user and system) by process id, of `root` and every descendant alive now.
pub fn snapshot(root: u32) -> BTreeMap<u32, u64> {
    let mut all: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(fields) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|t| stat_fields(&t))
            {
                all.insert(pid, fields);
            }
        }
    }
    let mut out = BTreeMap::new();
    let mut wanted = BTreeSet::from([root]);
    // Each round adds the children of the processes found so far; a process tree is shallower
    // than the number of processes, which bounds the rounds.
    for _ in 0..=all.len() {
        let before = wanted.len();
        for (pid, (ppid, _)) in &all {
            if wanted.contains(ppid) {
                wanted.insert(*pid);
            }
        }
        if wanted.len() == before {
            break;
        }
    }
    for pid in wanted {
        if let Some((_, ticks)) = all.get(&pid) {
            out.insert(pid, *ticks);
        }
    }
    out
}

/// CPU seconds used between two snapshots: by processes alive at both, the difference; by those
/// started in between, all of theirs; those that ended in between are not counted.
pub fn used_secs(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / TICKS_PER_SECOND
}

/// The parent's id and the CPU ticks (utime + stime) from the text of `/proc/<pid>/stat`. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn stat_fields(text: &str) -> Option<(u32, u64)> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3), ppid (4), ..., utime (14), stime (15).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime.saturating_add(stime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (tokio (rt) worker) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 1234 0 0";
        assert_eq!(stat_fields(text), Some((17, 325)));
        assert_eq!(stat_fields("4242 (cut short) S 17"), None);
        assert_eq!(stat_fields("no parentheses"), None);
    }

    #[test]
    fn watched_processes_are_named_pids() {
        assert_eq!(
            parse_watched("postgres=77"),
            Ok(Watched {
                name: "postgres".into(),
                pid: 77
            })
        );
        assert!(parse_watched("postgres").is_err());
        assert!(parse_watched("=77").is_err());
        assert!(parse_watched("postgres=x").is_err());
    }

    #[test]
    fn new_processes_count_whole_and_ended_ones_not_at_all() {
        let before = BTreeMap::from([(1, 100), (2, 50)]);
        let after = BTreeMap::from([(1, 160), (3, 40)]);
        assert!((used_secs(&before, &after) - 1.0).abs() < 1e-9);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_snapshot_of_this_process_holds_it() {
        let me = std::process::id();
        let snap = snapshot(me);
        assert!(snap.contains_key(&me), "{snap:?}");
    }
}
