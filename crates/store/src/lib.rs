//! Persistence for mydata: one repository layer over SQLite (the embedded default) and PostgreSQL.
//!
//! The backend is chosen by the database URL (`sqlite:` or `postgres:`). Queries are written once in
//! the dialect both accept (`$1` parameters, `RETURNING`, `ON CONFLICT`) and run on whichever pool is
//! active; the few places that must differ say why. Each backend has its own migration folder, kept in
//! step and embedded in the binary. Times are passed in by the caller (from the injected clock) and
//! stored as milliseconds, so time rules are testable without waiting.

mod audit;
mod audit_proofs;
mod audit_receipts;
mod audit_tree;
mod counter;
mod downloads;
mod fetches;
mod identity;
mod jobs;
mod keys;
mod oauth;
mod ops;
mod passkeys;
mod readers;
mod records;
mod retention;
mod step;
#[cfg(feature = "testing")]
pub mod testing;
mod transfers;
mod writer;

pub use audit::{AuditEvent, NewAuditEvent};
pub use audit_receipts::{NewReceipt, StoredReceipt};
pub use audit_tree::{
    AuditProblem, AuditReport, LeafRow, TreeHead, canonical_entry, event_leaf_hash,
};
pub use counter::{
    ClerkRow, ClerkSessionRow, CounterRow, CounterTransferRow, FailureOutcome, GrantRow, OfficeRow,
    PasswordRow, SerialRow,
};
pub use downloads::DownloadClaim;
pub use fetches::{
    Admission, AgencyCircuit, AgencyLimits, FetchAttempt, FetchProgress, FetchRecord,
    FetchSettlement, Leftover, PackageRecord, Packaged, Retrieval, SettleAlso, SettleOutcome,
    status as fetch_status,
};
pub use identity::{
    ChallengeUse, CodeRow, ContactRow, LockoutRule, OutboxRow, SessionRow, SubjectRow,
};
pub use jobs::{Job, JobState, NewJob, StartJobs, new_job_id};
pub use oauth::{
    ClientRemoval, ClientRow, CodeGrant, CodeRow as OAuthCodeRow, Issue, Jti, Push, Redeem,
    RequestRow, TokenRow,
};
pub use ops::{OpsSnapshot, QueueCounts};
pub use passkeys::{CeremonyRow, CeremonyUse, PasskeyRow};
pub use records::{RecordCursor, RecordParty, TransferRecord};
pub use transfers::{NewTransfer, RequestAnswer, Transfer, TransferDataset, TransferWork};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL scheme `{0}` (use sqlite:PATH or postgres://...)")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: the transaction was not committed: {0}")]
    Commit(String),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database file {0} is missing")]
    FileMissing(PathBuf),
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    IllegalTransition(#[from] mydata_core::transfer::IllegalTransition),
    #[error("transfer `{0}` was changed concurrently; try again")]
    Conflict(String),
    #[error("job `{0}` is no longer leased by this worker")]
    LeaseLost(String),
    #[error("stored value is invalid: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The database cannot be reached or is too busy right now (no connection in time, the
    /// connection lost, the file locked by another process, the server refusing connections):
    /// nothing is wrong with the request or the data, and the same request may work in a minute.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
                sqlx::Error::Database(d) => d.code().is_some_and(|c| unavailable_code(&c)),
                _ => false,
            },
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::CannotOpen
            ),
            _ => false,
        }
    }
}

/// SQLite's busy and locked (primary codes 5 and 6, also as extended codes); PostgreSQL's
/// connection exceptions (class 08), a login refused (class 28) or to a database that is not there
/// (3D000), too many connections (53300) and a server shutting down or starting (57P01–57P03).
fn unavailable_code(code: &str) -> bool {
    if let Ok(n) = code.parse::<i32>() {
        return matches!(n & 0xff, 5 | 6);
    }
    code.starts_with("08")
        || code.starts_with("28")
        || matches!(code, "3D000" | "53300" | "57P01" | "57P02" | "57P03")
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite {
        /// The one connection that writes (every statement that may write goes here).
        writer: std::sync::Arc<writer::Writer>,
        /// Connections for plain reads, which WAL lets run beside the writer.
        read: std::sync::Arc<readers::Readers>,
        file: PathBuf,
    },
    Postgres(PgPool),
}

