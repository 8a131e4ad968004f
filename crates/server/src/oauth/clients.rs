//! Service registration: what a service must register before it can ask for anyone's data, its
//! checks, the admin API (`/api/v1/admin/services`, bearer `oauth.admin_token`) and the
//! registrations loaded from the configuration at start.

use super::{MAX_DATASETS, OAuthSettings};
use crate::error::AppError;
use crate::routes::path::Path;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mydata_core::{Catalog, Timestamp};
use mydata_store::{ClientRow, Store};
use serde::{Deserialize, Serialize};

/// A service's registration, as sent to the admin API or written in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub client_id: String,
    /// The service's name shown to the person.
    pub name: String,
    /// The JWK set (signing keys for client assertions, one X25519 `use: enc` key for packages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// Where the JWK set is published instead (https; http only for loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    /// The service's terms, shown before consent.
    pub terms: String,
    /// What the data is used for, shown before consent.
    pub purpose: String,
    /// Catalogue dataset IDs the service may ask for.
    pub datasets: Vec<String>,
    /// The law allowing more than five datasets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<String>,
    /// `test`, `trial` or `production`.
    pub environment: String,
    /// Whether the platform accepts this service's signed identity assertions.
    #[serde(default)]
    pub trusted_verifier: bool,
    /// RFC 9449 §5.2: every token request must carry a DPoP proof. Always so in `trial` and
    /// `production` (real data; FAPI 2.0 sender-constrained tokens), whatever this says.
    #[serde(default)]
    pub dpop_bound_access_tokens: bool,
}

const ENVIRONMENTS: [&str; 3] = ["test", "trial", "production"];

impl Registration {
    /// Every rule a registration must meet; the message names the field.
    pub fn validate(&self, catalog: &Catalog) -> Result<(), String> {
        let id_ok = !self.client_id.is_empty()
            && self.client_id.len() <= 64
            && self
                .client_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !id_ok {
            return Err("client_id: 1 to 64 letters, digits, '-', '_' or '.'".into());
        }
        for (field, v, max) in [
            ("name", &self.name, 200),
            ("terms", &self.terms, 20_000),
            // As long as a pushed request's own purpose may be: it stands in for one left out.
            ("purpose", &self.purpose, super::flow::MAX_PURPOSE_CHARS),
        ] {
            if v.trim().is_empty() || v.chars().count() > max {
                return Err(format!("{field}: required, at most {max} characters"));
            }
        }
        match (&self.jwks, &self.jwks_uri) {
            (Some(jwks), None) => check_jwks(jwks)?,
            (None, Some(u)) => check_url("jwks_uri", u)?,
            _ => return Err("give exactly one of jwks (by value) and jwks_uri".into()),
        }
        if self.redirect_uris.is_empty() || self.redirect_uris.len() > 10 {
            return Err("redirect_uris: 1 to 10 absolute URIs".into());
        }
        for u in &self.redirect_uris {
            check_url("redirect_uris", u)?;
            if u.contains('#') {
                return Err("redirect_uris: must not have a fragment".into());
            }
            // FAPI 2.0 leaves plain-http loopback return addresses to native apps; a service that
            // receives real data is a web service and gets its codes over https only.
            if self.environment != "test" && !u.starts_with("https://") {
                return Err(format!(
                    "redirect_uris: `{u}` must be https for a trial or production service (http on loopback is for test services)"
                ));
            }
        }
        if self.datasets.is_empty() {
            return Err("datasets: at least one".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &self.datasets {
            if catalog.dataset(d).is_none() {
                return Err(format!("datasets: `{d}` is not in the catalogue"));
            }
            if !seen.insert(d) {
                return Err(format!("datasets: `{d}` is listed twice"));
            }
        }
        let basis = self
            .legal_basis
            .as_deref()
            .is_some_and(|b| !b.trim().is_empty());
        if self.datasets.len() > MAX_DATASETS && !basis {
            return Err(format!(
                "datasets: at most {MAX_DATASETS} unless a legal_basis is recorded"
            ));
        }
        if !ENVIRONMENTS.contains(&self.environment.as_str()) {
            return Err("environment: one of test, trial, production".into());
        }
        Ok(())
    }

    fn to_row(&self, now: Timestamp) -> ClientRow {
        ClientRow {
            client_id: self.client_id.clone(),
            name: self.name.clone(),
            jwks: self.jwks.as_ref().map(|j| j.to_string()),
            jwks_uri: self.jwks_uri.clone(),
            redirect_uris: self.redirect_uris.clone(),
            terms: self.terms.clone(),
            purpose: self.purpose.clone(),
            datasets: self.datasets.clone(),
            legal_basis: self.legal_basis.clone().filter(|b| !b.trim().is_empty()),
            environment: self.environment.clone(),
            trusted_verifier: self.trusted_verifier,
            dpop_bound_access_tokens: self.dpop_bound_access_tokens,
            created_at: now,
            updated_at: now,
        }
    }

    pub fn from_row(r: &ClientRow) -> Self {
        Self {
            client_id: r.client_id.clone(),
            name: r.name.clone(),
            jwks: r.jwks.as_deref().and_then(|j| serde_json::from_str(j).ok()),
            jwks_uri: r.jwks_uri.clone(),
            redirect_uris: r.redirect_uris.clone(),
            terms: r.terms.clone(),
            purpose: r.purpose.clone(),
            datasets: r.datasets.clone(),
            legal_basis: r.legal_basis.clone(),
            environment: r.environment.clone(),
            trusted_verifier: r.trusted_verifier,
            dpop_bound_access_tokens: r.dpop_bound_access_tokens,
        }
    }
}

/// Whether `url` names this machine (localhost, 127.0.0.0/8 or ::1): the one place plain http is
/// allowed, for trying the platform out. Registration and `mydata serve`'s issuer both ask here.
pub fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        None => false,
    }
}

