//! Identity methods and the assurance levels they reach (level 1 is the strongest).
//!
//! The codes are those of the seed catalogue (`moica_cert`, `tw_fido`, ...) and are part of the API.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How sure the platform is of who a person is. Level 1 is the strongest, level 4 the weakest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct AssuranceLevel(u8);

impl AssuranceLevel {
    pub const L1: Self = Self(1);
    pub const L2: Self = Self(2);
    pub const L3: Self = Self(3);
    pub const L4: Self = Self(4);

    /// The level as the number the seeds use (1..=4).
    pub fn number(self) -> u8 {
        self.0
    }

    /// True when a verification at `self` is good enough for something that requires `required`.
    pub fn satisfies(self, required: Self) -> bool {
        self.0 <= required.0
    }
}

impl TryFrom<u8> for AssuranceLevel {
    type Error = String;
    fn try_from(n: u8) -> Result<Self, Self::Error> {
        if (1..=4).contains(&n) {
            Ok(Self(n))
        } else {
            Err(format!("assurance level must be 1 to 4, got {n}"))
        }
    }
}

impl From<AssuranceLevel> for u8 {
    fn from(l: AssuranceLevel) -> u8 {
        l.0
    }
}

impl fmt::Display for AssuranceLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Whether a method proves a natural person or a legal person (company, organisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Natural,
    Legal,
}

/// An identity verification method a dataset may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMethod {
    /// 自然人憑證: citizen digital certificate (smart card + PIN).
    MoicaCert,
    /// 工商憑證: business certificate of a legal person.
    MoeaCert,
    /// TW FidO / mobile citizen certificate: a passkey bound with a level-1 certificate.
    TwFido,
    /// 健保卡+密碼: health-insurance card number and registered password.
    NhiCard,
    /// 雙證件: ID number with health-card number and household number or ID-card issue date.
    DualId,
    /// Verified by a service registered as a trusted identity verifier, which asserted the person
    /// and the level it reached (online services only). Never offered at sign-in, never in the
    /// catalogue (so not in [`IdentityMethod::ALL`], and not read from catalogue files).
    #[serde(skip_deserializing)]
    Asserted,
}

impl IdentityMethod {
    pub const ALL: [IdentityMethod; 5] = [
        IdentityMethod::MoicaCert,
        IdentityMethod::MoeaCert,
        IdentityMethod::TwFido,
        IdentityMethod::NhiCard,
        IdentityMethod::DualId,
    ];

    /// The stable code used in the catalogue files and the API.
    pub fn code(self) -> &'static str {
        match self {
            IdentityMethod::MoicaCert => "moica_cert",
            IdentityMethod::MoeaCert => "moea_cert",
            IdentityMethod::TwFido => "tw_fido",
            IdentityMethod::NhiCard => "nhi_card",
            IdentityMethod::DualId => "dual_id",
            IdentityMethod::Asserted => "asserted",
        }
    }

    /// The assurance level the method reaches (table 2 of seed 002). An assertion can state any
    /// level; the level it states is what counts.
    pub fn level(self) -> AssuranceLevel {
        match self {
            IdentityMethod::MoicaCert | IdentityMethod::MoeaCert | IdentityMethod::Asserted => {
                AssuranceLevel::L1
            }
            IdentityMethod::TwFido => AssuranceLevel::L2,
            IdentityMethod::NhiCard => AssuranceLevel::L3,
            IdentityMethod::DualId => AssuranceLevel::L4,
        }
    }

    /// Which kind of person the method proves.
    pub fn subject_kind(self) -> SubjectKind {
        match self {
            IdentityMethod::MoeaCert => SubjectKind::Legal,
            _ => SubjectKind::Natural,
        }
    }

    pub fn name_zh(self) -> &'static str {
        match self {
            IdentityMethod::MoicaCert => "自然人憑證",
            IdentityMethod::MoeaCert => "工商憑證",
            IdentityMethod::TwFido => "TW FidO 行動自然人憑證",
            IdentityMethod::NhiCard => "健保卡+密碼",
            IdentityMethod::DualId => "雙證件驗證",
            IdentityMethod::Asserted => "可信任服務驗證",
        }
    }

    pub fn name_en(self) -> &'static str {
        match self {
            IdentityMethod::MoicaCert => "Citizen digital certificate",
            IdentityMethod::MoeaCert => "Business certificate",
            IdentityMethod::TwFido => "TW FidO mobile certificate (passkey)",
            IdentityMethod::NhiCard => "Health-insurance card and password",
            IdentityMethod::DualId => "Dual ID check",
            IdentityMethod::Asserted => "Verified by a trusted service",
        }
    }

    /// The method named by an agency request's `assurance.method` (the sign-in methods and
    /// `asserted`).
    pub fn from_claim(code: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain([IdentityMethod::Asserted])
            .find(|m| m.code() == code)
    }

    /// All codes, comma separated, for error messages that list the allowed values.
    pub fn allowed_codes() -> String {
        Self::ALL.map(Self::code).join(", ")
    }
}

impl fmt::Display for IdentityMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for IdentityMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.code() == s)
            .ok_or_else(|| {
                format!(
                    "unknown identity method `{s}` (allowed: {})",
                    Self::allowed_codes()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_levels_follow_the_seed_table() {
        for m in IdentityMethod::ALL {
            assert_eq!(m.code().parse::<IdentityMethod>(), Ok(m));
        }
        assert_eq!(IdentityMethod::MoicaCert.level(), AssuranceLevel::L1);
        assert_eq!(IdentityMethod::MoeaCert.level(), AssuranceLevel::L1);
        assert_eq!(IdentityMethod::TwFido.level(), AssuranceLevel::L2);
        assert_eq!(IdentityMethod::NhiCard.level(), AssuranceLevel::L3);
        assert_eq!(IdentityMethod::DualId.level(), AssuranceLevel::L4);
        assert!("MOICA_CERT".parse::<IdentityMethod>().is_err());
        // An assertion is never a sign-in method or a catalogue entry, but agencies read it.
        assert!("asserted".parse::<IdentityMethod>().is_err());
        assert!(serde_json::from_str::<IdentityMethod>("\"asserted\"").is_err());
        assert_eq!(
            IdentityMethod::from_claim("asserted"),
            Some(IdentityMethod::Asserted)
        );
    }

    #[test]
    fn stronger_levels_satisfy_weaker_requirements_only() {
        assert!(AssuranceLevel::L1.satisfies(AssuranceLevel::L4));
        assert!(AssuranceLevel::L2.satisfies(AssuranceLevel::L2));
        assert!(!AssuranceLevel::L3.satisfies(AssuranceLevel::L2));
        assert!(AssuranceLevel::try_from(0).is_err());
        assert!(AssuranceLevel::try_from(5).is_err());
    }
}
