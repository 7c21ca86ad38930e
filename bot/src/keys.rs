//! Agent keys: random, shown once, stored only as a SHA-256 hash, bound to one name.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of keys Baton generates, so they are recognisable in a leak scan.
pub const KEY_PREFIX: &str = "baton_";
/// Random bytes in a generated key.
pub const KEY_BYTES: usize = 32;

/// A new random key.
pub fn generate() -> String {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a key.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Compares a presented key with a stored hash in constant time.
pub fn matches(key: &str, stored_hash: &str) -> bool {
    hash(key).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Parses `BATON_AGENT_KEYS` (`name:key,...`) into (name, key) pairs.
pub fn parse_bootstrap(spec: &str) -> Result<Vec<(baton_shared::AgentName, String)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (name, key) = pair
                .split_once(':')
                .ok_or_else(|| "BATON_AGENT_KEYS entries must look like name:key".to_owned())?;
            let name = baton_shared::AgentName::new(name.trim())
                .map_err(|e| format!("BATON_AGENT_KEYS: {e}"))?;
            let key = key.trim();
            if key.len() < 16 {
                return Err(format!(
                    "BATON_AGENT_KEYS: the key for `{name}` is too short (at least 16 characters)"
                ));
            }
            Ok((name, key.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hashed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX));
        assert_eq!(hash(&a).len(), 64);
        assert!(matches(&a, &hash(&a)));
        assert!(!matches(&b, &hash(&a)));
    }

    #[test]
    fn bootstrap_spec_parses() {
        let keys =
            parse_bootstrap("laptop:0123456789abcdef, ci : fedcba9876543210").expect("parses");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].0.as_str(), "ci");
        assert!(parse_bootstrap("nocolon").is_err());
        assert!(parse_bootstrap("x:short").is_err());
        assert!(parse_bootstrap("bad name:0123456789abcdef").is_err());
        assert!(parse_bootstrap("").expect("empty is fine").is_empty());
    }
}
