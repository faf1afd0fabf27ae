//! The block device of a path, as `io.max` names it: the whole disk's
//! `MAJ:MIN`, found through `/sys/dev/block`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{CgroupError, exists, io_error, parse, parse_error, read};

/// Where the kernel describes block devices by number.
const SYS_DEV_BLOCK: &str = "/sys/dev/block";

/// The block device (major, minor) that holds `path`, as `io.max` wants it:
/// a partition is resolved to its whole disk. `None` if the file system is
/// not on a block device listed under `/sys/dev/block` (tmpfs, overlay,
/// btrfs subvolumes...): io limits cannot be enforced for it.
pub fn block_device_of(path: &Path) -> Result<Option<(u32, u32)>, CgroupError> {
    let dev = fs::metadata(path)
        .map_err(io_error("inspecting", path))?
        .dev();
    whole_disk(
        Path::new(SYS_DEV_BLOCK),
        (rustix::fs::major(dev), rustix::fs::minor(dev)),
    )
}

/// Resolves `(major, minor)` in a `/sys/dev/block`-like directory: a
/// partition (its entry has a `partition` file) to the `dev` of its parent
/// disk.
fn whole_disk(
    sys_dev_block: &Path,
    (major, minor): (u32, u32),
) -> Result<Option<(u32, u32)>, CgroupError> {
    let entry = sys_dev_block.join(format!("{major}:{minor}"));
    if !exists(&entry)? {
        return Ok(None);
    }
    if !exists(&entry.join("partition"))? {
        return Ok(Some((major, minor)));
    }
    let device = fs::canonicalize(&entry).map_err(io_error("resolving", &entry))?;
    let disk = device
        .parent()
        .ok_or_else(|| parse_error(&device, "a partition without a parent disk"))?;
    let dev_file = disk.join("dev");
    let text = read(&dev_file)?;
    parse::device_numbers(&text)
        .map(Some)
        .ok_or_else(|| parse_error(&dev_file, format!("{:?} is not MAJ:MIN", text.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_disk_resolves_partitions() {
        let sys = tempfile::tempdir().unwrap();
        let disk = sys.path().join("devices/virtual/block/vda");
        fs::create_dir_all(disk.join("vda1")).unwrap();
        fs::write(disk.join("dev"), "254:0\n").unwrap();
        fs::write(disk.join("vda1/dev"), "254:1\n").unwrap();
        fs::write(disk.join("vda1/partition"), "1\n").unwrap();
        let block = sys.path().join("dev/block");
        fs::create_dir_all(&block).unwrap();
        std::os::unix::fs::symlink(disk.join("vda1"), block.join("254:1")).unwrap();
        std::os::unix::fs::symlink(&disk, block.join("254:0")).unwrap();
        assert_eq!(whole_disk(&block, (254, 1)).unwrap(), Some((254, 0)));
        assert_eq!(whole_disk(&block, (254, 0)).unwrap(), Some((254, 0)));
        assert_eq!(whole_disk(&block, (0, 42)).unwrap(), None);
        fs::write(disk.join("dev"), "vda\n").unwrap();
        let err = whole_disk(&block, (254, 1)).unwrap_err().to_string();
        assert!(err.contains("dev") && err.contains("MAJ:MIN"), "{err}");
    }
}
