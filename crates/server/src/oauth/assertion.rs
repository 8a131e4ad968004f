//! Signed JWTs from services: the client assertion of `private_key_jwt` (RFC 7523 §2.2, with the
//! FAPI 2.0 rules: ES256 or EdDSA, `aud` the issuer, short-lived, `jti` used once), and the
//! identity assertion of a trusted verifier. Keys come from the service's registered JWK set.
//! Time checks use the injected clock, not the JWT library's wall clock.

use super::{ErrorCode, OAuthError, UnspentJti};
use crate::state::AppState;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mydata_core::Timestamp;
use mydata_store::ClientRow;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The `client_assertion_type` of RFC 7523.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew tolerated on `iat`/`nbf`.
const SKEW_SECS: i64 = 30;

/// Largest JWK set read from a `jwks_uri` (a registration holds at most 10 keys).
const JWKS_MAX_BYTES: usize = 64 * 1024;
/// Time allowed to fetch a `jwks_uri`.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// A `kid` missing from a cached set fetches the set again at most this often per URI, so
/// assertions naming unknown keys cannot make the platform hammer the service.
pub const JWKS_REFETCH: Duration = Duration::from_secs(60);
/// After a failed fetch, the next is tried no sooner than this (answers `invalid_client` meanwhile).
const JWKS_RETRY: Duration = Duration::from_secs(5);
/// URIs remembered at most (one per registered service in practice).
const JWKS_MAX_URIS: usize = 10_000;

/// JWK sets fetched from services' `jwks_uri`, per process: the keys are public, so a copy that is
/// at most `oauth.jwks_cache_secs` old is as good as a fresh one, and one process's cache never
/// needs to agree with another's. One fetch at a time per URI (concurrent callers wait for it).
#[derive(Debug, Default)]
pub struct JwksCache {
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

#[derive(Debug, Default)]
struct Slot {
    set: Option<serde_json::Value>,
    fetched_at: Option<Timestamp>,
    attempted_at: Option<Timestamp>,
}

impl JwksCache {
    /// Drops the set fetched from `uri`: the next use fetches it again (a registration changed in
    /// this process, perhaps because the service withdrew a key).
    pub fn forget(&self, uri: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uri);
    }

    fn slot(&self, uri: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= JWKS_MAX_URIS && !slots.contains_key(uri) {
            slots.clear();
        }
        slots.entry(uri.to_owned()).or_default().clone()
    }
}

fn unreadable() -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidClient,
        "the service's jwks_uri could not be read",
    )
}

fn not_valid() -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidClient,
        "the service's JWK set is not valid",
    )
}

/// Fetches a `jwks_uri`: bounded in time and size, no redirects (the identity HTTP client).
async fn fetch_jwks(state: &AppState, uri: &str) -> Result<serde_json::Value, OAuthError> {
    let mut res = state
        .identity()
        .http
        .get(uri)
        .timeout(JWKS_TIMEOUT)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|_| unreadable())?;
    if res
        .content_length()
        .is_some_and(|n| n > JWKS_MAX_BYTES as u64)
    {
        return Err(not_valid());
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|_| unreadable())? {
        if body.len() + chunk.len() > JWKS_MAX_BYTES {
            return Err(not_valid());
        }
        body.extend_from_slice(&chunk);
    }
    let set: serde_json::Value = serde_json::from_slice(&body).map_err(|_| not_valid())?;
    if !set.get("keys").is_some_and(|k| k.is_array()) {
        return Err(not_valid());
    }
    Ok(set)
}

/// Fetches a `jwks_uri` being registered and checks the set as a set given by value is checked;
/// the message says what is wrong, for the admin API's answer.
pub async fn fetch_for_registration(
    state: &AppState,
    uri: &str,
) -> Result<serde_json::Value, String> {
    let set = fetch_jwks(state, uri)
        .await
        .map_err(|e| format!("jwks_uri: {}", e.description))?;
    super::clients::check_jwks(&set).map_err(|e| format!("jwks_uri: {e}"))?;
    Ok(set)
}

