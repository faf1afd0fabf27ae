//! The contract between the supervisor and a job's init: what the supervisor
//! sends the init over the control socket ([`InitSpec`]), what the init
//! answers once the command was exec'd or could not be ([`InitReport`]), and
//! what the init leaves in the job's directory when the command has ended
//! ([`ExitRecord`] in [`EXIT_FILE`], the output in [`OUTPUT_FILE`]).
//!
//! Messages on the control socket are a 4-byte big-endian length and a JSON
//! body of at most [`MAX_MESSAGE`] bytes. Both ends are ours and the socket is
//! private to them, but the reader still bounds what it allocates. The spec's
//! first bytes carry the job's directory and log ([`JobFiles`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use jobworker_ipc::{Termination, UnixMicros};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The job's output log in its directory.
pub const OUTPUT_FILE: &str = "output.log";
/// The init's exit record in the job's directory.
pub const EXIT_FILE: &str = "exit.json";
/// The largest control message.
pub const MAX_MESSAGE: usize = 4 << 20;

/// What the init must run, and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitSpec {
    /// The job's directory, where the output log and exit record go.
    pub job_dir: PathBuf,
    /// The command as requested: an absolute path or a name to find in PATH.
    pub command: String,
    /// Its arguments, not counting argv[0].
    pub args: Vec<String>,
    /// The whole environment, `NAME=value` (PATH first).
    pub env: Vec<String>,
    /// The working directory.
    pub working_dir: String,
    /// The uid and gid the command runs as.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The hostname of the job's uts namespace.
    pub hostname: String,
    /// Output bytes kept in the log; the rest is drained and counted.
    pub output_cap: u64,
    /// The job's view of the host and what it may not do.
    pub sandbox: Sandbox,
}

/// The sandbox the init builds around the command (see `init::sandbox`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sandbox {
    /// The job's writable directory on the host, mounted at [`WORK_MOUNT`].
    pub work_dir: PathBuf,
    /// The size of each private tmpfs (`/tmp`, `/var/tmp`, `/dev/shm`,
    /// `/run/lock`), in bytes.
    pub tmp_size: u64,
    /// Paths of the host hidden from the job (an empty read-only directory,
    /// or `/dev/null` over a file).
    pub masked_paths: Vec<PathBuf>,
    /// The operator's extra bind mounts.
    pub bind_paths: Vec<BindPath>,
    /// Whether io_uring's system calls are allowed.
    pub allow_io_uring: bool,
    /// `RLIMIT_NPROC` of the command: processes of the job's uid.
    pub max_processes: u64,
}

/// Where a job finds its writable directory. The engine makes this mount
/// point on the host if it is missing: the sandbox mounts over the host's
/// tree in place, read-only (see `init::sandbox`).
pub const WORK_MOUNT: &str = "/work";

/// The job's private temporary directories: a tmpfs of its own on each.
pub const PRIVATE_TMP: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/run/lock"];

/// Whether the sandbox can make a mount point at `path` when the host has
/// none: only inside a tmpfs of its own that is writable while it builds
/// (a private temporary directory, a masked directory), and only where the
/// host has a real directory to mount that tmpfs on; the host's tree is
/// read-only to it, its `/dev` too, and a mount point in `/work` would be
/// left behind in the job's work directory.
pub fn sandbox_can_make(path: &Path, masked_paths: &[PathBuf]) -> bool {
    PRIVATE_TMP
        .iter()
        .map(Path::new)
        .chain(masked_paths.iter().map(PathBuf::as_path))
        .filter(|mount| std::fs::symlink_metadata(mount).is_ok_and(|m| m.is_dir()))
        .any(|mount| path.starts_with(mount) && path != mount)
}

/// The directories the sandbox mounts a file system of its own on, over
/// the host's: a mask below one of them would be covered, and so would a
/// bind mount's target.
pub const REPLACED: &[&str] = &["/proc", "/sys", "/dev"];

