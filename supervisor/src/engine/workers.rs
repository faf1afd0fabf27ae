//! The engine's own blocking threads: a fixed pool, started with the engine,
//! that runs every short file-system step of a job's life (a start's
//! directories, cgroup, record and request to the spawner; a job's
//! settling; record writes; a running job's usage) off the async runtime's
//! workers.
//!
//! Not tokio's blocking pool: that one makes its threads when work comes,
//! and a host out of pids (where clone3 of a job fails with `EAGAIN`, the
//! case a start must report cleanly) cannot make a thread then. These exist
//! from the start. Nothing that may wait long runs here (a wait for an
//! init's report is async; a cgroup that will not empty is waited for on
//! tokio's blocking pool; a spawner that does not answer a start within
//! 10 s is replaced), so a few threads serve any number of jobs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

/// How many threads the pool has.
pub const THREADS: usize = 4;

type Work = Box<dyn FnOnce() + Send>;

/// The pool.
pub struct Workers {
    queue: Mutex<Sender<Work>>,
}

/// The pool has stopped (its threads are gone), or the work panicked.
#[derive(Debug, thiserror::Error)]
#[error("the engine's worker threads failed to run a step")]
pub struct WorkFailed;

impl Workers {
    /// Starts [`THREADS`] threads. Each enters `runtime`, so that the work
    /// may spawn tasks (a guard undoing a start does).
    pub fn start(runtime: &tokio::runtime::Handle) -> std::io::Result<Self> {
        let (queue, work) = channel::<Work>();
        let work = Arc::new(Mutex::new(work));
        for n in 0..THREADS {
            let (work, runtime) = (Arc::clone(&work), runtime.clone());
            std::thread::Builder::new()
                .name(format!("jobworker-engine-{n}"))
                .spawn(move || {
                    let _entered = runtime.enter();
                    serve(&work);
                })?;
        }
        Ok(Self {
            queue: Mutex::new(queue),
        })
    }

    /// Runs `f` on a thread of the pool and waits (asynchronously) for its
    /// result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkFailed> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn(move || {
            let _ = tx.send(f());
        })?;
        rx.await.map_err(|_| WorkFailed)
    }

    /// Runs `f` on a thread of the pool without waiting for it.
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) -> Result<(), WorkFailed> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Box::new(f))
            .map_err(|_| WorkFailed)
    }
}

/// Runs work until the pool is dropped. A panic ends that work only (what
/// it held is dropped while unwinding, which undoes it).
fn serve(work: &Mutex<Receiver<Work>>) {
    loop {
        let next = work.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(f) = next else {
            return;
        };
        if catch_unwind(AssertUnwindSafe(f)).is_err() {
            tracing::error!(
                "a step of the engine panicked; its job is undone or left for recovery"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_and_survives_a_panic() {
        let workers = Workers::start(&tokio::runtime::Handle::current()).unwrap();
        assert_eq!(workers.run(|| 6 * 7).await.unwrap(), 42);
        workers.run(|| panic!("a step panicked")).await.unwrap_err();
        let names: Vec<String> =
            futures::future::join_all((0..THREADS * 3).map(|_| {
                workers.run(|| std::thread::current().name().unwrap_or_default().to_owned())
            }))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("jobworker-engine-")),
            "{names:?}"
        );
    }
}
