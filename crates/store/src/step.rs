//! Write steps in one round trip: a whole transaction sent to the database at once.
//!
//! Each statement costs a hand-off to sqlx's SQLite connection thread and back (or a network round
//! trip to PostgreSQL), and on SQLite the one writer connection is held through all of them. A hot
//! write step therefore comes as one text per backend: on SQLite several statements between
//! `BEGIN IMMEDIATE` and `COMMIT`, run by the connection's thread in one go; on PostgreSQL one
//! statement whose data-modifying `WITH` clauses make it atomic by itself. Both texts take the same
//! parameters, so the caller binds them once. Conditions that a multi-statement transaction would
//! check in Rust (a compare-and-set that matched no row) are written into the SQL (`changes()` on
//! SQLite, a `FROM` over the CTE on PostgreSQL), and the step reports them through the rows its
//! statements return.

use crate::writer::Writer;
use crate::{Result, StoreError};
use rusqlite::types::{ToSqlOutput, Value as SqlValue};
use std::collections::HashMap;

/// The writer's second handle on the database file, driven in the calling thread: a write step
/// runs there from start to end without a hand-off to another thread and back (sqlx drives each
/// SQLite connection from a thread of its own: two thread switches per statement, which made up
/// much of a transfer's CPU). Used only under the writer's lease (see `writer`), and only for
/// steps, which are short: the tokio worker it blocks is blocked for as long as the step takes.
pub(crate) struct SyncConn {
    conn: rusqlite::Connection,
    /// Each step text split into its statements, once (prepared statements are cached per
    /// statement, and a text of several cannot be prepared as one). Step texts are ours, so a fast
    /// unkeyed hash will do: SipHash over every step's whole text cost more than the lookup saves.
    split: HashMap<String, Vec<StepStatement>, foldhash::fast::FixedState>,
}

/// One statement of a step text, with the names of the columns it returns, read once: a row
/// decoded by field name then finds each column in this list, instead of asking SQLite for every
/// column's name again for every field (rusqlite's `Row::get` by name).
struct StepStatement {
    sql: String,
    columns: Vec<String>,
}

/// The names of a statement's result columns, for [`StepRow`] to find its fields in a row.
pub(crate) struct Columns<'a>(&'a [String]);

impl Columns<'_> {
    /// The index of column `name` (as SQLite names it: the column or its `AS` alias).
    pub(crate) fn index(&self, name: &str) -> rusqlite::Result<usize> {
        self.0
            .iter()
            .position(|c| c == name)
            // SQLite's own lookup ignores ASCII case; so does this, for the rare miss.
            .or_else(|| self.0.iter().position(|c| c.eq_ignore_ascii_case(name)))
            .ok_or_else(|| rusqlite::Error::InvalidColumnName(name.to_owned()))
    }
}

impl std::fmt::Debug for SyncConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncConn")
            .field("steps", &self.split.len())
            .finish()
    }
}

