//! Messages to people: email through SMTP (lettre) and SMS through an HTTP gateway, always sent by
//! a durable job (`messages` queue) with retries, never from the request. With
//! `messages.dev_outbox` (the demo) both land on the `/dev/outbox` page instead.
//!
//! A message job carries an address and possibly a code; its payload is emptied as soon as the
//! message is delivered, so neither outlives the sending in the database.

use crate::background::{BoxFuture, JobHandler, JobOutcome};
use crate::state::AppState;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use mydata_store::{Job, NewJob, OutboxRow};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::Duration;

/// The job queue of outgoing messages.
pub const QUEUE: &str = "messages";

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain connection upgraded with STARTTLS, required (port 587).
    Starttls,
    /// No encryption: only for a relay on the same host or a test server.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Empty disables email.
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: String,
    pub password: String,
    /// Sender, e.g. `MyData <no-reply@mydata.example>`.
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsSettings {
    /// The gateway receives `POST {"to": "+8869…", "text": "…"}` as JSON; empty disables SMS.
    pub gateway_url: String,
    /// Sent as `Authorization: Bearer <token>` when not empty.
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSettings {
    /// Keep every message on the `/dev/outbox` page instead of sending it. Demo only: anyone who
    /// can open that page reads everyone's codes.
    pub dev_outbox: bool,
    /// Attempts per message before it is given up.
    pub max_attempts: u32,
    pub smtp: SmtpSettings,
    pub sms: SmsSettings,
}

impl Default for MessageSettings {
    fn default() -> Self {
        Self {
            dev_outbox: false,
            max_attempts: 6,
            smtp: SmtpSettings {
                host: String::new(),
                port: 587,
                security: SmtpSecurity::Starttls,
                username: String::new(),
                password: String::new(),
                from: "MyData <no-reply@mydata.invalid>".into(),
            },
            sms: SmsSettings {
                gateway_url: String::new(),
                token: String::new(),
            },
        }
    }
}

impl MessageSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("config key `messages.max_attempts`: must be at least 1".into());
        }
        if self.smtp.from.parse::<Mailbox>().is_err() {
            return Err(
                "config key `messages.smtp.from`: must be an address such as `MyData <no-reply@example.org>`"
                    .into(),
            );
        }
        if !self.sms.gateway_url.is_empty() && url::Url::parse(&self.sms.gateway_url).is_err() {
            return Err("config key `messages.sms.gateway_url`: must be an absolute URL".into());
        }
        Ok(())
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn code(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }
}

/// One message, as the job payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutgoingMessage {
    pub channel: Channel,
    pub to: String,
    pub title: String,
    pub body: String,
    /// For notices about a transfer: what to log (`notice.sent`) once the message is delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<NoticeAudit>,
}

/// The audit entry of a delivered notice: pseudonym and transfer only, never the address or text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeAudit {
    pub subject: String,
    pub transfer_id: String,
    /// The notice event code (see `notices::NoticeEvent::code`).
    pub event: String,
}

/// Queues a message; it is sent by a worker (now, and again on failure).
pub async fn enqueue(
    state: &AppState,
    m: &OutgoingMessage,
) -> Result<(), mydata_store::StoreError> {
    let now = state.clock().now();
    let job = NewJob {
        id: mydata_store::new_job_id(),
        queue: QUEUE.into(),
        payload: serde_json::to_value(m).unwrap_or_default(),
        run_at: now,
        max_attempts: state.settings().messages.max_attempts,
        dedup_key: None,
    };
    crate::background::enqueue(state, &job, now).await?;
    Ok(())
}

/// The worker of the `messages` queue.
#[derive(Debug, Default)]
pub struct MessageSender;

impl JobHandler for MessageSender {
    fn queue(&self) -> &'static str {
        QUEUE
    }

    fn run(&self, state: AppState, job: Job) -> BoxFuture<JobOutcome> {
        Box::pin(async move {
            let msg: OutgoingMessage = match serde_json::from_value(job.payload.clone()) {
                Ok(m) => m,
                Err(e) => return JobOutcome::Failed(format!("unreadable message job: {e}")),
            };
            let now = state.clock().now();
            // With the demo's outbox, its row is the delivery and is written with the record.
            let outbox = state.settings().messages.dev_outbox.then(|| OutboxRow {
                id: job.id.clone(),
                at: now.millis(),
                channel: msg.channel.code().into(),
                recipient: msg.to.clone(),
                title: msg.title.clone(),
                body: msg.body.clone(),
            });
            if outbox.is_none()
                && let Err(e) = send(&state, &msg).await
            {
                tracing::warn!(job = %job.id, channel = msg.channel.code(), attempt = job.attempts, error = %e, "message not sent");
                return retry(&state, job.attempts, e);
            }
            let audit = msg.audit.as_ref().map(|a| mydata_store::NewAuditEvent {
                at: now,
                kind: "notice.sent".into(),
                subject: Some(a.subject.clone()),
                transfer_id: Some(a.transfer_id.clone()),
                actor: "platform".into(),
                detail: serde_json::json!({ "event": a.event, "channel": msg.channel.code() }),
            });
            let worker = job.lease_owner.as_deref().unwrap_or_default();
            match state
                .store()
                .record_message_sent(&job.id, worker, outbox.as_ref(), audit.as_ref(), now)
                .await
            {
                Ok(held) => {
                    if !held {
                        tracing::warn!(job = %job.id, "message job lease lost during its run");
                    }
                    tracing::info!(job = %job.id, channel = msg.channel.code(), "message sent");
                    JobOutcome::Recorded
                }
                // Nothing was delivered: the outbox row went with the failed write.
                Err(e) if outbox.is_some() => retry(&state, job.attempts, e.to_string()),
                // Sent, but not recorded: not retried, which would send it twice; the job is
                // marked done on its own and its payload goes with finished jobs' retention.
                Err(e) => {
                    tracing::error!(job = %job.id, error = %e, "a sent message was not recorded");
                    JobOutcome::Done
                }
            }
        })
    }
}

