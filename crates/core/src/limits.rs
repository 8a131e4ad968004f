//! The time and size limits the seed documents set, in one place.

use std::time::Duration;

/// Personal data stays on the platform at most this long after a transfer is created.
pub const PACKAGE_TTL: Duration = Duration::from_secs(8 * 3600);
/// A counter barcode serial is valid this long, then it is replaced.
pub const BARCODE_TTL: Duration = Duration::from_secs(20 * 60);
/// A counter verification password is valid this long.
pub const COUNTER_PASSWORD_TTL: Duration = Duration::from_secs(2 * 60);
/// Wrong barcode or password entries counted within this window...
pub const LOCKOUT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// ...up to this many lock the counter (or account)...
pub const LOCKOUT_THRESHOLD: u32 = 5;
/// ...for this long.
pub const LOCKOUT_DURATION: Duration = Duration::from_secs(15 * 60);
/// An OAuth authorization code is valid at most this long.
pub const AUTHORIZATION_CODE_TTL: Duration = Duration::from_secs(60);
/// A service may use at most this many datasets unless a legal basis is recorded.
pub const MAX_DATASETS_WITHOUT_LEGAL_BASIS: usize = 5;
/// Audit records are kept at least this long (two years).
pub const AUDIT_RETENTION: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