impl SyncConn {
    /// Opens the existing database file with the settings of the sqlx connections.
    pub(crate) fn open(file: &std::path::Path) -> Result<Self> {
        let pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000; PRAGMA wal_autocheckpoint = 10000;
             PRAGMA journal_size_limit = {}; PRAGMA secure_delete = ON;",
            crate::WAL_SIZE_LIMIT
        );
        Self::open_as(file, &pragmas)
    }

    /// Opens the existing database file for reads only (see `readers`).
    pub(crate) fn open_reader(file: &std::path::Path) -> Result<Self> {
        Self::open_as(file, "PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")
    }

    fn open_as(file: &std::path::Path, pragmas: &str) -> Result<Self> {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch(pragmas)?;
        conn.set_prepared_statement_cache_capacity(128);
        Ok(Self {
            conn,
            split: HashMap::default(),
        })
    }

    /// Runs every statement of `step` in turn and returns every row they return.
    pub(crate) fn run<O: StepRow>(&mut self, step: &Binder<'_>) -> Result<Vec<O>> {
        self.run_as(step, false)
    }

    /// Runs `step` inside the transaction a group commit holds open, without its own
    /// `BEGIN IMMEDIATE` and `COMMIT`. No savepoint: SQLite would copy every page the step touches
    /// into a statement journal first (3.5 % of the demo's CPU); a step that fails instead has the
    /// whole group rolled back and run again step by step (see [`run_batch`]). If the group's
    /// transaction is gone, the step does not run: outside a transaction it would commit alone.
    fn run_grouped<O: StepRow>(&mut self, step: &Binder<'_>) -> Result<Vec<O>> {
        if self.conn.is_autocommit() {
            return Err(StoreError::Commit(
                "an earlier step of the group ended its transaction".into(),
            ));
        }
        self.run_as(step, true)
    }

    fn run_as<O: StepRow>(&mut self, step: &Binder<'_>, grouped: bool) -> Result<Vec<O>> {
        if !self.split.contains_key(step.sql) {
            let statements = split_statements(step.sql)
                .into_iter()
                .map(|sql| StepStatement {
                    sql,
                    columns: Vec::new(),
                })
                .collect();
            self.split.insert(step.sql.to_owned(), statements);
        }
        let statements = self
            .split
            .get_mut(step.sql)
            .map(Vec::as_mut_slice)
            .unwrap_or_default();
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        for statement in statements.iter_mut() {
            let sql = statement.sql.as_str();
            if grouped && (sql == "BEGIN IMMEDIATE" || sql == "COMMIT") {
                continue;
            }
            let mut stmt = self.conn.prepare_cached(sql)?;
            for i in 1..=stmt.parameter_count() {
                let n = stmt
                    .parameter_name(i)
                    .and_then(|p| p.strip_prefix('$'))
                    .and_then(|p| p.parse::<usize>().ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("step parameter {i} is not $N")))?;
                let v = step.values.get(n.wrapping_sub(1)).ok_or_else(|| {
                    StoreError::Corrupt(format!("step parameter ${n} is not bound"))
                })?;
                stmt.raw_bind_parameter(i, v)?;
            }
            let mut rows = stmt.raw_query();
            let mut first = true;
            while let Some(row) = rows.next()? {
                // Read once per statement, at its first row (a statement SQLite prepared anew
                // after a schema change has its new columns only once it runs); again if it now
                // returns other columns (a `SELECT *` over a table a migration changed).
                if first && statement.columns.len() != row.as_ref().column_count() {
                    statement.columns = row
                        .as_ref()
                        .column_names()
                        .into_iter()
                        .map(str::to_owned)
                        .collect();
                }
                first = false;
                out.push(O::from_step_row(row, &Columns(&statement.columns))?);
            }
        }
        // As sqlx logs its statements: every one at debug, slow ones as warnings (the SQL names
        // no person: values are bound, never written into the text).
        let elapsed = started.elapsed();
        let first = statements
            .iter()
            .map(|s| s.sql.as_str())
            .find(|s| !s.starts_with("BEGIN"));
        let first = first.map_or("", |s| s.get(..s.len().min(80)).unwrap_or(s));
        if elapsed >= SLOW_STEP {
            tracing::warn!(
                statement = first,
                statements = statements.len(),
                rows = out.len(),
                elapsed_ms = elapsed.as_millis() as u64,
                "slow sqlite step"
            );
        } else {
            tracing::debug!(
                statement = first,
                statements = statements.len(),
                rows = out.len(),
                elapsed_us = elapsed.as_micros() as u64,
                "sqlite step"
            );
        }
        Ok(out)
    }

    /// Runs `f` in a transaction of its own (`BEGIN IMMEDIATE` .. `COMMIT`), for writes whose
    /// statements depend on what earlier ones returned (the audit sequencer). If `f` or the commit
    /// fails, the caller checks [`SyncConn::rolled_back`] as after a failed step.
    pub(crate) fn transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let out = f(self)?;
        self.conn.execute_batch("COMMIT")?;
        Ok(out)
    }

    /// Runs the statements of `step` inside the transaction [`SyncConn::transaction`] holds open.
    pub(crate) fn query<O: StepRow>(&mut self, step: &Binder<'_>) -> Result<Vec<O>> {
        self.run_grouped(step)
    }

    /// Rolls back a transaction a failed step left open; false if the handle is in doubt.
    pub(crate) fn rolled_back(&mut self) -> bool {
        if self.conn.is_autocommit() {
            return true;
        }
        self.conn.execute_batch("ROLLBACK").is_ok() && self.conn.is_autocommit()
    }
}

