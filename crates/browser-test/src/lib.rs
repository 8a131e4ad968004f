//! Test support for real-browser tests: launches headless Chromium and drives it over the DevTools
//! protocol with a small, readable API.
//!
//! ```no_run
//! # async fn t() -> Result<(), mydata_browser_test::BrowserError> {
//! use mydata_browser_test::{Browser, Key, Viewport};
//! let browser = Browser::shared()?; // one Chromium per test binary
//! let ctx = browser.new_context("home_page").await?; // isolated cookies and storage
//! let page = ctx.new_page(Viewport::MOBILE).await?;
//! page.goto("http://127.0.0.1:8080/").await?;
//! page.press(Key::Tab).await?;
//! page.screenshot("home").await?; // target/screenshots/home_page/home-375x812.png
//! page.assert_accessible("home").await?; // axe-core: no serious or critical violation
//! # Ok(()) }
//! ```
//!
//! Chromium comes from `MYDATA_CHROMIUM` or `/usr/bin/chromium`; axe-core from `MYDATA_AXE_JS` or
//! `tools/browser/node_modules/axe-core/axe.min.js` (`npm ci --prefix tools/browser`, as `.ci/run`
//! does). When either is missing the test fails and says how to install it: a browser test that
//! silently skips proves nothing.
//!
//! Chromium runs under a tiny `sh` wrapper that holds a pipe from the test process: when the test
//! process exits (however it exits) the pipe closes and the wrapper stops Chromium and removes its
//! temporary profile, so no browser outlives the test binary.

mod axe;
mod cdp;
mod page;

pub use axe::{AxeReport, AxeViolation};
pub use page::{Authenticator, Key, Page};

use cdp::Connection;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Longest wait for Chromium to open its DevTools port (a cold start on a loaded CI machine).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong while driving the browser. Messages say what to do where there is something to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrowserError {
    #[error(
        "Chromium not found at {0}: install it (`apt-get install chromium`, as .ci/run does) or set MYDATA_CHROMIUM to its path"
    )]
    ChromiumMissing(String),
    #[error("Chromium did not start: {0}")]
    Launch(String),
    #[error("DevTools command {method} failed: {message}")]
    Protocol { method: String, message: String },
    #[error("the connection to Chromium closed")]
    Disconnected,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("script failed: {0}")]
    Script(String),
    #[error("no element matches {0}")]
    NotFound(String),
    #[error("navigation to {url} failed: {reason}")]
    Navigation { url: String, reason: String },
    #[error("{0}")]
    Io(String),
    #[error(
        "axe-core not found at {0}: run `npm ci --prefix tools/browser` (as .ci/run does) or set MYDATA_AXE_JS"
    )]
    AxeMissing(String),
    #[error("accessibility check failed:\n{0}")]
    Accessibility(String),
    #[error("{0}")]
    Assertion(String),
}

/// A browser window size in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
}

impl Viewport {
    /// A current phone (iPhone X/11 Pro/12 mini class).
    pub const MOBILE: Viewport = Viewport {
        width: 375,
        height: 812,
    };
    /// The narrowest phone the pages must work on without horizontal scrolling.
    pub const NARROW: Viewport = Viewport {
        width: 360,
        height: 740,
    };
    /// A laptop screen.
    pub const DESKTOP: Viewport = Viewport {
        width: 1280,
        height: 800,
    };

    /// Phones get mobile emulation (the viewport meta tag applies, touch-sized layout).
    pub fn is_mobile(self) -> bool {
        self.width < 768
    }

