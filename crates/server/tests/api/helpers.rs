//! Boots a server for one test and offers typed helpers.

use mydata_core::{ManualClock, Timestamp};
use mydata_server::{Server, Settings};
use mydata_store::testing::{TestDatabase, fresh_postgres, fresh_sqlite};
use std::sync::Arc;
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub base: String,
    pub clock: ManualClock,
    pub state: mydata_server::state::AppState,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    /// Keys and objects of this server only (tests run at once must not share a data dir).
    _data_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Boots a server whose settings `tweak` may change.
    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_full(backend, tweak, Vec::new()).await
    }

    /// Boots a server with changed settings and extra job handlers.
    pub async fn spawn_full(
        backend: Backend,
        tweak: impl FnOnce(&mut Settings),
        handlers: Vec<Arc<dyn mydata_server::background::JobHandler>>,
    ) -> Self {
        let clock = ManualClock::new(Timestamp::from_millis(1_790_000_000_000));
        Self::spawn_clocked(backend, tweak, handlers, clock).await
    }

    /// Boots a server on a given clock (shared, say, with a simulated agency).
    pub async fn spawn_clocked(
        backend: Backend,
        tweak: impl FnOnce(&mut Settings),
        handlers: Vec<Arc<dyn mydata_server::background::JobHandler>>,
        clock: ManualClock,
    ) -> Self {
        let db = match backend {
            Backend::Sqlite => fresh_sqlite().await.unwrap(),
            Backend::Postgres => fresh_postgres().await.unwrap(),
        };
        let data_dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data_dir.path().to_path_buf(),
            ..Default::default()
        };
        settings.database.url = db.url.clone();
        // Tests move the ManualClock in big steps while jobs run; a lease that ran out only by
        // such a step would have another worker redo the job (a late duplicate fetch leaves a
        // blob behind for a moment). Taking over a dead worker's job is tested in the store suite.
        settings.jobs.lease_secs = 30 * 86_400;
        // The agencies of tests are simulated: test-environment services are served.
        settings.oauth.serve_test_services = true;
        tweak(&mut settings);
        let tls = settings.tls.is_some();
        let mut server = Server::bind(settings, Arc::new(clock.clone()))
            .await
            .unwrap();
        for h in handlers {
            server.add_job_handler(h);
        }
        let state = server.state().clone();
        let base = server.base_url().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = rx.await;
        }));
        let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if tls {
            builder = builder.danger_accept_invalid_certs(true);
        }
        Self {
            base,
            clock,
            state,
            client: builder.build().unwrap(),
            db,
            _data_dir: data_dir,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.get(path).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Asks the server to stop and waits until it has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.unwrap(),
            None => Ok(()),
        }
    }
}

/// Polls `check` every 10 ms until it is true, for at most 20 seconds (the suite runs many servers
/// at once on two cores, so background ticks can be late).
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, std::time::Duration::from_secs(20), check).await
}

/// [`eventually`] with another bound, for waits that do much work (a whole catalogue fetched).
pub async fn eventually_within<F, Fut>(what: &str, bound: std::time::Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let rounds = bound.as_millis() / 10;
    for _ in 0..rounds {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Checks a problem+json response and returns its body.
pub async fn assert_problem(res: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status, "status");
    let ct = res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["type"], format!("urn:mydata:problem:{code}"));
    assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(body["detail"].as_str().is_some_and(|t| !t.is_empty()));
    body
}

/// The start tag of the element with `id` in `html`.
pub fn tag_of<'a>(html: &'a str, id: &str) -> &'a str {
    let marker = format!(" id=\"{id}\"");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no element {id} in {html}"));
    let start = html[..at].rfind('<').unwrap();
    let end = at + html[at..].find('>').unwrap();
    &html[start..=end]
}

/// Asserts that the input `id` is marked refused and described by the form's error paragraph.
pub fn assert_refused_input(html: &str, id: &str) {
    let tag = tag_of(html, id);
    assert!(tag.contains("aria-invalid=\"true\""), "{tag}");
    let described = tag
        .split("aria-describedby=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no aria-describedby in {tag}"));
    assert!(described.split(' ').any(|i| i == "form-error"), "{tag}");
    assert!(html.contains("id=\"form-error\""), "{html}");
}
