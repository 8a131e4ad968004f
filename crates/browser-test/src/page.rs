//! One browser tab: navigation, real mouse and keyboard input, bounded waits, screenshots,
//! accessibility checks and the virtual WebAuthn authenticator.

use crate::{Browser, BrowserError, Viewport, artifacts_root};
use base64::Engine as _;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// Default bound of every wait: long enough for a loaded two-core CI machine, short enough that a
/// broken page fails the test quickly.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// Full-page screenshots stop at this height (CSS px), so a long list stays a reviewable image.
const MAX_SHOT_HEIGHT: f64 = 4000.0;

/// A key on the keyboard, as a keyboard-only user presses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Tab,
    ShiftTab,
    Enter,
    Space,
    Escape,
    Backspace,
    ArrowUp,
    ArrowDown,
    ArrowLeft,
    ArrowRight,
}

impl Key {
    /// (key, code, Windows virtual key code, text typed, modifiers)
    fn spec(self) -> (&'static str, &'static str, u32, Option<&'static str>, u32) {
        match self {
            Key::Tab => ("Tab", "Tab", 9, None, 0),
            Key::ShiftTab => ("Tab", "Tab", 9, None, 8),
            Key::Enter => ("Enter", "Enter", 13, Some("\r"), 0),
            Key::Space => (" ", "Space", 32, Some(" "), 0),
            Key::Escape => ("Escape", "Escape", 27, None, 0),
            Key::Backspace => ("Backspace", "Backspace", 8, None, 0),
            Key::ArrowUp => ("ArrowUp", "ArrowUp", 38, None, 0),
            Key::ArrowDown => ("ArrowDown", "ArrowDown", 40, None, 0),
            Key::ArrowLeft => ("ArrowLeft", "ArrowLeft", 37, None, 0),
            Key::ArrowRight => ("ArrowRight", "ArrowRight", 39, None, 0),
        }
    }
}

/// A virtual WebAuthn authenticator attached to a page (platform authenticator with resident keys
/// and user verification, which always succeeds: a passkey on a phone with a fingerprint).
#[derive(Debug, Clone)]
pub struct Authenticator {
    pub id: String,
}

/// One tab. Closed when dropped.
#[derive(Debug)]
pub struct Page {
    browser: Browser,
    target: String,
    session: String,
    test: String,
    viewport: Viewport,
    timeout: Duration,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.browser.inner.conn.forget_session(&self.session);
        self.browser.inner.conn.send_and_forget(
            None,
            "Target.closeTarget",
            json!({ "targetId": self.target }),
        );
    }
}

/// A JavaScript string literal of `s`, for building expressions safely.
fn js(s: &str) -> String {
    Value::from(s).to_string()
}

impl Page {
    pub(crate) async fn open(
        browser: Browser,
        target: String,
        session: String,
        test: String,
        viewport: Viewport,
    ) -> Result<Page, BrowserError> {
        let mut page = Page {
            browser,
            target,
            session,
            test,
            viewport,
            timeout: DEFAULT_TIMEOUT,
        };
        page.cmd("Page.enable", json!({})).await?;
        page.cmd("Runtime.enable", json!({})).await?;
        // Several tabs run at once in one headless browser: let each behave as the focused window,
        // so keyboard focus and :focus-visible work as they do for a person.
        page.cmd(
            "Emulation.setFocusEmulationEnabled",
            json!({ "enabled": true }),
        )
        .await?;
        page.set_viewport(viewport).await?;
        Ok(page)
    }

    async fn cmd(&self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.browser
            .inner
            .conn
            .call(Some(&self.session), method, params)
            .await
    }

