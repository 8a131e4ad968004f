//! `mydata card-agent` over real HTTP on loopback: PIN counting and its persistence, CORS,
//! DNS-rebinding refusal, malformed input, and signatures that verify for the exact bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use mydata_card::agent::{Agent, AgentConfig, AgentError, bind, check_listen};
use mydata_card::demo::{CardSpec, CardStatus, ensure_cards};
use mydata_card::{CardKind, DEMO_PIN, Subject};
use mydata_core::Timestamp;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PLATFORM: &str = "http://127.0.0.1:8080";
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

struct Running {
    base: String,
    client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cards(dir: &Path) -> PathBuf {
    let citizen = |name: &str, id: &str| CardSpec {
        subject: Subject {
            kind: CardKind::Citizen,
            name: name.into(),
            serial_number: id.into(),
        },
        status: CardStatus::Valid,
    };
    ensure_cards(
        dir,
        &[
            citizen("王小明", "A123456789"),
            citizen("陳美玲", "B234567890"),
        ],
        Timestamp::from_millis(1_790_000_000_000),
    )
    .unwrap();
    dir.to_owned()
}

async fn start(card: &Path, state: Option<PathBuf>) -> Running {
    let agent = Agent::open(&AgentConfig {
        card: card.to_owned(),
        state,
        allowed_origins: vec![format!("{PLATFORM}/")],
    })
    .unwrap();
    let (listener, router) = bind(Arc::new(agent), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Running {
        base,
        client: reqwest::Client::new(),
        task,
    }
}

fn challenge(origin: &str) -> String {
    B64URL.encode(format!(
        "mydata-login-v1\n{origin}\nch-1\n{}",
        B64URL.encode([7u8; 32])
    ))
}

impl Running {
    async fn card(&self) -> Value {
        let r = self
            .client
            .get(format!("{}/v1/card", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn sign(&self, pin: &str) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}/v1/sign", self.base))
            .json(&json!({ "pin": pin, "to_be_signed": challenge(PLATFORM) }))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }
}

#[tokio::test]
async fn signs_the_exact_challenge_with_the_cards_key_and_returns_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let card = cards(dir.path()).join("A123456789.p12");
    let agent = start(&card, None).await;

    let info = agent.card().await;
    assert_eq!(info["subject"], "王小明");
    assert_eq!(info["serial_number"], "A123456789");
    assert_eq!(info["locked"], false);
    assert_eq!(info["pin_tries_left"], 3);
    assert!(info["not_after"].as_str().unwrap().ends_with('Z'), "{info}");

    let (status, body) = agent.sign(DEMO_PIN).await;
    assert_eq!(status, 200, "{body}");
    let x5c: Vec<Vec<u8>> = body["x5c"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c.as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(x5c.len(), 2, "leaf and issuing CA");
    assert_eq!(
        x5c,
        mydata_card::card::read_chain_pem(&card.with_extension("pem")).unwrap()
    );
    let signature = B64URL.decode(body["signature"].as_str().unwrap()).unwrap();
    let leaf = CertificateDer::from(x5c[0].clone());
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let signed = B64URL.decode(challenge(PLATFORM)).unwrap();
    let alg = webpki::ring::ECDSA_P256_SHA256;
    ee.verify_signature(alg, &signed, &signature).unwrap();
    let mut other = signed.clone();
    other[20] ^= 1;
    assert!(ee.verify_signature(alg, &other, &signature).is_err());
}

#[tokio::test]
async fn three_wrong_pins_lock_the_card_across_restarts_until_a_new_card() {
    let dir = tempfile::tempdir().unwrap();
    let folder = cards(dir.path());
    let card = folder.join("A123456789.p12");
    let state = dir.path().join("pin-state.json");

    let agent = start(&card, Some(state.clone())).await;
    assert_eq!(
        agent.sign("000000").await,
        (
            401,
            json!({"error": "wrong_pin", "tries_left": 2, "message": "wrong PIN"})
        )
    );
    // A right PIN resets the count, as on a smart card.
    assert_eq!(agent.sign(DEMO_PIN).await.0, 200);
    assert_eq!(agent.card().await["pin_tries_left"], 3);
    assert_eq!(agent.sign("000000").await.1["tries_left"], 2);
    assert_eq!(agent.sign("111111").await.1["tries_left"], 1);
    drop(agent);

    // The count survived the restart.
    let agent = start(&card, Some(state.clone())).await;
    assert_eq!(agent.card().await["pin_tries_left"], 1);
    let (status, body) = agent.sign("222222").await;
    assert_eq!((status, body["tries_left"].clone()), (401, json!(0)));
    assert_eq!(agent.card().await["locked"], true);
    let (status, body) = agent.sign(DEMO_PIN).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (423, Some("card_locked")),
        "the right PIN no longer helps"
    );
    drop(agent);

    let reopened = Agent::open(&AgentConfig {
        card: card.clone(),
        state: Some(state.clone()),
        allowed_origins: vec![PLATFORM.to_owned()],
    })
    .unwrap();
    assert_eq!(reopened.pin_tries_left(), Some(0));
    let agent = start(&card, Some(state.clone())).await;
    assert_eq!(
        agent.sign(DEMO_PIN).await.0,
        423,
        "still locked after a restart"
    );
    drop(agent);

    // Only a new card starts afresh (same state file).
    let agent = start(&folder.join("B234567890.p12"), Some(state.clone())).await;
    assert_eq!(agent.card().await["pin_tries_left"], 3);
    assert_eq!(agent.sign(DEMO_PIN).await.0, 200);
}

#[tokio::test]
async fn the_default_state_file_sits_beside_the_card() {
    let dir = tempfile::tempdir().unwrap();
    let card = cards(dir.path()).join("A123456789.p12");
    let agent = start(&card, None).await;
    agent.sign("000000").await;
    assert!(dir.path().join("A123456789.p12.state.json").is_file());
}

#[tokio::test]
async fn only_the_allowed_origin_may_call_it_from_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&cards(dir.path()).join("A123456789.p12"), None).await;
    let url = format!("{}/v1/sign", agent.base);

