//! Who may do what with jobs: one pure function of the actor, the action and
//! the job it acts on ([`authorize`]), the whole table in one place.
//!
//! - a local admin (an operator on the supervisor's socket) and a remote
//!   admin: everything;
//! - a remote user: start jobs, list (their own), and stop, get or stream
//!   their own; another's job is NOT_FOUND, worded as a job that does not
//!   exist, so its existence does not leak;
//! - a remote reader: get, list and stream every job; never start or stop;
//! - the gateway on its own behalf (no caller): ping and read the metrics,
//!   nothing else; remote callers never read the supervisor's metrics
//!   (the gateway's metrics endpoint serves them);
//! - the fleet's hosts (fleet mode, answered by the gateway from the
//!   fleet's database): admins only.
//!
//! The supervisor is the authority and applies it in full: it has each
//! job's owner at hand. The gateway applies the role gate alone (no job yet)
//! before it forwards a call, so that a refused role costs no round trip.

use crate::{Identity, IpcError, JobId, Owner, Role};

/// Who acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor<'a> {
    /// A local admin on the supervisor's socket.
    Local,
    /// A remote caller, as the gateway asserts it.
    Remote(&'a Identity),
    /// The gateway itself, on no caller's behalf.
    Gateway,
}

/// What it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask whether the supervisor is there.
    Ping,
    /// Start a job.
    Start,
    /// Stop a job.
    Stop,
    /// Get a job's status.
    Get,
    /// List jobs.
    List,
    /// Read a job's output.
    Stream,
    /// Read the supervisor's figures.
    Metrics,
    /// List the fleet's hosts.
    ListHosts,
}

impl Action {
    /// The action's name, as audit lines write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Get => "get",
            Self::List => "list",
            Self::Stream => "stream",
            Self::Metrics => "metrics",
            Self::ListHosts => "list-hosts",
        }
    }

    /// What a refusal says the role cannot do.
    fn verb(self) -> &'static str {
        match self {
            Self::Ping => "ping the supervisor",
            Self::Start => "start jobs",
            Self::Stop => "stop jobs",
            Self::Get => "get jobs",
            Self::List => "list jobs",
            Self::Stream => "stream the output of jobs",
            Self::Metrics => "read the supervisor's metrics",
            Self::ListHosts => "list the fleet's hosts",
        }
    }
}

/// May `actor` do `action`? `target` is the job it acts on and its owner;
/// `None` when there is no job (start, list, ping) or its owner is not
/// known yet (the gateway's gate): then the role alone decides, and the
/// owner is checked where it is known.
pub fn authorize(
    actor: Actor<'_>,
    action: Action,
    target: Option<(JobId, &Owner)>,
) -> Result<(), IpcError> {
    let identity = match actor {
        Actor::Local => return Ok(()),
        Actor::Gateway if matches!(action, Action::Ping | Action::Metrics) => return Ok(()),
        Actor::Gateway => {
            return Err(IpcError::PermissionDenied {
                reason: "the gateway must say on whose behalf it calls".into(),
            });
        }
        Actor::Remote(identity) => identity,
    };
    match (identity.role, action) {
        (_, Action::Metrics) => Err(IpcError::PermissionDenied {
            reason: format!(
                "{} is a remote caller: the supervisor's metrics are served on the gateway's \
                 metrics endpoint",
                identity.user
            ),
        }),
        (Role::Admin, _) | (_, Action::Ping | Action::List) => Ok(()),
        (Role::Reader | Role::User, Action::ListHosts) => Err(IpcError::PermissionDenied {
            reason: format!(
                "{} has the {} role: only admins {}",
                identity.user,
                identity.role,
                action.verb()
            ),
        }),
        (Role::Reader, Action::Start | Action::Stop) => Err(IpcError::PermissionDenied {
            reason: format!(
                "{} has the reader role: readers cannot {}",
                identity.user,
                action.verb()
            ),
        }),
        (Role::Reader, Action::Get | Action::Stream) | (Role::User, Action::Start) => Ok(()),
        (Role::User, Action::Stop | Action::Get | Action::Stream) => match target {
            Some((job, Owner::Remote(owner))) if *owner != identity.user => {
                Err(IpcError::NotFound { job })
            }
            Some((job, Owner::Local(_))) => Err(IpcError::NotFound { job }),
            _ => Ok(()),
        },
    }
}

