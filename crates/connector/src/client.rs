//! The HTTP client of the agency API: signs one request token per call, bounds time and size of
//! every answer, and sorts each answer into a dataset, "not ready", or a classified error.

use crate::protocol::{
    Accepted, Assurance, ErrorBody, ISSUER, RequestClaims, SignedDatasetBody, TOKEN_LIFETIME_SECS,
};
use crate::subject::FetchSubject;
use mydata_core::Timestamp;
use mydata_package::PlatformSigner;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, RETRY_AFTER};
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

/// How the client talks to agencies.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Base URL of agencies without an entry of their own (serves `/agencies/{id}/v1/...`).
    pub default_base: Option<Url>,
    /// Base URL per agency ID.
    pub per_agency: BTreeMap<String, Url>,
    /// Longest one call may take, connect to last byte.
    pub request_timeout: Duration,
    /// Largest answer body read; larger ones are refused unread.
    pub max_response_bytes: usize,
}

/// What an agency answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200: a dataset (not verified yet).
    Dataset(Box<SignedDatasetBody>),
    /// 202: being prepared; ask again at `retry_after` under `request_id`.
    NotReady {
        request_id: String,
        retry_after: Option<Duration>,
    },
}

/// Why a call did not produce an [`Answer`]. The texts never carry personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no endpoint is configured for agency `{0}`")]
    NoEndpoint(String),
    #[error("the agency asked to slow down (429)")]
    RateLimited { retry_after: Option<Duration> },
    #[error("the agency failed with HTTP {status}")]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("the agency did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agency could not be reached: {0}")]
    Network(String),
    #[error("the agency refused the request (HTTP {status}, {code})")]
    Refused { status: u16, code: String },
    #[error("the agency no longer knows the pending request")]
    RequestGone,
    #[error("the answer is larger than the {limit}-byte limit")]
    TooLarge { limit: usize },
    #[error("the answer is malformed: {0}")]
    Malformed(String),
    #[error("the request token could not be made: {0}")]
    Token(String),
}

/// A JSON answer that does not parse, said without its content: serde's message quotes the value
/// it stumbled on, which in a dataset body is the person's data, and this message is recorded
/// with the fetch.
fn unreadable(what: &str, e: &serde_json::Error) -> CallError {
    use serde_json::error::Category;
    let why = match e.classify() {
        Category::Syntax => "not JSON",
        Category::Data => "not the expected fields and types",
        Category::Eof => "cut short",
        Category::Io => "unreadable",
    };
    CallError::Malformed(format!(
        "{what}: {why} (line {}, column {})",
        e.line(),
        e.column()
    ))
}

impl CallError {
    /// A stable code for records and audit events.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::NoEndpoint(_) => "no_endpoint",
            CallError::RateLimited { .. } => "rate_limited",
            CallError::Unavailable { .. } => "agency_unavailable",
            CallError::Timeout(_) => "agency_timeout",
            CallError::Network(_) => "agency_unreachable",
            CallError::Refused { .. } => "agency_refused",
            CallError::RequestGone => "request_gone",
            CallError::TooLarge { .. } => "response_too_large",
            CallError::Malformed(_) => "malformed_response",
            CallError::Token(_) => "token_error",
        }
    }

    /// Worth trying again later (the agency may recover).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CallError::RateLimited { .. }
                | CallError::Unavailable { .. }
                | CallError::Timeout(_)
                | CallError::Network(_)
                | CallError::RequestGone
        )
    }

    /// Counts towards opening the agency's circuit breaker: the agency looks down, not busy.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            CallError::Unavailable { .. } | CallError::Timeout(_) | CallError::Network(_)
        )
    }

    /// The agency's own hint of when to come back.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::RateLimited { retry_after } | CallError::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// One call to make.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    /// Ask for a dataset for the person.
    Create {
        transfer_id: &'a str,
        dataset_id: &'a str,
        subject: &'a FetchSubject,
    },
    /// Ask again about a request that was not ready.
    Poll {
        transfer_id: &'a str,
        request_id: &'a str,
    },
}

