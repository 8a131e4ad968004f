//! Counter verification state on both databases: offices, counters, clerks and sessions, serials
//! (one current per transfer), single-use passwords, per-counter lockout and its expiry, grants.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::transfer::TransferKind;
use mydata_core::{Timestamp, counter, limits};
use mydata_store::{
    ClerkRow, ClerkSessionRow, CounterRow, CounterTransferRow, GrantRow, NewTransfer, OfficeRow,
    PasswordRow, SerialRow, Store,
};
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
    offices_counters_and_clerks_round_trip,
    clerk_sessions_and_totp_steps_are_single_use,
    a_new_serial_replaces_the_current_one,
    a_password_and_its_serial_are_used_once_and_grant_access,
    expired_or_cancelled_passwords_cannot_complete,
    five_failures_lock_one_counter_for_fifteen_minutes,
    transfers_end_their_counter_rows,
);

async fn office(store: &Store) -> OfficeRow {
    let o = OfficeRow {
        id: "hl-main".into(),
        agency: "hualien-county".into(),
        name_zh: "花蓮縣政府社會處".into(),
        name_en: "Hualien County Social Affairs".into(),
        services: r#"["hualien-disability-parking"]"#.into(),
        created_at: T0.millis(),
    };
    store.put_office(&o).await.unwrap();
    for c in ["c1", "c2"] {
        store
            .put_counter(&CounterRow {
                id: c.into(),
                office_id: o.id.clone(),
                name: format!("Counter {c}"),
                created_at: T0.millis(),
            })
            .await
            .unwrap();
    }
    o
}

fn clerk(id: &str, username: &str) -> ClerkRow {
    ClerkRow {
        id: id.into(),
        office_id: "hl-main".into(),
        username: username.into(),
        display_name: "Clerk".into(),
        role: "clerk".into(),
        password_hash: "$argon2id$stub".into(),
        totp_sealed: "sealed".into(),
        subject: None,
        totp_last_step: 0,
        created_at: T0.millis(),
        disabled_at: None,
    }
}

async fn transfer(store: &Store, id: &str) {
    store
        .create_transfer(
            &NewTransfer {
                id: id.into(),
                kind: TransferKind::Counter,
                subject: "p-1".into(),
                recipient: Some("hl-main".into()),
                purpose: "hualien-disability-parking".into(),
                datasets: vec!["household-register-personal".into()],
            },
            "p-1",
            T0,
        )
        .await
        .unwrap();
    store
        .put_counter_transfer(&CounterTransferRow {
            transfer_id: id.into(),
            service_id: "hualien-disability-parking".into(),
            office_id: "hl-main".into(),
            created_at: T0.millis(),
        })
        .await
        .unwrap();
}

fn serial(hash: &str, transfer: &str, at: Timestamp) -> SerialRow {
    SerialRow {
        serial_hash: hash.into(),
        transfer_id: transfer.into(),
        serial_sealed: format!("sealed-{hash}"),
        issued_at: at.millis(),
        expires_at: counter::serial_expires_at(at).millis(),
        replaced_at: None,
        used_at: None,
    }
}

fn password(id: &str, transfer: &str, serial_hash: &str, at: Timestamp) -> PasswordRow {
    PasswordRow {
        id: id.into(),
        transfer_id: transfer.into(),
        serial_hash: serial_hash.into(),
        counter_id: "c1".into(),
        clerk_id: "k1".into(),
        password_hash: format!("pw-{id}"),
        attempts: 0,
        created_at: at.millis(),
        expires_at: counter::password_expires_at(at).millis(),
        used_at: None,
        cancelled_at: None,
    }
}

fn grant(transfer: &str, session: &str, at: Timestamp) -> GrantRow {
    GrantRow {
        transfer_id: transfer.into(),
        session_hash: session.into(),
        clerk_id: "k1".into(),
        counter_id: "c1".into(),
        granted_at: at.millis(),
        expires_at: at.plus(30 * MIN).millis(),
    }
}

