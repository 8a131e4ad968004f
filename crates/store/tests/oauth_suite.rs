//! Online-service storage on both backends: registrations, pushed requests, single-use codes,
//! jti replay guard, tokens and their sweep.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::Timestamp;
use mydata_core::transfer::{TransferEvent, TransferKind, TransferState};
use mydata_store::{
    ClientRow, Issue, Jti, NewAuditEvent, NewTransfer, OAuthCodeRow, Push, Redeem, RequestAnswer,
    RequestRow, StartJobs, Store, TokenRow,
};

const T0: Timestamp = Timestamp::from_millis(1_790_000_000_000);

fn at(secs: u64) -> Timestamp {
    T0.plus(std::time::Duration::from_secs(secs))
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() { let db = mydata_store::testing::fresh_sqlite().await.unwrap(); super::$name(&db.store).await; } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() { let db = mydata_store::testing::fresh_postgres().await.unwrap(); super::$name(&db.store).await; } )*
        }
    };
}

on_both_backends!(
    clients_are_registered_replaced_and_removed,
    removing_a_service_ends_its_transfers_not_yet_released,
    a_request_keeps_no_sealed_identity_once_answered,
    a_request_is_opened_by_one_session_only_and_expires,
    requests_advance_only_from_the_expected_step,
    a_consent_answers_its_request_in_the_transfer_step,
    codes_are_single_use_and_reuse_revokes_tokens,
    a_jti_is_accepted_once_per_client,
    a_token_is_issued_only_with_fresh_jtis_and_a_fresh_code,
    a_request_is_pushed_only_with_fresh_jtis,
    sweep_forgets_what_expired,
);

