//! `mydata-sdk`: what an online service needs to receive a person's data from the mydata platform.
//!
//! The flow (FAPI 2.0 style; see `docs/ONLINE-SERVICES.md`):
//!
//! 1. [`Service::discover`] reads the platform's metadata and keys.
//! 2. [`Service::push`] sends a pushed authorization request (RFC 9126) with PKCE S256, the
//!    datasets and purpose as `authorization_details` (RFC 9396), an optional `login_hint`
//!    (the person's ID number, HPKE-encrypted to the platform), for a trusted identity verifier
//!    an optional `identity_assertion` ([`Service::identity_assertion`]: the person then skips
//!    the platform's sign-in), a `private_key_jwt` client assertion and `dpop_jkt` (the code is
//!    bound to the service's DPoP key). Send the person's browser to
//!    [`Pending::authorize_url`]; keep the rest in your session.
//! 3. The person signs in, consents, waits for the agencies and confirms; the platform redirects
//!    back with `code`, `state` and `iss`. [`Service::callback`] checks `state` and `iss` (RFC
//!    9207) and exchanges the code with the PKCE verifier and a DPoP proof (RFC 9449): the access
//!    token is bound to the service's DPoP key, useless to anyone who copies it.
//! 4. [`Service::package`] polls `GET /api/v1/transfers/{id}/package` (`Authorization: DPoP`, a
//!    fresh proof each time), honouring `Retry-After`, and opens the HPKE envelope with the
//!    service's key (checking the platform sealed it).
//! 5. [`verify`] runs the platform's checks on the package: archive, receipt signature (with the
//!    platform key the receipt's `kid` names, among [`Service::platform_signing_keys`]) and
//!    contents, then for each dataset the four ordered checks of the seeds (certificate valid,
//!    agency key from it, digest file intact, each file intact). [`Service::verify_package`] runs
//!    it with the keys the service holds and, for a receipt signed with a key it has not read
//!    (the platform replaced its key since), reads the platform's keys again once; [`verify`]
//!    alone leaves that to the caller ([`VerifyError::UnknownPlatformKey`]).
//!
//! ```no_run
//! # async fn demo(roots_pem: &[u8], crl_der: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use mydata_sdk::{AuthorizationRequest, Clock as _, Keys, Service, ServiceConfig, SystemClock, TrustStore};
//! let keys = Keys::generate();
//! let config = ServiceConfig::new("https://mydata.example", "my-service", "https://sp.example/callback", keys)?;
//! let service = Service::discover(config).await?;
//! let pending = service.push(&AuthorizationRequest::new(&["low-income-household"], "tuition reduction")).await?;
//! // redirect the browser to pending.authorize_url ... then, on the callback:
//! # let query = "";
//! let token = service.callback(&pending, query).await?;
//! // The checks' trust root (government CA roots and CRLs) first: the package is handed over once.
//! let mut trust = TrustStore::new();
//! trust.add_roots_pem(roots_pem)?;
//! trust.add_crl_der(crl_der)?;
//! let zip = service.package(&token, std::time::Duration::from_secs(600)).await?;
//! // With the platform's keys, read again if the platform replaced its key since discovery.
//! let report = service.verify_package(&zip, &token.transfer_id, &trust, SystemClock.now()).await?;
//! // Only now is the data in `zip` (see `report.datasets`) the agencies' own.
//! # let _ = report; Ok(()) }
//! ```

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// The clock [`ServiceConfig::with_clock`] takes and the time [`verify`] checks at.
pub use mydata_core::{Clock, SystemClock, Timestamp};
use mydata_package::Es256Signer;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The platform's receipt keys by `kid`, as [`Service::platform_signing_keys`] reads them.
pub use mydata_package::PlatformKeys;
pub use mydata_package::e2e::{Envelope, HpkeKeyPair};
pub use mydata_package::{PackageReport, TrustStore};
/// The P-256 keys [`Keys::new`] and [`Keys::with_dpop_key`] take, and the platform's receipt keys.
pub use p256::ecdsa::{SigningKey, VerifyingKey};

/// Everything that can go wrong on the service's side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The HTTP client could not be built (reqwest's TLS backend or the system's proxy settings).
    #[error("the HTTP client cannot be built: {0}")]
    Client(String),
    /// The platform answered with an OAuth error (RFC 6749 §5.2) or a problem document.
    #[error(
        "the platform refused ({status}): {error}: {description}{}",
        retry_note(retry_after)
    )]
    Refused {
        status: u16,
        error: String,
        description: String,
        /// The response's `Retry-After` (seconds or an HTTP-date, as a wait from now): when the
        /// platform says asking again can succeed (503 `temporarily_unavailable`, 429).
        retry_after: Option<Duration>,
    },
    #[error("the authorization response is not valid: {0}")]
    Callback(String),
    #[error("the package is gone (already retrieved or past its 8 hours)")]
    Gone,
    #[error("the package was not ready within the time allowed")]
    NotReady,
    #[error("the package envelope does not open: {0}")]
    Envelope(String),
    /// The package was handed over but did not open (or did not read as an envelope): `envelope`
    /// holds it as the platform sent it. The platform hands a package over once, so keep it; once
    /// the cause is fixed (say the service's previous key restored), read it back with
    /// `serde_json::from_slice` and [`Service::open`] it.
    #[error(
        "the package was retrieved but does not open ({reason}); keep its envelope: it cannot be fetched again"
    )]
    Unopened {
        envelope: EnvelopeBytes,
        reason: String,
    },
    /// The platform had begun handing the package over (200) but its body could not be read to
    /// the end: the connection broke, or nothing came for [`ServiceConfig::idle_timeout`]. The
    /// platform hands a package over once, so it cannot be fetched again (410 from now on).
    #[error("the package download broke off and it cannot be fetched again: {0}")]
    PackageLost(String),
    /// The platform did not answer within the time allowed: [`ServiceConfig::timeout`] for a
    /// call, [`ServiceConfig::idle_timeout`] between two pieces of a body.
    #[error("the platform's {what} did not come within {} ms", after.as_millis())]
    TimedOut { what: &'static str, after: Duration },
    /// An answer longer than the SDK reads (for an envelope, [`ServiceConfig::max_package_bytes`]):
    /// refused without reading it all.
    #[error("the platform's {what} is longer than {limit} bytes")]
    TooLarge { what: &'static str, limit: usize },
    #[error("{0}")]
    Invalid(String),
}

/// An envelope's JSON as [`Error::Unopened`] hands it back (its `Debug` shows only its length).
#[derive(Clone, PartialEq, Eq)]
pub struct EnvelopeBytes(pub Vec<u8>);

impl std::fmt::Debug for EnvelopeBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnvelopeBytes({} bytes)", self.0.len())
    }
}

impl EnvelopeBytes {
    /// The envelope: `reason`'s failure with the bytes kept.
    fn unopened(bytes: Vec<u8>, reason: impl std::fmt::Display) -> Error {
        Error::Unopened {
            envelope: Self(bytes),
            reason: reason.to_string(),
        }
    }
}

fn retry_note(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!("; retry after {} s", d.as_secs()))
        .unwrap_or_default()
}

/// The service's keys: an ES256 key for client assertions, an X25519 key packages are sealed to,
/// and a P-256 DPoP key its access tokens are bound to (RFC 9449; not registered: each proof
/// carries it). Every process polling for a token must hold the DPoP key the token is bound to.
pub struct Keys {
    signing: SigningKey,
    encryption: HpkeKeyPair,
    /// Encryption keys replaced by `encryption`, newest first: envelopes sealed to them before
    /// the platform saw the new key still open ([`Keys::with_previous_encryption_key`]).
    previous: Vec<HpkeKeyPair>,
    dpop: SigningKey,
    /// Both P-256 keys prepared for signing, with their fixed headers: made on first use.
    prepared: std::sync::OnceLock<Prepared>,
}

/// What every client assertion and DPoP proof reuses: the keys ready for AWS-LC and the encoded
/// protected headers (the assertion's names its `kid`, the proof's carries the DPoP key).
struct Prepared {
    signing: Es256Signer,
    signing_header: String,
    dpop: Es256Signer,
    dpop_header: String,
}

impl Prepared {
    fn new(keys: &Keys) -> Result<Self, Error> {
        let signer = |k: &SigningKey| {
            Es256Signer::new(k.clone()).map_err(|e| Error::Invalid(format!("signing key: {e}")))
        };
        Ok(Self {
            signing: signer(&keys.signing)?,
            signing_header: Es256Signer::header(&serde_json::json!({
                "typ": "JWT", "alg": "ES256", "kid": keys.signing_kid(),
            })),
            dpop: signer(&keys.dpop)?,
            dpop_header: Es256Signer::header(&serde_json::json!({
                "typ": "dpop+jwt", "alg": "ES256", "jwk": ec_public_jwk(&keys.dpop),
            })),
        })
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let previous: Vec<String> = self.previous.iter().map(HpkeKeyPair::kid).collect();
        write!(
            f,
            "Keys(sig {}, enc {}, previous enc {previous:?}, dpop {})",
            self.signing_kid(),
            self.encryption.kid(),
            self.dpop_jkt()
        )
    }
}

impl Keys {
    pub fn generate() -> Self {
        Self::new(
            <SigningKey as p256::elliptic_curve::Generate>::generate(),
            HpkeKeyPair::generate(),
        )
    }

    /// The registered keys, with a fresh DPoP key ([`Keys::with_dpop_key`] to keep one instead).
    pub fn new(signing: SigningKey, encryption: HpkeKeyPair) -> Self {
        Self {
            signing,
            encryption,
            previous: Vec::new(),
            dpop: <SigningKey as p256::elliptic_curve::Generate>::generate(),
            prepared: std::sync::OnceLock::new(),
        }
    }

    /// Also opens envelopes sealed to `key`, an encryption key this one replaced (chosen by the
    /// envelope's `kid`). Keep it for at least 8 hours after the platform has the new key (see
    /// `docs/ONLINE-SERVICES.md`, key rotation). Added after those already kept.
    pub fn with_previous_encryption_key(mut self, key: HpkeKeyPair) -> Self {
        self.previous.push(key);
        self
    }

    /// Replaces the encryption key with `key` (say `HpkeKeyPair::generate()`), keeping the one
    /// replaced as the newest previous key ([`Keys::with_previous_encryption_key`]).
    pub fn with_encryption_key(mut self, key: HpkeKeyPair) -> Self {
        let old = std::mem::replace(&mut self.encryption, key);
        self.previous.insert(0, old);
        self
    }

    /// The encryption key whose thumbprint is `kid` (the envelope's), else the current one.
    fn encryption_for(&self, kid: &str) -> &HpkeKeyPair {
        std::iter::once(&self.encryption)
            .chain(&self.previous)
            .find(|k| k.kid() == kid)
            .unwrap_or(&self.encryption)
    }

    /// All the private keys, to save and [`Keys::from_pem`] later: PKCS#8 PEM blocks (`PRIVATE
    /// KEY`) in this order: the signing key (EC P-256), the DPoP key (EC P-256), the encryption
    /// key (X25519, RFC 8410), then the previous encryption keys. Keep it as secret as the keys.
    pub fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, Error> {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        let bad = |e: p256::pkcs8::Error| Error::Invalid(format!("a key cannot be encoded: {e}"));
        let mut out = zeroize::Zeroizing::new(String::new());
        for key in [&self.signing, &self.dpop] {
            out.push_str(&key.to_pkcs8_pem(LineEnding::LF).map_err(bad)?);
        }
        for key in std::iter::once(&self.encryption).chain(&self.previous) {
            out.push_str(&x25519_to_pem(key).map_err(bad)?);
        }
        Ok(out)
    }

