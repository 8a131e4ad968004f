//! The data path end to end: the simulated agencies on loopback, the platform's fetch jobs, the
//! package, its retrieval and its deletion, all on one injected clock.

use crate::helpers::{Backend, eventually, eventually_within};
use mydata_core::catalog::Dataset;
use mydata_core::identity::SubjectKind;
use mydata_core::transfer::{TransferKind, TransferState};
use mydata_core::{AssuranceLevel, Clock, IdentityMethod, ManualClock, Timestamp};
use mydata_package::TrustStore;
use mydata_provider_sim::server::{FaultConfig, Simulator, SimulatorConfig, router};
use mydata_server::agencies::{StartFetch, start_fetch};
use mydata_server::packages::{TakeError, purge_expired_data, take_package};
use mydata_server::state::AppState;
use mydata_server::{Server, Settings};
use mydata_store::testing::{TestDatabase, fresh_postgres, fresh_sqlite};
use mydata_store::{NewTransfer, Transfer, fetch_status};
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::Generate;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Bound for a whole transfer to settle: the catalogue-wide test fetches 105 datasets (PDFs among
/// them) while the suite runs many servers on two cores.
const SETTLE_BOUND: std::time::Duration = std::time::Duration::from_secs(120);

pub const T0: i64 = 1_790_000_000_000;

/// The simulated agencies on 127.0.0.1, sharing the platform's clock.
pub struct Agencies {
    pub sim: Arc<Simulator>,
    pub base: String,
}

impl Agencies {
    pub async fn start(clock: &ManualClock, key: &SigningKey, time_scale: f64) -> Self {
        let mut config = SimulatorConfig::new(*key.verifying_key());
        config.time_scale = time_scale;
        let sim = Arc::new(Simulator::new(config, Arc::new(clock.clone())).unwrap());
        let app = router(sim.clone()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            sim,
            base: format!("http://{addr}"),
        }
    }

    pub fn fault(&self, agency: &str, f: FaultConfig) {
        self.sim.set_faults(agency, f).unwrap();
    }

    /// The agency answers after `ms` milliseconds of real time, and otherwise as usual.
    pub fn delay(&self, agency: &str, ms: u64) {
        self.fault(
            agency,
            FaultConfig {
                latency_ms: ms,
                ..FaultConfig::default()
            },
        );
    }
}

/// The platform with its data path pointed at the simulated agencies.
pub struct DataApp {
    pub base: String,
    pub clock: ManualClock,
    pub state: AppState,
    pub agencies: Arc<Agencies>,
    pub key: SigningKey,
    pub dir: Arc<tempfile::TempDir>,
    pub db_url: String,
    pub db: Option<TestDatabase>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn settings(db_url: &str, dir: &Path, agencies: &Agencies) -> Settings {
    let mut s = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    s.database.url = db_url.to_owned();
    s.jobs.poll_interval_ms = 5;
    s.keys.platform_signing_key = dir.join("platform.pem").display().to_string();
    s.agencies.base_url = agencies.base.clone();
    s.agencies.trust_roots = vec![dir.join("agency-root.pem")];
    s.agencies.crl_urls = vec![format!("{}/ca/crl.pem", agencies.base)];
    s.agencies.request_timeout_ms = 5_000;
    // The agencies are simulated: test-environment services are served.
    s.oauth.serve_test_services = true;
    s
}

impl DataApp {
    pub async fn spawn(
        backend: Backend,
        time_scale: f64,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        let db = match backend {
            Backend::Sqlite => fresh_sqlite().await.unwrap(),
            Backend::Postgres => fresh_postgres().await.unwrap(),
        };
        let clock = ManualClock::new(Timestamp::from_millis(T0));
        let key = SigningKey::try_generate().unwrap();
        let agencies = Arc::new(Agencies::start(&clock, &key, time_scale).await);
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        std::fs::write(dir.path().join("platform.pem"), pem.as_bytes()).unwrap();
        std::fs::write(dir.path().join("agency-root.pem"), agencies.sim.root_pem()).unwrap();
        let mut s = settings(&db.url, dir.path(), &agencies);
        tweak(&mut s);
        let db_url = db.url.clone();
        Self::boot(s, clock, agencies, key, dir, db_url, Some(db)).await
    }

    async fn boot(
        settings: Settings,
        clock: ManualClock,
        agencies: Arc<Agencies>,
        key: SigningKey,
        dir: Arc<tempfile::TempDir>,
        db_url: String,
        db: Option<TestDatabase>,
    ) -> Self {
        let server = Server::bind(settings, Arc::new(clock.clone()))
            .await
            .unwrap();
        let state = server.state().clone();
        let base = server.base_url().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = rx.await;
        }));
        Self {
            base,
            clock,
            state,
            agencies,
            key,
            dir,
            db_url,
            db,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops this process (server and background workers) and starts another on the same
    /// database, data folder, clock and agencies: a restart.
    pub async fn restart(mut self, tweak: impl FnOnce(&mut Settings)) -> Self {
        self.shutdown().await;
        let mut s = settings(&self.db_url, self.dir.path(), &self.agencies);
        tweak(&mut s);
        let db = self.db.take();
        Self::boot(
            s,
            self.clock.clone(),
            self.agencies.clone(),
            self.key.clone(),
            self.dir.clone(),
            self.db_url.clone(),
            db,
        )
        .await
    }

    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    pub fn store(&self) -> &mydata_store::Store {
        self.state.store()
    }

    pub async fn transfer(&self, id: &str) -> Transfer {
        self.store().transfer(id).await.unwrap().unwrap()
    }

    /// Starts a fetch of `datasets` for a synthetic subject with a method all of them accept.
    pub async fn fetch(&self, subject: &str, method: IdentityMethod, datasets: &[&str]) -> String {
        self.fetch_for(TransferKind::SelfDownload, subject, method, datasets)
            .await
    }

    /// [`DataApp::fetch`] for a transfer of `kind`.
    pub async fn fetch_for(
        &self,
        kind: TransferKind,
        subject: &str,
        method: IdentityMethod,
        datasets: &[&str],
    ) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let pseudonym =
            mydata_server::identity::subject_pseudonym(&self.state, &subject_id(subject));
        let req = StartFetch {
            transfer: NewTransfer {
                id: id.clone(),
                kind,
                subject: pseudonym.clone(),
                recipient: (kind != TransferKind::SelfDownload).then(|| "recipient-1".into()),
                purpose: "test download".into(),
                datasets: datasets.iter().map(|d| d.to_string()).collect(),
            },
            subject_id: subject.to_owned(),
            method,
            level: method.level(),
            answers: None,
        };
        let t = start_fetch(&self.state, req, &pseudonym).await.unwrap();
        assert_eq!(t.state, TransferState::Fetching);
        id
    }

    /// Waits (real time, bounded) until every dataset of the transfer is settled or `open` says
    /// the datasets still open are where the test wants them.
    pub async fn until_settled(&self, id: &str) -> Transfer {
        eventually_within("every dataset settled", SETTLE_BOUND, || async {
            self.transfer(id)
                .await
                .datasets
                .iter()
                .all(|d| fetch_status::is_settled(&d.status))
        })
        .await;
        self.transfer(id).await
    }

    pub async fn until_state(&self, id: &str, state: TransferState) -> Transfer {
        eventually_within(&format!("transfer {state}"), SETTLE_BOUND, || async {
            self.transfer(id).await.state == state
        })
        .await;
        self.transfer(id).await
    }

    /// Waits until the dataset's record satisfies `check`.
    pub async fn until_dataset(
        &self,
        id: &str,
        dataset: &str,
        what: &str,
        check: impl Fn(&mydata_store::TransferDataset) -> bool,
    ) -> mydata_store::TransferDataset {
        let find = || async {
            self.transfer(id)
                .await
                .datasets
                .into_iter()
                .find(|d| d.dataset_id == dataset)
                .unwrap()
        };
        eventually(what, || async { check(&find().await) }).await;
        find().await
    }

    /// Takes the transfer's package once and checks it as a recipient would, with the platform's
    /// key, now.
    pub async fn take_and_check(&self, id: &str) -> mydata_package::PackageReport {
        let zip = take_package(&self.state, id, "test").await.unwrap();
        let report = mydata_package::verify_package(
            &zip,
            &self.trust(),
            Some(self.state.platform().verifying_key()),
            self.clock.now(),
        );
        assert!(report.is_ok(), "{report:?}");
        report
    }

    /// The trust store a recipient would use (the simulator's root and CRL).
    pub fn trust(&self) -> TrustStore {
        let mut t = TrustStore::new();
        t.add_roots_pem(self.agencies.sim.root_pem().as_bytes())
            .unwrap();
        let crl = self.agencies.sim.crl_pem().unwrap();
        let der =
            rustls_pki_types::CertificateRevocationListDer::from_pem_slice(crl.as_bytes()).unwrap();
        t.add_crl_der(&der).unwrap();
        t
    }

    /// Every file under the object directory, and every directory below the prefixes
    /// (`fetched/`, `packages/`): a directory left there, even empty, is a leftover too.
    pub fn objects(&self) -> Vec<String> {
        fn walk(dir: &Path, depth: u32, out: &mut Vec<String>) {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        if depth >= 1 {
                            out.push(format!("{}/", p.display()));
                        }
                        walk(&p, depth + 1, out);
                    } else {
                        out.push(p.display().to_string());
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("objects"), 0, &mut out);
        out
    }
}

