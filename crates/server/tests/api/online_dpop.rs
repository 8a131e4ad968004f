//! DPoP (RFC 9449) for online services: a production service's token is bound to the SDK's DPoP
//! key and the package comes only with a fresh proof by that key; every bad proof, at the token
//! endpoint and at the package endpoint, is refused with `invalid_dpop_proof` (or `invalid_token`)
//! and changes nothing; the registration decides whether test services must use it.

use crate::helpers::Backend;
use crate::online::{
    ADMIN, CLIENT, DATASET, REDIRECT, code_of, consent_and_confirm, refused_with, registration, sdk,
};
use crate::world::FlowWorld;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mydata_core::Clock;
use mydata_core::transfer::TransferState;
use mydata_sdk::{AuthorizationRequest, Keys, Service, Token};
use mydata_server::oauth::clients::Registration;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

const PURPOSE: &str = "學雜費減免資格審核";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Hand-made proofs, for what the SDK never sends.
struct Prover {
    key: SigningKey,
}

impl Prover {
    fn new() -> Self {
        Self {
            key: <SigningKey as p256::elliptic_curve::Generate>::generate(),
        }
    }

    fn jwk(&self) -> Value {
        let point = self.key.verifying_key().to_sec1_point(false);
        json!({ "kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()) })
    }

    fn jkt(&self) -> String {
        mydata_package::jwk_thumbprint(self.key.verifying_key())
    }

    /// An ES256 proof with `header` members over the standard ones (null removes one).
    fn sign(&self, header: Value, claims: &Value) -> String {
        let mut h = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk() });
        for (k, v) in header.as_object().unwrap() {
            if v.is_null() {
                h.as_object_mut().unwrap().remove(k);
            } else {
                h[k] = v.clone();
            }
        }
        let input = format!("{}.{}", b64(h.to_string()), b64(claims.to_string()));
        let sig: p256::ecdsa::Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(sig.to_bytes()))
    }

    fn proof(&self, claims: &Value) -> String {
        self.sign(json!({}), claims)
    }
}

fn claims(w: &FlowWorld, htm: &str, htu: &str, token: Option<&str>) -> Value {
    let mut c = json!({
        "jti": uuid::Uuid::new_v4().to_string(), "htm": htm, "htu": htu,
        "iat": w.app.clock.now().millis() / 1000,
    });
    if let Some(t) = token {
        c["ath"] = b64(Sha256::digest(t.as_bytes())).into();
    }
    c
}

fn tweak(mut c: Value, k: &str, v: Value) -> Value {
    if v.is_null() {
        c.as_object_mut().unwrap().remove(k);
    } else {
        c[k] = v;
    }
    c
}

/// An HS256 "proof" carrying its own symmetric key: a real HMAC, so only the alg rule stops it.
fn hs256(claims: &Value) -> String {
    let secret = b"a-shared-secret-anyone-can-use!!";
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.typ = Some("dpop+jwt".into());
    h.jwk = serde_json::from_value(json!({ "kty": "oct", "k": b64(secret) })).ok();
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_secret(secret)).unwrap()
}

/// An unsigned (`alg: none`) proof.
fn unsigned(p: &Prover, claims: &Value) -> String {
    let h = json!({ "typ": "dpop+jwt", "alg": "none", "jwk": p.jwk() });
    format!("{}.{}.", b64(h.to_string()), b64(claims.to_string()))
}

