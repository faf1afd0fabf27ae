//! Authorization: one pure function of (identity, RPC, job owner).
//!
//! - admin: every RPC on every job;
//! - user: start jobs; stop, get, stream and list only their own;
//! - reader: get, stream and list every job; never start or stop.
//!
//! Another user's job is NOT_FOUND for a user, exactly as a job that does not
//! exist, so its existence does not leak; a forbidden RPC is
//! PERMISSION_DENIED. The supervisor checks the same rules again for the
//! identity the gateway asserts (defense in depth), and filters listings.

use jobworker_ipc::{Identity, Owner, Role};

/// The RPCs of `jobworker.v1.JobService`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    /// `StartJob`.
    StartJob,
    /// `StopJob`.
    StopJob,
    /// `GetJob`.
    GetJob,
    /// `ListJobs`.
    ListJobs,
    /// `StreamOutput`.
    StreamOutput,
}

impl Rpc {
    /// The RPC's name, as in the contract.
    pub fn name(self) -> &'static str {
        match self {
            Self::StartJob => "StartJob",
            Self::StopJob => "StopJob",
            Self::GetJob => "GetJob",
            Self::ListJobs => "ListJobs",
            Self::StreamOutput => "StreamOutput",
        }
    }

    /// Whether the RPC acts on one existing job.
    pub fn is_job_scoped(self) -> bool {
        matches!(self, Self::StopJob | Self::GetJob | Self::StreamOutput)
    }

    fn verb(self) -> &'static str {
        match self {
            Self::StartJob => "start jobs",
            Self::StopJob => "stop jobs",
            Self::GetJob => "get jobs",
            Self::ListJobs => "list jobs",
            Self::StreamOutput => "stream the output of jobs",
        }
    }
}

/// Why a call is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// The job is not the caller's to see: answer NOT_FOUND, as for a job
    /// that does not exist.
    NotFound,
    /// The caller's role does not allow the RPC: PERMISSION_DENIED, why.
    PermissionDenied(String),
}

/// May `identity` make `rpc`? `job_owner` is the owner of the job a
/// job-scoped RPC names (as the supervisor reports it); `None` for the
/// others.
pub fn authorize(identity: &Identity, rpc: Rpc, job_owner: Option<&Owner>) -> Result<(), Denied> {
    match (identity.role, rpc) {
        (Role::Admin, _) => Ok(()),
        (Role::Reader, Rpc::StartJob | Rpc::StopJob) => Err(Denied::PermissionDenied(format!(
            "{} has the reader role: readers cannot {}",
            identity.user,
            rpc.verb()
        ))),
        (Role::Reader, Rpc::GetJob | Rpc::ListJobs | Rpc::StreamOutput) => Ok(()),
        (Role::User, Rpc::StartJob | Rpc::ListJobs) => Ok(()),
        (Role::User, Rpc::StopJob | Rpc::GetJob | Rpc::StreamOutput) => match job_owner {
            Some(Owner::Remote(owner)) if *owner == identity.user => Ok(()),
            Some(_) => Err(Denied::NotFound),
            None => Err(Denied::PermissionDenied(format!(
                "{} names no job",
                rpc.name()
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use jobworker_ipc::UserName;

    use super::*;

    fn id(user: &str, role: Role) -> Identity {
        Identity {
            user: UserName::new(user).unwrap(),
            role,
        }
    }

    fn remote(user: &str) -> Owner {
        Owner::Remote(UserName::new(user).unwrap())
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Allow,
        NotFound,
        Denied,
    }

    fn outcome(result: Result<(), Denied>) -> Want {
        match result {
            Ok(()) => Want::Allow,
            Err(Denied::NotFound) => Want::NotFound,
            Err(Denied::PermissionDenied(_)) => Want::Denied,
        }
    }

    /// The whole table: every role, every RPC, a job of the caller's own, of
    /// another remote user, and of a local operator.
    #[test]
    fn the_role_table() {
        use Want::{Allow, Denied as D, NotFound as N};
        let own = remote("alice");
        let others = remote("bob");
        let local = Owner::Local(UserName::new("root").unwrap());
        let admin = id("alice", Role::Admin);
        let user = id("alice", Role::User);
        let reader = id("alice", Role::Reader);
        // (identity, rpc, [own job, another user's job, a local job]); for
        // RPCs that name no job, the owner is None and the three agree.
        let table = [
            (&admin, Rpc::StartJob, [Allow, Allow, Allow]),
            (&admin, Rpc::StopJob, [Allow, Allow, Allow]),
            (&admin, Rpc::GetJob, [Allow, Allow, Allow]),
            (&admin, Rpc::ListJobs, [Allow, Allow, Allow]),
            (&admin, Rpc::StreamOutput, [Allow, Allow, Allow]),
            (&user, Rpc::StartJob, [Allow, Allow, Allow]),
            (&user, Rpc::StopJob, [Allow, N, N]),
            (&user, Rpc::GetJob, [Allow, N, N]),
            (&user, Rpc::ListJobs, [Allow, Allow, Allow]),
            (&user, Rpc::StreamOutput, [Allow, N, N]),
            (&reader, Rpc::StartJob, [D, D, D]),
            (&reader, Rpc::StopJob, [D, D, D]),
            (&reader, Rpc::GetJob, [Allow, Allow, Allow]),
            (&reader, Rpc::ListJobs, [Allow, Allow, Allow]),
            (&reader, Rpc::StreamOutput, [Allow, Allow, Allow]),
        ];
        assert_eq!(table.len(), 3 * 5, "three roles, five RPCs");
        for (identity, rpc, wants) in table {
            for (owner, want) in [&own, &others, &local].into_iter().zip(wants) {
                let owner = rpc.is_job_scoped().then_some(owner);
                assert_eq!(
                    outcome(authorize(identity, rpc, owner)),
                    want,
                    "{:?} {} on {owner:?}",
                    identity.role,
                    rpc.name()
                );
            }
        }
    }

    #[test]
    fn refusals_say_why() {
        let rita = id("rita", Role::Reader);
        assert_eq!(
            authorize(&rita, Rpc::StartJob, None),
            Err(Denied::PermissionDenied(
                "rita has the reader role: readers cannot start jobs".into()
            ))
        );
        let alice = id("alice", Role::User);
        assert!(matches!(
            authorize(&alice, Rpc::StopJob, None),
            Err(Denied::PermissionDenied(reason)) if reason == "StopJob names no job"
        ));
    }
}
