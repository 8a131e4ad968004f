//! In-process word that a transfer settled (its data fetched and packaged, or given up), so a page
//! held open for it answers at once instead of the person's browser asking again and again.
//!
//! Only a hint within one process: a transfer settled by another process is seen when the holding
//! page's time runs out and it reads the database again, exactly as without this. The same
//! structure, keyed by agency, tells a fetch job waiting for a busy agency that a call slot of this
//! process was freed ([`Settled::settle_one`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The transfers someone in this process is waiting for.
#[derive(Debug, Default)]
pub struct Settled {
    waiting: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

/// One waiter's interest in one transfer; dropping it withdraws the interest.
#[derive(Debug)]
pub struct Watch<'a> {
    owner: &'a Settled,
    id: String,
    notify: Arc<Notify>,
}

impl Settled {
    /// Starts watching `transfer_id`. Create the watch *before* reading the transfer's state, then
    /// wait on [`Watch::settled`]: a settlement between the read and the wait is not missed.
    pub fn watch(&self, transfer_id: &str) -> Watch<'_> {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let entry = w
            .entry(transfer_id.to_owned())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Watch {
            owner: self,
            id: transfer_id.to_owned(),
            notify: entry.0.clone(),
        }
    }

    /// Tells this process's waiters that `transfer_id` settled.
    pub fn settle(&self, transfer_id: &str) {
        let w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, _)) = w.get(transfer_id) {
            // Also stores a permit for a waiter between `watch` and its first poll.
            n.notify_waiters();
            n.notify_one();
        }
    }

    /// Wakes one of this process's waiters for `key` (or stores the wake-up for the next): for a
    /// freed slot, which only one waiter can take.
    pub fn settle_one(&self, key: &str) {
        let w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, _)) = w.get(key) {
            n.notify_one();
        }
    }

    #[cfg(test)]
    fn watched(&self) -> usize {
        self.waiting.lock().map(|w| w.len()).unwrap_or(0)
    }
}

impl Watch<'_> {
    /// Waits until the transfer settles or `limit` passes; true if it settled.
    pub async fn settled(&self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, self.notify.notified())
            .await
            .is_ok()
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut w = self.owner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = w.get_mut(&self.id) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                w.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_settlement_after_the_watch_began_wakes_the_waiter_even_before_it_waits() {
        let s = Settled::default();
        let w = s.watch("t1");
        s.settle("t1");
        assert!(w.settled(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn another_transfer_or_no_settlement_lets_the_time_run_out() {
        let s = Settled::default();
        let w = s.watch("t1");
        s.settle("t2");
        assert!(!w.settled(Duration::from_millis(20)).await);
    }

    #[tokio::test]
    async fn watches_are_forgotten_when_dropped() {
        let s = Settled::default();
        let a = s.watch("t1");
        let b = s.watch("t1");
        assert_eq!(s.watched(), 1);
        drop(a);
        assert_eq!(s.watched(), 1);
        drop(b);
        assert_eq!(s.watched(), 0);
        // Settling nobody's transfer is harmless.
        s.settle("t1");
        assert_eq!(s.watched(), 0);
    }
}
