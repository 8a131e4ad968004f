//! A minimal Chrome DevTools Protocol client: JSON commands over one WebSocket, replies matched by
//! id, events kept only where a test needs them (uncaught page exceptions).
//!
//! Messages stay untyped `serde_json::Value`s: a new Chromium release adds events and fields all
//! the time, and a client that ignores what it does not read cannot break on them.

use crate::BrowserError;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long one protocol command may take before the test fails (a screenshot of a long page or a
/// first axe run on a loaded two-core machine takes seconds, not minutes).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Page exceptions kept per session, so a page throwing in a loop cannot grow memory.
const MAX_EXCEPTIONS: usize = 100;

type Reply = Result<Value, BrowserError>;

#[derive(Default)]
struct Shared {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    exceptions: HashMap<String, Vec<String>>,
    closed: bool,
}

/// One WebSocket connection to the browser endpoint; sessions of pages are multiplexed on it
/// (`Target.attachToTarget` with `flatten`).
#[derive(Clone)]
pub(crate) struct Connection {
    out: mpsc::UnboundedSender<String>,
    shared: Arc<Mutex<Shared>>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connection {
    /// Connects to `ws_url` and spawns the reader and writer tasks on the current runtime.
    pub(crate) async fn connect(ws_url: &str) -> Result<Self, BrowserError> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .map_err(|e| BrowserError::Launch(format!("cannot connect to {ws_url}: {e}")))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<String>();
        let shared = Arc::new(Mutex::new(Shared::default()));

        tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        });

        let reader_shared = shared.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                dispatch(&reader_shared, value);
            }
            let mut s = lock(&reader_shared);
            s.closed = true;
            for (_, tx) in s.pending.drain() {
                let _ = tx.send(Err(BrowserError::Disconnected));
            }
        });

        Ok(Self {
            out,
            shared,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// Sends `method` (to a page session when given) and waits for its result.
    pub(crate) async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, BrowserError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut s = lock(&self.shared);
            if s.closed {
                return Err(BrowserError::Disconnected);
            }
            s.pending.insert(id, tx);
        }
        self.out
            .send(message(id, session, method, params))
            .map_err(|_| BrowserError::Disconnected)?;
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(reply)) => reply.map_err(|e| match e {
                BrowserError::Protocol { message, .. } => BrowserError::Protocol {
                    method: method.to_owned(),
                    message,
                },
                other => other,
            }),
            Ok(Err(_)) => Err(BrowserError::Disconnected),
            Err(_) => {
                lock(&self.shared).pending.remove(&id);
                Err(BrowserError::Timeout(format!(
                    "DevTools command {method} got no answer within {} s",
                    CALL_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Sends a command whose answer nobody waits for (used from `Drop`, which cannot await).
    pub(crate) fn send_and_forget(&self, session: Option<&str>, method: &str, params: Value) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.out.send(message(id, session, method, params));
    }

    /// Uncaught exceptions the page of `session` has thrown so far.
    pub(crate) fn exceptions(&self, session: &str) -> Vec<String> {
        lock(&self.shared)
            .exceptions
            .get(session)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn forget_session(&self, session: &str) {
        lock(&self.shared).exceptions.remove(session);
    }
}

fn message(id: u64, session: Option<&str>, method: &str, params: Value) -> String {
    let mut msg = json!({ "id": id, "method": method, "params": params });
    if let Some(s) = session {
        msg["sessionId"] = Value::from(s);
    }
    msg.to_string()
}

fn dispatch(shared: &Mutex<Shared>, value: Value) {
    if let Some(id) = value.get("id").and_then(Value::as_u64) {
        let reply = match value.get("error") {
            Some(err) => Err(BrowserError::Protocol {
                method: String::new(),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_owned(),
            }),
            None => Ok(value.get("result").cloned().unwrap_or(Value::Null)),
        };
        if let Some(tx) = lock(shared).pending.remove(&id) {
            let _ = tx.send(reply);
        }
        return;
    }
    if value.get("method").and_then(Value::as_str) == Some("Runtime.exceptionThrown") {
        let Some(session) = value.get("sessionId").and_then(Value::as_str) else {
            return;
        };
        let details = &value["params"]["exceptionDetails"];
        let text = details["exception"]["description"]
            .as_str()
            .or_else(|| details["text"].as_str())
            .unwrap_or("uncaught exception")
            .to_owned();
        let mut s = lock(shared);
        let list = s.exceptions.entry(session.to_owned()).or_default();
        if list.len() < MAX_EXCEPTIONS {
            list.push(text);
        }
    }
}
