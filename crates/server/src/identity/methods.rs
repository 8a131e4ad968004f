//! The pluggable method interface and the knowledge-based methods (health-insurance card with
//! registered password, level 3; dual ID, level 4). Certificates are in [`super::certificate`].
//!
//! A method sees only its own form fields. It first names the account the attempt is for —
//! validating the ID number before anything else is done with it — so the flow can check the
//! lockout before any agency is asked; then it verifies.

use super::registry::{self, Check, HOUSEHOLD_AGENCY, NHI_AGENCY, RegistryError};
use super::{Form, Refusal, SubjectId};
use crate::state::AppState;
use mydata_core::{BusinessId, IdNumber, IdentityMethod};
use std::future::Future;
use std::pin::Pin;

/// A boxed future borrowing its inputs.
pub type MethodFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a method's verification can end in besides success.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    /// The person's input was refused (counted toward lockout when [`Refusal::counts`]).
    #[error("{0}")]
    Refused(Refusal),
    /// The check could not be made (agency down, not configured): not the person's fault.
    #[error(transparent)]
    Unavailable(#[from] RegistryError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<Refusal> for MethodError {
    fn from(r: Refusal) -> Self {
        MethodError::Refused(r)
    }
}

/// Everything a method may use while verifying.
#[derive(Debug)]
pub struct MethodContext<'a> {
    pub state: &'a AppState,
    /// The session the attempt belongs to (challenges are bound to it).
    pub session_hash: &'a str,
}

/// One identity verification method.
pub trait Method: Send + Sync + std::fmt::Debug {
    /// The catalogue method this implements (its level comes from there).
    fn method(&self) -> IdentityMethod;

    /// The names of the form fields the method reads (the page renders them; anything else is
    /// ignored).
    fn fields(&self) -> &'static [&'static str];

    /// Who the attempt claims to be, validated (format and check digit) before anything else.
    fn account(&self, form: &Form) -> Result<SubjectId, Refusal>;

    /// Verifies the attempt for `account`; on success the subject proven (which must be `account`).
    fn verify<'a>(
        &'a self,
        cx: &'a MethodContext<'a>,
        form: &'a Form,
        account: &'a SubjectId,
    ) -> MethodFuture<'a, Result<SubjectId, MethodError>>;
}

/// A trimmed, non-empty field.
pub fn field<'f>(form: &'f Form, name: &str) -> Option<&'f str> {
    form.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// The `id_number` field as a validated ID number (upper-cased; spaces ignored).
pub fn id_number(form: &Form) -> Result<IdNumber, Refusal> {
    let raw = field(form, "id_number").ok_or(Refusal::InvalidIdNumber)?;
    IdNumber::parse(&raw.to_ascii_uppercase()).map_err(|_| Refusal::InvalidIdNumber)
}

/// A validated 統一編號.
pub fn business_id(raw: &str) -> Result<BusinessId, Refusal> {
    BusinessId::parse(raw.trim()).map_err(|_| Refusal::InvalidBusinessId)
}

/// Digits only, of a given length range (card numbers).
fn digits(
    form: &Form,
    name: &str,
    len: std::ops::RangeInclusive<usize>,
) -> Result<String, Refusal> {
    let v = field(form, name).ok_or(Refusal::MalformedInput)?;
    if len.contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) {
        Ok(v.to_owned())
    } else {
        Err(Refusal::Mismatch)
    }
}

/// 健保卡+密碼 (level 3): ID number, health-insurance card number and the password registered in
/// a level-1 session. The password is checked first (locally); the card number with the agency.
#[derive(Debug)]
pub struct NhiCard;

impl Method for NhiCard {
    fn method(&self) -> IdentityMethod {
        IdentityMethod::NhiCard
    }