    /// Changes how long waits on this page may take (default 10 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn viewport(&self) -> Viewport {
        self.viewport
    }

    /// Resizes the window (phones get mobile emulation: the viewport meta tag applies).
    pub async fn set_viewport(&mut self, viewport: Viewport) -> Result<(), BrowserError> {
        self.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": viewport.width,
                "height": viewport.height,
                "deviceScaleFactor": 1,
                "mobile": viewport.is_mobile(),
            }),
        )
        .await?;
        self.viewport = viewport;
        Ok(())
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        let r = self.cmd("Page.navigate", json!({ "url": url })).await?;
        if let Some(reason) = r.get("errorText").and_then(Value::as_str)
            && !reason.is_empty()
        {
            return Err(BrowserError::Navigation {
                url: url.to_owned(),
                reason: reason.to_owned(),
            });
        }
        self.wait_loaded().await
    }

    /// Waits until the current document has finished loading (after a click that navigates).
    pub async fn wait_loaded(&self) -> Result<(), BrowserError> {
        self.wait_until("document.readyState === 'complete'", "the page to load")
            .await
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its JSON value.
    pub async fn eval(&self, expression: &str) -> Result<Value, BrowserError> {
        let r = self
            .cmd(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "returnByValue": true,
                    "awaitPromise": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("exception");
            return Err(BrowserError::Script(text.to_owned()));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Polls the boolean `expression` until it is true or the page's timeout passes.
    pub async fn wait_until(&self, expression: &str, what: &str) -> Result<(), BrowserError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            // A navigation in progress destroys the context mid-evaluation: just poll again.
            if let Ok(Value::Bool(true)) = self.eval(expression).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let url = self.url().await.unwrap_or_default();
                return Err(BrowserError::Timeout(format!(
                    "waited {} s for {what} on {url}",
                    self.timeout.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until an element matching `selector` is present and visible.
    pub async fn wait_for(&self, selector: &str) -> Result<(), BrowserError> {
        let expr = format!(
            "(() => {{ const e = document.querySelector({s}); return !!e && e.getClientRects().length > 0; }})()",
            s = js(selector)
        );
        self.wait_until(&expr, &format!("element {selector}")).await
    }

    /// Waits until the page's visible text contains `text`.
    pub async fn wait_for_text(&self, text: &str) -> Result<(), BrowserError> {
        let expr = format!(
            "!!document.body && document.body.innerText.includes({})",
            js(text)
        );
        self.wait_until(&expr, &format!("text {text:?}")).await
    }

    pub async fn url(&self) -> Result<String, BrowserError> {
        Ok(self
            .eval("location.href")
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The visible text of the first element matching `selector`.
    pub async fn text(&self, selector: &str) -> Result<String, BrowserError> {
        let expr = format!(
            "(() => {{ const e = document.querySelector({s}); return e ? e.innerText : null; }})()",
            s = js(selector)
        );
        match self.eval(&expr).await? {
            Value::String(s) => Ok(s),
            _ => Err(BrowserError::NotFound(selector.to_owned())),
        }
    }

    /// How many elements match `selector`.
    pub async fn count(&self, selector: &str) -> Result<u64, BrowserError> {
        let expr = format!("document.querySelectorAll({}).length", js(selector));
        Ok(self.eval(&expr).await?.as_u64().unwrap_or(0))
    }

    /// An attribute of the first element matching `selector` (None when absent).
    pub async fn attribute(
        &self,
        selector: &str,
        name: &str,
    ) -> Result<Option<String>, BrowserError> {
        let expr = format!(
            "(() => {{ const e = document.querySelector({s}); return e ? [e.getAttribute({n})] : null; }})()",
            s = js(selector),
            n = js(name)
        );
        match self.eval(&expr).await? {
            Value::Array(v) => Ok(v.first().and_then(Value::as_str).map(str::to_owned)),
            _ => Err(BrowserError::NotFound(selector.to_owned())),
        }
    }

    /// Clicks the middle of the first element matching `selector` with the mouse, after
    /// scrolling it into view.
    pub async fn click(&self, selector: &str) -> Result<(), BrowserError> {
        self.wait_for(selector).await?;
        let expr = format!(
            "(() => {{ const e = document.querySelector({s}); e.scrollIntoView({{block: 'center', inline: 'center'}}); \
             const r = e.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2]; }})()",
            s = js(selector)
        );
        let point = self.eval(&expr).await?;
        let (Some(x), Some(y)) = (point[0].as_f64(), point[1].as_f64()) else {
            return Err(BrowserError::NotFound(selector.to_owned()));
        };
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.cmd(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await?;
        }
        Ok(())
    }

    /// Focuses the field matching `selector`, clears it and types `value` as text input.
    pub async fn fill(&self, selector: &str, value: &str) -> Result<(), BrowserError> {
        self.wait_for(selector).await?;
        let expr = format!(
            "(() => {{ const e = document.querySelector({s}); e.focus(); e.value = ''; \
             e.dispatchEvent(new Event('input', {{bubbles: true}})); return document.activeElement === e; }})()",
            s = js(selector)
        );
        if self.eval(&expr).await? != Value::Bool(true) {
            return Err(BrowserError::Assertion(format!(
                "{selector} cannot take keyboard focus"
            )));
        }
        self.type_text(value).await
    }

    /// Types `text` into whatever has focus (as an input method would: one insertion).
    pub async fn type_text(&self, text: &str) -> Result<(), BrowserError> {
        self.cmd("Input.insertText", json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// Presses and releases `key`.
    pub async fn press(&self, key: Key) -> Result<(), BrowserError> {
        let (name, code, vk, text, modifiers) = key.spec();
        let mut down = json!({
            "type": if text.is_some() { "keyDown" } else { "rawKeyDown" },
            "key": name,
            "code": code,
            "windowsVirtualKeyCode": vk,
            "nativeVirtualKeyCode": vk,
            "modifiers": modifiers,
        });
        if let Some(t) = text {
            down["text"] = Value::from(t);
            down["unmodifiedText"] = Value::from(t);
        }
        self.cmd("Input.dispatchKeyEvent", down).await?;
        self.cmd(
            "Input.dispatchKeyEvent",
            json!({
                "type": "keyUp",
                "key": name,
                "code": code,
                "windowsVirtualKeyCode": vk,
                "nativeVirtualKeyCode": vk,
                "modifiers": modifiers,
            }),
        )
        .await?;
        Ok(())
    }

    /// Whether the focused element matches `selector`.
    pub async fn focused_matches(&self, selector: &str) -> Result<bool, BrowserError> {
        let expr = format!(
            "!!document.activeElement && document.activeElement !== document.body && document.activeElement.matches({})",
            js(selector)
        );
        Ok(self.eval(&expr).await? == Value::Bool(true))
    }

    /// A short description of the focused element (tag, id, text), for failure messages.
    pub async fn focused(&self) -> Result<String, BrowserError> {
        let v = self
            .eval(
                "(() => { const e = document.activeElement; if (!e) return 'nothing'; \
                 return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ' ' + \
                 JSON.stringify((e.innerText || e.value || e.getAttribute('aria-label') || '').slice(0, 40)); })()",
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// Presses Tab until the focused element matches `selector`, at most `max_tabs` times, and
    /// returns how many presses it took. Fails if keyboard focus never gets there.
    pub async fn tab_to(&self, selector: &str, max_tabs: u32) -> Result<u32, BrowserError> {
        let mut seen = Vec::new();
        for n in 1..=max_tabs {
            self.press(Key::Tab).await?;
            if self.focused_matches(selector).await? {
                return Ok(n);
            }
            if seen.len() < 12 {
                seen.push(self.focused().await?);
            }
        }
        Err(BrowserError::Assertion(format!(
            "{max_tabs} presses of Tab never focused {selector}; focus went through: {}",
            seen.join(", ")
        )))
    }

    /// Whether the focused element shows a visible focus indicator (outline or box shadow).
    pub async fn focus_is_visible(&self) -> Result<bool, BrowserError> {
        let v = self
            .eval(
                "(() => { const e = document.activeElement; if (!e || e === document.body) return false; \
                 const s = getComputedStyle(e); \
                 return (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0) || s.boxShadow !== 'none'; })()",
            )
            .await?;
        Ok(v == Value::Bool(true))
    }

    /// How many CSS pixels the page is wider than the window (0 when nothing scrolls sideways).
    pub async fn horizontal_overflow(&self) -> Result<i64, BrowserError> {
        let v = self
            .eval("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            .await?;
        Ok(v.as_i64().unwrap_or(0))
    }

    /// Uncaught JavaScript exceptions the page threw so far.
    pub fn js_errors(&self) -> Vec<String> {
        self.browser.inner.conn.exceptions(&self.session)
    }

    /// The file a screenshot of `step` at the current viewport is written to.
    pub fn screenshot_path(&self, step: &str) -> PathBuf {
        artifacts_root().join(&self.test).join(format!(
            "{}-{}.png",
            crate::sanitize(step),
            self.viewport.label()
        ))
    }

    /// Saves a PNG of the page (full width, up to 4000 px tall) to
    /// `target/screenshots/<test>/<step>-<viewport>.png` and returns its path.
    pub async fn screenshot(&self, step: &str) -> Result<PathBuf, BrowserError> {
        let metrics = self.cmd("Page.getLayoutMetrics", json!({})).await?;
        let width = metrics["cssContentSize"]["width"]
            .as_f64()
            .unwrap_or(f64::from(self.viewport.width));
        let height = metrics["cssContentSize"]["height"]
            .as_f64()
            .unwrap_or(f64::from(self.viewport.height))
            .min(MAX_SHOT_HEIGHT);
        let shot = self
            .cmd(
                "Page.captureScreenshot",
                json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 },
                }),
            )
            .await?;
        let data = shot["data"]
            .as_str()
            .ok_or_else(|| BrowserError::Script("screenshot without data".into()))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| BrowserError::Script(format!("screenshot is not base64: {e}")))?;
        let path = self.screenshot_path(step);
        write_file(&path, &png)?;
        Ok(path)
    }

    /// Runs axe-core (WCAG 2.1 A/AA rules and best practices) on the page as it is now.
    pub async fn axe(&self) -> Result<crate::AxeReport, BrowserError> {
        crate::axe::run(self).await
    }

    /// Runs axe-core, writes its findings to `target/screenshots/<test>/<step>-<viewport>-axe.json`,
    /// and fails when any violation is serious or critical.
    pub async fn assert_accessible(&self, step: &str) -> Result<crate::AxeReport, BrowserError> {
        let report = self.axe().await?;
        let path = artifacts_root().join(&self.test).join(format!(
            "{}-{}-axe.json",
            crate::sanitize(step),
            self.viewport.label()
        ));
        write_file(&path, report.to_json().as_bytes())?;
        let serious = report.serious();
        if !serious.is_empty() {
            let url = self.url().await.unwrap_or_default();
            return Err(BrowserError::Accessibility(format!(
                "{url} at {}:\n{}",
                self.viewport.label(),
                serious
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            )));
        }
        Ok(report)
    }

    /// Adds a virtual platform authenticator (CTAP2, internal transport, resident keys, user
    /// verification that succeeds) to this page, so `navigator.credentials` works headless.
    pub async fn add_virtual_authenticator(&self) -> Result<Authenticator, BrowserError> {
        self.cmd("WebAuthn.enable", json!({ "enableUI": false }))
            .await?;
        let r = self
            .cmd(
                "WebAuthn.addVirtualAuthenticator",
                json!({
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": true,
                        "hasUserVerification": true,
                        "isUserVerified": true,
                        "automaticPresenceSimulation": true,
                    }
                }),
            )
            .await?;
        let id = r["authenticatorId"]
            .as_str()
            .ok_or_else(|| BrowserError::Script("no authenticatorId".into()))?
            .to_owned();
        Ok(Authenticator { id })
    }

    /// The credentials (passkeys) the virtual authenticator holds, as DevTools reports them
    /// (`credentialId`, `isResidentCredential`, `rpId`, `userHandle`, `signCount`, ...).
    pub async fn credentials(&self, auth: &Authenticator) -> Result<Vec<Value>, BrowserError> {
        let r = self
            .cmd(
                "WebAuthn.getCredentials",
                json!({ "authenticatorId": auth.id }),
            )
            .await?;
        Ok(r["credentials"].as_array().cloned().unwrap_or_default())
    }

    /// Makes the authenticator's user verification fail (or succeed again), e.g. a wrong finger.
    pub async fn set_user_verified(
        &self,
        auth: &Authenticator,
        verified: bool,
    ) -> Result<(), BrowserError> {
        self.cmd(
            "WebAuthn.setUserVerified",
            json!({ "authenticatorId": auth.id, "isUserVerified": verified }),
        )
        .await?;
        Ok(())
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), BrowserError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| BrowserError::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(path, bytes)
        .map_err(|e| BrowserError::Io(format!("cannot write {}: {e}", path.display())))
}
