//! Replacing the platform's signing key: the keys it replaced stay published beside it
//! (`keys.previous_platform_signing_keys`), so a service that reads the keys again still verifies
//! packages receipted before the rotation, and a receipt naming a key the service has not read
//! says so.

use crate::helpers::{Backend, TestApp};
use mydata_core::{Clock, Timestamp};
use mydata_package::{
    AgencySigner, DataFile, PackageBuilder, PlatformSigner, SimulatedCa, TrustStore, jwk_thumbprint,
};
use mydata_sdk::{Keys, PlatformKeys, Service, ServiceConfig, VerifyError};
use p256::ecdsa::SigningKey;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

fn generate() -> SigningKey {
    <SigningKey as p256::elliptic_curve::Generate>::generate()
}

fn thumbprint(key: &SigningKey) -> String {
    jwk_thumbprint(key.verifying_key())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn private_pem(key: &SigningKey) -> String {
    key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
}

fn public_pem(key: &SigningKey) -> String {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

/// A platform on `listen` signing with the key in `key`, publishing `previous` beside it.
async fn platform(listen: SocketAddr, key: &Path, previous: Vec<PathBuf>) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |s| {
        s.listen = listen;
        s.keys.platform_signing_key = key.display().to_string();
        s.keys.previous_platform_signing_keys = previous;
        s.jobs.enabled = false;
    })
    .await
}

/// A server on a loopback port with its data and its SQLite database in `dir` (the same database
/// for every server of `dir`), signing with `key`, publishing `next` and `previous` beside it.
async fn bind_in(
    dir: &Path,
    key: PathBuf,
    next: Vec<PathBuf>,
    previous: Vec<PathBuf>,
) -> anyhow::Result<mydata_server::Server> {
    let mut s = mydata_server::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    s.database.url = format!("sqlite://{}/shared.db", dir.display());
    s.keys.platform_signing_key = key.display().to_string();
    s.keys.next_platform_signing_keys = next;
    s.keys.previous_platform_signing_keys = previous;
    mydata_server::Server::bind(s, Arc::new(mydata_core::SystemClock)).await
}

/// An agency of a simulated CA, and the trust store a service checks its datasets with.
fn agency(now: Timestamp) -> (AgencySigner, TrustStore) {
    let ago = Timestamp::from_millis(now.millis() - DAY.as_millis() as i64);
    let ca = SimulatedCa::new("MyData Simulated Root CA", ago, now.plus(DAY)).unwrap();
    let (agency, _) = ca
        .issue_agency("mohw-social-work", ago, now.plus(DAY))
        .unwrap();
    let mut trust = TrustStore::new();
    trust.add_roots_pem(ca.root_pem().as_bytes()).unwrap();
    trust
        .add_crl_der(ca.crl(&[], ago, now.plus(DAY)).unwrap().der())
        .unwrap();
    (agency, trust)
}

/// A one-dataset package for transfer `tr-1`, receipted by `platform`.
fn package(agency: &AgencySigner, platform: &PlatformSigner, now: Timestamp) -> Vec<u8> {
    let files = vec![DataFile {
        name: "data.json".into(),
        media_type: "application/json".into(),
        bytes: r#"{"lic_title":"低收入戶"}"#.as_bytes().to_vec(),
    }];
    let mut b = PackageBuilder::new("tr-1", "pseudo-1", "學雜費減免資格審核");
    b.add_dataset(
        agency
            .sign_dataset("tr-1", "low-income-household", now, files)
            .unwrap(),
    )
    .unwrap();
    b.build(platform, now).unwrap()
}

/// The `(kid, use, alg)` of every EC key of a JWK set, in order.
fn signing_keys_of(jwks: &serde_json::Value) -> Vec<(String, String, String)> {
    let text = |k: &serde_json::Value, m: &str| k[m].as_str().unwrap_or_default().to_owned();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kty"] == "EC")
        .map(|k| (text(k, "kid"), text(k, "use"), text(k, "alg")))
        .collect()
}

