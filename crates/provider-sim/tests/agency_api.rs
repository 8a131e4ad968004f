//! The agency API over real HTTP: a simulator on 127.0.0.1 port 0, a reqwest client, a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::catalog::DataFormat;
use mydata_core::catalog::Dataset;
use mydata_core::identity::SubjectKind;
use mydata_core::{Clock, IdentityMethod, ManualClock, Timestamp};
use mydata_package::{
    DatasetError, PackageBuilder, PlatformSigner, SignedDataset, TrustStore, verify_dataset,
    verify_package,
};
use mydata_provider_sim::server::{FaultConfig, Simulator, SimulatorConfig, router};
use mydata_provider_sim::token::{self, Assurance, Claims};
use mydata_provider_sim::wire::SignedDatasetBody;
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::Generate;
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const ADMIN: &str = "admin-secret";

struct App {
    base: String,
    clock: ManualClock,
    sim: Arc<Simulator>,
    key: SigningKey,
    client: reqwest::Client,
    jti: AtomicU64,
}

impl App {
    async fn spawn(time_scale: f64) -> Self {
        Self::spawn_seeded(time_scale, mydata_provider_sim::server::DEFAULT_SEED).await
    }

    async fn spawn_seeded(time_scale: f64, seed: u64) -> Self {
        Self::spawn_with(|config| {
            config.time_scale = time_scale;
            config.seed = seed;
        })
        .await
    }

    /// A simulator whose config `tweak` changes from the default (a fresh platform key, an
    /// admin token).
    async fn spawn_with(tweak: impl FnOnce(&mut SimulatorConfig)) -> Self {
        let clock = ManualClock::new(Timestamp::from_millis(1_780_000_000_000));
        let key = SigningKey::try_generate().unwrap();
        let mut config = SimulatorConfig::new(*key.verifying_key());
        config.admin_token = Some(ADMIN.into());
        tweak(&mut config);
        let sim = Arc::new(Simulator::new(config, Arc::new(clock.clone())).unwrap());
        let app = router(sim.clone()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("http://{addr}"),
            clock,
            sim,
            key,
            client: reqwest::Client::new(),
            jti: AtomicU64::new(0),
        }
    }

    fn claims(&self, ds: &Dataset, subject: &str, method: IdentityMethod) -> Claims {
        let now = self.clock.now().millis() / 1000;
        Claims {
            iss: token::ISSUER.into(),
            aud: ds.agency.clone(),
            iat: now,
            exp: now + 120,
            jti: format!("jti-{}", self.jti.fetch_add(1, Ordering::Relaxed)),
            transfer_id: Some("transfer-1".into()),
            dataset_id: Some(ds.id.clone()),
            subject: Some(subject.into()),
            assurance: Some(Assurance {
                method: method.code().into(),
                level: method.level().number(),
            }),
        }
    }

    async fn post(&self, agency: &str, claims: &Claims) -> reqwest::Response {
        let t = token::sign(&self.key, claims).unwrap();
        self.client
            .post(format!("{}/agencies/{agency}/v1/requests", self.base))
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
    }

    async fn poll(&self, agency: &str, request_id: &str) -> reqwest::Response {
        let now = self.clock.now().millis() / 1000;
        let claims = Claims {
            iss: token::ISSUER.into(),
            aud: agency.into(),
            iat: now,
            exp: now + 60,
            jti: format!("poll-{}", self.jti.fetch_add(1, Ordering::Relaxed)),
            transfer_id: Some("transfer-1".into()),
            dataset_id: None,
            subject: None,
            assurance: None,
        };
        self.client
            .get(format!(
                "{}/agencies/{agency}/v1/requests/{request_id}",
                self.base
            ))
            .bearer_auth(token::sign(&self.key, &claims).unwrap())
            .send()
            .await
            .unwrap()
    }

