//! The SQLite writer: one connection, handed from one writer to the next without a pool.
//!
//! SQLite lets one transaction write at a time, so every statement that may write goes to one
//! connection. A pool of one would do, but sqlx's pool tests a connection on its way back (a round
//! trip to the connection's thread) and wakes the next waiter through a spawned task: on the hot
//! path that is most of the time the writer is held. Here the connection sits behind a fair async
//! mutex instead: the next writer gets it the moment the last one is done.
//!
//! A writer that stops midway (its future dropped, or a statement failed with a transaction open)
//! leaves the lease *dirty*; the next one first rolls back whatever was left open, or, if that
//! fails, opens a fresh connection (closing the old one rolls its transaction back).
//!
//! Beside the sqlx connection the lease holds a second handle on the same file, driven in the
//! calling thread (see `step`): the hot write steps run there with no hand-off to a connection
//! thread. Both are behind the one mutex, so they never write at the same time.

use crate::{Result, StoreError};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

/// The writer connection and how to open it again.
#[derive(Debug)]
pub(crate) struct Writer {
    slot: Mutex<Slot>,
    opts: SqliteConnectOptions,
    /// The database file, for the calling-thread handle.
    file: std::path::PathBuf,
    /// Steps waiting for the writer (see `step::sqlite_sync`), by ticket.
    queued: StepQueue,
    tickets: std::sync::atomic::AtomicU64,
    acquire_timeout: Duration,
}

#[derive(Default)]
struct Slot {
    conn: Option<SqliteConnection>,
    /// The handle driven in the calling thread, opened on first use.
    sync: Option<crate::step::SyncConn>,
    /// The last lease ended without [`Lease::finish`]: the connection may hold an open transaction.
    dirty: bool,
    closed: bool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("open", &self.conn.is_some())
            .field("sync_open", &self.sync.is_some())
            .field("dirty", &self.dirty)
            .field("closed", &self.closed)
            .finish()
    }
}

/// The writer connection, held until dropped.
pub(crate) struct Lease<'a> {
    guard: MutexGuard<'a, Slot>,
    file: &'a std::path::Path,
}

impl Writer {
    /// Opens the writer connection.
    pub(crate) async fn open(
        opts: SqliteConnectOptions,
        acquire_timeout: Duration,
    ) -> Result<Self> {
        let conn = SqliteConnection::connect_with(&opts).await?;
        let file = opts.get_filename().to_path_buf();
        Ok(Self {
            file,
            queued: StepQueue::default(),
            tickets: std::sync::atomic::AtomicU64::new(0),
            slot: Mutex::new(Slot {
                conn: Some(conn),
                ..Slot::default()
            }),
            opts,
            acquire_timeout,
        })
    }

    /// Waits for the writer (at most the acquire timeout, as a pool would).
    pub(crate) async fn lease(&self) -> Result<Lease<'_>> {
        let mut guard = tokio::time::timeout(self.acquire_timeout, self.slot.lock())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?;
        if guard.closed {
            return Err(sqlx::Error::PoolClosed.into());
        }
        if guard.dirty {
            if let Some(conn) = guard.conn.as_mut()
                && !rolled_back(conn).await
            {
                guard.conn = None;
            }
            guard.dirty = false;
        }
        if guard.conn.is_none() {
            guard.conn = Some(SqliteConnection::connect_with(&self.opts).await?);
        }
        guard.dirty = true;
        Ok(Lease {
            guard,
            file: &self.file,
        })
    }

    /// Queues a step for the next holder of the writer; the ticket takes it out again if dropped
    /// while it is still queued.
    pub(crate) fn enqueue(&self, step: crate::step::Queued) -> Ticket<'_> {
        let id = self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.queue().push((id, step));
        Ticket { writer: self, id }
    }

    /// Every step queued so far, oldest first, for the holder of the writer to run.
    pub(crate) fn take_queued(&self) -> Vec<crate::step::Queued> {
        std::mem::take(&mut *self.queue())
            .into_iter()
            .map(|(_, s)| s)
            .collect()
    }

    /// How many steps wait in the queue (tests).
    #[cfg(test)]
    pub(crate) fn queued_len(&self) -> usize {
        self.queue().len()
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<(u64, crate::step::Queued)>> {
        // A poisoned queue is still a list of whole entries.
        self.queued
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the connection; later leases fail.
    pub(crate) async fn close(&self) {
        let mut guard = self.slot.lock().await;
        guard.closed = true;
        guard.sync = None;
        if let Some(conn) = guard.conn.take() {
            let _ = conn.close().await;
        }
    }
}

/// Steps waiting for the writer, each with its ticket number.
#[derive(Default)]
struct StepQueue(std::sync::Mutex<Vec<(u64, crate::step::Queued)>>);

impl std::fmt::Debug for StepQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |q| q.len());
        f.debug_struct("StepQueue").field("queued", &n).finish()
    }
}

