//! Identity state on both databases: sessions and rotation, lockout counting and expiry, one-time
//! codes, certificate challenges, subjects and contacts, the demo outbox.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::{Timestamp, limits};
use mydata_store::{ChallengeUse, CodeRow, LockoutRule, OutboxRow, SessionRow, Store};
use std::time::Duration;

const T0: Timestamp = Timestamp::from_millis(1_790_000_000_000);
const MIN: Duration = Duration::from_secs(60);

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
    sessions_rotate_and_take_their_codes_and_challenges_along,
    lockout_counts_within_the_window_and_expires,
    codes_are_single_use_with_bounded_attempts,
    challenges_are_single_use_per_session_and_expire,
    subjects_passwords_and_contacts,
    a_sent_message_is_recorded_with_its_job_done_and_emptied,
    sweep_removes_ended_sessions_and_stale_state,
);

fn session(id: &str, now: Timestamp) -> SessionRow {
    SessionRow {
        id_hash: id.into(),
        csrf_token: format!("csrf-{id}"),
        subject: None,
        subject_kind: None,
        method: None,
        level: None,
        verified_at: None,
        pending: None,
        subject_sealed: None,
        created_at: now.millis(),
        last_seen_at: now.millis(),
        expires_at: now.plus(Duration::from_secs(8 * 3600)).millis(),
    }
}

fn code(id: &str, session: &str, now: Timestamp) -> CodeRow {
    CodeRow {
        id: id.into(),
        session_hash: session.into(),
        subject: "p-x".into(),
        channel: "email".into(),
        address: "a@b.example".into(),
        code_hash: format!("hash-{id}"),
        attempts: 0,
        created_at: now.millis(),
        expires_at: now.plus(5 * MIN).millis(),
        used_at: None,
    }
}

async fn sessions_rotate_and_take_their_codes_and_challenges_along(s: &Store) {
    s.put_session(&session("old", T0), None).await.unwrap();
    s.put_code(&code("c1", "old", T0)).await.unwrap();
    s.put_challenge("ch1", "old", "text", T0, T0.plus(MIN))
        .await
        .unwrap();
    s.set_session_pending("old", Some("{}")).await.unwrap();
    assert_eq!(
        s.session("old").await.unwrap().unwrap().pending.as_deref(),
        Some("{}")
    );
    let mut new = session("new", T0);
    new.subject = Some("p-x".into());
    new.level = Some(1);
    s.put_session(&new, Some("old")).await.unwrap();
    assert!(s.session("old").await.unwrap().is_none());
    assert_eq!(s.session("new").await.unwrap().unwrap(), new);
    assert!(s.code_for_session("old").await.unwrap().is_none());
    assert_eq!(
        s.take_challenge("ch1", "old", T0).await.unwrap(),
        ChallengeUse::Unusable
    );
    s.touch_session("new", T0.plus(MIN)).await.unwrap();
    assert_eq!(
        s.session("new").await.unwrap().unwrap().last_seen_at,
        T0.plus(MIN).millis()
    );
    s.delete_session("new").await.unwrap();
    assert!(s.session("new").await.unwrap().is_none());
}

async fn lockout_counts_within_the_window_and_expires(s: &Store) {
    let rule = LockoutRule {
        threshold: limits::LOCKOUT_THRESHOLD,
        window: limits::LOCKOUT_WINDOW,
        duration: limits::LOCKOUT_DURATION,
    };
    // Four failures, then the fifth 16 minutes after the first: the first no longer counts.
    for i in 0..4 {
        assert_eq!(
            s.record_failure(&["a"], rule, T0.plus(MIN * i))
                .await
                .unwrap(),
            None
        );
    }
    let t5 = T0.plus(16 * MIN);
    assert_eq!(s.record_failure(&["a"], rule, t5).await.unwrap(), None);
    assert_eq!(s.locked_until(&["a"], t5).await.unwrap(), None);
    for i in 17..20 {
        assert_eq!(
            s.record_failure(&["a"], rule, T0.plus(MIN * i))
                .await
                .unwrap(),
            None
        );
    }
    // The fifth within 15 minutes (16, 17, 18, 19, 20) locks "a" (not "b", counted apart).
    let t6 = T0.plus(20 * MIN);
    let until = s.record_failure(&["a", "b"], rule, t6).await.unwrap();
    assert_eq!(until, Some(t6.plus(15 * MIN)));
    assert_eq!(s.locked_until(&["a"], t6).await.unwrap(), until);
    assert_eq!(s.locked_until(&["b"], t6).await.unwrap(), None);
    assert_eq!(s.locked_until(&["b", "a"], t6).await.unwrap(), until);
    // Expiry, then counting starts again from zero.
    let later = t6.plus(15 * MIN);
    assert_eq!(s.locked_until(&["a"], later).await.unwrap(), None);
    assert_eq!(s.record_failure(&["a"], rule, later).await.unwrap(), None);
}

async fn codes_are_single_use_with_bounded_attempts(s: &Store) {
    s.put_session(&session("s", T0), None).await.unwrap();
    s.put_code(&code("c1", "s", T0)).await.unwrap();
    // A new code replaces the old one.
    s.put_code(&code("c2", "s", T0.plus(MIN))).await.unwrap();
    assert_eq!(s.code_for_session("s").await.unwrap().unwrap().id, "c2");
    assert!(s.count_code_attempt("c2", 2).await.unwrap());
    assert!(s.count_code_attempt("c2", 2).await.unwrap());
    assert!(
        !s.count_code_attempt("c2", 2).await.unwrap(),
        "third attempt refused"
    );
    assert!(s.use_code("c2", T0).await.unwrap());
    assert!(!s.use_code("c2", T0).await.unwrap(), "used once only");
    assert!(
        !s.count_code_attempt("c2", 9).await.unwrap(),
        "a used code takes no attempts"
    );
}

