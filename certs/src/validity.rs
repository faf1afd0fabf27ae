//! The validity period of a certificate.

use time::{Duration, OffsetDateTime};

use crate::error::Error;

/// How far back `not_before` is set, so that a peer whose clock lags a little
/// still accepts a certificate issued just now.
pub const CLOCK_SKEW: Duration = Duration::minutes(5);

/// When a certificate is valid: from `not_before` to `not_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from [`CLOCK_SKEW`] ago until `days` days from now.
    pub fn days_from_now(days: u32) -> Result<Self, Error> {
        let now = OffsetDateTime::now_utc();
        Self::new(now - CLOCK_SKEW, shift(now, days.into())?)
    }

    /// Valid from `not_before` to `not_after`, which must come later.
    pub fn new(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Self, Error> {
        if not_before < not_after {
            Ok(Self {
                not_before,
                not_after,
            })
        } else {
            Err(Error::InvalidValidity {
                reason: format!(
                    "not before ({not_before}) is not earlier than not after ({not_after})"
                ),
            })
        }
    }

    /// Like [`Validity::days_from_now`], with either end replaced by an explicit time.
    ///
    /// When only one end is given, the other is `days` days away from it, so
    /// that a certificate that has already expired (or is not yet valid) can be
    /// made for tests.
    pub fn with_overrides(
        days: u32,
        not_before: Option<OffsetDateTime>,
        not_after: Option<OffsetDateTime>,
    ) -> Result<Self, Error> {
        match (not_before, not_after) {
            (None, None) => Self::days_from_now(days),
            (Some(start), None) => Self::new(start, shift(start, days.into())?),
            (None, Some(end)) => Self::new(shift(end, -i64::from(days))?, end),
            (Some(start), Some(end)) => Self::new(start, end),
        }
    }

    /// The first instant of validity.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The last instant of validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Sets this period on certificate parameters.
    pub(crate) fn apply(&self, params: &mut rcgen::CertificateParams) {
        params.not_before = self.not_before;
        params.not_after = self.not_after;
    }
}

/// `at` moved by `days` days, later if positive.
fn shift(at: OffsetDateTime, days: i64) -> Result<OffsetDateTime, Error> {
    at.checked_add(Duration::days(days))
        .ok_or_else(|| Error::InvalidValidity {
            reason: format!("{at} moved by {days} days is out of range"),
        })
}