impl Drop for DataApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A dataset that is ready at once and that a person with a citizen certificate may fetch.
pub fn instant(sim: &Simulator) -> Dataset {
    dataset_where(sim, |d| d.ready_minutes == 0)
}

pub fn dataset_where(sim: &Simulator, f: impl Fn(&Dataset) -> bool) -> Dataset {
    sim.catalog()
        .datasets()
        .iter()
        .find(|d| d.accepts(IdentityMethod::MoicaCert) && f(d))
        .unwrap()
        .clone()
}

pub fn person(sim: &Simulator) -> String {
    sim.population().persons()[3].id.as_str().to_owned()
}

/// Asserts no audit event of the transfer names the subject's ID number.
pub async fn assert_no_id_in_audit(app: &DataApp, transfer: &str, id: &str) {
    let events = app.store().audit_for_transfer(transfer).await.unwrap();
    assert!(!events.is_empty());
    for e in events {
        assert!(!e.detail.to_string().contains(id), "{e:?}");
        assert!(!e.subject.clone().unwrap_or_default().contains(id));
    }
}

#[tokio::test]
async fn every_dataset_of_the_catalogue_is_fetched_verified_packaged_and_taken_once() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // A time scale so large that even 60-minute datasets answer "not ready" for a second only.
        let app = DataApp::spawn(backend, 1.0e6, |_| {}).await;
        let sim = app.agencies.sim.clone();
        // Group the catalogue by the kind of subject and a method each dataset accepts.
        let mut groups: Vec<(IdentityMethod, Vec<String>)> = Vec::new();
        for d in sim.catalog().datasets() {
            let method = IdentityMethod::ALL
                .into_iter()
                .find(|m| d.accepts(*m) && m.level().satisfies(d.min_level()))
                .unwrap();
            match groups.iter_mut().find(|(m, _)| *m == method) {
                Some((_, v)) => v.push(d.id.clone()),
                None => groups.push((method, vec![d.id.clone()])),
            }
        }
        let mut transfers = Vec::new();
        for (method, datasets) in &groups {
            let subject = match method.subject_kind() {
                SubjectKind::Natural => person(&sim),
                SubjectKind::Legal => sim.population().companies()[0].ban.as_str().to_owned(),
            };
            let ids: Vec<&str> = datasets.iter().map(String::as_str).collect();
            transfers.push((
                app.fetch(&subject, *method, &ids).await,
                subject,
                datasets.len(),
            ));
        }
        let total: usize = transfers.iter().map(|t| t.2).sum();
        assert_eq!(total, sim.catalog().datasets().len());

        // Move the clock a second at a time until every transfer is ready (bounded).
        let mut open = Vec::new();
        for _ in 0..600 {
            open.clear();
            for (id, _, _) in &transfers {
                let t = app.transfer(id).await;
                if t.state != TransferState::Ready {
                    // Not ready yet: its open datasets, or (all fetched) its package still to come.
                    open.push(format!("transfer {} {}", t.id, t.state));
                    open.extend(
                        t.datasets
                            .into_iter()
                            .filter(|d| d.status != fetch_status::SUCCEEDED)
                            .map(|d| format!("{} {}", d.dataset_id, d.status)),
                    );
                }
            }
            if open.is_empty() {
                break;
            }
            app.clock.advance(Duration::from_millis(1100));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(open.is_empty(), "not fetched: {open:?}");
        let trust = app.trust();
        for (id, subject, n) in &transfers {
            let t = app.until_state(id, TransferState::Ready).await;
            for d in &t.datasets {
                assert_eq!(d.status, fetch_status::SUCCEEDED, "{d:?}");
                assert_eq!(d.digest.as_ref().map(String::len), Some(64));
                assert!(d.error_code.is_none());
                assert!(d.settled_at.is_some());
            }
            let pkg = app.store().package(id).await.unwrap().unwrap();
            assert_eq!(pkg.datasets as usize, *n);
            // The identity is destroyed once fetching is over.
            assert_eq!(app.store().transfer_secret(id).await.unwrap(), None);

            let zip = take_package(&app.state, id, "test").await.unwrap();
            let report = mydata_package::verify_package(
                &zip,
                &trust,
                Some(app.state.platform().verifying_key()),
                app.clock.now(),
            );
            assert!(report.is_ok(), "{report:?}");
            assert_eq!(report.datasets.len(), *n);
            let receipt = report.receipt.unwrap();
            assert_eq!(receipt.transfer_id, *id);
            assert_eq!(receipt.subject, t.subject);

            // Exactly once: the second retrieval finds nothing, and nothing is left.
            assert!(matches!(
                take_package(&app.state, id, "test").await,
                Err(TakeError::Gone(_))
            ));
            let after = app.transfer(id).await;
            assert_eq!(after.state, TransferState::Deleted);
            let pkg = app.store().package(id).await.unwrap().unwrap();
            assert!(pkg.sealed_key.is_none() && pkg.taken_at.is_some());
            assert_no_id_in_audit(&app, id, subject).await;
            let kinds: Vec<String> = app
                .store()
                .audit_for_transfer(id)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect();
            for k in [
                "agency.request",
                "agency.outcome",
                "package.created",
                "package.taken",
            ] {
                assert!(kinds.iter().any(|x| x == k), "{k} missing in {kinds:?}");
            }
        }
        // Fetched data is deleted just after its transfer turns ready, which may be after the
        // package was taken.
        eventually("no blobs left behind", || async {
            app.objects().is_empty()
        })
        .await;
        if backend == Backend::Sqlite {
            // Not even the database file holds an ID number in clear.
            let db_dir = app
                .db
                .as_ref()
                .unwrap()
                .dir
                .as_ref()
                .unwrap()
                .path()
                .to_owned();
            for entry in std::fs::read_dir(db_dir).unwrap().flatten() {
                let bytes = std::fs::read(entry.path()).unwrap();
                for (_, subject, _) in &transfers {
                    assert!(
                        !bytes
                            .windows(subject.len())
                            .any(|w| w == subject.as_bytes()),
                        "{} holds an ID number",
                        entry.path().display()
                    );
                }
            }
        }
    }
}