    /// Ask for `ds` and, when the agency answers 202, advance the clock past the wait and poll.
    async fn fetch(&self, ds: &Dataset, subject: &str, method: IdentityMethod) -> SignedDataset {
        let res = self
            .post(&ds.agency, &self.claims(ds, subject, method))
            .await;
        let res = if res.status() == StatusCode::ACCEPTED {
            let body: Value = res.json().await.unwrap();
            let id = body["request_id"].as_str().unwrap().to_owned();
            // The simulator runs 60x faster: a 60-minute dataset is ready after one minute.
            self.clock
                .advance(Duration::from_secs(u64::from(ds.ready_minutes) + 1));
            self.poll(&ds.agency, &id).await
        } else {
            res
        };
        let status = res.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "{}: {}",
            ds.id,
            res.text().await.unwrap()
        );
        res.json::<SignedDatasetBody>()
            .await
            .unwrap()
            .into_signed()
            .unwrap()
    }

    async fn trust(&self) -> TrustStore {
        let get = |p: &str| self.client.get(format!("{}{p}", self.base)).send();
        let root = get("/ca/root.pem").await.unwrap().bytes().await.unwrap();
        let crl = get("/ca/crl.pem").await.unwrap().text().await.unwrap();
        let mut trust = TrustStore::new();
        trust.add_roots_pem(&root).unwrap();
        let der =
            rustls_pki_types::CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).unwrap();
        trust.add_crl_der(&der).unwrap();
        trust
    }

    async fn set_faults(&self, agency: &str, f: &FaultConfig) {
        let res = self
            .client
            .put(format!("{}/admin/faults/{agency}", self.base))
            .bearer_auth(ADMIN)
            .json(f)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    fn instant(&self) -> Dataset {
        self.sim
            .catalog()
            .datasets()
            .iter()
            .find(|d| d.ready_minutes == 0 && d.accepts(IdentityMethod::MoicaCert))
            .unwrap()
            .clone()
    }

    fn person_id(&self) -> String {
        self.sim.population().persons()[0].id.as_str().to_owned()
    }
}

use rustls_pki_types::pem::PemObject;

async fn error_code(res: reqwest::Response) -> (StatusCode, String) {
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert!(body["message"].is_string(), "{body}");
    (status, body["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn instant_dataset_is_signed_and_verifies_against_the_published_ca() {
    let app = App::spawn(1.0).await;
    let ds = app.instant();
    let res = app
        .post(
            &ds.agency,
            &app.claims(&ds, &app.person_id(), IdentityMethod::MoicaCert),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: SignedDatasetBody = res.json().await.unwrap();
    assert!(body.files.iter().any(|f| f.name == "data.json"));
    let signed = body.into_signed().unwrap();
    let report = verify_dataset(&signed, &app.trust().await, app.clock.now());
    assert!(report.is_ok(), "{:?}", report.error());
    assert_eq!(report.agency_id.as_deref(), Some(ds.agency.as_str()));
    let m = report.manifest.unwrap();
    assert_eq!(m.transfer_id, "transfer-1");
    assert_eq!(m.dataset_id, ds.id);
}

#[tokio::test]
async fn slow_dataset_answers_202_until_the_scaled_time_has_passed() {
    let app = App::spawn(60.0).await;
    let ds = app
        .sim
        .catalog()
        .datasets()
        .iter()
        .find(|d| d.ready_minutes == 60)
        .unwrap()
        .clone();
    let method = *ds
        .identity_methods
        .iter()
        .find(|m| m.subject_kind() == SubjectKind::Natural)
        .unwrap();
    let res = app
        .post(&ds.agency, &app.claims(&ds, &app.person_id(), method))
        .await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["retry-after"], "60");
    let body: Value = res.json().await.unwrap();
    let id = body["request_id"].as_str().unwrap().to_owned();
    assert_eq!(
        body["ready_at"].as_i64().unwrap(),
        app.clock.now().millis() + 60_000
    );

    app.clock.advance(Duration::from_secs(59));
    let res = app.poll(&ds.agency, &id).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    assert_eq!(res.headers()["retry-after"], "1");

    app.clock.advance(Duration::from_secs(1));
    let res = app.poll(&ds.agency, &id).await;
    assert_eq!(res.status(), StatusCode::OK);
    let signed = res
        .json::<SignedDatasetBody>()
        .await
        .unwrap()
        .into_signed()
        .unwrap();
    let report = verify_dataset(&signed, &app.trust().await, app.clock.now());
    assert!(report.is_ok(), "{:?}", report.error());

    // Another agency cannot see the request.
    let other = app.instant();
    let res = app.poll(&other.agency, &id).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "request_not_found".into())
    );
}

