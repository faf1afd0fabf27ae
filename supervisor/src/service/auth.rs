//! Who may call, and what: the peer's credentials (SO_PEERCRED) decide what a
//! connection is, each call says on whose behalf it acts, and ownership is
//! checked here as well as in the gateway (defense in depth).
//!
//! - the configured gateway uid acts for the remote identity it asserts in
//!   each call, and must assert one;
//! - uid 0 and members of the operator group are the local admin
//!   `local:<account>`, and must not assert one;
//! - anyone else is refused and disconnected.
//!
//! Admins (local, or remote with role admin) may do anything; a remote user
//! starts jobs and acts on their own (another's job is NOT_FOUND, so its
//! existence does not leak); a reader gets, lists and streams every job and
//! never starts or stops one.

use jobworker_ipc::{Identity, IpcError, JobId, Owner, Role, UserName};
use nix::unistd::{Uid, User};

use crate::config::{Config, group_members};

/// What a connection's peer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The gateway: acts for remote identities.
    Gateway,
    /// A local admin.
    Operator(UserName),
}

/// On whose behalf one call acts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A local admin.
    Local(UserName),
    /// A remote user, as the gateway asserts.
    Remote(Identity),
}

/// An operation, for authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Ping.
    Ping,
    /// Start a job.
    Start,
    /// Stop a job.
    Stop,
    /// Get a job.
    Get,
    /// List jobs.
    List,
    /// Stream a job's output.
    Stream,
}

impl Op {
    /// The operation's name in audit lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Get => "get",
            Self::List => "list",
            Self::Stream => "stream",
        }
    }
}

/// Decides what a peer is, from its uid and gid; `Err` says why it is refused.
pub fn classify(uid: u32, gid: u32, config: &Config) -> Result<Peer, String> {
    if uid != 0 && config.gateway_uid == Some(uid) {
        return Ok(Peer::Gateway);
    }
    let name = account_name(uid);
    let operator = uid == 0
        || config.operator_gid.is_some_and(|operators| {
            gid == operators
                || name
                    .as_ref()
                    .is_some_and(|name| group_members(operators).contains(name))
        });
    if !operator {
        return Err(format!(
            "uid {uid} is neither root, the gateway, nor in the operator group"
        ));
    }
    let name = name
        .and_then(|name| UserName::new(name).ok())
        .or_else(|| UserName::new(format!("uid{uid}")).ok())
        .ok_or_else(|| format!("uid {uid} has no usable name"))?;
    Ok(Peer::Operator(name))
}

fn account_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

impl Principal {
    /// The principal of a call from `peer` that asserts `on_behalf_of`.
    pub fn of(peer: &Peer, on_behalf_of: Option<Identity>) -> Result<Self, IpcError> {
        match (peer, on_behalf_of) {
            (Peer::Gateway, Some(identity)) => Ok(Self::Remote(identity)),
            (Peer::Gateway, None) => Err(IpcError::PermissionDenied {
                reason: "the gateway must say on whose behalf it calls".into(),
            }),
            (Peer::Operator(name), None) => Ok(Self::Local(name.clone())),
            (Peer::Operator(_), Some(_)) => Err(IpcError::PermissionDenied {
                reason: "only the gateway may act on behalf of remote users".into(),
            }),
        }
    }

    /// Who owns what this principal starts.
    pub fn owner(&self) -> Owner {
        match self {
            Self::Local(name) => Owner::Local(name.clone()),
            Self::Remote(identity) => Owner::Remote(identity.user.clone()),
        }
    }

    /// Whether this principal may see every job.
    pub fn sees_all(&self) -> bool {
        match self {
            Self::Local(_) => true,
            Self::Remote(identity) => matches!(identity.role, Role::Admin | Role::Reader),
        }
    }

    /// May this principal do `op` (on job `target`, with its owner, if any)?
    /// Another user's job is NOT_FOUND for a user, as if it did not exist.
    pub fn authorize(&self, op: Op, target: Option<(JobId, &Owner)>) -> Result<(), IpcError> {
        let Self::Remote(identity) = self else {
            return Ok(());
        };
        match (identity.role, op) {
            (Role::Admin, _) | (_, Op::Ping | Op::List) => Ok(()),
            (Role::Reader, Op::Start | Op::Stop) => Err(IpcError::PermissionDenied {
                reason: format!(
                    "{} is a reader: readers cannot {} jobs",
                    identity.user,
                    op.name()
                ),
            }),
            (Role::Reader, Op::Get | Op::Stream) => Ok(()),
            (Role::User, Op::Start) => Ok(()),
            (Role::User, Op::Stop | Op::Get | Op::Stream) => match target {
                Some((_, owner)) if *owner == self.owner() => Ok(()),
                Some((job, _)) => Err(IpcError::NotFound { job }),
                None => Err(IpcError::PermissionDenied {
                    reason: format!("{} names no job", op.name()),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(user: &str, role: Role) -> Principal {
        Principal::Remote(Identity {
            user: UserName::new(user).unwrap(),
            role,
        })
    }

    #[test]
    fn the_role_table() {
        let id = JobId::random();
        let alice = Owner::Remote(UserName::new("alice").unwrap());
        let bob = Owner::Remote(UserName::new("bob").unwrap());
        let alices = Some((id, &alice));
        let bobs = Some((id, &bob));
        let ops = [Op::Start, Op::Stop, Op::Get, Op::List, Op::Stream, Op::Ping];
        let local = Principal::Local(UserName::new("root").unwrap());
        for op in ops {
            assert!(local.authorize(op, bobs).is_ok());
            assert!(remote("root", Role::Admin).authorize(op, bobs).is_ok());
        }
        let user = remote("alice", Role::User);
        assert!(user.authorize(Op::Start, None).is_ok());
        assert!(user.authorize(Op::List, None).is_ok());
        for op in [Op::Stop, Op::Get, Op::Stream] {
            assert!(user.authorize(op, alices).is_ok());
            assert_eq!(
                user.authorize(op, bobs),
                Err(IpcError::NotFound { job: id })
            );
        }
        let reader = remote("rita", Role::Reader);
        for op in [Op::Get, Op::Stream, Op::List] {
            assert!(reader.authorize(op, bobs).is_ok());
        }
        for op in [Op::Start, Op::Stop] {
            assert!(matches!(
                reader.authorize(op, bobs),
                Err(IpcError::PermissionDenied { .. })
            ));
        }
        assert!(!user.sees_all() && reader.sees_all() && local.sees_all());
    }

    #[test]
    fn identities_are_asserted_only_by_the_gateway() {
        let alice = Identity {
            user: UserName::new("alice").unwrap(),
            role: Role::User,
        };
        let operator = Peer::Operator(UserName::new("root").unwrap());
        assert!(Principal::of(&Peer::Gateway, Some(alice.clone())).is_ok());
        assert!(Principal::of(&Peer::Gateway, None).is_err());
        assert!(Principal::of(&operator, None).is_ok());
        assert!(Principal::of(&operator, Some(alice)).is_err());
    }
}
