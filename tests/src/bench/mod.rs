//! The benchmark harness behind `bench` (see BENCHMARKS.md): the real
//! supervisor and gateway measured against floors and peers in the same run.
//!
//! - [`stack`]: the fixture's stack (certificates, the supervisor and the
//!   gateway started for real) as the bench starts it, and what it reads
//!   of the stack's processes (memory, CPU time).
//! - [`floor`]: the bare clone3 + namespaces + cgroup + exec program, built
//!   with the system `cc`, and the spawn-to-first-byte timer for it and for
//!   the peers (`unshare`, `bwrap`).
//! - [`stats`]: median and p99.
//! - [`report`]: the table and the machine's description.
//! - [`figures`]: the six figures: start latency, control-plane latency,
//!   job throughput, streaming, footprint, followers of a steady writer.

pub mod figures;
pub mod floor;
pub mod report;
pub mod stack;
pub mod stats;

/// What to run and how many samples to take.
#[derive(Clone, Debug)]
pub struct Options {
    /// Samples per start-latency measurement.
    pub start_samples: usize,
    /// Samples per control-plane measurement.
    pub control_samples: usize,
    /// Seconds per throughput level.
    pub throughput_secs: u64,
    /// Concurrency levels of the throughput figure.
    pub throughput_clients: Vec<usize>,
    /// Bytes the streaming job writes with no or one follower (and the pipe).
    pub stream_bytes: u64,
    /// Bytes the streaming job writes when 8 and 64 clients follow it.
    pub fanout_bytes: u64,
    /// Follower counts of the fan-out runs.
    pub fanout_followers: Vec<usize>,
    /// Finished jobs on record for the footprint figure.
    pub footprint_jobs: usize,
    /// Concurrent streams for the footprint figure.
    pub footprint_streams: usize,
    /// Followers of the steady writer (figure 6).
    pub steady_followers: usize,
    /// Where every figure's supervisor keeps its files (job directories)
    /// until the run ends: removing one figure's thousands of job files
    /// right before the next figure would slow that figure's file
    /// creations on a journal-less ext4 (its allocator skips each inode
    /// freed in the last minutes, one inode-table lookup each), which is
    /// the bench's cost, not the figure's.
    pub files_in: std::path::PathBuf,
}