/// Whether `actor` sees every job in a listing; if not, only its own.
pub fn sees_all(actor: Actor<'_>) -> bool {
    match actor {
        Actor::Local => true,
        Actor::Gateway => false,
        Actor::Remote(identity) => matches!(identity.role, Role::Admin | Role::Reader),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserName;

    const ACTIONS: [Action; 8] = [
        Action::Ping,
        Action::Start,
        Action::Stop,
        Action::Get,
        Action::List,
        Action::Stream,
        Action::Metrics,
        Action::ListHosts,
    ];

    fn remote(user: &str, role: Role) -> Identity {
        Identity {
            user: UserName::new(user).unwrap(),
            role,
        }
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Allow,
        NotFound,
        Denied,
    }

    fn outcome(result: Result<(), IpcError>) -> Want {
        match result {
            Ok(()) => Want::Allow,
            Err(IpcError::NotFound { .. }) => Want::NotFound,
            Err(IpcError::PermissionDenied { .. }) => Want::Denied,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    /// The whole table: every actor, every action, on a job of its own, on
    /// another user's, on a local admin's, and with no job (the gate).
    #[test]
    fn the_whole_table() {
        use Want::{Allow, Denied, NotFound};
        let job = JobId::random();
        let alice = Owner::Remote(UserName::new("alice").unwrap());
        let bob = Owner::Remote(UserName::new("bob").unwrap());
        let root = Owner::Local(UserName::new("root").unwrap());
        let (admin, user, reader) = (
            remote("alice", Role::Admin),
            remote("alice", Role::User),
            remote("alice", Role::Reader),
        );
        // For each action: [own job, bob's job, root's job, no job].
        const ALLOW: [Want; 4] = [Allow, Allow, Allow, Allow];
        const DENY: [Want; 4] = [Denied, Denied, Denied, Denied];
        let table: [(Actor<'_>, [[Want; 4]; 8]); 5] = [
            (Actor::Local, [ALLOW; 8]),
            (
                Actor::Remote(&admin),
                [ALLOW, ALLOW, ALLOW, ALLOW, ALLOW, ALLOW, DENY, ALLOW],
            ),
            (
                Actor::Remote(&user),
                [
                    [Allow, Allow, Allow, Allow],
                    [Allow, Allow, Allow, Allow],
                    [Allow, NotFound, NotFound, Allow],
                    [Allow, NotFound, NotFound, Allow],
                    [Allow, Allow, Allow, Allow],
                    [Allow, NotFound, NotFound, Allow],
                    DENY,
                    DENY,
                ],
            ),
            (
                Actor::Remote(&reader),
                [
                    [Allow, Allow, Allow, Allow],
                    [Denied, Denied, Denied, Denied],
                    [Denied, Denied, Denied, Denied],
                    [Allow, Allow, Allow, Allow],
                    [Allow, Allow, Allow, Allow],
                    [Allow, Allow, Allow, Allow],
                    DENY,
                    DENY,
                ],
            ),
            (
                Actor::Gateway,
                [ALLOW, DENY, DENY, DENY, DENY, DENY, ALLOW, DENY],
            ),
        ];
        for (actor, rows) in table {
            for (action, row) in ACTIONS.into_iter().zip(rows) {
                let targets = [Some(&alice), Some(&bob), Some(&root), None];
                for (owner, want) in targets.into_iter().zip(row) {
                    let got = outcome(authorize(actor, action, owner.map(|o| (job, o))));
                    assert_eq!(got, want, "{actor:?} {action:?} on {owner:?}");
                }
            }
        }
        assert!(sees_all(Actor::Local) && sees_all(Actor::Remote(&admin)));
        assert!(sees_all(Actor::Remote(&reader)) && !sees_all(Actor::Remote(&user)));
        assert!(!sees_all(Actor::Gateway));
    }

    #[test]
    fn a_refusal_says_who_and_what() {
        let reader = remote("rita", Role::Reader);
        let err = authorize(Actor::Remote(&reader), Action::Stop, None).unwrap_err();
        assert_eq!(
            err,
            IpcError::PermissionDenied {
                reason: "rita has the reader role: readers cannot stop jobs".into()
            }
        );
    }
}