fn check_url(field: &str, u: &str) -> Result<(), String> {
    let parsed =
        url::Url::parse(u).map_err(|_| format!("{field}: `{u}` is not an absolute URI"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        _ => Err(format!(
            "{field}: `{u}` must be https (http only on loopback)"
        )),
    }
}

pub(crate) fn check_jwks(jwks: &serde_json::Value) -> Result<(), String> {
    let keys = jwks
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("jwks: must be an object with a `keys` array")?;
    if keys.is_empty() || keys.len() > 10 {
        return Err("jwks: 1 to 10 keys".into());
    }
    // The private members of EC, OKP and RSA keys, and a symmetric key's secret.
    const SECRET_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];
    for k in keys {
        if let Some(m) = SECRET_MEMBERS.iter().find(|m| k.get(**m).is_some()) {
            return Err(format!(
                "jwks: a key has the private or secret member `{m}`; register public keys only"
            ));
        }
    }
    if super::assertion::signing_keys(jwks).next().is_none() {
        return Err(
            "jwks: needs a key to verify client assertions with (kty EC crv P-256 for ES256, or kty OKP crv Ed25519 for EdDSA; not use enc)"
                .into(),
        );
    }
    if super::assertion::encryption_key(jwks).is_none() {
        return Err(
            "jwks: needs an X25519 key (kty OKP, crv X25519, use enc) to seal packages to".into(),
        );
    }
    Ok(())
}

/// Whether `client` must prove possession of a DPoP key at the token endpoint: registered so
/// (RFC 9449 §5.2), or any service that receives people's real data, trial as well as production
/// (FAPI 2.0 requires sender-constrained tokens). A test service's data is simulated (see
/// `OAuthSettings::serve_test_services`).
pub fn requires_dpop(client: &ClientRow) -> bool {
    client.dpop_bound_access_tokens || client.environment != "test"
}

/// Stores the registrations of the configuration (validated at start; a bad one stops start-up).
/// A registration is written, with a `service.registered` event (actor `config`), only when the
/// stored one differs: every process starts with this, and one that finds its registrations in
/// place changes nothing. The admin API refuses to change these ([`configured`]).
pub async fn load_configured(
    store: &Store,
    catalog: &Catalog,
    settings: &OAuthSettings,
    now: Timestamp,
) -> anyhow::Result<()> {
    for r in &settings.clients {
        r.validate(catalog)
            .map_err(|e| anyhow::anyhow!("config key `oauth.clients` ({}): {e}", r.client_id))?;
        let stored = store.client(&r.client_id).await?;
        if stored.as_ref().map(Registration::from_row).as_ref() == Some(r) {
            continue;
        }
        store.put_client(&r.to_row(now)).await?;
        store
            .append_audit(&registered_event(r, "config", now))
            .await?;
    }
    Ok(())
}

/// Drops what this process cached of a registration it just changed: the registration and the
/// key sets fetched from its `jwks_uri`s (the old one's and the new one's). Other processes
/// follow within `oauth.client_cache_ms` and `oauth.jwks_cache_secs`.
fn forget<'a>(state: &AppState, client_id: &str, jwks_uris: impl IntoIterator<Item = &'a str>) {
    state.client_cache().forget(client_id);
    for uri in jwks_uris {
        state.jwks_cache().forget(uri);
    }
}

