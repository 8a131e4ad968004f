//! What a fetch needs to know about the person: the ID number (or 統一編號), the identity method and
//! the assurance level reached. Held only while talking to agencies; wiped from memory on drop.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The subject of a fetch. `Debug` never shows the ID.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct FetchSubject {
    id: String,
    method: String,
    level: u8,
}

impl FetchSubject {
    /// `id` must already be validated by the caller (an `IdNumber` or `BusinessId`).
    pub fn new(id: &str, method: &str, level: u8) -> Self {
        Self {
            id: id.to_owned(),
            method: method.to_owned(),
            level,
        }
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn method(&self) -> &str {
        &self.method
    }
    pub fn level(&self) -> u8 {
        self.level
    }
}

impl std::fmt::Debug for FetchSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchSubject")
            .field("id", &"***")
            .field("method", &self.method)
            .field("level", &self.level)
            .finish()
    }
}