#[tokio::test]
async fn refusals_have_their_status_and_code() {
    let app = App::spawn(1.0).await;
    let ds = app.instant();
    let person = app.person_id();
    let good = app.claims(&ds, &person, IdentityMethod::MoicaCert);

    // No token.
    let res = app
        .client
        .post(format!("{}/agencies/{}/v1/requests", app.base, ds.agency))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "missing_token".into())
    );

    // Signed by another key.
    let other = SigningKey::try_generate().unwrap();
    let res = app
        .client
        .post(format!("{}/agencies/{}/v1/requests", app.base, ds.agency))
        .bearer_auth(token::sign(&other, &good).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );

    // Expired.
    let mut c = app.claims(&ds, &person, IdentityMethod::MoicaCert);
    c.iat -= 600;
    c.exp -= 600;
    let res = app.post(&ds.agency, &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "token_expired".into())
    );

    // Lives longer than five minutes.
    let mut c = app.claims(&ds, &person, IdentityMethod::MoicaCert);
    c.exp = c.iat + 3600;
    let res = app.post(&ds.agency, &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );

    // Addressed to another agency.
    let wrong = app
        .sim
        .catalog()
        .agencies()
        .iter()
        .find(|a| a.id != ds.agency)
        .unwrap()
        .id
        .clone();
    let res = app
        .post(&wrong, &app.claims(&ds, &person, IdentityMethod::MoicaCert))
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "wrong_audience".into())
    );

    // Wrong issuer.
    let mut c = app.claims(&ds, &person, IdentityMethod::MoicaCert);
    c.iss = "someone-else".into();
    let res = app.post(&ds.agency, &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );

    // Replayed jti: first use succeeds, second is refused.
    let c = app.claims(&ds, &person, IdentityMethod::MoicaCert);
    assert_eq!(app.post(&ds.agency, &c).await.status(), StatusCode::OK);
    let res = app.post(&ds.agency, &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "token_replayed".into())
    );

    // Dataset of another agency, and an unknown dataset.
    let foreign = app
        .sim
        .catalog()
        .datasets()
        .iter()
        .find(|d| d.agency != ds.agency)
        .unwrap()
        .clone();
    let mut c = app.claims(&ds, &person, IdentityMethod::MoicaCert);
    c.dataset_id = Some(foreign.id.clone());
    let res = app.post(&ds.agency, &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "dataset_not_found".into())
    );
    let mut c = app.claims(&ds, &person, IdentityMethod::MoicaCert);
    c.dataset_id = Some("no-such-dataset".into());
    let res = app.post(&ds.agency, &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "dataset_not_found".into())
    );

    // Unknown agency.
    let mut c = app.claims(&ds, &person, IdentityMethod::MoicaCert);
    c.aud = "no-such-agency".into();
    let res = app.post("no-such-agency", &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "agency_not_found".into())
    );

    // Invalid ID number (bad check digit).
    let mut bad = person.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    let res = app
        .post(
            &ds.agency,
            &app.claims(&ds, &bad, IdentityMethod::MoicaCert),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::BAD_REQUEST, "invalid_subject".into())
    );

    // A level weaker than the dataset accepts: a level-1-only dataset asked with dual_id (level 4).
    let strict = app
        .sim
        .catalog()
        .datasets()
        .iter()
        .find(|d| d.min_level().number() < 4 && d.ready_minutes == 0)
        .unwrap()
        .clone();
    let mut c = app.claims(&strict, &person, IdentityMethod::MoicaCert);
    c.assurance = Some(Assurance {
        method: "moica_cert".into(),
        level: 4,
    });
    let res = app.post(&strict.agency, &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::FORBIDDEN, "insufficient_assurance".into())
    );
    // A method the dataset does not accept.
    let res = app
        .post(
            &strict.agency,
            &app.claims(&strict, &person, IdentityMethod::DualId),
        )
        .await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::FORBIDDEN, "insufficient_assurance".into())
    );
    // A level the method cannot reach.
    let mut c = app.claims(&strict, &person, IdentityMethod::DualId);
    c.assurance = Some(Assurance {
        method: "dual_id".into(),
        level: 1,
    });
    let res = app.post(&strict.agency, &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::FORBIDDEN, "insufficient_assurance".into())
    );
    // A trusted verifier's assertion: accepted for any dataset at its level or stronger, refused
    // below the dataset's weakest accepted level.
    let mut c = app.claims(&strict, &person, IdentityMethod::MoicaCert);
    c.assurance = Some(Assurance {
        method: "asserted".into(),
        level: strict.min_level().number() + 1,
    });
    let res = app.post(&strict.agency, &c).await;
    assert_eq!(
        error_code(res).await,
        (StatusCode::FORBIDDEN, "insufficient_assurance".into())
    );
    let mut c = app.claims(&strict, &person, IdentityMethod::MoicaCert);
    c.assurance = Some(Assurance {
        method: "asserted".into(),
        level: strict.min_level().number(),
    });
    let res = app.post(&strict.agency, &c).await;
    assert!(res.status().is_success(), "{}", res.status());
}

