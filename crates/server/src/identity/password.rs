//! Registered passwords (health-insurance card method): Argon2id with a random salt, PHC string.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Shortest password accepted.
pub const MIN_LEN: usize = 10;
/// Longest password accepted (Argon2 takes time proportional to nothing here, but bodies are bounded).
pub const MAX_LEN: usize = 128;

fn argon() -> Argon2<'static> {
    // OWASP's Argon2id baseline: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a new password is not accepted.
pub fn check_new(password: &str, confirm: &str) -> Result<(), &'static str> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Err("too_short");
    }
    if n > MAX_LEN {
        return Err("too_long");
    }
    if password != confirm {
        return Err("mismatch");
    }
    Ok(())
}

/// The PHC string to store.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches the stored PHC string (false for a malformed one).
pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| argon().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// Spends about the time of one verification, so that "no password registered" and "wrong
/// password" take the same time.
pub fn burn(password: &str) {
    let _ = hash(password);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip_and_rules() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterY", &h));
        assert!(!verify("x", "not a hash"));
        assert_eq!(check_new("short", "short"), Err("too_short"));
        assert_eq!(check_new("long enough 1", "long enough 2"), Err("mismatch"));
        assert_eq!(check_new("long enough 1", "long enough 1"), Ok(()));
    }
}