async fn offices_counters_and_clerks_round_trip(store: &Store) {
    let o = office(store).await;
    assert_eq!(store.office("hl-main").await.unwrap(), Some(o.clone()));
    assert_eq!(o.service_ids(), vec!["hualien-disability-parking"]);
    assert_eq!(
        store
            .offices_for_service("hualien-disability-parking")
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .offices_for_service("chiayi-emergency-relief")
            .await
            .unwrap()
            .is_empty()
    );
    let cs = store.counters_of_office("hl-main").await.unwrap();
    assert_eq!(
        cs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["c1", "c2"]
    );
    // A counter of an office that does not exist is refused by the database.
    assert!(
        store
            .put_counter(&CounterRow {
                id: "x".into(),
                office_id: "nowhere".into(),
                name: "x".into(),
                created_at: T0.millis()
            })
            .await
            .is_err()
    );
    assert!(store.put_clerk(&clerk("k1", "wang")).await.unwrap());
    // Usernames are unique.
    assert!(!store.put_clerk(&clerk("k2", "wang")).await.unwrap());
    assert_eq!(
        store.clerk_by_username("wang").await.unwrap().unwrap().id,
        "k1"
    );
    assert!(store.clerk("k2").await.unwrap().is_none());
    // A person is at most one clerk.
    let mut k3 = clerk("k3", "chen");
    k3.subject = Some("p-9".into());
    assert!(store.put_clerk(&k3).await.unwrap());
    let mut k4 = clerk("k4", "wu");
    k4.subject = Some("p-9".into());
    assert!(!store.put_clerk(&k4).await.unwrap());
    assert_eq!(
        store.clerk_by_subject("p-9").await.unwrap().unwrap().id,
        "k3"
    );
    assert!(store.clerk_by_subject("p-0").await.unwrap().is_none());
}

async fn clerk_sessions_and_totp_steps_are_single_use(store: &Store) {
    office(store).await;
    store.put_clerk(&clerk("k1", "wang")).await.unwrap();
    assert!(store.accept_totp_step("k1", 100).await.unwrap());
    assert!(!store.accept_totp_step("k1", 100).await.unwrap());
    assert!(!store.accept_totp_step("k1", 99).await.unwrap());
    assert!(store.accept_totp_step("k1", 101).await.unwrap());
    let s = ClerkSessionRow {
        id_hash: "s1".into(),
        clerk_id: "k1".into(),
        counter_id: None,
        csrf_token: "t".into(),
        created_at: T0.millis(),
        last_seen_at: T0.millis(),
        expires_at: T0.plus(60 * MIN).millis(),
    };
    store.put_clerk_session(&s).await.unwrap();
    store.set_clerk_counter("s1", "c1").await.unwrap();
    assert_eq!(
        store
            .clerk_session("s1")
            .await
            .unwrap()
            .unwrap()
            .counter_id
            .as_deref(),
        Some("c1")
    );
    assert_eq!(
        store.sweep_clerk_sessions(T0.plus(59 * MIN)).await.unwrap(),
        0
    );
    assert_eq!(
        store.sweep_clerk_sessions(T0.plus(60 * MIN)).await.unwrap(),
        1
    );
    assert!(store.clerk_session("s1").await.unwrap().is_none());
}

async fn a_new_serial_replaces_the_current_one(store: &Store) {
    office(store).await;
    transfer(store, "t1").await;
    assert!(store.current_serial("t1").await.unwrap().is_none());
    store
        .issue_serial(&serial("h1", "t1", T0), T0)
        .await
        .unwrap();
    assert_eq!(
        store
            .current_serial("t1")
            .await
            .unwrap()
            .unwrap()
            .serial_hash,
        "h1"
    );
    let later = T0.plus(limits::BARCODE_TTL);
    store
        .issue_serial(&serial("h2", "t1", later), later)
        .await
        .unwrap();
    assert_eq!(
        store
            .current_serial("t1")
            .await
            .unwrap()
            .unwrap()
            .serial_hash,
        "h2"
    );
    let old = store.serial_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(old.replaced_at, Some(later.millis()));
    assert!(store.serial_by_hash("nope").await.unwrap().is_none());
}

async fn a_password_and_its_serial_are_used_once_and_grant_access(store: &Store) {
    office(store).await;
    transfer(store, "t1").await;
    store
        .issue_serial(&serial("h1", "t1", T0), T0)
        .await
        .unwrap();
    store
        .put_counter_password(&password("p1", "t1", "h1", T0), T0)
        .await
        .unwrap();
    store.count_counter_password_attempt("p1").await.unwrap();
    assert_eq!(
        store
            .counter_password("p1")
            .await
            .unwrap()
            .unwrap()
            .attempts,
        1
    );
    let at = T0.plus(MIN);
    assert!(store.counter_grant("t1", "s1", at).await.unwrap().is_none());
    assert!(
        store
            .complete_counter_verification("p1", &grant("t1", "s1", at), at)
            .await
            .unwrap()
    );
    // Used once: a second completion (a replay) fails and grants nothing more.
    assert!(
        !store
            .complete_counter_verification("p1", &grant("t1", "s2", at), at)
            .await
            .unwrap()
    );
    assert!(store.counter_grant("t1", "s2", at).await.unwrap().is_none());
    assert!(store.counter_grant("t1", "s1", at).await.unwrap().is_some());
    assert_eq!(
        store.serial_by_hash("h1").await.unwrap().unwrap().used_at,
        Some(at.millis())
    );
    // The grant ends.
    assert!(
        store
            .counter_grant("t1", "s1", at.plus(30 * MIN))
            .await
            .unwrap()
            .is_none()
    );
}