/// Puts a set just fetched for `uri` in the cache, as a fetch by an assertion would.
pub async fn remember(state: &AppState, uri: &str, set: serde_json::Value) {
    let slot = state.jwks_cache().slot(uri);
    let mut slot = slot.lock().await;
    let now = state.clock().now();
    slot.set = Some(set);
    slot.fetched_at = Some(now);
    slot.attempted_at = Some(now);
}

/// Fetches into `slot`, recording the attempt whatever its outcome (a failure clears the set).
async fn refresh(
    state: &AppState,
    uri: &str,
    slot: &mut Slot,
    now: Timestamp,
) -> Result<(), OAuthError> {
    slot.attempted_at = Some(now);
    match fetch_jwks(state, uri).await {
        Ok(set) => {
            slot.set = Some(set);
            slot.fetched_at = Some(now);
            Ok(())
        }
        Err(e) => {
            slot.set = None;
            slot.fetched_at = None;
            tracing::warn!(error = %e, "a service's jwks_uri could not be fetched");
            Err(e)
        }
    }
}

/// The service's JWK set, by value or from its `jwks_uri` (cached). With `kid`, a set that lacks
/// it is fetched again if the last fetch is at least [`JWKS_REFETCH`] old (key rotation).
async fn jwks_for(
    state: &AppState,
    c: &ClientRow,
    kid: Option<&str>,
) -> Result<serde_json::Value, OAuthError> {
    let uri = match (&c.jwks, &c.jwks_uri) {
        (Some(j), _) => return serde_json::from_str(j).map_err(|_| not_valid()),
        (None, Some(u)) => u,
        (None, None) => {
            return Err(OAuthError::new(
                ErrorCode::InvalidClient,
                "the service has no keys",
            ));
        }
    };
    let slot = state.jwks_cache().slot(uri);
    let mut slot = slot.lock().await;
    let now = state.clock().now();
    let ttl = Duration::from_secs(state.settings().oauth.jwks_cache_secs);
    let since = |t: Option<Timestamp>, d: Duration| t.is_none_or(|t| t.plus(d) <= now);
    let mut fetched_now = false;
    if slot.set.is_none() || since(slot.fetched_at, ttl) {
        if slot.set.is_none() && !since(slot.attempted_at, JWKS_RETRY) {
            return Err(unreadable());
        }
        refresh(state, uri, &mut slot, now).await?;
        fetched_now = true;
    }
    if let Some(kid) = kid
        && !fetched_now
        && since(slot.attempted_at, JWKS_REFETCH)
        && slot
            .set
            .as_ref()
            .is_some_and(|s| signing_key(s, Some(kid)).is_none())
    {
        // A failed refetch keeps the set that is still fresh (the kid stays unknown).
        let (set, at) = (slot.set.clone(), slot.fetched_at);
        if refresh(state, uri, &mut slot, now).await.is_err() {
            slot.set = set;
            slot.fetched_at = at;
        }
    }
    slot.set.clone().ok_or_else(unreadable)
}

/// The service's JWK set (by value, or fetched from its `jwks_uri` through the cache).
pub async fn client_jwks(state: &AppState, c: &ClientRow) -> Result<serde_json::Value, OAuthError> {
    jwks_for(state, c, None).await
}

/// The service's X25519 encryption key (the first `use: enc` OKP key) and its thumbprint.
pub fn encryption_key(jwks: &serde_json::Value) -> Option<[u8; 32]> {
    jwks.get("keys")?
        .as_array()?
        .iter()
        .filter(|k| k.get("use").and_then(|u| u.as_str()) != Some("sig"))
        .find_map(|k| mydata_package::e2e::x25519_from_jwk(k).ok())
}

/// The keys of a registered set that may verify an assertion's signature: ES256 (EC P-256) or
/// EdDSA (OKP Ed25519), not declared for encryption, readable by the JWT library.
pub fn signing_keys(set: &serde_json::Value) -> impl Iterator<Item = Jwk> + '_ {
    set.get("keys")
        .and_then(|k| k.as_array())
        .into_iter()
        .flatten()
        .filter(|k| k.get("use").and_then(|u| u.as_str()) != Some("enc"))
        .filter(|k| {
            let field = |n: &str| k.get(n).and_then(|v| v.as_str());
            matches!(
                (field("kty"), field("crv")),
                (Some("EC"), Some("P-256")) | (Some("OKP"), Some("Ed25519"))
            )
        })
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
}