    /// The keys [`Keys::to_pem`] wrote: two EC P-256 keys (signing, DPoP), then one or more
    /// X25519 keys (the current encryption key, then previous ones). Text around the blocks is
    /// ignored.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        use p256::pkcs8::DecodePrivateKey as _;
        let blocks = pem_blocks(pem)?;
        let [signing, dpop, encryption, previous @ ..] = blocks.as_slice() else {
            return Err(Error::Invalid(format!(
                "keys: {} PEM blocks; a signing, a DPoP and an encryption key are needed",
                blocks.len()
            )));
        };
        let ec = |block: &str, what: &str| {
            SigningKey::from_pkcs8_pem(block).map_err(|e| {
                Error::Invalid(format!(
                    "keys: the {what} key is not a P-256 PKCS#8 key: {e}"
                ))
            })
        };
        let (signing, dpop) = (ec(signing, "signing")?, ec(dpop, "DPoP")?);
        let mut keys = Self::new(signing, x25519_from_pem(encryption)?).with_dpop_key(dpop);
        for block in previous {
            keys = keys.with_previous_encryption_key(x25519_from_pem(block)?);
        }
        Ok(keys)
    }

    /// Uses `key` as the DPoP key (say one shared by the service's processes).
    pub fn with_dpop_key(mut self, key: SigningKey) -> Self {
        self.dpop = key;
        self.prepared = std::sync::OnceLock::new();
        self
    }

    fn prepared(&self) -> Result<&Prepared, Error> {
        if let Some(p) = self.prepared.get() {
            return Ok(p);
        }
        let p = Prepared::new(self)?;
        Ok(self.prepared.get_or_init(|| p))
    }

    /// The DPoP key's RFC 7638 thumbprint (`dpop_jkt`; what tokens are bound to).
    pub fn dpop_jkt(&self) -> String {
        mydata_package::jwk_thumbprint(self.dpop.verifying_key())
    }

    /// The signing key's RFC 7638 thumbprint, used as its `kid`.
    pub fn signing_kid(&self) -> String {
        mydata_package::jwk_thumbprint(self.signing.verifying_key())
    }

    /// The public JWK set to register with the platform.
    pub fn public_jwks(&self) -> serde_json::Value {
        let mut sig = ec_public_jwk(&self.signing);
        if let Some(o) = sig.as_object_mut() {
            o.insert("use".into(), "sig".into());
            o.insert("alg".into(), "ES256".into());
            o.insert("kid".into(), self.signing_kid().into());
        }
        serde_json::json!({ "keys": [sig, self.encryption.public_jwk()] })
    }
}

/// The id-X25519 algorithm (RFC 8410 §3).
const X25519_OID: p256::pkcs8::ObjectIdentifier =
    p256::pkcs8::ObjectIdentifier::new_unwrap("1.3.101.110");

/// `key` as a PKCS#8 PEM block (RFC 8410 §7: the private key is a CurvePrivateKey, an OCTET
/// STRING of its 32 bytes, inside the PKCS#8 OCTET STRING).
fn x25519_to_pem(key: &HpkeKeyPair) -> Result<zeroize::Zeroizing<String>, p256::pkcs8::Error> {
    use p256::pkcs8::der::{Encode as _, asn1::OctetStringRef};
    use p256::pkcs8::{
        AlgorithmIdentifierRef, EncodePrivateKey as _, LineEnding, PrivateKeyInfoRef,
    };
    let secret = key.secret_bytes();
    let inner = zeroize::Zeroizing::new(OctetStringRef::new(&secret)?.to_der()?);
    let algorithm = AlgorithmIdentifierRef {
        oid: X25519_OID,
        parameters: None,
    };
    PrivateKeyInfoRef::new(algorithm, OctetStringRef::new(&inner)?).to_pkcs8_pem(LineEnding::LF)
}

/// The X25519 key in a PKCS#8 PEM block ([`x25519_to_pem`]).
fn x25519_from_pem(block: &str) -> Result<HpkeKeyPair, Error> {
    use p256::pkcs8::der::{Decode as _, asn1::OctetStringRef};
    let bad = |why: String| Error::Invalid(format!("keys: the encryption key {why}"));
    let (label, der) = p256::pkcs8::der::pem::decode_vec(block.as_bytes())
        .map_err(|e| bad(format!("is not PEM: {e}")))?;
    let der = zeroize::Zeroizing::new(der);
    if label != "PRIVATE KEY" {
        return Err(bad(format!("is a {label}, not a PRIVATE KEY")));
    }
    let info = p256::pkcs8::PrivateKeyInfoRef::try_from(der.as_slice())
        .map_err(|e| bad(format!("is not PKCS#8: {e}")))?;
    if info.algorithm.oid != X25519_OID || info.algorithm.parameters.is_some() {
        return Err(bad(format!("is {}, not X25519", info.algorithm.oid)));
    }
    let secret = <&OctetStringRef>::from_der(info.private_key.as_bytes())
        .map_err(|e| bad(format!("is not a CurvePrivateKey: {e}")))?;
    HpkeKeyPair::from_secret(secret.as_bytes()).map_err(|e| bad(e.to_string()))
}

/// The PEM blocks of `text`, each from its `-----BEGIN` to its `-----END …-----` line.
fn pem_blocks(text: &str) -> Result<Vec<&str>, Error> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let from = &rest[start..];
        let end = from
            .find("-----END ")
            .and_then(|e| Some(e + 9 + from[e + 9..].find("-----")? + 5))
            .ok_or_else(|| Error::Invalid("keys: a PEM block has no END line".into()))?;
        blocks.push(&from[..end]);
        rest = &from[end..];
    }
    Ok(blocks)
}

/// The public JWK of a P-256 key (`kty`, `crv`, `x`, `y`).
fn ec_public_jwk(key: &SigningKey) -> serde_json::Value {
    let point = key.verifying_key().to_sec1_point(false);
    let coord = |c: Option<&[u8]>| c.map(|c| URL_SAFE_NO_PAD.encode(c)).unwrap_or_default();
    serde_json::json!({
        "kty": "EC", "crv": "P-256",
        "x": coord(point.x().map(|x| x.as_slice())),
        "y": coord(point.y().map(|y| y.as_slice())),
    })
}

/// How a service reaches the platform.
#[derive(Clone)]
pub struct ServiceConfig {
    /// The platform's issuer identifier (its base URL).
    pub issuer: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub keys: Arc<Keys>,
    /// Time for assertions (the system clock unless a test injects one).
    pub clock: Arc<dyn Clock>,
    /// Private so that every client follows no redirect ([`ServiceConfig::with_http`]).
    http: reqwest::Client,
    /// Whether to bind codes and tokens to the DPoP key (on unless [`ServiceConfig::without_dpop`];
    /// the platform requires it of trial and production services and of those registered with
    /// `dpop_bound_access_tokens`).
    pub dpop: bool,
    /// The largest package envelope read ([`DEFAULT_MAX_PACKAGE_BYTES`] unless set). A larger one
    /// is refused ([`Error::TooLarge`]) and, as the platform hands a package over once, lost.
    pub max_package_bytes: usize,
    /// The whole of each call but the package body: metadata, JWKS, PAR, token, and each poll
    /// up to the start of the platform's answer ([`DEFAULT_TIMEOUT`] unless set).
    pub timeout: Duration,
    /// The longest wait for the next piece of the package envelope once its download began, and
    /// of a refusal's body while polling ([`DEFAULT_TIMEOUT`] unless set). The envelope's download
    /// has no total limit: it is handed over once, so a large one on a slow link must not be cut
    /// while it still moves.
    pub idle_timeout: Duration,
}

/// The default [`ServiceConfig::timeout`] and [`ServiceConfig::idle_timeout`], 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// `builder`'s client following no redirect, or why not (with reqwest's reasons: its own message
/// is "builder error"). A redirect would take the request, with its client assertion or token, to
/// an address that is not the platform's; a default client instead would drop the redirect policy
/// and timeout, and can panic itself.
fn http_client(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, Error> {
    let builder = builder.redirect(reqwest::redirect::Policy::none());
    builder.build().map_err(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        Error::Client(why)
    })
}

/// The default [`ServiceConfig::max_package_bytes`], 96 MiB: a package holds at most 64 MiB
/// (what [`verify`] reads, `mydata_package::ReadLimits`), and its envelope is the sealed zip in
/// base64url inside JSON, a third larger.
pub const DEFAULT_MAX_PACKAGE_BYTES: usize = 96 * 1024 * 1024;

/// The largest metadata, JWKS, PAR, token or error body read: they are a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ServiceConfig {
    /// The platform at `issuer` with an HTTP client that follows no redirect (an answer is the
    /// platform's own); each call gives up after [`ServiceConfig::timeout`] and the package
    /// download when it stalls for [`ServiceConfig::idle_timeout`]. Fails only if that client
    /// cannot be built.
    pub fn new(
        issuer: &str,
        client_id: &str,
        redirect_uri: &str,
        keys: Keys,
    ) -> Result<Self, Error> {
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            keys: Arc::new(keys),
            clock: Arc::new(SystemClock),
            // No total timeout on the client: it would cut the package download too. Each call
            // sets its own (`timeout`), the envelope's body is bounded by `idle_timeout`.
            http: http_client(reqwest::Client::builder())?,
            dpop: true,
            max_package_bytes: DEFAULT_MAX_PACKAGE_BYTES,
            timeout: DEFAULT_TIMEOUT,
            idle_timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Plain bearer tokens (a test service not registered for DPoP).
    pub fn without_dpop(mut self) -> Self {
        self.dpop = false;
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The HTTP client built from `builder` instead of the default one (a load test's pool, a
    /// proxy), still following no redirect: the SDK sets that policy on `builder`. The SDK's own
    /// limits ([`ServiceConfig::timeout`], [`ServiceConfig::idle_timeout`]) still apply; do not
    /// set a total `timeout` on `builder`, as it would also cut the package download (a
    /// `connect_timeout` or `read_timeout` is fine). Fails only if the client cannot be built.
    pub fn with_http(mut self, builder: reqwest::ClientBuilder) -> Result<Self, Error> {
        self.http = http_client(builder)?;
        Ok(self)
    }
}

/// The platform's metadata (RFC 8414), the fields a service uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub pushed_authorization_request_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
}

/// What the service asks for.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub datasets: Vec<String>,
    pub purpose: String,
    /// The person's ID number, if the service knows it (sent encrypted to the platform).
    pub login_hint: Option<String>,
    /// A signed identity assertion ([`Service::identity_assertion`]), for a service registered
    /// as a trusted identity verifier: the person then consents without signing in again.
    pub identity_assertion: Option<String>,
}

impl AuthorizationRequest {
    pub fn new(datasets: &[&str], purpose: &str) -> Self {
        Self {
            datasets: datasets.iter().map(|d| (*d).to_owned()).collect(),
            purpose: purpose.to_owned(),
            login_hint: None,
            identity_assertion: None,
        }
    }
}