#[tokio::test]
async fn unknown_person_gets_a_signed_no_record_answer() {
    let app = App::spawn(1.0).await;
    let ds = app.instant();
    // A valid ID number that the synthetic population does not hold.
    let outsider = (1..10_000_000u32)
        .filter_map(|n| {
            mydata_core::IdNumber::generate('Z', mydata_core::id_number::Sex::Male, n).ok()
        })
        .find(|id| app.sim.population().find(id).is_none())
        .unwrap();
    let res = app
        .post(
            &ds.agency,
            &app.claims(&ds, outsider.as_str(), IdentityMethod::MoicaCert),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let signed = res
        .json::<SignedDatasetBody>()
        .await
        .unwrap()
        .into_signed()
        .unwrap();
    assert!(verify_dataset(&signed, &app.trust().await, app.clock.now()).is_ok());
    let json: Value = serde_json::from_slice(&signed.files["data.json"]).unwrap();
    assert_eq!(json["result"], "no_record");
    // The printed form says so too, in every catalogued format.
    let names: Vec<&str> = signed.files.keys().map(String::as_str).collect();
    assert_eq!(names, expected_files(&ds));
    if let Some(pdf) = signed.files.get("data.pdf") {
        assert!(pdf.starts_with(b"%PDF-1."));
    }
}

#[tokio::test]
async fn injected_faults_are_visible_to_the_platform() {
    let app = App::spawn(1.0).await;
    let ds = app.instant();
    let person = app.person_id();
    let trust = app.trust().await;

    // Admin API needs its token.
    let res = app
        .client
        .put(format!("{}/admin/faults/{}", app.base, ds.agency))
        .bearer_auth("wrong")
        .json(&FaultConfig::default())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );

    app.set_faults(
        &ds.agency,
        &FaultConfig {
            rate_limited: true,
            ..Default::default()
        },
    )
    .await;
    let res = app
        .post(
            &ds.agency,
            &app.claims(&ds, &person, IdentityMethod::MoicaCert),
        )
        .await;
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(
        error_code(res).await,
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited".into())
    );

    app.set_faults(
        &ds.agency,
        &FaultConfig {
            error_rate: 1.0,
            ..Default::default()
        },
    )
    .await;
    let res = app
        .post(
            &ds.agency,
            &app.claims(&ds, &person, IdentityMethod::MoicaCert),
        )
        .await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);

    app.set_faults(
        &ds.agency,
        &FaultConfig {
            malformed: true,
            ..Default::default()
        },
    )
    .await;
    let res = app
        .post(
            &ds.agency,
            &app.claims(&ds, &person, IdentityMethod::MoicaCert),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());

    app.set_faults(
        &ds.agency,
        &FaultConfig {
            bad_signature: true,
            ..Default::default()
        },
    )
    .await;
    let res = app
        .post(
            &ds.agency,
            &app.claims(&ds, &person, IdentityMethod::MoicaCert),
        )
        .await;
    let signed = res
        .json::<SignedDatasetBody>()
        .await
        .unwrap()
        .into_signed()
        .unwrap();
    let report = verify_dataset(&signed, &trust, app.clock.now());
    assert!(
        matches!(report.error(), Some(DatasetError::JwsSignatureInvalid)),
        "{:?}",
        report.error()
    );

    app.set_faults(
        &ds.agency,
        &FaultConfig {
            expired_certificate: true,
            ..Default::default()
        },
    )
    .await;
    let res = app
        .post(
            &ds.agency,
            &app.claims(&ds, &person, IdentityMethod::MoicaCert),
        )
        .await;
    let signed = res
        .json::<SignedDatasetBody>()
        .await
        .unwrap()
        .into_signed()
        .unwrap();
    let report = verify_dataset(&signed, &trust, app.clock.now());
    assert!(!report.certificate.is_passed(), "{:?}", report.error());

    // Back to normal.
    app.set_faults(&ds.agency, &FaultConfig::default()).await;
    let res = app
        .post(
            &ds.agency,
            &app.claims(&ds, &person, IdentityMethod::MoicaCert),
        )
        .await;
    let signed = res
        .json::<SignedDatasetBody>()
        .await
        .unwrap()
        .into_signed()
        .unwrap();
    assert!(verify_dataset(&signed, &trust, app.clock.now()).is_ok());
}