/// The token endpoint with a fresh client assertion and these DPoP headers.
async fn token_call(
    w: &FlowWorld,
    service: &Service,
    code: &str,
    verifier: &str,
    dpop: &[String],
) -> (u16, Value) {
    let form = [
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", REDIRECT.to_owned()),
        ("code_verifier", verifier.to_owned()),
        ("client_assertion_type", JWT_BEARER.to_owned()),
        (
            "client_assertion",
            service.client_assertion(&w.app.base).unwrap(),
        ),
    ];
    let mut req = reqwest::Client::new()
        .post(format!("{}/oauth/token", w.app.base))
        .form(&form);
    for p in dpop {
        req = req.header("DPoP", p);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    assert_eq!(r.headers()["cache-control"], "no-store");
    (status, r.json().await.unwrap())
}

/// The package endpoint with this Authorization and DPoP headers; status, challenges, body.
async fn package_call(
    url: &str,
    authorization: &str,
    dpop: Option<&str>,
) -> (u16, Vec<String>, Value) {
    let mut req = reqwest::Client::new()
        .get(url)
        .header("authorization", authorization);
    if let Some(p) = dpop {
        req = req.header("DPoP", p);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let challenges = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = if status == 200 {
        json!({ "bytes": r.bytes().await.unwrap().len() })
    } else {
        r.json().await.unwrap_or_default()
    };
    (status, challenges, body)
}

fn production(keys: &Keys) -> Registration {
    let mut reg = registration(CLIENT, keys, &[DATASET]);
    reg.environment = "production".into();
    reg
}

/// A world whose services are registered through the admin API (which the tests then change).
async fn admin_world() -> FlowWorld {
    FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.oauth.admin_token = ADMIN.into();
    })
    .await
}

/// The SDK as a service that sends no DPoP proofs (plain bearer tokens).
async fn unbound_sdk(w: &FlowWorld, keys: Keys) -> Service {
    let config = mydata_sdk::ServiceConfig::new(&w.app.base, CLIENT, REDIRECT, keys)
        .unwrap()
        .with_clock(std::sync::Arc::new(w.app.clock.clone()))
        .without_dpop();
    Service::discover(config).await.unwrap()
}

/// The first person, signed in from `ip`, authorizes one request of `service` (push, consent,
/// confirmation); their browser and the service's token.
async fn authorized(w: &FlowWorld, service: &Service, ip: &str) -> (crate::world::Browser, Token) {
    let b = w.signed_in(&w.people[0], ip).await;
    let pending = service
        .push(&AuthorizationRequest::new(&[DATASET], PURPOSE))
        .await
        .unwrap();
    let query = consent_and_confirm(w, &b, &pending).await;
    let token = service.callback(&pending, &query).await.unwrap();
    (b, token)
}

/// A request to the admin API about `CLIENT`.
fn admin(w: &FlowWorld, m: reqwest::Method) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .request(m, format!("{}/api/v1/admin/services/{CLIENT}", w.app.base))
        .bearer_auth(ADMIN)
}

async fn world(reg: Registration) -> FlowWorld {
    FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.oauth.clients = vec![reg];
        s.oauth.admin_token = ADMIN.into();
    })
    .await
}

