//! `mydata card-agent`: the local card reader service a web page calls to have a login
//! challenge signed by the person's card (docs/CARD-AGENT.md has the contract).
//!
//! Rules it keeps:
//! - loopback only, and only for requests addressed to a loopback host name (a page that rebinds
//!   its own DNS name to 127.0.0.1 gets 403);
//! - cross-origin calls only from the allowed origin(s): preflight and requests from any other
//!   origin get 403 and no CORS headers;
//! - it signs only platform login challenges (`mydata-login-v1\n{origin}\n{id}\n{nonce}`) whose
//!   origin line is the calling page's origin, so one site cannot obtain a login for another;
//! - three wrong PINs lock the card; the count survives restarts (state file beside the card,
//!   bound to the card's certificate fingerprint) and only a new card starts afresh;
//! - PIN checks run one at a time.

use crate::card::{CardError, CardInfo, OpenedCard, chain_path, info_of, read_chain_pem};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Wrong PINs before the card locks.
pub const MAX_PIN_TRIES: u32 = 3;
/// Largest request body accepted (a challenge is about 150 bytes).
pub const MAX_BODY: usize = 16 * 1024;
/// Largest challenge accepted, in bytes after base64url decoding.
const MAX_CHALLENGE: usize = 2048;
/// The first line of every platform login challenge.
pub const CHALLENGE_PREFIX: &str = "mydata-login-v1";

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Card(#[from] CardError),
    #[error(
        "{0}: the card's public certificate chain is missing (it is written beside every demo card as <serialNumber>.pem)"
    )]
    NoChain(PathBuf),
    #[error("cannot read the card {path}")]
    ReadCard {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the PIN state file {0} is damaged ({1}); the card stays unusable until it is fixed or a new card is used"
    )]
    DamagedState(PathBuf, String),
    #[error("{0:?} is not a web origin (scheme://host[:port], e.g. http://127.0.0.1:8080)")]
    BadOrigin(String),
    #[error("the card agent listens on loopback only; {0} is not a loopback address")]
    NotLoopback(SocketAddr),
}

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The PKCS#12 card.
    pub card: PathBuf,
    /// Where the PIN failure count is kept (default: `<card>.state.json`).
    pub state: Option<PathBuf>,
    /// Origins whose pages may call the agent.
    pub allowed_origins: Vec<String>,
}

/// The PIN failure count, persisted. Bound to one card by its certificate fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct PinState {
    fingerprint: String,
    failures: u32,
}

/// A loaded card and its PIN state.
#[derive(Debug)]
pub struct Agent {
    p12: Arc<Vec<u8>>,
    chain: Vec<Vec<u8>>,
    info: CardInfo,
    state_path: PathBuf,
    state: tokio::sync::Mutex<PinState>,
    allowed: Vec<String>,
}

/// Normalises an origin (`http://127.0.0.1:8080/` → `http://127.0.0.1:8080`) or refuses it.
pub fn parse_origin(s: &str) -> Result<String, AgentError> {
    let bad = || AgentError::BadOrigin(s.to_owned());
    let url = url::Url::parse(s).map_err(|_| bad())?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
        && url.host().is_some();
    if !plain {
        return Err(bad());
    }
    Ok(url.origin().ascii_serialization())
}

impl Agent {
    /// Loads the card's public chain and the PIN state; the PKCS#12 file is read now and opened
    /// only with a PIN.
    pub fn open(config: &AgentConfig) -> Result<Agent, AgentError> {
        let p12 = std::fs::read(&config.card).map_err(|source| AgentError::ReadCard {
            path: config.card.clone(),
            source,
        })?;
        let chain_file = chain_path(&config.card);
        if !chain_file.is_file() {
            return Err(AgentError::NoChain(chain_file));
        }
        let chain = read_chain_pem(&chain_file)?;
        let leaf = chain.first().ok_or(AgentError::NoChain(chain_file))?;
        let info = info_of(leaf)?;
        let state_path = config
            .state
            .clone()
            .unwrap_or_else(|| default_state_path(&config.card));
        let state = load_state(&state_path, &info.fingerprint)?;
        let allowed = config
            .allowed_origins
            .iter()
            .map(|o| parse_origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Agent {
            p12: Arc::new(p12),
            chain,
            info,
            state_path,
            state: tokio::sync::Mutex::new(state),
            allowed,
        })
    }

    pub fn info(&self) -> &CardInfo {
        &self.info
    }