/// The file names a dataset's catalogued formats give (JSON is always sent).
fn expected_files(ds: &Dataset) -> Vec<&'static str> {
    let mut names = vec!["data.json"];
    if ds.offers(DataFormat::Csv) {
        names.push("data.csv");
    }
    if ds.offers(DataFormat::Pdf) {
        names.push("data.pdf");
    }
    names.sort_unstable();
    names
}

#[tokio::test]
async fn every_dataset_comes_in_its_catalogued_formats_signed_and_packaged() {
    let app = App::spawn(60.0).await;
    let person = app.person_id();
    let company = app.sim.population().companies()[0].ban.as_str().to_owned();
    let datasets = app.sim.catalog().datasets().to_vec();
    assert_eq!(datasets.len(), 105);
    let mut package = PackageBuilder::new("transfer-1", "pseudo-test", "all datasets");
    // The shell script costs about a second per dataset: it gets one dataset per file set.
    let mut for_script = PackageBuilder::new("transfer-1", "pseudo-test", "one per file set");
    let mut file_sets = std::collections::BTreeSet::new();
    let mut pdfs = 0;
    for ds in &datasets {
        let mut subjects = Vec::new();
        if let Some(m) = ds
            .identity_methods
            .iter()
            .find(|m| m.subject_kind() == SubjectKind::Natural)
        {
            subjects.push((person.clone(), *m));
        }
        if ds.accepts(IdentityMethod::MoeaCert) {
            subjects.push((company.clone(), IdentityMethod::MoeaCert));
        }
        assert!(!subjects.is_empty(), "{}", ds.id);
        for (subject, method) in subjects {
            let signed = app.fetch(ds, &subject, method).await;
            let report = verify_dataset(&signed, &app.trust().await, app.clock.now());
            assert!(report.is_ok(), "{}: {:?}", ds.id, report.error());
            let names: Vec<&str> = signed.files.keys().map(String::as_str).collect();
            assert_eq!(names, expected_files(ds), "{}", ds.id);
            let manifest = report.manifest.unwrap();
            for f in &manifest.files {
                let want = match f.name.as_str() {
                    "data.json" => "application/json",
                    "data.csv" => "text/csv",
                    _ => "application/pdf",
                };
                assert!(f.media_type.starts_with(want), "{}: {f:?}", ds.id);
            }
            if let Some(pdf) = signed.files.get("data.pdf") {
                assert!(pdf.starts_with(b"%PDF-1."), "{}", ds.id);
                pdfs += 1;
            }
            if subject == person {
                if file_sets.insert(names.join(",")) {
                    for_script.add_dataset(signed.clone()).unwrap();
                }
                package.add_dataset(signed).unwrap();
            }
        }
    }
    assert!(pdfs > 100, "{pdfs} PDFs");

    // The PDFs travel in the package like any data file and pass both verifiers.
    let platform = PlatformSigner::new(SigningKey::try_generate().unwrap(), "platform").unwrap();
    let zip = package.build(&platform, app.clock.now()).unwrap();
    let trust = app.trust().await;
    let report = verify_package(
        &zip,
        &trust,
        Some(platform.verifying_key()),
        app.clock.now(),
    );
    assert!(report.is_ok(), "{report:#?}");
    assert_eq!(file_sets.len(), 2, "{file_sets:?}");
    let zip = for_script.build(&platform, app.clock.now()).unwrap();
    run_package_script(&app, &zip, &platform, file_sets.len()).await;
}