async fn end_to_end(backend: Backend) {
    let keys = Keys::generate();
    let jkt = keys.dpop_jkt();
    let reg = production(&keys);
    let w = FlowWorld::spawn_with(backend, 1.0, |s| s.oauth.clients = vec![reg]).await;
    let m: Value = reqwest::get(format!(
        "{}/.well-known/oauth-authorization-server",
        w.app.base
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        m["dpop_signing_alg_values_supported"],
        json!(["ES256", "EdDSA"])
    );
    let service = sdk(&w, CLIENT, keys).await;
    let (_, token) = authorized(&w, &service, "10.9.0.1").await;
    assert_eq!(token.token_type, "DPoP");
    let row = w
        .app
        .store()
        .token(&mydata_server::oauth::hash_secret(&token.access_token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        row.dpop_jkt.as_deref(),
        Some(jkt.as_str()),
        "bound to the SDK's key"
    );
    let zip = service
        .package(&token, Duration::from_secs(10))
        .await
        .unwrap();
    mydata_sdk::verify(
        &zip,
        &token.transfer_id,
        &w.app.trust(),
        &service.platform_signing_keys(),
        w.app.clock.now(),
    )
    .unwrap_or_else(|r| panic!("package verifies: {r:?}"));
    assert!(matches!(
        service.package(&token, Duration::from_secs(10)).await,
        Err(mydata_sdk::Error::Gone)
    ));
    assert_eq!(
        w.app.transfer(&token.transfer_id).await.state,
        TransferState::Deleted
    );
}

#[tokio::test]
async fn a_production_service_gets_a_dpop_bound_token_and_its_package_with_proofs_sqlite() {
    end_to_end(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_production_service_gets_a_dpop_bound_token_and_its_package_with_proofs_postgres() {
    end_to_end(Backend::Postgres).await;
}

/// Every bad proof at PAR, token and package endpoints; each refused, nothing changed.
#[tokio::test]
async fn bad_proofs_are_refused_with_invalid_dpop_proof_and_change_nothing() {
    let prover = Prover::new();
    let keys = Keys::generate().with_dpop_key(prover.key.clone());
    let reg = production(&keys);
    let w = world(reg).await;
    let service = sdk(&w, CLIENT, keys).await;
    let base = w.app.base.clone();
    let token_url = format!("{base}/oauth/token");
    let par_url = format!("{base}/oauth/par");
    let other = Prover::new();

    // PAR: a malformed dpop_jkt, and a proof by another key than the dpop_jkt named.
    let par = |dpop_jkt: String, proof: Option<String>| {
        let mut form = crate::online::par_fields(service.client_assertion(&base).unwrap());
        form.push(("dpop_jkt", dpop_jkt));
        let mut req = reqwest::Client::new().post(&par_url).form(&form);
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, body) = par("not-a-thumbprint".into(), None).await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (400, "invalid_request")
    );
    let (s, body) = par(
        prover.jkt(),
        Some(other.proof(&claims(&w, "POST", &par_url, None))),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (400, "invalid_dpop_proof"),
        "{body}"
    );
    let proof = prover.proof(&claims(&w, "POST", &par_url, None));
    let (s, body) = par(prover.jkt(), Some(proof.clone())).await;
    assert_eq!(s, 201, "a proof by the named key: {body}");
    // The same proof with a fresh assertion: a replay, and no second request is stored.
    let before = w.app.store().row_counts().await.unwrap()["oauth_requests"];
    let (s, body) = par(prover.jkt(), Some(proof)).await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (400, "invalid_dpop_proof"),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replay")
    );
    assert_eq!(
        w.app.store().row_counts().await.unwrap()["oauth_requests"],
        before
    );

    // The SDK's request (the code bound to its key by dpop_jkt), consented and confirmed.
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.9.0.2").await;
    let pending = service
        .push(&AuthorizationRequest::new(&[DATASET], PURPOSE))
        .await
        .unwrap();
    let query = consent_and_confirm(&w, &b, &pending).await;
    let code = code_of(&query);
    let v = pending.code_verifier.clone();
    let good = || claims(&w, "POST", &token_url, None);
    let now = w.app.clock.now().millis() / 1000;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![], "no proof from a production service"),
        (
            vec![prover.proof(&tweak(good(), "htm", "GET".into()))],
            "htm",
        ),
        (
            vec![prover.proof(&tweak(good(), "htu", par_url.clone().into()))],
            "htu",
        ),
        (
            vec![prover.proof(&tweak(good(), "iat", (now - 61).into()))],
            "stale iat",
        ),
        (
            vec![prover.proof(&tweak(good(), "iat", (now + 11).into()))],
            "future iat",
        ),
        (
            vec![prover.proof(&tweak(good(), "jti", Value::Null))],
            "no jti",
        ),
        (
            vec![prover.proof(&good()), prover.proof(&good())],
            "two DPoP headers",
        ),
        (
            vec![other.proof(&good())],
            "another key than dpop_jkt at PAR",
        ),
        (
            vec![prover.sign(
                json!({ "jwk": tweak(prover.jwk(), "d", b64([7u8; 32]).into()) }),
                &good(),
            )],
            "private key in jwk",
        ),
        (vec![prover.sign(json!({ "typ": "JWT" }), &good())], "typ"),
        (vec![unsigned(&prover, &good())], "alg none"),
        (vec![hs256(&good())], "HS256"),
        (
            vec![other.sign(json!({ "jwk": prover.jwk() }), &good())],
            "signed by another key than its jwk",
        ),
    ];
    for (headers, what) in cases {
        let (s, body) = token_call(&w, &service, &code, &v, &headers).await;
        assert_eq!(
            (s, body["error"].as_str().unwrap()),
            (400, "invalid_dpop_proof"),
            "{what}: {body}"
        );
    }
    // Nothing changed: the code works once, with a good proof, and gives a DPoP-bound token.
    let proof = prover.proof(&good());
    let (s, ok) = token_call(&w, &service, &code, &v, std::slice::from_ref(&proof)).await;
    assert_eq!(s, 200, "{ok}");
    assert_eq!(ok["token_type"], "DPoP");
    // The same proof again: a replay (refused before the code's reuse is even looked at).
    let (s, body) = token_call(&w, &service, &code, &v, &[proof]).await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (400, "invalid_dpop_proof"),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replay")
    );

    // The package endpoint.
    let access = ok["access_token"].as_str().unwrap().to_owned();
    let tid = ok["authorization_details"][0]["transfer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = format!("{base}/api/v1/transfers/{tid}/package");
    let dpop_auth = format!("DPoP {access}");
    let good = || claims(&w, "GET", &url, Some(&access));
    let now = w.app.clock.now().millis() / 1000;
    let cases: Vec<(String, Option<String>, &str, &str)> = vec![
        (
            format!("Bearer {access}"),
            Some(prover.proof(&good())),
            "invalid_token",
            "bound token as Bearer",
        ),
        (dpop_auth.clone(), None, "invalid_dpop_proof", "no proof"),
        (
            dpop_auth.clone(),
            Some(prover.proof(&tweak(good(), "htm", "POST".into()))),
            "invalid_dpop_proof",
            "htm",
        ),
        (
            dpop_auth.clone(),
            Some(prover.proof(&tweak(
                good(),
                "htu",
                format!("{base}/api/v1/transfers/another/package").into(),
            ))),
            "invalid_dpop_proof",
            "htu",
        ),
        (
            dpop_auth.clone(),
            Some(prover.proof(&tweak(good(), "ath", Value::Null))),
            "invalid_dpop_proof",
            "no ath",
        ),
        (
            dpop_auth.clone(),
            Some(prover.proof(&tweak(
                good(),
                "ath",
                b64(Sha256::digest(b"another token")).into(),
            ))),
            "invalid_dpop_proof",
            "wrong ath",
        ),
        (
            dpop_auth.clone(),
            Some(prover.proof(&tweak(good(), "iat", (now - 61).into()))),
            "invalid_dpop_proof",
            "stale iat",
        ),
        (
            dpop_auth.clone(),
            Some(prover.proof(&tweak(good(), "iat", (now + 11).into()))),
            "invalid_dpop_proof",
            "future iat",
        ),
        (
            dpop_auth.clone(),
            Some(other.proof(&good())),
            "invalid_dpop_proof",
            "another key than the bound one",
        ),
        (
            dpop_auth.clone(),
            Some(prover.sign(
                json!({ "jwk": tweak(prover.jwk(), "d", b64([7u8; 32]).into()) }),
                &good(),
            )),
            "invalid_dpop_proof",
            "private key in jwk",
        ),
        (
            dpop_auth.clone(),
            Some(unsigned(&prover, &good())),
            "invalid_dpop_proof",
            "alg none",
        ),
        (
            dpop_auth.clone(),
            Some(hs256(&good())),
            "invalid_dpop_proof",
            "HS256",
        ),
    ];
    for (authorization, proof, error, what) in cases {
        let (s, challenges, body) = package_call(&url, &authorization, proof.as_deref()).await;
        assert_eq!(
            (s, body["error"].as_str().unwrap_or_default()),
            (401, error),
            "{what}: {body}"
        );
        let wanted = format!("error=\"{error}\"");
        assert!(
            challenges
                .iter()
                .any(|c| c.starts_with("DPoP ") && c.contains(&wanted) && c.contains("ES256")),
            "{what}: {challenges:?}"
        );
        let t = w.app.transfer(&tid).await;
        assert_eq!(t.state, TransferState::Ready, "{what}: nothing released");
    }
    // No credentials at all: both challenges, neither with an error code (RFC 6750 §3.1).
    let r = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenges: Vec<&str> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(challenges, ["DPoP algs=\"ES256 EdDSA\"", "Bearer"]);
    // A good proof: the package, once; that proof again is a replay; a fresh one finds it gone.
    let proof = prover.proof(&good());
    let (s, _, body) = package_call(&url, &dpop_auth, Some(&proof)).await;
    assert_eq!(s, 200, "{body}");
    let (s, _, body) = package_call(&url, &dpop_auth, Some(&proof)).await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (401, "invalid_dpop_proof")
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("replay")
    );
    let (s, _, body) = package_call(&url, &dpop_auth, Some(&prover.proof(&good()))).await;
    assert_eq!((s, body["code"].as_str().unwrap()), (410, "package_gone"));
}

