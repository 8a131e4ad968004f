//! HTTP service of the simulated agencies: the agency API, the simulated CA, fault injection.
//!
//! One [`Simulator`] plays every agency of the catalogue. Each agency answers under
//! `/agencies/{agency_id}/v1/`, authenticates the platform by an ES256 request token (see
//! [`crate::token`]) and returns datasets signed with its own certificate from the simulated CA.
//! Keys are generated fresh at every start (never derived from the public seed, which would make
//! them guessable); the platform fetches `/ca/root.pem` and `/ca/crl.pem` to trust them.
//! Pending requests, seen token IDs and fault settings live in memory: it is a simulator, a restart
//! forgets them. Time comes from the injected [`Clock`]; a time scale shortens the waits.

use crate::content::{Generator, Subject};
use crate::date::Date;
use crate::fields::FieldTable;
use crate::pdf::{DocumentSpec, FontError, PdfFonts};
use crate::population::Population;
use crate::token::{self, Claims, TokenError};
use crate::wire::{NotIncluded, SignedDatasetBody};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mydata_core::catalog::{DataFormat, Dataset};
use mydata_core::identity::SubjectKind;
use mydata_core::{
    AssuranceLevel, BusinessId, Catalog, Clock, IdNumber, IdentityMethod, Timestamp,
};
use mydata_package::{AgencySigner, DataFile, PkiError, SimulatedCa};
use p256::ecdsa::VerifyingKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

mod identity;
pub use identity::{HOUSEHOLD_AGENCY, NHI_AGENCY};

/// The population seed used unless configured otherwise.
pub const DEFAULT_SEED: u64 = 20_201_231;
/// The default population's "today" (ages, dates of records): 2025-12-31. Whatever else builds the
/// default population (the demo's identity cards) uses this, so the two always agree.
pub const DEFAULT_REFERENCE_DATE: Date = Date::END_OF_2025;

/// Paths the router serves (axum syntax); the OpenAPI test checks each is documented.
pub const PATHS: [&str; 6] = [
    "/agencies/{agency_id}/v1/requests",
    "/agencies/{agency_id}/v1/requests/{request_id}",
    "/ca/root.pem",
    "/ca/crl.pem",
    "/admin/faults/{agency_id}",
    "/agencies/{agency_id}/v1/identity-checks",
];

const DAY_MS: i64 = 86_400_000;
const PEM_TYPE: &str = "application/x-pem-file";

/// Misbehaviour to inject into one agency's answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Added to every agency API answer (real time: it simulates the network).
    pub latency_ms: u64,
    /// Share of agency API calls (0..=1) answered 500, drawn from the seeded RNG.
    pub error_rate: f64,
    /// Answer every call 429 with `Retry-After`.
    pub rate_limited: bool,
    /// Answer a dataset with 200 and a body that is not JSON.
    pub malformed: bool,
    /// Flip a byte of the manifest signatures.
    pub bad_signature: bool,
    /// Sign with a certificate that has already expired.
    pub expired_certificate: bool,
    /// Answer a dataset without any signature (no JWS, no DER signature, no chain).
    pub unsigned: bool,
    /// Sign the dataset with another agency's certificate.
    pub wrong_agency: bool,
    /// Pad each dataset answer with this many extra bytes (an unknown `padding` member), up to
    /// 64 MiB, to test the platform's size limit.
    pub oversized_bytes: u64,
}

impl FaultConfig {
    fn check(&self) -> Result<(), ApiError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(ApiError::InvalidBody(
                "error_rate must be between 0 and 1".into(),
            ));
        }
        if self.oversized_bytes > 64 * 1024 * 1024 {
            return Err(ApiError::InvalidBody(
                "oversized_bytes must be at most 67108864".into(),
            ));
        }
        Ok(())
    }
}

