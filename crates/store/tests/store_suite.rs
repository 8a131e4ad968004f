//! The store suite: every test runs once on SQLite and once on a real PostgreSQL server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::transfer::{TransferEvent, TransferKind, TransferState};
use mydata_core::{Timestamp, limits};
use mydata_store::testing::{fresh_postgres, fresh_sqlite};
use mydata_store::{
    Admission, AgencyLimits, AuditProblem, FetchAttempt, FetchProgress, FetchSettlement, JobState,
    Jti, NewAuditEvent, NewJob, NewTransfer, PackageRecord, Retrieval, SettleAlso, SettleOutcome,
    StartJobs, Store, StoreError, fetch_status,
};
use std::time::Duration;

const T0: Timestamp = Timestamp::from_millis(1_790_000_000_000);

/// Runs each named test function against both backends.
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
    a_key_check_keeps_the_first_value,
    ops_counts_the_audit_backlog_and_finds_the_newest_tree_head,
    transfer_round_trip_keeps_datasets_in_order,
    a_write_step_that_fails_midway_changes_nothing_and_the_next_one_works,
    an_integration_that_fails_midway_changes_nothing_and_the_next_one_works,
    consent_stores_the_identity_and_every_job_as_given,
    the_last_two_datasets_settled_at_once_enqueue_the_packaging_once,
    a_change_from_an_earlier_read_applies_to_the_transfer_as_it_is_now,
    transfer_follows_the_state_machine_with_one_audit_event_per_change,
    stale_transition_is_a_conflict_and_changes_nothing,
    expiry_query_finds_transfers_past_eight_hours,
    transfers_for_subject_are_newest_first,
    foreign_keys_are_enforced,
    jobs_are_claimed_once_and_leases_expire,
    a_completion_claims_the_next_job_in_the_same_write,
    failed_jobs_retry_until_max_attempts,
    dedup_key_enqueues_once,
    concurrent_claims_never_share_a_job,
    integration_beside_concurrent_writes_takes_every_event_once,
    audit_log_is_append_only_in_order,
    migrations_are_idempotent,
    audit_tree_integrates_in_batches_and_proves_inclusion_and_consistency,
    audit_backlog_is_integrated_batch_after_batch_within_the_round_limit,
    audit_verify_names_a_modified_entry,
    audit_verify_names_a_deleted_entry,
    audit_verify_detects_reordered_entries,
    audit_verify_detects_a_forged_tree_head,
    audit_verify_detects_rehashed_history,
    batched_append_and_integration_keep_order,
    proofs_from_stored_subtrees_match_proofs_from_all_leaves,
    proofs_survive_missing_subtree_roots,
    audit_verify_names_a_tampered_subtree_root,
    a_proof_for_another_tree_size_does_not_verify,
    fetch_settles_once_and_reports_when_all_are_settled,
    agency_slots_limit_calls_in_flight_and_expire,
    concurrent_admissions_never_exceed_the_agency_limit,
    circuit_opens_after_threshold_and_lets_one_probe_through,
    a_half_open_circuit_whose_slots_are_all_held_stays_as_it_was,
    package_key_is_taken_once_and_destroyed_at_expiry,
    a_retrieval_takes_the_key_and_closes_the_transfer_once,
    packaging_ends_in_one_step_and_only_once,
    the_last_fetch_settles_and_packages_in_one_step_or_not_at_all,
    a_started_transfer_is_what_creation_then_consent_make,
    a_start_leases_its_first_jobs_to_the_starter_until_the_lease_runs_out,
    secrets_are_purged_once_fetching_ends,
    pruning_removes_old_details_but_the_log_still_verifies_and_proves,
    audit_verify_catches_tampering_hidden_as_pruning,
    retention_deletes_old_receipts_transfers_and_finished_jobs,
    receipts_are_stored_once_with_their_event,
    transfer_records_by_agency_and_service_page_through_a_time_range,
);

fn new_transfer(id: &str, subject: &str) -> NewTransfer {
    NewTransfer {
        id: id.into(),
        kind: TransferKind::SelfDownload,
        subject: subject.into(),
        recipient: None,
        purpose: "self download".into(),
        datasets: vec![
            "low-income-household".into(),
            "household-register-personal".into(),
        ],
    }
}

/// SQLite's log is checkpointed beside the writer: every frame written so far reaches the
/// database file, with the writer free meanwhile. PostgreSQL checkpoints itself.
#[tokio::test]
async fn a_checkpoint_copies_the_whole_log_into_the_database_on_sqlite_only() {
    let db = fresh_sqlite().await.unwrap();
    let s = &db.store;
    for i in 0..5 {
        s.create_transfer(&new_transfer(&format!("c{i}"), "subj"), "subj", T0)
            .await
            .unwrap();
    }
    let (log, done) = s.checkpoint().await.unwrap().unwrap();
    assert!(log > 0, "the writes are in the log");
    assert_eq!(done, log, "with no reader in the way, all of it is copied");
    // The data is all there, read through the database file.
    assert!(s.transfer("c4").await.unwrap().is_some());
    let pg = fresh_postgres().await.unwrap();
    assert_eq!(pg.store.checkpoint().await.unwrap(), None);
}

/// SQLite overwrites what it deletes (`secure_delete`): a transfer's sealed secret, once its row
/// is deleted and the log checkpointed, is no longer in the database file (a deleted row's bytes
/// would otherwise stay in the freed space of its page until something overwrites them).
#[tokio::test]
async fn a_deleted_secret_leaves_the_sqlite_file() {
    let db = fresh_sqlite().await.unwrap();
    let s = &db.store;
    let file = db.dir.as_ref().unwrap().path().join("mydata.db");
    let sealed = format!("SEALED-SECRET-{}", "x7Q".repeat(40));
    let in_file = || {
        let bytes = std::fs::read(&file).unwrap();
        bytes.windows(sealed.len()).any(|w| w == sealed.as_bytes())
    };
    // Rows on either side share its page, and stay.
    for id in ["k0", "k1", "k2"] {
        let secret = if id == "k1" {
            sealed.clone()
        } else {
            format!("other-{id}")
        };
        s.start_transfer(
            &new_transfer(id, "subj"),
            &secret,
            StartJobs::queued(&[]),
            None,
            "subj",
            T0,
        )
        .await
        .unwrap();
    }
    let (log, done) = s.checkpoint().await.unwrap().unwrap();
    assert_eq!(done, log);
    assert!(in_file(), "the secret reached the database file");
    s.apply_transfer_event("k1", TransferEvent::Cancel, "subj", T0)
        .await
        .unwrap();
    assert!(s.purge_transfer_secrets().await.unwrap() >= 1);
    assert_eq!(s.transfer_secret("k1").await.unwrap(), None);
    assert!(s.transfer_secret("k0").await.unwrap().is_some());
    let (log, done) = s.checkpoint().await.unwrap().unwrap();
    assert_eq!(done, log);
    assert!(!in_file(), "the deleted secret's bytes are overwritten");
}

/// The audit sequencer runs every few seconds also on an idle platform: a round with nothing to
/// integrate writes nothing to SQLite's log.
#[tokio::test]
async fn an_idle_audit_round_writes_nothing_on_sqlite() {
    let db = fresh_sqlite().await.unwrap();
    let s = &db.store;
    append_events(s, 300).await;
    s.integrate_audit_backlog(100, 10, T0).await.unwrap();
    // The log now holds many frames, all checkpointed; the next write would start it over, so
    // its frame count stays put only while nothing is written.
    let (before, done) = s.checkpoint().await.unwrap().unwrap();
    assert!(
        before > 10 && done == before,
        "{before} frames, {done} checkpointed"
    );
    for _ in 0..3 {
        s.integrate_audit_backlog(100, 10, T0).await.unwrap();
    }
    let (after, _) = s.checkpoint().await.unwrap().unwrap();
    assert_eq!(after, before, "frames in the write-ahead log");
    // New events are still integrated.
    append_events(s, 1).await;
    let head = s
        .integrate_audit_backlog(100, 10, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.tree_size, 301);
}

async fn transfer_round_trip_keeps_datasets_in_order(s: &Store) {
    let t = s
        .create_transfer(&new_transfer("t1", "subj-a"), "subj-a", T0)
        .await
        .unwrap();
    assert_eq!(t.state, TransferState::Created);
    assert_eq!(t.expires_at, T0.plus(limits::PACKAGE_TTL));
    let ids: Vec<&str> = t.datasets.iter().map(|d| d.dataset_id.as_str()).collect();
    assert_eq!(ids, ["low-income-household", "household-register-personal"]);
    assert!(t.datasets.iter().all(|d| d.status == "pending"));
    assert_eq!(s.transfer("t1").await.unwrap(), Some(t));
    assert_eq!(s.transfer("missing").await.unwrap(), None);
    // The same ID twice is refused and leaves the first intact.
    assert!(
        s.create_transfer(&new_transfer("t1", "subj-b"), "subj-b", T0)
            .await
            .is_err()
    );
    assert_eq!(s.transfer("t1").await.unwrap().unwrap().subject, "subj-a");
}

async fn a_write_step_that_fails_midway_changes_nothing_and_the_next_one_works(s: &Store) {
    s.create_transfer(&new_transfer("w1", "subj"), "subj", T0)
        .await
        .unwrap();
    // The state change runs first and succeeds; its audit event is then refused.
    let refuse = match s.backend() {
        mydata_store::Backend::Sqlite => {
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events WHEN NEW.kind = 'transfer.fetching'
             BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
        }
        mydata_store::Backend::Postgres => {
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$;
             CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW WHEN (NEW.kind = 'transfer.fetching')
             EXECUTE FUNCTION refuse_audit()"
        }
    };
    s.execute_raw(refuse).await.unwrap();
    let before = s.row_counts().await.unwrap();
    let now = T0.plus(Duration::from_secs(1));
    assert!(
        s.apply_transfer_event("w1", TransferEvent::Consent, "subj", now)
            .await
            .is_err()
    );
    // Nothing of the step stayed: the state and version are as before, no event was added.
    let t = s.transfer("w1").await.unwrap().unwrap();
    assert_eq!((t.state, t.version), (TransferState::Created, 0));
    assert_eq!(s.row_counts().await.unwrap(), before);
    // The writer is usable at once (no transaction left open on it).
    let drop = match s.backend() {
        mydata_store::Backend::Sqlite => "DROP TRIGGER refuse_audit",
        mydata_store::Backend::Postgres => "DROP TRIGGER refuse_audit ON audit_events",
    };
    s.execute_raw(drop).await.unwrap();
    let t = s
        .apply_transfer_event("w1", TransferEvent::Consent, "subj", now)
        .await
        .unwrap();
    assert_eq!((t.state, t.version), (TransferState::Fetching, 1));
    assert_eq!(s.audit_for_transfer("w1").await.unwrap().len(), 2);
}

