//! Rules of counter verification (臨櫃核驗): barcode serials, verification passwords and the
//! per-counter lockout, as pure functions of the injected time.
//!
//! A person's barcode carries an 8-character [`Serial`] that is valid [`limits::BARCODE_TTL`] and is
//! replaced after that; a clerk who enters it makes the platform send an 8-digit
//! [`VerificationPassword`] valid [`limits::COUNTER_PASSWORD_TTL`], once. Wrong barcode or password
//! entries at one counter are counted: [`limits::LOCKOUT_THRESHOLD`] within
//! [`limits::LOCKOUT_WINDOW`] lock that counter for [`limits::LOCKOUT_DURATION`] ([`lockout_after`]).

use crate::clock::Timestamp;
use crate::limits;
use std::fmt;
use std::time::Duration;

/// The serial alphabet: digits and capitals without the look-alikes 0/O, 1/I/L and U/V, so a clerk
/// typing a serial from a phone screen cannot confuse two characters. 30 symbols.
pub const SERIAL_ALPHABET: &[u8; 30] = b"23456789ABCDEFGHJKMNPQRSTWXYZV";
/// Characters in a serial.
pub const SERIAL_LEN: usize = 8;
/// Digits in a verification password.
pub const PASSWORD_DIGITS: usize = 8;

const SERIAL_SPACE: u64 = 30u64.pow(SERIAL_LEN as u32);
const PASSWORD_SPACE: u64 = 10u64.pow(PASSWORD_DIGITS as u32);

/// Why typed or scanned text is not a serial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    #[error("the barcode serial is empty")]
    Empty,
    #[error("a barcode serial has 8 characters; this one has {0}")]
    Length(usize),
    #[error(
        "a barcode serial has no character `{0}` (it uses 2-9 and capitals without I, L, O, U)"
    )]
    Character(char),
}

/// An 8-character barcode serial, normalised to capitals.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Serial(String);

impl Serial {
    /// The serial for 64 random bits (the modulo bias over 30^8 is below 2^-24).
    pub fn from_random(r: u64) -> Self {
        let mut n = r % SERIAL_SPACE;
        let mut out = [0u8; SERIAL_LEN];
        for slot in out.iter_mut().rev() {
            let i = usize::try_from(n % 30).unwrap_or(0);
            *slot = SERIAL_ALPHABET.get(i).copied().unwrap_or(b'2');
            n /= 30;
        }
        Self(out.iter().map(|&b| char::from(b)).collect())
    }

    /// Parses what a scanner or a clerk typed: surrounding blanks, inner spaces and hyphens are
    /// ignored and lower case is accepted; anything else must be the alphabet.
    pub fn parse(input: &str) -> Result<Self, SerialError> {
        let cleaned: String = input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if cleaned.is_empty() {
            return Err(SerialError::Empty);
        }
        if let Some(bad) = cleaned
            .chars()
            .find(|c| !c.is_ascii() || !SERIAL_ALPHABET.contains(&(*c as u8)))
        {
            return Err(SerialError::Character(bad));
        }
        let n = cleaned.chars().count();
        if n != SERIAL_LEN {
            return Err(SerialError::Length(n));
        }
        Ok(Self(cleaned))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The serial in two groups of four, easier to read aloud (`ABCD-EFGH`).
    pub fn grouped(&self) -> String {
        let (a, b) = self.0.split_at(SERIAL_LEN / 2);
        format!("{a}-{b}")
    }
}

impl fmt::Debug for Serial {
    // A serial is a bearer secret for 20 minutes: never in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Serial(********)")
    }
}

/// Why typed text is not a verification password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the verification password is empty")]
    Empty,
    #[error("a verification password is 8 digits")]
    Format,
}

/// An 8-digit verification password.
#[derive(Clone, PartialEq, Eq)]
pub struct VerificationPassword(String);

impl VerificationPassword {
    /// The password for 64 random bits (bias over 10^8 is below 2^-35).
    pub fn from_random(r: u64) -> Self {
        Self(format!("{:08}", r % PASSWORD_SPACE))
    }

    /// Eight ASCII digits; blanks around and between groups are ignored.
    pub fn parse(input: &str) -> Result<Self, PasswordError> {
        let cleaned: String = input
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect();
        if cleaned.is_empty() {
            return Err(PasswordError::Empty);
        }
        if cleaned.len() != PASSWORD_DIGITS || !cleaned.chars().all(|c| c.is_ascii_digit()) {
            return Err(PasswordError::Format);
        }
        Ok(Self(cleaned))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for VerificationPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VerificationPassword(********)")
    }
}

/// When a serial issued at `issued_at` stops working.
pub fn serial_expires_at(issued_at: Timestamp) -> Timestamp {
    issued_at.plus(limits::BARCODE_TTL)
}

/// When a password sent at `sent_at` stops working.
pub fn password_expires_at(sent_at: Timestamp) -> Timestamp {
    sent_at.plus(limits::COUNTER_PASSWORD_TTL)
}