/// Whether the configuration holds `client_id`'s registration (see [`load_configured`]).
fn configured(state: &AppState, client_id: &str) -> bool {
    state
        .settings()
        .oauth
        .clients
        .iter()
        .any(|c| c.client_id == client_id)
}

fn registered_event(
    reg: &Registration,
    actor: &str,
    now: Timestamp,
) -> mydata_store::NewAuditEvent {
    mydata_store::NewAuditEvent {
        at: now,
        kind: "service.registered".into(),
        subject: None,
        transfer_id: None,
        actor: actor.into(),
        detail: serde_json::json!({ "client_id": reg.client_id, "datasets": reg.datasets, "environment": reg.environment, "trusted_verifier": reg.trusted_verifier, "dpop_bound_access_tokens": reg.dpop_bound_access_tokens }),
    }
}

fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), AppError> {
    if !crate::routes::bearer_is(headers, &state.settings().oauth.admin_token) {
        return Err(AppError::AdminUnauthorized);
    }
    Ok(())
}

/// `GET /api/v1/admin/services`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    check_admin(&state, &headers)?;
    let rows = state.store().clients().await?;
    let out: Vec<Registration> = rows.iter().map(Registration::from_row).collect();
    Ok(Json(serde_json::json!({ "services": out })).into_response())
}

/// `GET /api/v1/admin/services/{client_id}`
pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    check_admin(&state, &headers)?;
    let row = state
        .store()
        .client(&id)
        .await?
        .ok_or_else(|| crate::routes::not_found("service", &id))?;
    Ok(Json(Registration::from_row(&row)).into_response())
}

/// `PUT /api/v1/admin/services/{client_id}`: registers or replaces.
pub async fn put(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Registration>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, AppError> {
    check_admin(&state, &headers)?;
    let Json(reg) = body?;
    if reg.client_id != id {
        return Err(AppError::InvalidBody(
            "client_id in the body differs from the one in the path".into(),
        ));
    }
    reg.validate(state.catalog())
        .map_err(AppError::InvalidBody)?;
    if configured(&state, &id) {
        return Err(AppError::ServiceManagedByConfig(id));
    }
    // A set by URL is checked now, as one by value is: otherwise a set without a signing key (or
    // an address nobody answers at) registers fine and every request of the service then fails.
    let fetched = match &reg.jwks_uri {
        Some(u) => Some(
            super::assertion::fetch_for_registration(&state, u)
                .await
                .map_err(AppError::InvalidBody)?,
        ),
        None => None,
    };
    let old = state.store().client(&id).await?;
    let existed = old.is_some();
    let now = state.clock().now();
    state.store().put_client(&reg.to_row(now)).await?;
    let uris = old.iter().filter_map(|o| o.jwks_uri.as_deref());
    forget(&state, &id, uris.chain(reg.jwks_uri.as_deref()));
    if let (Some(u), Some(set)) = (&reg.jwks_uri, fetched) {
        super::assertion::remember(&state, u, set).await;
    }
    state
        .store()
        .append_audit(&registered_event(&reg, "admin", now))
        .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(reg)).into_response())
}