/// docs/PACKAGE.md's verification script (`scripts/verify-package`: openssl, unzip, jq) on the package.
async fn run_package_script(app: &App, zip: &[u8], platform: &PlatformSigner, datasets: usize) {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify-package");
    let dir = tempfile::tempdir().unwrap();
    let get = |p: &str| app.client.get(format!("{}{p}", app.base)).send();
    let root = get("/ca/root.pem").await.unwrap().text().await.unwrap();
    let crl = get("/ca/crl.pem").await.unwrap().text().await.unwrap();
    std::fs::write(dir.path().join("package.zip"), zip).unwrap();
    std::fs::write(dir.path().join("root.pem"), root).unwrap();
    std::fs::write(dir.path().join("crl.pem"), crl).unwrap();
    let pem = platform
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(dir.path().join("platform.pem"), pem).unwrap();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .current_dir(dir.path())
        .env("ATTIME", (app.clock.now().millis() / 1000).to_string())
        .output()
        .expect("bash, openssl, unzip and jq are needed (.ci/run installs them)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ALL CHECKS PASSED"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("== dataset").count(), datasets, "{stdout}");
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let app = App::spawn(1.0).await;
    let res = app
        .client
        .get(format!("{}/nowhere", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "route_not_found".into())
    );
}

#[tokio::test]
async fn latency_is_added_and_random_failures_follow_the_seed() {
    let a = App::spawn_seeded(1.0, 7).await;
    let b = App::spawn_seeded(1.0, 7).await;
    let ds = a.instant();
    a.set_faults(
        &ds.agency,
        &FaultConfig {
            latency_ms: 300,
            ..Default::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let res = a
        .post(
            &ds.agency,
            &a.claims(&ds, &a.person_id(), IdentityMethod::MoicaCert),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let half = FaultConfig {
        error_rate: 0.5,
        ..Default::default()
    };
    let mut runs = Vec::new();
    for app in [&a, &b] {
        app.set_faults(&ds.agency, &half).await;
        let mut statuses = Vec::new();
        for _ in 0..24 {
            let res = app
                .post(
                    &ds.agency,
                    &app.claims(&ds, &app.person_id(), IdentityMethod::MoicaCert),
                )
                .await;
            statuses.push(res.status().as_u16());
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1], "same seed, same failures");
    assert!(
        runs[0].contains(&500) && runs[0].contains(&200),
        "{:?}",
        runs[0]
    );
}

#[tokio::test]
async fn faults_for_an_unknown_agency_or_out_of_range_are_refused() {
    let app = App::spawn(1.0).await;
    let res = app
        .client
        .put(format!("{}/admin/faults/no-such-agency", app.base))
        .bearer_auth(ADMIN)
        .json(&FaultConfig::default())
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::NOT_FOUND, "agency_not_found".into())
    );
    let ds = app.instant();
    let res = app
        .client
        .put(format!("{}/admin/faults/{}", app.base, ds.agency))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"error_rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::BAD_REQUEST, "invalid_body".into())
    );
    let key = SigningKey::try_generate().unwrap();
    let mut config = SimulatorConfig::new(*key.verifying_key());
    config
        .faults
        .insert("no-such-agency".into(), FaultConfig::default());
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(0)));
    assert!(Simulator::new(config, clock).is_err());
}

/// A stand-in for the platform's `/.well-known/mydata/jwks.json`: serves the set `keys` holds (or
/// a 503 when it holds `null`) and counts the reads.
struct PlatformJwks {
    url: String,
    keys: Arc<std::sync::Mutex<Value>>,
    reads: Arc<AtomicU64>,
}