/// Where a serial stands at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialState {
    Valid,
    /// Its 20 minutes are over.
    Expired,
    /// A newer serial replaced it (the person's page refreshed).
    Replaced,
    /// A clerk already verified with it.
    Used,
    /// The data behind it is gone (8 hours passed, or it was handed out).
    DataGone,
}

/// The state of a serial from its stored facts. Order matters: a used serial says so even after
/// its time ran out, so the clerk learns the real reason.
pub fn serial_state(
    now: Timestamp,
    expires_at: Timestamp,
    replaced: bool,
    used: bool,
    data_expires_at: Timestamp,
) -> SerialState {
    if used {
        SerialState::Used
    } else if now >= data_expires_at {
        SerialState::DataGone
    } else if replaced {
        SerialState::Replaced
    } else if now >= expires_at {
        SerialState::Expired
    } else {
        SerialState::Valid
    }
}

/// Whether the person's page must issue a new serial: none yet, or the current one is at or past
/// its end. A new serial never outlives the data it points to.
pub fn needs_new_serial(now: Timestamp, current_expires_at: Option<Timestamp>) -> bool {
    current_expires_at.is_none_or(|e| now >= e)
}

/// The end of a new serial issued at `now` for data kept until `data_expires_at`.
pub fn new_serial_expiry(now: Timestamp, data_expires_at: Timestamp) -> Timestamp {
    serial_expires_at(now).min(data_expires_at)
}

/// Where a password stands at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordState {
    Valid,
    Expired,
    Used,
}

pub fn password_state(now: Timestamp, expires_at: Timestamp, used: bool) -> PasswordState {
    if used {
        PasswordState::Used
    } else if now >= expires_at {
        PasswordState::Expired
    } else {
        PasswordState::Valid
    }
}

/// The lockout a counter gets from its failures: `failures` are the times of wrong entries
/// (including the one just made) since the last lockout. Returns the end of the lockout when
/// [`limits::LOCKOUT_THRESHOLD`] of them fall within [`limits::LOCKOUT_WINDOW`] ending at `now`.
pub fn lockout_after(failures: &[Timestamp], now: Timestamp) -> Option<Timestamp> {
    let window_start = now.millis().saturating_sub(ms(limits::LOCKOUT_WINDOW));
    let recent = failures
        .iter()
        .filter(|t| t.millis() > window_start && **t <= now)
        .count();
    (recent >= limits::LOCKOUT_THRESHOLD as usize).then(|| now.plus(limits::LOCKOUT_DURATION))
}

