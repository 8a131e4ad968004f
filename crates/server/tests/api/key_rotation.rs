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
/// for every server of `dir`), with the key settings `keys` makes.
async fn bind_in(
    dir: &Path,
    keys: impl FnOnce(&mut mydata_server::config::KeySettings),
) -> anyhow::Result<mydata_server::Server> {
    let mut s = mydata_server::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    };
    s.database.url = format!("sqlite://{}/shared.db", dir.display());
    keys(&mut s.keys);
    mydata_server::Server::bind(s, Arc::new(mydata_core::SystemClock)).await
}

/// [`bind_in`] signing with `key`, publishing `next` and `previous` beside it.
async fn bind_signing(
    dir: &Path,
    key: &Path,
    next: &[&PathBuf],
    previous: &[&PathBuf],
) -> anyhow::Result<mydata_server::Server> {
    let paths = |l: &[&PathBuf]| l.iter().map(|p| p.to_path_buf()).collect();
    bind_in(dir, |k| {
        k.platform_signing_key = key.display().to_string();
        k.next_platform_signing_keys = paths(next);
        k.previous_platform_signing_keys = paths(previous);
    })
    .await
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
    let bind = |previous: Vec<PathBuf>| {
        let (dir, current) = (dir.path(), &current_file);
        async move {
            let previous: Vec<&PathBuf> = previous.iter().collect();
            bind_signing(dir, current, &[], &previous).await
        }
    };

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
    let d = dir.path();
    let kids = |server: &mydata_server::Server| -> Vec<String> {
        let keys = server.state().platform_keys();
        keys.iter().map(|(k, _)| k.to_owned()).collect()
    };
    // Refused, naming the key recorded and this process's.
    let refused = |err: anyhow::Error, recorded: &SigningKey, here: &SigningKey| {
        let err = format!("{err:#}");
        assert!(
            err.contains("keys.platform_signing_key")
                && err.contains(&thumbprint(recorded)[..12])
                && err.contains(&thumbprint(here)[..12])
                && err.contains("docs/CONFIGURATION.md"),
            "{err}"
        );
    };

    // The first process records its key; another key, unannounced, is refused.
    let first = bind_signing(d, &old_file, &[], &[]).await.unwrap();
    let err = bind_signing(d, &new_file, &[], &[]).await.unwrap_err();
    refused(err, &old, &new);

    // Step 1: every process publishes the next key beside its own, still signing with the old.
    let announcing = bind_signing(d, &old_file, &[&new_pub], &[]).await.unwrap();
    assert_eq!(kids(&announcing), [thumbprint(&old), thumbprint(&new)]);

    // Step 2: the first process on the new key switches the record; the rest follow one by one,
    // and one not yet switched still starts (it signs with a key every process publishes).
    let switched = bind_signing(d, &new_file, &[], &[&old_pub]).await.unwrap();
    assert_eq!(kids(&switched), [thumbprint(&new), thumbprint(&old)]);
    let lagging = bind_signing(d, &old_file, &[&new_pub], &[]).await.unwrap();
    assert_eq!(lagging.state().platform().kid(), thumbprint(&old));
    let second = bind_signing(d, &new_file, &[], &[&old_pub]).await.unwrap();

    // Now the old key alone is a mistake, and so is a key that names the old key as previous
    // but is not the new one.
    let err = bind_signing(d, &old_file, &[], &[]).await.unwrap_err();
    refused(err, &new, &old);
    let err = bind_signing(d, &stranger_file, &[], &[&old_pub])
        .await
        .unwrap_err();
    refused(err, &new, &stranger);
    // Once the old key's receipts need no longer verify, it is dropped from the list.
    let done = bind_signing(d, &new_file, &[], &[]).await.unwrap();
    assert_eq!(kids(&done), [thumbprint(&new)]);
    drop((first, announcing, switched, lagging, second, done));
}

