//! Counter verification (臨櫃核驗): a person's barcode serial, the clerk's scan, the verification
//! password sent to the person, the per-counter lockout, and the clerk's access to the data.
//!
//! Rules (times from the injected clock, see `mydata_core::counter`): a serial works 20 minutes and
//! is replaced when the person's page is shown after that; a scan at a counter of the office the
//! person chose sends an 8-digit password to the person's verified contacts, valid 2 minutes and
//! once; the right password uses the serial and grants the clerk's session the data. Every wrong
//! barcode or password entry counts against the counter: 5 within 15 minutes lock it for 15
//! minutes. Every scan, password sent, password result and data access is an audit event on the
//! transfer (office and counter IDs only), so it shows in the person's usage records.

pub mod barcode;
pub mod clerk;

use crate::error::AppError;
use crate::i18n::Lang;
use crate::identity::messages::{self, Channel, OutgoingMessage};
use crate::state::AppState;
use mydata_core::Timestamp;
use mydata_core::counter::{
    PasswordError, PasswordState, Serial, SerialError, SerialState, VerificationPassword,
    new_serial_expiry, password_expires_at, password_state, serial_state,
};
use mydata_core::transfer::TransferState;
use mydata_store::{
    GrantRow, NewAuditEvent, OfficeRow, PasswordRow, SerialRow, StoreError, Transfer,
};
use rand::Rng;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How long a clerk may look at data after the right password (never past the data's 8 hours).
pub const GRANT_TTL: Duration = Duration::from_secs(30 * 60);

/// Why a counter entry was refused. Codes are stable API values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    SerialEmpty,
    SerialMalformed,
    SerialUnknown,
    SerialExpired,
    SerialReplaced,
    SerialUsed,
    DataGone,
    OtherOffice,
    NoContact,
    PasswordEmpty,
    PasswordMalformed,
    PasswordWrong,
    PasswordExpired,
    PasswordUsed,
    Locked { retry_after_secs: u64 },
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::SerialEmpty => "counter_serial_empty",
            Refusal::SerialMalformed => "counter_serial_malformed",
            Refusal::SerialUnknown => "counter_serial_unknown",
            Refusal::SerialExpired => "counter_serial_expired",
            Refusal::SerialReplaced => "counter_serial_replaced",
            Refusal::SerialUsed => "counter_serial_used",
            Refusal::DataGone => "counter_data_gone",
            Refusal::OtherOffice => "counter_other_office",
            Refusal::NoContact => "counter_no_contact",
            Refusal::PasswordEmpty => "counter_password_empty",
            Refusal::PasswordMalformed => "counter_password_malformed",
            Refusal::PasswordWrong => "counter_password_wrong",
            Refusal::PasswordExpired => "counter_password_expired",
            Refusal::PasswordUsed => "counter_password_used",
            Refusal::Locked { .. } => "counter_locked",
        }
    }

    /// Whether the entry counts towards the counter's lockout: every wrong barcode or password
    /// typed or scanned does; an empty field, a person without a contact and a locked counter do not.
    pub fn counts(self) -> bool {
        !matches!(
            self,
            Refusal::SerialEmpty
                | Refusal::PasswordEmpty
                | Refusal::NoContact
                | Refusal::Locked { .. }
        )
    }

    pub fn message(self, lang: Lang) -> String {
        let (zh, en) = match self {
            Refusal::SerialEmpty => (
                "請掃描條碼或輸入條碼序號。",
                "Scan the barcode or type its serial.",
            ),
            Refusal::SerialMalformed => (
                "條碼序號格式不正確：序號為 8 個字元（數字 2–9 與英文大寫字母，不含 I、L、O、U）。請重新掃描或核對後輸入。",
                "This is not a barcode serial: a serial is 8 characters (digits 2-9 and capitals without I, L, O, U). Scan again or check what you typed.",
            ),
            Refusal::SerialUnknown => (
                "查無此條碼序號。請民眾重新整理條碼頁面後再掃描。",
                "No barcode has this serial. Ask the person to reload their barcode page and scan again.",
            ),
            Refusal::SerialExpired => (
                "此條碼已逾 20 分鐘有效期限。請民眾重新整理頁面取得新條碼。",
                "This barcode is older than 20 minutes. Ask the person to reload their page for a new one.",
            ),
            Refusal::SerialReplaced => (
                "此條碼已被新條碼取代，請掃描民眾頁面上目前顯示的條碼。",
                "A newer barcode replaced this one: scan the barcode the person's page shows now.",
            ),
            Refusal::SerialUsed => (
                "此條碼已完成核驗，不能再次使用。請民眾重新申請。",
                "This barcode was already used for a verification and cannot be used again.",
            ),
            Refusal::DataGone => (
                "此條碼的資料已超過 8 小時保存期限或已被取用並刪除，請民眾重新申請。",
                "The data behind this barcode passed its 8 hours or was already handed out, and is deleted. The person must apply again.",
            ),
            Refusal::OtherOffice => (
                "此條碼不是申請給本單位的臨櫃服務，本櫃檯不能取用。",
                "This barcode was issued for another office's counter service; this counter cannot use it.",
            ),
            Refusal::NoContact => (
                "民眾尚未登錄手機或電子郵件，無法寄送驗證密碼。",
                "The person has no registered mobile number or email, so no verification password can be sent.",
            ),
            Refusal::PasswordEmpty => (
                "請輸入民眾告知的 8 位數驗證密碼。",
                "Type the 8-digit verification password the person tells you.",
            ),
            Refusal::PasswordMalformed => (
                "驗證密碼為 8 位數字。",
                "A verification password is 8 digits.",
            ),
            Refusal::PasswordWrong => (
                "驗證密碼錯誤，請與民眾核對。",
                "The verification password is wrong; check it with the person.",
            ),
            Refusal::PasswordExpired => (
                "驗證密碼已逾 2 分鐘有效期限，請重新掃描條碼以寄送新密碼。",
                "The verification password is older than 2 minutes: scan the barcode again to send a new one.",
            ),
            Refusal::PasswordUsed => (
                "此驗證密碼已使用過或已被較新的密碼取代。",
                "This verification password was already used or a newer one replaced it.",
            ),
            Refusal::Locked { retry_after_secs } => {
                return match lang {
                    Lang::ZhTw => format!(
                        "本櫃檯 15 分鐘內輸入錯誤已達 5 次，暫停使用，請於 {} 分鐘後再試。",
                        retry_after_secs.div_ceil(60)
                    ),
                    Lang::En => format!(
                        "This counter had 5 wrong entries within 15 minutes and is locked; try again in {} minute(s).",
                        retry_after_secs.div_ceil(60)
                    ),
                };
            }
        };
        lang.pick(zh, en).to_owned()
    }

    pub fn status(self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Refusal::Locked { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::SerialEmpty
            | Refusal::SerialMalformed
            | Refusal::PasswordEmpty
            | Refusal::PasswordMalformed => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::OtherOffice => StatusCode::FORBIDDEN,
            Refusal::NoContact => StatusCode::CONFLICT,
            Refusal::SerialUnknown => StatusCode::NOT_FOUND,
            Refusal::SerialExpired
            | Refusal::SerialReplaced
            | Refusal::SerialUsed
            | Refusal::DataGone
            | Refusal::PasswordExpired
            | Refusal::PasswordUsed => StatusCode::GONE,
            Refusal::PasswordWrong => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Where a clerk works: the signed-in clerk, their office and the counter they sit at.
#[derive(Debug, Clone)]
pub struct Desk {
    pub session_hash: String,
    pub clerk_id: String,
    pub office: OfficeRow,
    pub counter_id: String,
}

/// A refused entry and what it did to the counter.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub refusal: Refusal,
    /// Wrong entries within the window after this one (when it counted and did not lock).
    pub recent_failures: u32,
}

/// A successful scan: a password is on its way.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub password_id: String,
    pub transfer_id: String,
    pub channels: Vec<Channel>,
    pub expires_at: Timestamp,
}