async fn consent_stores_the_identity_and_every_job_as_given(s: &Store) {
    s.create_transfer(&new_transfer("c1", "subj"), "subj", T0)
        .await
        .unwrap();
    // A job with the dedup key of an existing one is skipped; the others are stored as given.
    let mut existing = job("c0-old", T0);
    existing.dedup_key = Some("fetch:c1:b".into());
    assert!(s.enqueue_job(&existing, T0).await.unwrap());
    let mut a = job("c1-a", T0.plus(Duration::from_secs(5)));
    a.payload = serde_json::json!({"transfer_id": "c1", "dataset": "a", "n": [1, 2]});
    a.dedup_key = Some("fetch:c1:a".into());
    let mut b = job("c1-b", T0);
    b.dedup_key = Some("fetch:c1:b".into());
    s.begin_fetching("c1", "sealed-c1", &[a.clone(), b], "subj", T0)
        .await
        .unwrap();
    let t = s.transfer("c1").await.unwrap().unwrap();
    assert_eq!((t.state, t.version), (TransferState::Fetching, 1));
    assert_eq!(
        s.transfer_secret("c1").await.unwrap().as_deref(),
        Some("sealed-c1")
    );
    let stored = s.job("c1-a").await.unwrap().unwrap();
    assert_eq!(
        (
            &stored.queue,
            &stored.payload,
            stored.run_at,
            stored.max_attempts,
            stored.state
        ),
        (
            &a.queue,
            &a.payload,
            a.run_at,
            a.max_attempts,
            JobState::Queued
        )
    );
    assert!(s.job("c1-b").await.unwrap().is_none());
    let kinds: Vec<String> = s
        .audit_for_transfer("c1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["transfer.created", "transfer.fetching"]);
}

async fn a_change_from_an_earlier_read_applies_to_the_transfer_as_it_is_now(s: &Store) {
    let created = s
        .create_transfer(&new_transfer("e1", "subj"), "subj", T0)
        .await
        .unwrap();
    let now = T0.plus(Duration::from_secs(1));
    // Unchanged since the read: applied from it.
    let fetching = s
        .apply_transfer_event_from(&created, TransferEvent::Consent, "subj", now)
        .await
        .unwrap();
    assert_eq!(
        (fetching.state, fetching.version),
        (TransferState::Fetching, 1)
    );
    // Stale (still `created`, version 0): read again, and the event applies to `fetching`.
    let ready = s
        .apply_transfer_event_from(&created, TransferEvent::Settled, "system", now)
        .await
        .unwrap();
    assert_eq!((ready.state, ready.version), (TransferState::Ready, 2));
    assert_eq!(Some(ready), s.transfer("e1").await.unwrap());
    // A stale consent is refused by the state machine as it stands now, and writes nothing.
    assert!(matches!(
        s.begin_fetching_from(&created, "sealed", &[], "subj", now)
            .await
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
    assert_eq!(s.audit_for_transfer("e1").await.unwrap().len(), 3);
}

async fn the_last_two_datasets_settled_at_once_enqueue_the_packaging_once(s: &Store) {
    fetching(s, "l1").await;
    let package = job("l1-package", T0);
    let settle = |d: &'static str| {
        let (s, package) = (s.clone(), package.clone());
        tokio::spawn(async move {
            let also = SettleAlso {
                next: Some(&package),
                ..SettleAlso::default()
            };
            s.settle_fetch_then(
                "l1",
                d,
                &settlement(fetch_status::REJECTED),
                &ev("agency.outcome", "l1"),
                &also,
                T0,
            )
            .await
            .unwrap()
            .all_settled
        })
    };
    let (a, b) = tokio::join!(
        settle("low-income-household"),
        settle("household-register-personal")
    );
    let mut last = [a.unwrap(), b.unwrap()];
    last.sort();
    // Exactly one of them saw nothing left open.
    assert_eq!(last, [Some(false), Some(true)]);
    assert!(s.job("l1-package").await.unwrap().is_some());
    assert_eq!(s.transfer_secret("l1").await.unwrap(), None);
}

async fn transfer_follows_the_state_machine_with_one_audit_event_per_change(s: &Store) {
    s.create_transfer(&new_transfer("t2", "subj"), "subj", T0)
        .await
        .unwrap();
    let mut now = T0;
    for e in [
        TransferEvent::Consent,
        TransferEvent::Settled,
        TransferEvent::Release,
        TransferEvent::Purge,
    ] {
        now = now.plus(Duration::from_secs(1));
        let changed = s.apply_transfer_event("t2", e, "subj", now).await.unwrap();
        // What the change returns is what a read finds afterwards.
        assert_eq!(Some(changed), s.transfer("t2").await.unwrap());
    }
    let t = s.transfer("t2").await.unwrap().unwrap();
    assert_eq!(t.state, TransferState::Deleted);
    assert_eq!(t.version, 4);
    let kinds: Vec<String> = s
        .audit_for_transfer("t2")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "transfer.created",
            "transfer.fetching",
            "transfer.ready",
            "transfer.delivered",
            "transfer.deleted"
        ]
    );
    // An illegal event is refused and writes nothing.
    let err = s
        .apply_transfer_event("t2", TransferEvent::Release, "subj", now)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition(_)), "{err}");
    assert_eq!(s.audit_for_transfer("t2").await.unwrap().len(), 5);
    let err = s
        .apply_transfer_event("nope", TransferEvent::Consent, "subj", now)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
}

async fn stale_transition_is_a_conflict_and_changes_nothing(s: &Store) {
    s.create_transfer(&new_transfer("t3", "subj"), "subj", T0)
        .await
        .unwrap();
    // Two actors race: both read `created`; only one may move it.
    let (a, b) = tokio::join!(
        s.apply_transfer_event("t3", TransferEvent::Consent, "subj", T0),
        s.apply_transfer_event("t3", TransferEvent::Refuse, "subj", T0),
    );
    let ok = [a.is_ok(), b.is_ok()].iter().filter(|x| **x).count();
    assert!(ok >= 1);
    let t = s.transfer("t3").await.unwrap().unwrap();
    assert_eq!(
        t.version as usize, ok,
        "every successful change bumps the version once"
    );
    assert_eq!(s.audit_for_transfer("t3").await.unwrap().len(), 1 + ok);
    for r in [a, b] {
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    StoreError::Conflict(_) | StoreError::IllegalTransition(_)
                ),
                "{e}"
            );
        }
    }
}

async fn expiry_query_finds_transfers_past_eight_hours(s: &Store) {
    s.create_transfer(&new_transfer("old", "subj"), "subj", T0)
        .await
        .unwrap();
    s.create_transfer(
        &new_transfer("new", "subj"),
        "subj",
        T0.plus(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    s.create_transfer(&new_transfer("gone", "subj"), "subj", T0)
        .await
        .unwrap();
    s.apply_transfer_event("gone", TransferEvent::Refuse, "subj", T0)
        .await
        .unwrap();
    let just_before = T0.plus(limits::PACKAGE_TTL).plus(Duration::ZERO);
    assert_eq!(
        s.transfers_past_expiry(Timestamp::from_millis(just_before.millis() - 1), 10)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        s.transfers_past_expiry(just_before, 10).await.unwrap(),
        vec!["old".to_string()]
    );
    let later = T0.plus(limits::PACKAGE_TTL).plus(Duration::from_secs(3600));
    assert_eq!(
        s.transfers_past_expiry(later, 10).await.unwrap(),
        vec!["old".to_string(), "new".to_string()]
    );
    assert_eq!(s.transfers_past_expiry(later, 1).await.unwrap().len(), 1);
}

async fn transfers_for_subject_are_newest_first(s: &Store) {
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        s.create_transfer(
            &new_transfer(id, "me"),
            "me",
            T0.plus(Duration::from_secs(i as u64)),
        )
        .await
        .unwrap();
    }
    s.create_transfer(&new_transfer("x", "someone-else"), "someone-else", T0)
        .await
        .unwrap();
    let ids: Vec<String> = s
        .transfers_for_subject("me", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["c", "b", "a"]);
    // The person's records list what each transfer carried, in the order asked for.
    let mine = s.transfers_for_subject("me", 2).await.unwrap();
    assert_eq!(
        mine.len(),
        2,
        "the limit counts transfers, not dataset rows"
    );
    for t in &mine {
        let datasets: Vec<&str> = t.datasets.iter().map(|d| d.dataset_id.as_str()).collect();
        assert_eq!(
            datasets,
            ["low-income-household", "household-register-personal"],
            "{}",
            t.id
        );
    }
    let events = s.audit_for_subject("me").await.unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.subject.as_deref() == Some("me")));
}

async fn foreign_keys_are_enforced(s: &Store) {
    let err = s
        .execute_raw("INSERT INTO transfer_datasets (transfer_id, dataset_id, position, status, updated_at) VALUES ('no-such', 'd', 0, 'pending', 0)")
        .await;
    assert!(
        err.is_err(),
        "a dataset row for a missing transfer must be refused"
    );
}

fn job(id: &str, run_at: Timestamp) -> NewJob {
    NewJob {
        id: id.into(),
        queue: "fetch".into(),
        payload: serde_json::json!({"n": id}),
        run_at,
        max_attempts: 3,
        dedup_key: None,
    }
}

async fn a_completion_claims_the_next_job_in_the_same_write(s: &Store) {
    let lease = Duration::from_secs(30);
    for id in ["a", "b"] {
        s.enqueue_job(&job(id, T0), T0).await.unwrap();
    }
    let a = s
        .claim_job("fetch", "w1", lease, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.id, "a");
    // Another worker's job is not completed by this one, but it may still claim.
    let (done, b) = s
        .complete_and_claim("a", "fetch", "w2", lease, T0)
        .await
        .unwrap();
    assert!(!done);
    let b = b.unwrap();
    assert_eq!((b.id.as_str(), b.attempts), ("b", 1));
    assert_eq!(s.job("a").await.unwrap().unwrap().state, JobState::Running);
    let (done, none) = s
        .complete_and_claim("a", "fetch", "w1", lease, T0)
        .await
        .unwrap();
    assert!(done && none.is_none(), "a running job is not due to anyone");
    assert_eq!(s.job("a").await.unwrap().unwrap().state, JobState::Done);

    // A job whose every lease ran out is retired instead of handed out.
    let mut tired = job("c", T0);
    tired.max_attempts = 1;
    s.enqueue_job(&tired, T0).await.unwrap();
    s.enqueue_job(&job("d", T0), T0).await.unwrap();
    let c = s
        .claim_job("fetch", "w3", lease, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.id, "c");
    let later = T0.plus(Duration::from_secs(31));
    // c's lease ran out on its only attempt: retired, and d claimed instead. b, completed in the
    // same write (late, but no one took it over), is never claimed with its own completion.
    let (done, next) = s
        .complete_and_claim("b", "fetch", "w2", lease, later)
        .await
        .unwrap();
    assert!(done);
    assert_eq!(next.unwrap().id, "d");
    assert_eq!(s.job("c").await.unwrap().unwrap().state, JobState::Failed);
}

async fn jobs_are_claimed_once_and_leases_expire(s: &Store) {
    let lease = Duration::from_secs(30);
    s.enqueue_job(&job("j1", T0), T0).await.unwrap();
    s.enqueue_job(&job("later", T0.plus(Duration::from_secs(600))), T0)
        .await
        .unwrap();
    let j = s
        .claim_job("fetch", "w1", lease, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (j.id.as_str(), j.state, j.attempts),
        ("j1", JobState::Running, 1)
    );
    assert_eq!(j.payload, serde_json::json!({"n": "j1"}));
    // Nothing else is due; another queue sees nothing.
    assert!(
        s.claim_job("fetch", "w2", lease, T0)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.claim_job("mail", "w2", lease, T0)
            .await
            .unwrap()
            .is_none()
    );
    // w1 dies; after its lease w2 takes the job over and w1 can no longer finish it.
    let after_lease = T0.plus(Duration::from_secs(31));
    let j = s
        .claim_job("fetch", "w2", lease, after_lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((j.id.as_str(), j.attempts), ("j1", 2));
    assert!(matches!(
        s.complete_job("j1", "w1", after_lease).await,
        Err(StoreError::LeaseLost(_))
    ));
    s.complete_job("j1", "w2", after_lease).await.unwrap();
    assert_eq!(s.job("j1").await.unwrap().unwrap().state, JobState::Done);
    // The later job comes due in its time.
    let t = T0.plus(Duration::from_secs(600));
    assert_eq!(
        s.claim_job("fetch", "w1", lease, t)
            .await
            .unwrap()
            .unwrap()
            .id,
        "later"
    );
    s.complete_job("later", "w1", t).await.unwrap();
    // A job whose worker died is taken over before queued work, even work due earlier: a steady
    // stream of queued jobs must not starve it.
    s.enqueue_job(&job("orphan", t), t).await.unwrap();
    let claimed = s.claim_job("fetch", "w3", lease, t).await.unwrap().unwrap();
    assert_eq!(claimed.id, "orphan");
    let earlier = Timestamp::from_millis(t.millis() - 60_000);
    s.enqueue_job(&job("queued-earlier", earlier), t)
        .await
        .unwrap();
    let after = t.plus(Duration::from_secs(31));
    let order: Vec<String> = [
        s.claim_job("fetch", "w4", lease, after).await.unwrap(),
        s.claim_job("fetch", "w4", lease, after).await.unwrap(),
    ]
    .into_iter()
    .map(|j| j.unwrap().id)
    .collect();
    assert_eq!(order, ["orphan", "queued-earlier"]);
}

async fn failed_jobs_retry_until_max_attempts(s: &Store) {
    let lease = Duration::from_secs(30);
    s.enqueue_job(&job("flaky", T0), T0).await.unwrap();
    let mut now = T0;
    for attempt in 1..=3u32 {
        let j = s
            .claim_job("fetch", "w", lease, now)
            .await
            .unwrap()
            .expect("due");
        assert_eq!(j.attempts, attempt);
        let retry_at = now.plus(Duration::from_secs(10));
        let state = s
            .retry_job("flaky", "w", "agency timed out", retry_at, now)
            .await
            .unwrap();
        assert_eq!(
            state,
            if attempt < 3 {
                JobState::Queued
            } else {
                JobState::Failed
            }
        );
        // Not due before its retry time.
        assert!(
            s.claim_job("fetch", "w", lease, now)
                .await
                .unwrap()
                .is_none()
        );
        now = retry_at;
    }
    let j = s.job("flaky").await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.last_error.as_deref(), Some("agency timed out"));
    assert!(
        s.claim_job("fetch", "w", lease, now.plus(Duration::from_secs(3600)))
            .await
            .unwrap()
            .is_none()
    );
}