/// A step slower than this is logged as a warning (sqlx's default for slow statements).
const SLOW_STEP: std::time::Duration = std::time::Duration::from_secs(1);

/// The statements of a step text, split at the semicolons outside quotes.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (None, ';') => {
                let s = current.trim();
                if !s.is_empty() {
                    out.push(s.to_owned());
                }
                current.clear();
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        current.push(c);
    }
    let s = current.trim();
    if !s.is_empty() {
        out.push(s.to_owned());
    }
    out
}

/// A value bound to a step run on [`SyncConn`].
#[derive(Debug, Clone)]
pub(crate) struct Value(SqlValue);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        self.0.to_sql()
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self(SqlValue::Integer(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self(SqlValue::Integer(i64::from(v)))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self(SqlValue::Text(v.to_owned()))
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Self(SqlValue::Text(v))
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self(SqlValue::Text(v.clone()))
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Self(SqlValue::Blob(v.to_vec()))
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        v.as_deref().into()
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self(SqlValue::Null), Into::into)
    }
}

/// A step text with its parameters, bound as a sqlx query is (`.bind(..)` in `$1`, `$2`, ... order),
/// so that [`write_step`] binds both backends' queries with the same code.
#[derive(Debug)]
pub(crate) struct Binder<'a> {
    sql: &'a str,
    values: Vec<Value>,
}

impl<'a> Binder<'a> {
    pub(crate) fn new(sql: &'a str) -> Self {
        Self {
            sql,
            values: Vec::with_capacity(24),
        }
    }

    #[allow(clippy::should_implement_trait)]
    pub(crate) fn bind<T: Into<Value>>(mut self, v: T) -> Self {
        self.values.push(v.into());
        self
    }
}

/// A row a step returns, decoded from [`SyncConn`]'s rows (sqlx's `FromRow` on the other path).
pub(crate) trait StepRow: Sized {
    /// Decodes `row`, whose columns are named in `columns`.
    fn from_step_row(row: &rusqlite::Row<'_>, columns: &Columns<'_>) -> rusqlite::Result<Self>;
}

macro_rules! step_row_tuple {
    ($($t:ident $i:tt),+) => {
        impl<$($t: rusqlite::types::FromSql),+> StepRow for ($($t,)+) {
            fn from_step_row(row: &rusqlite::Row<'_>, _: &Columns<'_>) -> rusqlite::Result<Self> {
                Ok(($(row.get::<_, $t>($i)?,)+))
            }
        }
    };
}
step_row_tuple!(A 0);
step_row_tuple!(A 0, B 1);
step_row_tuple!(A 0, B 1, C 2);

/// Implements [`StepRow`] for a row struct by column name, as sqlx's `FromRow` does: the fields
/// after `flatten` are row structs of their own, read from the same row.
macro_rules! step_row {
    ($t:ty { $($f:ident),* $(,)? } $(flatten { $($g:ident),* $(,)? })?) => {
        impl $crate::step::StepRow for $t {
            fn from_step_row(
                row: &rusqlite::Row<'_>,
                columns: &$crate::step::Columns<'_>,
            ) -> rusqlite::Result<Self> {
                Ok(Self {
                    $($f: row.get(columns.index(stringify!($f))?)?,)*
                    $($($g: $crate::step::StepRow::from_step_row(row, columns)?,)*)?
                })
            }
        }
    };
}
pub(crate) use step_row;

/// A step waiting for the writer (see [`sqlite_sync`]): the writer runs it, alone or in a group,
/// and hands its result to its caller once the transaction's fate is known. It may run again
/// alone when the group it ran in failed as a whole.
pub(crate) trait Pending: Send {
    /// Runs the step, as written or inside a group's transaction, keeping its rows; false if it
    /// failed.
    fn run(&mut self, conn: &mut SyncConn, grouped: bool) -> bool;
    /// Hands the rows to the caller: `Ok` when the transaction committed, else why not.
    fn deliver(self: Box<Self>, committed: std::result::Result<(), String>);
}
pub(crate) type Queued = Box<dyn Pending>;

/// A [`Pending`] step whose rows decode as `O`.
struct StepOf<O> {
    step: Binder<'static>,
    rows: Option<Result<Vec<O>>>,
    tx: tokio::sync::oneshot::Sender<Result<Vec<O>>>,
}

