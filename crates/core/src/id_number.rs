//! Taiwan personal ID numbers (national ID and resident certificate) and company numbers (統一編號).
//!
//! An [`IdNumber`] exists only after [`IdNumber::parse`] checked its shape and check digit, so code
//! that holds one never re-validates. Its `Debug` shows the masked form: personal data must never
//! reach logs.

use std::fmt;
use std::str::FromStr;

/// Weights of the eleven check positions: the area letter's two digits, then the nine digits.
const WEIGHTS: [u32; 11] = [1, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1];

/// The official area-letter codes (A=10 … Z=33; the late additions I, O, W, Z are out of order).
const AREA_CODES: [u32; 26] = [
    10, 11, 12, 13, 14, 15, 16, 17, 34, 18, 19, 20, 21, 22, 35, 23, 24, 25, 26, 27, 28, 29, 32, 30,
    31, 33,
];

/// Why a string is not a valid ID number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdNumberError {
    #[error("an ID number has 10 characters, found {0}")]
    Length(usize),
    #[error("an ID number is written in ASCII letters and digits")]
    NotAscii,
    #[error("an ID number starts with a letter A-Z")]
    AreaLetter,
    #[error(
        "the second character must be 1 or 2 (national ID), 8 or 9 (resident certificate) or A-D (old resident certificate)"
    )]
    SecondChar,
    #[error("characters 3 to 10 must be digits")]
    Digits,
    #[error("the check digit does not match")]
    Checksum,
    #[error("sex digit must be 1 or 2 and serial at most 7 digits")]
    Generate,
}

/// Which document an ID number belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// 國民身分證統一編號.
    National,
    /// 居留證統一證號, new format (since 2021: letter, 8 or 9, eight digits).
    Resident,
    /// 居留證統一證號, old format (two letters, eight digits).
    ResidentOld,
}

/// Sex as encoded in the ID number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sex {
    Male,
    Female,
}

/// A validated Taiwan ID number (national ID or resident certificate number), upper case.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdNumber(String);

fn area_code(letter: u8) -> Option<u32> {
    letter
        .is_ascii_uppercase()
        .then(|| AREA_CODES.get(usize::from(letter - b'A')).copied())
        .flatten()
}

/// Weighted sum of the area code and nine further digit values.
fn weighted_sum(area: u32, rest: &[u32; 9]) -> u32 {
    let mut values = [0u32; 11];
    values[0] = area / 10;
    values[1] = area % 10;
    values[2..].copy_from_slice(rest);
    values.iter().zip(WEIGHTS).map(|(v, w)| v * w).sum()
}

impl IdNumber {
    /// Parses and validates an ID number. Lower-case letters are accepted and stored upper case.
    pub fn parse(s: &str) -> Result<Self, IdNumberError> {
        let s = s.trim().to_ascii_uppercase();
        let b = s.as_bytes();
        if !s.is_ascii() {
            return Err(IdNumberError::NotAscii);
        }
        if b.len() != 10 {
            return Err(IdNumberError::Length(s.chars().count()));
        }
        let area = area_code(b[0]).ok_or(IdNumberError::AreaLetter)?;
        // The old resident format puts a letter (A-D) second; it counts as its area code's last digit.
        let second = match b[1] {
            b'1' | b'2' | b'8' | b'9' => u32::from(b[1] - b'0'),
            b'A'..=b'D' => area_code(b[1]).ok_or(IdNumberError::SecondChar)? % 10,
            _ => return Err(IdNumberError::SecondChar),
        };
        let mut rest = [second, 0, 0, 0, 0, 0, 0, 0, 0];
        for (slot, c) in rest.iter_mut().skip(1).zip(&b[2..]) {
            if !c.is_ascii_digit() {
                return Err(IdNumberError::Digits);
            }
            *slot = u32::from(c - b'0');
        }
        if !weighted_sum(area, &rest).is_multiple_of(10) {
            return Err(IdNumberError::Checksum);
        }
        Ok(Self(s))
    }

    /// Builds a valid national ID from an area letter, sex and a serial of up to 7 digits, computing
    /// the check digit. Used to make synthetic people.
    pub fn generate(area_letter: char, sex: Sex, serial: u32) -> Result<Self, IdNumberError> {
        let digit = match sex {
            Sex::Male => 1,
            Sex::Female => 2,
        };
        Self::with_second(area_letter, digit, serial)
    }

    /// Builds a valid new-format resident certificate number (second digit 8 = male, 9 = female).
    pub fn generate_resident(
        area_letter: char,
        sex: Sex,
        serial: u32,
    ) -> Result<Self, IdNumberError> {
        let digit = match sex {
            Sex::Male => 8,
            Sex::Female => 9,
        };
        Self::with_second(area_letter, digit, serial)
    }