async fn dedup_key_enqueues_once(s: &Store) {
    let mut a = job("a", T0);
    a.dedup_key = Some("fetch:t1:d1".into());
    let mut b = job("b", T0);
    b.dedup_key = Some("fetch:t1:d1".into());
    assert!(s.enqueue_job(&a, T0).await.unwrap());
    assert!(!s.enqueue_job(&b, T0).await.unwrap());
    assert!(s.job("b").await.unwrap().is_none());
}

/// The sequencer integrates while write steps (group commits) and single appends go on: every
/// event ends up in the tree exactly once and the log verifies.
async fn integration_beside_concurrent_writes_takes_every_event_once(s: &Store) {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let id = format!("w{w}-{i}");
                s.create_transfer(&new_transfer(&id, "subj"), "subj", T0)
                    .await
                    .unwrap();
                s.append_audit(&NewAuditEvent {
                    at: T0,
                    kind: "notice.sent".into(),
                    subject: Some("subj".into()),
                    transfer_id: Some(id),
                    actor: "system".into(),
                    detail: serde_json::json!({"w": w, "i": i}),
                })
                .await
                .unwrap();
            }
        }));
    }
    let sequencer = {
        let s = s.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                s.integrate_audit_backlog(7, 3, T0).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    sequencer.await.unwrap();
    s.integrate_audit_backlog(7, 1000, T0).await.unwrap();
    let leaves = s.audit_leaves().await.unwrap();
    let mut seqs: Vec<i64> = leaves.iter().map(|l| l.event.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    // Each transfer's creation and its notice: 4 writers of 15 each.
    assert_eq!((leaves.len(), seqs.len()), (120, 120));
    assert_log_verifies(s, 120).await;
}

async fn concurrent_claims_never_share_a_job(s: &Store) {
    for i in 0..20 {
        s.enqueue_job(&job(&format!("c{i:02}"), T0), T0)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..40 {
                match s
                    .claim_job("fetch", &format!("w{w}"), Duration::from_secs(60), T0)
                    .await
                {
                    Ok(Some(j)) => got.push(j.id),
                    Ok(None) => break,
                    // SQLite may report a busy database under contention; the claim is simply retried.
                    Err(StoreError::Database(_)) => continue,
                    Err(e) => panic!("{e}"),
                }
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a job was claimed twice");
    assert_eq!(all.len(), 20);
}

async fn audit_log_is_append_only_in_order(s: &Store) {
    let mut seqs = Vec::new();
    for i in 0..5 {
        let e = NewAuditEvent {
            at: T0.plus(Duration::from_secs(i)),
            kind: "identity.verified".into(),
            subject: Some("p".into()),
            transfer_id: None,
            actor: "p".into(),
            detail: serde_json::json!({"method": "moica_cert", "i": i}),
        };
        seqs.push(s.append_audit(&e).await.unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let events = s.audit_for_subject("p").await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(events[4].detail["i"], 4);
}

async fn migrations_are_idempotent(s: &Store) {
    s.migrate().await.unwrap();
    s.migrate().await.unwrap();
    s.ping().await.unwrap();
}

#[tokio::test]
async fn both_backends_reach_the_same_schema() {
    let lite = fresh_sqlite().await.unwrap();
    let pg = fresh_postgres().await.unwrap();
    let a = lite.store.schema_columns().await.unwrap();
    let b = pg.store.schema_columns().await.unwrap();
    assert!(!a.is_empty());
    assert_eq!(a, b, "SQLite and PostgreSQL migrations have drifted apart");
}

#[tokio::test]
async fn unsupported_url_is_refused() {
    let err = Store::connect("mysql://localhost/x", &Default::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unsupported database URL scheme `mysql`"),
        "{err}"
    );
}

/// Migration 0016 rebuilds SQLite's audit table (no AUTOINCREMENT, one index fewer): a log written
/// before it keeps every event, its tree still verifies, and new events continue after the last.
#[tokio::test]
async fn sqlite_audit_log_written_before_the_rebuild_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/mydata.db", dir.path().display());
    {
        let opts: sqlx::sqlite::SqliteConnectOptions = url
            .parse::<sqlx::sqlite::SqliteConnectOptions>()
            .unwrap()
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        let mut before = sqlx::migrate!("./migrations/sqlite");
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < 16)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&pool).await.unwrap();
        pool.close().await;
    }
    let s = Store::connect(&url, &Default::default()).await.unwrap();
    append_events(&s, 5).await;
    s.integrate_audit(3, T0).await.unwrap();
    let seqs_of = |leaves: &[mydata_store::LeafRow]| -> Vec<i64> {
        leaves.iter().map(|r| r.event.seq).collect()
    };
    let old = seqs_of(&s.audit_leaves().await.unwrap());
    assert_eq!(old.len(), 3);

    s.migrate().await.unwrap();
    append_events(&s, 2).await;
    s.integrate_audit(1000, T0).await.unwrap();
    assert_log_verifies(&s, 7).await;
    let leaves = s.audit_leaves().await.unwrap();
    let seqs = seqs_of(&leaves);
    assert_eq!(seqs[..3], old[..]);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let details: Vec<i64> = leaves
        .iter()
        .map(|r| r.event.detail["i"].as_i64().unwrap())
        .collect();
    assert_eq!(details, [0, 1, 2, 3, 4, 0, 1]);
    // What the rebuild is for: an append no longer rewrites sqlite_sequence.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let sequences: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sqlite_sequence WHERE name = 'audit_events'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(sequences, 0);
}

/// Migration 0017: PostgreSQL stores package bodies (ciphertext) out of line without running its
/// compressor over them first.
#[tokio::test]
async fn postgres_stores_package_bodies_without_compressing_them() {
    let pg = fresh_postgres().await.unwrap();
    let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
    let storage: i8 = sqlx::query_scalar(
        "SELECT attstorage FROM pg_attribute WHERE attrelid = 'packages'::regclass AND attname = 'body'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(storage as u8, b'e', "STORAGE EXTERNAL");
}

#[tokio::test]
async fn sqlite_ping_fails_when_the_file_is_gone() {
    let db = fresh_sqlite().await.unwrap();
    db.store.ping().await.unwrap();
    let dir = db.dir.as_ref().unwrap().path().to_path_buf();
    std::fs::remove_file(dir.join("mydata.db")).unwrap();
    let err = db.store.ping().await.unwrap_err();
    assert!(matches!(err, StoreError::FileMissing(_)), "{err}");
}

/// The whole log verifies: `entries` entries, no problem.
async fn assert_log_verifies(s: &Store, entries: u64) {
    let report = s.verify_audit_log().await.unwrap();
    assert_eq!(
        (report.entries, report.problems.len()),
        (entries, 0),
        "{:?}",
        report.problems
    );
}

/// What `/metrics` reads of the audit log: events waiting for the sequencer, and the newest head
/// (by its key; heads are never deleted).
async fn ops_counts_the_audit_backlog_and_finds_the_newest_tree_head(s: &Store) {
    let snap = s.ops_snapshot(&["agency-fetch"], T0).await.unwrap();
    assert_eq!((snap.audit_backlog, snap.last_tree_head_at), (0, None));
    assert_eq!(snap.queues[0].queued, 0);
    append_events(s, 3).await;
    assert_eq!(s.ops_snapshot(&[], T0).await.unwrap().audit_backlog, 3);
    let first = T0.plus(Duration::from_secs(1));
    s.integrate_audit(1000, first).await.unwrap();
    append_events(s, 2).await;
    let second = T0.plus(Duration::from_secs(5));
    s.integrate_audit(1000, second).await.unwrap();
    let snap = s
        .ops_snapshot(&[], T0.plus(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(snap.audit_backlog, 0);
    let newest = s.latest_tree_head().await.unwrap().unwrap();
    assert_eq!(snap.last_tree_head_at, Some(newest.created_at));
    assert_eq!(newest.created_at, second);
}

async fn append_events(s: &Store, n: i64) {
    for i in 0..n {
        let e = NewAuditEvent {
            at: T0.plus(Duration::from_millis(i as u64)),
            kind: "transfer.created".into(),
            subject: Some(format!("p{}", i % 3)),
            transfer_id: Some(format!("t{i}")),
            actor: "system".into(),
            detail: serde_json::json!({"i": i}),
        };
        s.append_audit(&e).await.unwrap();
    }
}

/// Appends `n` events, integrates them, and returns the verification report.
async fn logged(s: &Store, n: i64) -> mydata_store::AuditReport {
    append_events(s, n).await;
    s.integrate_audit(1000, T0).await.unwrap();
    let report = s.verify_audit_log().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    report
}

async fn audit_backlog_is_integrated_batch_after_batch_within_the_round_limit(s: &Store) {
    let head_sizes = |heads: Vec<mydata_store::TreeHead>| -> Vec<u64> {
        heads.iter().map(|h| h.tree_size).collect()
    };
    append_events(s, 12).await;
    // Two batches of 5 at most: the backlog shrinks by ten, under one head for the round.
    let head = s.integrate_audit_backlog(5, 2, T0).await.unwrap().unwrap();
    assert_eq!(head.tree_size, 10);
    // No limit reached: everything left goes in, and a short batch ends the round.
    let head = s.integrate_audit_backlog(5, 100, T0).await.unwrap();
    assert_eq!(head.map(|h| h.tree_size), Some(12));
    assert_eq!(head_sizes(s.tree_heads().await.unwrap()), [10, 12]);
    // A backlog of several batches: all of it in one round, one head.
    append_events(s, 11).await;
    s.integrate_audit_backlog(5, 100, T0).await.unwrap();
    assert_eq!(head_sizes(s.tree_heads().await.unwrap()), [10, 12, 23]);
    assert_log_verifies(s, 23).await;
    // Nothing pending: no new head.
    s.integrate_audit_backlog(5, 100, T0).await.unwrap();
    assert_eq!(s.tree_heads().await.unwrap().len(), 3);
}

/// An integration batch that fails at its last statement (here: the tree head is refused) leaves
/// no leaf, node or state behind, and the writer is usable at once: on SQLite the batch runs on
/// the writer's calling-thread handle, which must not be left inside its transaction.
async fn an_integration_that_fails_midway_changes_nothing_and_the_next_one_works(s: &Store) {
    append_events(s, 40).await;
    let refuse = match s.backend() {
        mydata_store::Backend::Sqlite => {
            "CREATE TRIGGER refuse_head BEFORE INSERT ON tree_heads
             BEGIN SELECT RAISE(ABORT, 'refused for the test'); END"
        }
        mydata_store::Backend::Postgres => {
            "CREATE FUNCTION refuse_head() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$;
             CREATE TRIGGER refuse_head BEFORE INSERT ON tree_heads FOR EACH ROW EXECUTE FUNCTION refuse_head()"
        }
    };
    s.execute_raw(refuse).await.unwrap();
    let before = s.row_counts().await.unwrap();
    assert!(s.integrate_audit(100, T0).await.is_err());
    assert_eq!(s.row_counts().await.unwrap(), before);
    assert!(s.audit_leaves().await.unwrap().is_empty());
    // The writer takes the next step at once, and the next integration starts from the same state.
    append_events(s, 1).await;
    let drop = match s.backend() {
        mydata_store::Backend::Sqlite => "DROP TRIGGER refuse_head",
        mydata_store::Backend::Postgres => "DROP TRIGGER refuse_head ON tree_heads",
    };
    s.execute_raw(drop).await.unwrap();
    let head = s.integrate_audit(100, T0).await.unwrap().unwrap();
    assert_eq!(head.tree_size, 41);
    assert_log_verifies(s, 41).await;
}

async fn audit_tree_integrates_in_batches_and_proves_inclusion_and_consistency(s: &Store) {
    use mydata_core::merkle;
    assert_eq!(
        s.integrate_audit(10, T0).await.unwrap(),
        None,
        "an empty log has no head"
    );
    append_events(s, 7).await;
    let h1 = s.integrate_audit(5, T0).await.unwrap().unwrap();
    assert_eq!(h1.tree_size, 5);
    let h2 = s.integrate_audit(5, T0).await.unwrap().unwrap();
    assert_eq!(h2.tree_size, 7);
    // Nothing new: no new head.
    assert_eq!(
        s.integrate_audit(5, T0).await.unwrap().unwrap().tree_size,
        7
    );
    assert_eq!(s.tree_heads().await.unwrap().len(), 2);

    let leaves: Vec<merkle::Hash> = s
        .audit_leaves()
        .await
        .unwrap()
        .iter()
        .map(|l| mydata_store::event_leaf_hash(l.leaf_index, &l.event))
        .collect();
    assert_eq!(hex::encode(merkle::root(&leaves)), h2.root_hash);
    assert_eq!(hex::encode(merkle::root(&leaves[..5])), h1.root_hash);

    let root2: merkle::Hash = hex::decode(&h2.root_hash).unwrap().try_into().unwrap();
    let root1: merkle::Hash = hex::decode(&h1.root_hash).unwrap().try_into().unwrap();
    let row = &s.audit_leaves().await.unwrap()[3];
    let (index, proof) = s.audit_inclusion_proof(row.event.seq, 7).await.unwrap();
    assert_eq!(index, 3);
    merkle::verify_inclusion(&leaves[3], 3, 7, &proof, &root2).unwrap();
    let cproof = s.audit_consistency_proof(5, 7).await.unwrap();
    merkle::verify_consistency(5, 7, &root1, &root2, &cproof).unwrap();
    // An event not yet in the tree of size 5 has no proof there.
    let late = &s.audit_leaves().await.unwrap()[6];
    assert!(s.audit_inclusion_proof(late.event.seq, 5).await.is_err());
    let report = s.verify_audit_log().await.unwrap();
    assert_eq!(
        (report.entries, report.heads_checked, report.problems.len()),
        (7, 2, 0)
    );
}

async fn audit_verify_names_a_modified_entry(s: &Store) {
    logged(s, 10).await;
    let victim = s.audit_leaves().await.unwrap()[4].event.seq;
    s.execute_raw(&format!(
        "UPDATE audit_events SET detail = '{{\"i\": 999}}' WHERE seq = {victim}"
    ))
    .await
    .unwrap();
    let r = s.verify_audit_log().await.unwrap();
    assert_eq!(
        r.problems.first(),
        Some(&AuditProblem::Modified {
            index: 4,
            seq: victim
        }),
        "{:?}",
        r.problems
    );
}

async fn audit_verify_names_a_deleted_entry(s: &Store) {
    logged(s, 10).await;
    let victim = s.audit_leaves().await.unwrap()[6].event.seq;
    s.execute_raw(&format!("DELETE FROM audit_events WHERE seq = {victim}"))
        .await
        .unwrap();
    let r = s.verify_audit_log().await.unwrap();
    assert!(
        matches!(
            r.problems.first(),
            Some(AuditProblem::Missing { index: 6, .. })
        ),
        "{:?}",
        r.problems
    );
}

async fn audit_verify_detects_reordered_entries(s: &Store) {
    logged(s, 10).await;
    let rows = s.audit_leaves().await.unwrap();
    let (a, b) = (rows[2].event.seq, rows[7].event.seq);
    // Swap the positions of two rows, keeping each row's stored hash.
    s.execute_raw(&format!(
        "UPDATE audit_events SET leaf_index = -1 WHERE seq = {a}"
    ))
    .await
    .unwrap();
    s.execute_raw(&format!(
        "UPDATE audit_events SET leaf_index = 2 WHERE seq = {b}"
    ))
    .await
    .unwrap();
    s.execute_raw(&format!(
        "UPDATE audit_events SET leaf_index = 7 WHERE seq = {a}"
    ))
    .await
    .unwrap();
    let r = s.verify_audit_log().await.unwrap();
    assert_eq!(
        r.problems.first(),
        Some(&AuditProblem::Modified { index: 2, seq: b }),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems
            .contains(&AuditProblem::Modified { index: 7, seq: a })
    );
}

async fn audit_verify_detects_a_forged_tree_head(s: &Store) {
    logged(s, 5).await;
    append_events(s, 3).await;
    s.integrate_audit(100, T0).await.unwrap();
    s.execute_raw(&format!(
        "UPDATE tree_heads SET root_hash = '{}' WHERE tree_size = 5",
        "ab".repeat(32)
    ))
    .await
    .unwrap();
    let r = s.verify_audit_log().await.unwrap();
    assert!(
        matches!(
            r.problems.as_slice(),
            [AuditProblem::HeadMismatch { size: 5, .. }]
        ),
        "{:?}",
        r.problems
    );
    // A head claiming more entries than the log holds.
    s.execute_raw(&format!(
        "INSERT INTO tree_heads (tree_size, root_hash, created_at) VALUES (50, '{}', 0)",
        "cd".repeat(32)
    ))
    .await
    .unwrap();
    let r = s.verify_audit_log().await.unwrap();
    assert!(
        r.problems.contains(&AuditProblem::HeadBeyondLog {
            size: 50,
            log_size: 8
        }),
        "{:?}",
        r.problems
    );
}

async fn audit_verify_detects_rehashed_history(s: &Store) {
    logged(s, 6).await;
    // An insider edits an event and also rewrites its stored hash to match: the entry looks fine,
    // but the tree head recorded before no longer matches.
    let row = s.audit_leaves().await.unwrap()[1].clone();
    let mut edited = row.event.clone();
    edited.detail = serde_json::json!({"i": "edited"});
    let new_hash = hex::encode(mydata_store::event_leaf_hash(1, &edited));
    s.execute_raw(&format!("UPDATE audit_events SET detail = '{{\"i\": \"edited\"}}', leaf_hash = '{new_hash}' WHERE seq = {}", row.event.seq)).await.unwrap();
    let r = s.verify_audit_log().await.unwrap();
    assert!(
        matches!(
            r.problems.as_slice(),
            [AuditProblem::HeadMismatch { size: 6, .. }]
        ),
        "{:?}",
        r.problems
    );
}

async fn batched_append_and_integration_keep_order(s: &Store) {
    let events: Vec<NewAuditEvent> = (0..2500)
        .map(|i| NewAuditEvent {
            at: T0.plus(Duration::from_millis(i)),
            kind: "counter.scan".into(),
            subject: Some(format!("p{}", i % 7)),
            transfer_id: None,
            actor: "counter-1".into(),
            detail: serde_json::json!({"n": i}),
        })
        .collect();
    assert_eq!(s.append_audit_batch(&events).await.unwrap(), 2500);
    let head = s.integrate_audit(100_000, T0).await.unwrap().unwrap();
    assert_eq!(head.tree_size, 2500);
    let leaves = s.audit_leaves().await.unwrap();
    assert!(
        leaves.windows(2).all(|w| w[0].event.seq < w[1].event.seq),
        "leaf order follows sequence order"
    );
    assert_eq!(leaves[1234].event.detail["n"], 1234);
    let report = s.verify_audit_log().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn hash32(hex_str: &str) -> mydata_core::merkle::Hash {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

/// Appends `n` events in one batch.
async fn append_batch(s: &Store, from: i64, n: i64) {
    let events: Vec<NewAuditEvent> = (from..from + n)
        .map(|i| NewAuditEvent {
            at: T0.plus(Duration::from_millis(i as u64)),
            kind: "counter.scan".into(),
            subject: Some(format!("p{}", i % 5)),
            transfer_id: None,
            actor: "counter-1".into(),
            detail: serde_json::json!({"n": i}),
        })
        .collect();
    s.append_audit_batch(&events).await.unwrap();
}

async fn proofs_from_stored_subtrees_match_proofs_from_all_leaves(s: &Store) {
    use mydata_core::merkle;
    // Integrated in uneven rounds, so subtrees are completed across rounds.
    let mut heads = Vec::new();
    for (from, n) in [(0, 37), (37, 63), (100, 1), (101, 199), (300, 250)] {
        append_batch(s, from, n).await;
        heads.push(s.integrate_audit(100_000, T0).await.unwrap().unwrap());
    }
    let size = s.audit_tree_size().await.unwrap();
    assert_eq!(size, 550);
    let leaves: Vec<merkle::Hash> = s
        .audit_leaves()
        .await
        .unwrap()
        .iter()
        .map(|l| hash32(&l.stored_hash))
        .collect();
    for n in [1u64, 16, 17, 137, 300, 511, 512, 513, 550] {
        let l = &leaves[..n as usize];
        assert_eq!(
            s.audit_root_at(n).await.unwrap(),
            merkle::root(l),
            "root {n}"
        );
        for i in [0, n / 3, n / 2, n - 1] {
            let p = s.audit_inclusion_proof_at(i, n).await.unwrap();
            assert_eq!(p, merkle::inclusion_proof(i, l).unwrap(), "{i} in {n}");
        }
        for m in [0, 1, 15, 16, n / 2, n - 1, n]
            .into_iter()
            .filter(|&m| m <= n)
        {
            let p = s.audit_consistency_proof(m, n).await.unwrap();
            assert_eq!(p, merkle::consistency_proof(m, l).unwrap(), "{m} -> {n}");
        }
    }
    for h in &heads {
        assert_eq!(
            hex::encode(s.audit_root_at(h.tree_size).await.unwrap()),
            h.root_hash
        );
    }
    // Beyond the tree: refused, not guessed.
    assert!(matches!(
        s.audit_inclusion_proof_at(3, 551).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(s.audit_inclusion_proof_at(550, 550).await.is_err());
    assert!(s.audit_consistency_proof(10, 551).await.is_err());
    assert!(s.audit_consistency_proof(11, 10).await.is_err());
    let report = s.verify_audit_log().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

async fn proofs_survive_missing_subtree_roots(s: &Store) {
    use mydata_core::merkle;
    append_batch(s, 0, 200).await;
    s.integrate_audit(100_000, T0).await.unwrap();
    // A log integrated before subtree roots were stored: proofs fall back to the leaves.
    s.execute_raw("DELETE FROM audit_nodes").await.unwrap();
    let leaves: Vec<merkle::Hash> = s
        .audit_leaves()
        .await
        .unwrap()
        .iter()
        .map(|l| hash32(&l.stored_hash))
        .collect();
    assert_eq!(
        s.audit_inclusion_proof_at(77, 200).await.unwrap(),
        merkle::inclusion_proof(77, &leaves).unwrap()
    );
    assert_eq!(
        s.audit_consistency_proof(100, 200).await.unwrap(),
        merkle::consistency_proof(100, &leaves).unwrap()
    );
}

async fn audit_verify_names_a_tampered_subtree_root(s: &Store) {
    append_batch(s, 0, 64).await;
    s.integrate_audit(100_000, T0).await.unwrap();
    s.execute_raw(&format!(
        "UPDATE audit_nodes SET hash = '{}' WHERE level = 4 AND idx = 2",
        "ee".repeat(32)
    ))
    .await
    .unwrap();
    let r = s.verify_audit_log().await.unwrap();
    assert_eq!(
        r.problems,
        [AuditProblem::NodeMismatch {
            level: 4,
            first: 32,
            last: 47
        }]
    );
}

async fn a_proof_for_another_tree_size_does_not_verify(s: &Store) {
    use mydata_core::merkle;
    append_batch(s, 0, 40).await;
    let h40 = s.integrate_audit(100_000, T0).await.unwrap().unwrap();
    append_batch(s, 40, 25).await;
    let h65 = s.integrate_audit(100_000, T0).await.unwrap().unwrap();
    let leaf = hash32(&s.audit_leaf(9).await.unwrap().unwrap().stored_hash);
    let p40 = s.audit_inclusion_proof_at(9, 40).await.unwrap();
    merkle::verify_inclusion(&leaf, 9, 40, &p40, &hash32(&h40.root_hash)).unwrap();
    // The proof made for size 40, checked against the head of size 65 (with either size).
    assert!(merkle::verify_inclusion(&leaf, 9, 65, &p40, &hash32(&h65.root_hash)).is_err());
    assert!(merkle::verify_inclusion(&leaf, 9, 40, &p40, &hash32(&h65.root_hash)).is_err());
    let c = s.audit_consistency_proof(40, 65).await.unwrap();
    merkle::verify_consistency(40, 65, &hash32(&h40.root_hash), &hash32(&h65.root_hash), &c)
        .unwrap();
    assert!(
        merkle::verify_consistency(39, 65, &hash32(&h40.root_hash), &hash32(&h65.root_hash), &c)
            .is_err()
    );
}
fn ev(kind: &str, t: &str) -> NewAuditEvent {
    NewAuditEvent {
        at: T0,
        kind: kind.into(),
        subject: Some("subj".into()),
        transfer_id: Some(t.into()),
        actor: "system".into(),
        detail: serde_json::json!({}),
    }
}

fn settlement(status: &'static str) -> FetchSettlement {
    FetchSettlement {
        status,
        error_code: (status != fetch_status::SUCCEEDED).then(|| "bad_signature".into()),
        error_message: None,
        digest: (status == fetch_status::SUCCEEDED).then(|| "ab".repeat(32)),
        data_object: (status == fetch_status::SUCCEEDED).then(|| "fetched/f1/x".into()),
        data_key: (status == fetch_status::SUCCEEDED).then(|| "wrapped".into()),
    }
}

async fn fetching(s: &Store, id: &str) {
    s.create_transfer(&new_transfer(id, "subj"), "subj", T0)
        .await
        .unwrap();
    let jobs = [job(&format!("{id}-j"), T0)];
    s.begin_fetching(id, "sealed", &jobs, "subj", T0)
        .await
        .unwrap();
}

async fn fetch_settles_once_and_reports_when_all_are_settled(s: &Store) {
    fetching(s, "f1").await;
    let t = s.transfer("f1").await.unwrap().unwrap();
    assert_eq!(t.state, TransferState::Fetching);
    assert_eq!(
        s.transfer_secret("f1").await.unwrap().as_deref(),
        Some("sealed")
    );
    assert!(s.job("f1-j").await.unwrap().is_some());
    // Consent cannot be given twice.
    assert!(s.begin_fetching("f1", "x", &[], "subj", T0).await.is_err());

    let a = "low-income-household";
    let b = "household-register-personal";
    // A background job's one read: the transfer, its fetches, the sealed identity, no package.
    let w = s.transfer_work("f1").await.unwrap().unwrap();
    assert_eq!(
        (
            w.transfer.datasets.len(),
            w.fetch(a).map(|r| (r.status.as_str(), r.attempts)),
            w.sealed_subject.as_deref(),
            w.package.is_none()
        ),
        (2, Some(("pending", 0)), Some("sealed"), true)
    );
    let order: Vec<&str> = w.fetches.iter().map(|f| f.dataset_id.as_str()).collect();
    assert_eq!(order, [a, b]);
    assert!(w.fetch("no-such-dataset").is_none());
    assert!(s.transfer_work("no-such-transfer").await.unwrap().is_none());
    // The call is admitted and counted as the fetch's first attempt, with its event, in one step.
    let request = ev("agency.request", "f1");
    let attempt = FetchAttempt {
        transfer_id: "f1",
        dataset_id: a,
        audit: &request,
    };
    assert_eq!(
        s.admit_agency_call("moi", "f1/a", &limits(), Some(&attempt), T0)
            .await
            .unwrap(),
        Admission::Go {
            probe: false,
            clean: true,
            attempt: Some(1)
        }
    );
    s.release_agency_slot("moi", "f1/a", T0).await.unwrap();
    let later = T0.plus(Duration::from_secs(60));
    let progress = FetchProgress {
        status: fetch_status::NOT_READY,
        agency_request_id: Some("r1".into()),
        error_code: None,
        error_message: None,
        next_attempt_at: later,
    };
    assert!(
        s.record_fetch_progress("f1", a, &progress, &ev("agency.outcome", "f1"), T0)
            .await
            .unwrap()
    );
    let rec = s.fetch_record("f1", a).await.unwrap().unwrap();
    assert_eq!(
        (
            rec.status.as_str(),
            rec.attempts,
            rec.agency_request_id.as_deref()
        ),
        ("not_ready", 1, Some("r1"))
    );
    assert_eq!(rec.started_at, Some(T0));

    // The settlement frees the call's slot and marks its job done in the same step.
    assert!(matches!(
        s.admit_agency_call("moi", "f1/a", &limits(), Some(&attempt), T0)
            .await
            .unwrap(),
        Admission::Go {
            attempt: Some(2),
            ..
        }
    ));
    let (worker, lease) = ("w-fetch", Duration::from_secs(60));
    let running = s
        .claim_job("fetch", worker, lease, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.id, "f1-j");
    let package = job("f1-package", later);
    let also = SettleAlso {
        next: Some(&package),
        slot: Some(("moi", "f1/a")),
        job: Some(("f1-j", worker)),
        lease_next: Some((worker, later.plus(lease))),
    };
    assert_eq!(
        s.settle_fetch_then(
            "f1",
            a,
            &settlement(fetch_status::SUCCEEDED),
            &ev("agency.outcome", "f1"),
            &also,
            later
        )
        .await
        .unwrap(),
        SettleOutcome {
            all_settled: Some(false),
            job_done: true,
            next_leased: false
        }
    );
    assert_eq!(s.job("f1-j").await.unwrap().unwrap().state, JobState::Done);
    // With the slot freed, the agency's only slot (a limit of one) can be taken by another call.
    let one = AgencyLimits {
        concurrency: 1,
        ..limits()
    };
    assert!(matches!(
        s.admit_agency_call("moi", "other", &one, None, later)
            .await
            .unwrap(),
        Admission::Go { .. }
    ));
    s.release_agency_slot("moi", "other", later).await.unwrap();
    // With a dataset still open, the next job waits and the identity is kept.
    assert!(s.job("f1-package").await.unwrap().is_none());
    assert!(s.transfer_secret("f1").await.unwrap().is_some());
    // A second settlement (another worker) changes nothing.
    assert_eq!(
        s.settle_fetch(
            "f1",
            a,
            &settlement(fetch_status::REJECTED),
            &ev("agency.outcome", "f1"),
            later
        )
        .await
        .unwrap(),
        None
    );
    assert!(
        !s.record_fetch_progress("f1", a, &progress, &ev("agency.outcome", "f1"), T0)
            .await
            .unwrap()
    );
    // A settled fetch takes no slot and counts no attempt.
    assert_eq!(
        s.admit_agency_call("moi", "f1/a", &limits(), Some(&attempt), T0)
            .await
            .unwrap(),
        Admission::Settled
    );
    assert!(matches!(
        s.admit_agency_call("moi", "other", &one, None, later)
            .await
            .unwrap(),
        Admission::Go { .. }
    ));
    assert_eq!(
        s.settle_fetch_then(
            "f1",
            b,
            &settlement(fetch_status::REJECTED),
            &ev("agency.outcome", "f1"),
            &SettleAlso {
                next: Some(&package),
                lease_next: Some(("w-package", later.plus(lease))),
                ..SettleAlso::default()
            },
            later
        )
        .await
        .unwrap(),
        SettleOutcome {
            all_settled: Some(true),
            job_done: false,
            next_leased: true
        }
    );
    // The packaging was enqueued leased to the worker that runs it next, as a claim would have.
    let next = s.job("f1-package").await.unwrap().unwrap();
    assert_eq!(
        (next.state, next.attempts, next.lease_owner.as_deref()),
        (JobState::Running, 1, Some("w-package"))
    );
    assert!(
        s.claim_job("fetch", "w-other", lease, later)
            .await
            .unwrap()
            .is_none()
    );
    // The last settlement enqueued the packaging and forgot the identity with it.
    assert!(s.job("f1-package").await.unwrap().is_some());
    assert_eq!(s.transfer_secret("f1").await.unwrap(), None);
    assert!(
        s.settle_fetch(
            "f1",
            b,
            &settlement(fetch_status::PENDING),
            &ev("x", "f1"),
            later
        )
        .await
        .is_err()
    );

    let t = s.transfer("f1").await.unwrap().unwrap();
    let (da, db) = (&t.datasets[0], &t.datasets[1]);
    assert_eq!(
        (da.status.as_str(), da.attempts, da.settled_at),
        ("succeeded", 2, Some(later))
    );
    assert_eq!(da.digest.as_deref().map(str::len), Some(64));
    assert_eq!(
        (db.status.as_str(), db.error_code.as_deref()),
        ("rejected", Some("bad_signature"))
    );
    let kinds: Vec<String> = s
        .audit_for_transfer("f1")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "transfer.created",
            "transfer.fetching",
            "agency.request",
            "agency.outcome",
            "agency.request",
            "agency.outcome",
            "agency.outcome"
        ]
    );

    let left = s.clear_fetched_data("f1").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].object_key, "fetched/f1/x");
    assert!(
        s.fetch_records("f1")
            .await
            .unwrap()
            .iter()
            .all(|r| r.data_key.is_none() && r.data_object.is_none())
    );
    assert!(s.clear_fetched_data("f1").await.unwrap().is_empty());
}

fn limits() -> AgencyLimits {
    AgencyLimits {
        concurrency: 2,
        slot_lease: Duration::from_secs(30),
        failure_threshold: 3,
        open_for: Duration::from_secs(60),
    }
}

/// Admissions racing for one agency's slots (each on its own connection on PostgreSQL) take
/// exactly the limit: each one counts the slots the others took before it.
async fn concurrent_admissions_never_exceed_the_agency_limit(s: &Store) {
    let l = AgencyLimits {
        concurrency: 3,
        ..limits()
    };
    for round in 0..4 {
        let agency = format!("agency-{round}");
        let mut tasks = Vec::new();
        for h in 0..12 {
            let (s, agency) = (s.clone(), agency.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    match s
                        .admit_agency_call(&agency, &format!("r{round}h{h}"), &l, None, T0)
                        .await
                    {
                        Ok(a) => return a,
                        // SQLite may report a busy database under contention; asked again.
                        Err(StoreError::Database(_)) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
                panic!("no answer in 20 tries")
            }));
        }
        let mut went = 0;
        for t in tasks {
            match t.await.unwrap() {
                Admission::Go { .. } => went += 1,
                Admission::Busy => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(went, 3, "round {round}: {went} calls admitted for 3 slots");
    }
}

async fn agency_slots_limit_calls_in_flight_and_expire(s: &Store) {
    let l = limits();
    assert_eq!(
        s.admit_agency_call("moi", "a", &l, None, T0).await.unwrap(),
        Admission::Go {
            probe: false,
            clean: true,
            attempt: None
        }
    );
    assert_eq!(
        s.admit_agency_call("moi", "b", &l, None, T0).await.unwrap(),
        Admission::Go {
            probe: false,
            clean: true,
            attempt: None
        }
    );
    assert_eq!(
        s.admit_agency_call("moi", "c", &l, None, T0).await.unwrap(),
        Admission::Busy
    );
    // Another agency has its own slots; a holder asking again keeps its slot.
    assert_eq!(
        s.admit_agency_call("mof", "c", &l, None, T0).await.unwrap(),
        Admission::Go {
            probe: false,
            clean: true,
            attempt: None
        }
    );
    assert_eq!(
        s.admit_agency_call("moi", "a", &l, None, T0).await.unwrap(),
        Admission::Go {
            probe: false,
            clean: true,
            attempt: None
        }
    );
    assert_eq!(s.agency_slots_in_use("moi", T0).await.unwrap(), 2);
    s.release_agency_slot("moi", "a", T0).await.unwrap();
    assert_eq!(
        s.admit_agency_call("moi", "d", &l, None, T0).await.unwrap(),
        Admission::Go {
            probe: false,
            clean: true,
            attempt: None
        }
    );
    // A crashed holder's slot is taken back when its lease ends.
    let later = T0.plus(Duration::from_secs(31));
    assert_eq!(s.agency_slots_in_use("moi", later).await.unwrap(), 0);
    assert_eq!(
        s.admit_agency_call("moi", "e", &l, None, later)
            .await
            .unwrap(),
        Admission::Go {
            probe: false,
            clean: true,
            attempt: None
        }
    );
    // Many processes at once never exceed the limit.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.admit_agency_call("moe", &format!("h{i}"), &limits(), None, T0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut go = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), Admission::Go { .. }) {
            go += 1;
        }
    }
    assert_eq!(go, 2);
}

async fn circuit_opens_after_threshold_and_lets_one_probe_through(s: &Store) {
    let l = limits();
    s.admit_agency_call("moi", "a", &l, None, T0).await.unwrap();
    s.release_agency_slot("moi", "a", T0).await.unwrap();
    assert!(!s.record_agency_result("moi", true, &l, T0).await.unwrap());
    assert!(!s.record_agency_result("moi", true, &l, T0).await.unwrap());
    // A success in between resets the count.
    s.record_agency_result("moi", false, &l, T0).await.unwrap();
    for _ in 0..2 {
        assert!(!s.record_agency_result("moi", true, &l, T0).await.unwrap());
    }
    assert!(s.record_agency_result("moi", true, &l, T0).await.unwrap());
    let until = T0.plus(Duration::from_secs(60));
    let c = s.agency_circuit("moi").await.unwrap().unwrap();
    assert_eq!((c.consecutive_failures, c.open_until), (3, Some(until)));
    assert_eq!(
        s.admit_agency_call("moi", "b", &l, None, T0).await.unwrap(),
        Admission::Open { until }
    );
    // After the open time exactly one probe goes; the others keep waiting.
    assert_eq!(
        s.admit_agency_call("moi", "b", &l, None, until)
            .await
            .unwrap(),
        Admission::Go {
            probe: true,
            clean: false,
            attempt: None
        }
    );
    assert!(matches!(
        s.admit_agency_call("moi", "c", &l, None, until)
            .await
            .unwrap(),
        Admission::Open { .. }
    ));
    s.release_agency_slot("moi", "b", T0).await.unwrap();
    // The probe failed: open again for the full time.
    assert!(
        s.record_agency_result("moi", true, &l, until)
            .await
            .unwrap()
    );
    let again = until.plus(Duration::from_secs(60));
    assert_eq!(
        s.admit_agency_call("moi", "c", &l, None, until)
            .await
            .unwrap(),
        Admission::Open { until: again }
    );
    assert_eq!(
        s.admit_agency_call("moi", "c", &l, None, again)
            .await
            .unwrap(),
        Admission::Go {
            probe: true,
            clean: false,
            attempt: None
        }
    );
    s.record_agency_result("moi", false, &l, again)
        .await
        .unwrap();
    let c = s.agency_circuit("moi").await.unwrap().unwrap();
    assert_eq!((c.consecutive_failures, c.open_until), (0, None));
    assert_eq!(
        s.admit_agency_call("moi", "d", &l, None, again)
            .await
            .unwrap(),
        Admission::Go {
            probe: false,
            clean: true,
            attempt: None
        }
    );
}

async fn a_half_open_circuit_whose_slots_are_all_held_stays_as_it_was(s: &Store) {
    let l = AgencyLimits {
        concurrency: 1,
        slot_lease: Duration::from_secs(120),
        ..limits()
    };
    assert!(matches!(
        s.admit_agency_call("moi", "x", &l, None, T0).await.unwrap(),
        Admission::Go { .. }
    ));
    for _ in 0..3 {
        s.record_agency_result("moi", true, &l, T0).await.unwrap();
    }
    let until = T0.plus(Duration::from_secs(60));
    // The open time is over but the one slot is still held: no probe, the circuit unchanged.
    assert_eq!(
        s.admit_agency_call("moi", "p", &l, None, until)
            .await
            .unwrap(),
        Admission::Busy
    );
    let c = s.agency_circuit("moi").await.unwrap().unwrap();
    assert_eq!(c.open_until, Some(until));
    assert_eq!(s.agency_slots_in_use("moi", until).await.unwrap(), 1);
    s.release_agency_slot("moi", "x", until).await.unwrap();
    assert_eq!(
        s.admit_agency_call("moi", "p", &l, None, until)
            .await
            .unwrap(),
        Admission::Go {
            probe: true,
            clean: false,
            attempt: None
        }
    );
    assert_eq!(
        s.admit_agency_call("moi", "q", &l, None, until)
            .await
            .unwrap(),
        Admission::Open {
            until: until.plus(Duration::from_secs(120))
        }
    );
}

fn package(id: &str) -> PackageRecord {
    PackageRecord {
        transfer_id: id.into(),
        object_key: format!("packages/{id}"),
        sealed_key: Some("wrapped-key".into()),
        digest: "cd".repeat(32),
        size_bytes: 1234,
        datasets: 2,
        created_at: T0,
        expires_at: T0.plus(limits::PACKAGE_TTL),
        taken_at: None,
        deleted_at: None,
        // Bytes that are no text: the column is binary on both backends.
        body: Some((0..=255u8).rev().collect()),
    }
}

async fn package_key_is_taken_once_and_destroyed_at_expiry(s: &Store) {
    for id in ["p1", "p2"] {
        s.create_transfer(&new_transfer(id, "subj"), "subj", T0)
            .await
            .unwrap();
        assert!(
            s.insert_package(&package(id), &ev("package.created", id))
                .await
                .unwrap()
        );
        assert_eq!(s.package(id).await.unwrap().unwrap().body, package(id).body);
    }
    assert!(
        !s.insert_package(&package("p1"), &ev("package.created", "p1"))
            .await
            .unwrap()
    );
    let taken = ev("package.taken", "p1");
    let (a, b) = tokio::join!(
        s.take_package_key("p1", &taken, T0),
        s.take_package_key("p1", &taken, T0),
    );
    let keys: Vec<String> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(keys, ["wrapped-key"], "exactly one caller gets the key");
    let p = s.package("p1").await.unwrap().unwrap();
    // The inline body goes with the key.
    assert!(p.sealed_key.is_none() && p.taken_at == Some(T0) && p.body.is_none());
    assert_eq!(
        s.audit_for_transfer("p1")
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == "package.taken")
            .count(),
        1
    );

    let end = T0.plus(limits::PACKAGE_TTL);
    let before = Timestamp::from_millis(end.millis() - 1);
    assert!(s.packages_to_destroy(before, 10).await.unwrap().is_empty());
    assert_eq!(s.packages_to_destroy(end, 10).await.unwrap(), ["p2"]);
    // Past its expiry a package cannot be taken even if the sweep has not run yet.
    assert_eq!(
        s.take_package_key("p2", &ev("package.taken", "p2"), end)
            .await
            .unwrap(),
        None
    );
    let left = s
        .destroy_package_key("p2", &ev("package.deleted", "p2"), end)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left.object_key, "packages/p2");
    assert!(
        s.destroy_package_key("p2", &ev("package.deleted", "p2"), end)
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.packages_to_destroy(end, 10).await.unwrap().is_empty());
    let p2 = s.package("p2").await.unwrap().unwrap();
    assert_eq!(p2.deleted_at, Some(end));
    assert!(p2.body.is_none(), "a destroyed package keeps no body");
}

async fn a_retrieval_takes_the_key_and_closes_the_transfer_once(s: &Store) {
    let mut ready = Vec::new();
    for id in ["r1", "r2"] {
        let t = s
            .create_transfer(&new_transfer(id, "subj"), "subj", T0)
            .await
            .unwrap();
        let t = s
            .apply_transfer_event_from(&t, TransferEvent::Consent, "subj", T0)
            .await
            .unwrap();
        let t = s
            .apply_transfer_event_from(&t, TransferEvent::Settled, "system", T0)
            .await
            .unwrap();
        assert!(
            s.insert_package(&package(id), &ev("package.created", id))
                .await
                .unwrap()
        );
        ready.push(t);
    }
    s.use_jti("sp", "dpop:old", T0.plus(Duration::from_secs(60)))
        .await
        .unwrap();
    let proof = |jti| {
        Some(Jti {
            client_id: "sp",
            jti,
            keep_until: T0.plus(Duration::from_secs(60)),
        })
    };
    let taken = ev("service.retrieval", "r1");
    // The person's notice, queued with the retrieval that takes the key and never otherwise.
    let notice = |job: &str, transfer: &str| {
        vec![mydata_store::NewJob {
            id: job.into(),
            queue: "messages".into(),
            payload: serde_json::json!({ "to": "a@b.example" }),
            run_at: T0,
            max_attempts: 3,
            dedup_key: Some(format!("notice:{transfer}:service:email")),
        }]
    };
    let kinds = |id: &'static str| async move {
        s.audit_for_transfer(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect::<Vec<_>>()
    };
    let before = kinds("r1").await;

    // A replayed proof: nothing changed.
    assert_eq!(
        s.retrieve_package(
            &ready[0],
            &taken,
            proof("dpop:old"),
            StartJobs::queued(&notice("n0", "r1")),
            "service:sp",
            T0
        )
        .await
        .unwrap(),
        Retrieval::ProofReplay
    );
    assert_eq!(s.package("r1").await.unwrap().unwrap().taken_at, None);
    assert_eq!(kinds("r1").await, before);
    assert_eq!(s.job("n0").await.unwrap(), None);

    // A fresh proof: the key, the transfer released then purged (two versions, two events).
    assert_eq!(
        s.retrieve_package(
            &ready[0],
            &taken,
            proof("dpop:new"),
            StartJobs {
                jobs: &notice("n1", "r1"),
                leased: 1,
                to: Some(("w1", T0.plus(Duration::from_secs(60)))),
            },
            "service:sp",
            T0
        )
        .await
        .unwrap(),
        Retrieval::Taken {
            key: "wrapped-key".into(),
            closed: true,
            enqueued: vec!["n1".into()],
        }
    );
    let t = s.transfer("r1").await.unwrap().unwrap();
    assert_eq!(
        (t.state, t.version),
        (TransferState::Deleted, ready[0].version + 2)
    );
    let after = kinds("r1").await;
    assert_eq!(
        after[before.len()..],
        [
            "service.retrieval",
            "transfer.delivered",
            "transfer.deleted"
        ]
    );
    let r1 = s.package("r1").await.unwrap().unwrap();
    assert!(r1.sealed_key.is_none() && r1.body.is_none());
    // Leased by the same write to the caller, which runs it without a claim.
    let leased = s.job("n1").await.unwrap().unwrap();
    assert_eq!(
        (
            leased.queue.as_str(),
            leased.state,
            leased.attempts,
            leased.lease_owner.as_deref()
        ),
        ("messages", JobState::Running, 1, Some("w1"))
    );
    // Once only, with or without a proof.
    assert_eq!(
        s.retrieve_package(
            &ready[0],
            &taken,
            proof("dpop:3"),
            StartJobs::queued(&notice("n2", "r1-2")),
            "service:sp",
            T0
        )
        .await
        .unwrap(),
        Retrieval::Gone
    );
    assert_eq!(
        s.retrieve_package(
            &ready[0],
            &taken,
            None,
            StartJobs::queued(&notice("n3", "r1-3")),
            "service:sp",
            T0
        )
        .await
        .unwrap(),
        Retrieval::Gone
    );
    assert_eq!(s.job("n2").await.unwrap(), None);
    assert_eq!(s.job("n3").await.unwrap(), None);

    // A transfer changed since it was read: the key is taken, the transfer left for the caller.
    let stale = ready[1].clone();
    s.apply_transfer_event_from(&stale, TransferEvent::Release, "system", T0)
        .await
        .unwrap();
    assert_eq!(
        s.retrieve_package(
            &stale,
            &ev("service.retrieval", "r2"),
            None,
            StartJobs::queued(&[notice("n4", "r2"), notice("n5", "r1")].concat()),
            "service:sp",
            T0
        )
        .await
        .unwrap(),
        Retrieval::Taken {
            key: "wrapped-key".into(),
            closed: false,
            enqueued: vec!["n4".into()],
        }
    );
    assert_eq!(
        s.transfer("r2").await.unwrap().unwrap().state,
        TransferState::Delivered
    );
    assert_eq!(
        s.job("n4").await.unwrap().map(|j| j.state),
        Some(JobState::Queued)
    );
    assert_eq!(s.job("n5").await.unwrap(), None);
}

async fn packaging_ends_in_one_step_and_only_once(s: &Store) {
    fetching(s, "k1").await;
    for d in ["low-income-household", "household-register-personal"] {
        s.settle_fetch(
            "k1",
            d,
            &settlement(fetch_status::SUCCEEDED),
            &ev("agency.outcome", "k1"),
            T0,
        )
        .await
        .unwrap();
    }
    let read = s.transfer("k1").await.unwrap().unwrap();
    let created = ev("package.created", "k1");
    let count = |kind: &'static str| async move {
        s.audit_for_transfer("k1")
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == kind)
            .count()
    };
    // The packaging job, leased by worker w.
    let mut packaging = job("k1-pkg", T0);
    packaging.queue = "package".into();
    s.enqueue_job(&packaging, T0).await.unwrap();
    let lease = Duration::from_secs(30);
    let claimed = s
        .claim_job("package", "w", lease, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, "k1-pkg");
    let state = |id: &'static str| async move { s.job(id).await.unwrap().unwrap().state };
    // Read before a change: the package is stored and the data forgotten, the transfer and the
    // job left for the caller.
    let mut stale = read.clone();
    stale.version -= 1;
    let done = s
        .finish_packaging(
            &stale,
            Some((&package("k1"), &created)),
            Some(("k1-pkg", "w")),
            T0,
        )
        .await
        .unwrap();
    assert!(!done.moved && !done.job_done);
    assert_eq!(state("k1-pkg").await, JobState::Running);
    let left = done.leftovers;
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|l| l.transfer_id == "k1"));
    assert_eq!(
        s.transfer("k1").await.unwrap().unwrap().state,
        TransferState::Fetching
    );
    assert!(s.package("k1").await.unwrap().is_some());
    let work = s.transfer_work("k1").await.unwrap().unwrap();
    assert_eq!(work.package, s.package("k1").await.unwrap());
    assert!(work.package.is_some() && work.sealed_subject.is_none());
    // The end of packaging stored the inline body, and the transfer's work read carries it.
    assert_eq!(work.package.unwrap().body, package("k1").body);
    assert_eq!(s.transfer_secret("k1").await.unwrap(), None);
    assert!(
        s.fetch_records("k1")
            .await
            .unwrap()
            .iter()
            .all(|r| r.data_key.is_none() && r.data_object.is_none())
    );
    // The run again from a fresh read: ready, with one package and one event of each, and the
    // job done with it.
    let done = s
        .finish_packaging(
            &read,
            Some((&package("k1"), &created)),
            Some(("k1-pkg", "w")),
            T0,
        )
        .await
        .unwrap();
    assert!(done.moved && done.leftovers.is_empty() && done.job_done);
    assert_eq!(state("k1-pkg").await, JobState::Done);
    let t = s.transfer("k1").await.unwrap().unwrap();
    assert_eq!(
        (t.state, t.version),
        (TransferState::Ready, read.version + 1)
    );
    assert_eq!(count("package.created").await, 1);
    assert_eq!(count("transfer.ready").await, 1);
    // A transfer that is not fetching cannot be settled again.
    assert!(s.finish_packaging(&t, None, None, T0).await.is_err());
}