impl<O: StepRow + Send + 'static> Pending for StepOf<O> {
    fn run(&mut self, conn: &mut SyncConn, grouped: bool) -> bool {
        let rows = if grouped {
            conn.run_grouped::<O>(&self.step)
        } else {
            conn.run::<O>(&self.step)
        };
        let ok = rows.is_ok();
        self.rows = Some(rows);
        ok
    }

    fn deliver(self: Box<Self>, committed: std::result::Result<(), String>) {
        let result = match (committed, self.rows) {
            (Ok(()), Some(rows)) => rows,
            (Ok(()), None) => Err(StoreError::Commit("the step did not run".into())),
            (Err(e), _) => Err(StoreError::Commit(e)),
        };
        let _ = self.tx.send(result);
    }
}

/// Runs `step` (statements between `BEGIN IMMEDIATE` and `COMMIT`) on the SQLite writer's
/// calling-thread handle and returns every row its statements return.
///
/// Group commit: the step is queued, and whoever next holds the writer lets the tasks ready on its
/// thread run first, then runs every step queued by then. One alone runs as written (a failure
/// midway is rolled back at once, or the handle is dropped); several run in one transaction and
/// commit once: one commit and one write of each page they share (the tail of the audit log, the
/// job and transfer indexes) instead of one per step. If one of them fails, the group is rolled
/// back and its steps run again alone, so that a failed step undoes itself only. Each caller gets
/// its result after the commit. A caller that gives up while its step is still queued takes it
/// out; once taken by a writer, the step runs.
pub(crate) async fn sqlite_sync<O: StepRow + Send + 'static>(
    writer: &Writer,
    step: Binder<'static>,
) -> Result<Vec<O>> {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<Result<Vec<O>>>();
    let queued: Queued = Box::new(StepOf {
        step,
        rows: None,
        tx,
    });
    let _queued = writer.enqueue(queued);
    loop {
        tokio::select! {
            biased;
            r = &mut rx => {
                return r.map_err(|_| StoreError::Commit("the writer stopped".into()))?;
            }
            lease = writer.lease() => {
                let mut lease = lease?;
                // Tasks already runnable on this thread reach their writes first and join the
                // group: a fifth fewer bytes written per transfer under load (PERFORMANCE.md,
                // round 10), at the cost of one trip through the scheduler.
                tokio::task::yield_now().await;
                let batch = writer.take_queued();
                run_batch(&mut lease, batch);
                lease.finish();
            }
        }
    }
}

/// Runs the steps taken from the writer's queue (see [`sqlite_sync`]) and hands out their results.
fn run_batch(lease: &mut crate::writer::Lease<'_>, mut batch: Vec<Queued>) {
    if batch.len() <= 1 {
        // Alone (or none: every step queued was run by an earlier holder).
        if let Some(q) = batch.pop() {
            run_alone(lease, q);
        }
        return;
    }
    let conn = match lease.sync() {
        Ok(c) => c,
        Err(e) => {
            // Not run: dropping a step tells its caller the writer stopped.
            tracing::warn!(error = %e, steps = batch.len(), "sqlite writer unavailable");
            return;
        }
    };
    if let Err(e) = conn.conn.execute_batch("BEGIN IMMEDIATE") {
        tracing::warn!(error = %e, steps = batch.len(), "sqlite writer could not begin");
        return;
    }
    // A step that fails leaves the group's transaction in no state to commit (its statements
    // before the failing one stand): the rest do not run, and all run again alone.
    let failed = batch.iter_mut().any(|q| !q.run(conn, true));
    let committed = if failed {
        Err("one of its steps failed".to_owned())
    } else {
        conn.conn.execute_batch("COMMIT").map_err(|e| e.to_string())
    };
    match committed {
        Ok(()) => {
            for q in batch {
                q.deliver(Ok(()));
            }
        }
        Err(e) => {
            // The whole transaction is undone (a failed step, a full disk, an I/O error, one
            // step's RAISE(ROLLBACK)): each step runs again alone, so every caller learns what
            // its own step does.
            tracing::warn!(error = %e, steps = batch.len(), "a write group failed; its steps run one by one");
            if !conn.rolled_back() {
                lease.drop_sync();
            }
            for q in batch {
                run_alone(lease, q);
            }
        }
    }
}

