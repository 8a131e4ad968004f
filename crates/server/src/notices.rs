//! Notices to the person about each use of their data (資料取用通知): an email, and an SMS where a
//! mobile number is registered, for every transfer — which datasets, when, the request number and
//! where to see the usage records. Never the data itself. Sent through the durable `messages`
//! queue (retried on SMTP failure), once per transfer, event and channel (job dedup key).
//!
//! Every flow uses [`notify`]: self-download when the data is ready, the counter when a clerk
//! retrieved it, an online service when it was sent.

use crate::identity::messages::{Channel, OutgoingMessage, QUEUE};
use crate::state::AppState;
use mydata_core::Timestamp;
use mydata_store::{NewJob, StoreError, Transfer, fetch_status};

/// What happened to the data, for the wording of the notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeEvent {
    /// The datasets were fetched into the person's temporary space (self-download).
    Ready,
    /// A counter clerk opened the data; the text names the office and the counter. `access`
    /// tells one opening from another (the verification password's ID): each is noticed.
    CounterRetrieved {
        office_zh: String,
        office_en: String,
        counter: String,
        access: String,
    },
    /// The data was sent to an online service; the text names the service.
    SentToService { service: String },
}

impl NoticeEvent {
    fn code(&self) -> &'static str {
        match self {
            NoticeEvent::Ready => "ready",
            NoticeEvent::CounterRetrieved { .. } => "counter",
            NoticeEvent::SentToService { .. } => "service",
        }
    }

    /// What makes a second notice of the same event for the same transfer a repeat.
    fn dedup(&self) -> String {
        match self {
            NoticeEvent::CounterRetrieved { access, .. } => format!("counter:{access}"),
            other => other.code().to_owned(),
        }
    }
}

/// A notice ready to send: the same facts for every channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub title: String,
    /// The email body (plain text).
    pub email: String,
    /// The SMS text (short).
    pub sms: String,
}

/// The platform's public origin for links in messages (no request to take it from).
pub fn public_origin(state: &AppState) -> String {
    let configured = state
        .settings()
        .identity
        .public_origin
        .trim_end_matches('/');
    if configured.is_empty() {
        let scheme = if state.settings().tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", state.settings().listen)
    } else {
        configured.to_owned()
    }
}

/// Taiwan time (UTC+8), to the minute, as the seeds' notices show it.
pub fn taipei_time(t: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.millis().div_euclid(1000))
        .map(|t| {
            let t = t.to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap_or(time::UtcOffset::UTC));
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_default()
}