#[tokio::test]
async fn receipts_signed_before_the_platform_replaced_its_key_verify_after_a_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, stranger) = (generate(), generate(), generate());
    let old_file = write(dir.path(), "old.pem", &private_pem(&old));
    let new_file = write(dir.path(), "new.pem", &private_pem(&new));
    let old_public = write(dir.path(), "old.pub.pem", &public_pem(&old));
    // The platform comes back at the same address (its issuer) with its new key.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let before = platform(listen, &old_file, Vec::new()).await;
    let now = before.clock.now();
    let (agency, trust) = agency(now);
    // No idle connections: the platform is replaced by another process at the same address.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0);
    let config = ServiceConfig::new(
        &before.base,
        "svc",
        "https://sp.example/cb",
        Keys::generate(),
    )
    .unwrap()
    .with_clock(Arc::new(before.clock.clone()))
    .with_http(http)
    .unwrap();
    let service = Service::discover(config).await.unwrap();
    let verify =
        |zip: &[u8], keys: &PlatformKeys| mydata_sdk::verify(zip, "tr-1", &trust, keys, now);
    // Receipted just before the rotation, and taken after it.
    let receipted_before = package(&agency, before.state.platform(), now);
    verify(&receipted_before, &service.platform_signing_keys()).unwrap();
    before.stop().await.unwrap();

    let after = platform(listen, &new_file, vec![old_public]).await;
    assert_eq!(after.base, format!("http://{listen}"));
    // (a) Both key sets list the new key, then the one it replaced, named by their thumbprints.
    let expected = |key: &SigningKey| (thumbprint(key), "sig".to_owned(), "ES256".to_owned());
    for path in ["/oauth/jwks.json", "/.well-known/mydata/jwks.json"] {
        let (status, jwks) = after.get_json(path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            signing_keys_of(&jwks),
            vec![expected(&new), expected(&old)],
            "{path}: {jwks}"
        );
    }
    let (_, jwks) = after.get_json("/oauth/jwks.json").await;
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["crv"] == "X25519"),
        "the sealing key is still there: {jwks}"
    );

    // (c) A receipt by the new key, checked with the keys read before: the service is told which
    // key it lacks and what to do.
    let receipted_after = package(&agency, after.state.platform(), now);
    let err = verify(&receipted_after, &service.platform_signing_keys()).unwrap_err();
    match &err {
        VerifyError::UnknownPlatformKey { kid } => assert_eq!(kid, &thumbprint(&new)),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("refresh_platform_keys"), "{err}");
    // The SDK's own check reads the platform's keys again for it.
    let report = service
        .verify_package(&receipted_after, "tr-1", &trust, now)
        .await
        .unwrap();
    assert!(report.receipt_signature.is_passed());

    // (b) After a refresh, receipts by either key verify.
    service.refresh_platform_keys().await.unwrap();
    let keys = service.platform_signing_keys();
    assert_eq!(
        keys.current().map(|(kid, _)| kid.to_owned()),
        Some(thumbprint(&new))
    );
    for zip in [&receipted_before, &receipted_after] {
        let report = verify(zip, &keys).unwrap();
        assert!(report.receipt_signature.is_passed());
    }
    // A key the platform does not publish stays unknown.
    let forged = package(
        &agency,
        &PlatformSigner::with_thumbprint_kid(stranger.clone()).unwrap(),
        now,
    );
    match verify(&forged, &keys).unwrap_err() {
        VerifyError::UnknownPlatformKey { kid } => assert_eq!(kid, thumbprint(&stranger)),
        other => panic!("{other:?}"),
    }
    match service.verify_package(&forged, "tr-1", &trust, now).await {
        Err(VerifyError::NotPlatformKey { kid }) => assert_eq!(kid, thumbprint(&stranger)),
        other => panic!("{other:?}"),
    }
    after.stop().await.unwrap();
}

/// The previous keys are public keys, as a PEM file or a saved JWK set; a private key, or a file
/// that holds no P-256 key, stops start-up naming the setting and the file.
#[tokio::test]
async fn previous_keys_are_public_keys_and_anything_else_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (current, old, older) = (generate(), generate(), generate());
    let current_file = write(dir.path(), "current.pem", &private_pem(&current));
    // The set the platform published while it signed with `old` (with its sealing key).
    let saved = serde_json::json!({
        "keys": [
            PlatformKeys::from(*old.verifying_key()).public_jwks()[0],
            mydata_package::e2e::HpkeKeyPair::generate().public_jwk(),
        ]
    });
    let saved = write(dir.path(), "jwks-2026.json", &saved.to_string());
    let older_pem = write(dir.path(), "older.pub.pem", &public_pem(&older));
    // The current key's public half, as an operator might list it by mistake.
    let current_pem = write(dir.path(), "current.pub.pem", &public_pem(&current));
    let bind =
        |previous: Vec<PathBuf>| bind_in(dir.path(), current_file.clone(), Vec::new(), previous);

    // The current key listed again is published once.
    let server = bind(vec![saved, older_pem.clone(), current_pem])
        .await
        .unwrap();
    let kids: Vec<&str> = server
        .state()
        .platform_keys()
        .iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        kids,
        [thumbprint(&current), thumbprint(&old), thumbprint(&older)]
    );
    drop(server);

    let private = write(dir.path(), "old-private.pem", &private_pem(&old));
    let mut private_jwk = PlatformKeys::from(*old.verifying_key()).public_jwks()[0].clone();
    private_jwk["d"] = "AAAA".into();
    let private_jwk = write(dir.path(), "old-private.jwk", &private_jwk.to_string());
    let not_a_key = write(dir.path(), "notes.txt", "the old key is in the safe");
    let missing = dir.path().join("missing.pem");
    for (file, says) in [
        (&private, "private key"),
        (&private_jwk, "private JWK"),
        (&not_a_key, "neither a PEM public key nor JSON"),
        (&missing, "cannot read"),
    ] {
        let err = bind(vec![older_pem.clone(), file.clone()])
            .await
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("keys.previous_platform_signing_keys")
                && err.contains(&file.display().to_string())
                && err.contains(says),
            "{err}"
        );
    }
}

