//! Orphaned blobs (a crash between writing a blob and recording its key) are swept by a durable
//! job: unreferenced ones after a short grace period, referenced ones when their transfer's 8
//! hours are over. Local object store, injected clock (blob times are set as the object store
//! would record them: on its own clock, which need not be the platform's).

use crate::fetch::{DataApp, instant, person};
use crate::helpers::{Backend, eventually};
use mydata_core::transfer::TransferState;
use mydata_core::{Clock, IdentityMethod, Timestamp};
use mydata_server::orphans::{ORPHAN_GRACE, schedule_object_sweep, sweep_orphaned_blobs};
use mydata_server::packages::package_object;
use std::time::{Duration, UNIX_EPOCH};

/// Sets the stored time of a blob of the local object store (its file's modification time).
fn set_written(app: &DataApp, key: &str, at: Timestamp) {
    let path = app.dir.path().join("objects").join(key);
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    let ms = u64::try_from(at.millis()).unwrap();
    file.set_modified(UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap();
}

async fn exists(app: &DataApp, key: &str) -> bool {
    app.state.data().blobs.get(key).await.is_ok()
}

#[tokio::test]
async fn unreferenced_blobs_go_after_the_grace_referenced_ones_with_their_transfer() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // The schedulers run once at start only; this test enqueues the sweeps it wants.
        // Packages in the object store, as large ones are.
        let app = DataApp::spawn(backend, 1.0, |s| {
            s.jobs.sweep_interval_secs = 3600;
            s.storage.inline_max_bytes = 0;
        })
        .await;
        let sim = app.agencies.sim.clone();
        let ds = instant(&sim);
        let id = app
            .fetch(&person(&sim), IdentityMethod::MoicaCert, &[&ds.id])
            .await;
        app.until_state(&id, TransferState::Ready).await;
        let live = app.store().package(&id).await.unwrap().unwrap().object_key;
        let blobs = &app.state.data().blobs;
        // What a crash leaves: a package blob whose record was never written, and a fetched
        // dataset blob of a real transfer that its record does not name.
        let crashed = package_object("00000000-0000-4000-8000-000000000000");
        let ghost = mydata_server::agencies::fetched_object(&id, &ds.id);
        // The same, as fetched datasets were stored before (a directory per transfer).
        let old_ghost = format!("fetched/{id}/{}", ds.id);
        let stray = "packages/not/a-platform-key".to_owned();
        for key in [&crashed, &ghost, &old_ghost, &stray] {
            blobs.put(key, vec![7; 64]).await.unwrap();
        }
        let written = app.clock.now();
        for key in [&live, &crashed, &ghost, &old_ghost, &stray] {
            set_written(&app, key, written);
        }
        // The object store's clock behind the platform's by 9 hours: by its time the live package
        // is older than 8 hours, yet its transfer is within them, and the package stays.
        set_written(
            &app,
            &live,
            Timestamp::from_millis(written.millis() - 9 * 3600 * 1000),
        );

        // Within the grace period a writer may still be about to record its key: all stay.
        app.clock.advance(ORPHAN_GRACE - Duration::from_secs(1));
        let r = sweep_orphaned_blobs(&app.state).await.unwrap();
        assert_eq!(
            (r.examined, r.deleted_unreferenced, r.deleted_expired),
            (5, 0, 0)
        );
        for key in [&live, &crashed, &ghost, &old_ghost, &stray] {
            assert!(exists(&app, key).await, "{key} deleted too early");
        }

        // After it, what no record references goes; the package its record holds stays.
        app.clock.advance(Duration::from_secs(1));
        let r = sweep_orphaned_blobs(&app.state).await.unwrap();
        assert_eq!(
            (r.examined, r.deleted_unreferenced, r.deleted_expired),
            (5, 4, 0)
        );
        assert!(exists(&app, &live).await);
        for key in [&crashed, &ghost, &old_ghost, &stray] {
            assert!(!exists(&app, key).await, "{key} left behind");
        }
        let pkg = app.store().package(&id).await.unwrap().unwrap();
        assert!(pkg.sealed_key.is_some());

        // 8 hours on, the job from the queue deletes the package its expired transfer still
        // references (the expiry purge has not run here), and leaves a fresh orphan to its grace
        // period.
        app.clock.advance(Duration::from_secs(8 * 3600));
        let fresh = "packages/11111111-1111-4111-8111-111111111111".to_owned();
        blobs.put(&fresh, vec![7; 64]).await.unwrap();
        set_written(&app, &fresh, app.clock.now());
        assert!(schedule_object_sweep(&app.state).await.unwrap());
        // Once per period, whoever enqueues it first.
        assert!(!schedule_object_sweep(&app.state).await.unwrap());
        eventually("the sweep job deleted the 8-hour-old package", || async {
            !exists(&app, &live).await
        })
        .await;
        assert!(exists(&app, &fresh).await);
        let listed = blobs.list("packages").await.unwrap();
        assert_eq!(listed, vec![fresh.clone()]);
        // A blob that is already gone counts as deleted: a second sweep is harmless.
        let r = sweep_orphaned_blobs(&app.state).await.unwrap();
        assert_eq!(
            (r.examined, r.deleted_unreferenced, r.deleted_expired),
            (1, 0, 0)
        );
    }
}

/// A write cut short by a crash leaves its staging file (`<key>#<digits>`), which the object
/// store's listings skip: the sweep deletes those past the grace period, and leaves a fresh one
/// (a write in progress) to its own.
#[tokio::test]
async fn staging_files_left_by_a_crash_go_after_the_grace() {
    let app = DataApp::spawn(Backend::Sqlite, 1.0, |s| {
        s.jobs.sweep_interval_secs = 3600;
    })
    .await;
    let objects = app.dir.path().join("objects");
    let now = app.clock.now();
    let grace = i64::try_from(ORPHAN_GRACE.as_millis()).unwrap();
    let old = Timestamp::from_millis(now.millis() - grace - 1000);
    let stale = [
        "packages/22222222-2222-4222-8222-222222222222.0a1b#12345",
        "fetched/22222222-2222-4222-8222-222222222222.household#987654321",
        "fetched/22222222-2222-4222-8222-222222222222/household#42",
    ];
    let fresh = "packages/33333333-3333-4333-8333-333333333333.0a1b#777";
    for key in stale.iter().chain([&fresh]) {
        let path = objects.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, [7u8; 64]).unwrap();
        set_written(&app, key, if *key == fresh { now } else { old });
    }
    // Unseen by the listings.
    assert!(
        app.state
            .data()
            .blobs
            .list("packages")
            .await
            .unwrap()
            .is_empty()
    );
    let r = sweep_orphaned_blobs(&app.state).await.unwrap();
    assert_eq!(r.deleted_staging, 3, "{r:?}");
    for key in stale {
        assert!(!objects.join(key).exists(), "{key} left behind");
    }
    assert!(
        objects.join(fresh).exists(),
        "a write in progress is left alone"
    );
    // Past its grace, the fresh one goes too.
    app.clock.advance(ORPHAN_GRACE);
    let r = sweep_orphaned_blobs(&app.state).await.unwrap();
    assert_eq!(r.deleted_staging, 1, "{r:?}");
    assert!(!objects.join(fresh).exists());
}
