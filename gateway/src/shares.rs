//! Fair shares of the supervisor's connections: per-user caps below the
//! gateway's shared limits, so that no single user (or reader) can take
//! them all. A user holds at most `max_output_streams_per_user` output
//! streams (one more is refused with RESOURCE_EXHAUSTED naming the cap) and
//! has at most `max_unary_calls_per_user` calls in flight (more wait for one
//! of their own to finish, holding nothing shared meanwhile). The map holds
//! one small entry per user seen since the gateway started: as many as the
//! client CA issued certificates to, at most.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use jobworker_ipc::UserName;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The per-user caps.
#[derive(Clone, Copy, Debug)]
pub struct ShareLimits {
    /// Output streams one user may hold open.
    pub streams: usize,
    /// Calls one user may have in flight.
    pub calls: usize,
}

/// One user's shares.
struct User {
    streams: Arc<Semaphore>,
    calls: Arc<Semaphore>,
}

/// Every user's shares.
pub struct Shares {
    limits: ShareLimits,
    users: Mutex<HashMap<UserName, Arc<User>>>,
}

/// A user at their cap of output streams.
#[derive(Debug, thiserror::Error)]
#[error(
    "{user} has {max} output streams open, the most one user may hold \
     (max_output_streams_per_user): close one first"
)]
pub struct TooManyStreams {
    /// The user.
    pub user: UserName,
    /// The cap.
    pub max: usize,
}

/// A share taken; given back when dropped.
pub struct Share {
    _permit: OwnedSemaphorePermit,
}

impl Shares {
    /// Shares under `limits`.
    pub fn new(limits: ShareLimits) -> Self {
        Self {
            limits,
            users: Mutex::new(HashMap::new()),
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<UserName, Arc<User>>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn user(&self, user: &UserName) -> Arc<User> {
        Arc::clone(self.users().entry(user.clone()).or_insert_with(|| {
            Arc::new(User {
                streams: Arc::new(Semaphore::new(self.limits.streams)),
                calls: Arc::new(Semaphore::new(self.limits.calls)),
            })
        }))
    }

    /// One of `user`'s output streams, if they have one left.
    pub fn stream(&self, user: &UserName) -> Result<Share, TooManyStreams> {
        let permit = Arc::clone(&self.user(user).streams)
            .try_acquire_owned()
            .map_err(|_| TooManyStreams {
                user: user.clone(),
                max: self.limits.streams,
            })?;
        Ok(Share { _permit: permit })
    }

    /// A turn for one of `user`'s calls: waits while they have as many in
    /// flight as they may.
    pub async fn call(&self, user: &UserName) -> Share {
        let calls = Arc::clone(&self.user(user).calls);
        let permit = calls
            .acquire_owned()
            .await
            .expect("a user's semaphore is never closed");
        Share { _permit: permit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> UserName {
        UserName::new(n).unwrap()
    }

    #[tokio::test]
    async fn one_user_at_their_cap_leaves_the_others_theirs() {
        let shares = Arc::new(Shares::new(ShareLimits {
            streams: 2,
            calls: 1,
        }));
        let (rita, alice) = (name("rita"), name("alice"));
        let a = shares.stream(&rita).unwrap();
        let _b = shares.stream(&rita).unwrap();
        let err = shares.stream(&rita).err().unwrap();
        assert!(
            err.to_string().contains("rita has 2 output streams open"),
            "{err}"
        );
        let _c = shares.stream(&alice).unwrap();
        drop(a);
        let _d = shares.stream(&rita).unwrap();

        // A second call of one user waits for the first; another's does not.
        let first = shares.call(&rita).await;
        let waiting = {
            let shares = Arc::clone(&shares);
            let rita = rita.clone();
            tokio::spawn(async move { shares.call(&rita).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let _other = tokio::time::timeout(std::time::Duration::from_secs(1), shares.call(&alice))
            .await
            .unwrap();
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