/// The next attempt after failed attempt number `attempt`: 30 s, 1, 2, 4 … minutes, at most 30
/// (a code is worth little after that).
fn retry(state: &AppState, attempt: u32, error: String) -> JobOutcome {
    let wait = Duration::from_secs(30)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(6))
        .min(Duration::from_secs(1800));
    JobOutcome::RetryAt {
        at: state.clock().now().plus(wait),
        error,
    }
}

async fn send(state: &AppState, m: &OutgoingMessage) -> Result<(), String> {
    let settings = &state.settings().messages;
    match m.channel {
        Channel::Email => send_email(state, &settings.smtp, m).await,
        Channel::Sms => send_sms(state, &settings.sms, m).await,
    }
}

/// The process's SMTP transport, made at the first email and kept: its pool keeps connections to
/// the mail server open between messages (a notice per transfer would otherwise pay a TCP and
/// TLS handshake and a login each).
#[derive(Default)]
pub struct Mailer {
    transport: OnceLock<Result<AsyncSmtpTransport<Tokio1Executor>, String>>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("ready", &self.transport.get().is_some())
            .finish()
    }
}

impl Mailer {
    /// The transport for `s`; the settings are the process's and do not change while it runs.
    fn transport(&self, s: &SmtpSettings) -> Result<&AsyncSmtpTransport<Tokio1Executor>, String> {
        self.transport
            .get_or_init(|| build_transport(s))
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn build_transport(s: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let builder = match s.security {
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host),
        SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host),
        SmtpSecurity::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            &s.host,
        )),
    }
    .map_err(|e| e.to_string())?;
    let mut builder = builder.port(s.port).timeout(Some(Duration::from_secs(20)));
    if !s.username.is_empty() {
        builder = builder.credentials(Credentials::new(s.username.clone(), s.password.clone()));
    }
    Ok(builder.build())
}

async fn send_email(state: &AppState, s: &SmtpSettings, m: &OutgoingMessage) -> Result<(), String> {
    if s.host.is_empty() {
        return Err("no SMTP server configured (messages.smtp.host)".into());
    }
    let from: Mailbox = s.from.parse().map_err(|e| format!("sender: {e}"))?;
    let to: Mailbox = m.to.parse().map_err(|e| format!("recipient: {e}"))?;
    let email = Message::builder()
        .from(from)
        .to(to)
        .subject(&m.title)
        .header(ContentType::TEXT_PLAIN)
        .body(m.body.clone())
        .map_err(|e| e.to_string())?;
    state
        .mailer()
        .transport(s)?
        .send(email)
        .await
        .map(|_| ())
        .map_err(|e| smtp_failure(&e))
}

/// What went wrong with the mail server, without the server's own words: a refusal's text often
/// repeats the recipient's address, and this goes to the log and the job's record.
fn smtp_failure(e: &lettre::transport::smtp::Error) -> String {
    match e.status() {
        Some(code) if e.is_permanent() => format!("the mail server refused the message ({code})"),
        Some(code) => format!("the mail server deferred the message ({code})"),
        None if e.is_timeout() => "the mail server did not answer in time".into(),
        None if e.is_tls() => "TLS with the mail server failed".into(),
        None => "the mail server could not be reached or broke off".into(),
    }
}

async fn send_sms(state: &AppState, s: &SmsSettings, m: &OutgoingMessage) -> Result<(), String> {
    if s.gateway_url.is_empty() {
        return Err("no SMS gateway configured (messages.sms.gateway_url)".into());
    }
    let mut req = state
        .identity()
        .http
        .post(&s.gateway_url)
        .json(&serde_json::json!({ "to": m.to, "text": m.body }));
    if !s.token.is_empty() {
        req = req.bearer_auth(&s.token);
    }
    let res = req.send().await.map_err(|e| e.without_url().to_string())?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("SMS gateway answered {}", res.status()))
    }
}