/// The data key switches one process at a time like the signing key: announced as next, then
/// current with the old one as previous (the first such process records the switch); a data key
/// the processes cannot account for stops start-up.
#[tokio::test]
async fn processes_switch_to_a_new_data_key_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str, byte: u8| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{}\n", hex::encode([byte; 32]))).unwrap();
        path
    };
    let (old, new, stranger) = (key("old.key", 1), key("new.key", 2), key("stranger.key", 3));
    let bind = |current: &PathBuf, next: &[&PathBuf], previous: &[&PathBuf]| {
        let current = current.display().to_string();
        let paths = |l: &[&PathBuf]| l.iter().map(|p| p.to_path_buf()).collect::<Vec<_>>();
        let (next, previous) = (paths(next), paths(previous));
        bind_in(dir.path(), move |k| {
            k.data_key = current;
            k.next_data_keys = next;
            k.previous_data_keys = previous;
        })
    };
    let check = |byte: u8| {
        let v = mydata_server::vault::Vault::from_key(&[byte; 32]);
        v.check_value()[..12].to_owned()
    };
    let refused = |err: anyhow::Error, recorded: u8, here: u8| {
        let err = format!("{err:#}");
        assert!(
            err.contains("keys.data_key")
                && err.contains("keys.next_data_keys")
                && err.contains(&check(recorded))
                && err.contains(&check(here)),
            "{err}"
        );
    };

    let first = bind(&old, &[], &[]).await.unwrap();
    // Clerk accounts outlive any transfer; their TOTP secrets are sealed with the data key.
    let clerks = crate::counter::register_desks(first.state()).await;
    refused(bind(&new, &[], &[]).await.unwrap_err(), 1, 2);
    let announcing = bind(&old, &[&new], &[]).await.unwrap();
    // What a process already switched seals, one not yet switched opens.
    let sealed = mydata_server::vault::Vault::from_key(&[2; 32])
        .seal("secret:t1", b"A123456789")
        .unwrap();
    let opened = announcing.state().data().vault.open("secret:t1", &sealed);
    assert_eq!(opened.unwrap().as_slice(), b"A123456789");
    let switched = bind(&new, &[], &[&old]).await.unwrap();
    let lagging = bind(&old, &[&new], &[]).await.unwrap();
    refused(bind(&old, &[], &[]).await.unwrap_err(), 2, 1);
    refused(bind(&stranger, &[], &[&old]).await.unwrap_err(), 2, 3);
    // Clerks enrolled by the process not yet switched: sealed with the old key, and sealed again
    // with the new one when they first sign in on a switched process, or by its next sweep.
    use mydata_server::counter::clerk;
    let enrol = |username: &'static str| {
        clerk::register_clerk(
            lagging.state(),
            "chiayi-social",
            username,
            "",
            clerk::Role::Clerk,
            crate::counter::CLERK_PASSWORD,
            None,
        )
    };
    let late = enrol("late").await.unwrap();
    let quiet = enrol("quiet").await.unwrap();
    let sign_in = |state: &mydata_server::state::AppState, user: &str, secret: &str, ago: u64| {
        let at = state.clock().now();
        let at = mydata_core::Timestamp::from_millis(at.millis() - (ago * 1000) as i64);
        let code = clerk::totp_code(secret, at).unwrap();
        let (state, user) = (state.clone(), user.to_owned());
        async move {
            let signed = clerk::check_sign_in(&state, &user, crate::counter::CLERK_PASSWORD, &code);
            signed.await.unwrap().map(|c| c.username).ok()
        }
    };
    let late_secret = late.totp_secret.clone();
    let on_switched = sign_in(switched.state(), "late", &late_secret, 30).await;
    assert_eq!(on_switched.as_deref(), Some("late"));
    let swept = mydata_server::background::sweep(switched.state())
        .await
        .unwrap();
    assert_eq!(swept.clerk_secrets_resealed, 1, "quiet's");
    // A clerk the switch sealed with the new key signs in on the process not yet switched, which
    // must not seal it back with the old key.
    let on_lagging = sign_in(lagging.state(), &clerks[0].0, &clerks[0].1, 30).await;
    assert_eq!(on_lagging.as_deref(), Some(clerks[0].0.as_str()));
    let lagging_sweep = mydata_server::background::sweep(lagging.state())
        .await
        .unwrap();
    assert_eq!(lagging_sweep.clerk_secrets_resealed, 0);
    let done = bind(&new, &[], &[]).await.unwrap();
    // The switch sealed them again with the new key: with the old one gone, clerks still sign in.
    for (user, secret, ago) in [
        (clerks[0].0.as_str(), clerks[0].1.as_str(), 0),
        ("late", late_secret.as_str(), 0),
        ("quiet", quiet.totp_secret.as_str(), 0),
    ] {
        let signed_in = sign_in(done.state(), user, secret, ago).await;
        assert_eq!(signed_in.as_deref(), Some(user), "{user}");
    }
    // A key file that cannot be read names its setting.
    let missing = dir.path().join("missing.key");
    let err = bind(&new, &[], &[&missing]).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("keys.previous_data_keys") && err.contains("missing.key"),
        "{err}"
    );
    drop((first, announcing, switched, lagging, done));
}