/// A package the platform made from real agency answers (fetch jobs, connector checks, assembly,
/// one retrieval), saved as a recipient would save it and checked with the standard tools only:
/// `scripts/verify-package`, the script docs/PACKAGE.md shows. The test fails if the script fails.
#[tokio::test]
async fn a_fetched_package_passes_the_documented_standard_tools_script() {
    use p256::pkcs8::EncodePublicKey;
    // The only CSV dataset takes 5 minutes; at this time scale it answers "not ready" briefly.
    let app = DataApp::spawn(Backend::Sqlite, 1.0e6, |_| {}).await;
    let sim = app.agencies.sim.clone();
    // Every data format among the datasets: JSON always, CSV and PDF where the catalogue lists them.
    let csv = dataset_where(&sim, |d| d.offers(mydata_core::catalog::DataFormat::Csv));
    let pdf = dataset_where(&sim, |d| {
        d.ready_minutes == 0
            && d.offers(mydata_core::catalog::DataFormat::Pdf)
            && d.offers(mydata_core::catalog::DataFormat::Json)
    });
    let id = app
        .fetch(
            &person(&sim),
            IdentityMethod::MoicaCert,
            &[&csv.id, &pdf.id],
        )
        .await;
    for _ in 0..600 {
        if app.transfer(&id).await.state == TransferState::Ready {
            break;
        }
        app.clock.advance(Duration::from_millis(1100));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = app.until_state(&id, TransferState::Ready).await;
    assert!(
        t.datasets
            .iter()
            .all(|d| d.status == fetch_status::SUCCEEDED),
        "{:?}",
        t.datasets
    );
    let zip = take_package(&app.state, &id, "test").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("package.zip"), &zip).unwrap();
    std::fs::write(dir.path().join("root.pem"), sim.root_pem()).unwrap();
    std::fs::write(dir.path().join("crl.pem"), sim.crl_pem().unwrap()).unwrap();
    let platform = app
        .state
        .platform()
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(dir.path().join("platform.pem"), platform).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/verify-package");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .current_dir(dir.path())
        .env("ATTIME", (app.clock.now().millis() / 1000).to_string())
        .output()
        .expect("bash, openssl, unzip, coreutils and jq are needed (.ci/run installs them)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(stdout.ends_with("ALL CHECKS PASSED\n"), "{all}");
    for ds in [&csv.id, &pdf.id] {
        assert!(stdout.contains(&format!("== dataset {ds}\n")), "{all}");
    }
    // Every data file was hashed by sha256sum, the CSV and the PDF among them.
    for file in ["data.json: OK", "data.csv: OK", "data.pdf: OK"] {
        assert!(stdout.contains(file), "{file} not checked: {all}");
    }
    // Two agency signatures per dataset and the platform's receipt, each checked by openssl.
    assert_eq!(stdout.matches("Verified OK").count(), 2 * 2 + 1, "{all}");

    // The same script refuses the package once a byte of it is changed.
    let mut tampered = zip.clone();
    let at = tampered.len() / 2;
    tampered[at] ^= 0x01;
    std::fs::write(dir.path().join("package.zip"), &tampered).unwrap();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .current_dir(dir.path())
        .env("ATTIME", (app.clock.now().millis() / 1000).to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ALL CHECKS PASSED"));
}

#[tokio::test]
async fn a_slow_dataset_is_polled_at_retry_after_on_the_time_scale() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // 60x: a 60-minute dataset is ready after one minute.
        let app = DataApp::spawn(backend, 60.0, |_| {}).await;
        let sim = app.agencies.sim.clone();
        let slow = dataset_where(&sim, |d| d.ready_minutes == 60);
        let id = app
            .fetch(&person(&sim), IdentityMethod::MoicaCert, &[&slow.id])
            .await;
        let d = app
            .until_dataset(&id, &slow.id, "not ready recorded", |d| {
                d.status == fetch_status::NOT_READY
            })
            .await;
        assert_eq!(d.attempts, 1);
        assert_eq!(
            d.next_attempt_at,
            Some(Timestamp::from_millis(T0).plus(Duration::from_secs(60)))
        );
        // Real time passes, the clock does not: no second call before Retry-After.
        app.clock.advance(Duration::from_secs(59));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let d = app.transfer(&id).await.datasets[0].clone();
        assert_eq!(
            (d.status.as_str(), d.attempts),
            (fetch_status::NOT_READY, 1)
        );

        app.clock.advance(Duration::from_secs(1));
        let t = app.until_state(&id, TransferState::Ready).await;
        assert_eq!(t.datasets[0].status, fetch_status::SUCCEEDED);
        assert_eq!(t.datasets[0].attempts, 2);
        let outcomes: Vec<String> = app
            .store()
            .audit_for_transfer(&id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "agency.outcome")
            .map(|e| e.detail["outcome"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(outcomes, ["not_ready", "succeeded"]);
    }
}

#[tokio::test]
async fn a_pending_fetch_resumes_after_a_restart_and_completes_once() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = DataApp::spawn(backend, 60.0, |_| {}).await;
        let sim = app.agencies.sim.clone();
        let slow = dataset_where(&sim, |d| d.ready_minutes == 60);
        let instant = instant(&sim);
        let id = app
            .fetch(
                &person(&sim),
                IdentityMethod::MoicaCert,
                &[&slow.id, &instant.id],
            )
            .await;
        app.until_dataset(&id, &slow.id, "not ready", |d| {
            d.status == fetch_status::NOT_READY
        })
        .await;
        app.until_dataset(&id, &instant.id, "instant done", |d| {
            d.status == fetch_status::SUCCEEDED
        })
        .await;
        // The process stops while the slow dataset is pending; another takes over the database.
        let app = app.restart(|_| {}).await;
        app.clock.advance(Duration::from_secs(61));
        let t = app.until_state(&id, TransferState::Ready).await;
        let slow_rec = t.datasets.iter().find(|d| d.dataset_id == slow.id).unwrap();
        assert_eq!(
            (slow_rec.status.as_str(), slow_rec.attempts),
            (fetch_status::SUCCEEDED, 2)
        );
        let events = app.store().audit_for_transfer(&id).await.unwrap();
        let succeeded = events
            .iter()
            .filter(|e| e.kind == "agency.outcome" && e.detail["outcome"] == "succeeded")
            .count();
        assert_eq!(succeeded, 2, "each dataset succeeded exactly once");
        assert_eq!(
            events
                .iter()
                .filter(|e| e.kind == "package.created")
                .count(),
            1
        );
        // Give stray workers a chance to act twice; nothing changes.
        app.clock.advance(Duration::from_secs(600));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            app.store().audit_for_transfer(&id).await.unwrap().len(),
            events.len()
        );
        app.take_and_check(&id).await;
    }
}

