//! Every event kind of a person's journey reaches the audit log, with a pseudonymous subject and
//! no personal data: failed sign-ins and the lockout, sign-in, consent, the agencies' requests and
//! answers, the package stored, saved and deleted, the notice sent, a refused access.

use crate::helpers::{Backend, eventually_within};
use crate::world::{CONTACT_EMAIL, FlowWorld, Person};
use mydata_core::transfer::TransferState;
use mydata_store::{AuditEvent, Store};
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(60);

/// Every event of the log (bounded scan).
pub async fn all_events(store: &Store) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let after = out.last().map_or(0, |e: &AuditEvent| e.seq);
        let page = store.audit_events_after(after, 1000).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
    panic!("the log has more than 100,000 events");
}

/// No event names a person: subjects are keyed pseudonyms (64 hex digits), and no field holds an
/// ID number, name, card number, household number or contact address of `people`.
pub fn assert_no_personal_data(events: &[AuditEvent], people: &[Person]) {
    for e in events {
        if let Some(s) = &e.subject {
            assert!(
                s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
                "subject of {} is not a pseudonym: {s}",
                e.kind
            );
        }
        let text = format!(
            "{} {} {}",
            e.actor,
            e.subject.as_deref().unwrap_or(""),
            e.detail
        );
        assert!(!text.contains(CONTACT_EMAIL), "{}: {text}", e.kind);
        for p in people {
            for secret in [&p.id, &p.name, &p.nhi_card, &p.household] {
                assert!(
                    !text.contains(secret.as_str()),
                    "{} names a person: {text}",
                    e.kind
                );
            }
        }
    }
}

#[tokio::test]
async fn each_event_kind_is_logged_with_a_pseudonym_and_no_personal_data() {
    let mut w = FlowWorld::spawn(Backend::Sqlite, 1.0).await;
    let (p, q) = (w.people[0].clone(), w.people[1].clone());

    // Five wrong sign-ins on q's account: each fails, the fifth locks it.
    let wrong = Person {
        household: "A0000000".into(),
        ..q.clone()
    };
    for i in 0..5 {
        let r = w
            .browser(&format!("10.9.0.{i}"))
            .dual_id(&wrong, "/records")
            .await;
        assert_eq!(r.status(), if i < 4 { 401 } else { 429 }, "attempt {i}");
    }

    // p signs in, consents to a self-download, saves the package and has it deleted.
    let b = w.signed_in(&p, "10.1.0.1").await;
    let sim = w.agencies().sim.clone();
    let d = crate::fetch::dataset_where(&sim, |d| d.ready_minutes == 0);
    let (csrf, token) = crate::selfdl::consent_form(&b, &[d.id.as_str()]).await;
    let r = crate::selfdl::submit(&b, &csrf, &token, &[d.id.as_str()]).await;
    assert_eq!(r.status(), 303);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let id = loc.strip_prefix("/download/t/").unwrap().to_owned();
    eventually_within("the package", BOUND, || async {
        w.app.clock.advance(Duration::from_secs(30));
        w.app.transfer(&id).await.state == TransferState::Ready
    })
    .await;
    w.next_mail(BOUND).await;
    assert_eq!(
        b.get(&format!("/download/t/{id}/package")).await.status(),
        200
    );
    let page = b
        .get(&format!("/download/t/{id}"))
        .await
        .text()
        .await
        .unwrap();
    let del = crate::world::csrf_in(&page);
    let r = b
        .post(&format!("/download/t/{id}/delete"), &[("csrf", &del)])
        .await;
    assert_eq!(r.status(), 303);

    // q's session (signed in after the lockout ended) tries p's receipt: refused and logged.
    w.app.clock.advance(Duration::from_secs(16 * 60));
    let other = w.signed_in(&q, "10.2.0.1").await;
    let r = other
        .get(&format!("/api/v1/transfers/{id}/receipts/consent"))
        .await;
    assert_eq!(r.status(), 404);

    // The notice is logged once delivered (the worker appends it after the mail went out).
    let store = w.app.store().clone();
    eventually_within("notice.sent", BOUND, || async {
        all_events(&store)
            .await
            .iter()
            .any(|e| e.kind == "notice.sent")
    })
    .await;

    let events = all_events(&store).await;
    let kinds: std::collections::BTreeSet<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "identity.failed",
        "identity.lockout",
        "identity.verified",
        "download.terms_agreed",
        "transfer.created",
        "transfer.fetching",
        "agency.request",
        "agency.outcome",
        "package.created",
        "transfer.ready",
        "notice.sent",
        "download.package_saved",
        "package.deleted",
        "transfer.deleted",
        "access.refused",
    ] {
        assert!(kinds.contains(k), "{k} missing in {kinds:?}");
    }
    // The person's own events carry their pseudonym.
    let v = mydata_server::identity::subject_pseudonym(&w.app.state, &p.subject());
    for k in [
        "identity.verified",
        "transfer.fetching",
        "notice.sent",
        "package.deleted",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e.kind == k && e.subject.as_deref() == Some(v.as_str())),
            "{k} without p's pseudonym"
        );
    }
    assert_no_personal_data(&events, &w.people);
}
