//! SQLite reader connections, lent without a pool's round trips.
//!
//! WAL lets reads run beside the writer on connections of their own. sqlx's pool would test each
//! connection on its way back (a round trip to the connection's thread, from a spawned task); a
//! read is a single statement on a local file, so here a connection simply goes back to the idle
//! list when its lease ends — also when the reading future is dropped midway (the connection's
//! thread finishes the statement before it takes the next).

use crate::Result;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Most calling-thread read handles kept for reuse (more than the runtime's threads are never in use).
const MAX_SYNC_IDLE: usize = 32;

/// At most `max` reader connections, opened as needed and kept.
#[derive(Debug)]
pub(crate) struct Readers {
    idle: Mutex<Vec<SqliteConnection>>,
    /// Handles driven in the calling thread (see [`Readers::sync_rows`]), kept for reuse.
    sync_idle: Mutex<Vec<crate::step::SyncConn>>,
    file: std::path::PathBuf,
    permits: Semaphore,
    opts: SqliteConnectOptions,
    acquire_timeout: Duration,
}

/// A reader connection, back to the idle list when dropped.
pub(crate) struct ReadLease<'a> {
    readers: &'a Readers,
    conn: Option<SqliteConnection>,
    _permit: SemaphorePermit<'a>,
}

impl Readers {
    pub(crate) fn new(opts: SqliteConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            sync_idle: Mutex::new(Vec::new()),
            file: opts.get_filename().to_path_buf(),
            permits: Semaphore::new(usize::try_from(max.max(1)).unwrap_or(1)),
            opts,
            acquire_timeout,
        }
    }

    /// Waits for a reader (at most the acquire timeout, as a pool would).
    pub(crate) async fn lease(&self) -> Result<ReadLease<'_>> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.take_idle();
        let conn = match idle {
            Some(c) => c,
            None => SqliteConnection::connect_with(&self.opts).await?,
        };
        Ok(ReadLease {
            readers: self,
            conn: Some(conn),
            _permit: permit,
        })
    }

    /// Runs one read in the calling thread, on a handle of its own: a hot read is one indexed
    /// lookup in a local file, cheaper than the two thread switches of sqlx's connection thread.
    /// At most one handle per thread reading at once (the read does not yield), so the tokio
    /// workers bound how many there are.
    pub(crate) fn sync_rows<O: crate::step::StepRow>(
        &self,
        step: crate::step::Binder<'_>,
    ) -> Result<Vec<O>> {
        if self.permits.is_closed() {
            return Err(sqlx::Error::PoolClosed.into());
        }
        let idle = self
            .sync_idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut conn = match idle {
            Some(c) => c,
            None => crate::step::SyncConn::open_reader(&self.file)?,
        };
        let rows = conn.run(&step);
        if rows.is_ok() || conn.rolled_back() {
            let mut idle = self
                .sync_idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() < MAX_SYNC_IDLE {
                idle.push(conn);
            }
        }
        rows
    }

    fn take_idle(&self) -> Option<SqliteConnection> {
        // A poisoned lock only means a thread panicked while pushing: the list is still sound.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    /// Closes the idle connections; later leases fail.
    pub(crate) async fn close(&self) {
        self.permits.close();
        self.sync_idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        let conns: Vec<SqliteConnection> = std::mem::take(
            &mut *self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for c in conns {
            let _ = c.close().await;
        }
    }
}

impl ReadLease<'_> {
    pub(crate) fn conn(&mut self) -> Result<&mut SqliteConnection> {
        self.conn
            .as_mut()
            .ok_or(crate::StoreError::Database(sqlx::Error::PoolClosed))
    }
}

impl Drop for ReadLease<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && !self.readers.permits.is_closed()
        {
            self.readers
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::str::FromStr;

    fn readers(dir: &tempfile::TempDir, max: u32, timeout: Duration) -> Readers {
        let url = format!("sqlite:{}", dir.path().join("r.db").display());
        let opts = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        Readers::new(opts, max, timeout)
    }

    #[tokio::test]
    async fn connections_are_reused_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let r = readers(&dir, 2, Duration::from_millis(20));
        let (mut a, b) = (r.lease().await.unwrap(), r.lease().await.unwrap());
        let one: i64 = sqlx::query_scalar("SELECT 1")
            .fetch_one(a.conn().unwrap())
            .await
            .unwrap();
        assert_eq!(one, 1);
        assert!(
            matches!(
                r.lease().await,
                Err(crate::StoreError::Database(sqlx::Error::PoolTimedOut))
            ),
            "a third reader waits and gives up"
        );
        drop((a, b));
        assert_eq!(r.idle.lock().unwrap().len(), 2, "both kept for the next");
        let _c = r.lease().await.unwrap();
        assert_eq!(r.idle.lock().unwrap().len(), 1);
        r.close().await;
        assert!(r.lease().await.is_err());
    }
}
