//! Subject pseudonyms have their own long-lived key (`keys.pseudonym_key`): a restart with the same
//! key files names everyone the same, and the data key can be replaced without renaming anyone.

use super::*;

#[tokio::test]
async fn pseudonyms_survive_restarts_and_a_new_data_key_but_follow_the_pseudonym_key() {
    let dir = tempfile::tempdir().unwrap();
    let pseudonym_key = dir.path().join("keys/pseudonym.key");
    let data_key = dir.path().join("keys/data.key");
    let id = SubjectId::Person(IdNumber::parse("A123456789").unwrap());
    let boot = |pk: std::path::PathBuf| {
        let data_key = data_key.clone();
        async move {
            TestApp::spawn_with(Backend::Sqlite, move |s| {
                s.keys.pseudonym_key = pk.display().to_string();
                s.keys.data_key = data_key.display().to_string();
            })
            .await
        }
    };
    let app = boot(pseudonym_key.clone()).await;
    let first = mydata_server::identity::subject_pseudonym(&app.state, &id);
    assert_eq!(first.len(), 64);
    assert!(!first.contains("123456789"));
    app.stop().await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pseudonym_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the pseudonym key is private");
    }

    // Same files: same pseudonym.
    let app = boot(pseudonym_key.clone()).await;
    assert_eq!(
        mydata_server::identity::subject_pseudonym(&app.state, &id),
        first
    );
    app.stop().await.unwrap();

    // The data key lost and replaced: a new data key, the same pseudonym.
    let old_data_key = std::fs::read_to_string(&data_key).unwrap();
    std::fs::remove_file(&data_key).unwrap();
    let app = boot(pseudonym_key.clone()).await;
    assert_ne!(std::fs::read_to_string(&data_key).unwrap(), old_data_key);
    assert_eq!(
        mydata_server::identity::subject_pseudonym(&app.state, &id),
        first
    );
    app.stop().await.unwrap();

    // Another pseudonym key names the same person differently.
    let app = boot(dir.path().join("keys/other-pseudonym.key")).await;
    assert_ne!(
        mydata_server::identity::subject_pseudonym(&app.state, &id),
        first
    );
    app.stop().await.unwrap();
}