    fn with_second(area_letter: char, second: u32, serial: u32) -> Result<Self, IdNumberError> {
        let letter = u8::try_from(area_letter).map_err(|_| IdNumberError::AreaLetter)?;
        let area = area_code(letter).ok_or(IdNumberError::AreaLetter)?;
        if serial > 9_999_999 {
            return Err(IdNumberError::Generate);
        }
        let mut rest = [second, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut n = serial;
        for slot in rest[1..8].iter_mut().rev() {
            *slot = n % 10;
            n /= 10;
        }
        let check = (10 - weighted_sum(area, &rest) % 10) % 10;
        rest[8] = check;
        let digits: String = rest.iter().map(|d| d.to_string()).collect();
        Self::parse(&format!("{}{digits}", char::from(letter)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> IdKind {
        match self.0.as_bytes().get(1) {
            Some(b'1' | b'2') => IdKind::National,
            Some(b'8' | b'9') => IdKind::Resident,
            _ => IdKind::ResidentOld,
        }
    }

    /// The sex the number encodes. Old resident numbers: A and C are male, B and D female.
    pub fn sex(&self) -> Sex {
        match self.0.as_bytes().get(1) {
            Some(b'1' | b'8' | b'A' | b'C') => Sex::Male,
            _ => Sex::Female,
        }
    }

    /// The number with characters 4 to 7 hidden, as agencies print it: `A12****789`.
    pub fn masked(&self) -> String {
        let (head, tail) = (&self.0[..3], &self.0[7..]);
        format!("{head}****{tail}")
    }
}

impl fmt::Debug for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdNumber({})", self.masked())
    }
}

/// Shows the full number: use it only where the number is the data being delivered.
impl fmt::Display for IdNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for IdNumber {
    type Err = IdNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why a string is not a valid 統一編號.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusinessIdError {
    #[error("a 統一編號 has exactly 8 digits")]
    Shape,
    #[error("the 統一編號 check does not match")]
    Checksum,
}

/// Weights of the 統一編號 check.
const BAN_WEIGHTS: [u32; 8] = [1, 2, 1, 2, 1, 2, 4, 1];

/// A validated company or business number (統一編號, 8 digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BusinessId(String);

fn ban_sum(digits: &[u32; 8]) -> u32 {
    // Each product's digits are added (e.g. 14 counts as 5).
    digits
        .iter()
        .zip(BAN_WEIGHTS)
        .map(|(d, w)| {
            let p = d * w;
            p / 10 + p % 10
        })
        .sum()
}

impl BusinessId {
    /// Validates with the Ministry of Finance rule in force since 2023: the sum must be divisible by 5
    /// (before, by 10; every old number still passes). When the 7th digit is 7 its product 28 may count
    /// as 10 or as 1, so either sum may pass.
    pub fn parse(s: &str) -> Result<Self, BusinessIdError> {
        let s = s.trim();
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BusinessIdError::Shape);
        }
        let mut d = [0u32; 8];
        for (slot, b) in d.iter_mut().zip(s.bytes()) {
            *slot = u32::from(b - b'0');
        }
        let sum = ban_sum(&d);
        let ok = sum.is_multiple_of(5) || (d[6] == 7 && (sum + 1).is_multiple_of(5));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(BusinessIdError::Checksum)
        }
    }