async fn the_last_fetch_settles_and_packages_in_one_step_or_not_at_all(s: &Store) {
    let (a, b) = ("low-income-household", "household-register-personal");
    fetching(s, "g1").await;
    let (worker, lease) = ("w", Duration::from_secs(60));
    let running = s
        .claim_job("fetch", worker, lease, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.id, "g1-j");
    let also = SettleAlso {
        slot: Some(("moi", "g1/b")),
        job: Some(("g1-j", worker)),
        ..SettleAlso::default()
    };
    let slot = |holder: &'static str| async move {
        s.admit_agency_call("moi", holder, &limits(), None, T0)
            .await
            .unwrap()
    };
    assert!(matches!(slot("g1/b").await, Admission::Go { .. }));
    let digest = "ef".repeat(32);
    let mut pkg = package("g1");
    pkg.sealed_key = Some("this-run's-key".into());
    let created = ev("package.created", "g1");
    let outcome = ev("agency.outcome", "g1");
    let kinds = || async move {
        s.audit_for_transfer("g1")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect::<Vec<_>>()
    };
    let events = kinds().await;
    let direct = |read: mydata_store::Transfer| {
        let (pkg, created, outcome, digest) = (&pkg, &created, &outcome, &digest);
        async move {
            s.settle_and_package(&read, b, digest, outcome, (pkg, created), &also, T0)
                .await
                .unwrap()
        }
    };
    // Another dataset still open: nothing but the slot changes.
    let read = s.transfer("g1").await.unwrap().unwrap();
    let done = direct(read.clone()).await;
    assert!(!done.moved && !done.job_done && done.leftovers.is_empty());
    assert_eq!(
        s.fetch_record("g1", b).await.unwrap().unwrap().status,
        "pending"
    );
    assert!(s.package("g1").await.unwrap().is_none());
    assert_eq!(kinds().await, events);
    assert_eq!(
        s.job("g1-j").await.unwrap().unwrap().state,
        JobState::Running
    );
    assert_eq!(s.agency_slots_in_use("moi", T0).await.unwrap(), 0);
    // The other dataset settles the usual way, its data stored apart.
    s.settle_fetch("g1", a, &settlement(fetch_status::SUCCEEDED), &outcome, T0)
        .await
        .unwrap();
    let events = kinds().await;
    // Read before a change (the transfer moved on meanwhile): nothing.
    let mut stale = s.transfer("g1").await.unwrap().unwrap();
    stale.version -= 1;
    assert!(!direct(stale).await.moved);
    assert_eq!(
        s.fetch_record("g1", b).await.unwrap().unwrap().status,
        "pending"
    );
    assert!(s.package("g1").await.unwrap().is_none());
    assert_eq!(kinds().await, events);
    assert_eq!(
        s.transfer_secret("g1").await.unwrap().as_deref(),
        Some("sealed")
    );
    // From a fresh read: settled without stored data, packaged, ready, the other dataset's data
    // forgotten (its blob returned to delete), the identity deleted, the job done, in that order.
    assert!(matches!(slot("g1/b").await, Admission::Go { .. }));
    let read = s.transfer("g1").await.unwrap().unwrap();
    let done = direct(read.clone()).await;
    assert!(done.moved && done.job_done);
    assert_eq!(
        done.leftovers
            .iter()
            .map(|l| l.object_key.as_str())
            .collect::<Vec<_>>(),
        ["fetched/f1/x"]
    );
    let t = s.transfer("g1").await.unwrap().unwrap();
    let d = t.datasets.iter().find(|d| d.dataset_id == b).unwrap();
    assert_eq!(
        (d.status.as_str(), d.digest.as_deref()),
        ("succeeded", Some(digest.as_str()))
    );
    assert!(
        s.fetch_records("g1")
            .await
            .unwrap()
            .iter()
            .all(|r| r.data_object.is_none() && r.data_key.is_none())
    );
    assert_eq!(
        (t.state, t.version),
        (TransferState::Ready, read.version + 1)
    );
    assert_eq!(s.package("g1").await.unwrap(), Some(pkg.clone()));
    assert_eq!(s.transfer_secret("g1").await.unwrap(), None);
    assert_eq!(s.job("g1-j").await.unwrap().unwrap().state, JobState::Done);
    assert_eq!(s.agency_slots_in_use("moi", T0).await.unwrap(), 0);
    let after = kinds().await;
    assert_eq!(
        after[events.len()..],
        ["agency.outcome", "package.created", "transfer.ready"]
    );
    // Only once: a second run changes nothing.
    let again = direct(read).await;
    assert!(!again.moved && !again.job_done && again.leftovers.is_empty());
    assert_eq!(kinds().await, after);
}

