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
}
