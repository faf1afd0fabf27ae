//! Removing ended jobs: those older than the maximum age, then the oldest
//! while all job directories together take more than the maximum size. A
//! running job is never removed (its bytes still count toward the total).

use std::path::Path;
use std::sync::Arc;

use jobworker_ipc::UnixMicros;

use super::job::Job;
use super::{Engine, lifecycle};

/// How long ended jobs are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Ended jobs older than this (milliseconds since they ended) go; 0 keeps
    /// them regardless of age.
    pub max_age_ms: u64,
    /// While all job directories take more bytes than this, the oldest ended
    /// jobs go; 0 sets no limit.
    pub max_total_bytes: u64,
}

impl Engine {
    /// Applies the retention policy on tokio's blocking pool (removing a
    /// job's directory may take long; not on the engine's few threads).
    pub fn enforce_retention_in_background(self: &Arc<Self>) {
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || engine.enforce_retention());
    }

    /// Applies the retention policy now; returns how many jobs it removed.
    /// Only a job whose end is cleaned up (its record final, its cgroup gone)
    /// is ever removed; one pass at a time. Blocks.
    pub fn enforce_retention(&self) -> usize {
        let _one_pass_at_a_time = super::lock(&self.retaining);
        let jobs: Vec<Arc<Job>> = self.jobs().values().cloned().collect();
        // An ended job's directory no longer changes: it is measured once.
        // A running one (a record and a growing log) is measured each time.
        let mut sized: Vec<(Arc<Job>, u64)> = jobs
            .into_iter()
            .map(|job| {
                let size = if job.is_ended() {
                    *job.ended_size.get_or_init(|| dir_size(&job.dir))
                } else {
                    dir_size(&job.dir)
                };
                (job, size)
            })
            .collect();
        let mut total: u64 = sized.iter().map(|(_, size)| size).sum();
        let mut ended: Vec<(Arc<Job>, UnixMicros, u64)> = sized
            .drain(..)
            .filter(|(job, _)| job.is_cleaned_up())
            .filter_map(|(job, size)| {
                let ended_at = job.status().ended_at?;
                Some((job, ended_at, size))
            })
            .collect();
        ended.sort_by_key(|(job, ended_at, _)| {
            lifecycle::retention_order(*ended_at, job.spec.created_at)
        });

        let now = UnixMicros::now();
        let mut removed = 0;
        for (job, ended_at, size) in ended {
            let Some((too_old, too_big)) =
                lifecycle::expired(self.config.retention, now, ended_at, total)
            else {
                continue;
            };
            self.jobs().remove(&job.spec.id);
            match std::fs::remove_dir_all(&job.dir) {
                Ok(()) => {
                    self.release_ids(&job);
                    total = total.saturating_sub(size);
                    removed += 1;
                    tracing::info!(job = %job.spec.id, too_old, too_big, "retention removed an ended job");
                }
                Err(e) => {
                    tracing::error!(job = %job.spec.id, error = %e, dir = %job.dir.display(),
                        "retention could not remove a job directory");
                }
            }
        }
        removed
    }
}

/// The bytes the files directly in `dir` take.
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.metadata().ok())
                .filter(|meta| meta.is_file())
                .map(|meta| meta.len())
                .sum()
        })
        .unwrap_or(0)
}