async fn a_start_leases_its_first_jobs_to_the_starter_until_the_lease_runs_out(s: &Store) {
    let lease = Duration::from_secs(30);
    let until = T0.plus(lease);
    // A transfer started with its first job leased to `worker`.
    let start = |id: &'static str, jobs: Vec<NewJob>, worker: &'static str| async move {
        let start = StartJobs {
            jobs: &jobs,
            leased: 1,
            to: Some((worker, until)),
        };
        s.start_transfer(&new_transfer(id, "subj"), "sealed", start, None, "subj", T0)
            .await
            .unwrap();
    };
    start("t", vec![job("mine", T0), job("queued", T0)], "starter").await;
    let mine = s.job("mine").await.unwrap().unwrap();
    assert_eq!(
        (
            mine.state,
            mine.attempts,
            mine.lease_owner.as_deref(),
            mine.lease_until
        ),
        (JobState::Running, 1, Some("starter"), Some(until))
    );
    // The job not leased is due to any worker; the leased one to none while its lease lasts.
    let other = s.claim_job("fetch", "w", lease, T0).await.unwrap().unwrap();
    assert_eq!(other.id, "queued");
    assert!(
        s.claim_job("fetch", "w", lease, T0)
            .await
            .unwrap()
            .is_none()
    );
    // The starter finishes it as a claimer would.
    let (done, _) = s
        .complete_and_claim("mine", "fetch", "starter", lease, T0)
        .await
        .unwrap();
    assert!(done);
    assert_eq!(s.job("mine").await.unwrap().unwrap().state, JobState::Done);

    // A starter that dies: its job is taken over once the lease runs out, as its second attempt.
    start("t2", vec![job("orphan", T0)], "gone").await;
    assert!(
        s.claim_job("fetch", "w", lease, T0)
            .await
            .unwrap()
            .is_none()
    );
    let later = until.plus(Duration::from_millis(1));
    let taken = s
        .claim_job("fetch", "w", lease, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((taken.id.as_str(), taken.attempts), ("orphan", 2));
}

async fn a_started_transfer_is_what_creation_then_consent_make(s: &Store) {
    // The long way round, for comparison.
    fetching(s, "two-steps").await;
    let jobs = [job("one-j", T0)];
    let (started, answered) = s
        .start_transfer(
            &new_transfer("one", "subj"),
            "sealed",
            StartJobs::queued(&jobs),
            None,
            "subj",
            T0,
        )
        .await
        .unwrap();
    assert!(!answered, "no request to answer");
    let (one, two) = (
        s.transfer("one").await.unwrap().unwrap(),
        s.transfer("two-steps").await.unwrap().unwrap(),
    );
    assert_eq!(started, one, "the returned transfer is the stored one");
    assert_eq!(
        (one.state, one.version, one.datasets.len()),
        (two.state, two.version, two.datasets.len())
    );
    assert_eq!(one.state, TransferState::Fetching);
    let kinds = |id: &'static str| async move {
        s.audit_for_transfer(id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.detail))
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds("one").await, kinds("two-steps").await);
    assert_eq!(
        s.transfer_secret("one").await.unwrap().as_deref(),
        Some("sealed")
    );
    assert_eq!(
        s.job("one-j").await.unwrap().unwrap().state,
        JobState::Queued
    );
    // The same transfer again: refused, nothing added.
    assert!(
        s.start_transfer(
            &new_transfer("one", "subj"),
            "other",
            StartJobs::queued(&[job("one-k", T0)]),
            None,
            "subj",
            T0
        )
        .await
        .is_err()
    );
    assert!(s.job("one-k").await.unwrap().is_none());
    assert_eq!(kinds("one").await.len(), 2);
    assert_eq!(
        s.transfer_secret("one").await.unwrap().as_deref(),
        Some("sealed")
    );
}