fn serial_context(transfer_id: &str) -> String {
    format!("mydata:v1:counter-serial:{transfer_id}")
}

/// The stored (keyed) form of a serial.
pub fn serial_hash(state: &AppState, serial: &Serial) -> String {
    state
        .identity()
        .pseudonyms
        .code("counter-serial", serial.as_str())
}

fn password_hash(state: &AppState, id: &str, pw: &VerificationPassword) -> String {
    state.identity().pseudonyms.code(id, pw.as_str())
}

fn internal(e: impl std::fmt::Display) -> AppError {
    AppError::Internal(anyhow::anyhow!("{e}"))
}

/// Appends a counter audit event on a transfer; the actor is the clerk or the person.
pub async fn audit(
    state: &AppState,
    kind: &str,
    transfer: Option<&Transfer>,
    actor: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    state
        .store()
        .append_audit(&NewAuditEvent {
            at: state.clock().now(),
            kind: kind.into(),
            subject: transfer.map(|t| t.subject.clone()),
            transfer_id: transfer.map(|t| t.id.clone()),
            actor: actor.into(),
            detail,
        })
        .await?;
    Ok(())
}

/// Whether a transfer's data can still be handed to a clerk: ready, not past 8 hours, package kept.
pub async fn data_available(state: &AppState, t: &Transfer) -> Result<bool, StoreError> {
    let now = state.clock().now();
    if t.state != TransferState::Ready || now >= t.expires_at {
        return Ok(false);
    }
    Ok(state
        .store()
        .package(&t.id)
        .await?
        .is_some_and(|p| p.sealed_key.is_some() && p.expires_at > now))
}

