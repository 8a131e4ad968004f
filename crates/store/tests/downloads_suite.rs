//! Self-download form tokens on both databases: one claim wins, the rest find its transfer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mydata_core::Timestamp;
use mydata_store::{DownloadClaim, Store};
use std::time::Duration;

const T0: Timestamp = Timestamp::from_millis(1_790_000_000_000);

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

on_both_backends!(a_token_is_claimed_once_and_remembers_its_transfer);

async fn a_token_is_claimed_once_and_remembers_its_transfer(store: &Store) {
    let claim = store
        .claim_download_request("h1", "p-a", "terms-1", T0)
        .await
        .unwrap();
    assert_eq!(claim, DownloadClaim::New);
    // A second submit while the first is still starting: in flight, no transfer yet.
    let again = store
        .claim_download_request("h1", "p-a", "terms-1", T0)
        .await
        .unwrap();
    assert_eq!(
        again,
        DownloadClaim::Existing {
            subject: "p-a".into(),
            transfer_id: None
        }
    );
    store.attach_download_transfer("h1", "t-1").await.unwrap();
    let third = store
        .claim_download_request("h1", "p-b", "terms-1", T0)
        .await
        .unwrap();
    assert_eq!(
        third,
        DownloadClaim::Existing {
            subject: "p-a".into(),
            transfer_id: Some("t-1".into())
        }
    );
    assert_eq!(
        store
            .download_terms_version("t-1")
            .await
            .unwrap()
            .as_deref(),
        Some("terms-1")
    );
    // A released claim (the start failed) can be sent again; an attached one is never released.
    store
        .claim_download_request("h2", "p-a", "terms-1", T0)
        .await
        .unwrap();
    store.release_download_request("h2").await.unwrap();
    store.release_download_request("h1").await.unwrap();
    assert_eq!(
        store
            .claim_download_request("h2", "p-a", "terms-1", T0)
            .await
            .unwrap(),
        DownloadClaim::New
    );
    assert!(matches!(
        store
            .claim_download_request("h1", "p-a", "terms-1", T0)
            .await
            .unwrap(),
        DownloadClaim::Existing {
            transfer_id: Some(_),
            ..
        }
    ));
    // Pruning forgets old tokens only.
    store
        .claim_download_request("h3", "p-a", "terms-1", T0.plus(Duration::from_secs(7200)))
        .await
        .unwrap();
    assert_eq!(
        store
            .prune_download_requests(T0.plus(Duration::from_secs(3600)))
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.download_terms_version("t-1").await.unwrap(), None);
}