impl PlatformJwks {
    async fn serve() -> Self {
        let keys = Arc::new(std::sync::Mutex::new(Value::Null));
        let reads = Arc::new(AtomicU64::new(0));
        let (k, r) = (keys.clone(), reads.clone());
        let app = axum::Router::new().route(
            "/.well-known/mydata/jwks.json",
            axum::routing::get(move || {
                let (k, r) = (k.clone(), r.clone());
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    let set = k.lock().unwrap().clone();
                    if set.is_null() {
                        return Err(StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(axum::Json(set))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/.well-known/mydata/jwks.json"),
            keys,
            reads,
        }
    }

    /// Publishes `keys` (the current one first), as the platform's JWK set with its X25519 key.
    fn publish(&self, keys: &[&SigningKey]) {
        let mut set = mydata_package::PlatformKeys::new();
        for k in keys {
            set.insert_by_thumbprint(*k.verifying_key());
        }
        let mut listed = set.public_jwks();
        listed.push(
            serde_json::json!({"kty": "OKP", "crv": "X25519", "use": "enc",
            "x": "9GXjPGGvmRq9F6Ng5dQQ_s31mfhxrcNZxRGONrmuN7c"}),
        );
        *self.keys.lock().unwrap() = serde_json::json!({ "keys": listed });
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

/// An agency reads the platform's keys from its published JWK set, and again when a token names a
/// key it does not hold (the platform replaced its key); after a read that did not bring the key,
/// not again for JWKS_REREAD: a token naming a made-up key is refused without a read each time,
/// and a set it could not read leaves the keys it holds.
#[tokio::test]
async fn agencies_read_the_platforms_keys_from_its_jwk_set_again_when_it_replaces_its_key() {
    use mydata_provider_sim::server::JWKS_REREAD;
    let platform = PlatformJwks::serve().await;
    let [first, second, third, forged] =
        std::array::from_fn(|_| SigningKey::try_generate().unwrap());
    platform.publish(&[&first]);
    let url = platform.url.clone();
    let app = App::spawn_with(|config| config.platform_jwks_url = Some(url)).await;
    let ds = app.instant();
    let person = app.person_id();
    let send = |key: &SigningKey| {
        let claims = app.claims(&ds, &person, IdentityMethod::MoicaCert);
        let token = mydata_package::PlatformSigner::with_thumbprint_kid(key.clone())
            .unwrap()
            .sign(&serde_json::to_vec(&claims).unwrap());
        app.client
            .post(format!("{}/agencies/{}/v1/requests", app.base, ds.agency))
            .bearer_auth(token)
            .send()
    };
    let by_given_key = || async {
        let claims = app.claims(&ds, &person, IdentityMethod::MoicaCert);
        app.post(&ds.agency, &claims).await
    };
    // The key given at start needs no read; the published one is read on first use, once.
    assert_eq!(by_given_key().await.status(), StatusCode::OK);
    assert_eq!(platform.reads(), 0);
    for _ in 0..2 {
        assert_eq!(send(&first).await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(platform.reads(), 1);
    // The platform switches to a new key, still publishing the one it replaced.
    platform.publish(&[&second, &first]);
    assert_eq!(send(&second).await.unwrap().status(), StatusCode::OK);
    assert_eq!(send(&first).await.unwrap().status(), StatusCode::OK);
    assert_eq!(platform.reads(), 2);
    // A key the platform never published: refused, and not read for again within JWKS_REREAD.
    for _ in 0..3 {
        let res = send(&forged).await.unwrap();
        assert_eq!(
            error_code(res).await,
            (StatusCode::UNAUTHORIZED, "invalid_token".into())
        );
    }
    assert_eq!(
        platform.reads(),
        3,
        "read again within JWKS_REREAD of a miss"
    );
    app.clock.advance(JWKS_REREAD);
    let res = send(&forged).await.unwrap();
    assert_eq!(
        error_code(res).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );
    assert_eq!(platform.reads(), 4);
    // The set cannot be read: the keys held still work, a new one waits for the next read.
    *platform.keys.lock().unwrap() = Value::Null;
    app.clock.advance(JWKS_REREAD);
    assert_eq!(
        send(&third).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(platform.reads(), 5);
    assert_eq!(send(&second).await.unwrap().status(), StatusCode::OK);
    platform.publish(&[&third, &second]);
    assert_eq!(
        send(&third).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "too soon"
    );
    app.clock.advance(JWKS_REREAD);
    assert_eq!(send(&third).await.unwrap().status(), StatusCode::OK);
    assert_eq!(platform.reads(), 6);
    // The key given at start is still accepted beside the published ones.
    assert_eq!(by_given_key().await.status(), StatusCode::OK);
}

#[test]
fn a_jwk_set_url_must_be_http() {
    let key = SigningKey::try_generate().unwrap();
    let mut config = SimulatorConfig::new(*key.verifying_key());
    config.platform_jwks_url = Some("file:///etc/passwd".into());
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(0)));
    let err = Simulator::new(config, clock).unwrap_err();
    assert!(err.to_string().contains("not an http(s) URL"), "{err}");
}
