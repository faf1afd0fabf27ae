//! A daemon's own limit on open files, raised at start from the soft limit
//! to the hard one: systemd's default soft limit (1024) is below what
//! either daemon's default maxima may hold open. Each daemon logs the
//! result beside what its configuration needs.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The limit on open files before and after [`raise_open_files_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit found.
    pub before: u64,
    /// The soft limit now (the hard one, unless raising it failed).
    pub limit: u64,
}

/// Raises the soft limit on open files to the hard one. Fails only if the
/// limit cannot be read; a refused raise leaves `limit` at `before`.
pub fn raise_open_files_limit() -> nix::Result<OpenFiles> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    Ok(OpenFiles {
        before: soft,
        limit,
    })
}
