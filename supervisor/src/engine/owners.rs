//! Counts per owner (the jobs each runs, the starts each has under way),
//! for the cap on a user's running jobs and the metrics. An owner's entry
//! goes when its count is back to zero.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use jobworker_ipc::Owner;

/// A count per owner.
#[derive(Debug, Default)]
pub struct PerOwner(Mutex<HashMap<Owner, usize>>);

impl PerOwner {
    fn counts(&self) -> MutexGuard<'_, HashMap<Owner, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `owner`'s count.
    pub fn get(&self, owner: &Owner) -> usize {
        self.counts().get(owner).copied().unwrap_or(0)
    }

    /// Every owner's counts together.
    pub fn total(&self) -> usize {
        self.counts().values().sum()
    }

    /// Adds one to `owner`'s count, unless `refuse` says no, given the
    /// count now: checked and added under one lock, so that two adds
    /// cannot both pass a check meant for one. Returns the count found.
    pub fn add_unless(
        &self,
        owner: &Owner,
        refuse: impl FnOnce(usize) -> bool,
    ) -> Result<usize, usize> {
        let mut counts = self.counts();
        let now = counts.get(owner).copied().unwrap_or(0);
        if refuse(now) {
            return Err(now);
        }
        *counts.entry(owner.clone()).or_default() += 1;
        Ok(now)
    }

    /// Adds one to `owner`'s count.
    pub fn add(&self, owner: &Owner) {
        let _ = self.add_unless(owner, |_| false);
    }

    /// Takes one from `owner`'s count (never below zero).
    pub fn remove(&self, owner: &Owner) {
        let mut counts = self.counts();
        if let Some(n) = counts.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use jobworker_ipc::UserName;

    use super::*;

    #[test]
    fn counts_come_and_go() {
        let counts = PerOwner::default();
        let alice = Owner::Remote(UserName::new("alice").unwrap());
        let bob = Owner::Remote(UserName::new("bob").unwrap());
        counts.add(&alice);
        counts.add(&alice);
        assert_eq!(counts.add_unless(&alice, |n| n >= 2), Err(2));
        assert_eq!(counts.add_unless(&bob, |n| n >= 2), Ok(0));
        assert_eq!((counts.get(&alice), counts.total()), (2, 3));
        counts.remove(&alice);
        counts.remove(&alice);
        counts.remove(&alice);
        assert_eq!((counts.get(&alice), counts.total()), (0, 1));
        assert!(
            !counts.counts().contains_key(&alice),
            "a zero count is forgotten"
        );
    }
}