async fn secrets_are_purged_once_fetching_ends(s: &Store) {
    fetching(s, "s1").await;
    fetching(s, "s2").await;
    assert_eq!(s.purge_transfer_secrets().await.unwrap(), 0);
    for d in ["low-income-household", "household-register-personal"] {
        s.settle_fetch(
            "s1",
            d,
            &settlement(fetch_status::REJECTED),
            &ev("agency.outcome", "s1"),
            T0,
        )
        .await
        .unwrap();
    }
    s.apply_transfer_event("s2", TransferEvent::Expire, "system", T0)
        .await
        .unwrap();
    assert_eq!(s.purge_transfer_secrets().await.unwrap(), 2);
    assert_eq!(s.transfer_secret("s1").await.unwrap(), None);
    assert_eq!(s.transfer_secret("s2").await.unwrap(), None);
}

/// Appends `n` events one millisecond apart from `start`, then integrates them.
async fn timed_events(s: &Store, start: Timestamp, n: u64) {
    let events: Vec<NewAuditEvent> = (0..n)
        .map(|i| NewAuditEvent {
            at: start.plus(Duration::from_millis(i)),
            kind: "identity.verified".into(),
            subject: Some("subj-old".into()),
            transfer_id: None,
            actor: "subj-old".into(),
            detail: serde_json::json!({"method": "moica_cert"}),
        })
        .collect();
    s.append_audit_batch(&events).await.unwrap();
    s.integrate_audit(100_000, start).await.unwrap();
}

