//! Pure parsers and formatters for the kernel's cgroup and proc files. No I/O:
//! each function takes the text of a file (or the values to write) so it can be
//! tested with literal text.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use super::Controllers;

/// The `cpu.max` period, in microseconds.
pub(super) const CPU_PERIOD_USEC: u64 = 100_000;
/// The smallest quota the kernel accepts in `cpu.max`, in microseconds.
pub(super) const CPU_MIN_QUOTA_USEC: u64 = 1_000;
/// The longest job cgroup name, in bytes.
pub(super) const MAX_JOB_NAME_LEN: usize = 64;

/// A cgroup2 mount, as `/proc/self/mountinfo` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Mount {
    /// Where it is mounted.
    pub(super) point: PathBuf,
    /// Which cgroup of the hierarchy is its root (`/` unless a bind mount or
    /// a cgroup namespace narrows it).
    pub(super) root: PathBuf,
}

/// The first mount whose file-system type is `cgroup2`.
///
/// A mountinfo line reads `ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS
/// [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS`; fields never hold a literal
/// space (the kernel escapes space, tab, newline and backslash as octal).
pub(super) fn cgroup2_mount(mountinfo: &str) -> Option<Mount> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        if separator < 6 || fields.get(separator + 1) != Some(&"cgroup2") {
            return None;
        }
        Some(Mount {
            point: unescape(fields[4]),
            root: unescape(fields[3]),
        })
    })
}

/// Decodes the kernel's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`) in a mountinfo field. A backslash not followed by three octal
/// digits is kept as it is.
pub(super) fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            digits.iter().try_fold(0u16, |acc, d| match d {
                b'0'..=b'7' => Some(acc * 8 + u16::from(d - b'0')),
                _ => None,
            })
        });
        match (bytes[i], octal.and_then(|v| u8::try_from(v).ok())) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Our cgroup v2 path from `/proc/self/cgroup`: the `0::/path` line (hybrid
/// hosts also list v1 hierarchies on other lines).
pub(super) fn unified_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
}

/// The controllers of ours named in a space-separated list such as
/// `cgroup.controllers` (others, like `hugetlb`, are ignored).
pub(super) fn controllers(text: &str) -> Controllers {
    let mut found = Controllers::default();
    for name in text.split_ascii_whitespace() {
        match name {
            "cpu" => found.cpu = true,
            "memory" => found.memory = true,
            "io" => found.io = true,
            "pids" => found.pids = true,
            _ => {}
        }
    }
    found
}

/// The value of `key` in a flat keyed file (`key value` lines: `cgroup.events`,
/// `memory.events`, `cpu.stat`). `None` if no line has that key; an error if
/// the line is there but its value is not a number.
pub(super) fn keyed_value(text: &str, key: &str) -> Result<Option<u64>, String> {
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        if words.next() != Some(key) {
            continue;
        }
        return match (words.next(), words.next()) {
            (Some(value), None) => value
                .parse()
                .map(Some)
                .map_err(|_| format!("{key} has a value that is not a number: {value:?}")),
            _ => Err(format!("the {key} line is not `{key} <number>`: {line:?}")),
        };
    }
    Ok(None)
}

/// Bytes read and written, summed over devices, from `io.stat` lines such as
/// `8:0 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0`.
pub(super) fn io_stat_bytes(text: &str) -> Result<(u64, u64), String> {
    let (mut read, mut written) = (0u64, 0u64);
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(device) = words.next() else {
            continue;
        };
        if device_numbers(device).is_none() {
            return Err(format!("a line does not start with MAJ:MIN: {line:?}"));
        }
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("{word:?} is not key=value in line {line:?}"))?;
            let total = match key {
                "rbytes" => &mut read,
                "wbytes" => &mut written,
                _ => continue,
            };
            let value: u64 = value
                .parse()
                .map_err(|_| format!("{key} is not a number in line {line:?}"))?;
            *total = total.saturating_add(value);
        }
    }
    Ok((read, written))
}

/// A device number written `MAJ:MIN` (as in sysfs `dev` files and `io.stat`),
/// surrounding whitespace allowed.
pub(super) fn device_numbers(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The pids listed in `cgroup.procs`, one a line.
pub(super) fn pids(text: &str) -> Result<Vec<u32>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.trim()
                .parse()
                .map_err(|_| format!("{line:?} is not a pid"))
        })
        .collect()
}

/// A single number file such as `memory.peak`.
pub(super) fn number(text: &str) -> Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{:?} is not a number", text.trim()))
}

