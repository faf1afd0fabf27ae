//! Starts that carry a request id, one at a time per owner and request id:
//! a retry that comes while the first start is under way waits for it, then
//! finds the job it started (or starts one, if it failed). Starts with other
//! request ids, or none, do not wait. An entry goes with the last start
//! that held or awaited it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use jobworker_ipc::{Owner, RequestId};
use tokio::sync::OwnedMutexGuard;

type Key = (Owner, RequestId);

/// The starts under way, by owner and request id.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>);

/// A start's turn for its owner and request id: held until the start has
/// ended (the job registered, or nothing left of it).
#[derive(Debug)]
pub struct Turn<'a> {
    in_flight: &'a InFlight,
    key: Key,
    /// Released after the entry is dealt with (fields drop after `drop`).
    _held: OwnedMutexGuard<()>,
}

impl InFlight {
    fn map(&self) -> MutexGuard<'_, HashMap<Key, Arc<tokio::sync::Mutex<()>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until no other start of `owner` with `request_id` is under way,
    /// and takes the turn.
    pub async fn turn(&self, owner: &Owner, request_id: &RequestId) -> Turn<'_> {
        let key = (owner.clone(), request_id.clone());
        let lock = Arc::clone(self.map().entry(key.clone()).or_default());
        let held = lock.lock_owned().await;
        Turn {
            in_flight: self,
            key,
            _held: held,
        }
    }

    /// How many owner and request id pairs have a start under way or
    /// waiting.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.map().len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut map = self.in_flight.map();
        // The map's reference and this turn's are the only ones: nobody
        // waits (a waiter clones the entry under the map's lock).
        if map
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 2)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jobworker_ipc::UserName;

    use super::*;

    fn owner(name: &str) -> Owner {
        Owner::Remote(UserName::new(name).unwrap())
    }

    fn id(s: &str) -> RequestId {
        RequestId::new(s).unwrap()
    }

    #[tokio::test]
    async fn a_retry_during_a_start_waits_for_it_and_others_do_not() {
        let in_flight = InFlight::default();
        let first = in_flight.turn(&owner("alice"), &id("r1")).await;
        // Another request id, or another owner with the same one: no wait.
        let other_id = in_flight.turn(&owner("alice"), &id("r2")).await;
        let other_owner = in_flight.turn(&owner("bob"), &id("r1")).await;
        assert_eq!(in_flight.entries(), 3);
        drop((other_id, other_owner));
        assert_eq!(in_flight.entries(), 1);

        // The retry waits while the first start is under way...
        let (alice, r1) = (owner("alice"), id("r1"));
        let retry = in_flight.turn(&alice, &r1);
        tokio::pin!(retry);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut retry)
                .await
                .is_err(),
            "the retry went ahead of the start under way"
        );
        // ... and goes on once it has ended; the entry stays for it.
        drop(first);
        assert_eq!(in_flight.entries(), 1);
        let retry = retry.await;
        drop(retry);
        assert_eq!(in_flight.entries(), 0, "the last turn removes the entry");
    }
}