    let pre = agent
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", PLATFORM)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .header("access-control-request-private-network", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], PLATFORM);
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert_eq!(h["access-control-allow-headers"], "content-type");
    assert_eq!(h["access-control-allow-private-network"], "true");

    let evil = "http://evil.example";
    let pre = agent
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", evil)
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 403);
    assert!(pre.headers().get("access-control-allow-origin").is_none());

    // A page elsewhere cannot even spend PIN tries.
    let r = agent
        .client
        .post(&url)
        .header("origin", evil)
        .json(&json!({ "pin": "000000", "to_be_signed": challenge(evil) }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "origin_not_allowed"
    );
    assert_eq!(agent.card().await["pin_tries_left"], 3);

    // The allowed page gets its answer with the CORS header, and only for its own challenge.
    let ok = agent
        .client
        .post(&url)
        .header("origin", PLATFORM)
        .json(&json!({ "pin": DEMO_PIN, "to_be_signed": challenge(PLATFORM) }))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["access-control-allow-origin"], PLATFORM);
    assert_eq!(ok.headers()["cache-control"], "no-store");
    let other_site = agent
        .client
        .post(&url)
        .header("origin", PLATFORM)
        .json(&json!({ "pin": DEMO_PIN, "to_be_signed": challenge("https://other.example") }))
        .send()
        .await
        .unwrap();
    assert_eq!(other_site.status(), 400);
    assert_eq!(
        other_site.json::<Value>().await.unwrap()["error"],
        "not_a_login_challenge"
    );
}