/// Faults an agency answer may carry that the platform must refuse, with the code it records.
fn refusals() -> Vec<(&'static str, FaultConfig, &'static str, &'static str)> {
    let f = FaultConfig::default;
    vec![
        (
            "malformed",
            FaultConfig {
                malformed: true,
                ..f()
            },
            fetch_status::REJECTED,
            "malformed_response",
        ),
        (
            "oversized",
            FaultConfig {
                oversized_bytes: 300_000,
                ..f()
            },
            fetch_status::REJECTED,
            "response_too_large",
        ),
        (
            "unsigned",
            FaultConfig {
                unsigned: true,
                ..f()
            },
            fetch_status::REJECTED,
            "unsigned_response",
        ),
        (
            "wrong agency",
            FaultConfig {
                wrong_agency: true,
                ..f()
            },
            fetch_status::REJECTED,
            "wrong_agency",
        ),
        (
            "bad signature",
            FaultConfig {
                bad_signature: true,
                ..f()
            },
            fetch_status::REJECTED,
            "bad_signature",
        ),
        (
            "expired certificate",
            FaultConfig {
                expired_certificate: true,
                ..f()
            },
            fetch_status::REJECTED,
            "certificate_expired",
        ),
    ]
}

#[tokio::test]
async fn refused_agency_answers_are_recorded_and_never_stored() {
    let app = DataApp::spawn(Backend::Sqlite, 1.0, |s| {
        s.agencies.max_response_bytes = 256 * 1024;
    })
    .await;
    let sim = app.agencies.sim.clone();
    let ds = instant(&sim);
    let subject = person(&sim);
    for (name, fault, status, code) in refusals() {
        app.agencies.fault(&ds.agency, fault);
        let id = app
            .fetch(&subject, IdentityMethod::MoicaCert, &[&ds.id])
            .await;
        let t = app.until_settled(&id).await;
        let d = &t.datasets[0];
        assert_eq!(
            (d.status.as_str(), d.error_code.as_deref()),
            (status, Some(code)),
            "{name}: {d:?}"
        );
        assert!(d.digest.is_none(), "{name}");
        assert!(
            d.error_message
                .as_deref()
                .is_some_and(|m| !m.contains(&subject))
        );
        let rec = app
            .store()
            .fetch_record(&id, &ds.id)
            .await
            .unwrap()
            .unwrap();
        assert!(
            rec.data_object.is_none() && rec.data_key.is_none(),
            "{name}"
        );
        let outcome = app
            .store()
            .audit_for_transfer(&id)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.kind == "agency.outcome")
            .unwrap();
        assert_eq!(outcome.detail["error_code"], code, "{name}");
        // Settled with nothing fetched: the transfer is ready with no package.
        let t = app.until_state(&id, TransferState::Ready).await;
        assert_eq!(t.datasets[0].status, status);
        assert!(app.store().package(&id).await.unwrap().is_none(), "{name}");
        assert_no_id_in_audit(&app, &id, &subject).await;
    }
    assert_eq!(
        app.objects(),
        Vec::<String>::new(),
        "a refused answer was stored"
    );
}