/// How long a counter locked until `until` stays locked at `now` (zero when it is free).
pub fn lock_remaining(now: Timestamp, until: Option<Timestamp>) -> Duration {
    until.map_or(Duration::ZERO, |u| now.until(u))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn alphabet_has_no_look_alikes_and_no_repeats() {
        for c in b"01ILOU" {
            assert!(!SERIAL_ALPHABET.contains(c), "{}", char::from(*c));
        }
        let mut v = SERIAL_ALPHABET.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), 30);
    }

    #[test]
    fn parse_normalises_and_refuses_clearly() {
        let s = Serial::parse(" abcd-efgh\n").unwrap();
        assert_eq!(s.as_str(), "ABCDEFGH");
        let ok = Serial::parse(" 2345 6789\r\n").unwrap();
        assert_eq!(ok.as_str(), "23456789");
        assert_eq!(ok.grouped(), "2345-6789");
        assert_eq!(Serial::parse(""), Err(SerialError::Empty));
        assert_eq!(Serial::parse("  - "), Err(SerialError::Empty));
        assert_eq!(Serial::parse("2345678"), Err(SerialError::Length(7)));
        assert_eq!(Serial::parse("234567892"), Err(SerialError::Length(9)));
        assert_eq!(Serial::parse("2345678O"), Err(SerialError::Character('O')));
        assert_eq!(Serial::parse("2345678i"), Err(SerialError::Character('I')));
        assert_eq!(Serial::parse("23456780"), Err(SerialError::Character('0')));
        assert_eq!(
            Serial::parse("2345678\u{e9}"),
            Err(SerialError::Character('\u{e9}'))
        );
        assert_eq!(format!("{ok:?}"), "Serial(********)");
    }

    #[test]
    fn passwords_are_eight_digits() {
        assert_eq!(VerificationPassword::from_random(0).as_str(), "00000000");
        assert_eq!(VerificationPassword::from_random(123).as_str(), "00000123");
        assert_eq!(
            VerificationPassword::parse(" 1234 5678 ").unwrap().as_str(),
            "12345678"
        );
        assert_eq!(VerificationPassword::parse(""), Err(PasswordError::Empty));
        assert_eq!(
            VerificationPassword::parse("1234567"),
            Err(PasswordError::Format)
        );
        assert_eq!(
            VerificationPassword::parse("1234567a"),
            Err(PasswordError::Format)
        );
        assert_eq!(
            VerificationPassword::parse("１２３４５６７８"),
            Err(PasswordError::Format)
        );
    }

    #[test]
    fn serial_lives_twenty_minutes_and_never_past_its_data() {
        let issued = t(1_000);
        assert_eq!(serial_expires_at(issued), t(1_000 + 20 * MIN));
        let data_end = t(1_000 + 8 * 60 * MIN);
        assert_eq!(new_serial_expiry(issued, data_end), t(1_000 + 20 * MIN));
        let late = t(1_000 + 8 * 60 * MIN - 5 * MIN);
        assert_eq!(new_serial_expiry(late, data_end), data_end);
        assert!(needs_new_serial(issued, None));
        assert!(!needs_new_serial(
            t(1_000 + 20 * MIN - 1),
            Some(t(1_000 + 20 * MIN))
        ));
        assert!(needs_new_serial(
            t(1_000 + 20 * MIN),
            Some(t(1_000 + 20 * MIN))
        ));
    }

    #[test]
    fn serial_states_say_the_real_reason() {
        let exp = t(20 * MIN);
        let data = t(480 * MIN);
        assert_eq!(
            serial_state(t(0), exp, false, false, data),
            SerialState::Valid
        );
        assert_eq!(
            serial_state(exp, exp, false, false, data),
            SerialState::Expired
        );
        assert_eq!(
            serial_state(t(1), exp, true, false, data),
            SerialState::Replaced
        );
        assert_eq!(serial_state(t(1), exp, true, true, data), SerialState::Used);
        assert_eq!(
            serial_state(data, exp, false, false, data),
            SerialState::DataGone
        );
    }

    #[test]
    fn password_lives_two_minutes_once() {
        let sent = t(5_000);
        let exp = password_expires_at(sent);
        assert_eq!(exp, t(5_000 + 2 * MIN));
        assert_eq!(
            password_state(t(5_000 + 2 * MIN - 1), exp, false),
            PasswordState::Valid
        );
        assert_eq!(password_state(exp, exp, false), PasswordState::Expired);
        assert_eq!(password_state(sent, exp, true), PasswordState::Used);
    }

    #[test]
    fn five_failures_within_fifteen_minutes_lock_for_fifteen() {
        let f: Vec<Timestamp> = (0..4).map(|i| t(i * MIN)).collect();
        assert_eq!(lockout_after(&f, t(3 * MIN)), None);
        let mut f5 = f.clone();
        f5.push(t(14 * MIN));
        assert_eq!(lockout_after(&f5, t(14 * MIN)), Some(t(29 * MIN)));
        // The first failure left the window: only four count.
        let mut late = f.clone();
        late.push(t(15 * MIN));
        assert_eq!(lockout_after(&late, t(15 * MIN)), None);
        assert_eq!(
            lock_remaining(t(20 * MIN), Some(t(29 * MIN))),
            Duration::from_secs(9 * 60)
        );
        assert_eq!(
            lock_remaining(t(29 * MIN), Some(t(29 * MIN))),
            Duration::ZERO
        );
        assert_eq!(lock_remaining(t(0), None), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn every_random_serial_is_valid_and_parses_back(r in any::<u64>()) {
            let s = Serial::from_random(r);
            prop_assert_eq!(s.as_str().len(), SERIAL_LEN);
            prop_assert!(s.as_str().bytes().all(|b| SERIAL_ALPHABET.contains(&b)));
            prop_assert_eq!(Serial::parse(s.as_str()), Ok(s.clone()));
            prop_assert_eq!(Serial::parse(&s.as_str().to_lowercase()), Ok(s.clone()));
            prop_assert_eq!(Serial::parse(&s.grouped()), Ok(s.clone()));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_alphabet(input in "\\PC{0,12}") {
            if let Ok(s) = Serial::parse(&input) {
                prop_assert_eq!(s.as_str().len(), SERIAL_LEN);
                prop_assert!(s.as_str().bytes().all(|b| SERIAL_ALPHABET.contains(&b)));
            }
        }

        #[test]
        fn every_random_password_is_eight_digits(r in any::<u64>()) {
            let p = VerificationPassword::from_random(r);
            prop_assert_eq!(p.as_str().len(), PASSWORD_DIGITS);
            prop_assert_eq!(VerificationPassword::parse(p.as_str()), Ok(p.clone()));
        }

        #[test]
        fn lock_needs_five_in_the_window(offsets in proptest::collection::vec(0i64..60 * MIN, 0..12), now_off in 0i64..60 * MIN) {
            let now = t(now_off);
            let fails: Vec<Timestamp> = offsets.iter().map(|&o| t(o)).collect();
            let in_window = fails.iter().filter(|f| f.millis() > now_off - 15 * MIN && f.millis() <= now_off).count();
            let got = lockout_after(&fails, now);
            prop_assert_eq!(got.is_some(), in_window >= 5);
            if let Some(until) = got {
                prop_assert_eq!(until, t(now_off + 15 * MIN));
            }
        }
    }
}