/// The person's current serial for a ready transfer and its end. With `issue`, a new one is issued
/// (and the old one retired) when there is none or it has run out; without, only a working serial
/// is returned (the barcode images never issue, so they always match the page).
pub async fn current_serial(
    state: &AppState,
    t: &Transfer,
    issue: bool,
) -> Result<Option<(Serial, Timestamp)>, AppError> {
    let store = state.store();
    let now = state.clock().now();
    if !data_available(state, t).await? {
        return Ok(None);
    }
    let vault = &state.data().vault;
    let current = store.current_serial(&t.id).await?;
    // A verified serial ends the barcode for this transfer: consent was for one counter visit.
    if current.as_ref().is_some_and(|r| r.used_at.is_some()) {
        return Ok(None);
    }
    if let Some(row) = current
        && now < Timestamp::from_millis(row.expires_at)
    {
        let plain = vault
            .open(&serial_context(&t.id), &row.serial_sealed)
            .map_err(internal)?;
        let text = std::str::from_utf8(&plain).map_err(internal)?;
        let serial = Serial::parse(text).map_err(internal)?;
        return Ok(Some((serial, Timestamp::from_millis(row.expires_at))));
    }
    if !issue {
        return Ok(None);
    }
    let serial = Serial::from_random(rand::rng().random());
    let expires_at = new_serial_expiry(now, t.expires_at);
    let row = SerialRow {
        serial_hash: serial_hash(state, &serial),
        transfer_id: t.id.clone(),
        serial_sealed: vault
            .seal(&serial_context(&t.id), serial.as_str().as_bytes())
            .map_err(internal)?,
        issued_at: now.millis(),
        expires_at: expires_at.millis(),
        replaced_at: None,
        used_at: None,
    };
    store.issue_serial(&row, now).await?;
    let office = store.counter_transfer(&t.id).await?.map(|c| c.office_id);
    audit(
        state,
        "counter.serial_issued",
        Some(t),
        &t.subject,
        serde_json::json!({ "office": office, "expires_at": expires_at.millis() }),
    )
    .await?;
    Ok(Some((serial, expires_at)))
}

/// The counter's lockout, if it is locked now.
pub async fn locked(state: &AppState, counter_id: &str) -> Result<Option<Refusal>, AppError> {
    let now = state.clock().now();
    Ok(state
        .store()
        .counter_locked_until(counter_id, now)
        .await?
        .map(|until| Refusal::Locked {
            retry_after_secs: now.until(until).as_secs().max(1),
        }))
}

/// Records a refused entry at the desk's counter (counting it if the rules say so) with its
/// audit event, and says what it did.
async fn refuse(
    state: &AppState,
    desk: &Desk,
    kind: &str,
    refusal: Refusal,
    transfer: Option<&Transfer>,
) -> Result<Refused, AppError> {
    let now = state.clock().now();
    let mut recent = 0;
    let mut locked_now = None;
    if refusal.counts() {
        let out = state
            .store()
            .record_counter_failure(&desk.counter_id, now)
            .await?;
        recent = out.recent;
        if let Some(until) = out.locked_until {
            tracing::warn!(office = %desk.office.id, counter = %desk.counter_id, "counter locked after repeated wrong entries");
            audit(
                state,
                "counter.locked",
                None,
                &desk.clerk_id,
                serde_json::json!({ "office": desk.office.id, "counter": desk.counter_id, "until": until.millis() }),
            )
            .await?;
            // The entry that locked the counter says so (the audit event keeps its own reason).
            locked_now = Some(Refusal::Locked {
                retry_after_secs: now.until(until).as_secs(),
            });
        }
    }
    audit(
        state,
        kind,
        transfer,
        &desk.clerk_id,
        serde_json::json!({
            "office": desk.office.id,
            "counter": desk.counter_id,
            "result": refusal.code(),
        }),
    )
    .await?;
    Ok(Refused {
        refusal: locked_now.unwrap_or(refusal),
        recent_failures: recent,
    })
}