/// A host path an operator makes visible to every job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindPath {
    /// The path on the host.
    pub source: PathBuf,
    /// Where the job sees it; the same path when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    /// Whether the job may write there (read-only by default).
    #[serde(default)]
    pub writable: bool,
}

impl BindPath {
    /// Where the job sees it.
    pub fn target(&self) -> &Path {
        self.target.as_deref().unwrap_or(&self.source)
    }
}

/// The init's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitReport {
    /// The command was exec'd.
    Started,
    /// It could not be; the message says why and names the command or path.
    Failed(String),
}

/// How the command ended, written by the init once every process of the job
/// is gone and every output byte is in the log. An init of an older
/// supervisor (still running a job across an upgrade) wrote `ended_at` in
/// milliseconds; it is still read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AnyExitRecord")]
pub struct ExitRecord {
    /// The command's exit code or signal.
    pub termination: Termination,
    /// A stop request reached the init before the command ended (so the job
    /// was stopped, rather than finished by itself).
    pub stopped: bool,
    /// Output bytes the job wrote, including dropped ones.
    pub output_bytes: u64,
    /// Output bytes dropped over the cap.
    pub truncated_bytes: u64,
    /// Output bytes dropped because the log could not be written when the
    /// job ended (its file system full, or failing).
    pub disk_full_bytes: u64,
    /// When the command was exec'd (not in records of older inits).
    pub started_at_us: Option<UnixMicros>,
    /// When the command ended.
    pub ended_at_us: UnixMicros,
}

/// An [`ExitRecord`] of this version or of one from before microseconds.
#[derive(Deserialize)]
struct AnyExitRecord {
    termination: Termination,
    stopped: bool,
    output_bytes: u64,
    truncated_bytes: u64,
    #[serde(default)]
    disk_full_bytes: u64,
    #[serde(default)]
    started_at_us: Option<UnixMicros>,
    ended_at_us: Option<UnixMicros>,
    /// Milliseconds, from before `ended_at_us`.
    ended_at: Option<u64>,
}

impl TryFrom<AnyExitRecord> for ExitRecord {
    type Error = &'static str;

    fn try_from(any: AnyExitRecord) -> Result<Self, Self::Error> {
        let ended_at_us = any
            .ended_at_us
            .or(any.ended_at.map(UnixMicros::from_millis))
            .ok_or("missing field `ended_at_us`")?;
        Ok(Self {
            termination: any.termination,
            stopped: any.stopped,
            output_bytes: any.output_bytes,
            truncated_bytes: any.truncated_bytes,
            disk_full_bytes: any.disk_full_bytes,
            started_at_us: any.started_at_us,
            ended_at_us,
        })
    }
}

/// The job's directory and its output log, opened by the supervisor and
/// passed to the init with its spec; the init writes the log and the exit
/// record through them. They are the host's mount of the state directory,
/// not the copy in the job's mount namespace, so that the sandbox can make
/// that copy read-only (a file open for writing on it would make that
/// fail), and the init needs no mount of its own to reach them.
#[derive(Debug)]
pub struct JobFiles {
    /// The job's directory.
    pub dir: File,
    /// The output log, open for appending.
    pub log: File,
}

/// Sends the first part of a spec's message (see [`write_message`]) on the
/// control socket, which must not block, with the job's files; returns how
/// many bytes went (the rest goes once the init reads).
pub fn send_spec(socket: BorrowedFd<'_>, message: &[u8], files: &JobFiles) -> io::Result<usize> {
    crate::fdpass::send(socket, message, &[files.dir.as_fd(), files.log.as_fd()])
}

/// Reads the spec from the control socket, with the job's files that come
/// with its first bytes.
pub fn read_spec(control: &mut UnixStream) -> io::Result<(InitSpec, JobFiles)> {
    let mut prefix = [0; 4];
    let (message, fds) = crate::fdpass::receive(control.as_fd(), &mut prefix)?;
    if message.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let files = match <[OwnedFd; 2]>::try_from(fds) {
        Ok([dir, log]) if crate::fdpass::whole(&message) => JobFiles {
            dir: dir.into(),
            log: log.into(),
        },
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the spec came without the job's directory and log",
            ));
        }
    };
    control.read_exact(&mut prefix[message.bytes..])?;
    Ok((read_body(control, prefix)?, files))
}