async fn expired_or_cancelled_passwords_cannot_complete(store: &Store) {
    office(store).await;
    transfer(store, "t1").await;
    store
        .issue_serial(&serial("h1", "t1", T0), T0)
        .await
        .unwrap();
    store
        .put_counter_password(&password("p1", "t1", "h1", T0), T0)
        .await
        .unwrap();
    let late = T0.plus(limits::COUNTER_PASSWORD_TTL);
    assert!(
        !store
            .complete_counter_verification("p1", &grant("t1", "s1", late), late)
            .await
            .unwrap()
    );
    // A newer scan cancels the older password.
    let t2 = T0.plus(MIN);
    store
        .put_counter_password(&password("p2", "t1", "h1", t2), t2)
        .await
        .unwrap();
    assert!(
        store
            .counter_password("p1")
            .await
            .unwrap()
            .unwrap()
            .cancelled_at
            .is_some()
    );
    assert!(
        store
            .complete_counter_verification("p2", &grant("t1", "s1", t2), t2)
            .await
            .unwrap()
    );
    assert!(
        store
            .serial_by_hash("h1")
            .await
            .unwrap()
            .unwrap()
            .used_at
            .is_some()
    );
}

async fn five_failures_lock_one_counter_for_fifteen_minutes(store: &Store) {
    office(store).await;
    let mut now = T0;
    for i in 1..=4 {
        let o = store.record_counter_failure("c1", now).await.unwrap();
        assert_eq!(o.recent, i);
        assert_eq!(o.locked_until, None);
        now = now.plus(3 * MIN);
    }
    assert_eq!(store.counter_recent_failures("c1", now).await.unwrap(), 4);
    // Another counter of the same office is not affected.
    assert_eq!(store.counter_recent_failures("c2", now).await.unwrap(), 0);
    let o = store.record_counter_failure("c1", now).await.unwrap();
    assert_eq!(o.locked_until, Some(now.plus(limits::LOCKOUT_DURATION)));
    assert_eq!(
        store.counter_locked_until("c1", now).await.unwrap(),
        Some(now.plus(limits::LOCKOUT_DURATION))
    );
    assert_eq!(store.counter_locked_until("c2", now).await.unwrap(), None);
    let end = now.plus(limits::LOCKOUT_DURATION);
    assert!(
        store
            .counter_locked_until("c1", Timestamp::from_millis(end.millis() - 1))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.counter_locked_until("c1", end).await.unwrap(), None);
    // Counting starts again after the lockout.
    assert_eq!(store.counter_recent_failures("c1", end).await.unwrap(), 0);
    // The sweep forgets ended lockouts and old failures, never a running lockout.
    store.record_counter_failure("c1", end).await.unwrap();
    store
        .sweep_clerk_sessions(end.plus(limits::LOCKOUT_WINDOW))
        .await
        .unwrap();
    assert_eq!(
        store
            .counter_recent_failures("c1", end.plus(limits::LOCKOUT_WINDOW))
            .await
            .unwrap(),
        0
    );
    // Failures spread over more than 15 minutes never lock.
    let mut t = end;
    for _ in 0..10 {
        let o = store.record_counter_failure("c2", t).await.unwrap();
        assert_eq!(o.locked_until, None);
        t = t.plus(4 * MIN);
    }
}

async fn transfers_end_their_counter_rows(store: &Store) {
    office(store).await;
    transfer(store, "t1").await;
    store
        .issue_serial(&serial("h1", "t1", T0), T0)
        .await
        .unwrap();
    assert_eq!(
        store
            .counter_transfer("t1")
            .await
            .unwrap()
            .unwrap()
            .office_id,
        "hl-main"
    );
    assert!(store.counter_transfer("t2").await.unwrap().is_none());
}