    fn fields(&self) -> &'static [&'static str] {
        &["id_number", "nhi_card_no", "password"]
    }

    fn account(&self, form: &Form) -> Result<SubjectId, Refusal> {
        id_number(form).map(SubjectId::Person)
    }

    fn verify<'a>(
        &'a self,
        cx: &'a MethodContext<'a>,
        form: &'a Form,
        account: &'a SubjectId,
    ) -> MethodFuture<'a, Result<SubjectId, MethodError>> {
        Box::pin(async move {
            let SubjectId::Person(id) = account else {
                return Err(Refusal::WrongSubjectKind.into());
            };
            let card = digits(form, "nhi_card_no", 12..=12).map_err(|_| Refusal::WrongPassword)?;
            let password = form.get("password").map(String::as_str).unwrap_or_default();
            let pseudonym = super::subject_pseudonym(cx.state, account);
            let stored = cx
                .state
                .store()
                .subject(&pseudonym)
                .await
                .map_err(|e| MethodError::Internal(e.to_string()))?
                .and_then(|s| s.password_hash);
            let pw = password.to_owned();
            let ok = match stored {
                Some(phc) => {
                    tokio::task::spawn_blocking(move || super::password::verify(&pw, &phc))
                        .await
                        .unwrap_or(false)
                }
                None => {
                    let _ = tokio::task::spawn_blocking(move || super::password::burn(&pw)).await;
                    false
                }
            };
            if !ok {
                return Err(Refusal::WrongPassword.into());
            }
            let check = Check {
                id_number: id.as_str(),
                nhi_card_no: Some(&card),
                ..Check::default()
            };
            if !registry::confirm(cx.state, NHI_AGENCY, &check).await? {
                return Err(Refusal::WrongPassword.into());
            }
            Ok(account.clone())
        })
    }
}

/// 雙證件 (level 4): ID number, health-card number, and household number or ID-card issue date,
/// confirmed by the health-insurance agency and household registration. Whatever differs, the
/// answer is the same.
#[derive(Debug)]
pub struct DualId;

impl Method for DualId {
    fn method(&self) -> IdentityMethod {
        IdentityMethod::DualId
    }

    fn fields(&self) -> &'static [&'static str] {
        &[
            "id_number",
            "nhi_card_no",
            "household_no",
            "id_card_issue_date",
        ]
    }

    fn account(&self, form: &Form) -> Result<SubjectId, Refusal> {
        id_number(form).map(SubjectId::Person)
    }

    fn verify<'a>(
        &'a self,
        cx: &'a MethodContext<'a>,
        form: &'a Form,
        account: &'a SubjectId,
    ) -> MethodFuture<'a, Result<SubjectId, MethodError>> {
        Box::pin(async move {
            let SubjectId::Person(id) = account else {
                return Err(Refusal::WrongSubjectKind.into());
            };
            let card = digits(form, "nhi_card_no", 12..=12);
            let household = field(form, "household_no").map(str::to_ascii_uppercase);
            let issued = field(form, "id_card_issue_date");
            // A household number is a letter and 7 digits; a date is YYYY-MM-DD.
            let household_ok = household.as_deref().is_none_or(|h| {
                h.len() == 8
                    && h.as_bytes()[0].is_ascii_uppercase()
                    && h.bytes().skip(1).all(|b| b.is_ascii_digit())
            });
            let issued_ok = issued.is_none_or(|d| {
                d.len() == 10
                    && d.bytes().enumerate().all(|(i, b)| {
                        if i == 4 || i == 7 {
                            b == b'-'
                        } else {
                            b.is_ascii_digit()
                        }
                    })
            });
            if household.is_none() && issued.is_none() {
                return Err(Refusal::MalformedInput.into());
            }
            // Malformed values are answered like wrong ones: the message must not single out a field.
            let Ok(card) = card else {
                return Err(Refusal::Mismatch.into());
            };
            if !household_ok || !issued_ok {
                return Err(Refusal::Mismatch.into());
            }
            let nhi = Check {
                id_number: id.as_str(),
                nhi_card_no: Some(&card),
                ..Check::default()
            };
            let ris = Check {
                id_number: id.as_str(),
                household_no: household.as_deref(),
                id_card_issue_date: issued,
                ..Check::default()
            };
            // Both agencies are asked whatever the first says, so timing does not tell which failed.
            let (a, b) = tokio::join!(
                registry::confirm(cx.state, NHI_AGENCY, &nhi),
                registry::confirm(cx.state, HOUSEHOLD_AGENCY, &ris)
            );
            if a? && b? {
                Ok(account.clone())
            } else {
                Err(Refusal::Mismatch.into())
            }
        })
    }
}
