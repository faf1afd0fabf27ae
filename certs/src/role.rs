//! Writing the role extension: which of jobworker's roles a client
//! certificate grants. Its OID and format are `jobworker_identity`'s, which
//! reads it ([`jobworker_identity::ROLE_OID`]): one DER UTF8String naming
//! the role, non-critical, because TLS stacks (rustls among them) reject a
//! certificate carrying a critical extension they do not know.

use jobworker_identity::ROLE_OID;
use jobworker_ipc::Role;
use rcgen::CustomExtension;

/// Builds the non-critical role extension granting `role`.
pub fn role_extension(role: Role) -> CustomExtension {
    role_extension_value(role.as_str())
}

/// Builds a non-critical role extension holding any string as a DER UTF8String.
///
/// Only [`role_extension`] makes valid certificates; this exists so that tests
/// can produce a certificate naming an unknown role.
pub fn role_extension_value(value: &str) -> CustomExtension {
    let content = yasna::construct_der(|writer| writer.write_utf8_string(value));
    let mut extension = CustomExtension::from_oid_content(ROLE_OID, content);
    extension.set_criticality(false);
    extension
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_is_non_critical_utf8_string() {
        let extension = role_extension(Role::Reader);
        assert!(!extension.criticality());
        assert!(extension.oid_components().eq(ROLE_OID.iter().copied()));
        // UTF8String tag 12, length 6, "reader".
        assert_eq!(extension.content(), b"\x0c\x06reader");
    }
}
