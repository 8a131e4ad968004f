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

use crate::Result;
use crate::writer::Writer;
use sqlx::Sqlite;

/// Runs `query` — statements between `BEGIN IMMEDIATE` and `COMMIT` in one text, already bound — on
/// the SQLite writer and returns every row its statements return. If it fails midway, what it left
/// open is rolled back before the writer goes to the next (see `writer`).
pub(crate) async fn sqlite<'q, O>(
    writer: &Writer,
    query: sqlx::query::QueryAs<'q, Sqlite, O, sqlx::sqlite::SqliteArguments<'q>>,
) -> Result<Vec<O>>
where
    O: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    let mut lease = writer.lease().await?;
    // All rows, never just the first: the connection's thread stops running the text's statements
    // (COMMIT included) once the reader has what it asked for.
    match query.fetch_all(lease.conn()?).await {
        Ok(rows) => {
            lease.finish();
            Ok(rows)
        }
        Err(e) => {
            // A failed statement leaves the transaction open: COMMIT never ran.
            lease.recover().await;
            Err(e.into())
        }
    }
}

/// Runs one write step: `$sqlite` (statements between `BEGIN IMMEDIATE` and `COMMIT`) on the
/// SQLite writer, or `$postgres` (one statement) on PostgreSQL, with the parameters `$bind` adds
/// to `$q`; evaluates to the rows returned, decoded as the type the caller names.
macro_rules! write_step {
    ($store:expr, $sqlite:expr, $postgres:expr, |$q:ident| $bind:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { writer, .. } => {
                let $q = sqlx::query_as($sqlite);
                $crate::step::sqlite(writer, $bind).await?
            }
            $crate::Db::Postgres(pool) => {
                let $q = sqlx::query_as($postgres);
                $bind.fetch_all(pool).await?
            }
        }
    };
}
pub(crate) use write_step;