fn client(id: &str) -> ClientRow {
    ClientRow {
        client_id: id.into(),
        name: "Tuition office".into(),
        jwks: Some(r#"{"keys":[]}"#.into()),
        jwks_uri: None,
        redirect_uris: vec!["https://sp.example/cb".into()],
        terms: "terms".into(),
        purpose: "tuition reduction".into(),
        datasets: vec!["59".into(), "1".into()],
        legal_basis: None,
        environment: "test".into(),
        trusted_verifier: false,
        dpop_bound_access_tokens: false,
        created_at: T0,
        updated_at: T0,
    }
}

fn request(id: &str, expires: Timestamp) -> RequestRow {
    RequestRow {
        id: id.into(),
        client_id: "sp".into(),
        params: "{}".into(),
        status: "pushed".into(),
        session_hash: None,
        transfer_id: None,
        created_at: T0.millis(),
        expires_at: expires.millis(),
        updated_at: T0.millis(),
    }
}

fn event(kind: &str) -> NewAuditEvent {
    NewAuditEvent {
        at: T0,
        kind: kind.into(),
        subject: Some("pseudonym".into()),
        transfer_id: Some("t1".into()),
        actor: "sp".into(),
        detail: serde_json::json!({}),
    }
}

fn code(hash: &str, request: &str) -> OAuthCodeRow {
    OAuthCodeRow {
        code_hash: hash.into(),
        request_id: request.into(),
        client_id: "sp".into(),
        transfer_id: "t1".into(),
        redirect_uri: "https://sp.example/cb".into(),
        code_challenge: "c".into(),
        created_at: T0.millis(),
        expires_at: at(60).millis(),
        used_at: None,
    }
}

async fn clients_are_registered_replaced_and_removed(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    let mut changed = client("sp");
    changed.datasets = vec!["59".into()];
    changed.trusted_verifier = true;
    changed.dpop_bound_access_tokens = true;
    changed.created_at = at(10);
    changed.updated_at = at(10);
    s.put_client(&changed).await.unwrap();
    let got = s.client("sp").await.unwrap().unwrap();
    assert_eq!(got.datasets, vec!["59"]);
    assert!(got.trusted_verifier);
    assert!(got.dpop_bound_access_tokens);
    assert_eq!(
        got.created_at, T0,
        "a replacement keeps the first registration time"
    );
    assert_eq!(got.updated_at, at(10));
    assert_eq!(s.clients().await.unwrap().len(), 1);
    assert!(s.delete_client("sp", "admin", T0).await.unwrap().existed);
    assert!(!s.delete_client("sp", "admin", T0).await.unwrap().existed);
    assert!(s.client("sp").await.unwrap().is_none());
}

/// A removed service can never receive a package: its transfers not yet released end with it
/// (`Cancel`, one event each), in the same write; released ones, ended ones and other recipients'
/// are left alone.
async fn removing_a_service_ends_its_transfers_not_yet_released(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    s.put_client(&client("other")).await.unwrap();
    let online = |id: &str, to: &str| NewTransfer {
        id: id.into(),
        kind: TransferKind::Online,
        subject: "pseudonym".into(),
        recipient: Some(to.into()),
        purpose: "tuition reduction".into(),
        datasets: vec!["low-income-household".into()],
    };
    let start = |t: NewTransfer| async move {
        s.start_transfer(&t, "sealed", StartJobs::queued(&[]), None, "pseudonym", T0)
            .await
            .unwrap()
            .0
    };
    start(online("fetching", "sp")).await;
    let ready = start(online("ready", "sp")).await;
    s.apply_transfer_event_from(&ready, TransferEvent::Settled, "system", T0)
        .await
        .unwrap();
    s.create_transfer(&online("created", "sp"), "pseudonym", T0)
        .await
        .unwrap();
    let delivered = start(online("delivered", "sp")).await;
    let delivered = s
        .apply_transfer_event_from(&delivered, TransferEvent::Settled, "system", T0)
        .await
        .unwrap();
    s.apply_transfer_event_from(&delivered, TransferEvent::Release, "sp", T0)
        .await
        .unwrap();
    start(online("elsewhere", "other")).await;
    let removal = s.delete_client("sp", "admin", at(5)).await.unwrap();
    assert!(removal.existed);
    assert_eq!(removal.ended, ["created", "fetching", "ready"]);
    for (id, state, left) in [
        ("created", TransferState::Expired, Some("created")),
        ("fetching", TransferState::Expired, Some("fetching")),
        ("ready", TransferState::Expired, Some("ready")),
        ("delivered", TransferState::Delivered, None),
        ("elsewhere", TransferState::Fetching, None),
    ] {
        let t = s.transfer(id).await.unwrap().unwrap();
        assert_eq!(t.state, state, "{id}");
        let last = s.audit_for_transfer(id).await.unwrap().pop().unwrap();
        match left {
            Some(from) => {
                assert_eq!(t.updated_at, at(5), "{id}");
                assert_eq!(last.kind, "transfer.expired", "{id}");
                assert_eq!(last.actor, "admin");
                assert_eq!(last.subject.as_deref(), Some("pseudonym"));
                assert_eq!(last.at, at(5));
                assert_eq!(
                    last.detail,
                    serde_json::json!({ "from": from, "event": "cancel", "reason": "service_removed" }),
                    "{id}"
                );
            }
            None => assert_ne!(last.kind, "transfer.expired", "{id}"),
        }
    }
    // Removed again (or never registered): nothing left to end.
    let again = s.delete_client("sp", "admin", at(6)).await.unwrap();
    assert!(!again.existed && again.ended.is_empty());
}

/// A trusted verifier's sealed ID number (`asserted.subject_sealed`) is kept only until the
/// request is answered: the consent's step, a refusal and the confirmation each drop it; the rest
/// of the parameters stay, and parameters without it are left as written.
async fn a_request_keeps_no_sealed_identity_once_answered(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    let asserted = |id: &str| {
        RequestRow {
        params: serde_json::json!({
            "purpose": "x",
            "asserted": { "subject": "pseudonym", "subject_sealed": "SEALED-ID", "level": 4, "at": 1 }
        })
        .to_string(),
        ..request(id, at(90))
    }
    };
    let params = |id: &'static str| async move {
        let r = s.request(id).await.unwrap().unwrap();
        serde_json::from_str::<serde_json::Value>(&r.params).unwrap()
    };
    let kept = serde_json::json!({
        "purpose": "x",
        "asserted": { "subject": "pseudonym", "level": 4, "at": 1 }
    });
    // Opening keeps it (the consent needs it); the consent drops it.
    s.put_request(&asserted("r1")).await.unwrap();
    s.open_request("r1", "sa", at(3600), T0).await.unwrap();
    assert_eq!(
        params("r1").await["asserted"]["subject_sealed"],
        "SEALED-ID"
    );
    let consent = event("service.consent");
    let answer = RequestAnswer {
        request_id: "r1",
        audit: &consent,
        keep_until: at(7200),
    };
    let t = NewTransfer {
        id: "t1".into(),
        kind: TransferKind::Online,
        subject: "pseudonym".into(),
        recipient: Some("sp".into()),
        purpose: "x".into(),
        datasets: vec!["low-income-household".into()],
    };
    let (_, answered) = s
        .start_transfer(
            &t,
            "sealed",
            StartJobs::queued(&[]),
            Some(&answer),
            "pseudonym",
            at(1),
        )
        .await
        .unwrap();
    assert!(answered);
    assert_eq!(params("r1").await, kept);
    assert!(
        s.confirm_request(&code("c1", "r1"), &event("service.release"), at(2))
            .await
            .unwrap()
    );
    assert_eq!(params("r1").await, kept);
    // Refused before or after opening: dropped with the refusal.
    s.put_request(&asserted("r2")).await.unwrap();
    assert!(
        s.advance_request("r2", "pushed", "refused", None, None, T0)
            .await
            .unwrap()
    );
    assert_eq!(params("r2").await, kept);
    s.put_request(&asserted("r3")).await.unwrap();
    s.open_request("r3", "sa", at(3600), T0).await.unwrap();
    assert!(
        s.advance_request("r3", "opened", "refused", None, None, T0)
            .await
            .unwrap()
    );
    assert_eq!(params("r3").await, kept);
    // A move that still leads to the consent keeps it; parameters without it stay as written.
    s.put_request(&asserted("r4")).await.unwrap();
    assert!(
        s.advance_request("r4", "pushed", "opened", None, None, T0)
            .await
            .unwrap()
    );
    assert_eq!(
        params("r4").await["asserted"]["subject_sealed"],
        "SEALED-ID"
    );
    s.put_request(&request("r5", at(90))).await.unwrap();
    s.advance_request("r5", "pushed", "refused", None, None, T0)
        .await
        .unwrap();
    assert_eq!(s.request("r5").await.unwrap().unwrap().params, "{}");
}

