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

/// One entry of `BATON_AGENT_KEYS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapKey {
    /// The agent's name.
    pub name: baton_shared::AgentName,
    /// Its key, in the clear (hashed before it is stored).
    pub key: String,
    /// The projects it may serve; None: any.
    pub projects: Option<Vec<baton_shared::ProjectName>>,
}

impl BootstrapKey {
    /// The grant as stored: comma-separated project names; None: any.
    pub fn grant(&self) -> Option<String> {
        self.projects
            .as_ref()
            .map(|ps| ps.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(","))
    }
}

/// Parses `BATON_AGENT_KEYS`: `name:key` (any project) or
/// `name:key:web+api` (only those; `*` for any), comma-separated.
pub fn parse_bootstrap(spec: &str) -> Result<Vec<BootstrapKey>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let (Some(name), Some(key)) = (parts.next(), parts.next()) else {
                return Err(
                    "BATON_AGENT_KEYS entries must look like name:key or name:key:web+api".to_owned(),
                );
            };
            let name = baton_shared::AgentName::new(name.trim())
                .map_err(|e| format!("BATON_AGENT_KEYS: {e}"))?;
            let key = key.trim();
            if key.len() < 16 {
                return Err(format!(
                    "BATON_AGENT_KEYS: the key for `{name}` is too short (at least 16 characters)"
                ));
            }
            let projects = match parts.next().map(str::trim) {
                None | Some("*") => None,
                Some(list) => Some(
                    list.split('+')
                        .map(|p| {
                            baton_shared::ProjectName::new(p.trim()).map_err(|e| {
                                format!(
                                    "BATON_AGENT_KEYS: the projects of `{name}` must look like web+api (or *): {e}"
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            Ok(BootstrapKey {
                name,
                key: key.to_owned(),
                projects,
            })
        })
        .collect()
}

/// The projects a stored grant allows: None for any (no grant, or `*`).
pub fn granted(stored: Option<&str>) -> Option<Vec<String>> {
    let stored = stored?.trim();
    if stored == "*" {
        return None;
    }
    Some(
        stored
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    )
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
        assert_eq!(keys[1].name.as_str(), "ci");
        assert_eq!(keys[1].projects, None, "name:key serves any project");
        let keys =
            parse_bootstrap("ci:fedcba9876543210:web+api,x:0123456789abcdef:*").expect("parses");
        assert_eq!(keys[0].key, "fedcba9876543210");
        assert_eq!(keys[0].grant().as_deref(), Some("web,api"));
        assert_eq!(keys[1].grant(), None, "* is any");
        assert!(parse_bootstrap("ci:fedcba9876543210:web+../x").is_err());
        assert!(parse_bootstrap("ci:fedcba9876543210:").is_err());
        assert_eq!(granted(None), None);
        assert_eq!(granted(Some("*")), None);
        assert_eq!(
            granted(Some("web,api")),
            Some(vec!["web".into(), "api".into()])
        );
        assert!(parse_bootstrap("nocolon").is_err());
        assert!(parse_bootstrap("x:short").is_err());
        assert!(parse_bootstrap("bad name:0123456789abcdef").is_err());
        assert!(parse_bootstrap("").expect("empty is fine").is_empty());
    }
}