/// How to build a [`Simulator`].
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Seed of the synthetic population and of the fault RNG.
    pub seed: u64,
    /// The population's "today" (ages, dates of records).
    pub reference_date: Date,
    /// 60.0 makes a 60-minute dataset ready after one minute. Must be finite and > 0.
    pub time_scale: f64,
    /// The platform's keys (its JWK set): request tokens must be signed by the one their `kid`
    /// names, or by any of them when the `kid` is not among them.
    pub platform_keys: mydata_package::PlatformKeys,
    /// The platform's published JWK set (`.../.well-known/mydata/jwks.json`), read on the first
    /// token and again when a token names a key not held (the platform replaced its key; after a
    /// read that did not find it, not again for [`JWKS_REREAD`]); its keys are accepted besides
    /// `platform_keys`.
    pub platform_jwks_url: Option<String>,
    /// Bearer token of `/admin/*`; `None` disables the admin API.
    pub admin_token: Option<String>,
    /// Initial faults by agency ID.
    pub faults: HashMap<String, FaultConfig>,
    /// Font file (TTF, OTF or TTC with Traditional Chinese glyphs) for PDF datasets; `None` looks
    /// at `MYDATA_PDF_FONT`, then the usual install paths ([`crate::pdf::FONT_CANDIDATES`]).
    pub pdf_font: Option<PathBuf>,
    /// Whether PDF datasets come with their PDF (default). Off, the agencies answer with the
    /// machine-readable files only: for load runs on one machine, where typesetting a CJK PDF
    /// (~10 ms of CPU) is the agency's work, not the platform's.
    pub render_pdf: bool,
}

impl SimulatorConfig {
    /// Defaults: [`DEFAULT_SEED`], [`DEFAULT_REFERENCE_DATE`], time scale 1, no admin, no faults.
    pub fn new(platform_key: VerifyingKey) -> Self {
        Self::with_platform_keys(mydata_package::PlatformKeys::from(platform_key))
    }

