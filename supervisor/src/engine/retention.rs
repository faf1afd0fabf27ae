//! Removing ended jobs: those older than the maximum age, then the oldest
//! while all job directories together take more than the maximum size. A
//! running job is never removed (its bytes still count toward the total).
//!
//! Ended jobs are kept in an index ordered as [`lifecycle::retention_order`]
//! says, with the bytes of each (measured once, when its cleanup is done:
//! an ended job's directory no longer changes) and their sum; a job's end
//! costs one insertion and a look at the oldest, never a walk over every
//! job. The bytes of running jobs (a record and a growing log each) are
//! measured by the periodic pass only ([`Engine::enforce_retention`], every
//! minute and at start), so between passes the total counts them as they
//! were at the last one.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use jobworker_ipc::{JobId, UnixMicros};

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

/// The ended jobs retention may remove, oldest first, and the bytes of all
/// jobs.
#[derive(Default)]
pub struct Index {
    /// Ended, cleaned-up jobs by (ended at, created at, id).
    ended: BTreeSet<(UnixMicros, UnixMicros, JobId)>,
    /// The bytes of each job of `ended`.
    bytes: HashMap<JobId, u64>,
    /// The sum of `bytes`.
    ended_total: u64,
    /// The bytes of the running jobs at the last periodic pass.
    running_total: u64,
}

impl Index {
    fn insert(&mut self, job: &Job, ended_at: UnixMicros, bytes: u64) {
        self.add(job.spec.id, job.spec.created_at, ended_at, bytes);
    }

    fn add(&mut self, id: JobId, created_at: UnixMicros, ended_at: UnixMicros, bytes: u64) {
        if self.bytes.insert(id, bytes).is_none() {
            self.ended.insert((ended_at, created_at, id));
            self.ended_total += bytes;
        }
    }

    /// Takes the oldest ended jobs out while the policy removes them.
    fn expired(&mut self, policy: Retention, now: UnixMicros) -> Vec<(JobId, u64)> {
        let mut gone = Vec::new();
        while let Some(&(ended_at, created_at, id)) = self.ended.first() {
            let total = self.ended_total + self.running_total;
            if lifecycle::expired(policy, now, ended_at, total).is_none() {
                break;
            }
            self.ended.remove(&(ended_at, created_at, id));
            let bytes = self.bytes.remove(&id).unwrap_or(0);
            self.ended_total = self.ended_total.saturating_sub(bytes);
            gone.push((id, bytes));
        }
        gone
    }
}

impl Engine {
    /// Enters an ended job whose cleanup is done into the retention index
    /// (its directory measured now: a few entries); if that makes older jobs
    /// expire, removes them on tokio's blocking pool (a directory may take
    /// long to remove). Blocks briefly.
    pub(super) fn retain_ended(self: &Arc<Self>, job: &Job) {
        let Some(ended_at) = job.status().ended_at else {
            return;
        };
        let bytes = dir_size(&job.dir);
        let expired = {
            let mut index = super::lock(&self.retention);
            index.insert(job, ended_at, bytes);
            index.expired(self.config.retention, UnixMicros::now())
        };
        if !expired.is_empty() {
            let engine = Arc::clone(self);
            tokio::task::spawn_blocking(move || engine.remove(expired));
        }
    }

    /// Enters a job recovered as ended into the retention index (the
    /// periodic pass at start applies the policy). Blocks briefly.
    pub(super) fn index_recovered(&self, job: &Job) {
        if let Some(ended_at) = job.status().ended_at {
            super::lock(&self.retention).insert(job, ended_at, dir_size(&job.dir));
        }
    }

    /// Runs the periodic pass ([`Engine::enforce_retention`]) on tokio's
    /// blocking pool.
    pub fn enforce_retention_in_background(self: &Arc<Self>) {
        let engine = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // Room for records, given up when the disk filled, taken back.
            engine.records.hold_reserve();
            engine.enforce_retention();
        });
    }

    /// The periodic pass: measures the running jobs' directories, then
    /// removes what the policy says; returns how many jobs it removed.
    /// Blocks.
    pub fn enforce_retention(&self) -> usize {
        let running: u64 = self
            .jobs()
            .values()
            .filter(|job| !job.is_ended())
            .cloned()
            .collect::<Vec<Arc<Job>>>()
            .iter()
            .map(|job| dir_size(&job.dir))
            .sum();
        let expired = {
            let mut index = super::lock(&self.retention);
            index.running_total = running;
            index.expired(self.config.retention, UnixMicros::now())
        };
        self.remove(expired)
    }

    /// Removes the jobs `expired` (taken out of the index); returns how many
    /// went.
    fn remove(&self, expired: Vec<(JobId, u64)>) -> usize {
        let mut removed = 0;
        for (id, bytes) in expired {
            let Some(job) = self.jobs().remove(&id) else {
                continue;
            };
            match std::fs::remove_dir_all(&job.dir) {
                Ok(()) => {
                    self.release_ids(&job);
                    removed += 1;
                    tracing::info!(job = %id, bytes, "retention removed an ended job");
                }
                Err(e) => {
                    tracing::error!(job = %id, error = %e, dir = %job.dir.display(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_gives_up_the_oldest_while_the_total_is_over() {
        let policy = Retention {
            max_age_ms: 0,
            max_total_bytes: 1000,
        };
        let mut index = Index::default();
        let ids: Vec<JobId> = (0..4).map(|_| JobId::random()).collect();
        // Ended in the order 2, 0, 3, 1; 400 bytes each.
        for (id, ended) in ids.iter().zip([20, 40, 10, 30]) {
            index.add(*id, UnixMicros(1), UnixMicros(ended), 400);
        }
        index.add(ids[0], UnixMicros(1), UnixMicros(20), 400);
        assert_eq!(index.ended_total, 1600, "a job entered twice counts once");
        index.running_total = 100;
        let gone = index.expired(policy, UnixMicros(50));
        assert_eq!(gone, [(ids[2], 400), (ids[0], 400)]);
        assert_eq!(index.ended_total, 800);
        assert!(index.expired(policy, UnixMicros(50)).is_empty());
        index.running_total = 300;
        assert_eq!(index.expired(policy, UnixMicros(50)), [(ids[3], 400)]);
    }

    #[test]
    fn the_index_gives_up_what_is_too_old() {
        let policy = Retention {
            max_age_ms: 10,
            max_total_bytes: 0,
        };
        let mut index = Index::default();
        let (old, young) = (JobId::random(), JobId::random());
        index.add(young, UnixMicros(1), UnixMicros(95_000), 1);
        index.add(old, UnixMicros(2), UnixMicros(80_000), 1);
        assert_eq!(index.expired(policy, UnixMicros(100_000)), [(old, 1)]);
        assert!(index.expired(policy, UnixMicros(100_000)).is_empty());
    }
}
