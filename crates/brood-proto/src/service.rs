//! The trigger point of a service-pool member (issue 10): the agent of a
//! guest booted with [`TRIGGER_CMDLINE`] on its kernel command line
//! announces the point [`TRIGGER_POINT`] once hardware discovery is done
//! and blocks there; the host pauses the VM. When the member is handed
//! out, the host resumes it and answers the point with a
//! [`ServiceConfig`] (postcard, [`encode_config`]), which the agent turns
//! into files under its service directory and runs.
//!
//! This module owns the message only; what the agent does with it is
//! brood-agent's `trigger` module, how the host picks members broodd's
//! `pool` module.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The name of the point a pool member waits at.
pub const TRIGGER_POINT: &str = "trigger";
/// The point a differentiated member announces once its class's probe
/// passed in the guest: the service answers.
pub const READY_POINT: &str = "trigger.ready";
/// The point a differentiated member announces when its start script or
/// its probe failed (`status` in the service directory says why).
pub const FAILED_POINT: &str = "trigger.failed";
/// The key-value that tells the member how long its probe may take (ms).
pub const PROBE_TIMEOUT_KEY: &str = "probe_timeout_ms";
/// The kernel command-line word that makes the agent go to the trigger point.
pub const TRIGGER_CMDLINE: &str = "brood.trigger";
/// Most key-values in a configuration.
pub const MAX_CONFIG_VALUES: usize = 256;
/// Longest key, in bytes (`[A-Za-z0-9_]`).
pub const MAX_CONFIG_KEY: usize = 64;
/// Most files in a configuration.
pub const MAX_CONFIG_FILES: usize = 16;
/// Longest encoded configuration, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// What a member becomes: the host's answer at the trigger point.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceConfig {
    /// The class (`http`, `log`, `dns`...).
    pub class: String,
    /// The service's uuid, as text.
    pub service: String,
    /// The service's name (also the guest's new hostname).
    pub name: String,
    /// Key-values (`domain_pairing`, `device_pairing`, class parameters):
    /// exported to the class scripts as `BROOD_<KEY>` (upper-cased).
    pub values: BTreeMap<String, String>,
    /// Files to write into the service directory by name (`start.sh`,
    /// `probe.sh`, `init.sh`): names of `[A-Za-z0-9_.-]`, no leading dot.
    pub files: BTreeMap<String, String>,
    /// Fresh entropy the guest mixes into its RNG: a clone of a member must
    /// not share its parent's random state.
    #[serde(with = "serde_bytes")]
    pub seed: Vec<u8>,
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// It did not decode.
    #[error("the service configuration does not decode")]
    Decode,
    /// It is too large.
    #[error("the service configuration is {len} bytes, over the {MAX_CONFIG_BYTES}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A key or file name is not allowed.
    #[error("invalid {what} {name:?}")]
    Name {
        /// `key` or `file name`.
        what: &'static str,
        /// The refused name, cut.
        name: String,
    },
    /// Too many entries.
    #[error("too many {what}: {count}, at most {max}")]
    TooMany {
        /// `values` or `files`.
        what: &'static str,
        /// How many there were.
        count: usize,
        /// The limit.
        max: usize,
    },
}

/// Whether `key` may be a configuration key: 1-64 of `[A-Za-z0-9_]`.
pub fn is_config_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_CONFIG_KEY
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `name` may be a file of a configuration: 1-64 of
/// `[A-Za-z0-9_.-]`, not starting with a dot.
pub fn is_config_file(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}

impl ServiceConfig {
    /// Checks the limits on keys and files.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.values.len() > MAX_CONFIG_VALUES {
            return Err(ConfigError::TooMany {
                what: "values",
                count: self.values.len(),
                max: MAX_CONFIG_VALUES,
            });
        }
        if self.files.len() > MAX_CONFIG_FILES {
            return Err(ConfigError::TooMany {
                what: "files",
                count: self.files.len(),
                max: MAX_CONFIG_FILES,
            });
        }
        if let Some(k) = self.values.keys().find(|k| !is_config_key(k)) {
            return Err(ConfigError::Name {
                what: "key",
                name: cut(k),
            });
        }
        if let Some(f) = self.files.keys().find(|f| !is_config_file(f)) {
            return Err(ConfigError::Name {
                what: "file name",
                name: cut(f),
            });
        }
        Ok(())
    }
}

/// Encodes a configuration (checked first).
pub fn encode_config(cfg: &ServiceConfig) -> Result<Vec<u8>, ConfigError> {
    cfg.check()?;
    let bytes = postcard::to_allocvec(cfg).map_err(|_| ConfigError::Decode)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// Decodes and checks a configuration from hostile bytes.
pub fn decode_config(bytes: &[u8]) -> Result<ServiceConfig, ConfigError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { len: bytes.len() });
    }
    let cfg: ServiceConfig = postcard::from_bytes(bytes).map_err(|_| ConfigError::Decode)?;
    cfg.check()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let mut cfg = ServiceConfig {
            class: "http".into(),
            service: "u".into(),
            name: "web".into(),
            seed: vec![1, 2, 3],
            ..Default::default()
        };
        cfg.values.insert("domain_pairing".into(), "2".into());
        cfg.files.insert("start.sh".into(), "httpd".into());
        let bytes = encode_config(&cfg).unwrap();
        assert_eq!(decode_config(&bytes).unwrap(), cfg);
        for n in 0..bytes.len() {
            let _ = decode_config(&bytes[..n]);
        }
        let mut bad = cfg.clone();
        bad.values.insert("a=b".into(), "x".into());
        assert!(matches!(encode_config(&bad), Err(ConfigError::Name { .. })));
        let mut bad = cfg.clone();
        bad.files.insert("../x".into(), "x".into());
        assert!(encode_config(&bad).is_err());
        let mut bad = cfg;
        bad.files.insert(".hidden".into(), "x".into());
        assert!(encode_config(&bad).is_err());
        assert_eq!(decode_config(&[0xff; 8]), Err(ConfigError::Decode));
    }
}