/// Runs one step as written (its own `BEGIN IMMEDIATE` and `COMMIT`) and hands out its result.
fn run_alone(lease: &mut crate::writer::Lease<'_>, mut q: Queued) {
    let conn = match lease.sync() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "sqlite writer unavailable");
            return;
        }
    };
    let _ = q.run(conn, false);
    if !conn.rolled_back() {
        lease.drop_sync();
    }
    q.deliver(Ok(()));
}

/// Runs one write step: `$sqlite` (statements between `BEGIN IMMEDIATE` and `COMMIT`) on the
/// SQLite writer's calling-thread handle, or `$postgres` (one statement) on PostgreSQL, with the
/// parameters `$bind` adds to `$q`; evaluates to the rows returned, decoded as the type the caller
/// names.
macro_rules! write_step {
    ($store:expr, $sqlite:expr, $postgres:expr, |$q:ident| $bind:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { writer, .. } => {
                let $q = $crate::step::Binder::new(&$sqlite);
                $crate::step::sqlite_sync(writer, $bind).await?
            }
            $crate::Db::Postgres(pool) => {
                let $q = sqlx::query_as(&$postgres);
                $bind.fetch_all(pool).await?
            }
        }
    };
}
pub(crate) use write_step;

/// A write step of one statement, `$sql` (a literal, or a macro that expands to one, ending in
/// `RETURNING ...`): the same text on both backends, between `BEGIN IMMEDIATE` and `COMMIT` on
/// SQLite.
macro_rules! write_one {
    ($store:expr, $sql:expr, |$q:ident| $bind:expr) => {
        $crate::step::write_step!(
            $store,
            concat!("BEGIN IMMEDIATE;\n", $sql, ";\nCOMMIT"),
            $sql,
            |$q| $bind
        )
    };
}
pub(crate) use write_one;