/// A clerk scanned or typed `input` at their counter.
pub async fn scan(
    state: &AppState,
    desk: &Desk,
    input: &str,
) -> Result<Result<Scanned, Refused>, AppError> {
    if let Some(l) = locked(state, &desk.counter_id).await? {
        return Ok(Err(Refused {
            refusal: l,
            recent_failures: 0,
        }));
    }
    let store = state.store();
    let now = state.clock().now();
    let serial = match Serial::parse(input) {
        Ok(s) => s,
        Err(SerialError::Empty) => {
            return Ok(Err(Refused {
                refusal: Refusal::SerialEmpty,
                recent_failures: 0,
            }));
        }
        Err(_) => {
            return refuse(state, desk, "counter.scan", Refusal::SerialMalformed, None)
                .await
                .map(Err);
        }
    };
    let row = store.serial_by_hash(&serial_hash(state, &serial)).await?;
    let Some(row) = row else {
        return refuse(state, desk, "counter.scan", Refusal::SerialUnknown, None)
            .await
            .map(Err);
    };
    let Some(t) = store.transfer(&row.transfer_id).await? else {
        return refuse(state, desk, "counter.scan", Refusal::SerialUnknown, None)
            .await
            .map(Err);
    };
    let for_office = store
        .counter_transfer(&t.id)
        .await?
        .is_some_and(|ct| ct.office_id == desk.office.id);
    if !for_office {
        return refuse(state, desk, "counter.scan", Refusal::OtherOffice, Some(&t))
            .await
            .map(Err);
    }
    let data_end = if data_available(state, &t).await? {
        t.expires_at
    } else {
        now
    };
    let st = serial_state(
        now,
        Timestamp::from_millis(row.expires_at),
        row.replaced_at.is_some(),
        row.used_at.is_some(),
        data_end,
    );
    let refusal = match st {
        SerialState::Valid => None,
        SerialState::Expired => Some(Refusal::SerialExpired),
        SerialState::Replaced => Some(Refusal::SerialReplaced),
        SerialState::Used => Some(Refusal::SerialUsed),
        SerialState::DataGone => Some(Refusal::DataGone),
    };
    if let Some(r) = refusal {
        return refuse(state, desk, "counter.scan", r, Some(&t))
            .await
            .map(Err);
    }
    let contacts = store.contacts(&t.subject).await?;
    if contacts.is_empty() {
        return refuse(state, desk, "counter.scan", Refusal::NoContact, Some(&t))
            .await
            .map(Err);
    }
    audit(
        state,
        "counter.scan",
        Some(&t),
        &desk.clerk_id,
        serde_json::json!({ "office": desk.office.id, "counter": desk.counter_id, "result": "accepted" }),
    )
    .await?;
    let pw = VerificationPassword::from_random(rand::rng().random());
    let id = uuid::Uuid::new_v4().to_string();
    let expires_at = password_expires_at(now).min(t.expires_at);
    store
        .put_counter_password(
            &PasswordRow {
                id: id.clone(),
                transfer_id: t.id.clone(),
                serial_hash: row.serial_hash.clone(),
                counter_id: desk.counter_id.clone(),
                clerk_id: desk.clerk_id.clone(),
                password_hash: password_hash(state, &id, &pw),
                attempts: 0,
                created_at: now.millis(),
                expires_at: expires_at.millis(),
                used_at: None,
                cancelled_at: None,
            },
            now,
        )
        .await?;
    let counter_name = store
        .counter(&desk.counter_id)
        .await?
        .map(|c| c.name)
        .unwrap_or_else(|| desk.counter_id.clone());
    let mut channels = Vec::new();
    for c in contacts {
        let channel = match c.channel.as_str() {
            "sms" => Channel::Sms,
            "email" => Channel::Email,
            _ => continue,
        };
        let body = format!(
            "MyData 臨櫃核驗驗證密碼：{pw}\n有效時間 2 分鐘，只能使用一次。請只告訴「{office}」{counter}的承辦人員；若不是您本人在櫃檯申辦，請勿告訴任何人。\n\n\
             MyData counter verification password: {pw}\nValid for 2 minutes, once. Tell it only to the clerk at {office_en}, {counter}; if you are not at that counter yourself, tell no one.",
            pw = pw.as_str(),
            office = desk.office.name_zh,
            office_en = desk.office.name_en,
            counter = counter_name,
        );
        messages::enqueue(
            state,
            &OutgoingMessage {
                channel,
                to: c.address,
                title: "MyData 臨櫃核驗驗證密碼 / counter verification password".into(),
                body,
                audit: None,
            },
        )
        .await?;
        channels.push(channel);
    }
    audit(
        state,
        "counter.password_sent",
        Some(&t),
        &desk.clerk_id,
        serde_json::json!({
            "office": desk.office.id,
            "counter": desk.counter_id,
            "channels": channels.iter().map(|c| c.code()).collect::<Vec<_>>(),
            "expires_at": expires_at.millis(),
        }),
    )
    .await?;
    Ok(Ok(Scanned {
        password_id: id,
        transfer_id: t.id,
        channels,
        expires_at,
    }))
}