    /// The first 12 hex digits of the certificate fingerprint: names the card in logs without
    /// naming the person.
    pub fn short_id(&self) -> &str {
        self.info.fingerprint.get(..12).unwrap_or("")
    }

    /// PIN tries left (0: the card is locked), or None while a PIN check is running.
    pub fn pin_tries_left(&self) -> Option<u32> {
        self.state
            .try_lock()
            .ok()
            .map(|s| MAX_PIN_TRIES.saturating_sub(s.failures))
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }
}

/// `<card>.state.json` beside the card.
pub fn default_state_path(card: &Path) -> PathBuf {
    let mut name = card
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".state.json");
    card.with_file_name(name)
}

fn load_state(path: &Path, fingerprint: &str) -> Result<PinState, AgentError> {
    let fresh = PinState {
        fingerprint: fingerprint.to_owned(),
        failures: 0,
    };
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(fresh),
        Err(e) => return Err(AgentError::DamagedState(path.to_owned(), e.to_string())),
    };
    let state: PinState = serde_json::from_slice(&bytes)
        .map_err(|e| AgentError::DamagedState(path.to_owned(), e.to_string()))?;
    // Another card's count does not carry over: a new card starts with all its tries.
    Ok(if state.fingerprint == fingerprint {
        state
    } else {
        fresh
    })
}

/// Writes the state through a temporary file and a rename, so a crash leaves the old or the new
/// count, never half a file.
fn save_state(path: &Path, state: &PinState) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// The agent's HTTP routes for a server listening on `addr`.
pub fn router(agent: Arc<Agent>, addr: SocketAddr) -> Router {
    let guard = Guard {
        allowed: agent.allowed.clone(),
        port: addr.port(),
    };
    Router::new()
        .route("/v1/card", get(card))
        .route("/v1/sign", post(sign))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(agent)
        .layer(middleware::from_fn_with_state(Arc::new(guard), guard_layer))
}

/// Refuses loopback addresses only.
pub fn check_listen(addr: SocketAddr) -> Result<(), AgentError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(AgentError::NotLoopback(addr))
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": code, "message": message })),
    )
        .into_response()
}

#[derive(Debug)]
struct Guard {
    allowed: Vec<String>,
    port: u16,
}

/// Host check, origin check, CORS preflight and headers, in one place.
async fn guard_layer(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let port = guard.port;
    let loopback_host = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(host));
    if !loopback_host {
        return error(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            "the card agent answers only requests addressed to 127.0.0.1 or localhost",
        );
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_owned);
    let Some(origin) = origin else {
        // Not from a web page's script (curl, a test, the platform's own tooling).
        let res = next.run(req).await;
        return with_common_headers(res);
    };
    if !guard.allowed.contains(&origin) {
        return with_common_headers(error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this web site may not use the card; start the agent with --allow-origin for the platform's address",
        ));
    }
    let value = HeaderValue::from_str(&origin).unwrap_or(HeaderValue::from_static("null"));
    if req.method() == Method::OPTIONS {
        let private_network = req
            .headers()
            .get("access-control-request-private-network")
            .is_some_and(|v| v == "true");
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        if private_network {
            h.insert(
                "access-control-allow-private-network",
                HeaderValue::from_static("true"),
            );
        }
        return with_common_headers(res);
    }
    let request_origin = RequestOrigin(Some(origin));
    let mut req = req;
    req.extensions_mut().insert(request_origin);
    let mut res = next.run(req).await;
    res.headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    with_common_headers(res)
}

fn with_common_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// The calling page's origin, when a browser sent one.
#[derive(Debug, Clone)]
struct RequestOrigin(Option<String>);