/// Builds the notice for `event` on transfer `t` at `at` (pure: no I/O, testable on its own).
pub fn build(state: &AppState, t: &Transfer, event: &NoticeEvent, at: Timestamp) -> Notice {
    let c = state.catalog();
    let name = |id: &str| {
        c.dataset(id)
            .map(|d| (d.name_zh.clone(), d.name_en.clone()))
            .unwrap_or_else(|| (id.to_owned(), id.to_owned()))
    };
    let fetched: Vec<(String, String)> = t
        .datasets
        .iter()
        // Only what was fetched is sent or retrieved; a Ready notice lists the rest apart.
        .filter(|d| d.status == fetch_status::SUCCEEDED)
        .map(|d| name(&d.dataset_id))
        .collect();
    let missed: Vec<(String, String)> = t
        .datasets
        .iter()
        .filter(|d| event == &NoticeEvent::Ready && d.status != fetch_status::SUCCEEDED)
        .map(|d| name(&d.dataset_id))
        .collect();
    let zh_list = |v: &[(String, String)]| {
        v.iter()
            .map(|(z, _)| format!("「{z}」"))
            .collect::<Vec<_>>()
            .join("、")
    };
    let en_list = |v: &[(String, String)]| {
        v.iter()
            .map(|(_, e)| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let when = taipei_time(at);
    let until = taipei_time(t.expires_at);
    let records = format!("{}/records", public_origin(state));
    let (title, zh_what, en_what) = match event {
        NoticeEvent::Ready if fetched.is_empty() => (
            "【MyData 個人化資料自主運用】資料未能取得（系統信件）",
            format!(
                "您申請的{}未能自資料提供機關取得，平臺沒有保存任何資料。",
                zh_list(&missed)
            ),
            format!(
                "{} could not be fetched from the agencies; the platform holds no data for this request.",
                en_list(&missed)
            ),
        ),
        NoticeEvent::Ready => (
            "【MyData 個人化資料自主運用】個人資料已完成下載（系統信件）",
            format!(
                "您申請的{}已於 {when} 下載完成，暫存於您的個人化資料暫存空間至 {until}；儲存至您的裝置並確認刪除後即刪除，逾時自動刪除。{}",
                zh_list(&fetched),
                if missed.is_empty() {
                    String::new()
                } else {
                    format!("未能取得：{}。", zh_list(&missed))
                }
            ),
            format!(
                "{} finished downloading at {when} (Taiwan time) and is kept in your temporary space until {until}; it is deleted once you save it and confirm, or at that time.{}",
                en_list(&fetched),
                if missed.is_empty() {
                    String::new()
                } else {
                    format!(" Not fetched: {}.", en_list(&missed))
                }
            ),
        ),
        NoticeEvent::CounterRetrieved {
            office_zh,
            office_en,
            counter,
            ..
        } => (
            "【MyData 個人化資料自主運用】臨櫃已取用您的資料（系統信件）",
            format!(
                "您的{}已於 {when} 由「{office_zh}」{counter}核驗取用。若不是您本人在該櫃檯申辦，請立即與該機關聯絡。",
                zh_list(&fetched)
            ),
            format!(
                "{} was opened at {office_en}, {counter} at {when} (Taiwan time). If you were not at that counter yourself, contact the office at once.",
                en_list(&fetched)
            ),
        ),
        NoticeEvent::SentToService { service } => (
            "【MyData 個人化資料自主運用】資料已傳送給服務提供者（系統信件）",
            format!("您的{}已於 {when} 傳送給「{service}」。", zh_list(&fetched)),
            format!(
                "{} was sent to \"{service}\" at {when} (Taiwan time).",
                en_list(&fetched)
            ),
        ),
    };
    let email = format!(
        "您好：\n\n此為系統信件，請勿回信。\n\n感謝您使用 MyData 個人化資料自主運用平臺。{zh_what}\n\n申請編號：{id}\n通知時間：{when}\n\n您可隨時查閱每一次資料使用紀錄：{records}\n若這不是您本人的申請，請立即查閱使用紀錄並與本平臺聯絡。\n\n--\nThis is an automatic message; please do not reply. {en_what}\nRequest number: {id}\nYour usage records: {records}\n",
        id = t.id,
    );
    let short_id: String = t.id.chars().take(8).collect();
    let sms = match event {
        NoticeEvent::Ready if fetched.is_empty() => {
            format!("【MyData】申請編號 {short_id} 的資料未能取得。使用紀錄：{records}")
        }
        NoticeEvent::Ready => format!(
            "【MyData】您申請的 {} 項資料已於 {when} 下載完成，申請編號 {short_id}。使用紀錄：{records}",
            fetched.len()
        ),
        NoticeEvent::CounterRetrieved {
            office_zh, counter, ..
        } => format!(
            "【MyData】「{office_zh}」{counter}已於 {when} 取用您的 {} 項資料，申請編號 {short_id}；非本人請洽該機關。使用紀錄：{records}",
            fetched.len()
        ),
        NoticeEvent::SentToService { service } => format!(
            "【MyData】您的 {} 項資料已於 {when} 傳送給「{service}」，申請編號 {short_id}。使用紀錄：{records}",
            fetched.len()
        ),
    };
    Notice {
        title: title.to_owned(),
        email,
        sms,
    }
}

/// Queues the notice of `event` for transfer `t` to every verified contact of its subject (email
/// and SMS). Sending it twice for the same transfer, event and channel queues nothing new.
/// Returns how many messages were queued.
pub async fn notify(
    state: &AppState,
    t: &Transfer,
    event: &NoticeEvent,
) -> Result<usize, StoreError> {
    let now = state.clock().now();
    let mut queued = 0;
    for job in jobs(state, t, event, now).await? {
        if crate::background::enqueue(state, &job, now).await? {
            queued += 1;
        }
    }
    tracing::info!(transfer = %t.id, event = event.code(), queued, "notice queued");
    Ok(queued)
}

/// The `messages` jobs of the notice of `event` for transfer `t` at `now`, one per verified
/// contact of its subject, for a caller that enqueues them with a write of its own (a retrieval
/// and its notice in one commit). Each carries the dedup key that makes a second one a no-op.
pub async fn jobs(
    state: &AppState,
    t: &Transfer,
    event: &NoticeEvent,
    now: Timestamp,
) -> Result<Vec<NewJob>, StoreError> {
    let notice = build(state, t, event, now);
    let mut jobs = Vec::new();
    for contact in state.store().contacts(&t.subject).await? {
        let (channel, body) = match contact.channel.as_str() {
            "email" => (Channel::Email, notice.email.clone()),
            "sms" => (Channel::Sms, notice.sms.clone()),
            _ => continue,
        };
        let msg = OutgoingMessage {
            channel,
            to: contact.address,
            title: notice.title.clone(),
            body,
            audit: Some(crate::identity::messages::NoticeAudit {
                subject: t.subject.clone(),
                transfer_id: t.id.clone(),
                event: event.code().into(),
            }),
        };
        let job = NewJob {
            id: mydata_store::new_job_id(),
            queue: QUEUE.into(),
            payload: serde_json::to_value(&msg).unwrap_or_default(),
            run_at: now,
            max_attempts: state.settings().messages.max_attempts,
            dedup_key: Some(format!(
                "notice:{}:{}:{}",
                t.id,
                event.dedup(),
                channel.code()
            )),
        };
        jobs.push(job);
    }
    Ok(jobs)
}
