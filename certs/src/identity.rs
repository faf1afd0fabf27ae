//! The subject of every certificate issued here: `O=jobworker, CN=...`.

use rcgen::{DistinguishedName, DnType};

/// The organization (O) in the subject of every certificate issued here.
pub const ORGANIZATION: &str = "jobworker";

/// The subject `O=jobworker, CN=common_name`.
pub(crate) fn subject(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    name
}
