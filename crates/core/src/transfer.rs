//! The transfer: one single-use consent to move named datasets for one purpose to one recipient.
//!
//! All three flows (self-download, counter, online service) share this state machine:
//!
//! ```text
//! created ──consent──▶ fetching ──settled──▶ ready ──release──▶ delivered ──purge──▶ deleted
//!    │                    │                    │                                       ▲
//!    └─refuse─▶ refused   └────────────── expire (8 h) or cancel ─────────────────────┘
//! ```
//!
//! `delivered` happens at most once; `deleted`, `refused` and `expired` are terminal. Every
//! transition is one database transaction and one audit event (see the `store` crate).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Who receives the data of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferKind {
    /// 自行下載: the person downloads their own data.
    SelfDownload,
    /// 臨櫃核驗: a clerk at a registered counter.
    Counter,
    /// 線上服務: a registered online service.
    Online,
}

impl TransferKind {
    pub const ALL: [TransferKind; 3] = [
        TransferKind::SelfDownload,
        TransferKind::Counter,
        TransferKind::Online,
    ];

    pub fn code(self) -> &'static str {
        match self {
            TransferKind::SelfDownload => "self_download",
            TransferKind::Counter => "counter",
            TransferKind::Online => "online",
        }
    }
}

impl FromStr for TransferKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.code() == s)
            .ok_or_else(|| format!("unknown transfer kind `{s}`"))
    }
}

/// Where a transfer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    Created,
    Fetching,
    Ready,
    Delivered,
    Deleted,
    Refused,
    Expired,
}

/// What can happen to a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferEvent {
    /// The person consented: fetching starts.
    Consent,
    /// The person refused consent.
    Refuse,
    /// Every dataset fetch has settled (succeeded, failed or refused).
    Settled,
    /// The data was released to its recipient (saved, shown at the counter, retrieved by the service).
    Release,
    /// The released package and its key were destroyed.
    Purge,
    /// The 8-hour limit passed before release.
    Expire,
    /// The person cancelled before release.
    Cancel,
}

impl TransferState {
    pub const ALL: [TransferState; 7] = [
        TransferState::Created,
        TransferState::Fetching,
        TransferState::Ready,
        TransferState::Delivered,
        TransferState::Deleted,
        TransferState::Refused,
        TransferState::Expired,
    ];

    pub fn code(self) -> &'static str {
        match self {
            TransferState::Created => "created",
            TransferState::Fetching => "fetching",
            TransferState::Ready => "ready",
            TransferState::Delivered => "delivered",
            TransferState::Deleted => "deleted",
            TransferState::Refused => "refused",
            TransferState::Expired => "expired",
        }
    }

    /// No event leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TransferState::Deleted | TransferState::Refused | TransferState::Expired
        )
    }

    /// True while personal data may exist for the transfer (fetched or being fetched).
    pub fn may_hold_data(self) -> bool {
        matches!(
            self,
            TransferState::Fetching | TransferState::Ready | TransferState::Delivered
        )
    }

    /// The state after `event`, or the reason the event is not allowed now.
    pub fn next(self, event: TransferEvent) -> Result<TransferState, IllegalTransition> {
        use TransferEvent as E;
        use TransferState as S;
        let to = match (self, event) {
            (S::Created, E::Consent) => S::Fetching,
            (S::Created, E::Refuse) => S::Refused,
            (S::Fetching, E::Settled) => S::Ready,
            (S::Ready, E::Release) => S::Delivered,
            (S::Delivered, E::Purge) => S::Deleted,
            (S::Created | S::Fetching | S::Ready | S::Delivered, E::Expire) => S::Expired,
            (S::Created | S::Fetching | S::Ready, E::Cancel) => S::Expired,
            _ => return Err(IllegalTransition { from: self, event }),
        };
        Ok(to)
    }
}

impl fmt::Display for TransferState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for TransferState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.code() == s)
            .ok_or_else(|| format!("unknown transfer state `{s}`"))
    }
}

/// An event that the state machine does not allow in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a transfer in state `{from}` cannot take event {event:?}")]
pub struct IllegalTransition {
    pub from: TransferState,
    pub event: TransferEvent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EVENTS: [TransferEvent; 7] = [
        TransferEvent::Consent,
        TransferEvent::Refuse,
        TransferEvent::Settled,
        TransferEvent::Release,
        TransferEvent::Purge,
        TransferEvent::Expire,
        TransferEvent::Cancel,
    ];

    #[test]
    fn the_happy_path_reaches_deleted() {
        let mut s = TransferState::Created;
        for e in [
            TransferEvent::Consent,
            TransferEvent::Settled,
            TransferEvent::Release,
            TransferEvent::Purge,
        ] {
            s = s.next(e).unwrap();
        }
        assert_eq!(s, TransferState::Deleted);
    }

    #[test]
    fn codes_round_trip() {
        for s in TransferState::ALL {
            assert_eq!(s.code().parse::<TransferState>(), Ok(s));
        }
        for k in TransferKind::ALL {
            assert_eq!(k.code().parse::<TransferKind>(), Ok(k));
        }
    }

    #[test]
    fn released_transfer_cannot_be_cancelled_but_expires() {
        let d = TransferState::Delivered;
        assert!(d.next(TransferEvent::Cancel).is_err());
        assert_eq!(d.next(TransferEvent::Expire), Ok(TransferState::Expired));
    }

    proptest! {
        #[test]
        fn any_event_sequence_releases_at_most_once_and_terminals_stay(seq in proptest::collection::vec(0usize..7, 0..40)) {
            let mut s = TransferState::Created;
            let mut releases = 0;
            for i in seq {
                let e = EVENTS[i];
                match s.next(e) {
                    Ok(to) => {
                        prop_assert!(!s.is_terminal(), "left terminal state {s}");
                        if to == TransferState::Delivered { releases += 1; }
                        s = to;
                    }
                    Err(err) => prop_assert_eq!(err.from, s),
                }
            }
            prop_assert!(releases <= 1);
        }
    }

    #[test]
    fn only_ready_can_be_released() {
        for s in TransferState::ALL {
            assert_eq!(
                s.next(TransferEvent::Release).is_ok(),
                s == TransferState::Ready,
                "{s}"
            );
        }
    }
}
