//! Writing a new job cgroup's limits (`cpu.max`, `memory.max` and
//! `memory.swap.max`, `io.max`, `pids.max`), and the tests' switch that skips
//! some of them.

use std::path::Path;

use jobworker_ipc::{EnforcedLimits, Limits};

use super::{CgroupError, Controllers, exists, parse, write};

/// A test-only sabotage switch: the limits it names (comma-separated `cpu`,
/// `memory`, `io`, `pids`) are reported as enforced but never written, so
/// that the tests which measure limits on a real kernel can be shown to fail.
/// Never set it in production; the supervisor warns at startup when it is.
pub const SKIP_LIMITS_ENV: &str = "JOBWORKER_TESTING_SKIP_LIMITS";

/// Whether [`SKIP_LIMITS_ENV`] names `controller`.
fn sabotaged(controller: &str) -> bool {
    std::env::var(SKIP_LIMITS_ENV).is_ok_and(|v| v.split(',').any(|c| c.trim() == controller))
}

/// Writes `value` to a limit file unless the limit is sabotaged.
fn write_limit(controller: &str, path: &Path, value: &str) -> Result<(), CgroupError> {
    if sabotaged(controller) {
        tracing::warn!(path = %path.display(), "{SKIP_LIMITS_ENV}: not writing this limit");
        return Ok(());
    }
    write(path, value)
}

/// Writes the limits of a new job cgroup at `dir` (see
/// [`CgroupTree::create_job`](super::CgroupTree::create_job)).
pub(super) fn write_limits(
    dir: &Path,
    available: Controllers,
    limits: &Limits,
    io_device: Option<(u32, u32)>,
) -> Result<EnforcedLimits, CgroupError> {
    let mut enforced = EnforcedLimits::default();
    if available.cpu
        && let Some(millicores) = limits.cpu_millicores()
    {
        write_limit("cpu", &dir.join("cpu.max"), &parse::cpu_max(millicores))?;
        enforced.cpu = true;
    }
    if available.memory
        && let Some(bytes) = limits.memory_bytes()
    {
        write_limit("memory", &dir.join("memory.max"), &bytes.to_string())?;
        let swap = dir.join("memory.swap.max");
        if exists(&swap)? {
            write_limit("memory", &swap, "0")?;
        }
        enforced.memory = true;
    }
    if available.io
        && let Some(device) = io_device
        && let Some(line) = parse::io_max(device, limits.io_read_bps(), limits.io_write_bps())
    {
        write_limit("io", &dir.join("io.max"), &line)?;
        enforced.io = true;
    }
    if available.pids
        && let Some(pids) = limits.pids()
    {
        write_limit("pids", &dir.join("pids.max"), &pids.to_string())?;
        enforced.pids = true;
    }
    Ok(enforced)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::cgroup::fake::{self, ALL};

    fn limits(cpu: Option<u32>, memory: Option<u64>) -> Limits {
        Limits::new(cpu, memory, None, None, None).unwrap()
    }

    #[test]
    fn memory_swap_max_is_zeroed_when_it_exists() {
        let dir = fake::cgroup("memory");
        let limits = limits(None, Some(1 << 30));
        let enforced = write_limits(dir.path(), ALL, &limits, None).unwrap();
        assert_eq!(
            enforced,
            EnforcedLimits {
                memory: true,
                ..EnforcedLimits::default()
            }
        );
        assert_eq!(fake::content(dir.path().join("memory.max")), "1073741824");
        assert_eq!(fake::content(dir.path().join("memory.swap.max")), "0");
        // A kernel without swap accounting has no memory.swap.max: the memory
        // limit is still enforced, and nothing is written in its place.
        let no_swap = fake::cgroup("memory");
        fs::remove_file(no_swap.path().join("memory.swap.max")).unwrap();
        let enforced = write_limits(no_swap.path(), ALL, &limits, None).unwrap();
        assert!(enforced.memory);
        assert_eq!(
            fake::content(no_swap.path().join("memory.max")),
            "1073741824"
        );
        assert!(!no_swap.path().join("memory.swap.max").exists());
    }

    #[test]
    fn a_failed_limit_write_is_an_error() {
        let dir = fake::cgroup("cpu");
        // A directory where cpu.max should be makes the write fail, as the
        // kernel refusing a value would.
        let cpu_max = dir.path().join("cpu.max");
        fs::remove_file(&cpu_max).unwrap();
        fs::create_dir(&cpu_max).unwrap();
        let err = write_limits(dir.path(), ALL, &limits(Some(250), None), None).unwrap_err();
        let message = err.to_string();
        let expected = format!("writing 25000 100000 to {}: ", cpu_max.display());
        assert!(message.starts_with(&expected), "{message}");
    }

    #[test]
    fn a_limit_file_the_kernel_lacks_is_an_error() {
        // Claimed available, but the cgroup has no memory files.
        let dir = fake::cgroup("cpu");
        let err = write_limits(dir.path(), ALL, &limits(None, Some(1 << 20)), None).unwrap_err();
        let memory_max = dir.path().join("memory.max");
        let message = err.to_string();
        let expected = format!("writing 1048576 to {}: ", memory_max.display());
        assert!(message.starts_with(&expected), "{message}");
        assert!(!memory_max.exists());
    }
}
