//! The connector against the simulated agencies over real HTTP: the token, the answers and the
//! checks agree with what provider-sim (built from the same OpenAPI document) does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_connector::{
    AgencyClient, Answer, Call, CallError, ClientSettings, Expected, FetchSubject, Rejection,
    TrustCache, TrustSource, check,
};
use mydata_core::{IdentityMethod, ManualClock, Timestamp};
use mydata_package::PlatformSigner;
use mydata_provider_sim::server::{FaultConfig, Simulator, SimulatorConfig, router};
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::Generate;
use std::sync::Arc;
use std::time::Duration;

const NOW: i64 = 1_790_000_000_000;

async fn sim(key: &SigningKey) -> (Arc<Simulator>, String) {
    let clock = ManualClock::new(Timestamp::from_millis(NOW));
    let sim = Arc::new(
        Simulator::new(SimulatorConfig::new(*key.verifying_key()), Arc::new(clock)).unwrap(),
    );
    let app = router(sim.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (sim, format!("http://{addr}"))
}

fn client(base: &str, max: usize) -> AgencyClient {
    AgencyClient::new(ClientSettings {
        default_base: Some(base.parse().unwrap()),
        per_agency: Default::default(),
        request_timeout: Duration::from_secs(5),
        max_response_bytes: max,
    })
    .unwrap()
}

#[tokio::test]
async fn a_dataset_fetched_with_the_platform_token_passes_every_check() {
    let key = SigningKey::try_generate().unwrap();
    let (sim, base) = sim(&key).await;
    let platform = PlatformSigner::with_thumbprint_kid(key.clone()).unwrap();
    let ds = sim
        .catalog()
        .datasets()
        .iter()
        .find(|d| d.ready_minutes == 0 && d.accepts(IdentityMethod::MoicaCert))
        .unwrap()
        .clone();
    let person = sim.population().persons()[0].id.as_str().to_owned();
    let subject = FetchSubject::new(&person, "moica_cert", 1);
    assert!(!format!("{subject:?}").contains(&person));
    let c = client(&base, 1 << 20);
    let now = Timestamp::from_millis(NOW);
    let call = Call::Create {
        transfer_id: "t-1",
        dataset_id: &ds.id,
        subject: &subject,
    };
    let Answer::Dataset(body) = c.call(&platform, &ds.agency, call, now).await.unwrap() else {
        panic!("an instant dataset answers at once");
    };
    let trust = TrustCache::new(
        TrustSource {
            root_pems: vec![sim.root_pem()],
            crl_urls: vec![format!("{base}/ca/crl.pem").parse().unwrap()],
            ..Default::default()
        },
        Duration::from_secs(60),
        reqwest::Client::new(),
    );
    let store = trust.get(now).await.unwrap();
    let expected = Expected {
        agency_id: &ds.agency,
        dataset_id: &ds.id,
        transfer_id: "t-1",
    };
    let v = check(&body, expected, &store, now).unwrap();
    assert_eq!(v.manifest.agency_id, ds.agency);
    assert_eq!(v.digest.len(), 64);
    // The same answer for another transfer, dataset or agency is refused.
    let other_transfer = Expected {
        transfer_id: "t-2",
        ..expected
    };
    assert_eq!(
        check(&body, other_transfer, &store, now).unwrap_err(),
        Rejection::WrongTransfer
    );
    let other_agency = Expected {
        agency_id: "someone-else",
        ..expected
    };
    assert!(matches!(
        check(&body, other_agency, &store, now).unwrap_err(),
        Rejection::WrongAgency { .. }
    ));
    // Years later the certificate has expired.
    let later = Timestamp::from_millis(NOW + 3 * 365 * 86_400_000);
    assert!(check(&body, expected, &store, later).is_err());
    // Untrusted roots: an empty source is refused outright.
    let none = TrustSource::default();
    assert!(none.load(&reqwest::Client::new()).await.is_err());

    // A token signed by another key, and an oversized answer.
    let stranger =
        PlatformSigner::with_thumbprint_kid(SigningKey::try_generate().unwrap()).unwrap();
    let err = c.call(&stranger, &ds.agency, call, now).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Refused { status: 401, .. }),
        "{err:?}"
    );
    let small = client(&base, 64);
    assert_eq!(
        small
            .call(&platform, &ds.agency, call, now)
            .await
            .unwrap_err(),
        CallError::TooLarge { limit: 64 }
    );
    // A level the dataset does not accept is refused by the agency.
    let weak = FetchSubject::new(&person, "dual_id", 4);
    let weak_call = Call::Create {
        transfer_id: "t-1",
        dataset_id: &ds.id,
        subject: &weak,
    };
    if !ds.accepts(IdentityMethod::DualId) {
        let err = c
            .call(&platform, &ds.agency, weak_call, now)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CallError::Refused { status: 403, code } if code == "insufficient_assurance"),
            "{err:?}"
        );
    }
    // 429 carries its Retry-After; a missing endpoint is named.
    sim.set_faults(
        &ds.agency,
        FaultConfig {
            rate_limited: true,
            ..Default::default()
        },
    )
    .unwrap();
    let err = c.call(&platform, &ds.agency, call, now).await.unwrap_err();
    assert_eq!(
        err,
        CallError::RateLimited {
            retry_after: Some(Duration::from_secs(1))
        }
    );
    assert!(err.is_transient() && !err.is_outage());
    let nowhere = AgencyClient::new(ClientSettings {
        default_base: None,
        per_agency: Default::default(),
        request_timeout: Duration::from_secs(1),
        max_response_bytes: 10,
    })
    .unwrap();
    assert_eq!(
        nowhere
            .call(&platform, &ds.agency, call, now)
            .await
            .unwrap_err(),
        CallError::NoEndpoint(ds.agency.clone())
    );
}