#[tokio::test]
async fn requests_for_another_host_name_are_refused() {
    // A page whose own DNS name is made to point at 127.0.0.1 (DNS rebinding) sends its name.
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&cards(dir.path()).join("A123456789.p12"), None).await;
    let port = agent.base.rsplit(':').next().unwrap().to_owned();
    let r = agent
        .client
        .get(format!("{}/v1/card", agent.base))
        .header("host", format!("rebind.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "host_not_allowed"
    );
    let r = agent
        .client
        .get(format!("{}/v1/card", agent.base))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn malformed_requests_get_400_and_cost_no_pin_try() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(&cards(dir.path()).join("A123456789.p12"), None).await;
    let url = format!("{}/v1/sign", agent.base);
    let good = challenge(PLATFORM);
    let cases: Vec<(&str, String, &str)> = vec![
        ("application/json", "{not json".into(), "malformed_request"),
        ("text/plain", json!({"pin": DEMO_PIN, "to_be_signed": good}).to_string(), "malformed_request"),
        ("application/json", json!({"pin": DEMO_PIN}).to_string(), "malformed_request"),
        ("application/json", json!({"pin": DEMO_PIN, "to_be_signed": good, "extra": 1}).to_string(), "malformed_request"),
        ("application/json", json!({"pin": "12ab56", "to_be_signed": good}).to_string(), "malformed_pin"),
        ("application/json", json!({"pin": "123", "to_be_signed": good}).to_string(), "malformed_pin"),
        ("application/json", json!({"pin": "000000", "to_be_signed": "***"}).to_string(), "malformed_request"),
        ("application/json", json!({"pin": "000000", "to_be_signed": ""}).to_string(), "malformed_request"),
        ("application/json", json!({"pin": "000000", "to_be_signed": B64URL.encode("sign anything for me")}).to_string(), "not_a_login_challenge"),
        ("application/json", json!({"pin": "000000", "to_be_signed": B64URL.encode(format!("mydata-login-v1\n{PLATFORM}\n\n"))}).to_string(), "not_a_login_challenge"),
        ("application/json", json!({"pin": "000000", "to_be_signed": challenge("http://127.0.0.1:9999")}).to_string(), "not_a_login_challenge"),
    ];
    for (ct, body, code) in cases {
        let r = agent
            .client
            .post(&url)
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], code, "{body}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let big = agent
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 20_000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let nowhere = agent
        .client
        .get(format!("{}/v1/nothing", agent.base))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 404);
    assert_eq!(
        agent.card().await["pin_tries_left"],
        3,
        "none of these touched the card"
    );
}

#[tokio::test]
async fn refuses_to_start_without_what_it_needs() {
    assert!(check_listen("0.0.0.0:61161".parse().unwrap()).is_err());
    assert!(check_listen("127.0.0.1:61161".parse().unwrap()).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let folder = cards(dir.path());
    let open = |card: PathBuf, state: Option<PathBuf>, origin: &str| {
        Agent::open(&AgentConfig {
            card,
            state,
            allowed_origins: vec![origin.to_owned()],
        })
    };
    assert!(matches!(
        open(folder.join("missing.p12"), None, PLATFORM),
        Err(AgentError::ReadCard { .. })
    ));
    std::fs::copy(folder.join("A123456789.p12"), dir.path().join("lonely.p12")).unwrap();
    assert!(matches!(
        open(dir.path().join("lonely.p12"), None, PLATFORM),
        Err(AgentError::NoChain(_))
    ));
    let damaged = dir.path().join("damaged.json");
    std::fs::write(&damaged, "{").unwrap();
    let err = open(folder.join("A123456789.p12"), Some(damaged), PLATFORM).unwrap_err();
    assert!(matches!(err, AgentError::DamagedState(..)), "{err}");
    for origin in [
        "127.0.0.1:8080",
        "http://127.0.0.1:8080/login",
        "ftp://x",
        "http://a@b",
    ] {
        assert!(
            matches!(
                open(folder.join("A123456789.p12"), None, origin),
                Err(AgentError::BadOrigin(_))
            ),
            "{origin}"
        );
    }
}