async fn pruning_removes_old_details_but_the_log_still_verifies_and_proves(s: &Store) {
    use mydata_core::merkle;
    timed_events(s, T0, 40).await;
    let late = T0.plus(Duration::from_secs(3600));
    timed_events(s, late, 10).await;
    let before_roots = s.audit_root_at(50).await.unwrap();
    // Cut-off in the middle of the first batch; at most 25 per call.
    let cutoff = T0.plus(Duration::from_millis(30));
    let now = late.plus(Duration::from_secs(1));
    assert_eq!(s.prune_audit_events(cutoff, 25, now).await.unwrap(), 25);
    assert_eq!(s.prune_audit_events(cutoff, 25, now).await.unwrap(), 5);
    assert_eq!(s.prune_audit_events(cutoff, 25, now).await.unwrap(), 0);
    assert_eq!(s.audit_pruned_below().await.unwrap(), 30);
    let leaves = s.audit_leaves().await.unwrap();
    assert!(leaves[..30].iter().all(|l| l.pruned_at == Some(now)
        && l.event.subject.is_none()
        && l.event.transfer_id.is_none()
        && l.event.detail.is_null()));
    assert!(
        leaves[30..]
            .iter()
            .all(|l| l.pruned_at.is_none() && l.event.subject.is_some())
    );
    // The person's usage records no longer show the pruned events.
    assert_eq!(s.audit_for_subject("subj-old").await.unwrap().len(), 20);
    let r = s.verify_audit_log().await.unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.entries, r.pruned), (50, 30));
    // Proofs over pruned and kept entries still verify against the same root.
    assert_eq!(s.audit_root_at(50).await.unwrap(), before_roots);
    for i in [3u64, 29, 30, 49] {
        let leaf: merkle::Hash = hex::decode(&leaves[i as usize].stored_hash)
            .unwrap()
            .try_into()
            .unwrap();
        let p = s.audit_inclusion_proof_at(i, 50).await.unwrap();
        merkle::verify_inclusion(&leaf, i, 50, &p, &before_roots).unwrap();
    }
}