/// Switching keys one process at a time, on one database: a process still on the old key that
/// lists the new one as next, and one on the new key that lists the old one as previous, both
/// start, and the first of the latter records the switch; a process with a key it cannot account
/// for does not start, before or after.
#[tokio::test]
async fn processes_switch_to_a_new_key_one_at_a_time_and_an_unaccounted_key_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new, stranger) = (generate(), generate(), generate());
    let file = |name: &str, text: String| write(dir.path(), name, &text);
    let (old_file, new_file) = (
        file("old.pem", private_pem(&old)),
        file("new.pem", private_pem(&new)),
    );
    let stranger_file = file("stranger.pem", private_pem(&stranger));
    let (old_pub, new_pub) = (
        file("old.pub.pem", public_pem(&old)),
        file("new.pub.pem", public_pem(&new)),
    );
    let bind = |key: &Path, next: &[&PathBuf], previous: &[&PathBuf]| {
        let paths = |l: &[&PathBuf]| l.iter().map(|p| p.to_path_buf()).collect();
        bind_in(dir.path(), key.to_path_buf(), paths(next), paths(previous))
    };
    let kids = |server: &mydata_server::Server| -> Vec<String> {
        let keys = server.state().platform_keys();
        keys.iter().map(|(k, _)| k.to_owned()).collect()
    };
    let refused = |err: anyhow::Error, here: &SigningKey| {
        let err = format!("{err:#}");
        assert!(
            err.contains("keys.platform_signing_key")
                && err.contains(&thumbprint(here))
                && err.contains("docs/CONFIGURATION.md"),
            "{err}"
        );
        err
    };

    // The first process records its key; another key, unannounced, is refused.
    let first = bind(&old_file, &[], &[]).await.unwrap();
    let err = refused(bind(&new_file, &[], &[]).await.unwrap_err(), &new);
    assert!(
        err.contains(&thumbprint(&old)),
        "names the recorded key: {err}"
    );

    // Step 1: every process publishes the next key beside its own, still signing with the old.
    let announcing = bind(&old_file, &[&new_pub], &[]).await.unwrap();
    assert_eq!(kids(&announcing), [thumbprint(&old), thumbprint(&new)]);

    // Step 2: the first process on the new key switches the record; the rest follow one by one,
    // and one not yet switched still starts (it signs with a key every process publishes).
    let switched = bind(&new_file, &[], &[&old_pub]).await.unwrap();
    assert_eq!(kids(&switched), [thumbprint(&new), thumbprint(&old)]);
    let lagging = bind(&old_file, &[&new_pub], &[]).await.unwrap();
    assert_eq!(lagging.state().platform().kid(), thumbprint(&old));
    let second = bind(&new_file, &[], &[&old_pub]).await.unwrap();

    // Now the old key alone is a mistake, and so is a key that names the old key as previous
    // but is not the new one.
    let err = refused(bind(&old_file, &[], &[]).await.unwrap_err(), &old);
    assert!(
        err.contains(&thumbprint(&new)),
        "names the recorded key: {err}"
    );
    refused(
        bind(&stranger_file, &[], &[&old_pub]).await.unwrap_err(),
        &stranger,
    );
    // Once the old key's receipts need no longer verify, it is dropped from the list.
    let done = bind(&new_file, &[], &[]).await.unwrap();
    assert_eq!(kids(&done), [thumbprint(&new)]);
    drop((first, announcing, switched, lagging, second, done));
}