    /// [`SimulatorConfig::new`] accepting tokens by any of the platform's `keys` (while the
    /// platform replaces its key, both are in its set).
    pub fn with_platform_keys(platform_keys: mydata_package::PlatformKeys) -> Self {
        Self {
            seed: DEFAULT_SEED,
            reference_date: DEFAULT_REFERENCE_DATE,
            time_scale: 1.0,
            platform_keys,
            platform_jwks_url: None,
            admin_token: None,
            faults: HashMap::new(),
            pdf_font: None,
            render_pdf: true,
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the built-in catalogue is invalid: {0}")]
    Catalog(String),
    #[error("the built-in field table is invalid: {0}")]
    Fields(String),
    #[error("time scale must be finite and greater than 0, got {0}")]
    TimeScale(f64),
    #[error("faults configured for unknown agency `{0}`")]
    UnknownAgency(String),
    #[error(transparent)]
    Fault(#[from] ApiError),
    #[error("issuing the simulated PKI: {0}")]
    Pki(#[from] PkiError),
    #[error(transparent)]
    PdfFont(#[from] FontError),
    #[error("the platform's JWK set URL: {0}")]
    PlatformJwks(String),
}

/// One agency's signing material: the valid signer and one whose certificate has expired.
struct AgencyKeys {
    signer: AgencySigner,
    expired: AgencySigner,
}

/// Who a request is about.
#[derive(Clone)]
enum SubjectId {
    Person(IdNumber),
    Company(BusinessId),
}

struct Pending {
    agency_id: String,
    dataset_id: String,
    transfer_id: String,
    subject: SubjectId,
    ready_at: Timestamp,
}

#[derive(Default)]
struct Memory {
    requests: HashMap<String, Pending>,
    seen_jti: SeenTokens,
    faults: HashMap<String, FaultConfig>,
}

/// The `jti`s of tokens accepted and not yet expired, so that each is accepted once.
#[derive(Debug, Default)]
struct SeenTokens {
    /// jti → expiry (seconds).
    expiry: HashMap<String, i64>,
    /// The size at which expired entries are dropped next: twice what was left after the last
    /// pass (at least [`SeenTokens::FLOOR`]), so that a memory holding many live tokens is not
    /// scanned on every request (at 400 tokens/s, 40,000 live ones).
    prune_at: usize,
    /// Passes so far (for tests).
    passes: u64,
}

impl SeenTokens {
    const FLOOR: usize = 4096;

    /// Records `jti` (expiring at `exp`) at `now_s`; false if it was seen before.
    fn first_use(&mut self, jti: &str, exp: i64, now_s: i64) -> bool {
        if self.expiry.len() >= self.prune_at.max(Self::FLOOR) {
            self.expiry
                .retain(|_, exp| exp.saturating_add(token::LEEWAY_SECS) > now_s);
            self.prune_at = (self.expiry.len() * 2).max(Self::FLOOR);
            self.passes += 1;
        }
        self.expiry.insert(jti.to_owned(), exp).is_none()
    }
}

/// Least time after a read of the platform's JWK set that did not bring the key sought (or
/// failed) before the next read.
pub const JWKS_REREAD: Duration = Duration::from_secs(30);
/// Largest JWK set read: a platform publishes a handful of keys.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// The platform's published JWK set, read as an agency reads it: no redirects, a timeout, a size
/// limit.
struct JwksSource {
    url: String,
    http: reqwest::Client,
    /// When a read last failed or did not bring the key sought, by the simulator's clock.
    last_miss: tokio::sync::Mutex<Option<Timestamp>>,
}

impl JwksSource {
    fn new(url: String) -> Result<Self, SimError> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(SimError::PlatformJwks(format!(
                "{url} is not an http(s) URL"
            )));
        }
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| SimError::PlatformJwks(e.to_string()))?;
        Ok(Self {
            url,
            http,
            last_miss: tokio::sync::Mutex::new(None),
        })
    }

    async fn read(&self) -> Result<mydata_package::PlatformKeys, String> {
        let mut res = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("HTTP {}", res.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the key set is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let jwks: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        let keys = mydata_package::PlatformKeys::from_jwk_set(&jwks);
        if keys.is_empty() {
            return Err("the key set holds no ES256 signing key".into());
        }
        Ok(keys)
    }
}

/// Every simulated agency, their keys, and the in-memory state of requests.
pub struct Simulator {
    catalog: Catalog,
    population: Population,
    fields: FieldTable,
    /// Agency names by ID, for the generated content (built once, not per request).
    agency_names: HashMap<String, String>,
    fonts: PdfFonts,
    render_pdf: bool,
    ca: SimulatedCa,
    agencies: HashMap<String, AgencyKeys>,
    /// The keys given, with those last read from the platform's JWK set (replaced whole).
    platform_keys: std::sync::RwLock<Arc<mydata_package::PlatformKeys>>,
    given_keys: mydata_package::PlatformKeys,
    jwks: Option<JwksSource>,
    clock: Arc<dyn Clock>,
    time_scale: f64,
    admin_token: Option<String>,
    memory: Mutex<Memory>,
    rng: Mutex<ChaCha20Rng>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("agencies", &self.agencies.len())
            .field("time_scale", &self.time_scale)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Simulator {
    /// Generate the population and a fresh CA with two certificates per agency (valid, expired).
    pub fn new(config: SimulatorConfig, clock: Arc<dyn Clock>) -> Result<Self, SimError> {
        if !(config.time_scale.is_finite() && config.time_scale > 0.0) {
            return Err(SimError::TimeScale(config.time_scale));
        }
        let catalog = Catalog::embedded().map_err(|e| SimError::Catalog(e.to_string()))?;
        let fields = FieldTable::embedded().map_err(|e| SimError::Fields(e.to_string()))?;
        for (agency, f) in &config.faults {
            if catalog.agency(agency).is_none() {
                return Err(SimError::UnknownAgency(agency.clone()));
            }
            f.check()?;
        }
        // Every dataset but a few is offered as PDF: without a CJK font the agencies cannot work.
        let fonts = PdfFonts::discover(config.pdf_font.as_deref())?;
        let now = clock.now().millis();
        let at = Timestamp::from_millis;
        let ca = SimulatedCa::new(
            "MyData Simulated Government Root CA",
            at(now - DAY_MS),
            at(now + 20 * 365 * DAY_MS),
        )?;
        let mut agencies = HashMap::new();
        for a in catalog.agencies() {
            let (signer, _) =
                ca.issue_agency(&a.id, at(now - DAY_MS), at(now + 2 * 365 * DAY_MS))?;
            let (expired, _) =
                ca.issue_agency(&a.id, at(now - 2 * 365 * DAY_MS), at(now - DAY_MS))?;
            agencies.insert(a.id.clone(), AgencyKeys { signer, expired });
        }
        Ok(Self {
            population: Population::generate(config.seed, config.reference_date),
            agency_names: Generator::agency_names(&catalog),
            catalog,
            fields,
            fonts,
            render_pdf: config.render_pdf,
            ca,
            agencies,
            platform_keys: std::sync::RwLock::new(Arc::new(config.platform_keys.clone())),
            given_keys: config.platform_keys,
            jwks: config.platform_jwks_url.map(JwksSource::new).transpose()?,
            clock,
            time_scale: config.time_scale,
            admin_token: config.admin_token,
            memory: Mutex::new(Memory {
                faults: config.faults,
                ..Memory::default()
            }),
            rng: Mutex::new(ChaCha20Rng::seed_from_u64(config.seed ^ 0x5EED_FA17)),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn population(&self) -> &Population {
        &self.population
    }

    /// The agency's valid signing key and certificate, to sign its own calls to the platform
    /// (for example a record-export token, see `mydata_package::agency_token`).
    pub fn agency_signer(&self, agency_id: &str) -> Option<&AgencySigner> {
        self.agencies.get(agency_id).map(|k| &k.signer)
    }

    /// The agency's signer whose certificate has expired (for tests of refusals).
    pub fn expired_agency_signer(&self, agency_id: &str) -> Option<&AgencySigner> {
        self.agencies.get(agency_id).map(|k| &k.expired)
    }

    /// The simulated root certificate (PEM).
    pub fn root_pem(&self) -> String {
        self.ca.root_pem()
    }

    /// A CRL valid from a minute ago (on the injected clock) for a day. Nothing is revoked.
    pub fn crl_pem(&self) -> Result<String, PkiError> {
        let now = self.clock.now().millis();
        let crl = self.ca.crl(
            &[],
            Timestamp::from_millis(now - 60_000),
            Timestamp::from_millis(now + DAY_MS),
        )?;
        Ok(crl.pem())
    }

    /// Replace the faults of `agency_id`.
    pub fn set_faults(&self, agency_id: &str, faults: FaultConfig) -> Result<(), ApiError> {
        if !self.agencies.contains_key(agency_id) {
            return Err(ApiError::AgencyNotFound(agency_id.to_owned()));
        }
        faults.check()?;
        lock(&self.memory)
            .faults
            .insert(agency_id.to_owned(), faults);
        Ok(())
    }

    pub fn faults(&self, agency_id: &str) -> FaultConfig {
        lock(&self.memory)
            .faults
            .get(agency_id)
            .cloned()
            .unwrap_or_default()
    }

    /// How long a dataset takes on the simulator's time scale.
    fn delay(&self, dataset: &Dataset) -> Duration {
        let ms = f64::from(dataset.ready_minutes) * 60_000.0 / self.time_scale;
        // Saturating float → int cast; the config check keeps it finite and non-negative.
        Duration::from_millis(ms.ceil() as u64)
    }

    /// Latency, rate limiting and random failures, applied before anything else.
    async fn gate(&self, agency_id: &str) -> Result<FaultConfig, ApiError> {
        if !self.agencies.contains_key(agency_id) {
            return Err(ApiError::AgencyNotFound(agency_id.to_owned()));
        }
        let faults = self.faults(agency_id);
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if faults.rate_limited {
            return Err(ApiError::RateLimited { retry_after: 1 });
        }
        if faults.error_rate > 0.0 && lock(&self.rng).random::<f64>() < faults.error_rate {
            return Err(ApiError::InjectedFailure);
        }
        Ok(faults)
    }

    /// Verify the bearer token for `agency_id` and consume its `jti`.
    async fn authenticate(&self, headers: &HeaderMap, agency_id: &str) -> Result<Claims, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::MissingToken)?;
        let now = self.clock.now();
        let claims = match token::verify(token.trim(), &self.platform_keys(), agency_id, now) {
            Err(TokenError::UnknownKey(kid)) if self.reread_platform_keys(&kid).await => {
                token::verify(token.trim(), &self.platform_keys(), agency_id, now)?
            }
            other => other?,
        };
        let now_s = now.millis().div_euclid(1000);
        if !lock(&self.memory)
            .seen_jti
            .first_use(&claims.jti, claims.exp, now_s)
        {
            return Err(ApiError::Replayed);
        }
        Ok(claims)
    }

    /// The platform keys held now.
    fn platform_keys(&self) -> Arc<mydata_package::PlatformKeys> {
        self.platform_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the platform's JWK set again for a token signed by `kid`, a key not held; true if the
    /// keys held now include it. After a read that did not bring the key sought (or failed), not
    /// again for [`JWKS_REREAD`], so tokens naming made-up keys cannot make the agency fetch on
    /// every request; requests that wait meanwhile use what the one read brought.
    async fn reread_platform_keys(&self, kid: &str) -> bool {
        let Some(source) = &self.jwks else {
            return false;
        };
        let mut last_miss = source.last_miss.lock().await;
        if self.platform_keys().get(kid).is_some() {
            return true;
        }
        let now = self.clock.now();
        let reread_ms = i64::try_from(JWKS_REREAD.as_millis()).unwrap_or(i64::MAX);
        if last_miss.is_some_and(|at: Timestamp| now.millis() - at.millis() < reread_ms) {
            return false;
        }
        let found = match source.read().await {
            Ok(mut keys) => {
                for (given_kid, key) in self.given_keys.iter() {
                    keys.insert(given_kid, *key);
                }
                let found = keys.get(kid).is_some();
                *self
                    .platform_keys
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                found
            }
            Err(e) => {
                tracing::warn!(url = %source.url, error = %e, "cannot read the platform's keys");
                false
            }
        };
        if !found {
            *last_miss = Some(now);
        }
        found
    }

    /// Sign the dataset's content for `subject` and shape the HTTP answer, faults included.
    fn deliver(
        &self,
        dataset: &Dataset,
        subject: &SubjectId,
        transfer_id: &str,
        faults: &FaultConfig,
    ) -> Result<Response, ApiError> {
        let keys = self
            .agencies
            .get(&dataset.agency)
            .ok_or_else(|| ApiError::AgencyNotFound(dataset.agency.clone()))?;
        let issued_at = self.clock.now();
        let content = self.content(dataset, subject)?;
        let mut files = vec![DataFile {
            name: "data.json".into(),
            media_type: DataFormat::Json.media_type().into(),
            bytes: content.json,
        }];
        if let Some(csv) = content.csv {
            files.push(DataFile {
                name: "data.csv".into(),
                media_type: DataFormat::Csv.media_type().into(),
                bytes: csv,
            });
        }
        if self.render_pdf && dataset.offers(DataFormat::Pdf) {
            let spec = DocumentSpec::new(
                dataset,
                self.catalog.agency(&dataset.agency),
                content.subject,
                transfer_id,
                issued_at,
                content.labels,
                content.rows,
            );
            let pdf = crate::pdf::render(&spec, &self.fonts)
                .map_err(|e| ApiError::Internal(format!("rendering the PDF: {e}")))?;
            files.push(DataFile {
                name: "data.pdf".into(),
                media_type: DataFormat::Pdf.media_type().into(),
                bytes: pdf,
            });
        }
        let media: HashMap<String, String> = files
            .iter()
            .map(|f| (f.name.clone(), f.media_type.clone()))
            .collect();
        let signer = if faults.expired_certificate {
            &keys.expired
        } else if faults.wrong_agency {
            // Any other agency: a valid certificate, but not of the agency holding the dataset.
            self.agencies
                .iter()
                .filter(|(id, _)| **id != dataset.agency)
                .min_by(|a, b| a.0.cmp(b.0))
                .map_or(&keys.signer, |(_, k)| &k.signer)
        } else {
            &keys.signer
        };
        let signed = signer
            .sign_dataset(transfer_id, &dataset.id, issued_at, files)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let not_included = Vec::<NotIncluded>::new();
        let mut body = SignedDatasetBody::from_signed(
            &signed,
            |name| media.get(name).cloned().unwrap_or_default(),
            not_included,
        );
        if faults.bad_signature {
            corrupt_signatures(&mut body);
        }
        if faults.unsigned {
            body.manifest_jws.clear();
            body.manifest_sig.clear();
            body.chain_pem.clear();
        }
        if faults.malformed {
            let json = [(header::CONTENT_TYPE, "application/json")];
            return Ok((StatusCode::OK, json, r#"{"manifest": "{\"version\":1,"#).into_response());
        }
        if faults.oversized_bytes > 0 {
            let mut value =
                serde_json::to_value(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
            let pad = usize::try_from(faults.oversized_bytes).unwrap_or(0);
            value["padding"] = serde_json::Value::String("x".repeat(pad));
            return Ok((StatusCode::OK, axum::Json(value)).into_response());
        }
        Ok((StatusCode::OK, axum::Json(body)).into_response())
    }

    /// The data files' bytes (JSON, and CSV when the dataset offers it) and the records as text.
    fn content(&self, dataset: &Dataset, subject: &SubjectId) -> Result<Rendered, ApiError> {
        let found = match subject {
            SubjectId::Person(id) => self.population.find(id).map(Subject::Person),
            SubjectId::Company(ban) => self.population.find_company(ban).map(Subject::Company),
        };
        let internal = |e: &dyn std::fmt::Display| ApiError::Internal(e.to_string());
        let Some(found) = found else {
            return Ok(self.unknown_subject(dataset, subject));
        };
        let generator = Generator::borrowing(&self.population, &self.fields, &self.agency_names);
        let content = generator.render(found, dataset).map_err(|e| internal(&e))?;
        let json = serde_json::to_vec(&content.json).map_err(|e| internal(&e))?;
        let subject = match found {
            Subject::Person(p) => format!("{}（{}）", p.name, p.id.masked()),
            Subject::Company(c) => format!("{}（統一編號 {}）", c.name, c.ban.as_str()),
        };
        Ok(Rendered {
            json,
            csv: content.csv.map(String::into_bytes),
            labels: content.labels,
            rows: content.rows,
            subject,
        })
    }

    /// A valid ID outside the synthetic population: the agency holds nothing about them.
    fn unknown_subject(&self, dataset: &Dataset, subject: &SubjectId) -> Rendered {
        let json = serde_json::json!({
            "agency_id": dataset.agency,
            "dataset_id": dataset.id,
            "result": "no_record",
            "records": [],
        });
        let labels: Vec<String> = self
            .fields
            .for_dataset(dataset.no)
            .iter()
            .map(|f| f.label_zh.clone())
            .collect();
        let csv = dataset
            .offers(DataFormat::Csv)
            .then(|| format!("{}\r\n", labels.join(",")).into_bytes());
        let subject = match subject {
            SubjectId::Person(id) => id.masked(),
            SubjectId::Company(ban) => format!("統一編號 {}", ban.as_str()),
        };
        Rendered {
            json: json.to_string().into_bytes(),
            csv,
            labels,
            rows: Vec::new(),
            subject,
        }
    }
}

/// One dataset's content for one subject, before signing.
struct Rendered {
    json: Vec<u8>,
    csv: Option<Vec<u8>>,
    labels: Vec<String>,
    rows: Vec<Vec<String>>,
    /// How the documents name the subject (name and masked ID).
    subject: String,
}

/// Flip one byte of each signature, keeping both parseable so that the *check* fails.
fn corrupt_signatures(body: &mut SignedDatasetBody) {
    if let Some((input, sig)) = body.manifest_jws.rsplit_once('.')
        && let Ok(mut bytes) = URL_SAFE_NO_PAD.decode(sig)
        && let Some(b) = bytes.last_mut()
    {
        *b ^= 0x01;
        body.manifest_jws = format!("{input}.{}", URL_SAFE_NO_PAD.encode(bytes));
    }
    if let Ok(mut bytes) = STANDARD.decode(&body.manifest_sig)
        && let Some(b) = bytes.last_mut()
    {
        *b ^= 0x01;
        body.manifest_sig = STANDARD.encode(bytes);
    }
}

/// Everything an answer can fail with; `code` is the stable `error` value of the JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no agency `{0}` in the catalogue")]
    AgencyNotFound(String),
    #[error("no dataset `{0}` at this agency")]
    DatasetNotFound(String),
    #[error("no request `{0}` at this agency")]
    RequestNotFound(String),
    #[error("no endpoint at this address")]
    RouteNotFound,
    #[error("the Authorization header must be `Bearer <token>`")]
    MissingToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token was already used (its jti was seen before)")]
    Replayed,
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the subject {0}")]
    InvalidSubject(&'static str),
    #[error("{0}")]
    InsufficientAssurance(String),
    #[error("the admin API needs the admin bearer token")]
    AdminUnauthorized,
    #[error("the admin API is disabled")]
    AdminDisabled,
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error("too many requests; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("simulated agency failure")]
    InjectedFailure,
    /// The cause stays in the value; the answer says only "internal error".
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::AgencyNotFound(_) => "agency_not_found",
            ApiError::DatasetNotFound(_) => "dataset_not_found",
            ApiError::RequestNotFound(_) => "request_not_found",
            ApiError::RouteNotFound => "route_not_found",
            ApiError::MissingToken => "missing_token",
            ApiError::Token(TokenError::Expired) => "token_expired",
            ApiError::Token(TokenError::WrongAudience) => "wrong_audience",
            ApiError::Token(_) | ApiError::MissingClaim(_) => "invalid_token",
            ApiError::Replayed => "token_replayed",
            ApiError::InvalidSubject(_) => "invalid_subject",
            ApiError::InsufficientAssurance(_) => "insufficient_assurance",
            ApiError::AdminUnauthorized => "unauthorized",
            ApiError::AdminDisabled => "admin_disabled",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::InjectedFailure => "simulated_failure",
            ApiError::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::AgencyNotFound(_)
            | ApiError::DatasetNotFound(_)
            | ApiError::RequestNotFound(_)
            | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MissingToken
            | ApiError::Token(_)
            | ApiError::Replayed
            | ApiError::MissingClaim(_)
            | ApiError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::InvalidSubject(_) | ApiError::InvalidBody(_) => StatusCode::BAD_REQUEST,
            ApiError::InsufficientAssurance(_) | ApiError::AdminDisabled => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InjectedFailure | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
        };
        let mut res = (self.status(), axum::Json(body)).into_response();
        let h = res.headers_mut();
        match &self {
            ApiError::RateLimited { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            e if e.status() == StatusCode::UNAUTHORIZED => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        res
    }
}

/// The router of the whole simulator.
pub async fn router(sim: Arc<Simulator>) -> Router {
    Router::new()
        .route(PATHS[0], post(create_request))
        .route(PATHS[1], get(poll_request))
        .route(PATHS[2], get(root_pem))
        .route(PATHS[3], get(crl_pem))
        .route(PATHS[4], put(put_faults).get(get_faults))
        .route(PATHS[5], post(identity::check))
        .fallback(|| async { ApiError::RouteNotFound })
        .with_state(sim)
}

#[derive(Serialize)]
struct Accepted<'a> {
    request_id: &'a str,
    /// Milliseconds since the Unix epoch.
    ready_at: i64,
}

fn accepted(agency_id: &str, request_id: &str, now: Timestamp, ready_at: Timestamp) -> Response {
    let secs = now.until(ready_at).as_millis().div_ceil(1000).max(1);
    let location = format!("/agencies/{agency_id}/v1/requests/{request_id}");
    let mut res = (
        StatusCode::ACCEPTED,
        axum::Json(Accepted {
            request_id,
            ready_at: ready_at.millis(),
        }),
    )
        .into_response();
    let h = res.headers_mut();
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)),
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    res
}

async fn create_request(
    State(sim): State<Arc<Simulator>>,
    Path(agency_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let faults = sim.gate(&agency_id).await?;
    let claims = sim.authenticate(&headers, &agency_id).await?;
    let transfer_id = claims
        .transfer_id
        .ok_or(ApiError::MissingClaim("transfer_id"))?;
    let dataset_id = claims
        .dataset_id
        .ok_or(ApiError::MissingClaim("dataset_id"))?;
    let subject = claims.subject.ok_or(ApiError::MissingClaim("subject"))?;
    let assurance = claims
        .assurance
        .ok_or(ApiError::MissingClaim("assurance"))?;
    let dataset = sim
        .catalog
        .dataset(&dataset_id)
        .filter(|d| d.agency == agency_id)
        .ok_or_else(|| ApiError::DatasetNotFound(dataset_id.clone()))?;
    let subject = if let Ok(id) = IdNumber::parse(&subject) {
        SubjectId::Person(id)
    } else if let Ok(ban) = BusinessId::parse(&subject) {
        SubjectId::Company(ban)
    } else {
        return Err(ApiError::InvalidSubject(
            "is neither a valid ID number nor a valid 統一編號",
        ));
    };
    check_assurance(dataset, &assurance)?;
    let method_kind =
        IdentityMethod::from_claim(&assurance.method).map(IdentityMethod::subject_kind);
    match (&subject, method_kind) {
        (SubjectId::Person(_), Some(SubjectKind::Legal)) => {
            return Err(ApiError::InvalidSubject(
                "is a person but the method proves a company",
            ));
        }
        (SubjectId::Company(_), Some(SubjectKind::Natural)) => {
            return Err(ApiError::InvalidSubject(
                "is a company but the method proves a person",
            ));
        }
        _ => {}
    }
    let now = sim.clock.now();
    let delay = sim.delay(dataset);
    if delay.is_zero() {
        return sim.deliver(dataset, &subject, &transfer_id, &faults);
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let ready_at = now.plus(delay);
    let mut mem = lock(&sim.memory);
    // Forget requests a day after they were ready, so a long run does not grow without bound.
    mem.requests
        .retain(|_, p| p.ready_at.plus(Duration::from_secs(86_400)) > now);
    mem.requests.insert(
        request_id.clone(),
        Pending {
            agency_id: agency_id.clone(),
            dataset_id,
            transfer_id,
            subject,
            ready_at,
        },
    );
    drop(mem);
    Ok(accepted(&agency_id, &request_id, now, ready_at))
}

/// The method must be one the dataset accepts, reach the claimed level, and the level must be at
/// least the dataset's weakest accepted level.
fn check_assurance(dataset: &Dataset, a: &token::Assurance) -> Result<(), ApiError> {
    let refuse = |why: String| Err(ApiError::InsufficientAssurance(why));
    let Some(method) = IdentityMethod::from_claim(&a.method) else {
        return refuse(format!("unknown identity method `{}`", a.method));
    };
    let Ok(level) = AssuranceLevel::try_from(a.level) else {
        return refuse(format!("assurance level must be 1 to 4, got {}", a.level));
    };
    if !dataset.accepts(method) {
        return refuse(format!(
            "dataset `{}` does not accept {}",
            dataset.id,
            method.code()
        ));
    }
    if !method.level().satisfies(level) {
        return refuse(format!("{} cannot reach level {level}", method.code()));
    }
    if !level.satisfies(dataset.min_level()) {
        return refuse(format!(
            "dataset `{}` needs level {} or stronger, got {level}",
            dataset.id,
            dataset.min_level()
        ));
    }
    Ok(())
}

async fn poll_request(
    State(sim): State<Arc<Simulator>>,
    Path((agency_id, request_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let faults = sim.gate(&agency_id).await?;
    let claims = sim.authenticate(&headers, &agency_id).await?;
    let not_found = || ApiError::RequestNotFound(request_id.clone());
    let (dataset_id, transfer_id, subject, ready_at) = {
        let mem = lock(&sim.memory);
        let p = mem
            .requests
            .get(&request_id)
            .filter(|p| p.agency_id == agency_id)
            .ok_or_else(not_found)?;
        // A token naming another transfer must not learn that this request exists.
        if claims
            .transfer_id
            .as_ref()
            .is_some_and(|t| *t != p.transfer_id)
        {
            return Err(not_found());
        }
        (
            p.dataset_id.clone(),
            p.transfer_id.clone(),
            p.subject.clone(),
            p.ready_at,
        )
    };
    let now = sim.clock.now();
    if now < ready_at {
        return Ok(accepted(&agency_id, &request_id, now, ready_at));
    }
    let dataset = sim
        .catalog
        .dataset(&dataset_id)
        .ok_or(ApiError::DatasetNotFound(dataset_id))?;
    sim.deliver(dataset, &subject, &transfer_id, &faults)
}

async fn root_pem(State(sim): State<Arc<Simulator>>) -> Response {
    ([(header::CONTENT_TYPE, PEM_TYPE)], sim.root_pem()).into_response()
}

async fn crl_pem(State(sim): State<Arc<Simulator>>) -> Result<Response, ApiError> {
    let pem = sim
        .crl_pem()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, PEM_TYPE)], pem).into_response())
}

fn check_admin(sim: &Simulator, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &sim.admin_token else {
        return Err(ApiError::AdminDisabled);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compare every byte so the time taken does not reveal the matching prefix.
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::AdminUnauthorized)
    }
}

async fn put_faults(
    State(sim): State<Arc<Simulator>>,
    Path(agency_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_admin(&sim, &headers)?;
    let faults: FaultConfig =
        serde_json::from_slice(&body).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    sim.set_faults(&agency_id, faults.clone())?;
    Ok(axum::Json(faults).into_response())
}

async fn get_faults(
    State(sim): State<Arc<Simulator>>,
    Path(agency_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&sim, &headers)?;
    if !sim.agencies.contains_key(&agency_id) {
        return Err(ApiError::AgencyNotFound(agency_id));
    }
    Ok(axum::Json(sim.faults(&agency_id)).into_response())
}

#[cfg(test)]
mod tests {
    use super::SeenTokens;

    /// A token is accepted once while it could still be accepted; with many live tokens the
    /// memory is not scanned on every request, and expired ones are dropped.
    #[test]
    fn each_token_is_accepted_once_and_the_memory_is_pruned_now_and_then() {
        let mut seen = SeenTokens::default();
        let now = 1_800_000_000;
        assert!(seen.first_use("a", now + 60, now));
        assert!(!seen.first_use("a", now + 60, now), "a replay");
        // 40,000 live tokens (400/s for 100 s): a handful of passes, not one per token.
        for i in 0..40_000 {
            assert!(seen.first_use(&format!("t{i}"), now + 60, now));
        }
        assert!(seen.passes <= 5, "{} passes", seen.passes);
        assert!(!seen.first_use("t123", now + 60, now), "still remembered");
        // Once they have expired (past the leeway), the next pass drops them.
        let later = now + 60 + super::token::LEEWAY_SECS + 1;
        let before = seen.passes;
        for i in 0..200_000 {
            if seen.passes > before {
                break;
            }
            seen.first_use(&format!("u{i}"), later + 60, later);
        }
        assert_eq!(seen.passes, before + 1);
        assert!(seen.expiry.len() < 40_000, "{}", seen.expiry.len());
        assert!(
            seen.first_use("t123", later + 60, later),
            "expired: forgotten"
        );
    }
}
