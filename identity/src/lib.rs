//! Who a client certificate names, as a pure function of its bytes: the
//! user is the subject's common name (a valid [`jobworker_ipc::UserName`]),
//! the role the UTF8String in extension [`ROLE_OID`]. The gateway reads
//! every caller's identity with [`identity_of_chain`], and a fleet's other
//! gateways' with [`peer_of_chain`]; the certificate tool
//! (`jobworker-certs`) writes what this crate reads.
//!
//! Reading needs x509-parser only: nothing here can issue a certificate.

#![forbid(unsafe_code)]

mod certificate;
mod identity;
mod role;
mod subject;

pub use certificate::{CertificateParseError, parse_certificate};
pub use identity::{IdentityError, PEER_ROLE, identity_from_der, identity_of_chain, peer_of_chain};
pub use role::{ROLE_OID, ROLE_OID_STR, RoleError, role_from_der, role_name_of, role_of};
pub use subject::{CommonNameError, common_name_from_der, common_name_of};