/// The password a desk is waiting for, if it belongs to this counter.
pub async fn pending_password(
    state: &AppState,
    desk: &Desk,
    password_id: &str,
) -> Result<Option<PasswordRow>, AppError> {
    Ok(state
        .store()
        .counter_password(password_id)
        .await?
        .filter(|p| p.counter_id == desk.counter_id))
}

/// The clerk entered `input` for the password `pw` sent after their scan.
pub async fn verify(
    state: &AppState,
    desk: &Desk,
    pw: &PasswordRow,
    input: &str,
) -> Result<Result<String, Refused>, AppError> {
    if let Some(l) = locked(state, &desk.counter_id).await? {
        return Ok(Err(Refused {
            refusal: l,
            recent_failures: 0,
        }));
    }
    let store = state.store();
    let now = state.clock().now();
    let t = store.transfer(&pw.transfer_id).await?;
    let t = t.as_ref();
    let kind = "counter.password_result";
    let given = match VerificationPassword::parse(input) {
        Ok(p) => p,
        Err(PasswordError::Empty) => {
            return Ok(Err(Refused {
                refusal: Refusal::PasswordEmpty,
                recent_failures: 0,
            }));
        }
        Err(PasswordError::Format) => {
            return refuse(state, desk, kind, Refusal::PasswordMalformed, t)
                .await
                .map(Err);
        }
    };
    match password_state(
        now,
        Timestamp::from_millis(pw.expires_at),
        pw.used_at.is_some() || pw.cancelled_at.is_some(),
    ) {
        PasswordState::Valid => {}
        PasswordState::Expired => {
            return refuse(state, desk, kind, Refusal::PasswordExpired, t)
                .await
                .map(Err);
        }
        PasswordState::Used => {
            return refuse(state, desk, kind, Refusal::PasswordUsed, t)
                .await
                .map(Err);
        }
    }
    store.count_counter_password_attempt(&pw.id).await?;
    let expected = password_hash(state, &pw.id, &given);
    let right: bool = expected
        .as_bytes()
        .ct_eq(pw.password_hash.as_bytes())
        .into();
    if !right {
        return refuse(state, desk, kind, Refusal::PasswordWrong, t)
            .await
            .map(Err);
    }
    let Some(t) = t else {
        return refuse(state, desk, kind, Refusal::DataGone, None)
            .await
            .map(Err);
    };
    let grant = GrantRow {
        transfer_id: t.id.clone(),
        session_hash: desk.session_hash.clone(),
        clerk_id: desk.clerk_id.clone(),
        counter_id: desk.counter_id.clone(),
        granted_at: now.millis(),
        expires_at: now.plus(GRANT_TTL).min(t.expires_at).millis(),
    };
    if !store
        .complete_counter_verification(&pw.id, &grant, now)
        .await?
    {
        return refuse(state, desk, kind, Refusal::PasswordUsed, Some(t))
            .await
            .map(Err);
    }
    audit(
        state,
        kind,
        Some(t),
        &desk.clerk_id,
        serde_json::json!({ "office": desk.office.id, "counter": desk.counter_id, "result": "accepted" }),
    )
    .await?;
    notify_access(state, desk, t, &pw.id).await?;
    Ok(Ok(t.id.clone()))
}

