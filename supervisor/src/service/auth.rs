//! Who may call, and on whose behalf: the peer's credentials (SO_PEERCRED)
//! decide what a connection is, and each call says on whose behalf it acts.
//!
//! - the configured gateway uid acts for the remote identity it asserts in
//!   each call; a call that asserts none is the gateway's own, which may
//!   only ping and read the metrics;
//! - uid 0 and members of the operator group are the local admin
//!   `local:<account>`, and must not assert one;
//! - anyone else is refused and disconnected.
//!
//! What each principal may do is `jobworker_ipc::policy`'s one table, which
//! the supervisor applies in full: it knows every job's owner.

use jobworker_ipc::policy::{self, Action, Actor};
use jobworker_ipc::{Identity, IpcError, JobId, Owner, UserName};
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
    /// The gateway itself, on no caller's behalf.
    Gateway,
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
            (Peer::Gateway, None) => Ok(Self::Gateway),
            (Peer::Operator(name), None) => Ok(Self::Local(name.clone())),
            (Peer::Operator(_), Some(_)) => Err(IpcError::PermissionDenied {
                reason: "only the gateway may act on behalf of remote users".into(),
            }),
        }
    }

    /// Who owns what this principal starts (the gateway on its own behalf,
    /// which may start nothing, is `local:gateway`).
    pub fn owner(&self) -> Owner {
        match self {
            Self::Local(name) => Owner::Local(name.clone()),
            Self::Remote(identity) => Owner::Remote(identity.user.clone()),
            Self::Gateway => Owner::Local(UserName::new("gateway").expect("a valid constant name")),
        }
    }

    /// Who calls, as audit lines name it: the owner it acts as, or
    /// `gateway` for the gateway's own calls.
    pub fn name(&self) -> String {
        match self {
            Self::Gateway => "gateway".to_owned(),
            _ => self.owner().to_string(),
        }
    }

    /// The principal as the policy knows it.
    fn actor(&self) -> Actor<'_> {
        match self {
            Self::Local(_) => Actor::Local,
            Self::Remote(identity) => Actor::Remote(identity),
            Self::Gateway => Actor::Gateway,
        }
    }

    /// Whether this principal may see every job.
    pub fn sees_all(&self) -> bool {
        policy::sees_all(self.actor())
    }

    /// May this principal do `action` (on job `target`, with its owner, if
    /// any)? See [`policy::authorize`].
    pub fn authorize(
        &self,
        action: Action,
        target: Option<(JobId, &Owner)>,
    ) -> Result<(), IpcError> {
        policy::authorize(self.actor(), action, target)
    }
}

#[cfg(test)]
mod tests {
    use jobworker_ipc::Role;

    use super::*;

    #[test]
    fn identities_are_asserted_only_by_the_gateway() {
        let alice = Identity {
            user: UserName::new("alice").unwrap(),
            role: Role::User,
        };
        let operator = Peer::Operator(UserName::new("root").unwrap());
        Principal::of(&Peer::Gateway, Some(alice.clone())).unwrap();
        let gateway = Principal::of(&Peer::Gateway, None).unwrap();
        gateway.authorize(Action::Metrics, None).unwrap();
        gateway.authorize(Action::Start, None).unwrap_err();
        Principal::of(&operator, None).unwrap();
        Principal::of(&operator, Some(alice)).unwrap_err();
    }
}