/// The agency API client. Cheap to clone; one per process is enough.
#[derive(Debug, Clone)]
pub struct AgencyClient {
    http: reqwest::Client,
    settings: ClientSettings,
}

impl AgencyClient {
    pub fn new(settings: ClientSettings) -> Result<Self, CallError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            // Agencies answer directly; a redirect would send the subject's token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mydata-connector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CallError::Network(e.to_string()))?;
        Ok(Self { http, settings })
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The base URL for `agency_id`.
    pub fn base_for(&self, agency_id: &str) -> Option<&Url> {
        self.settings
            .per_agency
            .get(agency_id)
            .or(self.settings.default_base.as_ref())
    }

    fn url(&self, agency_id: &str, tail: &str) -> Result<Url, CallError> {
        let base = self
            .base_for(agency_id)
            .ok_or_else(|| CallError::NoEndpoint(agency_id.to_owned()))?;
        let path = format!(
            "{}/agencies/{agency_id}/v1/requests{tail}",
            base.path().trim_end_matches('/')
        );
        let mut url = base.clone();
        url.set_path(&path);
        Ok(url)
    }

    /// Makes one call with a fresh token signed by `platform` at `now`.
    pub async fn call(
        &self,
        platform: &PlatformSigner,
        agency_id: &str,
        call: Call<'_>,
        now: Timestamp,
    ) -> Result<Answer, CallError> {
        let iat = now.millis().div_euclid(1000);
        let mut claims = RequestClaims {
            iss: ISSUER.into(),
            aud: agency_id.to_owned(),
            iat,
            exp: iat + TOKEN_LIFETIME_SECS,
            jti: uuid::Uuid::new_v4().to_string(),
            transfer_id: None,
            dataset_id: None,
            subject: None,
            assurance: None,
        };
        let request = match call {
            Call::Create {
                transfer_id,
                dataset_id,
                subject,
            } => {
                claims.transfer_id = Some(transfer_id.to_owned());
                claims.dataset_id = Some(dataset_id.to_owned());
                claims.subject = Some(subject.id().to_owned());
                claims.assurance = Some(Assurance {
                    method: subject.method().to_owned(),
                    level: subject.level(),
                });
                self.http.post(self.url(agency_id, "")?)
            }
            Call::Poll {
                transfer_id,
                request_id,
            } => {
                if !request_id_ok(request_id) {
                    return Err(CallError::RequestGone);
                }
                claims.transfer_id = Some(transfer_id.to_owned());
                self.http
                    .get(self.url(agency_id, &format!("/{request_id}"))?)
            }
        };
        let payload = serde_json::to_vec(&claims).map_err(|e| CallError::Token(e.to_string()))?;
        let token = zeroize::Zeroizing::new(platform.sign(&payload));
        drop(zeroize::Zeroizing::new(payload));
        let res = request
            .bearer_auth(token.as_str())
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = res.status();
        let retry_after = res
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = self.read_limited(res).await?;
        match status {
            StatusCode::OK => {
                let body: SignedDatasetBody =
                    serde_json::from_slice(&body).map_err(|e| unreadable("dataset body", &e))?;
                Ok(Answer::Dataset(Box::new(body)))
            }
            StatusCode::ACCEPTED => Ok(Answer::NotReady {
                request_id: accepted(&body)?,
                retry_after,
            }),
            StatusCode::TOO_MANY_REQUESTS => Err(CallError::RateLimited { retry_after }),
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => {
                Err(CallError::Timeout(self.settings.request_timeout))
            }
            s if s.is_server_error() => Err(CallError::Unavailable {
                status: s.as_u16(),
                retry_after,
            }),
            s => {
                let code = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|b| b.error)
                    .ok()
                    .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_graphic()))
                    .unwrap_or_else(|| "unknown".into());
                if matches!(call, Call::Poll { .. })
                    && s == StatusCode::NOT_FOUND
                    && code == "request_not_found"
                {
                    return Err(CallError::RequestGone);
                }
                Err(CallError::Refused {
                    status: s.as_u16(),
                    code,
                })
            }
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> CallError {
        if e.is_timeout() {
            CallError::Timeout(self.settings.request_timeout)
        } else {
            // Only the kind: the URL is configuration, but keep messages short and stable.
            CallError::Network(if e.is_connect() {
                "connection failed".into()
            } else {
                "transport error".into()
            })
        }
    }

    /// Reads the body, refusing it as soon as it passes the limit (declared or actual).
    async fn read_limited(&self, mut res: reqwest::Response) -> Result<Vec<u8>, CallError> {
        let limit = self.settings.max_response_bytes;
        let declared = res
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(CallError::TooLarge { limit });
        }
        let mut body = Vec::with_capacity(declared.map_or(8192, |n| n as usize).min(limit));
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(CallError::TooLarge { limit });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(self.transport_error(&e)),
            }
        }
    }
}