/// Runs one read, `$sql` with the parameters `$bind` adds to `$q`, on SQLite in the calling thread
/// (see `readers`) or on the PostgreSQL pool; evaluates to every row, decoded as the type the
/// caller names.
macro_rules! read_rows {
    ($store:expr, $sql:expr, |$q:ident| $bind:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { read, .. } => {
                let $q = $crate::step::Binder::new(&$sql);
                read.sync_rows($bind)?
            }
            $crate::Db::Postgres(pool) => {
                let $q = sqlx::query_as(&$sql);
                $bind.fetch_all(pool).await?
            }
        }
    };
}
pub(crate) use read_rows;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::{Binder, split_statements, sqlite_sync};
    use crate::writer::Writer;
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;
    use std::sync::Arc;
    use std::time::Duration;

    const INSERT: &str = "BEGIN IMMEDIATE; INSERT INTO t VALUES ($1) RETURNING n; COMMIT";
    const PAIR: &str =
        "BEGIN IMMEDIATE; INSERT INTO t VALUES ($1); INSERT INTO t VALUES ($2); COMMIT";

    async fn writer(dir: &tempfile::TempDir) -> Arc<Writer> {
        let url = format!("sqlite:{}", dir.path().join("s.db").display());
        let opts = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let w = Writer::open(opts, Duration::from_secs(5)).await.unwrap();
        let mut l = w.lease().await.unwrap();
        sqlx::raw_sql("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .execute(l.conn().unwrap())
            .await
            .unwrap();
        l.finish();
        Arc::new(w)
    }

    async fn rows(w: &Writer) -> Vec<i64> {
        let mut l = w.lease().await.unwrap();
        let n = sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(l.conn().unwrap())
            .await
            .unwrap();
        l.finish();
        n
    }

    async fn until_queued(w: &Writer, n: usize) {
        for _ in 0..1000 {
            if w.queued_len() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("never {n} steps queued");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn steps_queued_together_commit_together_and_a_failed_one_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        // The writer is busy, so the steps queue up behind it and the next holder runs them all.
        let held = w.lease().await.unwrap();
        let mut tasks = Vec::new();
        // The fifth step inserts 7, then 3 again, which breaks the primary key: it must undo its 7.
        for n in [1_i64, 2, 3, 4, 0, 5] {
            let mine = w.clone();
            tasks.push(tokio::spawn(async move {
                let step = match n {
                    0 => Binder::new(PAIR).bind(7_i64).bind(3_i64),
                    n => Binder::new(INSERT).bind(n),
                };
                sqlite_sync::<(i64,)>(&mine, step).await
            }));
            until_queued(&w, tasks.len()).await;
        }
        held.finish();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap().map_err(|e| e.to_string()));
        }
        assert_eq!(
            results[..4],
            [
                Ok(vec![(1,)]),
                Ok(vec![(2,)]),
                Ok(vec![(3,)]),
                Ok(vec![(4,)])
            ]
        );
        assert!(
            results[4].as_ref().unwrap_err().contains("UNIQUE"),
            "{results:?}"
        );
        assert_eq!(results[5], Ok(vec![(5,)]));
        assert_eq!(rows(&w).await, [1, 2, 3, 4, 5]);
        // And the writer goes on as before.
        sqlite_sync::<(i64,)>(&w, Binder::new(INSERT).bind(6_i64))
            .await
            .unwrap();
        assert_eq!(rows(&w).await.len(), 6);
    }

    /// Commits in the write-ahead log so far (frames that end a transaction, of its current salt).
    fn wal_commits(dir: &tempfile::TempDir) -> usize {
        let wal = std::fs::read(dir.path().join("s.db-wal")).unwrap_or_default();
        if wal.len() < 32 {
            return 0;
        }
        let word = |at: usize| u32::from_be_bytes([wal[at], wal[at + 1], wal[at + 2], wal[at + 3]]);
        let page = word(8) as usize;
        let salt = (word(16), word(20));
        let mut commits = 0;
        let mut at = 32;
        while at + 24 + page <= wal.len() && (word(at + 8), word(at + 12)) == salt {
            commits += usize::from(word(at + 4) != 0);
            at += 24 + page;
        }
        commits
    }

    #[tokio::test]
    async fn a_step_ready_on_the_holders_thread_joins_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        let before = wal_commits(&dir);
        // One thread: the first task takes the free writer, and the second reaches its write
        // before the first commits, so both commit together.
        let tasks: Vec<_> = [1_i64, 2]
            .into_iter()
            .map(|n| {
                let mine = w.clone();
                tokio::spawn(async move {
                    sqlite_sync::<(i64,)>(&mine, Binder::new(INSERT).bind(n)).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(rows(&w).await, [1, 2]);
        assert_eq!(wal_commits(&dir) - before, 1, "two steps, one commit");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_whose_transaction_ends_early_commits_nothing_and_its_steps_run_alone() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        {
            // A failure that rolls back the whole transaction, savepoints and all, as some of
            // SQLite's errors do (a full disk, an I/O error).
            let mut l = w.lease().await.unwrap();
            sqlx::raw_sql(
                "CREATE TRIGGER no99 BEFORE INSERT ON t WHEN NEW.n = 99
                 BEGIN SELECT RAISE(ROLLBACK, 'refused for the test'); END",
            )
            .execute(l.conn().unwrap())
            .await
            .unwrap();
            l.finish();
        }
        let held = w.lease().await.unwrap();
        let mut tasks = Vec::new();
        for n in [1_i64, 99, 2] {
            let mine = w.clone();
            tasks.push(tokio::spawn(async move {
                sqlite_sync::<(i64,)>(&mine, Binder::new(INSERT).bind(n)).await
            }));
            until_queued(&w, tasks.len()).await;
        }
        held.finish();
        // The group commits nothing; each step then runs alone, and each caller is told what its
        // own step did: the others were not failed for the one that rolled back.
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap().ok());
        }
        assert_eq!(results, [Some(vec![(1,)]), None, Some(vec![(2,)])]);
        assert_eq!(rows(&w).await, [1, 2]);
        sqlite_sync::<(i64,)>(&w, Binder::new(INSERT).bind(3_i64))
            .await
            .unwrap();
        assert_eq!(rows(&w).await, [1, 2, 3]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_step_given_up_while_queued_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        let held = w.lease().await.unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            sqlite_sync::<(i64,)>(&w, Binder::new(INSERT).bind(1_i64)),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(w.queued_len(), 0, "the step left the queue with its caller");
        held.finish();
        sqlite_sync::<(i64,)>(&w, Binder::new(INSERT).bind(2_i64))
            .await
            .unwrap();
        assert_eq!(rows(&w).await, [2]);
    }

    #[test]
    fn a_step_text_splits_at_semicolons_outside_quotes() {
        assert_eq!(
            split_statements("BEGIN;\nSELECT ';', \"a;b\" FROM t WHERE x = 'it''s;';\n COMMIT ;\n"),
            [
                "BEGIN",
                "SELECT ';', \"a;b\" FROM t WHERE x = 'it''s;'",
                "COMMIT"
            ]
        );
    }

    #[tokio::test]
    async fn the_log_file_shrinks_back_to_its_limit_after_a_burst_it_could_not_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&dir).await;
        let file = dir.path().join("s.db");
        let wal = || {
            std::fs::metadata(dir.path().join("s.db-wal"))
                .unwrap()
                .len()
        };
        let limit: u64 = crate::WAL_SIZE_LIMIT.parse().unwrap();
        let mut l = w.lease().await.unwrap();
        sqlx::raw_sql("CREATE TABLE b (x BLOB)")
            .execute(l.conn().unwrap())
            .await
            .unwrap();
        l.finish();
        // A reader's open snapshot keeps every frame written after it in the log.
        let reader = rusqlite::Connection::open(&file).unwrap();
        reader
            .execute_batch("BEGIN; SELECT COUNT(*) FROM t;")
            .unwrap();
        let burst = "BEGIN IMMEDIATE; INSERT INTO b VALUES (zeroblob(1048576)); COMMIT";
        for _ in 0..(limit / 1_048_576 + 8) {
            sqlite_sync::<(i64,)>(&w, Binder::new(burst)).await.unwrap();
        }
        assert!(wal() > limit, "{} bytes", wal());
        reader.execute_batch("COMMIT").unwrap();
        let (busy, _, _): (i64, i64, i64) = reader
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0);
        // The next write starts the log again from its beginning and cuts the file to the limit.
        sqlite_sync::<(i64,)>(&w, Binder::new(INSERT).bind(1_i64))
            .await
            .unwrap();
        assert!(wal() <= limit, "{} bytes", wal());
    }

    /// A row struct as the store's rows are: decoded by field name, in any column order.
    #[derive(Debug, PartialEq)]
    struct Named {
        b: String,
        a: i64,
    }
    super::step_row!(Named { b, a });

    #[derive(Debug, PartialEq)]
    struct Outer {
        c: Option<i64>,
        inner: Named,
    }
    super::step_row!(Outer { c } flatten { inner });

    #[test]
    fn rows_decode_by_column_name_in_any_order_also_after_the_columns_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.db");
        rusqlite::Connection::open(&file)
            .unwrap()
            .execute_batch("CREATE TABLE n (a INTEGER, b TEXT); INSERT INTO n VALUES (1, 'one')")
            .unwrap();
        let mut conn = super::SyncConn::open(&file).unwrap();
        const ALL: &str = "SELECT * FROM n";
        // Columns in another order than the fields, under aliases, twice (the names are kept).
        for _ in 0..2 {
            let rows: Vec<Named> = conn
                .run(&Binder::new(
                    "SELECT b, a FROM n; SELECT 2 AS a, 'two' AS b",
                ))
                .unwrap();
            assert_eq!(
                rows,
                [
                    Named {
                        b: "one".into(),
                        a: 1
                    },
                    Named {
                        b: "two".into(),
                        a: 2
                    }
                ]
            );
        }
        let wrong = conn.run::<Named>(&Binder::new("SELECT a FROM n"));
        assert!(wrong.unwrap_err().to_string().contains('b'));
        assert!(
            conn.run::<Outer>(&Binder::new(ALL)).is_err(),
            "no column c yet"
        );
        // A migration adds a column: the same text now returns it, and it is found by its name.
        conn.run::<(i64,)>(&Binder::new(
            "ALTER TABLE n ADD COLUMN c INTEGER; UPDATE n SET c = 5",
        ))
        .unwrap();
        let rows: Vec<Outer> = conn.run(&Binder::new(ALL)).unwrap();
        assert_eq!(
            rows,
            [Outer {
                c: Some(5),
                inner: Named {
                    b: "one".into(),
                    a: 1
                }
            }]
        );
    }
}