/// The signing key named by `kid` (or the only one). Encryption keys (declared, or X25519, which
/// cannot sign) never verify a signature; keys the JWT library cannot read are skipped.
fn signing_key(set: &serde_json::Value, kid: Option<&str>) -> Option<Jwk> {
    let mut candidates = signing_keys(set);
    match kid {
        Some(kid) => candidates.find(|k| k.common.key_id.as_deref() == Some(kid)),
        None => {
            let first = candidates.next();
            // Without a kid the key must be unambiguous.
            if candidates.next().is_some() {
                None
            } else {
                first
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
}

/// Verifies a signed JWT from `client` with `aud` one of `audiences`; returns its claims JSON.
/// `purpose` names the token in errors. Does not record the `jti`.
async fn verify_signed(
    state: &AppState,
    client: &ClientRow,
    token: &str,
    audiences: &[String],
    code: ErrorCode,
    purpose: &str,
) -> Result<(serde_json::Value, i64), OAuthError> {
    let bad = |m: &str| OAuthError::new(code, format!("{purpose}: {m}"));
    let header = jsonwebtoken::decode_header(token).map_err(|_| bad("not a signed JWT"))?;
    if !matches!(header.alg, Algorithm::ES256 | Algorithm::EdDSA) {
        return Err(bad("alg must be ES256 or EdDSA"));
    }
    let set = jwks_for(state, client, header.kid.as_deref()).await?;
    let jwk = signing_key(&set, header.kid.as_deref())
        .ok_or_else(|| bad("no registered key matches its kid"))?;
    let key =
        DecodingKey::from_jwk(&jwk).map_err(|_| bad("the registered key cannot verify it"))?;
    let mut v = Validation::new(header.alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_audience(audiences);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .map_err(|e| bad(&format!("rejected ({:?})", e.kind())))?;
    let claims: Claims =
        serde_json::from_value(data.claims.clone()).map_err(|_| bad("claims are malformed"))?;
    let now = state.clock().now().millis() / 1000;
    let max = i64::try_from(state.settings().oauth.assertion_max_secs).unwrap_or(300);
    if claims.exp <= now {
        return Err(bad("expired"));
    }
    if claims.exp > now + max + SKEW_SECS {
        return Err(bad(&format!("lives longer than {max} seconds")));
    }
    if claims.nbf.is_some_and(|n| n > now + SKEW_SECS)
        || claims.iat.is_some_and(|i| i > now + SKEW_SECS)
    {
        return Err(bad("is not valid yet"));
    }
    if claims.iss != client.client_id {
        return Err(bad("iss must be the client_id"));
    }
    Ok((data.claims, claims.exp))
}

/// Records a verified client assertion's `jti` (from [`verify_client`]); a second use is
/// [`replayed`]. Called once the request is known to be answerable, so a refused one spends nothing.
pub async fn spend(state: &AppState, client_id: &str, jti: &UnspentJti) -> Result<(), OAuthError> {
    if state
        .store()
        .use_jti(client_id, &jti.jti, jti.keep_until)
        .await?
    {
        Ok(())
    } else {
        Err(replayed())
    }
}

/// The error for a client assertion whose `jti` was used before.
pub fn replayed() -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidClient,
        "client_assertion: this jti was already used (replay)",
    )
}

/// Authenticates a client by `private_key_jwt` without recording the `jti`: the caller spends it
/// with [`spend`] or in its own write (the token endpoint spends it with the code) and answers
/// [`replayed`] if it was used. `aud` must be the issuer identifier as a single string (FAPI 2.0
/// Security Profile §5.3.2.1): neither an endpoint's URL nor an array, so an assertion a service
/// made for another server (or another endpoint) is never taken here.
pub async fn verify_client(
    state: &AppState,
    issuer: &str,
    client_id: Option<&str>,
    assertion_type: Option<&str>,
    assertion: Option<&str>,
) -> Result<(ClientRow, UnspentJti), OAuthError> {
    let invalid = |m: &str| OAuthError::new(ErrorCode::InvalidClient, m.to_owned());
    if assertion_type != Some(JWT_BEARER) {
        return Err(invalid(
            "client authentication must be private_key_jwt (client_assertion_type jwt-bearer)",
        ));
    }
    let assertion = assertion.ok_or_else(|| invalid("client_assertion is missing"))?;
    // The client is named by the assertion's `sub` (RFC 7523 §3); a client_id given too must agree.
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
        .map_err(|_| invalid("client_assertion is not a JWT"))?;
    let sub = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .ok_or_else(|| invalid("client_assertion has no sub"))?;
    if client_id.is_some_and(|c| c != sub) {
        return Err(invalid("client_id differs from the assertion's sub"));
    }
    if claims.get("aud").and_then(|a| a.as_str()) != Some(issuer) {
        return Err(invalid(&format!(
            "client_assertion: aud must be the issuer identifier `{issuer}`, as one string"
        )));
    }
    let client = super::clients::registered(state, sub)
        .await?
        .ok_or_else(|| invalid("unknown client"))?;
    let (claims, exp) = verify_signed(
        state,
        &client,
        assertion,
        &[issuer.to_owned()],
        ErrorCode::InvalidClient,
        "client_assertion",
    )
    .await?;
    let jti = claims
        .get("jti")
        .and_then(|j| j.as_str())
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| invalid("client_assertion: jti is required"))?;
    let keep =
        mydata_core::Timestamp::from_millis(exp.saturating_add(SKEW_SECS).saturating_mul(1000));
    Ok((
        client,
        UnspentJti {
            jti: jti.to_owned(),
            keep_until: keep,
        },
    ))
}

/// What a trusted verifier asserts about the person (its own sign-in).
#[derive(Debug, Clone)]
pub struct AssertedIdentity {
    pub id_number: zeroize::Zeroizing<String>,
    pub level: mydata_core::AssuranceLevel,
    /// The assertion's `jti` (prefixed `identity:`), recorded with the pushed request in one
    /// write, so that a request refused for anything else leaves the assertion usable.
    pub jti: UnspentJti,
}

/// Checks a trusted verifier's identity assertion (sent in the pushed request): signed by the
/// service, `aud` the issuer, `sub` the ID number, `level` 1-4 and at least every requested
/// dataset's required level, short-lived, with a `jti` (used once: see [`AssertedIdentity::jti`]).
pub async fn identity_assertion(
    state: &AppState,
    client: &ClientRow,
    issuer: &str,
    token: &str,
    datasets: &[String],
) -> Result<AssertedIdentity, OAuthError> {
    let bad = |m: &str| {
        OAuthError::new(
            ErrorCode::InvalidRequest,
            format!("identity_assertion: {m}"),
        )
    };
    if !client.trusted_verifier {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            "this service is not registered as a trusted identity verifier",
        ));
    }
    let (claims, exp) = verify_signed(
        state,
        client,
        token,
        &[issuer.to_owned()],
        ErrorCode::InvalidRequest,
        "identity_assertion",
    )
    .await?;
    let sub = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .unwrap_or_default();
    let id = mydata_core::IdNumber::parse(sub).map_err(|_| bad("sub is not a valid ID number"))?;
    let level = claims
        .get("level")
        .and_then(|l| l.as_u64())
        .and_then(|l| u8::try_from(l).ok())
        .and_then(|l| mydata_core::AssuranceLevel::try_from(l).ok())
        .ok_or_else(|| bad("level must be 1 to 4"))?;
    for d in datasets {
        if let Some(ds) = state.catalog().dataset(d)
            && !level.satisfies(ds.min_level())
        {
            return Err(bad(&format!(
                "level {level} is below dataset `{d}`'s required level {}",
                ds.min_level()
            )));
        }
    }
    let jti = claims
        .get("jti")
        .and_then(|j| j.as_str())
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| bad("jti is required"))?;
    let keep =
        mydata_core::Timestamp::from_millis(exp.saturating_add(SKEW_SECS).saturating_mul(1000));
    Ok(AssertedIdentity {
        id_number: zeroize::Zeroizing::new(id.as_str().to_owned()),
        level,
        jti: UnspentJti {
            jti: format!("identity:{jti}"),
            keep_until: keep,
        },
    })
}

/// The refusal of an identity assertion whose `jti` was used before.
pub fn identity_replayed() -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidRequest,
        "identity_assertion: this jti was already used (replay)",
    )
}