/// The `cpu.max` line for a bandwidth in millicores: `<quota> <period>` with a
/// 100 ms period, so one millicore is 100 µs of quota, and at least the
/// kernel's minimum quota of 1 ms.
pub(super) fn cpu_max(millicores: u32) -> String {
    let quota = (u64::from(millicores) * (CPU_PERIOD_USEC / 1000)).max(CPU_MIN_QUOTA_USEC);
    format!("{quota} {CPU_PERIOD_USEC}")
}

/// The `io.max` line for one device, e.g. `254:0 rbps=1048576 wbps=max`, or
/// `None` if neither bandwidth is limited.
pub(super) fn io_max(
    (major, minor): (u32, u32),
    read_bps: Option<u64>,
    write_bps: Option<u64>,
) -> Option<String> {
    if read_bps.is_none() && write_bps.is_none() {
        return None;
    }
    let show = |v: Option<u64>| v.map_or_else(|| "max".to_owned(), |v| v.to_string());
    Some(format!(
        "{major}:{minor} rbps={} wbps={}",
        show(read_bps),
        show(write_bps)
    ))
}

/// Whether `name` can be a job cgroup's directory: 1 to 64 bytes of
/// `[a-z0-9-]` (job ids are lowercase hyphenated UUIDs), so never `.`, `..`
/// or anything with a `/`.
pub(super) fn valid_job_name(name: &str) -> bool {
    (1..=MAX_JOB_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_cgroup2_mount_on_a_hybrid_host() {
        assert_eq!(
            cgroup2_mount(HYBRID_MOUNTINFO),
            Some(Mount {
                point: PathBuf::from("/sys/fs/cgroup/unified"),
                root: PathBuf::from("/"),
            })
        );
    }

    #[test]
    fn finds_the_cgroup2_mount_with_optional_fields() {
        let text = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 \
                    master:1 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        assert_eq!(
            cgroup2_mount(text).map(|m| m.point),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn the_fstype_is_the_field_after_the_separator() {
        // A mount point named "cgroup2" with another file-system type, and a
        // v1 "cgroup" mount, are not cgroup2 mounts.
        let text = "\
1 0 0:1 / /cgroup2 rw - tmpfs cgroup2 rw
2 0 0:2 / /x rw - cgroup cgroup2 rw,cpu
";
        assert_eq!(cgroup2_mount(text), None);
        assert_eq!(cgroup2_mount(""), None);
        assert_eq!(cgroup2_mount("garbage\n- cgroup2\n"), None);
    }

    #[test]
    fn decodes_escapes_in_the_mount_point_and_root() {
        let text = r"7 1 0:9 /a\040b /mnt/my\040cg\011x\012y\134z rw - cgroup2 none rw";
        let mount = cgroup2_mount(text).unwrap();
        assert_eq!(mount.point, PathBuf::from("/mnt/my cg\tx\ny\\z"));
        assert_eq!(mount.root, PathBuf::from("/a b"));
    }

    #[test]
    fn keeps_backslashes_that_are_not_escapes() {
        assert_eq!(unescape(r"/a\b"), PathBuf::from(r"/a\b"));
        assert_eq!(unescape(r"/a\04"), PathBuf::from(r"/a\04"));
        assert_eq!(unescape(r"/a\777"), PathBuf::from(r"/a\777"));
        assert_eq!(unescape(r"\"), PathBuf::from(r"\"));
        assert_eq!(unescape(r"/x\040"), PathBuf::from("/x "));
    }

    #[test]
    fn finds_the_unified_line_of_proc_self_cgroup() {
        let hybrid = "\
9:name=systemd:/
4:memory:/process_api/54a7
1:cpu:/
0::/
";
        assert_eq!(unified_cgroup(hybrid), Some("/"));
        let pure = "0::/system.slice/jobworker.service\n";
        assert_eq!(
            unified_cgroup(pure),
            Some("/system.slice/jobworker.service")
        );
        assert_eq!(unified_cgroup("4:memory:/x\n1:cpu:/\n"), None);
    }

    #[test]
    fn parses_controllers() {
        assert_eq!(
            controllers("cpuset cpu io memory hugetlb pids rdma misc\n"),
            Controllers {
                cpu: true,
                memory: true,
                io: true,
                pids: true
            }
        );
        assert_eq!(controllers("hugetlb\n"), Controllers::default());
        assert_eq!(controllers(""), Controllers::default());
        assert_eq!(
            controllers("memory pids"),
            Controllers {
                memory: true,
                pids: true,
                ..Controllers::default()
            }
        );
    }

    #[test]
    fn parses_flat_keyed_files() {
        let events = "populated 1\nfrozen 0\n";
        assert_eq!(keyed_value(events, "populated"), Ok(Some(1)));
        assert_eq!(keyed_value(events, "frozen"), Ok(Some(0)));
        assert_eq!(keyed_value(events, "missing"), Ok(None));
        let memory_events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(memory_events, "oom_kill"), Ok(Some(1)));
        assert_eq!(keyed_value(memory_events, "oom"), Ok(Some(1)));
        let cpu_stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n\
                        nr_periods 0\nnr_throttled 0\nthrottled_usec 0\n";
        assert_eq!(keyed_value(cpu_stat, "usage_usec"), Ok(Some(123_456)));
    }

    #[test]
    fn garbled_keyed_values_are_errors() {
        keyed_value("populated yes\n", "populated").unwrap_err();
        keyed_value("populated\n", "populated").unwrap_err();
        keyed_value("populated 1 2\n", "populated").unwrap_err();
        // A garbled line for another key does not matter.
        assert_eq!(
            keyed_value("frozen ?\npopulated 0\n", "populated"),
            Ok(Some(0))
        );
    }

    #[test]
    fn sums_io_stat_over_devices() {
        let text = "\
8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0
254:0 rbytes=100 wbytes=20 rios=1 wios=1 dbytes=0 dios=0
";
        assert_eq!(io_stat_bytes(text), Ok((1_459_300, 314_773_524)));
        assert_eq!(io_stat_bytes(""), Ok((0, 0)));
        assert_eq!(io_stat_bytes("\n"), Ok((0, 0)));
    }

    #[test]
    fn garbled_io_stat_is_an_error() {
        io_stat_bytes("8:0 rbytes=x wbytes=1\n").unwrap_err();
        io_stat_bytes("8:0 rbytes 1\n").unwrap_err();
        io_stat_bytes("sda rbytes=1 wbytes=1\n").unwrap_err();
    }

    #[test]
    fn parses_device_numbers() {
        assert_eq!(device_numbers("254:0\n"), Some((254, 0)));
        assert_eq!(device_numbers("8:17"), Some((8, 17)));
        assert_eq!(device_numbers("8"), None);
        assert_eq!(device_numbers("a:b"), None);
    }

    #[test]
    fn parses_cgroup_procs() {
        assert_eq!(pids("12\n345\n"), Ok(vec![12, 345]));
        assert_eq!(pids(""), Ok(vec![]));
        pids("12\nx\n").unwrap_err();
    }

    #[test]
    fn parses_single_numbers() {
        assert_eq!(number("1048576\n"), Ok(1_048_576));
        number("max\n").unwrap_err();
    }

    #[test]
    fn formats_cpu_max_from_millicores() {
        assert_eq!(cpu_max(500), "50000 100000");
        assert_eq!(cpu_max(1000), "100000 100000");
        assert_eq!(cpu_max(2500), "250000 100000");
        assert_eq!(cpu_max(10), "1000 100000");
        assert_eq!(cpu_max(1), "1000 100000");
        assert_eq!(cpu_max(0), "1000 100000");
        assert_eq!(cpu_max(1_000_000), "100000000 100000");
    }

    #[test]
    fn formats_io_max() {
        assert_eq!(
            io_max((254, 0), Some(1_048_576), None).as_deref(),
            Some("254:0 rbps=1048576 wbps=max")
        );
        assert_eq!(
            io_max((8, 16), None, Some(4096)).as_deref(),
            Some("8:16 rbps=max wbps=4096")
        );
        assert_eq!(
            io_max((8, 0), Some(1), Some(2)).as_deref(),
            Some("8:0 rbps=1 wbps=2")
        );
        assert_eq!(io_max((8, 0), None, None), None);
    }

    #[test]
    fn validates_job_names() {
        assert!(valid_job_name("0b6f1e8e-6c39-4d4e-9f51-2f3b0c1a9d7e"));
        assert!(valid_job_name("a"));
        assert!(valid_job_name(&"a".repeat(64)));
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", "UPPER", "a b", "a.b", "a\0b", "é",
        ] {
            assert!(!valid_job_name(bad), "{bad:?} was accepted");
        }
        assert!(!valid_job_name(&"a".repeat(65)));
    }
}
