//! One init cloned ahead of demand: after a start (when no other is under
//! way), the engine's threads have the spawner clone an init into
//! `<root>/spare`, where it waits for its spec; the next start moves it
//! into its job's cgroup (`cgroup.procs`, about 10 µs) and hands it the
//! spec, so that the clone3 (about half a millisecond) is off that start's
//! path. A start that finds no spare (the first one, or the refill not done
//! yet) clones its init as before.
//!
//! What moves with the spare: its processes. What does not: the memory
//! charged to `<root>/spare` before the move (the clone's kernel memory, its
//! namespaces'), which stays charged there until the job ends. The init
//! makes itself a cgroup namespace of its own once in its job's cgroup, so
//! the job's view of cgroups is rooted there either way.
//!
//! A supervisor that dies leaves its spare reading a closed control socket:
//! it exits; `<root>/spare` is reused by the next, and removed with the job
//! cgroups by `--stop-jobs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::Engine;
use super::spawn::Spare;

/// The spare init, and whether one is being made.
#[derive(Default)]
pub struct Slot {
    spare: Mutex<Option<Spare>>,
    refilling: AtomicBool,
}

impl Engine {
    /// The spare init, if there is one.
    pub(super) fn take_spare(&self) -> Option<Spare> {
        self.spare
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Has a spare init made on the engine's threads, unless there is one,
    /// one is being made, or another start is under way: under concurrent
    /// starts a spare saves none of them a wait (the next takes it at once)
    /// and its clone holds the spawner from them. A failure (a host out of
    /// pids) is logged at debug level: starts clone their own inits then.
    pub(super) fn refill_spare(self: &Arc<Self>) {
        // The start that calls this is still counted.
        if self.starting.total() > 1 || self.spare.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = Arc::clone(self);
        let spawned = self.workers.spawn(move || {
            let made = engine
                .cgroups
                .spare()
                .map_err(|e| e.to_string())
                .and_then(|cgroup| {
                    engine
                        .spawner
                        .clone_spare(&cgroup)
                        .map_err(|e| e.to_string())
                });
            match made {
                Ok(spare) => {
                    *engine.spare.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some(spare);
                }
                Err(e) => tracing::debug!(error = %e, "no spare init"),
            }
            engine.spare.refilling.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            self.spare.refilling.store(false, Ordering::Release);
        }
    }
}