async fn card(State(agent): State<Arc<Agent>>) -> Response {
    let state = agent.state.lock().await;
    let not_after = crate::ca::to_offset(agent.info.not_after)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    axum::Json(json!({
        "subject": agent.info.subject,
        "serial_number": agent.info.serial_number,
        "issuer": agent.info.issuer,
        "not_after": not_after,
        "locked": state.failures >= MAX_PIN_TRIES,
        "pin_tries_left": MAX_PIN_TRIES.saturating_sub(state.failures),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignRequest {
    pin: String,
    to_be_signed: String,
}

/// Why a challenge is refused before the card is touched.
fn check_challenge(
    bytes: &[u8],
    origin: Option<&str>,
    allowed: &[String],
) -> Result<(), &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the challenge is not UTF-8 text")?;
    let lines: Vec<&str> = text.split('\n').collect();
    let [prefix, site, id, nonce] = lines.as_slice() else {
        return Err("the challenge does not have the four lines of a platform login challenge");
    };
    if *prefix != CHALLENGE_PREFIX {
        return Err("the card signs only platform login challenges (mydata-login-v1)");
    }
    if id.is_empty() || nonce.is_empty() {
        return Err("the challenge lacks its ID or nonce");
    }
    let site_ok = match origin {
        Some(o) => *site == o,
        None => allowed.iter().any(|a| a == site),
    };
    if !site_ok {
        return Err("the challenge names another web site than the one asking");
    }
    Ok(())
}

async fn sign(State(agent): State<Arc<Agent>>, req: Request) -> Response {
    let origin = req
        .extensions()
        .get::<RequestOrigin>()
        .and_then(|o| o.0.clone());
    let json_body = is_json(req.headers());
    let body: Bytes = match axum::body::to_bytes(Body::new(req.into_body()), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request is larger than 16 KiB",
            );
        }
    };
    if !json_body {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "send the request as application/json",
        );
    }
    let request: SignRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                "the body must be JSON {\"pin\": \"...\", \"to_be_signed\": \"<base64url>\"}",
            );
        }
    };
    // A PIN that cannot be right (6 to 8 digits) never reaches the card and costs no try.
    let pin_ok =
        (6..=8).contains(&request.pin.len()) && request.pin.bytes().all(|b| b.is_ascii_digit());
    if !pin_ok {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed_pin",
            "the PIN is 6 to 8 digits",
        );
    }
    let Ok(tbs) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&request.to_be_signed)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "to_be_signed must be base64url without padding",
        );
    };
    if tbs.is_empty() || tbs.len() > MAX_CHALLENGE {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "to_be_signed must be 1 to 2048 bytes",
        );
    }
    if let Err(why) = check_challenge(&tbs, origin.as_deref(), &agent.allowed) {
        return error(StatusCode::BAD_REQUEST, "not_a_login_challenge", why);
    }

    // One PIN check at a time: the lock is held across the card operation.
    let mut state = agent.state.lock().await;
    if state.failures >= MAX_PIN_TRIES {
        return card_locked();
    }
    let p12 = agent.p12.clone();
    let pin = request.pin;
    let opened = tokio::task::spawn_blocking(move || OpenedCard::open(&p12, &pin)).await;
    let card = match opened {
        Ok(Ok(card)) => card,
        Ok(Err(CardError::WrongPin)) => {
            state.failures += 1;
            let left = MAX_PIN_TRIES.saturating_sub(state.failures);
            tracing::warn!(card = %agent.short_id(), tries_left = left, "wrong PIN");
            if let Err(e) = save_state(&agent.state_path, &state) {
                tracing::error!(error = %e, "cannot save the PIN failure count");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "state_not_saved",
                    "the PIN failure count could not be saved; the card is not used until it can be",
                );
            }
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({
                    "error": "wrong_pin",
                    "tries_left": left,
                    "message": if left == 0 { "wrong PIN; the card is now locked" } else { "wrong PIN" },
                })),
            )
                .into_response();
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the card cannot be used");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "card_unreadable",
                "the card file cannot be used; load another card",
            );
        }
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "card_unreadable",
                "the card check did not finish",
            );
        }
    };
    if card.chain().first() != agent.chain.first() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "card_mismatch",
            "the card's certificate differs from the chain file beside it",
        );
    }
    if state.failures != 0 {
        state.failures = 0;
        if let Err(e) = save_state(&agent.state_path, &state) {
            tracing::error!(error = %e, "cannot save the PIN failure count");
        }
    }
    drop(state);
    let signature = card.sign(&tbs);
    let x5c: Vec<String> = card
        .chain()
        .iter()
        .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
        .collect();
    tracing::info!(card = %agent.short_id(), "signed a login challenge");
    axum::Json(json!({
        "signature": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature),
        "x5c": x5c,
    }))
    .into_response()
}

fn card_locked() -> Response {
    error(
        StatusCode::LOCKED,
        "card_locked",
        "the card is locked after three wrong PINs; only a new card can be used",
    )
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// Binds `listen` (loopback only) and returns the listener with the router for it.
pub async fn bind(
    agent: Arc<Agent>,
    listen: SocketAddr,
) -> std::io::Result<(tokio::net::TcpListener, Router)> {
    check_listen(listen).map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((listener, router(agent, addr)))
}