async fn a_request_is_opened_by_one_session_only_and_expires(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    s.put_request(&request("r1", at(90))).await.unwrap();
    let until = at(3600);
    assert!(s.open_request("r1", "session-a", until, T0).await.unwrap());
    // The same session may reload the page; another may not take it over.
    assert!(
        s.open_request("r1", "session-a", until, at(120))
            .await
            .unwrap()
    );
    assert!(!s.open_request("r1", "session-b", until, T0).await.unwrap());
    let r = s.request("r1").await.unwrap().unwrap();
    assert_eq!(r.session_hash.as_deref(), Some("session-a"));
    assert_eq!(r.expires_at, until.millis());

    s.put_request(&request("r2", at(90))).await.unwrap();
    assert!(
        !s.open_request("r2", "session-a", until, at(90))
            .await
            .unwrap(),
        "expired request_uri"
    );
    assert_eq!(s.request("r2").await.unwrap().unwrap().status, "pushed");
}

async fn requests_advance_only_from_the_expected_step(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    s.put_request(&request("r1", at(90))).await.unwrap();
    assert!(s.open_request("r1", "sa", at(3600), T0).await.unwrap());
    assert!(
        !s.advance_request(
            "r1",
            "pushed",
            "consented",
            Some("t1"),
            Some(&event("service.consent")),
            T0
        )
        .await
        .unwrap()
    );
    assert!(
        s.advance_request(
            "r1",
            "opened",
            "consented",
            Some("t1"),
            Some(&event("service.consent")),
            T0
        )
        .await
        .unwrap()
    );
    assert!(
        !s.advance_request("r1", "opened", "consented", Some("t2"), None, T0)
            .await
            .unwrap()
    );
    let r = s.request("r1").await.unwrap().unwrap();
    assert_eq!(
        (r.status.as_str(), r.transfer_id.as_deref()),
        ("consented", Some("t1"))
    );
    let before = s.audit_for_transfer("t1").await.unwrap().len();
    assert!(
        s.confirm_request(&code("h1", "r1"), &event("service.release"), T0)
            .await
            .unwrap()
    );
    assert!(
        !s.confirm_request(&code("h2", "r1"), &event("service.release"), T0)
            .await
            .unwrap(),
        "confirmed once"
    );
    let kinds: Vec<String> = s
        .audit_for_transfer("t1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds.len(), before + 1);
    assert_eq!(kinds.last().map(String::as_str), Some("service.release"));
    assert_eq!(
        s.redeem_code("h2", T0).await.unwrap(),
        Redeem::Unknown,
        "the losing code was never stored"
    );
}

async fn a_consent_answers_its_request_in_the_transfer_step(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    s.put_request(&request("r1", at(90))).await.unwrap();
    s.open_request("r1", "sa", at(3600), T0).await.unwrap();
    let transfer = |id: &str| NewTransfer {
        id: id.into(),
        kind: TransferKind::Online,
        subject: "pseudonym".into(),
        recipient: Some("sp".into()),
        purpose: "tuition reduction".into(),
        datasets: vec!["low-income-household".into()],
    };
    let consent = event("service.consent");
    let answer = RequestAnswer {
        request_id: "r1",
        audit: &consent,
        keep_until: at(7200),
    };
    let (t, answered) = s
        .start_transfer(
            &transfer("t1"),
            "sealed",
            StartJobs::queued(&[]),
            Some(&answer),
            "pseudonym",
            at(1),
        )
        .await
        .unwrap();
    assert!(answered);
    assert_eq!(t.state, TransferState::Fetching);
    let r = s.request("r1").await.unwrap().unwrap();
    assert_eq!(
        (r.status.as_str(), r.transfer_id.as_deref()),
        ("consented", Some("t1"))
    );
    // The consent gives the person until keep_until to confirm, past the hour from opening.
    assert_eq!(r.expires_at, at(7200).millis());
    // The consent is logged after the transfer's own events, on the new transfer.
    let kinds: Vec<String> = s
        .audit_for_transfer("t1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        ["transfer.created", "transfer.fetching", "service.consent"]
    );
    // Answered already: the second transfer is created (for the caller to cancel), the request
    // keeps its first answer and no second consent is logged.
    let (_, again) = s
        .start_transfer(
            &transfer("t2"),
            "sealed",
            StartJobs::queued(&[]),
            Some(&answer),
            "pseudonym",
            at(2),
        )
        .await
        .unwrap();
    assert!(!again);
    let r = s.request("r1").await.unwrap().unwrap();
    assert_eq!(r.transfer_id.as_deref(), Some("t1"));
    assert_eq!(s.audit_for_transfer("t2").await.unwrap().len(), 2);
    // A keep_until before the request's own expiry shortens nothing.
    s.put_request(&request("r2", at(90))).await.unwrap();
    s.open_request("r2", "sa", at(3600), T0).await.unwrap();
    let early = RequestAnswer {
        request_id: "r2",
        audit: &consent,
        keep_until: at(10),
    };
    let (_, answered) = s
        .start_transfer(
            &transfer("t3"),
            "sealed",
            StartJobs::queued(&[]),
            Some(&early),
            "pseudonym",
            at(3),
        )
        .await
        .unwrap();
    assert!(answered);
    let r = s.request("r2").await.unwrap().unwrap();
    assert_eq!(r.expires_at, at(3600).millis());
}

async fn codes_are_single_use_and_reuse_revokes_tokens(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    s.put_request(&request("r1", at(90))).await.unwrap();
    s.open_request("r1", "sa", at(3600), T0).await.unwrap();
    s.advance_request("r1", "opened", "consented", Some("t1"), None, T0)
        .await
        .unwrap();
    s.confirm_request(&code("h1", "r1"), &event("service.release"), T0)
        .await
        .unwrap();
    let Redeem::Fresh(c) = s.redeem_code("h1", at(1)).await.unwrap() else {
        panic!("first redemption must win");
    };
    assert_eq!(c.transfer_id, "t1");
    let token = TokenRow {
        token_hash: "tok".into(),
        client_id: "sp".into(),
        transfer_id: "t1".into(),
        code_hash: "h1".into(),
        dpop_jkt: None,
        created_at: T0.millis(),
        expires_at: at(3600).millis(),
        revoked_at: None,
    };
    s.put_token(&token).await.unwrap();
    assert_eq!(s.redeem_code("h1", at(2)).await.unwrap(), Redeem::Reused);
    let t = s.token("tok").await.unwrap().unwrap();
    assert!(
        t.revoked_at.is_some(),
        "a replayed code revokes what it issued"
    );
    assert_eq!(s.redeem_code("nope", T0).await.unwrap(), Redeem::Unknown);
    // Hours later, the request and its code swept: a replay still revokes what the code issued
    // (the tokens know their code).
    let token2 = TokenRow {
        token_hash: "tok2".into(),
        expires_at: at(8 * 3600).millis(),
        ..token
    };
    s.put_token(&token2).await.unwrap();
    s.sweep_oauth(at(4 * 3600)).await.unwrap();
    assert_eq!(
        s.redeem_code("h1", at(4 * 3600)).await.unwrap(),
        Redeem::Reused
    );
    assert!(s.token("tok2").await.unwrap().unwrap().revoked_at.is_some());
    // Past the 8 hours both go.
    s.sweep_oauth(at(9 * 3600)).await.unwrap();
    assert!(s.request("r1").await.unwrap().is_none());
    assert_eq!(
        s.redeem_code("h1", at(9 * 3600)).await.unwrap(),
        Redeem::Unknown
    );
}

async fn a_jti_is_accepted_once_per_client(s: &Store) {
    let keep = at(300);
    assert!(s.use_jti("sp", "j1", keep).await.unwrap());
    assert!(!s.use_jti("sp", "j1", keep).await.unwrap());
    assert!(
        s.use_jti("other", "j1", keep).await.unwrap(),
        "jti is per client"
    );
}

async fn sweep_forgets_what_expired(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    s.use_jti("sp", "j1", at(300)).await.unwrap();
    s.put_request(&request("r1", at(90))).await.unwrap();
    assert_eq!(s.sweep_oauth(T0).await.unwrap(), 0);
    assert!(s.sweep_oauth(at(300)).await.unwrap() >= 2);
    assert!(s.request("r1").await.unwrap().is_none());
    assert!(
        s.use_jti("sp", "j1", at(900)).await.unwrap(),
        "forgotten only after it expired"
    );
}

async fn a_token_is_issued_only_with_fresh_jtis_and_a_fresh_code(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    s.put_request(&request("r1", at(90))).await.unwrap();
    s.open_request("r1", "sa", at(3600), T0).await.unwrap();
    s.advance_request("r1", "opened", "consented", Some("t1"), None, T0)
        .await
        .unwrap();
    s.confirm_request(&code("h1", "r1"), &event("service.release"), T0)
        .await
        .unwrap();
    // The token endpoint's one read: the code, its request's parameters, its transfer (none here).
    let grant = s.code_grant("h1").await.unwrap().unwrap();
    assert_eq!(
        (grant.code, grant.request_params.as_deref(), grant.transfer),
        (code("h1", "r1"), Some("{}"), None)
    );
    assert!(s.code_grant("h-unknown").await.unwrap().is_none());
    let jti = |j: &'static str| Jti {
        client_id: "sp",
        jti: j,
        keep_until: at(300),
    };
    let token = |hash: &str, jkt: Option<&str>| TokenRow {
        token_hash: hash.into(),
        client_id: "sp".into(),
        transfer_id: "t1".into(),
        code_hash: "h1".into(),
        dpop_jkt: jkt.map(Into::into),
        created_at: at(1).millis(),
        expires_at: at(3600).millis(),
        revoked_at: None,
    };
    s.use_jti("sp", "a-old", at(300)).await.unwrap();
    s.use_jti("sp", "p-old", at(300)).await.unwrap();

    // A replayed assertion or proof leaves the code unspent and stores no token.
    assert_eq!(
        s.issue_token(
            jti("a-old"),
            Some(jti("p-1")),
            &token("tok0", Some("k")),
            at(1)
        )
        .await
        .unwrap(),
        Issue::AssertionReplay
    );
    assert_eq!(
        s.issue_token(
            jti("a-1"),
            Some(jti("p-old")),
            &token("tok0", Some("k")),
            at(1)
        )
        .await
        .unwrap(),
        Issue::ProofReplay
    );
    assert!(s.token("tok0").await.unwrap().is_none());
    assert_eq!(
        s.code_grant("h1").await.unwrap().unwrap().code.used_at,
        None
    );
    assert!(
        !s.use_jti("sp", "a-1", at(300)).await.unwrap(),
        "the assertion was spent with the refused proof"
    );

    // Fresh jtis (with a proof, then without one) and a fresh code: the code is spent once.
    assert_eq!(
        s.issue_token(
            jti("a-2"),
            Some(jti("p-2")),
            &token("tok1", Some("k")),
            at(1)
        )
        .await
        .unwrap(),
        Issue::Issued
    );
    let t = s.token("tok1").await.unwrap().unwrap();
    assert_eq!(
        (t.transfer_id.as_str(), t.dpop_jkt.as_deref()),
        ("t1", Some("k"))
    );
    assert_eq!(
        s.code_grant("h1").await.unwrap().unwrap().code.used_at,
        Some(at(1).millis())
    );
    assert!(!s.use_jti("sp", "p-2", at(300)).await.unwrap());

    // The same code again, with fresh jtis: refused, and the token it gave is revoked.
    assert_eq!(
        s.issue_token(jti("a-3"), None, &token("tok2", None), at(2))
            .await
            .unwrap(),
        Issue::CodeReused
    );
    assert!(s.token("tok2").await.unwrap().is_none());
    assert!(s.token("tok1").await.unwrap().unwrap().revoked_at.is_some());
    let mut unknown = token("tok3", None);
    unknown.code_hash = "nope".into();
    assert_eq!(
        s.issue_token(jti("a-4"), None, &unknown, at(2))
            .await
            .unwrap(),
        Issue::CodeUnknown
    );
}