    /// `375x812`, as used in screenshot file names.
    pub fn label(self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

/// A running Chromium. Cheap to clone; contexts and pages opened from it are independent.
#[derive(Debug, Clone)]
pub struct Browser {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    version: String,
    _process: ProcessGuard,
}

/// Holds the wrapper's stdin; dropping it closes the pipe, which stops Chromium.
#[derive(Debug)]
struct ProcessGuard {
    _child: Mutex<Child>,
    _stdin: Option<ChildStdin>,
}

/// Stops Chromium and removes its profile once its stdin pipe closes (see the crate docs).
const WRAPPER: &str = r#"dir="$1"; shift
"$@" &
pid=$!
read -r _ || true
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$dir""#;

impl Browser {
    /// The Chromium shared by all tests of this test binary, launched on first use.
    ///
    /// Its connection runs on a dedicated thread, so it outlives the runtime of the test that
    /// happened to launch it. Each test should take its own [`Browser::new_context`].
    pub fn shared() -> Result<Browser, BrowserError> {
        static SHARED: OnceLock<Result<Browser, BrowserError>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                let spawned = std::thread::Builder::new()
                    .name("chromium-devtools".into())
                    .spawn(move || {
                        let rt = match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => {
                                let _ = tx.send(Err(BrowserError::Launch(e.to_string())));
                                return;
                            }
                        };
                        rt.block_on(async move {
                            let _ = tx.send(Browser::launch().await);
                            // Keep the connection's tasks alive for the rest of the process.
                            std::future::pending::<()>().await;
                        });
                    });
                if let Err(e) = spawned {
                    return Err(BrowserError::Launch(e.to_string()));
                }
                rx.recv()
                    .unwrap_or_else(|_| Err(BrowserError::Launch("launcher thread died".into())))
            })
            .clone()
    }

    /// Launches a fresh Chromium whose connection runs on the current tokio runtime.
    pub async fn launch() -> Result<Browser, BrowserError> {
        let chromium = std::env::var_os("MYDATA_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        Self::launch_at(&chromium).await
    }

    /// Launches the Chromium executable at `chromium`.
    pub async fn launch_at(chromium: &Path) -> Result<Browser, BrowserError> {
        if !chromium.is_file() {
            return Err(BrowserError::ChromiumMissing(
                chromium.display().to_string(),
            ));
        }
        let root = tempfile::Builder::new()
            .prefix("mydata-chromium-")
            .tempdir()
            .map_err(|e| BrowserError::Io(format!("cannot create a temporary folder: {e}")))?
            .keep();
        let profile = root.join("profile");
        let log_path = root.join("chromium.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| BrowserError::Io(format!("cannot create {}: {e}", log_path.display())))?;

        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(&root)
            .arg(chromium)
            .args(chromium_args(&profile))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd
            .spawn()
            .map_err(|e| BrowserError::Launch(format!("cannot run sh: {e}")))?;
        let stdin = child.stdin.take();
        let guard = ProcessGuard {
            _child: Mutex::new(child),
            _stdin: stdin,
        };

        let ws_url = wait_for_devtools(&profile, &log_path, &guard).await?;
        let conn = Connection::connect(&ws_url).await?;
        let version = conn
            .call(None, "Browser.getVersion", json!({}))
            .await?
            .get("product")
            .and_then(Value::as_str)
            .unwrap_or("Chromium")
            .to_owned();
        Ok(Browser {
            inner: Arc::new(Inner {
                conn,
                version,
                _process: guard,
            }),
        })
    }

    /// The browser's product string, e.g. `HeadlessChrome/148.0.7778.167`.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// A new browser context (like a fresh incognito profile: its own cookies and storage) for the
    /// test named `test`; screenshots of its pages go to `target/screenshots/<test>/`.
    pub async fn new_context(&self, test: &str) -> Result<Context, BrowserError> {
        let id = self
            .call(None, "Target.createBrowserContext", json!({}))
            .await?
            .get("browserContextId")
            .and_then(Value::as_str)
            .ok_or_else(|| BrowserError::Script("no browserContextId".into()))?
            .to_owned();
        Ok(Context {
            browser: self.clone(),
            id,
            test: sanitize(test),
        })
    }

    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, BrowserError> {
        self.inner.conn.call(session, method, params).await
    }
}

/// The command line: headless, isolated profile, nothing that phones home, loopback only.
fn chromium_args(profile: &Path) -> Vec<String> {
    let mut args = vec![
        "--headless".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--no-default-browser-check".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-extensions".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--mute-audio".to_owned(),
        "--password-store=basic".to_owned(),
        // Every name resolves to nothing except the loopback names the tests use.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1".to_owned(),
        "--remote-debugging-address=127.0.0.1".to_owned(),
        "--remote-debugging-port=0".to_owned(),
        format!("--user-data-dir={}", profile.display()),
        "about:blank".to_owned(),
    ];
    if running_as_root() {
        // Chromium's sandbox refuses to run as root (CI containers); tests load only our own pages.
        args.insert(0, "--no-sandbox".to_owned());
    }
    args
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Waits until Chromium writes `DevToolsActivePort` into its profile and returns the endpoint.
async fn wait_for_devtools(
    profile: &Path,
    log: &Path,
    guard: &ProcessGuard,
) -> Result<String, BrowserError> {
    let file = profile.join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + LAUNCH_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next())
                && port.parse::<u16>().is_ok()
            {
                return Ok(format!("ws://127.0.0.1:{port}{path}"));
            }
        }
        let exited = guard
            ._child
            .lock()
            .map(|mut c| matches!(c.try_wait(), Ok(Some(_))))
            .unwrap_or(false);
        if exited || tokio::time::Instant::now() > deadline {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(BrowserError::Launch(format!(
                "{} (last lines of its log:\n{})",
                if exited {
                    "it exited"
                } else {
                    "no DevTools port after 30 s"
                },
                tail.join("\n")
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A browser context: its own cookies, storage and cache. Closed when dropped.
#[derive(Debug)]
pub struct Context {
    browser: Browser,
    id: String,
    test: String,
}

impl Context {
    /// Opens a new tab in this context with the given window size.
    pub async fn new_page(&self, viewport: Viewport) -> Result<Page, BrowserError> {
        let target = self
            .browser
            .call(
                None,
                "Target.createTarget",
                json!({ "url": "about:blank", "browserContextId": self.id }),
            )
            .await?
            .get("targetId")
            .and_then(Value::as_str)
            .ok_or_else(|| BrowserError::Script("no targetId".into()))?
            .to_owned();
        let session = self
            .browser
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await?
            .get("sessionId")
            .and_then(Value::as_str)
            .ok_or_else(|| BrowserError::Script("no sessionId".into()))?
            .to_owned();
        Page::open(
            self.browser.clone(),
            target,
            session,
            self.test.clone(),
            viewport,
        )
        .await
    }

    /// The folder this context's screenshots and accessibility reports go to.
    pub fn artifacts_dir(&self) -> PathBuf {
        artifacts_root().join(&self.test)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        self.browser.inner.conn.send_and_forget(
            None,
            "Target.disposeBrowserContext",
            json!({ "browserContextId": self.id }),
        );
    }
}

/// Letters, digits, `-` and `_` only, so a test name is a safe folder name.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "test".to_owned() } else { s }
}

/// `MYDATA_SCREENSHOTS`, else `<target dir>/screenshots` of the running test binary
/// (`target/debug/deps/<binary>` → `target/screenshots`).
pub fn artifacts_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MYDATA_SCREENSHOTS") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("screenshots")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_become_safe_folder_names() {
        assert_eq!(sanitize("home_page"), "home_page");
        assert_eq!(sanitize("../x y"), "___x_y");
        assert_eq!(sanitize(""), "test");
    }

    #[test]
    fn viewports_are_labelled_and_classified() {
        assert_eq!(Viewport::MOBILE.label(), "375x812");
        assert!(Viewport::MOBILE.is_mobile());
        assert!(!Viewport::DESKTOP.is_mobile());
    }

    #[test]
    fn chromium_is_confined_to_loopback_and_a_private_profile() {
        let args = chromium_args(Path::new("/tmp/p"));
        assert!(args.contains(&"--user-data-dir=/tmp/p".to_owned()));
        assert!(args.contains(&"--remote-debugging-address=127.0.0.1".to_owned()));
        assert!(
            args.iter()
                .any(|a| a.starts_with("--host-resolver-rules=MAP * ~NOTFOUND"))
        );
        assert!(args.contains(&"--headless".to_owned()));
    }
}