async fn audit_verify_catches_tampering_hidden_as_pruning(s: &Store) {
    timed_events(s, T0, 20).await;
    s.prune_audit_events(T0.plus(Duration::from_millis(10)), 100, T0)
        .await
        .unwrap();
    // A pruned entry whose stored hash is changed: the recorded head no longer matches.
    let victim = s.audit_leaf(4).await.unwrap().unwrap().event.seq;
    s.execute_raw(&format!(
        "UPDATE audit_events SET leaf_hash = '{}' WHERE seq = {victim}",
        "12".repeat(32)
    ))
    .await
    .unwrap();
    // Its stored subtree root and the recorded head no longer match: both named.
    let r = s.verify_audit_log().await.unwrap();
    assert!(
        matches!(
            r.problems.as_slice(),
            [
                AuditProblem::NodeMismatch {
                    level: 4,
                    first: 0,
                    last: 15
                },
                AuditProblem::HeadMismatch { size: 20, .. }
            ]
        ),
        "{:?}",
        r.problems
    );
    // A recent entry wiped and marked pruned to hide what it said.
    let recent = s.audit_leaf(15).await.unwrap().unwrap().event.seq;
    s.execute_raw(&format!(
        "UPDATE audit_events SET subject = NULL, transfer_id = NULL, actor = '', detail = 'null', pruned_at = 1 WHERE seq = {recent}"
    ))
    .await
    .unwrap();
    // An old pruned entry given details back (they cannot be checked).
    let old = s.audit_leaf(2).await.unwrap().unwrap().event.seq;
    s.execute_raw(&format!(
        "UPDATE audit_events SET actor = 'someone' WHERE seq = {old}"
    ))
    .await
    .unwrap();
    let r = s.verify_audit_log().await.unwrap();
    assert!(
        r.problems.contains(&AuditProblem::PrunedEarly {
            index: 15,
            seq: recent
        }),
        "{:?}",
        r.problems
    );
    assert!(
        r.problems
            .contains(&AuditProblem::Modified { index: 2, seq: old }),
        "{:?}",
        r.problems
    );
}

async fn retention_deletes_old_receipts_transfers_and_finished_jobs(s: &Store) {
    let later = T0.plus(Duration::from_secs(10));
    for (id, at) in [("old-done", T0), ("old-open", T0), ("new-done", later)] {
        s.create_transfer(&new_transfer(id, "subj"), "subj", at)
            .await
            .unwrap();
    }
    for id in ["old-done", "new-done"] {
        s.apply_transfer_event(id, TransferEvent::Refuse, "subj", later)
            .await
            .unwrap();
    }
    assert_eq!(s.delete_transfers_before(later, 100).await.unwrap(), 1);
    assert!(s.transfer("old-done").await.unwrap().is_none());
    // A transfer that may still hold data is never deleted by age alone.
    assert!(s.transfer("old-open").await.unwrap().is_some());
    assert!(s.transfer("new-done").await.unwrap().is_some());

    for (id, finish) in [("j-old", true), ("j-open", false)] {
        s.enqueue_job(&job(id, T0), T0).await.unwrap();
        if finish {
            let j = s
                .claim_job("fetch", "w", Duration::from_secs(60), T0)
                .await
                .unwrap()
                .unwrap();
            s.complete_job(&j.id, "w", T0).await.unwrap();
        }
    }
    assert_eq!(s.delete_finished_jobs_before(later, 100).await.unwrap(), 1);
    assert!(s.job("j-old").await.unwrap().is_none());
    assert!(s.job("j-open").await.unwrap().is_some());

    let r = mydata_store::NewReceipt {
        id: "r1".into(),
        transfer_id: "old-open".into(),
        kind: "consent".into(),
        package_digest: String::new(),
        jws: "x.y.z".into(),
        created_at: T0,
    };
    s.store_receipt(&r, &receipt_event("old-open"))
        .await
        .unwrap();
    assert_eq!(s.delete_receipts_before(T0, 100).await.unwrap(), 0);
    assert_eq!(s.delete_receipts_before(later, 100).await.unwrap(), 1);
    assert!(
        s.receipts_for_transfer("old-open")
            .await
            .unwrap()
            .is_empty()
    );
}

fn receipt_event(transfer: &str) -> NewAuditEvent {
    NewAuditEvent {
        at: T0,
        kind: "receipt.consent".into(),
        subject: Some("subj".into()),
        transfer_id: Some(transfer.into()),
        actor: "platform".into(),
        detail: serde_json::json!({"receipt_sha256": "00"}),
    }
}

async fn receipts_are_stored_once_with_their_event(s: &Store) {
    let mut r = mydata_store::NewReceipt {
        id: "r1".into(),
        transfer_id: "t1".into(),
        kind: "consent".into(),
        package_digest: String::new(),
        jws: "a.b.c".into(),
        created_at: T0,
    };
    let first = s.store_receipt(&r, &receipt_event("t1")).await.unwrap();
    assert_eq!(
        s.audit_event(first.seq).await.unwrap().unwrap().kind,
        "receipt.consent"
    );
    // The same receipt again (a racing request): the first stands and no second event is logged.
    r.id = "r2".into();
    r.jws = "d.e.f".into();
    let again = s.store_receipt(&r, &receipt_event("t1")).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(s.audit_for_transfer("t1").await.unwrap().len(), 1);
    // With a package digest it is another receipt.
    r.package_digest = "ab".repeat(32);
    let with_digest = s.store_receipt(&r, &receipt_event("t1")).await.unwrap();
    assert_eq!(with_digest.id, "r2");
    assert_eq!(s.receipts_for_transfer("t1").await.unwrap().len(), 2);
}

async fn transfer_records_by_agency_and_service_page_through_a_time_range(s: &Store) {
    use mydata_store::{RecordParty, TransferRecord};
    let mk = |id: &str, recipient: Option<&str>, datasets: &[&str]| NewTransfer {
        id: id.into(),
        kind: if recipient.is_some() {
            TransferKind::Online
        } else {
            TransferKind::SelfDownload
        },
        subject: format!("subj-{id}"),
        recipient: recipient.map(str::to_owned),
        purpose: "p".into(),
        datasets: datasets.iter().map(|d| d.to_string()).collect(),
    };
    let at = |m: u64| T0.plus(Duration::from_secs(60 * m));
    for (i, (recipient, datasets)) in [
        (Some("svc-a"), vec!["ds-1", "ds-2"]),
        (None, vec!["ds-1"]),
        (Some("svc-b"), vec!["ds-3", "ds-1"]),
        (Some("svc-a"), vec!["ds-3"]),
        (Some("svc-a"), vec!["ds-1", "ds-3"]),
    ]
    .into_iter()
    .enumerate()
    {
        s.create_transfer(
            &mk(&format!("t{i}"), recipient, &datasets),
            "x",
            at(i as u64),
        )
        .await
        .unwrap();
    }
    let agency = RecordParty::Agency {
        datasets: vec!["ds-1".into(), "ds-2".into()],
    };
    // Page by two through everything: no row twice, none missed, in time order.
    let mut all: Vec<TransferRecord> = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let (page, next) = s
            .transfer_records(&agency, at(0), at(100), cursor.as_ref(), 2)
            .await
            .unwrap();
        all.extend(page);
        cursor = next;
        if cursor.is_none() {
            break;
        }
    }
    let got: Vec<(String, String)> = all
        .iter()
        .map(|r| (r.transfer_id.clone(), r.dataset_id.clone()))
        .collect();
    let want: Vec<(String, String)> = [
        ("t0", "ds-1"),
        ("t0", "ds-2"),
        ("t1", "ds-1"),
        ("t2", "ds-1"),
        ("t4", "ds-1"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
    // Time range: [from, to).
    let (page, next) = s
        .transfer_records(&agency, at(1), at(4), None, 100)
        .await
        .unwrap();
    assert_eq!(
        page.iter()
            .map(|r| r.transfer_id.as_str())
            .collect::<Vec<_>>(),
        ["t1", "t2"]
    );
    assert!(next.is_none());
    // A service sees every dataset of the transfers it received, and only those.
    let (page, _) = s
        .transfer_records(
            &RecordParty::Recipient("svc-a".into()),
            at(0),
            at(100),
            None,
            100,
        )
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = page
        .iter()
        .map(|r| (r.transfer_id.as_str(), r.dataset_id.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("t0", "ds-1"),
            ("t0", "ds-2"),
            ("t3", "ds-3"),
            ("t4", "ds-1"),
            ("t4", "ds-3")
        ]
    );
    assert_eq!(page[0].state, "created");
    assert_eq!(page[0].kind, "online");
    let (none, _) = s
        .transfer_records(
            &RecordParty::Agency { datasets: vec![] },
            at(0),
            at(100),
            None,
            100,
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn a_printed_package_record_shows_neither_its_key_nor_its_body() {
    let shown = format!("{:?}", package("d1"));
    assert!(!shown.contains("wrapped-key"), "{shown}");
    assert!(shown.contains("body: Some(256)"), "{shown}");
    assert!(shown.contains("packages/d1"), "{shown}");
}

async fn a_key_check_keeps_the_first_value(s: &Store) {
    assert_eq!(s.key_check("pseudonym_key", "aa", T0).await.unwrap(), "aa");
    // Another process with the same key, then one with another: the first value stands.
    assert_eq!(s.key_check("pseudonym_key", "aa", T0).await.unwrap(), "aa");
    assert_eq!(s.key_check("pseudonym_key", "bb", T0).await.unwrap(), "aa");
    assert_eq!(
        s.key_check("identity_hash_key", "cc", T0).await.unwrap(),
        "cc"
    );
    // Replaced on purpose, only from the value recorded, and only that key's.
    assert!(
        !s.replace_key_check("pseudonym_key", "bb", "dd")
            .await
            .unwrap()
    );
    assert!(
        s.replace_key_check("pseudonym_key", "aa", "dd")
            .await
            .unwrap()
    );
    assert!(
        !s.replace_key_check("pseudonym_key", "aa", "ee")
            .await
            .unwrap()
    );
    assert_eq!(s.key_check("pseudonym_key", "aa", T0).await.unwrap(), "dd");
    assert_eq!(
        s.key_check("identity_hash_key", "zz", T0).await.unwrap(),
        "cc"
    );
    assert_eq!(
        s.recorded_key_checks().await.unwrap(),
        [
            ("identity_hash_key".to_owned(), "cc".to_owned()),
            ("pseudonym_key".to_owned(), "dd".to_owned())
        ]
    );
}