#[tokio::test]
async fn transient_agency_errors_are_retried_with_backoff_until_the_deadline() {
    let app = DataApp::spawn(Backend::Sqlite, 1.0, |s| {
        s.agencies.request_timeout_ms = 300;
        s.agencies.fetch_deadline_secs = 60;
        s.agencies.retry_base_ms = 4000;
        s.agencies.circuit_failures = 1000;
    })
    .await;
    let sim = app.agencies.sim.clone();
    let ds = instant(&sim);
    let subject = person(&sim);
    let cases = [
        (
            "429",
            FaultConfig {
                rate_limited: true,
                ..Default::default()
            },
            "rate_limited",
        ),
        (
            "5xx",
            FaultConfig {
                error_rate: 1.0,
                ..Default::default()
            },
            "agency_unavailable",
        ),
        (
            "timeout",
            FaultConfig {
                latency_ms: 1500,
                ..Default::default()
            },
            "agency_timeout",
        ),
    ];
    for (name, fault, code) in cases {
        app.agencies.fault(&ds.agency, fault);
        let start = app.clock.now();
        let id = app
            .fetch(&subject, IdentityMethod::MoicaCert, &[&ds.id])
            .await;
        let d = app
            .until_dataset(&id, &ds.id, "first error", |d| {
                d.attempts == 1 && d.error_code.is_some()
            })
            .await;
        assert_eq!(d.status, fetch_status::PENDING, "{name}");
        assert_eq!(d.error_code.as_deref(), Some(code), "{name}");
        let wait = start.until(d.next_attempt_at.unwrap());
        // Exponential back-off with jitter: between half and all of the base (Retry-After 1 s for 429).
        assert!(
            wait >= Duration::from_secs(2) && wait <= Duration::from_secs(4),
            "{name}: {wait:?}"
        );
        // Keep moving the clock: retries continue until the deadline, then the fetch fails.
        for _ in 0..40 {
            if app.transfer(&id).await.datasets[0].status == fetch_status::FAILED {
                break;
            }
            app.clock.advance(Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(if name == "timeout" {
                400
            } else {
                40
            }))
            .await;
        }
        let d = app.until_settled(&id).await.datasets[0].clone();
        assert_eq!(d.status, fetch_status::FAILED, "{name}");
        assert!(d.attempts >= 2, "{name}: {d:?}");
        assert!(
            matches!(d.error_code.as_deref(), Some(c) if c == code || c == "deadline_exceeded"),
            "{name}: {d:?}"
        );
        assert!(
            d.settled_at.unwrap() <= start.plus(Duration::from_secs(61 + 5)),
            "{name}"
        );
    }
    assert_eq!(app.objects(), Vec::<String>::new());
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_outages_and_recovers_with_a_probe() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = DataApp::spawn(backend, 1.0, |s| {
            s.agencies.circuit_failures = 2;
            s.agencies.circuit_open_secs = 120;
            s.agencies.retry_base_ms = 1000;
            s.agencies.retry_max_delay_secs = 2;
        })
        .await;
        let sim = app.agencies.sim.clone();
        let ds = instant(&sim);
        app.agencies.fault(
            &ds.agency,
            FaultConfig {
                error_rate: 1.0,
                ..Default::default()
            },
        );
        let id = app
            .fetch(&person(&sim), IdentityMethod::MoicaCert, &[&ds.id])
            .await;
        app.until_dataset(&id, &ds.id, "first outage", |d| {
            d.attempts == 1 && d.next_attempt_at.is_some()
        })
        .await;
        app.clock.advance(Duration::from_secs(3));
        app.until_dataset(&id, &ds.id, "second outage", |d| {
            d.attempts == 2
                && d.next_attempt_at
                    .is_some_and(|t| t > Timestamp::from_millis(T0 + 3000))
        })
        .await;
        // The second outage opened the circuit: the next run does not call the agency.
        app.clock.advance(Duration::from_secs(3));
        app.until_dataset(&id, &ds.id, "circuit open", |d| {
            d.error_code.as_deref() == Some("circuit_open")
        })
        .await;
        let circuit = app
            .store()
            .agency_circuit(&ds.agency)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(circuit.consecutive_failures, 2);
        let opened_until = circuit.open_until.unwrap();
        let d = app.transfer(&id).await.datasets[0].clone();
        assert_eq!(d.attempts, 2, "no call while the circuit is open");
        assert!(d.next_attempt_at.unwrap() >= opened_until);

        // The agency recovers; nothing is sent until the circuit's time is up, then one probe.
        app.agencies.fault(&ds.agency, FaultConfig::default());
        app.clock.advance(Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(app.transfer(&id).await.datasets[0].attempts, 2);
        app.clock.set(opened_until.plus(Duration::from_secs(2)));
        let t = app.until_state(&id, TransferState::Ready).await;
        assert_eq!(t.datasets[0].status, fetch_status::SUCCEEDED);
        assert_eq!(t.datasets[0].attempts, 3);
        let circuit = app
            .store()
            .agency_circuit(&ds.agency)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (circuit.consecutive_failures, circuit.open_until),
            (0, None)
        );
    }
}

