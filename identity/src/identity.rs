//! The caller's identity from the client certificate the TLS handshake
//! verified. A certificate without a usable identity still completes the
//! handshake; each call on its connection is then refused with the reason
//! ([`IdentityError`]), quoting at most [`EXCERPT_CHARS`] characters of
//! what the certificate says.

use jobworker_ipc::{Identity, UserName};

use crate::certificate::parse_certificate;
use crate::role::{RoleError, role_from_der, role_name_of};
use crate::subject::{common_name_from_der, common_name_of};

/// Why a verified client certificate names no usable identity. The messages
/// are meant for the certificate's holder.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The connection has no client certificate (never after a completed
    /// handshake, which requires one).
    #[error("no client certificate was presented")]
    NoCertificate,
    /// The subject has no single UTF-8 common name.
    #[error("the client certificate names no user: {0}")]
    CommonName(String),
    /// The common name is not a valid user name.
    #[error("the client certificate's common name {name:?} is not a valid user name: {reason}")]
    UserName {
        /// The common name.
        name: String,
        /// Why it is not valid.
        reason: String,
    },
    /// No role extension, more than one, a malformed one, or an unknown role.
    #[error("the client certificate grants no role: {0}")]
    Role(String),
}

/// The identity a DER client certificate names.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, IdentityError> {
    let name = common_name_from_der(der).map_err(|e| IdentityError::CommonName(e.to_string()))?;
    let user = UserName::new(name.clone()).map_err(|e| IdentityError::UserName {
        name: excerpt(&name),
        reason: e.reason,
    })?;
    let role = role_from_der(der).map_err(|e| IdentityError::Role(role_reason(&e)))?;
    Ok(Identity { user, role })
}

/// The identity of a connection's peer from its certificate chain (leaf
/// first), as the TLS library reports it.
pub fn identity_of_chain(chain: Option<&[impl AsRef<[u8]>]>) -> Result<Identity, IdentityError> {
    match chain.and_then(<[_]>::first) {
        Some(leaf) => identity_from_der(leaf.as_ref()),
        None => Err(IdentityError::NoCertificate),
    }
}

/// The role of a fleet's gateways in the certificates they present to each
/// other ("peer certificates"): it grants no call on the public port (no
/// user has it), only forwarded calls on a gateway's peer port.
pub const PEER_ROLE: &str = "peer";

/// The host a peer certificate names (its CN, a fleet's `host_id`: 1 to
/// 63 of `[a-z0-9-]`), when the leaf of `chain` is one: its role is
/// [`PEER_ROLE`]. `None` for any other certificate.
pub fn peer_of_chain(chain: Option<&[impl AsRef<[u8]>]>) -> Option<String> {
    let cert = parse_certificate(chain?.first()?.as_ref()).ok()?;
    if role_name_of(&cert).ok()? != PEER_ROLE {
        return None;
    }
    let host = common_name_of(&cert).ok()?;
    jobworker_ipc::types::is_host_id(host).then(|| host.to_owned())
}

/// The longest excerpt of a certificate's text an error quotes: the
/// message goes back in a gRPC header (8 KiB in all) and into the log.
const EXCERPT_CHARS: usize = 64;

/// `text` from a certificate, cut for quoting: its first
/// [`EXCERPT_CHARS`] characters, and how long it was if longer.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_owned(),
    }
}

