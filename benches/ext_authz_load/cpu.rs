//! Process CPU accounting from `/proc`: where the two cores went during a measurement window.

use std::collections::BTreeMap;
use std::process::Command;

/// Clock ticks per second of `/proc/*/stat` (`getconf CLK_TCK`, 100 on Linux unless told).
pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime (ticks) from the text of a `stat` file.
fn stat_ticks(stat: &str) -> u64 {
    // The fields after the `(comm)`; utime and stime are fields 14 and 15 of the file.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// CPU ticks used so far by this process' threads, grouped by the role their name tells, and
/// by the other processes given (Envoy).
pub(crate) fn cpu_snapshot(others: &[(&'static str, u32)]) -> BTreeMap<&'static str, u64> {
    let mut groups = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            // The log writer thread does the servers' logging, as in `portcullis serve`.
            let group = if comm.starts_with("srv-") || comm.starts_with("log-writer") {
                "servers"
            } else if comm.starts_with("load-") {
                "load generator"
            } else if comm.starts_with("upstream") {
                "upstream"
            } else {
                "other bench threads"
            };
            *groups.entry(group).or_insert(0) += stat_ticks(&stat);
        }
    }
    for (name, pid) in others {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        *groups.entry(*name).or_insert(0) += stat_ticks(&stat);
    }
    // Everything else the machine ran (other processes: builds, tests) is the busy time of
    // `/proc/stat` minus ours.
    let ours: u64 = groups.values().sum();
    let machine = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: u64 = machine
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: all but idle (3) and iowait (4)
        .filter(|(i, _)| *i < 8 && *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    groups.insert("rest of the machine", busy.saturating_sub(ours));
    groups
}

/// Cores used by each group between two snapshots `seconds` apart.
pub(crate) fn cores_used(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
    seconds: f64,
    ticks: f64,
) -> String {
    after
        .iter()
        .map(|(group, t)| {
            (
                group,
                t.saturating_sub(before.get(group).copied().unwrap_or(0)),
            )
        })
        .filter(|(group, used)| *used > 0 || **group == "rest of the machine")
        .map(|(group, used)| format!("{group} {:.2}", used as f64 / ticks / seconds))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn cpu_of(
    before: &BTreeMap<&'static str, u64>,
    after: &BTreeMap<&'static str, u64>,
    group: &str,
    ticks: f64,
) -> f64 {
    let b = before.get(group).copied().unwrap_or(0);
    let a = after.get(group).copied().unwrap_or(0);
    a.saturating_sub(b) as f64 / ticks
}