    /// Builds a valid number from a 7-digit serial by choosing the last digit (old rule, divisible by
    /// 10, so it is valid under both rules).
    pub fn generate(serial: u32) -> Result<Self, BusinessIdError> {
        if serial > 9_999_999 {
            return Err(BusinessIdError::Shape);
        }
        for last in 0..10 {
            let candidate = format!("{serial:07}{last}");
            let mut d = [0u32; 8];
            for (slot, b) in d.iter_mut().zip(candidate.bytes()) {
                *slot = u32::from(b - b'0');
            }
            if ban_sum(&d).is_multiple_of(10) {
                return Self::parse(&candidate);
            }
        }
        // Every serial has exactly one last digit making the sum divisible by 10.
        Err(BusinessIdError::Checksum)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BusinessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_valid_numbers() {
        let id = IdNumber::parse("A123456789").unwrap();
        assert_eq!(id.kind(), IdKind::National);
        assert_eq!(id.sex(), Sex::Male);
        assert_eq!(id.masked(), "A12****789");
        assert_eq!(
            IdNumber::parse("a123456789").unwrap().as_str(),
            "A123456789"
        );
        // A female national ID and resident certificates of both formats (check digits worked by hand).
        assert_eq!(IdNumber::parse("F231190288").unwrap().sex(), Sex::Female);
        let new = IdNumber::parse("A800000014").unwrap();
        assert_eq!((new.kind(), new.sex()), (IdKind::Resident, Sex::Male));
        let old = IdNumber::parse("AC01234567").unwrap();
        assert_eq!((old.kind(), old.sex()), (IdKind::ResidentOld, Sex::Male));
        assert_eq!(IdNumber::parse("FB12345672").unwrap().sex(), Sex::Female);
    }

    #[test]
    fn must_fail() {
        use IdNumberError::*;
        assert_eq!(IdNumber::parse("A123456788"), Err(Checksum));
        assert_eq!(IdNumber::parse("A12345678"), Err(Length(9)));
        assert_eq!(IdNumber::parse("A1234567890"), Err(Length(11)));
        assert_eq!(IdNumber::parse("1123456789"), Err(AreaLetter));
        assert_eq!(IdNumber::parse("A323456789"), Err(SecondChar));
        assert_eq!(IdNumber::parse("AE23456789"), Err(SecondChar));
        assert_eq!(IdNumber::parse("A12345678X"), Err(Digits));
        assert_eq!(IdNumber::parse("Ａ123456789"), Err(NotAscii));
        assert_eq!(IdNumber::parse(""), Err(Length(0)));
    }

    #[test]
    fn debug_hides_the_number() {
        let id = IdNumber::parse("A123456789").unwrap();
        let shown = format!("{id:?} {:?}", vec![id.clone()]);
        assert!(!shown.contains("A123456789"), "{shown}");
        assert!(shown.contains("A12****789"));
    }

    #[test]
    fn generate_known() {
        assert_eq!(
            IdNumber::generate('A', Sex::Male, 2345678)
                .unwrap()
                .as_str(),
            "A123456789"
        );
        assert_eq!(
            IdNumber::generate('a', Sex::Male, 1),
            Err(IdNumberError::AreaLetter)
        );
        assert_eq!(
            IdNumber::generate('A', Sex::Male, 10_000_000),
            Err(IdNumberError::Generate)
        );
    }

    #[test]
    fn business_ids() {
        // Published valid examples.
        for ok in ["04595257", "10458575", "22099131"] {
            BusinessId::parse(ok).unwrap();
        }
        assert_eq!(
            BusinessId::parse("04595258"),
            Err(BusinessIdError::Checksum)
        );
        assert_eq!(BusinessId::parse("0459525"), Err(BusinessIdError::Shape));
        assert_eq!(BusinessId::parse("0459525a"), Err(BusinessIdError::Shape));
    }

    fn letter() -> impl Strategy<Value = char> {
        (0u8..26).prop_map(|i| char::from(b'A' + i))
    }

    proptest! {
        #[test]
        fn generated_numbers_are_valid(l in letter(), male in any::<bool>(), serial in 0u32..10_000_000, resident in any::<bool>()) {
            let sex = if male { Sex::Male } else { Sex::Female };
            let id = if resident {
                IdNumber::generate_resident(l, sex, serial).unwrap()
            } else {
                IdNumber::generate(l, sex, serial).unwrap()
            };
            prop_assert_eq!(id.sex(), sex);
            prop_assert_eq!(id.kind(), if resident { IdKind::Resident } else { IdKind::National });
            prop_assert_eq!(IdNumber::parse(id.as_str()).unwrap(), id);
        }

        // A one-digit change shifts the weighted sum by weight × difference, so it is caught exactly
        // when that product is not a multiple of 10: always for weights 1, 3, 7, 9 (the last four
        // positions but the 5th-weight one), not for e.g. weight 5 and an even difference. The test
        // states the real property rather than a stronger one the official scheme does not have.
        #[test]
        fn changing_one_digit(l in letter(), male in any::<bool>(), serial in 0u32..10_000_000, pos in 2usize..10, new in 0u32..10) {
            let sex = if male { Sex::Male } else { Sex::Female };
            let id = IdNumber::generate(l, sex, serial).unwrap();
            let mut chars: Vec<char> = id.as_str().chars().collect();
            let old = chars[pos].to_digit(10).unwrap();
            prop_assume!(old != new);
            chars[pos] = char::from_digit(new, 10).unwrap();
            let changed: String = chars.into_iter().collect();
            let weight = WEIGHTS[pos + 1];
            let diff = old.abs_diff(new);
            let detectable = !(weight * diff).is_multiple_of(10);
            prop_assert_eq!(IdNumber::parse(&changed).is_err(), detectable);
            if weight % 2 == 1 && weight != 5 {
                prop_assert!(IdNumber::parse(&changed).is_err());
            }
        }

        #[test]
        fn generated_business_ids_are_valid(serial in 0u32..10_000_000) {
            let ban = BusinessId::generate(serial).unwrap();
            prop_assert_eq!(&ban.as_str()[..7], format!("{serial:07}"));
            prop_assert!(BusinessId::parse(ban.as_str()).is_ok());
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,12}") {
            let _ = IdNumber::parse(&s);
            let _ = BusinessId::parse(&s);
        }
    }
}