/// A pushed request waiting for the person: keep `state` and `code_verifier` in the service's
/// session until the callback.
#[derive(Clone, Serialize, Deserialize)]
pub struct Pending {
    pub authorize_url: String,
    pub state: String,
    pub code_verifier: String,
    pub expires_in: u64,
}

/// The access token for one transfer.
#[derive(Clone, Serialize, Deserialize)]
pub struct Token {
    pub access_token: String,
    /// `DPoP` (bound to the service's DPoP key: sent with a proof) or `Bearer`.
    #[serde(default = "bearer")]
    pub token_type: String,
    pub transfer_id: String,
    pub datasets: Vec<String>,
    pub expires_in: u64,
}

// By hand: the PKCE verifier redeems the code, so it stays out of logs.
impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("authorize_url", &self.authorize_url)
            .field("state", &self.state)
            .field("code_verifier", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

// By hand: the access token fetches the package, so it stays out of logs.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("transfer_id", &self.transfer_id)
            .field("datasets", &self.datasets)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

fn bearer() -> String {
    "Bearer".into()
}

impl Token {
    /// Whether the token is DPoP-bound.
    pub fn is_dpop(&self) -> bool {
        self.token_type.eq_ignore_ascii_case("DPoP")
    }
}

/// A service talking to the platform.
#[derive(Debug, Clone)]
pub struct Service {
    config: ServiceConfig,
    metadata: Metadata,
    /// The platform's X25519 keys (the first for login_hint; the one an envelope's `sender_kid`
    /// names to open it), read again when an envelope names a key not among them.
    platform_kem: Arc<std::sync::RwLock<Vec<[u8; 32]>>>,
    /// The platform's ES256 receipt keys by `kid` (the current one and those it replaced that it
    /// still publishes), read again by [`Service::refresh_platform_keys`].
    platform_sig: Arc<std::sync::RwLock<PlatformKeys>>,
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The refusal in `res`, read at `config`'s clock (for a `Retry-After` date). An OAuth error or
/// problem document says what it says; any other body (a proxy's page, plain text) gives the
/// status's reason and the start of the body.
async fn refused(res: reqwest::Response, config: &ServiceConfig) -> Error {
    let status = res.status();
    let retry_after = retry_after(res.headers(), wall_clock(&*config.clock));
    // Only its start matters: a longer body is cut, not refused.
    let bytes = read_up_to(res, MAX_BODY_BYTES, config.idle_timeout, "error body")
        .await
        .map(|(start, _)| start)
        .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let text = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (error, description) = if body.get("error").is_some() {
        (text("error"), text("error_description"))
    } else {
        (text("code"), text("detail"))
    };
    let (error, description) = if error.is_empty() {
        let reason = status.canonical_reason().unwrap_or("no reason given");
        (reason.to_owned(), excerpt(&bytes))
    } else {
        (error, description)
    };
    Error::Refused {
        status: status.as_u16(),
        error,
        description,
        retry_after,
    }
}

/// `body` read as JSON: `what` from the platform, else Error::Invalid naming it.
fn json<T: serde::de::DeserializeOwned>(body: Vec<u8>, what: &str) -> Result<T, Error> {
    serde_json::from_slice(&body)
        .map_err(|e| Error::Invalid(format!("the platform's {what} is not valid: {e}")))
}

/// `res`'s body if it holds at most `limit` bytes; refused as soon as it is known to be longer
/// (by its Content-Length or while reading), so an endless body costs no more than `limit`. Given
/// up when nothing comes for `idle`.
async fn read_body(
    res: reqwest::Response,
    limit: usize,
    idle: Duration,
    what: &'static str,
) -> Result<Vec<u8>, Error> {
    match read_up_to(res, limit, idle, what).await? {
        (body, true) => Ok(body),
        (_, false) => Err(Error::TooLarge { what, limit }),
    }
}

/// Up to `limit` bytes of `res`'s body, and whether that is all of it; given up when nothing
/// comes for `idle`.
async fn read_up_to(
    mut res: reqwest::Response,
    limit: usize,
    idle: Duration,
    what: &'static str,
) -> Result<(Vec<u8>, bool), Error> {
    if res.content_length().is_some_and(|n| n > limit as u64) {
        return Ok((Vec::new(), false));
    }
    let mut body = Vec::new();
    loop {
        let next = tokio::time::timeout(idle, res.chunk())
            .await
            .map_err(|_| Error::TimedOut { what, after: idle })??;
        let Some(chunk) = next else { break };
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// At most 200 characters of `body` on one line, for an error message.
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let line = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        return "(no body)".into();
    }
    if line.chars().count() <= MAX {
        return line;
    }
    let mut cut: String = line.chars().take(MAX - 1).collect();
    cut.push('…');
    cut
}

impl Service {
    /// Reads the platform's metadata and keys; checks the metadata names the configured issuer.
    pub async fn discover(config: ServiceConfig) -> Result<Self, Error> {
        let url = format!("{}/.well-known/oauth-authorization-server", config.issuer);
        let res = config.http.get(&url).timeout(config.timeout).send().await?;
        if !res.status().is_success() {
            return Err(refused(res, &config).await);
        }
        let metadata: Metadata = json(
            read_body(res, MAX_BODY_BYTES, config.idle_timeout, "metadata").await?,
            "metadata",
        )?;
        if metadata.issuer != config.issuer {
            return Err(Error::Invalid(format!(
                "the metadata names issuer {} instead of {}",
                metadata.issuer, config.issuer
            )));
        }
        let (platform_kem, platform_sig) = platform_keys(&config, &metadata.jwks_uri).await?;
        Ok(Self {
            config,
            metadata,
            platform_kem: Arc::new(std::sync::RwLock::new(platform_kem)),
            platform_sig: Arc::new(std::sync::RwLock::new(platform_sig)),
        })
    }

    /// Reads the platform's keys again (after it replaced one): its X25519 keys and its receipt
    /// keys. The keys read replace those held, so a key the platform withdrew is no longer
    /// trusted.
    pub async fn refresh_platform_keys(&self) -> Result<(), Error> {
        let (kem, sig) = platform_keys(&self.config, &self.metadata.jwks_uri).await?;
        *self
            .platform_kem
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = kem;
        *self
            .platform_sig
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = sig;
        Ok(())
    }

    /// The platform's X25519 key whose thumbprint is `kid`, else its first (for login_hint).
    fn platform_kem(&self, kid: Option<&str>) -> Option<[u8; 32]> {
        let keys = self
            .platform_kem
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match kid {
            Some(kid) => keys
                .iter()
                .find(|k| mydata_package::e2e::okp_thumbprint(k) == kid)
                .copied(),
            None => keys.first().copied(),
        }
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// [`verify`] with the platform's receipt keys this service holds. A receipt signed with a
    /// key it has not read (the platform replaced its key since discovery) makes it read the
    /// platform's keys again, once, and verify with them; a key still unknown then is
    /// [`VerifyError::NotPlatformKey`], keys that cannot be read
    /// [`VerifyError::PlatformKeysUnavailable`].
    pub async fn verify_package(
        &self,
        zip: &[u8],
        transfer_id: &str,
        trust: &TrustStore,
        now: Timestamp,
    ) -> Result<PackageReport, VerifyError> {
        let first = verify(zip, transfer_id, trust, &self.platform_signing_keys(), now);
        let Err(VerifyError::UnknownPlatformKey { kid }) = first else {
            return first;
        };
        if let Err(e) = self.refresh_platform_keys().await {
            return Err(VerifyError::PlatformKeysUnavailable {
                kid,
                reason: e.to_string(),
            });
        }
        match verify(zip, transfer_id, trust, &self.platform_signing_keys(), now) {
            Err(VerifyError::UnknownPlatformKey { kid }) => {
                Err(VerifyError::NotPlatformKey { kid })
            }
            other => other,
        }
    }

    /// The platform's receipt-signing keys by `kid`, as last read, for [`verify`]: the key it
    /// signs with now, then those it replaced and still publishes.
    pub fn platform_signing_keys(&self) -> PlatformKeys {
        self.platform_sig
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A fresh `private_key_jwt` assertion for `aud` (RFC 7523): iss = sub = client_id, 60 s.
    pub fn client_assertion(&self, aud: &str) -> Result<String, Error> {
        let now = self.config.clock.now().millis() / 1000;
        let claims = serde_json::json!({
            "iss": self.config.client_id, "sub": self.config.client_id, "aud": aud,
            "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
        });
        self.sign(&claims)
    }

    /// Signs `claims` with the service's ES256 key (also for identity assertions).
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, Error> {
        let keys = self.config.keys.prepared()?;
        Ok(keys
            .signing
            .sign(&keys.signing_header, claims.to_string().as_bytes()))
    }

    /// A fresh DPoP proof (RFC 9449 §4) for one request: `htm` its method, `htu` its URI (without
    /// query), and with an access token its hash as `ath`. Signed with the DPoP key, which it
    /// carries as `jwk`; a new `jti` each time, so every request needs its own proof.
    pub fn dpop_proof(
        &self,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
    ) -> Result<String, Error> {
        let keys = self.config.keys.prepared()?;
        let mut claims = serde_json::json!({
            "jti": uuid::Uuid::new_v4().to_string(), "htm": htm, "htu": htu,
            "iat": self.config.clock.now().millis() / 1000,
        });
        if let Some(t) = access_token {
            claims["ath"] = URL_SAFE_NO_PAD.encode(Sha256::digest(t.as_bytes())).into();
        }
        Ok(keys
            .dpop
            .sign(&keys.dpop_header, claims.to_string().as_bytes()))
    }

    /// Where `token`'s package is fetched; refuses a transfer id that is not one plain path
    /// segment (the token would be sent to another path).
    pub fn package_url(&self, token: &Token) -> Result<String, Error> {
        check_transfer_id(&token.transfer_id)?;
        Ok(format!(
            "{}/api/v1/transfers/{}/package",
            self.metadata.issuer, token.transfer_id
        ))
    }

    /// A GET of `url` (a resource of the platform) with `token`: `Authorization: DPoP` and a fresh
    /// proof for a DPoP-bound token, `Bearer` otherwise.
    pub fn resource_get(&self, token: &Token, url: &str) -> Result<reqwest::RequestBuilder, Error> {
        let req = self.config.http.get(url);
        if !token.is_dpop() {
            return Ok(req.bearer_auth(&token.access_token));
        }
        let htu = url.split(['?', '#']).next().unwrap_or(url);
        let proof = self.dpop_proof("GET", htu, Some(&token.access_token))?;
        Ok(req
            .header(
                reqwest::header::AUTHORIZATION,
                format!("DPoP {}", token.access_token),
            )
            .header("DPoP", proof))
    }

    /// Asserts, as a trusted identity verifier, that the service verified the person with this ID
    /// number at `level` (1 strongest to 4): a JWT signed with the service's key, `aud` the
    /// issuer, valid 60 s, fresh `jti`. Put it in [`AuthorizationRequest::identity_assertion`].
    /// The platform accepts it only from a service registered as trusted, and only at or above
    /// the requested datasets' required level.
    pub fn identity_assertion(&self, id_number: &str, level: u8) -> Result<String, Error> {
        if !(1..=4).contains(&level) {
            return Err(Error::Invalid("level must be 1 to 4".into()));
        }
        let now = self.config.clock.now().millis() / 1000;
        let claims = serde_json::json!({
            "iss": self.config.client_id, "sub": id_number, "aud": self.metadata.issuer,
            "level": level, "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string(),
        });
        self.sign(&claims)
    }

    /// Encrypts an ID number to the platform for `login_hint`.
    pub fn login_hint(&self, id_number: &str) -> Result<String, Error> {
        let kem = self
            .platform_kem(None)
            .ok_or_else(|| Error::Invalid("the platform publishes no X25519 key".into()))?;
        mydata_package::e2e::seal_login_hint(&kem, &self.config.client_id, id_number)
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Pushes the authorization request; returns where to send the browser.
    pub async fn push(&self, req: &AuthorizationRequest) -> Result<Pending, Error> {
        let verifier = random_b64(32);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let state = random_b64(16);
        let details = serde_json::json!([{ "type": "mydata_transfer", "datasets": req.datasets, "purpose": req.purpose }]);
        let mut form = vec![
            ("response_type", "code".to_owned()),
            ("client_id", self.config.client_id.clone()),
            ("redirect_uri", self.config.redirect_uri.clone()),
            ("state", state.clone()),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256".to_owned()),
            ("authorization_details", details.to_string()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            (
                "client_assertion",
                self.client_assertion(&self.metadata.issuer)?,
            ),
        ];
        if let Some(id) = &req.login_hint {
            form.push(("login_hint", self.login_hint(id)?));
        }
        if self.config.dpop {
            form.push(("dpop_jkt", self.config.keys.dpop_jkt()));
        }
        if let Some(a) = &req.identity_assertion {
            form.push(("identity_assertion", a.clone()));
        }
        let res = self
            .config
            .http
            .post(&self.metadata.pushed_authorization_request_endpoint)
            .timeout(self.config.timeout)
            .form(&form)
            .send()
            .await?;
        if res.status().as_u16() != 201 {
            return Err(refused(res, &self.config).await);
        }
        #[derive(Deserialize)]
        struct ParResponse {
            request_uri: String,
            expires_in: u64,
        }
        let body = read_body(
            res,
            MAX_BODY_BYTES,
            self.config.idle_timeout,
            "PAR response",
        )
        .await?;
        let p: ParResponse = json(body, "PAR response")?;
        let mut url = url::Url::parse(&self.metadata.authorization_endpoint)
            .map_err(|e| Error::Invalid(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.config.client_id)
            .append_pair("request_uri", &p.request_uri);
        Ok(Pending {
            authorize_url: url.into(),
            state,
            code_verifier: verifier,
            expires_in: p.expires_in,
        })
    }

    /// Handles the redirect back (its query string): checks `state` and `iss`, then exchanges the
    /// code. A refusal by the person comes back as `Error::Refused` with `access_denied`.
    pub async fn callback(&self, pending: &Pending, query: &str) -> Result<Token, Error> {
        let params: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.trim_start_matches('?').as_bytes())
                .into_owned()
                .collect();
        if params.get("iss") != Some(&self.metadata.issuer) {
            return Err(Error::Callback(
                "iss is missing or names another platform (mix-up)".into(),
            ));
        }
        if params.get("state") != Some(&pending.state) {
            return Err(Error::Callback("state does not match this request".into()));
        }
        if let Some(error) = params.get("error") {
            return Err(Error::Refused {
                status: 0,
                error: error.clone(),
                description: params.get("error_description").cloned().unwrap_or_default(),
                retry_after: None,
            });
        }
        let code = params
            .get("code")
            .ok_or_else(|| Error::Callback("no code".into()))?;
        self.exchange(code, &pending.code_verifier).await
    }

    /// Exchanges a code (with its PKCE verifier) for the transfer's access token.
    pub async fn exchange(&self, code: &str, code_verifier: &str) -> Result<Token, Error> {
        let form = [
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", self.config.redirect_uri.clone()),
            ("code_verifier", code_verifier.to_owned()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            (
                "client_assertion",
                self.client_assertion(&self.metadata.issuer)?,
            ),
        ];
        let mut req = self
            .config
            .http
            .post(&self.metadata.token_endpoint)
            .timeout(self.config.timeout);
        if self.config.dpop {
            req = req.header(
                "DPoP",
                self.dpop_proof("POST", &self.metadata.token_endpoint, None)?,
            );
        }
        let res = req.form(&form).send().await?;
        if !res.status().is_success() {
            return Err(refused(res, &self.config).await);
        }
        let body = read_body(
            res,
            MAX_BODY_BYTES,
            self.config.idle_timeout,
            "token response",
        )
        .await?;
        let body: serde_json::Value = json(body, "token response")?;
        let s = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        // Without these the next call would be to `/transfers//package` with an empty token.
        let missing = |what: &str| Error::Invalid(format!("the token response has no {what}"));
        let access_token = Some(s(&body, "access_token"))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("access_token"))?;
        let details = body
            .get("authorization_details")
            .and_then(|d| d.get(0))
            .ok_or_else(|| missing("authorization_details"))?;
        let transfer_id = Some(s(details, "transfer_id"))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("transfer_id in authorization_details"))?;
        check_transfer_id(&transfer_id)?;
        // The type decides how the token is sent (`resource_get`): it must be the one asked for,
        // compared without case (RFC 6749 §7.1), or a token would go out the wrong way.
        let token_type = Some(s(&body, "token_type"))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| missing("token_type"))?;
        let asked = if self.config.dpop { "DPoP" } else { "Bearer" };
        if !token_type.eq_ignore_ascii_case(asked) {
            return Err(Error::Invalid(format!(
                "the token response's token_type is {token_type}, not the {asked} the service asked for"
            )));
        }
        Ok(Token {
            access_token,
            token_type,
            transfer_id,
            datasets: details
                .get("datasets")
                .and_then(|d| d.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            expires_in: body
                .get("expires_in")
                .and_then(|e| e.as_u64())
                .unwrap_or_default(),
        })
    }

    /// Retrieves the sealed package once and opens it: polls while the platform answers 202 (not
    /// ready), 429 (too many requests) or 503 (its database out of reach: nothing changed),
    /// waiting what `Retry-After` says (seconds or an HTTP-date; at least 1 s), at most `max_wait`
    /// in all. When the platform asks for a wait past `max_wait`, or longer than 300 s (more than
    /// it ever asks), it stops at once: [`Error::NotReady`] for 202, the platform's
    /// [`Error::Refused`] otherwise. `Duration::MAX` means no limit of the caller's.
    ///
    /// The envelope's download is bounded only by [`ServiceConfig::idle_timeout`] between two
    /// pieces and by [`ServiceConfig::max_package_bytes`]; if it breaks off after the platform
    /// answered 200, the result is [`Error::PackageLost`]: the platform has marked the package
    /// taken, and it cannot be fetched again.
    ///
    /// An envelope sealed with a platform key other than the one read at discovery (the platform
    /// replaced its key) makes it read the platform's keys again and open it with the one named.
    /// If the package still does not open, the error is [`Error::Unopened`] carrying the envelope:
    /// keep it, as it cannot be fetched again.
    pub async fn package(&self, token: &Token, max_wait: Duration) -> Result<Vec<u8>, Error> {
        let envelope = self.fetch_envelope(token, max_wait).await?;
        let kept = |reason: &dyn std::fmt::Display| match serde_json::to_vec(&envelope) {
            Ok(bytes) => EnvelopeBytes::unopened(bytes, reason),
            Err(e) => Error::Envelope(format!("{reason} (and it cannot be kept: {e})")),
        };
        if self.platform_kem(Some(&envelope.sender_kid)).is_none()
            && let Err(e) = self.refresh_platform_keys().await
        {
            return Err(kept(&format!(
                "sealed with platform key {}, and the platform's keys cannot be read: {e}",
                envelope.sender_kid
            )));
        }
        self.open(token, &envelope).map_err(|e| match e {
            Error::Envelope(reason) => kept(&reason),
            other => other,
        })
    }

    /// The raw envelope (for services that store it before opening); polls as
    /// [`Service::package`] does.
    pub async fn fetch_envelope(
        &self,
        token: &Token,
        max_wait: Duration,
    ) -> Result<Envelope, Error> {
        let url = self.package_url(token)?;
        let deadline = deadline_after(tokio::time::Instant::now(), max_wait);
        // Bounded: every round either returns or waits at least one second.
        for _ in 0..10_000 {
            // Each request only within what is left of max_wait (a platform that does not answer
            // would otherwise hold the caller for the whole call timeout), and its answer's start
            // within the call timeout; no total timeout on the request, which would cover the body.
            let sent = self.resource_get(token, &url)?.send();
            let timeout = self.config.timeout;
            let res = tokio::time::timeout(timeout, tokio::time::timeout_at(deadline, sent))
                .await
                .map_err(|_| Error::TimedOut {
                    what: "package answer",
                    after: timeout,
                })?
                .map_err(|_| Error::NotReady)??;
            match res.status().as_u16() {
                200 => {
                    // Not cut at the deadline nor by a total timeout, only when it stalls: the
                    // platform hands the package over once.
                    let limit = self.config.max_package_bytes;
                    let idle = self.config.idle_timeout;
                    let bytes = match read_body(res, limit, idle, "package envelope").await {
                        Ok(bytes) => bytes,
                        Err(e @ Error::TooLarge { .. }) => return Err(e),
                        Err(e) => return Err(Error::PackageLost(e.to_string())),
                    };
                    return match serde_json::from_slice(&bytes) {
                        Ok(envelope) => Ok(envelope),
                        Err(e) => Err(EnvelopeBytes::unopened(
                            bytes,
                            format!("not an envelope: {e}"),
                        )),
                    };
                }
                status @ (202 | 429 | 503) => {
                    let wait = retry_after(res.headers(), wall_clock(&*self.config.clock))
                        .unwrap_or(MIN_RETRY_AFTER)
                        .max(MIN_RETRY_AFTER);
                    // Polling before the time the platform gave would only be refused again.
                    let next = tokio::time::Instant::now().checked_add(wait);
                    let fits = next.filter(|n| *n <= deadline && wait <= MAX_RETRY_AFTER);
                    let Some(next) = fits else {
                        return Err(if status == 202 {
                            Error::NotReady
                        } else {
                            refused(res, &self.config).await
                        });
                    };
                    tokio::time::sleep_until(next).await;
                }
                410 => return Err(Error::Gone),
                _ => return Err(refused(res, &self.config).await),
            }
        }
        Err(Error::NotReady)
    }

    /// Opens an envelope for `token`'s transfer with the service's key its `kid` names (the
    /// current one or one it replaced), checking the platform sealed it (a re-encrypted or
    /// misdirected envelope is refused) with the key its `sender_kid` names, among those read
    /// from the platform (else the first of them).
    pub fn open(&self, token: &Token, envelope: &Envelope) -> Result<Vec<u8>, Error> {
        let sender = self
            .platform_kem(Some(&envelope.sender_kid))
            .or_else(|| self.platform_kem(None))
            .ok_or_else(|| Error::Envelope("the platform publishes no X25519 key".into()))?;
        mydata_package::e2e::open_package(
            self.config.keys.encryption_for(&envelope.kid),
            &sender,
            &token.transfer_id,
            &self.config.client_id,
            envelope,
        )
        .map(|z| z.to_vec())
        .map_err(|e| Error::Envelope(e.to_string()))
    }
}

/// The platform's X25519 keys and ES256 receipt keys (at least one of each), from its JWKS at
/// `uri`.
async fn platform_keys(
    config: &ServiceConfig,
    uri: &str,
) -> Result<(Vec<[u8; 32]>, PlatformKeys), Error> {
    let res = config.http.get(uri).timeout(config.timeout).send().await?;
    if !res.status().is_success() {
        return Err(refused(res, config).await);
    }
    let jwks: serde_json::Value = json(
        read_body(res, MAX_BODY_BYTES, config.idle_timeout, "JWKS").await?,
        "JWKS",
    )?;
    let keys = jwks
        .get("keys")
        .and_then(|k| k.as_array())
        .cloned()
        .unwrap_or_default();
    let kem: Vec<[u8; 32]> = keys
        .iter()
        .filter_map(|k| mydata_package::e2e::x25519_from_jwk(k).ok())
        .collect();
    if kem.is_empty() {
        return Err(Error::Invalid(
            "the platform publishes no X25519 key".into(),
        ));
    }
    let sig = PlatformKeys::from_jwk_set(&jwks);
    if sig.is_empty() {
        return Err(Error::Invalid("the platform publishes no ES256 key".into()));
    }
    Ok((kem, sig))
}

/// `clock`'s time, to read HTTP-dates against.
fn wall_clock(clock: &dyn Clock) -> std::time::SystemTime {
    let millis = u64::try_from(clock.now().millis()).unwrap_or(0);
    std::time::SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(millis))
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
}

/// The shortest wait between polls, whatever `Retry-After` says (0, a date past, or none).
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest `Retry-After` a poll sleeps through. The platform asks for 1 to 300 s (202 while
/// agencies answer) or 60 s (503); a longer ask ends the poll with the platform's answer rather
/// than holding the caller for it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `now + wait`; a century on if that does not fit (`Duration::MAX` means no limit).
fn deadline_after(now: tokio::time::Instant, wait: Duration) -> tokio::time::Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    now.checked_add(wait)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}

/// A response's `Retry-After` (RFC 9110 §10.2.3), delay-seconds or an HTTP-date, as the wait
/// from `now` (zero for a date past). None when absent or unreadable.
fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: std::time::SystemTime,
) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is a very long wait, not none.
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A transfer id goes into the package URL's path: refuse one that is empty, a dot segment, or
/// could end, escape or split the segment there.
fn check_transfer_id(id: &str) -> Result<(), Error> {
    let bad =
        |c: char| matches!(c, '/' | '\\' | '?' | '#' | '%') || c.is_whitespace() || c.is_control();
    if id.is_empty() || id == "." || id == ".." || id.chars().any(bad) {
        return Err(Error::Invalid(format!(
            "the transfer id {id:?} is not one plain URL path segment"
        )));
    }
    Ok(())
}

/// Why [`verify`] did not accept a package.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Every check passed, but the receipt is for another transfer (a package swapped in).
    #[error("the package is for transfer {found}, not {expected}")]
    WrongTransfer { expected: String, found: String },
    /// The receipt is signed with a platform key (`kid`) not among the keys given: the platform
    /// replaced its key after they were read. Call [`Service::refresh_platform_keys`], then verify
    /// again with [`Service::platform_signing_keys`] ([`Service::verify_package`] does both); a key
    /// still unknown then is not the platform's.
    #[error(
        "the receipt is signed by platform key {kid}, which this service has not read: call Service::refresh_platform_keys, then verify again"
    )]
    UnknownPlatformKey { kid: String },
    /// [`Service::verify_package`] read the platform's keys again and the receipt's key (`kid`)
    /// is still not among them: the platform did not sign this receipt.
    #[error(
        "the receipt is signed by key {kid}, which the platform does not publish: the package is not the platform's"
    )]
    NotPlatformKey { kid: String },
    /// [`Service::verify_package`] needed the platform's keys again for the receipt's key (`kid`)
    /// and could not read them; nothing was decided about the package: try again later.
    #[error(
        "the receipt is signed by platform key {kid}, and the platform's keys cannot be read now ({reason}): verify again later"
    )]
    PlatformKeysUnavailable { kid: String, reason: String },
    /// A check failed; the report has every verdict.
    #[error("the package did not verify: {}", first_failure(.0))]
    Failed(Box<PackageReport>),
}