/// `Retry-After` in delay-seconds; an HTTP date or nonsense counts as no hint. Capped at a day.
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(86_400)))
}

/// The longest `request_id` an agency may give (docs/agency-api.yaml).
const MAX_REQUEST_ID: usize = 128;

/// Whether a `request_id` can go in the poll's path as it is: 1 to 128 letters, digits, `-`, `_`.
fn request_id_ok(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `request_id` of a 202 body; one the poll could not use is malformed now, not a request
/// asked again at every retry.
fn accepted(body: &[u8]) -> Result<String, CallError> {
    let a: Accepted = serde_json::from_slice(body).map_err(|e| unreadable("202 body", &e))?;
    if !request_id_ok(&a.request_id) {
        return Err(CallError::Malformed(format!(
            "the 202 body's request_id must be 1 to {MAX_REQUEST_ID} letters, digits, '-' or '_'"
        )));
    }
    Ok(a.request_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_the_poll_cannot_use_is_malformed_at_once() {
        let body = |id: &str| serde_json::json!({ "request_id": id, "ready_at": 0 }).to_string();
        assert_eq!(
            accepted(body("r-1_A").as_bytes()).ok(),
            Some("r-1_A".into())
        );
        for id in ["", "a.b", "a/b", "a b", "%2e", &"r".repeat(129)] {
            assert!(
                matches!(accepted(body(id).as_bytes()), Err(CallError::Malformed(_))),
                "{id:?}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_only_and_caps_them() {
        assert_eq!(parse_retry_after("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_retry_after("99999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn urls_follow_the_agency_api_paths() {
        let mut per = BTreeMap::new();
        per.insert(
            "mof-tax".to_owned(),
            Url::parse("https://tax.example/api/").unwrap(),
        );
        let c = AgencyClient::new(ClientSettings {
            default_base: Url::parse("http://127.0.0.1:9/").ok(),
            per_agency: per,
            request_timeout: Duration::from_secs(1),
            max_response_bytes: 10,
        })
        .unwrap();
        assert_eq!(
            c.url("moi-household", "").map(|u| u.to_string()),
            Ok("http://127.0.0.1:9/agencies/moi-household/v1/requests".into())
        );
        assert_eq!(
            c.url("mof-tax", "/r1").map(|u| u.to_string()),
            Ok("https://tax.example/api/agencies/mof-tax/v1/requests/r1".into())
        );
    }

    #[test]
    fn an_unreadable_answer_is_described_without_its_content() {
        // A field of the wrong type: serde's own message would quote the ID number.
        let body = r#"{"dataset_id": "d", "manifest": "m", "manifest_jws": "j", "manifest_sig": "s",
            "chain_pem": "c", "files": "A123456789"}"#;
        let e = serde_json::from_slice::<SignedDatasetBody>(body.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("A123456789"));
        let said = unreadable("dataset body", &e).to_string();
        assert!(!said.contains("A123456789"), "{said}");
        assert!(
            said.contains("not the expected fields and types (line 2"),
            "{said}"
        );
        let e = serde_json::from_slice::<SignedDatasetBody>(b"{\"dataset_id\": \"A12").unwrap_err();
        assert!(
            unreadable("dataset body", &e)
                .to_string()
                .contains("cut short")
        );
    }
}
