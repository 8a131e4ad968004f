//! Check values of the keys every process sharing the database must hold alike.

use crate::{Result, Store, on_pool};
use mydata_core::Timestamp;

impl Store {
    /// Records `check_value` for the key `name` if none is recorded yet, and returns the recorded
    /// one: the caller's when it was first, else the first process's.
    pub async fn key_check(&self, name: &str, check_value: &str, now: Timestamp) -> Result<String> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO key_checks (name, check_value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(check_value)
        .bind(now.millis())
        .execute(pool)
        .await
        .map(|_| ())?);
        let (stored,): (String,) = on_pool!(self, pool => sqlx::query_as(
            "SELECT check_value FROM key_checks WHERE name = $1",
        )
        .bind(name)
        .fetch_one(pool)
        .await?);
        Ok(stored)
    }

    /// Replaces the recorded check value of `name` by `to` if it is still `from` (a key replaced on
    /// purpose); false when it was not `from` any more.
    pub async fn replace_key_check(&self, name: &str, from: &str, to: &str) -> Result<bool> {
        let done = on_pool!(self, pool => sqlx::query(
            "UPDATE key_checks SET check_value = $3 WHERE name = $1 AND check_value = $2",
        )
        .bind(name)
        .bind(from)
        .bind(to)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(done == 1)
    }

    /// Every key check recorded: `(name, check value)`, by name.
    pub async fn recorded_key_checks(&self) -> Result<Vec<(String, String)>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT name, check_value FROM key_checks ORDER BY name",
        )
        .fetch_all(pool)
        .await?))
    }
}