/// Tells the person, on every contact they registered, which office and counter opened their data
/// and when: if it was not them at that counter, they learn it at once. One notice per opening
/// (`access`, the verification password), logged as `notice.sent` once delivered.
async fn notify_access(
    state: &AppState,
    desk: &Desk,
    t: &Transfer,
    access: &str,
) -> Result<(), AppError> {
    let counter = state
        .store()
        .counter(&desk.counter_id)
        .await?
        .map(|c| c.name)
        .unwrap_or_else(|| desk.counter_id.clone());
    let event = crate::notices::NoticeEvent::CounterRetrieved {
        office_zh: desk.office.name_zh.clone(),
        office_en: desk.office.name_en.clone(),
        counter,
        access: access.to_owned(),
    };
    crate::notices::notify(state, t, &event).await?;
    Ok(())
}

/// What a counter audit event means to the person, naming the office and counter (usage records).
/// `None` for events that are not counter events.
pub async fn event_text(
    state: &AppState,
    kind: &str,
    detail: &serde_json::Value,
    lang: Lang,
) -> Result<Option<String>, StoreError> {
    let (zh, en) = match kind {
        "counter.serial_issued" => ("產生臨櫃條碼", "Counter barcode issued"),
        "counter.scan" if detail["result"] == "accepted" => {
            ("櫃檯掃描條碼", "Barcode scanned at a counter")
        }
        "counter.scan" => ("櫃檯掃描條碼，已拒絕", "Barcode scan at a counter refused"),
        "counter.password_sent" => ("已寄送驗證密碼給您", "Verification password sent to you"),
        "counter.password_result" if detail["result"] == "accepted" => (
            "驗證密碼正確，櫃檯取得資料",
            "Right password; the counter got the data",
        ),
        "counter.password_result" => (
            "驗證密碼錯誤或失效，已拒絕",
            "Wrong or dead password refused",
        ),
        "counter.data_access" => (
            "櫃檯檢視或下載資料",
            "The counter viewed or downloaded the data",
        ),
        _ => return Ok(None),
    };
    let store = state.store();
    let office = match detail["office"].as_str() {
        Some(id) => store
            .office(id)
            .await?
            .map(|o| lang.pick(&o.name_zh, &o.name_en).to_owned())
            .or_else(|| Some(id.to_owned())),
        None => None,
    };
    let counter = match detail["counter"].as_str() {
        Some(id) => store
            .counter(id)
            .await?
            .map(|c| c.name)
            .or_else(|| Some(id.to_owned())),
        None => None,
    };
    let place: Vec<String> = office.into_iter().chain(counter).collect();
    let what = lang.pick(zh, en);
    Ok(Some(if place.is_empty() {
        what.to_owned()
    } else {
        match lang {
            Lang::ZhTw => format!("{what}（{}）", place.join(" ")),
            Lang::En => format!("{what} ({})", place.join(" ")),
        }
    }))
}

/// The recipient of a counter transfer as the person reads it: the service and the office.
pub async fn recipient_text(
    state: &AppState,
    t: &Transfer,
    lang: Lang,
) -> Result<Option<String>, StoreError> {
    let Some(ct) = state.store().counter_transfer(&t.id).await? else {
        return Ok(None);
    };
    let office = state
        .store()
        .office(&ct.office_id)
        .await?
        .map(|o| lang.pick(&o.name_zh, &o.name_en).to_owned())
        .unwrap_or(ct.office_id);
    let service = state
        .catalog()
        .service(&ct.service_id)
        .map(|s| lang.pick(&s.name_zh, &s.name_en).to_owned())
        .unwrap_or(ct.service_id);
    Ok(Some(match lang {
        Lang::ZhTw => format!("{office}（{service}）"),
        Lang::En => format!("{office} ({service})"),
    }))
}

/// The package of a transfer, opened without taking it (the clerk reads it; the download takes it).
pub async fn peek_package(state: &AppState, transfer_id: &str) -> Result<Vec<u8>, AppError> {
    let store = state.store();
    let now = state.clock().now();
    let gone = || AppError::PackageGone(transfer_id.to_owned());
    let rec = store.package(transfer_id).await?.ok_or_else(gone)?;
    let Some(wrapped) = rec.sealed_key.as_deref() else {
        return Err(gone());
    };
    if rec.expires_at <= now {
        return Err(gone());
    }
    let data = state.data();
    let blob = data.blobs.package(&rec).await.map_err(internal)?;
    let key = data
        .vault
        .open(&crate::packages::package_key_context(transfer_id), wrapped)
        .ok()
        .and_then(|k| crate::packages::package_key(&k))
        .ok_or_else(|| internal("the package key does not open"))?;
    mydata_package::open(&key, &blob).map_err(internal)
}