/// Why no role, quoting at most an excerpt of what the extension says.
fn role_reason(e: &RoleError) -> String {
    match e {
        RoleError::Unknown(unknown) => format!(
            "the role extension names an unknown role {:?} (expected admin, user or reader)",
            excerpt(&unknown.0)
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use jobworker_ipc::Role;
    use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair};

    use super::*;
    use crate::ROLE_OID;

    /// A self-signed certificate with this CN and these role extension
    /// contents (raw DER); signing does not matter to identity parsing.
    fn cert(cn: Option<&str>, roles: &[Vec<u8>]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.custom_extensions = roles
            .iter()
            .map(|content| CustomExtension::from_oid_content(ROLE_OID, content.clone()))
            .collect();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn utf8(s: &str) -> Vec<u8> {
        let mut der = vec![0x0c, u8::try_from(s.len()).unwrap()];
        der.extend_from_slice(s.as_bytes());
        der
    }

    #[test]
    fn a_huge_common_name_or_role_is_quoted_in_part() {
        let huge = "x".repeat(10_000);
        let err = identity_from_der(&cert(Some(&huge), &[utf8("user")])).unwrap_err();
        let message = err.to_string();
        assert!(message.len() < 300, "{} bytes: {message}", message.len());
        assert!(message.contains("(10000 bytes)"), "{message}");
        let long_role = "r".repeat(120);
        let err = identity_from_der(&cert(Some("alice"), &[utf8(&long_role)])).unwrap_err();
        assert!(err.to_string().contains("(120 bytes)"), "{err}");
    }

    #[test]
    fn a_peer_certificate_names_its_host_and_no_user() {
        let peer = cert(Some("h-1"), &[utf8(PEER_ROLE)]);
        assert_eq!(peer_of_chain(Some(&[&peer])), Some("h-1".to_owned()));
        assert!(
            identity_from_der(&peer).is_err(),
            "no call on the public port"
        );
        for other in [
            cert(Some("alice"), &[utf8("user")]),
            cert(Some("admin"), &[utf8("admin")]),
            cert(Some("H1"), &[utf8(PEER_ROLE)]),
            cert(Some("h1.example"), &[utf8(PEER_ROLE)]),
            cert(Some("h1"), &[]),
            cert(Some("h1"), &[utf8(PEER_ROLE), utf8(PEER_ROLE)]),
        ] {
            assert_eq!(peer_of_chain(Some(&[&other])), None);
        }
        assert_eq!(peer_of_chain(None::<&[&[u8]]>), None);
    }

    #[test]
    fn cn_and_role_make_the_identity() {
        for (role, expected) in [
            ("admin", Role::Admin),
            ("user", Role::User),
            ("reader", Role::Reader),
        ] {
            let identity = identity_from_der(&cert(Some("alice"), &[utf8(role)])).unwrap();
            assert_eq!(identity.user.as_str(), "alice");
            assert_eq!(identity.role, expected);
        }
    }

    #[test]
    fn every_refusal_says_which() {
        let cases: [(Vec<u8>, &str); 7] = [
            (cert(Some("alice"), &[]), "has no role extension"),
            (
                cert(Some("alice"), &[utf8("user"), utf8("admin")]),
                "has 2 role extensions",
            ),
            (
                // An OCTET STRING, not a UTF8String.
                cert(Some("alice"), &[vec![0x04, 0x04, b'u', b's', b'e', b'r']]),
                "malformed",
            ),
            (
                cert(Some("alice"), &[utf8("superuser")]),
                "unknown role \"superuser\"",
            ),
            (
                cert(Some("local:root"), &[utf8("admin")]),
                "not a valid user name",
            ),
            (cert(None, &[utf8("admin")]), "names no user"),
            (b"not a certificate".to_vec(), "names no user"),
        ];
        for (der, expected) in cases {
            let err = identity_from_der(&der).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn the_leaf_of_the_chain_counts() {
        let none: Option<&[Vec<u8>]> = None;
        assert_eq!(identity_of_chain(none), Err(IdentityError::NoCertificate));
        let empty: Option<&[Vec<u8>]> = Some(&[]);
        assert_eq!(identity_of_chain(empty), Err(IdentityError::NoCertificate));
        let chain = [cert(Some("bob"), &[utf8("user")])];
        assert_eq!(
            identity_of_chain(Some(&chain[..])).unwrap().user.as_str(),
            "bob"
        );
    }
}