async fn challenges_are_single_use_per_session_and_expire(s: &Store) {
    s.put_challenge("c", "s1", "to sign", T0, T0.plus(2 * MIN))
        .await
        .unwrap();
    assert_eq!(
        s.take_challenge("c", "s2", T0).await.unwrap(),
        ChallengeUse::Unusable
    );
    assert_eq!(
        s.take_challenge("c", "s1", T0).await.unwrap(),
        ChallengeUse::Taken {
            to_be_signed: "to sign".into()
        }
    );
    assert_eq!(
        s.take_challenge("c", "s1", T0).await.unwrap(),
        ChallengeUse::Unusable
    );
    s.put_challenge("d", "s1", "x", T0, T0.plus(2 * MIN))
        .await
        .unwrap();
    assert_eq!(
        s.take_challenge("d", "s1", T0.plus(2 * MIN)).await.unwrap(),
        ChallengeUse::Expired
    );
}

async fn subjects_passwords_and_contacts(s: &Store) {
    let a = s.ensure_subject("p-a", "natural", T0).await.unwrap();
    assert_eq!(a.first_use_at, None);
    assert_eq!(
        s.ensure_subject("p-a", "natural", T0.plus(MIN))
            .await
            .unwrap()
            .created_at,
        T0.millis()
    );
    assert!(s.set_password_hash("p-a", "$argon2id$x", T0).await.unwrap());
    assert!(
        !s.set_password_hash("p-none", "$argon2id$x", T0)
            .await
            .unwrap()
    );
    s.complete_first_use("p-a", "email", "a@b.example", T0.plus(MIN))
        .await
        .unwrap();
    s.complete_first_use("p-a", "email", "c@d.example", T0.plus(2 * MIN))
        .await
        .unwrap();
    let a = s.subject("p-a").await.unwrap().unwrap();
    assert_eq!(a.first_use_at, Some(T0.plus(MIN).millis()));
    assert_eq!(a.password_hash.as_deref(), Some("$argon2id$x"));
    let contacts = s.contacts("p-a").await.unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].address, "c@d.example");
}

/// A `messages` job to `to`, due at `T0`.
fn message_job(id: &str, to: &str) -> mydata_store::NewJob {
    mydata_store::NewJob {
        id: id.into(),
        queue: "messages".into(),
        payload: serde_json::json!({ "to": to }),
        run_at: T0,
        max_attempts: 3,
        dedup_key: None,
    }
}

async fn a_sent_message_is_recorded_with_its_job_done_and_emptied(s: &Store) {
    let worker = "w1";
    for (i, id) in ["m1", "m2"].iter().enumerate() {
        s.enqueue_job(&message_job(id, "a@b.example"), T0)
            .await
            .unwrap();
        let claimed = s
            .claim_job("messages", worker, MIN, T0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(claimed.id, *id);
        let row = OutboxRow {
            id: (*id).into(),
            at: T0.millis() + i64::try_from(i).unwrap(),
            channel: "email".into(),
            recipient: "a@b.example".into(),
            title: "t".into(),
            body: "b".into(),
        };
        // The second is a notice about a transfer: its audit event goes with it.
        let audit = (i == 1).then(|| mydata_store::NewAuditEvent {
            at: T0,
            kind: "notice.sent".into(),
            subject: Some("p-a".into()),
            transfer_id: Some("t-1".into()),
            actor: "platform".into(),
            detail: serde_json::json!({"event": "ready", "channel": "email"}),
        });
        let held = s
            .record_message_sent(id, worker, Some(&row), audit.as_ref(), T0)
            .await
            .unwrap();
        assert!(held);
        // Run again by a worker whose lease is gone: no second outbox row, the job untouched.
        let held = s
            .record_message_sent(id, "w2", Some(&row), None, T0)
            .await
            .unwrap();
        assert!(!held);
        let job = s.job(id).await.unwrap().unwrap();
        assert_eq!(job.state, mydata_store::JobState::Done);
        assert_eq!(job.payload, serde_json::json!({}));
        assert_eq!(job.lease_owner, None);
    }
    let ids: Vec<String> = s
        .outbox(10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, ["m2", "m1"]);
    let events = s.audit_for_transfer("t-1").await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "notice.sent");
    assert_eq!(events[0].subject.as_deref(), Some("p-a"));
    // Without an outbox row (a real mail server took it), only the job is recorded.
    s.enqueue_job(&message_job("m3", "c@d.example"), T0)
        .await
        .unwrap();
    s.claim_job("messages", worker, MIN, T0)
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.record_message_sent("m3", worker, None, None, T0)
            .await
            .unwrap()
    );
    assert_eq!(s.outbox(10).await.unwrap().len(), 2);
    assert_eq!(
        s.job("m3").await.unwrap().unwrap().payload,
        serde_json::json!({})
    );
}

async fn sweep_removes_ended_sessions_and_stale_state(s: &Store) {
    s.put_session(&session("idle", T0), None).await.unwrap();
    s.put_session(&session("fresh", T0.plus(30 * MIN)), None)
        .await
        .unwrap();
    s.put_code(&code("c", "idle", T0)).await.unwrap();
    let now = T0.plus(31 * MIN);
    let n = s
        .sweep_identity(now, T0.plus(16 * MIN), T0.plus(16 * MIN))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(s.session("idle").await.unwrap().is_none());
    assert!(s.session("fresh").await.unwrap().is_some());
    assert!(s.code_for_session("idle").await.unwrap().is_none());
}
