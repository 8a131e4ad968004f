//! Test support: a fresh, migrated database per test, on SQLite or on a real PostgreSQL server.
//!
//! PostgreSQL tests need `MYDATA_TEST_POSTGRES_URL` pointing at a server where the user may create
//! databases; `scripts/test` starts a throwaway cluster and sets it. Without it the tests fail loudly:
//! a suite that skips its PostgreSQL half in silence would hide half the product.

use crate::{PoolSettings, Result, Store, StoreError};

/// Name of the variable that points the tests at a PostgreSQL server.
pub const POSTGRES_URL_VAR: &str = "MYDATA_TEST_POSTGRES_URL";

/// A database that lives as long as this value (SQLite: a temporary folder).
#[derive(Debug)]
pub struct TestDatabase {
    pub store: Store,
    pub url: String,
    /// For SQLite, the folder holding the database file; removed on drop.
    pub dir: Option<tempfile::TempDir>,
}

/// A fresh SQLite database in a temporary folder.
pub async fn fresh_sqlite() -> Result<TestDatabase> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
    let url = format!("sqlite://{}/mydata.db", dir.path().display());
    let store = Store::connect(&url, &PoolSettings::default()).await?;
    store.migrate().await?;
    Ok(TestDatabase {
        store,
        url,
        dir: Some(dir),
    })
}

/// The admin URL of the test PostgreSQL server; panics with instructions when it is not set.
#[allow(clippy::panic)]
pub fn postgres_admin_url() -> String {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{POSTGRES_URL_VAR} is not set: the PostgreSQL half of the test suite needs a server. \
             Run `scripts/test`, which starts a throwaway PostgreSQL cluster, or set {POSTGRES_URL_VAR} \
             to a server where this user may create databases."
        ),
    }
}

/// A fresh, migrated PostgreSQL database with a unique name on the test server.
pub async fn fresh_postgres() -> Result<TestDatabase> {
    let admin_url = postgres_admin_url();
    let name = format!("mydata_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Store::connect(
        &admin_url,
        &PoolSettings {
            max_connections: 1,
            ..Default::default()
        },
    )
    .await?;
    admin
        .execute_raw(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    admin.close().await;
    let url = with_database(&admin_url, &name)?;
    let store = Store::connect(&url, &PoolSettings::default()).await?;
    store.migrate().await?;
    Ok(TestDatabase {
        store,
        url,
        dir: None,
    })
}

/// Drops a test database (used to simulate a database that has gone away).
pub async fn drop_postgres_database(url: &str) -> Result<()> {
    let parsed = url::Url::parse(url).map_err(|e| StoreError::UnsupportedUrl(e.to_string()))?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    let admin = Store::connect(
        &postgres_admin_url(),
        &PoolSettings {
            max_connections: 1,
            ..Default::default()
        },
    )
    .await?;
    admin
        .execute_raw(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .await?;
    admin.close().await;
    Ok(())
}

fn with_database(url: &str, name: &str) -> Result<String> {
    let mut u = url::Url::parse(url).map_err(|e| StoreError::UnsupportedUrl(e.to_string()))?;
    u.set_path(&format!("/{name}"));
    Ok(u.to_string())
}

impl Store {
    /// Runs one statement that takes no parameters (test support only).
    pub async fn execute_raw(&self, sql: &str) -> Result<()> {
        crate::on_pool!(self, pool => sqlx::raw_sql(sql).execute(pool).await.map(|_| ()))?;
        Ok(())
    }
}

impl Store {
    /// Every job of `queue`, oldest first (test support only).
    pub async fn jobs_in_queue(&self, queue: &str) -> Result<Vec<crate::Job>> {
        let ids: Vec<String> = crate::on_read_pool!(self, pool => {
            sqlx::query_scalar("SELECT id FROM jobs WHERE queue = $1 ORDER BY created_at, id")
                .bind(queue)
                .fetch_all(pool)
                .await
        })?;
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.extend(self.job(&id).await?);
        }
        Ok(jobs)
    }

    /// Rows per table (migration bookkeeping left out), to show that a refused request changed
    /// nothing (test support only).
    pub async fn row_counts(&self) -> Result<std::collections::BTreeMap<String, i64>> {
        use sqlx::Row;
        let tables: Vec<String> = match &self.db {
            crate::Db::Sqlite { read, .. } => sqlx::query(
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
            )
            .fetch_all(read.lease().await?.conn()?)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?,
            crate::Db::Postgres(pool) => sqlx::query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
                 AND table_name NOT LIKE '\\_sqlx%'",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?,
        };
        let mut counts = std::collections::BTreeMap::new();
        for t in tables {
            // Table names come from the catalogue of the database itself, quoted.
            let sql = format!("SELECT COUNT(*) FROM \"{t}\"");
            let n: i64 = crate::on_pool!(self, pool => {
                sqlx::query_scalar(&sql).fetch_one(pool).await
            })?;
            counts.insert(t, n);
        }
        Ok(counts)
    }
}