/// The first check of `report` that did not pass, with its reason.
fn first_failure(report: &PackageReport) -> String {
    let receipt = [
        ("archive", report.archive.error().map(ToString::to_string)),
        (
            "receipt signature",
            report.receipt_signature.error().map(ToString::to_string),
        ),
        (
            "receipt contents",
            report.receipt_contents.error().map(ToString::to_string),
        ),
    ];
    if let Some((step, Some(e))) = receipt.into_iter().find(|(_, e)| e.is_some()) {
        return format!("{step}: {e}");
    }
    if !report.receipt_signature.is_passed() && report.platform_key_given {
        return "receipt signature: not checked".into();
    }
    if report.datasets.is_empty() {
        return "the package holds no dataset".into();
    }
    for d in &report.datasets {
        if let Some((step, e)) = d
            .steps()
            .into_iter()
            .find_map(|(n, v)| Some((n, v.error()?)))
        {
            return format!("dataset {}: {step}: {e}", d.dataset_id);
        }
    }
    "a check did not run".into()
}

/// Verifies an opened package: the archive, the platform receipt (signature, with the key of
/// `platform_keys` its `kid` names, and contents, and that it is for `transfer_id`), then the four
/// ordered checks on every dataset. `trust` holds the government CA roots and CRLs;
/// `platform_keys` is [`Service::platform_signing_keys`] (or one key: `PlatformKeys::from(key)`).
pub fn verify(
    zip: &[u8],
    transfer_id: &str,
    trust: &TrustStore,
    platform_keys: &PlatformKeys,
    now: Timestamp,
) -> Result<PackageReport, VerifyError> {
    let report = mydata_package::verify_package_with_keys(zip, trust, platform_keys, now);
    if let mydata_package::Verdict::Failed(mydata_package::ReceiptError::UnknownKey { kid }) =
        &report.receipt_signature
    {
        return Err(VerifyError::UnknownPlatformKey { kid: kid.clone() });
    }
    let found = report.receipt.as_ref().map(|r| r.transfer_id.clone());
    match found {
        Some(found) if report.is_ok() && found != transfer_id => Err(VerifyError::WrongTransfer {
            expected: transfer_id.to_owned(),
            found,
        }),
        Some(_) if report.is_ok() => Ok(report),
        _ => Err(VerifyError::Failed(Box::new(report))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A stand-in platform on a loopback port: its metadata (every endpoint under its base) and
    /// `routes`.
    async fn serve(routes: axum::Router) -> String {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let b = base.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(move || async move {
                    axum::Json(serde_json::json!({
                        "issuer": b, "authorization_endpoint": format!("{b}/oauth/authorize"),
                        "pushed_authorization_request_endpoint": format!("{b}/oauth/par"),
                        "token_endpoint": format!("{b}/oauth/token"), "jwks_uri": format!("{b}/jwks"),
                    }))
                }),
            )
            .merge(routes);
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    /// `/jwks` with a fresh X25519 and ES256 key.
    fn jwks() -> axum::Router {
        let kem = HpkeKeyPair::generate().public_jwk();
        let sig = ec_public_jwk(&<SigningKey as p256::elliptic_curve::Generate>::generate());
        axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || async move {
                axum::Json(serde_json::json!({ "keys": [kem, sig] }))
            }),
        )
    }

    /// A stand-in platform with keys and `routes`.
    async fn stand_in(routes: axum::Router) -> String {
        serve(jwks().merge(routes)).await
    }

    /// A platform that answers the package endpoint with 503 (Retry-After 1) `outages` times, then
    /// with an envelope; counts the calls.
    async fn platform(outages: usize) -> (String, Arc<AtomicUsize>) {
        polled(503, "1", outages).await
    }

    /// A platform that answers the package endpoint `times` times with `status` and
    /// `Retry-After: retry_after` (none if empty), then with an envelope; counts the calls.
    async fn polled(status: u16, retry_after: &str, times: usize) -> (String, Arc<AtomicUsize>) {
        use axum::response::IntoResponse as _;
        use axum::routing::get;
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let retry_after = retry_after.to_owned();
        let app = axum::Router::new().route(
            "/api/v1/transfers/t1/package",
            get(move || async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                if n < times {
                    let status = axum::http::StatusCode::from_u16(status).unwrap();
                    let body =
                        r#"{"error":"temporarily_unavailable","error_description":"no database"}"#;
                    let mut res = (status, body).into_response();
                    if !retry_after.is_empty() {
                        res.headers_mut()
                            .insert("retry-after", retry_after.parse().unwrap());
                    }
                    return res;
                }
                let envelope = serde_json::json!({
                    "typ": "mydata-package+hpke", "suite": "s", "kid": "k", "sender_kid": "p",
                    "transfer_id": "t1", "client_id": "svc", "enc": "e", "ct": "c",
                });
                axum::Json(envelope).into_response()
            }),
        );
        (stand_in(app).await, calls)
    }

    /// The service discovered at a stand-in platform, with the platform's call count.
    async fn service_of((base, calls): (String, Arc<AtomicUsize>)) -> (Service, Arc<AtomicUsize>) {
        let config = ServiceConfig::new(&base, "svc", "https://svc/cb", Keys::generate()).unwrap();
        (Service::discover(config).await.unwrap(), calls)
    }

    fn token() -> Token {
        Token {
            access_token: "at".into(),
            token_type: "Bearer".into(),
            transfer_id: "t1".into(),
            datasets: vec![],
            expires_in: 60,
        }
    }

    #[test]
    fn debug_output_leaves_out_the_token_and_the_code_verifier() {
        let token = Token {
            access_token: "secret-access-token".into(),
            ..token()
        };
        let shown = format!("{token:?} {token:#?}");
        assert!(!shown.contains("secret-access-token"), "{shown}");
        assert!(shown.contains("t1"), "{shown}");
        let pending = Pending {
            authorize_url: "https://p/oauth/authorize".into(),
            state: "st".into(),
            code_verifier: "secret-code-verifier".into(),
            expires_in: 60,
        };
        let shown = format!("{pending:?} {pending:#?}");
        assert!(!shown.contains("secret-code-verifier"), "{shown}");
        assert!(shown.contains("oauth/authorize"), "{shown}");
    }

    #[tokio::test]
    async fn the_package_is_fetched_again_after_the_platform_was_unavailable() {
        let (service, calls) = service_of(platform(1).await).await;
        let envelope = service
            .fetch_envelope(&token(), Duration::from_secs(10))
            .await
            .expect("the envelope once the platform is back");
        assert_eq!(envelope.transfer_id, "t1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Longer than it may wait: the platform's refusal, not a hang.
        let (service, calls) = service_of(platform(usize::MAX).await).await;
        let err = service
            .fetch_envelope(&token(), Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 503, error, .. } if error == "temporarily_unavailable"),
            "{err:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// A platform whose token endpoint answers 200 with `body`, for a service asking for
    /// DPoP-bound tokens if `dpop`, bearer tokens otherwise.
    async fn token_endpoint(body: serde_json::Value, dpop: bool) -> Service {
        let app = axum::Router::new().route(
            "/oauth/token",
            axum::routing::post(move || async move { axum::Json(body) }),
        );
        let config = config_at(&stand_in(app).await).unwrap();
        let config = if dpop { config } else { config.without_dpop() };
        Service::discover(config).await.unwrap()
    }

    #[tokio::test]
    async fn a_token_response_without_token_transfer_or_the_type_asked_for_is_refused_by_name() {
        let details = serde_json::json!([{ "type": "mydata_transfer", "transfer_id": "t1", "datasets": ["d"] }]);
        let full = serde_json::json!({
            "access_token": "at", "token_type": "Bearer", "expires_in": 60,
            "authorization_details": details,
        });
        let service = token_endpoint(full.clone(), false).await;
        let token = service.exchange("code", "verifier").await.unwrap();
        assert_eq!(
            (token.access_token.as_str(), token.transfer_id.as_str()),
            ("at", "t1")
        );
        // Each field left out, empty or not a plain ID: refused, naming it.
        let without = |f: &str| {
            let mut b = full.clone();
            b.as_object_mut().unwrap().remove(f);
            b
        };
        let typed = |t: &str| {
            let mut b = full.clone();
            b["token_type"] = t.into();
            b
        };
        // The type asked for, in any case (RFC 6749 §7.1), is taken as the platform wrote it.
        for (dpop, t) in [
            (false, "bearer"),
            (false, "BEARER"),
            (true, "DPoP"),
            (true, "dpop"),
        ] {
            let token = token_endpoint(typed(t), dpop)
                .await
                .exchange("code", "verifier")
                .await
                .unwrap_or_else(|e| panic!("{t} (dpop {dpop}): {e:?}"));
            assert_eq!((token.token_type.as_str(), token.is_dpop()), (t, dpop));
        }
        let mut no_transfer = full.clone();
        no_transfer["authorization_details"][0]
            .as_object_mut()
            .unwrap()
            .remove("transfer_id");
        let mut empty = full.clone();
        empty["access_token"] = "".into();
        let mut odd = full.clone();
        odd["authorization_details"][0]["transfer_id"] = "../t1".into();
        // Whether the service asks for DPoP, the body, the field the refusal names.
        for (dpop, body, named) in [
            (false, without("access_token"), "access_token"),
            (
                false,
                without("authorization_details"),
                "authorization_details",
            ),
            (false, no_transfer, "transfer_id"),
            (false, empty, "access_token"),
            (false, odd, "transfer"),
            // No type, or not the one asked for: the token would be sent the wrong way.
            (false, without("token_type"), "token_type"),
            (false, typed(""), "token_type"),
            (false, typed("DPoP"), "token_type"),
            (false, typed("Bearer-ish"), "token_type"),
            (false, typed("mac"), "token_type"),
            (true, without("token_type"), "token_type"),
            (true, typed("Bearer"), "token_type"),
            (true, typed("bearer"), "token_type"),
            (true, typed("DPoP "), "token_type"),
        ] {
            let err = token_endpoint(body.clone(), dpop)
                .await
                .exchange("code", "verifier")
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::Invalid(m) if m.contains(named)),
                "{body} (dpop {dpop}): {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_transfer_id_that_is_not_one_path_segment_is_not_put_in_the_url() {
        let (service, calls) = service_of(platform(0).await).await;
        assert!(
            service
                .package_url(&token())
                .unwrap()
                .ends_with("/api/v1/transfers/t1/package")
        );
        for id in [
            "", "a/b", "a?b", "a#b", "a%2Fb", "a b", "a\tb", "a\\b", ".", "..",
        ] {
            let t = Token {
                transfer_id: id.into(),
                ..token()
            };
            assert!(
                matches!(service.package_url(&t), Err(Error::Invalid(_))),
                "{id:?}"
            );
            assert!(
                matches!(
                    service.fetch_envelope(&t, Duration::from_secs(1)).await,
                    Err(Error::Invalid(_))
                ),
                "{id:?}"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");
    }

    /// `fetch_envelope` of the stand-in platform's package, failing the test if it takes more than 5 s.
    async fn poll(service: &Service, max_wait: Duration) -> Result<Envelope, Error> {
        tokio::time::timeout(
            Duration::from_secs(5),
            service.fetch_envelope(&token(), max_wait),
        )
        .await
        .expect("an answer within 5 s")
    }

    #[tokio::test]
    async fn polling_without_a_limit_does_not_overflow() {
        let (service, calls) = service_of(platform(1).await).await;
        let envelope = poll(&service, Duration::MAX).await.unwrap();
        assert_eq!(envelope.transfer_id, "t1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn too_many_requests_with_retry_after_is_waited_out_like_unavailable() {
        let (service, calls) = service_of(polled(429, "1", 1).await).await;
        let envelope = poll(&service, Duration::from_secs(10)).await.unwrap();
        assert_eq!(envelope.transfer_id, "t1");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Longer than it may wait: the platform's refusal.
        let (service, calls) = service_of(polled(429, "30", usize::MAX).await).await;
        let err = poll(&service, Duration::from_secs(10)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 429, .. }),
            "{err:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_retry_after_date_is_the_time_to_wait_for() {
        let at = |secs| {
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(secs))
        };
        // Two minutes off: past what it may wait, so it stops at once (not after 1 s, again and again).
        let (service, calls) = service_of(polled(503, &at(120), usize::MAX).await).await;
        let started = std::time::Instant::now();
        let err = poll(&service, Duration::from_secs(4)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 503, .. }),
            "{err:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(1));
        // Three seconds off (two to three, at whole seconds): it waits that long, not one second.
        let (service, calls) = service_of(polled(202, &at(3), 1).await).await;
        let started = std::time::Instant::now();
        poll(&service, Duration::from_secs(4)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(
            started.elapsed() >= Duration::from_millis(1900),
            "{:?}",
            started.elapsed()
        );
        // A date past: the one-second floor.
        let (service, calls) =
            service_of(polled(503, "Sun, 06 Nov 1994 08:49:37 GMT", 1).await).await;
        poll(&service, Duration::from_secs(4)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_wait_longer_than_what_is_left_ends_the_poll_instead_of_polling_early() {
        // 600 s asked, 400 s allowed: it does not come back at 300 s (the old ceiling).
        let (service, calls) = service_of(polled(503, "600", usize::MAX).await).await;
        let err = poll(&service, Duration::from_secs(400)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 503, .. }),
            "{err:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (service, _) = service_of(polled(202, "600", usize::MAX).await).await;
        assert!(matches!(
            poll(&service, Duration::from_secs(400)).await,
            Err(Error::NotReady)
        ));
        // An absurd wait (more than the platform's 300 s) ends it too, however long it may wait.
        let (service, calls) = service_of(polled(202, "100000", usize::MAX).await).await;
        let err = poll(&service, Duration::from_secs(30 * 86_400))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotReady), "{err:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_platform_that_does_not_answer_is_given_up_on_at_the_deadline() {
        let app = axum::Router::new().route(
            "/api/v1/transfers/t1/package",
            axum::routing::get(std::future::pending::<&'static str>),
        );
        let config = config_at(&stand_in(app).await).unwrap();
        let service = Service::discover(config).await.unwrap();
        let started = std::time::Instant::now();
        let err = poll(&service, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, Error::NotReady), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_refusal_says_when_to_retry() {
        use axum::response::IntoResponse as _;
        let in_two_minutes =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        let body = r#"{"error":"temporarily_unavailable","error_description":"no database"}"#;
        let app = axum::Router::new()
            .route(
                "/oauth/par",
                axum::routing::post(move || async move {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "60")],
                        body,
                    )
                        .into_response()
                }),
            )
            .route(
                "/oauth/token",
                axum::routing::post(move || async move {
                    let date = in_two_minutes.clone();
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", date)],
                        body,
                    )
                        .into_response()
                }),
            )
            .route(
                "/api/v1/transfers/t1/package",
                axum::routing::get(move || async move {
                    (axum::http::StatusCode::BAD_REQUEST, body).into_response()
                }),
            );
        let config = config_at(&stand_in(app).await).unwrap();
        let service = Service::discover(config).await.unwrap();
        let err = service
            .push(&AuthorizationRequest::new(&["d"], "p"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 503, retry_after: Some(d), .. } if *d == Duration::from_secs(60)),
            "{err:?}"
        );
        assert!(err.to_string().contains("retry after 60 s"), "{err}");
        let err = service.exchange("code", "verifier").await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 503, retry_after: Some(d), .. }
                if (Duration::from_secs(115)..=Duration::from_secs(120)).contains(d)),
            "{err:?}"
        );
        let err = service
            .fetch_envelope(&token(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Refused {
                    status: 400,
                    retry_after: None,
                    ..
                }
            ),
            "{err:?}"
        );
        // And the poll's own refusal when the wait asked is past its limit.
        let (service, _) = service_of(polled(503, "600", usize::MAX).await).await;
        let err = poll(&service, Duration::from_secs(10)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 503, retry_after: Some(d), .. } if *d == Duration::from_secs(600)),
            "{err:?}"
        );
    }

    /// `app` alone (not even metadata) at a loopback port.
    async fn raw(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    /// The test service `svc`, with fresh keys, at the platform `base`.
    fn config_at(base: &str) -> Result<ServiceConfig, Error> {
        ServiceConfig::new(base, "svc", "https://svc/cb", Keys::generate())
    }

    async fn discover_at(base: &str) -> Result<Service, Error> {
        Service::discover(config_at(base)?).await
    }

    #[tokio::test]
    async fn discovery_says_what_the_platform_answered() {
        use axum::response::IntoResponse as _;
        // The JWKS endpoint failing with an OAuth error: that error, not "no X25519 key".
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(|| async {
                let body =
                    r#"{"error":"server_error","error_description":"the key store is down"}"#;
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
            }),
        );
        let err = discover_at(&serve(app).await).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 500, error, description, .. }
                if error == "server_error" && description == "the key store is down"),
            "{err:?}"
        );
        // A proxy's HTML page: its status's reason and the start of what it said.
        let page = format!(
            "<html><body>\n  <h1>502 Bad Gateway</h1>\n  nginx {}</body></html>",
            "x".repeat(1000)
        );
        let app = axum::Router::new().route(
            "/.well-known/oauth-authorization-server",
            axum::routing::get(move || async move {
                (axum::http::StatusCode::BAD_GATEWAY, page).into_response()
            }),
        );
        let err = discover_at(&raw(app).await).await.unwrap_err();
        let Error::Refused {
            status: 502,
            error,
            description,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(error, "Bad Gateway");
        assert!(
            description.starts_with("<html><body> <h1>502 Bad Gateway</h1> nginx"),
            "{description}"
        );
        assert!(
            description.chars().count() <= 200,
            "{}",
            description.chars().count()
        );
        // JSON without an error field, and an empty body.
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"message":"later"}"#,
                )
                    .into_response()
            }),
        );
        let err = discover_at(&serve(app).await).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 503, error, description, .. }
                if error == "Service Unavailable" && description.contains("later")),
            "{err:?}"
        );
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(|| async { axum::http::StatusCode::NOT_FOUND }),
        );
        let err = discover_at(&serve(app).await).await.unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 404, error, .. } if error == "Not Found"),
            "{err:?}"
        );
        assert!(!err.to_string().ends_with(": "), "{err}");
    }

    /// A body that does not end: 1 KiB chunks for as long as the client reads.
    fn endless() -> axum::body::Body {
        let chunk = axum::body::Bytes::from(vec![b'x'; 1024]);
        axum::body::Body::from_stream(futures::stream::repeat(Ok::<_, std::convert::Infallible>(
            chunk,
        )))
    }

    /// `f`, failing the test if it takes more than 5 s.
    async fn quickly<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("an answer within 5 s")
    }

    #[tokio::test]
    async fn a_body_past_its_limit_is_refused_without_reading_it_all() {
        use axum::response::IntoResponse as _;
        use axum::routing::{get, post};
        let too_large = |err: &Error, limit: usize| {
            assert!(
                matches!(err, Error::TooLarge { limit: l, .. } if *l == limit),
                "{err:?}"
            );
        };
        let app = axum::Router::new().route(
            "/.well-known/oauth-authorization-server",
            get(|| async { endless() }),
        );
        let err = quickly(discover_at(&raw(app).await)).await.unwrap_err();
        too_large(&err, 64 * 1024);
        assert!(err.to_string().contains("metadata"), "{err}");
        let app = axum::Router::new().route("/jwks", get(|| async { endless() }));
        too_large(
            &quickly(discover_at(&serve(app).await)).await.unwrap_err(),
            64 * 1024,
        );

        // PAR and token answers, and a refusal's body (read only as far as the limit).
        let app = axum::Router::new()
            .route(
                "/oauth/par",
                post(|| async { (axum::http::StatusCode::CREATED, endless()).into_response() }),
            )
            .route("/oauth/token", post(|| async { endless() }));
        let service = discover_at(&stand_in(app).await).await.unwrap();
        let request = AuthorizationRequest::new(&["d"], "p");
        too_large(
            &quickly(service.push(&request)).await.unwrap_err(),
            64 * 1024,
        );
        let exchange = service.exchange("code", "verifier");
        too_large(&quickly(exchange).await.unwrap_err(), 64 * 1024);
        let app = axum::Router::new().route(
            "/oauth/par",
            post(|| async { (axum::http::StatusCode::BAD_GATEWAY, endless()).into_response() }),
        );
        let service = discover_at(&stand_in(app).await).await.unwrap();
        let err = quickly(service.push(&AuthorizationRequest::new(&["d"], "p")))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 502, description, .. } if description.starts_with("xxx")),
            "{err:?}"
        );

        // The envelope: the service's limit, 96 MiB unless it sets one.
        let envelope = serde_json::json!({
            "typ": "mydata-package+hpke", "suite": "s", "kid": "k", "sender_kid": "p",
            "transfer_id": "t1", "client_id": "svc", "enc": "e", "ct": "c".repeat(100 * 1024),
        });
        let app = axum::Router::new()
            .route(
                "/api/v1/transfers/t1/package",
                get(move || async move { axum::Json(envelope) }),
            )
            .route("/api/v1/transfers/t2/package", get(|| async { endless() }));
        let base = stand_in(app).await;
        let config = ServiceConfig::new(&base, "svc", "https://svc/cb", Keys::generate()).unwrap();
        assert_eq!(config.max_package_bytes, 96 * 1024 * 1024);
        let service = Service::discover(config.clone()).await.unwrap();
        let big = quickly(service.fetch_envelope(&token(), Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(
            big.ct.len(),
            100 * 1024,
            "larger than 64 KiB is fine for a package"
        );
        let service = Service::discover(ServiceConfig {
            max_package_bytes: 4096,
            ..config
        })
        .await
        .unwrap();
        let t2 = Token {
            transfer_id: "t2".into(),
            ..token()
        };
        let err = quickly(service.fetch_envelope(&t2, Duration::from_secs(5)))
            .await
            .unwrap_err();
        too_large(&err, 4096);
    }

    /// `pieces` sent `gap` apart (the first at once), then, if `stall`, nothing ever again.
    fn dripped(pieces: Vec<Vec<u8>>, gap: Duration, stall: bool) -> axum::body::Body {
        use futures::StreamExt as _;
        let sent =
            futures::stream::iter(pieces.into_iter().enumerate()).then(move |(i, p)| async move {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(p))
            });
        let after = futures::stream::pending().take(usize::from(stall));
        axum::body::Body::from_stream(sent.chain(after))
    }

    /// The test service at `base` with short limits: 300 ms a call, 400 ms between two pieces.
    fn impatient(base: &str) -> ServiceConfig {
        ServiceConfig {
            timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(400),
            ..config_at(base).unwrap()
        }
    }

    #[tokio::test]
    async fn a_slow_package_download_is_not_cut_while_it_moves_and_is_lost_when_it_stalls() {
        let envelope = serde_json::to_vec(&serde_json::json!({
            "typ": "mydata-package+hpke", "suite": "s", "kid": "k", "sender_kid": "p",
            "transfer_id": "t1", "client_id": "svc", "enc": "e", "ct": "c".repeat(6000),
        }))
        .unwrap();
        let pieces: Vec<Vec<u8>> = envelope.chunks(1000).map(<[u8]>::to_vec).collect();
        assert!(pieces.len() >= 6);
        let (slow, stalled) = (pieces.clone(), pieces);
        let app = axum::Router::new()
            .route(
                "/api/v1/transfers/t1/package",
                axum::routing::get(move || {
                    let p = slow.clone();
                    async move { dripped(p, Duration::from_millis(150), false) }
                }),
            )
            .route(
                "/api/v1/transfers/t2/package",
                axum::routing::get(move || {
                    let p = stalled[..2].to_vec();
                    async move { dripped(p, Duration::from_millis(150), true) }
                }),
            );
        let service = Service::discover(impatient(&stand_in(app).await))
            .await
            .unwrap();
        // Each piece within 400 ms, the whole past 300 ms (the call timeout): downloaded.
        let started = std::time::Instant::now();
        let got = quickly(service.fetch_envelope(&token(), Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(got.ct.len(), 6000);
        assert!(
            started.elapsed() > Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
        // A body that stops coming: lost, said so, once the idle timeout is past.
        let t2 = Token {
            transfer_id: "t2".into(),
            ..token()
        };
        let err = quickly(service.fetch_envelope(&t2, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PackageLost(_)), "{err:?}");
        assert!(err.to_string().contains("cannot be fetched again"), "{err}");
    }

    #[tokio::test]
    async fn other_calls_keep_a_total_timeout() {
        // Metadata that keeps coming, a piece every 100 ms: cut at the call's 300 ms.
        let app = axum::Router::new().route(
            "/.well-known/oauth-authorization-server",
            axum::routing::get(|| async {
                dripped(vec![b" ".to_vec(); 1000], Duration::from_millis(100), false)
            }),
        );
        let err = quickly(Service::discover(impatient(&raw(app).await)))
            .await
            .unwrap_err();
        assert!(matches!(&err, Error::Http(e) if e.is_timeout()), "{err:?}");
        // A poll whose answer does not start within the call timeout, well before max_wait.
        let app = axum::Router::new().route(
            "/api/v1/transfers/t1/package",
            axum::routing::get(std::future::pending::<&'static str>),
        );
        let service = Service::discover(impatient(&stand_in(app).await))
            .await
            .unwrap();
        let err = quickly(service.fetch_envelope(&token(), Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TimedOut { .. }), "{err:?}");
    }

    /// A platform whose JWKS holds the X25519 key `current` says (with a fixed ES256 key), and
    /// whose package endpoint serves `envelope`; counts the JWKS reads.
    async fn rotating(
        current: Arc<std::sync::Mutex<[u8; 32]>>,
        envelope: Arc<std::sync::Mutex<Option<Envelope>>>,
    ) -> (String, Arc<AtomicUsize>) {
        use axum::routing::get;
        let reads = Arc::new(AtomicUsize::new(0));
        let seen = reads.clone();
        let sig = ec_public_jwk(&<SigningKey as p256::elliptic_curve::Generate>::generate());
        let app = axum::Router::new()
            .route(
                "/jwks",
                get(move || async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let kem = mydata_package::e2e::public_jwk(&current.lock().unwrap());
                    axum::Json(serde_json::json!({ "keys": [kem, sig] }))
                }),
            )
            .route(
                "/api/v1/transfers/t1/package",
                get(move || async move { axum::Json(envelope.lock().unwrap().clone()) }),
            );
        (serve(app).await, reads)
    }

    #[tokio::test]
    async fn a_package_sealed_after_the_platform_replaced_its_key_opens_or_is_kept() {
        let old = HpkeKeyPair::generate();
        let new = HpkeKeyPair::generate();
        let current = Arc::new(std::sync::Mutex::new(old.public_bytes()));
        let served = Arc::new(std::sync::Mutex::new(None));
        let (base, reads) = rotating(current.clone(), served.clone()).await;
        let service = discover_at(&base).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        let to = service.config.keys.encryption.public_bytes();
        let seal = |by: &HpkeKeyPair, zip: &[u8]| {
            mydata_package::e2e::seal_package(by, &to, "t1", "svc", zip).unwrap()
        };

        // The platform replaces its key; the next package is sealed with the new one.
        *current.lock().unwrap() = new.public_bytes();
        *served.lock().unwrap() = Some(seal(&new, b"zip one"));
        let zip = service
            .package(&token(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(zip, b"zip one");
        assert_eq!(reads.load(Ordering::SeqCst), 2, "the keys read again");
        *served.lock().unwrap() = Some(seal(&new, b"zip two"));
        let zip = service
            .package(&token(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(zip, b"zip two");
        assert_eq!(reads.load(Ordering::SeqCst), 2, "and kept");
        // login_hint goes to the new key now.
        let hint = service.login_hint("A123456789").unwrap();
        let opened = mydata_package::e2e::open_login_hint(&new, "svc", &hint).unwrap();
        assert_eq!(opened.as_str(), "A123456789");

        // Sealed with a key the platform no longer publishes: not opened, but handed back.
        let lost = seal(&old, b"zip three");
        *served.lock().unwrap() = Some(lost.clone());
        let err = service
            .package(&token(), Duration::from_secs(5))
            .await
            .unwrap_err();
        let Error::Unopened { envelope, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(err.to_string().contains("keep its envelope"), "{err}");
        let kept: Envelope = serde_json::from_slice(&envelope.0).unwrap();
        assert_eq!(kept, lost);
        // Once its sender is known again, the kept envelope opens.
        *current.lock().unwrap() = old.public_bytes();
        service.refresh_platform_keys().await.unwrap();
        assert_eq!(service.open(&token(), &kept).unwrap(), b"zip three");
    }

    /// The platform replaced its receipt key and still publishes the one it replaced: a refresh
    /// reads both, by kid; a key it withdraws is dropped at the next refresh. Keys declared for
    /// encryption or another algorithm are no receipt keys.
    #[tokio::test]
    async fn a_refresh_reads_the_receipt_keys_again_by_kid() {
        use axum::routing::get;
        let generate =
            || *<SigningKey as p256::elliptic_curve::Generate>::generate().verifying_key();
        let (old, new, other) = (generate(), generate(), generate());
        let published = Arc::new(std::sync::Mutex::new(PlatformKeys::from(old)));
        let shown = published.clone();
        let kem = HpkeKeyPair::generate().public_jwk();
        let app = axum::Router::new().route(
            "/jwks",
            get(move || async move {
                let mut keys = shown.lock().unwrap().public_jwks();
                let mut not_for_receipts = PlatformKeys::from(other).public_jwks();
                not_for_receipts[0]["use"] = "enc".into();
                keys.push(not_for_receipts[0].clone());
                not_for_receipts[0]["use"] = "sig".into();
                not_for_receipts[0]["alg"] = "ES384".into();
                keys.push(not_for_receipts[0].clone());
                keys.push(kem);
                axum::Json(serde_json::json!({ "keys": keys }))
            }),
        );
        let service = discover_at(&serve(app).await).await.unwrap();
        assert_eq!(service.platform_signing_keys(), PlatformKeys::from(old));

        let mut rotated = PlatformKeys::from(new);
        rotated.insert_by_thumbprint(old);
        *published.lock().unwrap() = rotated.clone();
        assert_eq!(
            service.platform_signing_keys(),
            PlatformKeys::from(old),
            "kept until refreshed"
        );
        service.refresh_platform_keys().await.unwrap();
        let keys = service.platform_signing_keys();
        assert_eq!(keys, rotated);
        assert_eq!(keys.current().map(|(_, k)| *k), Some(new));

        *published.lock().unwrap() = PlatformKeys::from(new);
        service.refresh_platform_keys().await.unwrap();
        assert_eq!(service.platform_signing_keys(), PlatformKeys::from(new));
    }

    /// `verify_package` reads the platform's keys again only for a receipt key it has not read:
    /// a rotation since discovery verifies without the caller's help, a key the platform does not
    /// publish is not the platform's, and keys that cannot be read decide nothing.
    #[tokio::test]
    async fn verify_package_reads_the_keys_again_for_a_key_it_has_not_read() {
        use axum::response::IntoResponse as _;
        use axum::routing::get;
        let now = SystemClock.now();
        let day = Duration::from_secs(86_400);
        let yesterday = Timestamp::from_millis(now.millis() - 86_400_000);
        let ca = mydata_package::SimulatedCa::new("Root", yesterday, now.plus(day)).unwrap();
        let (agency, _) = ca
            .issue_agency("mohw-social-work", yesterday, now.plus(day))
            .unwrap();
        let mut trust = TrustStore::new();
        trust.add_roots_pem(ca.root_pem().as_bytes()).unwrap();
        let crl = ca.crl(&[], yesterday, now.plus(day)).unwrap();
        trust.add_crl_der(crl.der()).unwrap();
        let receipted_by = |key: &SigningKey| {
            let signer = mydata_package::PlatformSigner::with_thumbprint_kid(key.clone()).unwrap();
            let mut b = mydata_package::PackageBuilder::new("tr-1", "pseudo-1", "purpose");
            let file = mydata_package::DataFile {
                name: "data.json".into(),
                media_type: "application/json".into(),
                bytes: b"{}".to_vec(),
            };
            let signed = agency
                .sign_dataset("tr-1", "low-income-household", now, vec![file])
                .unwrap();
            b.add_dataset(signed).unwrap();
            b.build(&signer, now).unwrap()
        };
        let generate = <SigningKey as p256::elliptic_curve::Generate>::generate;
        let (old, new, newer, stranger) = (generate(), generate(), generate(), generate());

        // The platform's key set (None: its key endpoint is down), and how often it was read.
        let published = Arc::new(std::sync::Mutex::new(Some(PlatformKeys::from(
            *old.verifying_key(),
        ))));
        let reads = Arc::new(AtomicUsize::new(0));
        let (shown, counted) = (published.clone(), reads.clone());
        let kem = HpkeKeyPair::generate().public_jwk();
        let app = axum::Router::new().route(
            "/jwks",
            get(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let Some(keys) = shown.lock().unwrap().clone() else {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                };
                let mut keys = keys.public_jwks();
                keys.push(kem);
                axum::Json(serde_json::json!({ "keys": keys })).into_response()
            }),
        );
        let service = discover_at(&serve(app).await).await.unwrap();
        let read_at_discovery = reads.load(Ordering::SeqCst);
        let check = |zip: Vec<u8>| {
            let (service, trust) = (&service, &trust);
            async move { service.verify_package(&zip, "tr-1", trust, now).await }
        };

        // A key it holds: no reading.
        check(receipted_by(&old)).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), read_at_discovery);

        // The platform replaced its key: read again once, and verified.
        let mut rotated = PlatformKeys::from(*new.verifying_key());
        rotated.insert_by_thumbprint(*old.verifying_key());
        *published.lock().unwrap() = Some(rotated);
        let report = check(receipted_by(&new)).await.unwrap();
        assert!(report.receipt_signature.is_passed());
        assert_eq!(reads.load(Ordering::SeqCst), read_at_discovery + 1);
        check(receipted_by(&old)).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), read_at_discovery + 1);

        // A key the platform does not publish, even after reading again.
        let err = check(receipted_by(&stranger)).await.unwrap_err();
        let kid = mydata_package::jwk_thumbprint(stranger.verifying_key());
        assert!(
            matches!(&err, VerifyError::NotPlatformKey { kid: k } if *k == kid),
            "{err:?}"
        );
        assert!(err.to_string().contains("not the platform's"), "{err}");

        // Rotated again while its key endpoint is down: nothing is decided, and it says so.
        *published.lock().unwrap() = None;
        let err = check(receipted_by(&newer)).await.unwrap_err();
        let kid = mydata_package::jwk_thumbprint(newer.verifying_key());
        assert!(
            matches!(&err, VerifyError::PlatformKeysUnavailable { kid: k, .. } if *k == kid),
            "{err:?}"
        );
        assert!(err.to_string().contains("verify again later"), "{err}");
        // The keys held are kept.
        assert!(service.platform_signing_keys().get(&kid).is_none());
        check(receipted_by(&new)).await.unwrap();
    }

    #[tokio::test]
    async fn keys_saved_and_loaded_are_the_same_keys_and_open_what_was_sealed_to_them() {
        use p256::ecdsa::signature::Verifier as _;
        let platform = HpkeKeyPair::generate();
        let current = Arc::new(std::sync::Mutex::new(platform.public_bytes()));
        let served = Arc::new(std::sync::Mutex::new(None));
        let (base, _) = rotating(current, served.clone()).await;

        // A service replaced its encryption key, keeping the old one, and saved them all.
        let (old, new) = (HpkeKeyPair::generate(), HpkeKeyPair::generate());
        let old_public = old.public_bytes();
        let signing = <SigningKey as p256::elliptic_curve::Generate>::generate();
        let saved = Keys::new(signing.clone(), old).with_encryption_key(new);
        let pem = saved.to_pem().unwrap();
        assert_eq!(pem.matches("-----BEGIN PRIVATE KEY-----").count(), 4);
        let loaded = Keys::from_pem(&format!("saved keys\n{}\n", pem.as_str())).unwrap();
        assert_eq!(loaded.public_jwks(), saved.public_jwks());
        assert_eq!(loaded.dpop_jkt(), saved.dpop_jkt());
        assert_eq!(format!("{loaded:?}"), format!("{saved:?}"));
        assert_eq!(loaded.to_pem().unwrap(), pem);

        // What the loaded keys sign verifies with the key registered before.
        let jwt = loaded
            .prepared()
            .unwrap()
            .signing
            .sign("e30", br#"{"iss":"svc"}"#);
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
        signing
            .verifying_key()
            .verify(input.as_bytes(), &sig)
            .unwrap();

        // Envelopes sealed to the new key and to the old one both open.
        let config = ServiceConfig::new(&base, "svc", "https://svc/cb", loaded).unwrap();
        let service = Service::discover(config).await.unwrap();
        let now = service.config.keys.encryption.public_bytes();
        assert_ne!(now, old_public, "the new key is the one registered");
        for (to, zip) in [(now, b"to the new key"), (old_public, b"to the old key")] {
            let env = mydata_package::e2e::seal_package(&platform, &to, "t1", "svc", zip).unwrap();
            *served.lock().unwrap() = Some(env);
            let got = service
                .package(&token(), Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(got, zip);
        }

        // Not keys: refused, naming what is wrong.
        for (text, says) in [
            ("", "0 PEM blocks"),
            (&pem[..pem.find("-----END").unwrap()], "no END line"),
        ] {
            let err = Keys::from_pem(text).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        let blocks = pem_blocks(&pem).unwrap();
        let swapped = format!("{}{}{}", blocks[0], blocks[2], blocks[1]);
        let err = Keys::from_pem(&swapped).unwrap_err();
        assert!(err.to_string().contains("DPoP key"), "{err}");
        let swapped = format!("{}{}{}", blocks[0], blocks[1], blocks[0]);
        let err = Keys::from_pem(&swapped).unwrap_err();
        assert!(err.to_string().contains("not X25519"), "{err}");
    }

    #[tokio::test]
    async fn a_client_that_cannot_be_built_is_an_error_not_a_default_client() {
        // TLS 1.3 at least and 1.2 at most: reqwest cannot build it.
        let impossible = reqwest::Client::builder()
            .min_tls_version(reqwest::tls::Version::TLS_1_3)
            .max_tls_version(reqwest::tls::Version::TLS_1_2);
        let err = http_client(impossible).unwrap_err();
        assert!(matches!(err, Error::Client(_)), "{err:?}");
        assert!(err.to_string().contains("tls versions"), "{err}");
        // The one `new` builds keeps its policy: a redirect is the platform's answer, not followed.
        let app = axum::Router::new().route(
            "/.well-known/oauth-authorization-server",
            axum::routing::get(|| async {
                axum::response::Redirect::temporary("https://example.invalid/")
            }),
        );
        let config = ServiceConfig::new(&raw(app).await, "svc", "https://svc/cb", Keys::generate())
            .expect("a client");
        let err = Service::discover(config).await.unwrap_err();
        assert!(matches!(err, Error::Refused { status: 307, .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_client_the_service_brings_is_used_and_follows_no_redirect_either() {
        // The platform redirects only the service's own client (known by its header).
        let app = axum::Router::new().route(
            "/.well-known/oauth-authorization-server",
            axum::routing::get(|headers: axum::http::HeaderMap| async move {
                use axum::response::IntoResponse as _;
                if headers.get("x-service-client").is_some() {
                    axum::response::Redirect::temporary("https://example.invalid/").into_response()
                } else {
                    axum::http::StatusCode::IM_A_TEAPOT.into_response()
                }
            }),
        );
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-service-client", "1".parse().unwrap());
        // A builder left with reqwest's default policy, which follows up to 10 redirects.
        let builder = reqwest::Client::builder().default_headers(headers);
        let config = ServiceConfig::new(&raw(app).await, "svc", "https://svc/cb", Keys::generate())
            .unwrap()
            .with_http(builder)
            .expect("a client");
        let err = Service::discover(config).await.unwrap_err();
        assert!(matches!(err, Error::Refused { status: 307, .. }), "{err:?}");
        // A builder that cannot build: the error, not the client kept from `new`.
        let impossible = reqwest::Client::builder()
            .min_tls_version(reqwest::tls::Version::TLS_1_3)
            .max_tls_version(reqwest::tls::Version::TLS_1_2);
        let err = ServiceConfig::new(
            "https://p.example",
            "svc",
            "https://svc/cb",
            Keys::generate(),
        )
        .unwrap()
        .with_http(impossible)
        .unwrap_err();
        assert!(matches!(err, Error::Client(_)), "{err:?}");
    }
}
