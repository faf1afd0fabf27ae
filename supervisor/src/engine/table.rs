//! [`JobTable`]: the jobs the engine knows, by id and by the request id each
//! was started with. A start retried with its request id finds its job in
//! one lookup, however many ended jobs retention keeps (hundreds of
//! thousands, with the default of 10 GiB of small jobs), and not in a walk
//! of all of them under the table's lock.

use std::collections::HashMap;
use std::collections::hash_map::Values;
use std::sync::Arc;

use jobworker_ipc::{JobId, Owner, RequestId};

use super::job::Job;

/// The jobs, by id and by owner and request id.
#[derive(Default)]
pub struct JobTable {
    by_id: HashMap<JobId, Arc<Job>>,
    by_request: HashMap<(Owner, RequestId), JobId>,
}

impl JobTable {
    /// Adds `job` (or puts it in the place of the job with its id).
    pub fn insert(&mut self, job: Arc<Job>) {
        if let Some(request_id) = &job.spec.request_id {
            self.by_request
                .insert((job.spec.owner.clone(), request_id.clone()), job.spec.id);
        }
        self.by_id.insert(job.spec.id, job);
    }

    /// Takes job `id` out.
    pub fn remove(&mut self, id: &JobId) -> Option<Arc<Job>> {
        let job = self.by_id.remove(id)?;
        if let Some(request_id) = &job.spec.request_id {
            let key = (job.spec.owner.clone(), request_id.clone());
            if self.by_request.get(&key) == Some(id) {
                self.by_request.remove(&key);
            }
        }
        Some(job)
    }

    /// Job `id`.
    pub fn get(&self, id: &JobId) -> Option<&Arc<Job>> {
        self.by_id.get(id)
    }

    /// The job `owner` started with `request_id`.
    pub fn started_with(&self, owner: &Owner, request_id: &RequestId) -> Option<&Arc<Job>> {
        // Keyed by owned values: a lookup builds the key (two short strings).
        let id = self.by_request.get(&(owner.clone(), request_id.clone()))?;
        self.by_id.get(id)
    }

    /// Every job, in no order.
    pub fn values(&self) -> Values<'_, JobId, Arc<Job>> {
        self.by_id.values()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use jobworker_ipc::{Args, Command, EnforcedLimits, Labels, Limits, UnixMicros, UserName};

    use super::*;
    use crate::cgroup::CgroupTree;
    use crate::engine::job::{Spec, Status};

    fn owner(name: &str) -> Owner {
        Owner::Remote(UserName::new(name).unwrap())
    }

    fn request(id: &str) -> RequestId {
        RequestId::new(id).unwrap()
    }

    /// A job of `owner`, started with `request_id` if given.
    fn job(owner: &Owner, request_id: Option<&str>) -> Arc<Job> {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "").unwrap();
        let id = JobId::random();
        let cgroup = CgroupTree::at(root.path().to_path_buf())
            .unwrap()
            .job_handle(&id.to_string())
            .unwrap();
        let spec = Spec {
            id,
            owner: owner.clone(),
            command: Command::new("true").unwrap(),
            args: Args::new(Vec::new()).unwrap(),
            limits: Limits::default(),
            enforced: EnforcedLimits::default(),
            created_at: UnixMicros::now(),
            request_id: request_id.map(request),
            uid: None,
            gid: None,
            timeout: None,
            labels: Labels::default(),
        };
        Arc::new(Job::new(
            spec,
            PathBuf::from("/nonexistent"),
            cgroup,
            Status::starting(),
        ))
    }

    #[test]
    fn a_job_is_found_by_its_owner_and_request_id_until_it_is_removed() {
        let (alice, bob) = (owner("alice"), owner("bob"));
        let mut table = JobTable::default();
        let retried = job(&alice, Some("retry-1"));
        let other = job(&alice, Some("retry-2"));
        let bobs = job(&bob, Some("retry-1"));
        let plain = job(&alice, None);
        for job in [&retried, &other, &bobs, &plain] {
            table.insert(Arc::clone(job));
        }
        let found = |table: &JobTable, owner: &Owner, id: &str| {
            table
                .started_with(owner, &request(id))
                .map(|job| job.spec.id)
        };
        assert_eq!(found(&table, &alice, "retry-1"), Some(retried.spec.id));
        assert_eq!(found(&table, &alice, "retry-2"), Some(other.spec.id));
        assert_eq!(found(&table, &bob, "retry-1"), Some(bobs.spec.id));
        assert_eq!(found(&table, &bob, "retry-2"), None);
        assert_eq!(table.values().count(), 4);

        assert!(table.remove(&retried.spec.id).is_some());
        assert!(table.remove(&plain.spec.id).is_some());
        assert!(table.remove(&plain.spec.id).is_none());
        assert_eq!(found(&table, &alice, "retry-1"), None);
        assert_eq!(found(&table, &bob, "retry-1"), Some(bobs.spec.id));
        assert!(table.get(&retried.spec.id).is_none());
        assert_eq!(table.values().count(), 2);
        // A request id is used again once its job is gone.
        let again = job(&alice, Some("retry-1"));
        table.insert(Arc::clone(&again));
        assert_eq!(found(&table, &alice, "retry-1"), Some(again.spec.id));
        // Taking out a job that no longer holds the entry leaves it be.
        let newer = job(&alice, Some("retry-1"));
        table.insert(Arc::clone(&newer));
        assert!(table.remove(&again.spec.id).is_some());
        assert_eq!(found(&table, &alice, "retry-1"), Some(newer.spec.id));
    }
}
