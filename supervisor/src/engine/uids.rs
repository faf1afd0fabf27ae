//! Who a job runs as: by default a uid and gid of its own, taken from a
//! configured range ([`UidPool`]), so that no two jobs share files, keyrings,
//! inotify instances, process limits or signals; or, as an explicit and
//! weaker choice, one configured account for every job ([`JobIds::Shared`]).
//!
//! A uid is held from the job's start until the job has ended and nothing
//! of it is left: its processes are gone (the job's pid namespace ends with
//! its init) and its work directory, the only place outside its private
//! tmpfs mounts where it could leave files, is removed. The engine releases
//! it then; a restarted supervisor holds again the uids its recovered jobs
//! still hold. Uids are handed out round-robin, so a released one is the
//! last to come back.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use jobworker_ipc::JobId;

/// Where jobs get their uid and gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobIds {
    /// Every job runs as this one account (`job_user`).
    Shared {
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
    },
    /// Each job gets its own uid from `range`, and the same number as gid.
    PerJob {
        /// The uids (and gids) jobs may get.
        range: RangeInclusive<u32>,
        /// Ids of the range that name an account or a group of the host.
        excluded: BTreeSet<u32>,
    },
}

/// The uids of a range that jobs may get, and which of them are held.
#[derive(Debug)]
pub struct UidPool {
    range: RangeInclusive<u32>,
    /// Ids of the range that name an account or a group of the host.
    excluded: BTreeSet<u32>,
    /// Held uids and the job holding each.
    held: BTreeMap<u32, JobId>,
    next: u32,
}

impl UidPool {
    /// A pool over `range`, never handing out an id of `excluded`.
    pub fn new(range: RangeInclusive<u32>, excluded: BTreeSet<u32>) -> Self {
        let next = *range.start();
        Self {
            range,
            excluded,
            held: BTreeMap::new(),
            next,
        }
    }

    /// The range.
    pub fn range(&self) -> &RangeInclusive<u32> {
        &self.range
    }

    /// Whether `uid` is one this pool hands out.
    pub fn contains(&self, uid: u32) -> bool {
        self.range.contains(&uid) && !self.excluded.contains(&uid)
    }

    /// How many uids can still be handed out.
    pub fn free(&self) -> usize {
        let usable = self
            .range
            .clone()
            .count()
            .saturating_sub(self.excluded.len());
        usable.saturating_sub(self.held.len())
    }

    /// Whether `job` holds `uid`.
    pub fn is_held_by(&self, uid: u32, job: JobId) -> bool {
        self.held.get(&uid) == Some(&job)
    }

    /// How many uids are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Hands `job` a free uid, the one after the last handed out if it is
    /// free; `None` when every uid is held.
    pub fn allocate(&mut self, job: JobId) -> Option<u32> {
        let (start, end) = (*self.range.start(), *self.range.end());
        let candidates = (self.next..=end).chain(start..self.next);
        let uid = candidates
            .into_iter()
            .find(|uid| !self.held.contains_key(uid) && !self.excluded.contains(uid))?;
        self.held.insert(uid, job);
        self.next = if uid == end { start } else { uid + 1 };
        Some(uid)
    }

    /// Holds `uid` for `job`, recovered after a restart. False if it is not
    /// one of the pool's, or already held by another job.
    pub fn hold(&mut self, uid: u32, job: JobId) -> bool {
        if !self.contains(uid) {
            return false;
        }
        *self.held.entry(uid).or_insert(job) == job
    }

    /// Gives `uid` back, if `job` holds it.
    pub fn release(&mut self, uid: u32, job: JobId) {
        if self.is_held_by(uid, job) {
            self.held.remove(&uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(pool: &mut UidPool) -> Vec<u32> {
        std::iter::from_fn(|| pool.allocate(JobId::random())).collect()
    }

    #[test]
    fn hands_out_distinct_uids_until_none_is_left() {
        let mut pool = UidPool::new(100..=104, BTreeSet::from([102]));
        assert_eq!(pool.free(), 4);
        let job = JobId::random();
        assert_eq!(pool.allocate(job), Some(100));
        assert_eq!(all(&mut pool), [101, 103, 104]);
        assert_eq!(pool.free(), 0);
        assert_eq!(pool.allocate(job), None);
        pool.release(100, job);
        assert_eq!(pool.allocate(job), Some(100));
    }

    #[test]
    fn a_released_uid_is_the_last_to_come_back() {
        let mut pool = UidPool::new(10..=13, BTreeSet::new());
        let job = JobId::random();
        let first = pool.allocate(job).unwrap();
        pool.release(first, job);
        assert_eq!(all(&mut pool), [11, 12, 13, 10]);
    }

    #[test]
    fn only_its_holder_gives_a_uid_back() {
        let mut pool = UidPool::new(10..=10, BTreeSet::new());
        let (old, new) = (JobId::random(), JobId::random());
        assert_eq!(pool.allocate(new), Some(10));
        pool.release(10, old);
        assert!(pool.is_held_by(10, new), "an earlier job of the same uid");
        assert_eq!(pool.allocate(old), None);
    }

    #[test]
    fn recovered_uids_are_held_once_and_only_if_in_the_pool() {
        let mut pool = UidPool::new(10..=12, BTreeSet::from([11]));
        let (a, b) = (JobId::random(), JobId::random());
        assert!(pool.hold(12, a));
        assert!(pool.hold(12, a), "holding again is harmless");
        assert!(!pool.hold(12, b), "already held by another recovered job");
        assert!(!pool.hold(11, b), "an account of the host");
        assert!(!pool.hold(65534, b), "outside the range");
        assert_eq!(all(&mut pool), [10]);
        assert_eq!(pool.held(), 2);
    }

    #[test]
    fn the_whole_default_range_is_usable() {
        let mut pool = UidPool::new(61184..=65519, BTreeSet::new());
        let uids = all(&mut pool);
        assert_eq!(uids.iter().collect::<BTreeSet<_>>().len(), 4336);
    }
}