/// Writes one control message.
pub fn write_message<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len as usize <= MAX_MESSAGE)
        .ok_or_else(|| io::Error::other("control message too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Reads the body of a control message whose prefix was read.
fn read_body<T: DeserializeOwned>(r: &mut impl Read, prefix: [u8; 4]) -> io::Result<T> {
    let mut body = vec![0; body_len(prefix)?];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// The body length a message's 4-byte prefix announces, checked against
/// [`MAX_MESSAGE`] before anything is allocated for it.
pub fn body_len(prefix: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control message of {len} bytes, the limit is {MAX_MESSAGE}"),
        ));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InitSpec {
        InitSpec {
            job_dir: "/state/jobs/1".into(),
            command: "echo".into(),
            args: vec!["hi".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: WORK_MOUNT.into(),
            uid: 1000,
            gid: 1000,
            hostname: "job".into(),
            output_cap: 1 << 20,
            sandbox: Sandbox {
                work_dir: "/state/jobs/1/work".into(),
                tmp_size: 1 << 20,
                masked_paths: vec![],
                bind_paths: vec![],
                allow_io_uring: false,
                max_processes: 64,
            },
        }
    }

    #[test]
    fn a_spec_comes_with_its_files_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let files = || JobFiles {
            dir: File::open(dir.path()).unwrap(),
            log: tempfile::tempfile().unwrap(),
        };
        let mut message = Vec::new();
        write_message(&mut message, &spec()).unwrap();

        // As the supervisor sends it: its first bytes with the files (here
        // only part of the length prefix), the rest later.
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        assert_eq!(send_spec(ours.as_fd(), &message[..2], &files()).unwrap(), 2);
        (&ours).write_all(&message[2..]).unwrap();
        let (back, received) = read_spec(&mut theirs).unwrap();
        assert_eq!(
            (back.command.as_str(), back.args),
            ("echo", vec!["hi".to_owned()])
        );
        assert!(received.dir.metadata().unwrap().is_dir());
        assert!(received.log.metadata().unwrap().is_file());

        // Without the files, or announcing more than the bound: refused
        // before anything is allocated for the body.
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        (&ours).write_all(&message).unwrap();
        assert_eq!(
            read_spec(&mut theirs).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        send_spec(ours.as_fd(), &u32::MAX.to_be_bytes(), &files()).unwrap();
        assert_eq!(
            read_spec(&mut theirs).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn exit_records_of_this_and_the_millisecond_version_read() {
        let record = ExitRecord {
            termination: Termination::Exited(5),
            stopped: false,
            output_bytes: 3,
            truncated_bytes: 0,
            disk_full_bytes: 0,
            started_at_us: Some(UnixMicros(1_796_218_825_000_001)),
            ended_at_us: UnixMicros(1_796_218_825_431_123),
        };
        let written = serde_json::to_string(&record).unwrap();
        assert_eq!(
            serde_json::from_str::<ExitRecord>(&written).unwrap(),
            record
        );
        let old = r#"{"termination":{"Exited":5},"stopped":false,"output_bytes":3,
                      "truncated_bytes":0,"ended_at":1796218825431}"#;
        let old = serde_json::from_str::<ExitRecord>(old).unwrap();
        assert_eq!(old.ended_at_us, UnixMicros(1_796_218_825_431_000));
        assert_eq!(old.started_at_us, None);
        let neither = r#"{"termination":{"Exited":5},"stopped":false,"output_bytes":3,
                          "truncated_bytes":0}"#;
        serde_json::from_str::<ExitRecord>(neither).unwrap_err();
    }
}