/// `DELETE /api/v1/admin/services/{client_id}`
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    check_admin(&state, &headers)?;
    if configured(&state, &id) {
        return Err(AppError::ServiceManagedByConfig(id));
    }
    let old = state.store().client(&id).await?;
    let now = state.clock().now();
    // Its transfers not yet released end in the same write: no package can reach it any more, so
    // none is fetched or kept for it (the expiry sweep destroys what they hold).
    let removal = state.store().delete_client(&id, "admin", now).await?;
    forget(
        &state,
        &id,
        old.iter().filter_map(|o| o.jwks_uri.as_deref()),
    );
    for t in &removal.ended {
        state.settled().settle(t);
    }
    if !removal.existed {
        return Err(crate::routes::not_found("service", &id));
    }
    state
        .store()
        .append_audit(&mydata_store::NewAuditEvent {
            at: now,
            kind: "service.removed".into(),
            subject: None,
            transfer_id: None,
            actor: "admin".into(),
            detail: serde_json::json!({ "client_id": id, "transfers_ended": removal.ended.len() }),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Registrations read recently, per process: every step of a transfer names its service, so
/// without this each page and API call reads the same row again. An entry is used for at most
/// `oauth.client_cache_ms`; this process forgets an entry at once when its admin API changes or
/// removes the registration, other processes within that time. Unknown client IDs are never
/// remembered (probing cannot fill it).
#[derive(Debug, Default)]
pub struct ClientCache {
    rows: std::sync::Mutex<std::collections::HashMap<String, (ClientRow, Timestamp)>>,
    /// Counts [`ClientCache::forget`]s, changed under the `rows` lock: a registration read from
    /// the database before a change committed in this process must not be remembered after it.
    forgotten: std::sync::atomic::AtomicU64,
}

/// Registrations remembered at most (far more than any deployment registers).
const CLIENT_CACHE_MAX: usize = 10_000;

impl ClientCache {
    fn get(&self, id: &str, now: Timestamp, ttl_ms: i64) -> Option<ClientRow> {
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.get(id)
            .filter(|(_, at)| now.millis().saturating_sub(at.millis()) < ttl_ms)
            .map(|(row, _)| row.clone())
    }

    /// Where the cache is before a read from the database (see [`ClientCache::put`]).
    fn mark(&self) -> u64 {
        self.forgotten.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Remembers `row`, read from the database after [`ClientCache::mark`] returned `mark`,
    /// unless something was forgotten since (the read may predate that change).
    fn put(&self, row: &ClientRow, now: Timestamp, mark: u64) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if self.mark() != mark {
            return;
        }
        if rows.len() >= CLIENT_CACHE_MAX && !rows.contains_key(&row.client_id) {
            rows.clear();
        }
        rows.insert(row.client_id.clone(), (row.clone(), now));
    }

    /// Forgets one registration (after this process changed or removed it).
    pub fn forget(&self, id: &str) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.remove(id);
        self.forgotten
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The registration of `client_id`, from this process's short-lived cache or the database.
pub async fn registered(
    state: &AppState,
    client_id: &str,
) -> Result<Option<ClientRow>, mydata_store::StoreError> {
    let ttl_ms = i64::try_from(state.settings().oauth.client_cache_ms).unwrap_or(i64::MAX);
    let now = state.clock().now();
    if ttl_ms > 0
        && let Some(row) = state.client_cache().get(client_id, now, ttl_ms)
    {
        return Ok(Some(row));
    }
    let mark = state.client_cache().mark();
    let row = state.store().client(client_id).await?;
    if ttl_ms > 0
        && let Some(r) = &row
    {
        state.client_cache().put(r, now, mark);
    }
    Ok(row)
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn row(id: &str, name: &str) -> ClientRow {
        ClientRow {
            client_id: id.into(),
            name: name.into(),
            jwks: None,
            jwks_uri: None,
            redirect_uris: Vec::new(),
            terms: String::new(),
            purpose: String::new(),
            datasets: Vec::new(),
            legal_basis: None,
            environment: "test".into(),
            trusted_verifier: false,
            dpop_bound_access_tokens: false,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    /// The published API and the guide name the environments `requires_dpop` holds to a proof.
    #[test]
    fn the_docs_say_who_must_send_dpop_proofs() {
        for env in ["test", "trial", "production"] {
            let r = ClientRow {
                environment: env.into(),
                ..row("sp", "A")
            };
            assert_eq!(requires_dpop(&r), env != "test", "{env}");
        }
        let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let api = flat(include_str!("../../../../docs/service-api.yaml"));
        assert!(
            api.contains("required of trial and production services and of those registered with `dpop_bound_access_tokens`"),
            "service-api.yaml, info"
        );
        assert!(
            api.contains("Always required of `trial` and `production` services"),
            "service-api.yaml, dpop_bound_access_tokens"
        );
        let guide = flat(include_str!("../../../../docs/ONLINE-SERVICES.md"));
        assert!(
            guide.contains("of **every `trial` and `production` service**"),
            "ONLINE-SERVICES.md"
        );
    }

    #[test]
    fn a_registration_is_reused_only_within_its_time_and_until_forgotten() {
        let c = ClientCache::default();
        let t0 = Timestamp::from_millis(1_000_000);
        c.put(&row("sp", "A"), t0, c.mark());
        let at = |ms: i64| Timestamp::from_millis(1_000_000 + ms);
        assert_eq!(
            c.get("sp", at(1_999), 2_000).map(|r| r.name),
            Some("A".into())
        );
        assert!(
            c.get("sp", at(2_000), 2_000).is_none(),
            "stale after the TTL"
        );
        assert!(c.get("other", at(0), 2_000).is_none());
        c.put(&row("sp", "B"), at(10), c.mark());
        assert_eq!(c.get("sp", at(20), 2_000).map(|r| r.name), Some("B".into()));
        c.forget("sp");
        assert!(c.get("sp", at(20), 2_000).is_none(), "forgotten at once");
    }

    /// A lookup that read the old registration before an admin change committed, and comes to
    /// remember it after the change forgot it, does not bring the old one back.
    #[test]
    fn a_read_from_before_a_change_is_not_remembered_after_it() {
        let c = ClientCache::default();
        let t0 = Timestamp::from_millis(1_000_000);
        let mark = c.mark();
        // (the lookup reads "A" from the database here; the admin puts "B" and forgets)
        c.forget("sp");
        c.put(&row("sp", "A"), t0, mark);
        assert!(c.get("sp", t0, 2_000).is_none());
        c.put(&row("sp", "B"), t0, c.mark());
        assert_eq!(c.get("sp", t0, 2_000).map(|r| r.name), Some("B".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(jwks: serde_json::Value) -> Registration {
        Registration {
            client_id: "sp".into(),
            name: "服務".into(),
            jwks: Some(jwks),
            jwks_uri: None,
            redirect_uris: vec!["https://sp.example/cb".into()],
            terms: "條款".into(),
            purpose: "用途".into(),
            datasets: vec!["low-income-household".into()],
            legal_basis: None,
            environment: "test".into(),
            trusted_verifier: false,
            dpop_bound_access_tokens: false,
        }
    }

    #[test]
    fn a_key_set_must_verify_assertions_and_hold_no_secret() {
        let catalog = crate::serve::load_catalog(None).unwrap();
        let keys = mydata_sdk::Keys::generate().public_jwks();
        registration(keys.clone()).validate(&catalog).unwrap();
        let [sig, enc] = [keys["keys"][0].clone(), keys["keys"][1].clone()];

        // Only the encryption key: every pushed request would fail at its assertion.
        let err = registration(serde_json::json!({ "keys": [enc] }))
            .validate(&catalog)
            .unwrap_err();
        assert!(err.contains("verify client assertions"), "{err}");
        // A signing key declared for encryption, or an RSA key, signs nothing the platform takes.
        let mut as_enc = sig.clone();
        as_enc["use"] = "enc".into();
        let rsa = serde_json::json!({ "kty": "RSA", "n": "sXch", "e": "AQAB" });
        for other in [as_enc, rsa] {
            let err = registration(serde_json::json!({ "keys": [other, enc] }))
                .validate(&catalog)
                .unwrap_err();
            assert!(err.contains("verify client assertions"), "{err}");
        }
        // Private or secret members, whichever key type.
        for (member, key) in [
            ("d", {
                let mut k = sig.clone();
                k["d"] = "x".into();
                k
            }),
            ("k", serde_json::json!({ "kty": "oct", "k": "c2VjcmV0" })),
            (
                "qi",
                serde_json::json!({ "kty": "RSA", "n": "sXch", "e": "AQAB", "qi": "x" }),
            ),
        ] {
            let err = registration(serde_json::json!({ "keys": [sig, enc, key] }))
                .validate(&catalog)
                .unwrap_err();
            assert!(err.contains(&format!("`{member}`")), "{err}");
        }
    }

    #[test]
    fn only_test_services_may_return_to_plain_http_on_loopback() {
        let catalog = crate::serve::load_catalog(None).unwrap();
        let mut r = registration(mydata_sdk::Keys::generate().public_jwks());
        r.redirect_uris = vec!["http://127.0.0.1:8081/callback".into()];
        r.validate(&catalog).unwrap();
        for env in ["trial", "production"] {
            r.environment = env.into();
            let err = r.validate(&catalog).unwrap_err();
            assert!(err.contains("must be https"), "{env}: {err}");
        }
        r.redirect_uris = vec!["https://sp.example/callback".into()];
        r.validate(&catalog).unwrap();
    }

    #[test]
    fn loopback_is_this_machine_by_address_not_by_name_prefix() {
        for u in [
            "http://127.0.0.1:8081/cb",
            "http://127.0.0.2/",
            "http://LOCALHOST:8080/",
            "http://[::1]:8080/",
        ] {
            assert!(super::is_loopback(&url::Url::parse(u).unwrap()), "{u}");
        }
        for u in [
            "http://localhost.attacker.example/",
            "http://127.0.0.1.nip.io/",
            "http://10.0.0.1/",
            "http://[::2]/",
            "file:///etc/passwd",
        ] {
            assert!(!super::is_loopback(&url::Url::parse(u).unwrap()), "{u}");
        }
    }

    #[test]
    fn a_registered_purpose_fits_where_it_stands_in_for_a_pushed_one() {
        let catalog = crate::serve::load_catalog(None).unwrap();
        let mut r = registration(mydata_sdk::Keys::generate().public_jwks());
        r.purpose = "用".repeat(super::super::flow::MAX_PURPOSE_CHARS);
        r.validate(&catalog).unwrap();
        r.purpose.push('用');
        let err = r.validate(&catalog).unwrap_err();
        assert!(err.starts_with("purpose:"), "{err}");
    }
}