#[tokio::test]
async fn a_package_not_retrieved_is_destroyed_at_eight_hours_and_a_copy_is_unreadable() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // The package in the object store, where a copy could be kept apart from the database.
        let app = DataApp::spawn(backend, 1.0, |s| {
            s.jobs.sweep_interval_secs = 3600;
            s.storage.inline_max_bytes = 0;
        })
        .await;
        let sim = app.agencies.sim.clone();
        let ds = instant(&sim);
        let id = app
            .fetch(&person(&sim), IdentityMethod::MoicaCert, &[&ds.id])
            .await;
        let t = app.until_state(&id, TransferState::Ready).await;
        let pkg = app.store().package(&id).await.unwrap().unwrap();
        assert_eq!(
            pkg.expires_at,
            t.created_at.plus(mydata_core::limits::PACKAGE_TTL)
        );
        // The fetched data's blob is deleted just after the transfer turns ready: only the
        // package's is left.
        eventually("only the package's blob left", || async {
            app.objects().len() == 1
        })
        .await;
        let objects = app.objects();
        // Someone keeps a copy of the blob (a backup, a replica).
        let copy = std::fs::read(&objects[0]).unwrap();
        assert!(
            !copy.windows(13).any(|w| w == b"manifest.json"),
            "blob is not encrypted"
        );

        // One millisecond before the limit nothing is destroyed.
        app.clock
            .set(Timestamp::from_millis(pkg.expires_at.millis() - 1));
        mydata_server::background::sweep_expired(&app.state)
            .await
            .unwrap();
        assert_eq!(purge_expired_data(&app.state).await.unwrap(), 0);
        assert!(
            app.store()
                .package(&id)
                .await
                .unwrap()
                .unwrap()
                .sealed_key
                .is_some()
        );

        app.clock.set(pkg.expires_at);
        mydata_server::background::sweep_expired(&app.state)
            .await
            .unwrap();
        assert_eq!(purge_expired_data(&app.state).await.unwrap(), 1);
        let gone = app.store().package(&id).await.unwrap().unwrap();
        assert!(gone.sealed_key.is_none() && gone.deleted_at == Some(pkg.expires_at));
        assert_eq!(app.transfer(&id).await.state, TransferState::Expired);
        assert_eq!(app.objects(), Vec::<String>::new());
        assert!(matches!(
            take_package(&app.state, &id, "test").await,
            Err(TakeError::Gone(_))
        ));
        // Nothing in the database opens the copy any more: no key is left for it.
        assert!(
            app.store()
                .fetch_records(&id)
                .await
                .unwrap()
                .iter()
                .all(|r| r.data_key.is_none())
        );
        assert_eq!(app.store().transfer_secret(&id).await.unwrap(), None);
        let kinds: Vec<String> = app
            .store()
            .audit_for_transfer(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(kinds.contains(&"package.deleted".to_owned()), "{kinds:?}");
        // And the purge is idempotent.
        assert_eq!(purge_expired_data(&app.state).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn an_expired_transfer_stops_its_fetch_and_forgets_the_identity() {
    let app = DataApp::spawn(Backend::Sqlite, 1.0, |s| s.jobs.sweep_interval_secs = 3600).await;
    let sim = app.agencies.sim.clone();
    let slow = dataset_where(&sim, |d| d.ready_minutes == 60);
    let id = app
        .fetch(&person(&sim), IdentityMethod::MoicaCert, &[&slow.id])
        .await;
    app.until_dataset(&id, &slow.id, "not ready", |d| {
        d.status == fetch_status::NOT_READY
    })
    .await;
    assert!(app.store().transfer_secret(&id).await.unwrap().is_some());
    app.clock.advance(mydata_core::limits::PACKAGE_TTL);
    mydata_server::background::sweep_expired(&app.state)
        .await
        .unwrap();
    purge_expired_data(&app.state).await.unwrap();
    assert_eq!(app.store().transfer_secret(&id).await.unwrap(), None);
    let d = app
        .until_dataset(&id, &slow.id, "fetch closed", |d| {
            fetch_status::is_settled(&d.status)
        })
        .await;
    // Whichever comes first, the sweep or the job's own deadline check, the fetch stops.
    assert_eq!(d.status, fetch_status::FAILED);
    assert!(
        matches!(
            d.error_code.as_deref(),
            Some("transfer_closed" | "deadline_exceeded")
        ),
        "{d:?}"
    );
    assert_eq!(app.objects(), Vec::<String>::new());
}

#[tokio::test]
async fn start_fetch_refuses_bad_input_and_changes_nothing() {
    let app = DataApp::spawn(Backend::Sqlite, 1.0, |_| {}).await;
    let sim = app.agencies.sim.clone();
    let ds = instant(&sim);
    let subject = person(&sim);
    let req = |subject: &str,
               method: IdentityMethod,
               level: AssuranceLevel,
               datasets: Vec<String>| StartFetch {
        transfer: NewTransfer {
            id: uuid::Uuid::new_v4().to_string(),
            kind: TransferKind::SelfDownload,
            subject: "p".into(),
            recipient: None,
            purpose: "x".into(),
            datasets,
        },
        subject_id: subject.to_owned(),
        method,
        level,
        answers: None,
    };
    let cases = [
        req(
            "A12345678",
            IdentityMethod::MoicaCert,
            AssuranceLevel::L1,
            vec![ds.id.clone()],
        ),
        req(
            &subject,
            IdentityMethod::DualId,
            AssuranceLevel::L1,
            vec![ds.id.clone()],
        ),
        req(
            &subject,
            IdentityMethod::MoicaCert,
            AssuranceLevel::L1,
            vec!["no-such-dataset".into()],
        ),
        req(
            &subject,
            IdentityMethod::MoicaCert,
            AssuranceLevel::L1,
            vec![],
        ),
    ];
    for r in cases {
        let id = r.transfer.id.clone();
        let err = start_fetch(&app.state, r, "p").await.unwrap_err();
        assert!(
            matches!(err, mydata_server::agencies::StartError::Invalid(_)),
            "{err}"
        );
        assert!(!err.to_string().contains(&subject));
        assert!(app.store().transfer(&id).await.unwrap().is_none());
    }
    let _ = &app.key;
}

#[tokio::test]
async fn dev_endpoints_fetch_for_a_synthetic_person_and_hand_the_package_out_once() {
    let off = DataApp::spawn(Backend::Sqlite, 1.0, |_| {}).await;
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}/api/v1/dev/fetches", off.base))
        .json(&serde_json::json!({"subject": "A123456789", "datasets": ["x"]}))
        .send()
        .await
        .unwrap();
    crate::helpers::assert_problem(res, 404, "route_not_found").await;
    drop(off);

    let app = DataApp::spawn(Backend::Sqlite, 1.0, |s| s.dev.endpoints = true).await;
    let sim = app.agencies.sim.clone();
    let ds = instant(&sim);
    let subject = person(&sim);
    let post = |body: serde_json::Value| {
        http.post(format!("{}/api/v1/dev/fetches", app.base))
            .json(&body)
            .send()
    };
    for (body, status, code) in [
        (
            serde_json::json!({"subject": "A12345678", "datasets": [ds.id]}),
            422,
            "invalid_body",
        ),
        (
            serde_json::json!({"subject": subject, "datasets": ["no-such"]}),
            404,
            "dataset_not_found",
        ),
        (
            serde_json::json!({"subject": subject, "datasets": []}),
            422,
            "empty_selection",
        ),
        (
            serde_json::json!({"subject": subject, "datasets": [ds.id], "method": "palm"}),
            400,
            "invalid_parameter",
        ),
        (
            serde_json::json!({"subject": subject, "datasets": [ds.id], "extra": 1}),
            422,
            "invalid_body",
        ),
    ] {
        let res = post(body).await.unwrap();
        let problem = crate::helpers::assert_problem(res, status, code).await;
        assert!(!problem.to_string().contains(&subject));
    }
    let res = post(serde_json::json!({"subject": subject, "datasets": [ds.id]}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let created: serde_json::Value = res.json().await.unwrap();
    let id = created["transfer_id"].as_str().unwrap().to_owned();
    assert_eq!(created["method"], "moica_cert");
    app.until_state(&id, TransferState::Ready).await;
    let status: serde_json::Value = http
        .get(format!(
            "{}{}",
            app.base,
            created["status"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "ready");
    assert_eq!(status["datasets"][0]["status"], "succeeded");
    assert!(status["package"]["digest"].as_str().is_some());
    assert!(status["package"].get("sealed_key").is_none(), "{status}");
    let package_url = format!("{}{}", app.base, created["package"].as_str().unwrap());
    let res = http.get(&package_url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "application/zip");
    let zip = res.bytes().await.unwrap();
    let report = mydata_package::verify_package(
        &zip,
        &app.trust(),
        Some(app.state.platform().verifying_key()),
        app.clock.now(),
    );
    assert!(report.is_ok(), "{report:?}");
    let res = http.get(&package_url).send().await.unwrap();
    crate::helpers::assert_problem(res, 410, "package_gone").await;
    assert_eq!(app.objects(), Vec::<String>::new());
}

/// A synthetic subject's ID number or 統一編號 as the identity module takes it.
fn subject_id(raw: &str) -> mydata_server::identity::SubjectId {
    match mydata_core::IdNumber::parse(raw) {
        Ok(n) => mydata_server::identity::SubjectId::Person(n),
        Err(_) => mydata_server::identity::SubjectId::Company(
            mydata_core::BusinessId::parse(raw).unwrap(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_runs_in_the_process_that_started_it_as_far_as_it_has_room() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // Room for one job at a time; the agencies answer after a second of real time, so the
        // jobs are still running when the start returns.
        let app = DataApp::spawn(backend, 1.0, |s| s.jobs.concurrency = 1).await;
        let sim = app.agencies.sim.clone();
        let two: Vec<Dataset> = sim
            .catalog()
            .datasets()
            .iter()
            .filter(|d| d.accepts(IdentityMethod::MoicaCert) && d.ready_minutes == 0)
            .take(2)
            .cloned()
            .collect();
        for d in &two {
            app.agencies.delay(&d.agency, 1_000);
        }
        let starter = app.state.starter().worker().to_owned();
        let ids: Vec<&str> = two.iter().map(|d| d.id.as_str()).collect();
        let fetch_jobs = || async {
            app.store()
                .jobs_in_queue(mydata_server::agencies::FETCH_QUEUE)
                .await
                .unwrap()
        };
        let id = app
            .fetch(&person(&sim), IdentityMethod::MoicaCert, &ids)
            .await;
        // The first fetch was stored leased to the starting process, at its first attempt; the
        // second, beyond its room, went to the workers.
        let jobs = fetch_jobs().await;
        let by_starter: Vec<_> = jobs
            .iter()
            .filter(|j| j.lease_owner.as_deref() == Some(starter.as_str()))
            .collect();
        assert_eq!(jobs.len(), 2);
        assert_eq!(by_starter.len(), 1, "{jobs:?}");
        assert_eq!(
            (by_starter[0].state, by_starter[0].attempts),
            (mydata_store::JobState::Running, 1)
        );
        assert_eq!(
            by_starter[0].payload["dataset_id"],
            serde_json::json!(two[0].id)
        );
        // Both run to the end, once each, and the package follows.
        let t = app.until_state(&id, TransferState::Ready).await;
        assert!(t.datasets.iter().all(|d| d.attempts == 1), "{t:?}");
        let jobs = fetch_jobs().await;
        assert!(
            jobs.iter()
                .all(|j| j.state == mydata_store::JobState::Done && j.attempts == 1),
            "{jobs:?}"
        );
        // The room is given back: the next start runs its fetch here again.
        eventually("the starter's room given back", || async {
            app.state.starter().room() == 1
        })
        .await;
        let next = app
            .fetch(&person(&sim), IdentityMethod::MoicaCert, &ids[1..])
            .await;
        let jobs = fetch_jobs().await;
        let job = jobs
            .iter()
            .find(|j| j.payload["transfer_id"] == serde_json::json!(next))
            .unwrap();
        assert_eq!(job.lease_owner.as_deref(), Some(starter.as_str()));
        app.until_state(&next, TransferState::Ready).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_that_finds_the_agency_busy_goes_ahead_once_this_process_frees_the_slot() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // One call at a time to the agency, each answered after 150 ms of real time. The clock
        // stands still, so a job put off to a later clock time would never run again: only the
        // in-process wait for the freed slot lets the second fetch through.
        let app = DataApp::spawn(backend, 1.0, |s| s.agencies.concurrency = 1).await;
        let sim = app.agencies.sim.clone();
        let ds = instant(&sim);
        app.agencies.delay(&ds.agency, 150);
        let subject = person(&sim);
        let datasets = [ds.id.as_str()];
        let (a, b) = tokio::join!(
            app.fetch(&subject, IdentityMethod::MoicaCert, &datasets),
            app.fetch(&subject, IdentityMethod::MoicaCert, &datasets),
        );
        for id in [a, b] {
            eventually_within("both fetched", Duration::from_secs(20), || async {
                app.transfer(&id).await.datasets[0].status == fetch_status::SUCCEEDED
            })
            .await;
        }
        assert_eq!(
            app.store()
                .agency_slots_in_use(&ds.agency, app.clock.now())
                .await
                .unwrap(),
            0
        );
    }
}

/// The fetch that settles a transfer's last dataset packages the transfer itself, in its own
/// write: no packaging job, the dataset it holds never stored; the data stored by the fetch that
/// settled first is read into the package and deleted. A self-download still goes through the
/// packaging job (its notice follows the packaging).
/// Above `storage.inline_max_bytes` a package rests in the object store, not in its row, and
/// its blob goes when it is taken; at or below, nothing is written there at all.
#[tokio::test]
async fn a_package_above_the_inline_limit_rests_in_the_object_store_until_taken() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = DataApp::spawn(backend, 1.0, |s| s.storage.inline_max_bytes = 1).await;
        let sim = app.agencies.sim.clone();
        let ds = instant(&sim);
        let id = app
            .fetch_for(
                TransferKind::Counter,
                &person(&sim),
                IdentityMethod::MoicaCert,
                &[&ds.id],
            )
            .await;
        app.until_state(&id, TransferState::Ready).await;
        let pkg = app.store().package(&id).await.unwrap().unwrap();
        assert!(
            pkg.body.is_none(),
            "{backend:?}: above the limit, not in the row"
        );
        let file = app.dir.path().join("objects").join(&pkg.object_key);
        assert!(std::fs::metadata(&file).unwrap().len() > 0);
        assert_eq!(app.take_and_check(&id).await.datasets.len(), 1);
        assert!(!file.exists(), "{backend:?}: the blob goes with the take");
    }
}

#[tokio::test]
async fn the_last_fetch_packages_the_transfer_in_its_own_write() {
    use mydata_server::packages::PACKAGE_QUEUE;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // Room in the row for this two-dataset package with its PDFs.
        let app = DataApp::spawn(backend, 1.0, |s| s.storage.inline_max_bytes = 16 << 20).await;
        let sim = app.agencies.sim.clone();
        let first = instant(&sim);
        let last = dataset_where(&sim, |d| {
            d.agency != first.agency && d.ready_minutes == 0 && d.accepts(IdentityMethod::MoicaCert)
        });
        // The second agency answers later, so the first dataset settles (and is stored) first.
        app.agencies.delay(&last.agency, 300);
        let packaging = || async { app.store().jobs_in_queue(PACKAGE_QUEUE).await.unwrap() };
        let subject = person(&sim);
        let id = app
            .fetch_for(
                TransferKind::Counter,
                &subject,
                IdentityMethod::MoicaCert,
                &[&first.id, &last.id],
            )
            .await;
        app.until_state(&id, TransferState::Ready).await;
        assert!(packaging().await.is_empty(), "{:?}", packaging().await);
        let kinds: Vec<(String, serde_json::Value)> = app
            .store()
            .audit_for_transfer(&id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.detail["dataset"].clone()))
            .collect();
        let tail: Vec<_> = kinds[kinds.len() - 3..]
            .iter()
            .map(|(k, d)| (k.as_str(), d.as_str().unwrap_or("")))
            .collect();
        assert_eq!(
            tail,
            [
                ("agency.outcome", last.id.as_str()),
                ("package.created", ""),
                ("transfer.ready", "")
            ]
        );
        assert_eq!(app.store().transfer_secret(&id).await.unwrap(), None);
        let pkg = app.store().package(&id).await.unwrap().unwrap();
        assert_eq!(pkg.datasets, 2);
        // No blob is left: the first dataset's is deleted, the last's never was, and the package,
        // small, rests in its row.
        assert!(pkg.body.is_some());
        eventually("no blob left", || async { app.objects().is_empty() }).await;
        assert_eq!(app.take_and_check(&id).await.datasets.len(), 2);

        let own = app
            .fetch(&subject, IdentityMethod::MoicaCert, &[&first.id])
            .await;
        app.until_state(&own, TransferState::Ready).await;
        let jobs = packaging().await;
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert_eq!(jobs[0].payload["transfer_id"], serde_json::json!(own));
    }
}

/// A process that stops finishes the fetch a request started in it (and the packaging after it)
/// before it closes, rather than leaving the job leased to it until the lease runs out.
#[tokio::test]
async fn a_stopping_process_finishes_the_fetches_its_requests_started() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let app = DataApp::spawn(backend, 1.0, |_| {}).await;
        let sim = app.agencies.sim.clone();
        let ds = instant(&sim);
        // The agency answers after half a second of real time: the stop comes during the call.
        app.agencies.delay(&ds.agency, 500);
        let id = app
            .fetch(&person(&sim), IdentityMethod::MoicaCert, &[&ds.id])
            .await;
        let starter = app.state.starter().worker().to_owned();
        let jobs = app
            .store()
            .jobs_in_queue(mydata_server::agencies::FETCH_QUEUE)
            .await
            .unwrap();
        assert_eq!(jobs[0].lease_owner.as_deref(), Some(starter.as_str()));
        // The clock stands still, so no lease runs out: only the stopping process can finish it.
        let app = app.restart(|_| {}).await;
        let t = app.transfer(&id).await;
        assert_eq!(t.state, TransferState::Ready, "{t:?}");
        let jobs = app
            .store()
            .jobs_in_queue(mydata_server::agencies::FETCH_QUEUE)
            .await
            .unwrap();
        assert_eq!(
            (jobs[0].state, jobs[0].attempts),
            (mydata_store::JobState::Done, 1)
        );
    }
}