/// A test service may use plain bearer tokens; registered with `dpop_bound_access_tokens` it must
/// send a proof. An unbound token is refused under the DPoP scheme.
#[tokio::test]
async fn test_services_use_bearer_tokens_unless_registered_for_dpop() {
    let keys = Keys::generate();
    let mut reg = registration(CLIENT, &keys, &[DATASET]);
    // Registered through the admin API, which changes it below (a configured one is changed in
    // the configuration).
    let w = admin_world().await;
    let put = |reg: &Registration| admin(&w, reqwest::Method::PUT).json(reg).send();
    assert_eq!(put(&reg).await.unwrap().status(), 201);
    let service = unbound_sdk(&w, keys).await;
    let (b, token) = authorized(&w, &service, "10.9.0.3").await;
    assert_eq!(token.token_type, "Bearer");
    let url = service.package_url(&token).unwrap();
    let prover = Prover::new();
    let (s, _, body) = package_call(
        &url,
        &format!("DPoP {}", token.access_token),
        Some(&prover.proof(&claims(&w, "GET", &url, Some(&token.access_token)))),
    )
    .await;
    assert_eq!((s, body["error"].as_str().unwrap()), (401, "invalid_token"));
    service
        .package(&token, Duration::from_secs(10))
        .await
        .unwrap();

    // Registered for DPoP: a token request without a proof is refused, with one it is bound.
    reg.dpop_bound_access_tokens = true;
    assert_eq!(put(&reg).await.unwrap().status(), 200);
    let pending = service
        .push(&AuthorizationRequest::new(&[DATASET], PURPOSE))
        .await
        .unwrap();
    let query = consent_and_confirm(&w, &b, &pending).await;
    refused_with(
        service.callback(&pending, &query).await.unwrap_err(),
        "invalid_dpop_proof",
    );
    let token_url = format!("{}/oauth/token", w.app.base);
    let (s, body) = token_call(
        &w,
        &service,
        &code_of(&query),
        &pending.code_verifier,
        &[prover.proof(&claims(&w, "POST", &token_url, None))],
    )
    .await;
    assert_eq!(
        (s, body["token_type"].as_str().unwrap()),
        (200, "DPoP"),
        "{body}"
    );
    let row = w
        .app
        .store()
        .token(&mydata_server::oauth::hash_secret(
            body["access_token"].as_str().unwrap(),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.dpop_jkt, Some(prover.jkt()));
    let token = Token {
        access_token: body["access_token"].as_str().unwrap().into(),
        token_type: "DPoP".into(),
        transfer_id: body["authorization_details"][0]["transfer_id"]
            .as_str()
            .unwrap()
            .into(),
        datasets: vec![DATASET.into()],
        expires_in: 0,
    };
    // The SDK's own DPoP key is not the one this token is bound to.
    let dpop_service = sdk(&w, CLIENT, Keys::generate()).await;
    refused_with(
        dpop_service
            .fetch_envelope(&token, Duration::from_secs(10))
            .await
            .unwrap_err(),
        "invalid_dpop_proof",
    );
    let url = dpop_service.package_url(&token).unwrap();
    let proof = prover.proof(&claims(&w, "GET", &url, Some(&token.access_token)));
    let (s, _, body) =
        package_call(&url, &format!("DPoP {}", token.access_token), Some(&proof)).await;
    assert_eq!(s, 200, "{body}");
}

/// A trial service receives people's real data: like a production one, it gets a token only with
/// a DPoP proof, and its consent page says the data is real (not "simulated", the test banner).
/// A platform whose agencies hold real data serves no test-environment service: test services
/// get simulated data only.
#[tokio::test]
async fn trial_services_need_dpop_and_test_services_a_platform_of_simulated_agencies() {
    let keys = Keys::generate();
    let mut reg = registration(CLIENT, &keys, &[DATASET]);
    reg.environment = "trial".into();
    let w = world(reg).await;
    let service = unbound_sdk(&w, keys).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.9.0.7").await;
    let pending = service
        .push(&AuthorizationRequest::new(&[DATASET], PURPOSE))
        .await
        .unwrap();
    let (_, page) = crate::online::open_consent(&w, &b, &pending).await;
    assert!(page.contains("data-environment=\"trial\""), "{page}");
    assert!(
        page.contains("真實資料") && !page.contains("模擬資料"),
        "{page}"
    );
    let query = consent_and_confirm(&w, &b, &pending).await;
    refused_with(
        service.callback(&pending, &query).await.unwrap_err(),
        "invalid_dpop_proof",
    );

    let keys = Keys::generate();
    let reg = registration(CLIENT, &keys, &[DATASET]);
    let w = FlowWorld::spawn_with(Backend::Sqlite, 1.0, |s| {
        s.oauth.clients = vec![reg];
        s.oauth.serve_test_services = false;
    })
    .await;
    let service = sdk(&w, CLIENT, keys).await;
    refused_with(
        service
            .push(&AuthorizationRequest::new(&[DATASET], PURPOSE))
            .await
            .unwrap_err(),
        "unauthorized_client",
    );
}

/// A service removed through the admin API (its keys compromised, say) retrieves nothing more with
/// a token it was issued before.
#[tokio::test]
async fn a_removed_service_cannot_use_its_tokens() {
    let keys = Keys::generate();
    let reg = registration(CLIENT, &keys, &[DATASET]);
    let w = admin_world().await;
    assert_eq!(
        admin(&w, reqwest::Method::PUT)
            .json(&reg)
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    let service = sdk(&w, CLIENT, keys).await;
    let (_, token) = authorized(&w, &service, "10.9.0.8").await;
    let status = admin(&w, reqwest::Method::DELETE)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    match service.package(&token, Duration::from_secs(10)).await {
        Err(mydata_sdk::Error::Refused { status, error, .. }) => {
            assert_eq!((status, error.as_str()), (401, "invalid_token"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A return address withdrawn from a service's registration after a request was pushed to it
/// receives nothing more: the person's browser shows a page instead of going there.
#[tokio::test]
async fn a_withdrawn_return_address_is_sent_nothing() {
    let keys = Keys::generate();
    let mut reg = registration(CLIENT, &keys, &[DATASET]);
    let w = admin_world().await;
    let put = |reg: &Registration| admin(&w, reqwest::Method::PUT).json(reg).send();
    assert_eq!(put(&reg).await.unwrap().status(), 201);
    let service = sdk(&w, CLIENT, keys).await;
    let p = w.people[0].clone();
    let b = w.signed_in(&p, "10.9.0.9").await;
    let pending = service
        .push(&AuthorizationRequest::new(&[DATASET], PURPOSE))
        .await
        .unwrap();
    reg.redirect_uris = vec!["https://sp.example/new-callback".into()];
    assert_eq!(put(&reg).await.unwrap().status(), 200);
    let r = b
        .get(&crate::online::path_of(&pending.authorize_url, &w.app.base))
        .await;
    assert_eq!(r.status(), 400, "{:?}", r.headers().get("location"));
}