/// A queued step's place in the queue (see [`Writer::enqueue`]).
pub(crate) struct Ticket<'a> {
    writer: &'a Writer,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.writer.queue().retain(|(id, _)| *id != self.id);
    }
}

impl Lease<'_> {
    /// The connection (absent only if it could not be opened again, which `lease` reports).
    pub(crate) fn conn(&mut self) -> Result<&mut SqliteConnection> {
        self.guard
            .conn
            .as_mut()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))
    }

    /// The handle on the same file driven in the calling thread (see `step`), opened if needed.
    pub(crate) fn sync(&mut self) -> Result<&mut crate::step::SyncConn> {
        if self.guard.sync.is_none() {
            self.guard.sync = Some(crate::step::SyncConn::open(self.file)?);
        }
        self.guard
            .sync
            .as_mut()
            .ok_or(StoreError::Database(sqlx::Error::PoolClosed))
    }

    /// Drops the calling-thread handle (it could not be brought back to a clean state); the next
    /// use opens it again.
    pub(crate) fn drop_sync(&mut self) {
        self.guard.sync = None;
    }

    /// The work is done and left no transaction open: the next writer need not check.
    pub(crate) fn finish(mut self) {
        self.guard.dirty = false;
    }
}

/// Rolls back an open transaction; true if none is open now.
async fn rolled_back(conn: &mut SqliteConnection) -> bool {
    match sqlx::query("ROLLBACK").execute(conn).await {
        Ok(_) => true,
        // Nothing was open (the failed statement was not in a transaction, or SQLite rolled back).
        Err(e) => e.to_string().contains("no transaction is active"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::str::FromStr;

    async fn writer(dir: &tempfile::TempDir) -> Writer {
        let url = format!("sqlite:{}", dir.path().join("w.db").display());
        let opts = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let w = Writer::open(opts, Duration::from_secs(5)).await.unwrap();
        let mut l = w.lease().await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .execute(l.conn().unwrap())
            .await
            .unwrap();
        l.finish();
        w
    }

    async fn count(w: &Writer) -> i64 {
        let mut l = w.lease().await.unwrap();
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(l.conn().unwrap())
            .await
            .unwrap();
        l.finish();
        n
    }

    #[tokio::test]
    async fn a_writer_that_stops_inside_a_transaction_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        {
            // As if its future were dropped between two statements of a transaction.
            let mut l = w.lease().await.unwrap();
            sqlx::raw_sql("BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
                .execute(l.conn().unwrap())
                .await
                .unwrap();
        }
        // The next writer can begin its own transaction, and the half-done one is gone.
        let mut l = w.lease().await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE; INSERT INTO t VALUES (2); COMMIT")
            .execute(l.conn().unwrap())
            .await
            .unwrap();
        l.finish();
        assert_eq!(count(&w).await, 1);
    }

    #[tokio::test]
    async fn a_closed_writer_refuses_work() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        w.close().await;
        assert!(w.lease().await.is_err());
    }

    #[tokio::test]
    async fn writers_wait_their_turn_and_give_up_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(&dir).await;
        w.acquire_timeout = Duration::from_millis(20);
        let held = w.lease().await.unwrap();
        assert!(matches!(
            w.lease().await,
            Err(StoreError::Database(sqlx::Error::PoolTimedOut))
        ));
        held.finish();
        assert_eq!(count(&w).await, 0);
    }
}