async fn a_request_is_pushed_only_with_fresh_jtis(s: &Store) {
    s.put_client(&client("sp")).await.unwrap();
    s.use_jti("sp", "a-old", at(300)).await.unwrap();
    s.use_jti("sp", "p-old", at(300)).await.unwrap();
    let jti = |j: &'static str| Jti {
        client_id: "sp",
        jti: j,
        keep_until: at(300),
    };
    let push = |id: &'static str, a: &'static str, p: Option<&'static str>| async move {
        s.push_request(&request(id, at(90)), jti(a), p.map(jti), None)
            .await
            .unwrap()
    };
    assert_eq!(
        push("r0", "a-old", Some("p-1")).await,
        Push::AssertionReplay
    );
    assert_eq!(push("r0", "a-1", Some("p-old")).await, Push::ProofReplay);
    assert!(s.request("r0").await.unwrap().is_none(), "nothing stored");
    assert_eq!(push("r1", "a-2", Some("p-2")).await, Push::Stored);
    assert_eq!(push("r2", "a-3", None).await, Push::Stored);
    let r = s.request("r1").await.unwrap().unwrap();
    assert_eq!((r.client_id.as_str(), r.status.as_str()), ("sp", "pushed"));
    assert!(s.request("r2").await.unwrap().is_some());
    for used in ["a-1", "a-2", "p-2", "a-3"] {
        assert!(
            !s.use_jti("sp", used, at(300)).await.unwrap(),
            "{used} spent"
        );
    }
    // An identity assertion's jti is recorded in the same step: a used one stores nothing, and a
    // fresh one is spent only with the request stored.
    s.use_jti("sp", "identity:i-old", at(300)).await.unwrap();
    let with_identity = |id: &'static str, a: &'static str, i: &'static str| async move {
        s.push_request(&request(id, at(90)), jti(a), Some(jti("p-9")), Some(jti(i)))
            .await
            .unwrap()
    };
    assert_eq!(
        with_identity("r3", "a-4", "identity:i-old").await,
        Push::IdentityReplay
    );
    assert!(s.request("r3").await.unwrap().is_none(), "nothing stored");
    assert_eq!(
        s.push_request(
            &request("r4", at(90)),
            jti("a-5"),
            None,
            Some(jti("identity:i-1"))
        )
        .await
        .unwrap(),
        Push::Stored
    );
    assert!(s.request("r4").await.unwrap().is_some());
    assert!(!s.use_jti("sp", "identity:i-1", at(300)).await.unwrap());
}