/// Runs the same expression against whichever pool is active. Inside, `$pool` is the concrete pool.
/// On SQLite `$pool` is the writer connection, held for the expression (see `writer`).
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { writer, .. } => {
                let mut lease = writer.lease().await?;
                let out = {
                    // `begin` on the connection, as on a pool.
                    #[allow(unused_imports)]
                    use sqlx::Connection as _;
                    let $pool = lease.conn()?;
                    $body
                };
                lease.finish();
                out
            }
            $crate::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Like [`on_pool`], for a statement that only reads: on SQLite it runs on a reader connection
/// beside the writer; on PostgreSQL it is the same pool.
macro_rules! on_read_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { read, .. } => {
                let mut lease = read.lease().await?;
                let $pool = lease.conn()?;
                $body
            }
            $crate::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_read_pool;

/// The repository: every read and write of the platform's database goes through it.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

/// The most the SQLite write-ahead log file keeps on disk once checkpointed (bytes): above the
/// ≈40 MiB that `wal_autocheckpoint` lets it reach when nothing holds it.
pub(crate) const WAL_SIZE_LIMIT: &str = "67108864";

impl Store {
    /// Connects to the database named by `url`, creating an SQLite file (and its folder) if needed.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Self> {
        let scheme = url.split(':').next().unwrap_or_default();
        let db = match scheme {
            "sqlite" => {
                if sqlite_in_memory(url) {
                    // The platform's records must outlive the process, and `ping` watches a file.
                    return Err(StoreError::UnsupportedUrl(
                        "sqlite in memory (give the database a file)".into(),
                    ));
                }
                let opts = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5))
                    // Checkpoints run beside the writer (see `checkpoint`); the writer's own, which
                    // stall every write behind them, only if those fall behind.
                    .pragma("wal_autocheckpoint", "10000")
                    // After a burst that readers kept from being checkpointed (a long export),
                    // the log file shrinks back to this at its next restart instead of keeping
                    // its high-water mark on disk.
                    .pragma("journal_size_limit", WAL_SIZE_LIMIT)
                    // What is deleted (sealed secrets, wrapped keys, request parameters) is
                    // overwritten with zeros, not left in the freed space of its page.
                    .pragma("secure_delete", "ON");
                let file = opts.get_filename().to_path_buf();
                if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
                }
                // Create the file once, here. Connections the pool opens later must not: a
                // database file deleted under a running server would silently come back empty.
                if !file.exists() {
                    use sqlx::Connection;
                    sqlx::SqliteConnection::connect_with(&opts)
                        .await?
                        .close()
                        .await?;
                }
                // One writer connection: SQLite lets one transaction write at a time, and writers
                // on several connections find the lock taken and sleep in SQLite's busy handler
                // (1 to 100 ms at a time), leaving the CPU idle. Queued on one connection instead
                // (see `writer`), each writer starts the moment the previous one is done. Reads
                // use connections of their own (see `readers`).
                let opts = opts.create_if_missing(false);
                let writer = std::sync::Arc::new(
                    writer::Writer::open(opts.clone(), settings.acquire_timeout).await?,
                );
                let read = std::sync::Arc::new(readers::Readers::new(
                    opts,
                    settings.max_connections,
                    settings.acquire_timeout,
                ));
                Db::Sqlite { writer, read, file }
            }
            "postgres" | "postgresql" => {
                let opts = PgConnectOptions::from_str(url)?.application_name("mydata");
                let pool = PgPoolOptions::new()
                    .max_connections(settings.max_connections.max(1))
                    .acquire_timeout(settings.acquire_timeout)
                    .connect_with(opts)
                    .await?;
                Db::Postgres(pool)
            }
            other => return Err(StoreError::UnsupportedUrl(other.to_owned())),
        };
        Ok(Self { db })
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite { .. } => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Brings the schema up to date. Safe to run on every start and from several processes.
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite { writer, .. } => {
                let mut lease = writer.lease().await?;
                sqlx::migrate!("./migrations/sqlite")
                    .run(lease.conn()?)
                    .await?;
                lease.finish();
            }
            Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Checks that the database answers (and, for SQLite, that its file is still there).
    pub async fn ping(&self) -> Result<()> {
        if let Db::Sqlite { file, .. } = &self.db
            && !file.exists()
        {
            return Err(StoreError::FileMissing(file.clone()));
        }
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// SQLite: copies what the write-ahead log holds into the database file (a passive checkpoint,
    /// on a reader connection: the writer goes on meanwhile, where a checkpoint of its own, after
    /// a commit, holds every write behind it). Returns the log's frames and those checkpointed;
    /// None on PostgreSQL, which checkpoints itself.
    pub async fn checkpoint(&self) -> Result<Option<(i64, i64)>> {
        let Db::Sqlite { read, .. } = &self.db else {
            return Ok(None);
        };
        // On a calling-thread reader handle, like the hot reads: it copies at most what the log
        // holds since the last one, every 50 ms.
        let rows: Vec<(i64, i64, i64)> =
            read.sync_rows(crate::step::Binder::new("PRAGMA wal_checkpoint(PASSIVE)"))?;
        Ok(rows.first().map(|&(_busy, log, done)| (log, done)))
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite { writer, read, .. } => {
                read.close().await;
                writer.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// Names of the tables and their columns, for schema comparisons between backends.
    pub async fn schema_columns(&self) -> Result<Vec<(String, String, bool)>> {
        use sqlx::Row;
        let mut out = Vec::new();
        match &self.db {
            Db::Sqlite { read, .. } => {
                let mut lease = read.lease().await?;
                let rows = sqlx::query(
                    "SELECT m.name AS t, p.name AS c, p.\"notnull\" AS nn FROM sqlite_master m, pragma_table_info(m.name) p
                     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx_%' ORDER BY 1, 2",
                )
                .fetch_all(lease.conn()?)
                .await?;
                for r in rows {
                    let nn: i64 = r.try_get("nn")?;
                    let col: String = r.try_get("c")?;
                    // SQLite reports INTEGER PRIMARY KEY columns as nullable although they never are.
                    let not_null = nn != 0 || col == "seq";
                    out.push((r.try_get("t")?, col, not_null));
                }
            }
            Db::Postgres(pool) => {
                let rows = sqlx::query(
                    "SELECT table_name::text AS t, column_name::text AS c, is_nullable::text AS n FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name NOT LIKE '_sqlx_%' ORDER BY 1, 2",
                )
                .fetch_all(pool)
                .await?;
                for r in rows {
                    let n: String = r.try_get("n")?;
                    out.push((r.try_get("t")?, r.try_get("c")?, n == "NO"));
                }
            }
        }
        Ok(out)
    }
}

/// Whether a `sqlite:` URL names an in-memory database (`:memory:`, or `mode=memory`), which sqlx
/// gives a made-up file name.
fn sqlite_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (database, query) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || query.split('&').any(|p| p == "mode=memory")
}

/// Text stored in a column that must parse into a domain type.
pub(crate) fn parse_column<T: FromStr<Err = String>>(value: &str) -> Result<T> {
    value.parse().map_err(StoreError::Corrupt)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn an_in_memory_sqlite_database_is_refused() {
        for url in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite:x.db?mode=memory",
        ] {
            assert!(
                matches!(
                    Store::connect(url, &PoolSettings::default()).await,
                    Err(StoreError::UnsupportedUrl(_))
                ),
                "{url}"
            );
        }
        assert!(!sqlite_in_memory("sqlite:data/mydata.db?mode=rwc"));
    }

    #[tokio::test]
    async fn a_locked_or_unreachable_database_is_unavailable_and_a_bad_write_is_not() {
        use sqlx::{Connection, Executor};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.db");
        let holder = rusqlite::Connection::open(&file).unwrap();
        holder
            .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY); INSERT INTO t VALUES (1); BEGIN EXCLUSIVE;")
            .unwrap();
        // Another process holds the file: both drivers' errors say "try later".
        let other = rusqlite::Connection::open(&file).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let busy = other.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
        assert!(StoreError::from(busy).is_unavailable());
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&file)
            .busy_timeout(Duration::ZERO);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        let busy = conn.execute("INSERT INTO t VALUES (2)").await.unwrap_err();
        assert!(StoreError::from(busy).is_unavailable());
        assert!(StoreError::Database(sqlx::Error::PoolTimedOut).is_unavailable());
        holder.execute_batch("COMMIT").unwrap();
        // A write the data refuses is no outage.
        let dup = conn.execute("INSERT INTO t VALUES (1)").await.unwrap_err();
        assert!(!StoreError::from(dup).is_unavailable());
        assert!(!StoreError::Conflict("t".into()).is_unavailable());
    }
}
