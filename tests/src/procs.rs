//! What the host's `/proc` says of a job's processes, for the tests that
//! check who a job runs as from outside it.

/// The process a job's init (`init`, its pid on the host) started: the
/// job's command. Fails unless there is exactly one.
pub fn command_pid(init: u32) -> u32 {
    let path = format!("/proc/{init}/task/{init}/children");
    let children = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let pids: Vec<u32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap_or_else(|e| panic!("{path}: {p:?}: {e}")))
        .collect();
    assert_eq!(pids.len(), 1, "the init {init} has children {pids:?}");
    pids[0]
}

/// The `Uid:`, `Gid:` and `Groups:` lines of `/proc/<pid>/status`, or
/// `None` when no such process exists.
pub fn ids(pid: u32) -> Option<Vec<String>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(
        status
            .lines()
            .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("Groups:"))
            .map(|l| l.trim_end().to_owned())
            .collect(),
    )
}

/// What [`ids`] gives for a process running as uid `uid` and gid `uid`
/// with no supplementary groups.
pub fn expected_ids(uid: u32) -> Vec<String> {
    vec![
        format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}"),
        format!("Gid:\t{uid}\t{uid}\t{uid}\t{uid}"),
        "Groups:".to_owned(),
    ]
}
