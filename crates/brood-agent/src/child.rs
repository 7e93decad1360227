//! A forked child's configuration ([`ChildConfig`], from the host) as the
//! agent checks and passes it on: validation before anything is applied,
//! the JSON form written to `/etc/brood/child.json` and handed to a
//! `brood-agent fork-point` caller, and the environment of the dependent
//! services. Applying it is [`crate::fork`]'s job.
//!
//! The JSON is written by hand (the agent does not link serde_json) and
//! leaves out the entropy:
//!
//! ```text
//! {"index":3,"hostname":"web-3","macs":["52:54:00:01:02:03"],
//!  "ipv4":{"address":"10.0.0.3","prefix":24,"gateway":"10.0.0.1"},
//!  "identity":"dom-7","machine_id":"0123…","values":{"class":"dns"}}
//! ```
//!
//! `ipv4`, `gateway` and `identity` are `null` when absent. `values` keeps
//! the host's order; when a key repeats, the later value wins (in `jq` and
//! in the environment alike).

use std::fmt::Write as _;

use brood_proto::{ChildConfig, Ipv4Config};

use crate::system::{MAX_HOSTNAME, validate_hostname};

/// Fewest bytes of entropy a child accepts.
pub const MIN_ENTROPY: usize = 16;
/// Most bytes of entropy a child accepts.
pub const MAX_ENTROPY: usize = 4096;
/// Most key-values.
pub const MAX_VALUES: usize = 64;
/// Longest key.
pub const MAX_KEY: usize = 64;
/// Longest value, and longest identity.
pub const MAX_VALUE: usize = 4096;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// A field breaks its rule.
    #[error("invalid {field}: {rule}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What it must be.
        rule: String,
    },
}

fn invalid(field: &'static str, rule: impl Into<String>) -> ChildError {
    ChildError::Invalid {
        field,
        rule: rule.into(),
    }
}

/// Checks every field before any of them is applied.
pub fn validate(config: &ChildConfig) -> Result<(), ChildError> {
    if validate_hostname(&config.hostname).is_err() {
        return Err(invalid(
            "hostname",
            format!(
                "{:?}: want 1-{MAX_HOSTNAME} characters of [A-Za-z0-9-.], not starting with '-'",
                crate::console::cut(&config.hostname, 2 * MAX_HOSTNAME)
            ),
        ));
    }
    if config.machine_id.len() != 32
        || !config
            .machine_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid("machine_id", "want 32 lowercase hex digits"));
    }
    if !(MIN_ENTROPY..=MAX_ENTROPY).contains(&config.entropy.len()) {
        return Err(invalid(
            "entropy",
            format!(
                "want {MIN_ENTROPY}-{MAX_ENTROPY} bytes, got {}",
                config.entropy.len()
            ),
        ));
    }
    if let Some(ipv4) = &config.ipv4
        && ipv4.prefix > 32
    {
        return Err(invalid(
            "ipv4",
            format!("prefix {} is over 32", ipv4.prefix),
        ));
    }
    for (i, mac) in config.macs.iter().enumerate() {
        if mac.first().is_some_and(|b| b & 1 != 0) || mac.iter().all(|b| *b == 0) {
            return Err(invalid(
                "macs",
                format!("{} (eth{i}) is not a unicast address", format_mac(mac)),
            ));
        }
    }
    if let Some(identity) = &config.identity
        && (identity.len() > MAX_VALUE || identity.contains('\0'))
    {
        return Err(invalid(
            "identity",
            format!("want at most {MAX_VALUE} bytes and no NUL"),
        ));
    }
    validate_values(&config.values)
}

fn validate_values(values: &[(String, String)]) -> Result<(), ChildError> {
    if values.len() > MAX_VALUES {
        return Err(invalid(
            "values",
            format!("want at most {MAX_VALUES}, got {}", values.len()),
        ));
    }
    for (key, value) in values {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_KEY
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !key_ok {
            return Err(invalid(
                "values",
                format!(
                    "key {:?}: want 1-{MAX_KEY} characters of [A-Za-z0-9_.-]",
                    crate::console::cut(key, 2 * MAX_KEY)
                ),
            ));
        }
        if value.len() > MAX_VALUE || value.contains('\0') {
            return Err(invalid(
                "values",
                format!("value of {key}: want at most {MAX_VALUE} bytes and no NUL"),
            ));
        }
    }
    Ok(())
}

/// `52:54:00:01:02:03`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

fn format_ipv4(addr: &[u8; 4]) -> String {
    let [a, b, c, d] = addr;
    format!("{a}.{b}.{c}.{d}")
}

/// The configuration without its entropy, as one line of JSON.
pub fn to_json(config: &ChildConfig) -> String {
    let mut out = String::with_capacity(256);
    let _ = write!(out, "{{\"index\":{},\"hostname\":", config.index);
    json_string(&mut out, &config.hostname);
    out.push_str(",\"macs\":[");
    for (i, mac) in config.macs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, &format_mac(mac));
    }
    out.push_str("],\"ipv4\":");
    match &config.ipv4 {
        Some(ipv4) => json_ipv4(&mut out, ipv4),
        None => out.push_str("null"),
    }
    out.push_str(",\"identity\":");
    match &config.identity {
        Some(identity) => json_string(&mut out, identity),
        None => out.push_str("null"),
    }
    out.push_str(",\"machine_id\":");
    json_string(&mut out, &config.machine_id);
    out.push_str(",\"values\":{");
    for (i, (key, value)) in config.values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(&mut out, key);
        out.push(':');
        json_string(&mut out, value);
    }
    out.push_str("}}\n");
    out
}

fn json_ipv4(out: &mut String, ipv4: &Ipv4Config) {
    out.push_str("{\"address\":");
    json_string(out, &format_ipv4(&ipv4.address));
    let _ = write!(out, ",\"prefix\":{},\"gateway\":", ipv4.prefix);
    match &ipv4.gateway {
        Some(gateway) => json_string(out, &format_ipv4(gateway)),
        None => out.push_str("null"),
    }
    out.push('}');
}

/// Appends `text` as a JSON string (RFC 8259 escapes; other characters as is).
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The environment of the dependent services. `mac` is eth0's address
/// after the identity was applied, when it has one.
pub fn service_env(config: &ChildConfig, mac: Option<[u8; 6]>) -> Vec<(String, String)> {
    let mut env = vec![
        ("BROOD_CHILD_INDEX".to_owned(), config.index.to_string()),
        ("BROOD_HOSTNAME".to_owned(), config.hostname.clone()),
    ];
    if let Some(mac) = mac {
        env.push(("BROOD_MAC".to_owned(), format_mac(&mac)));
    }
    if let Some(ipv4) = &config.ipv4 {
        let address = format!("{}/{}", format_ipv4(&ipv4.address), ipv4.prefix);
        env.push(("BROOD_IPV4".to_owned(), address));
        if let Some(gateway) = &ipv4.gateway {
            env.push(("BROOD_GATEWAY".to_owned(), format_ipv4(gateway)));
        }
    }
    if let Some(identity) = &config.identity {
        env.push(("BROOD_IDENTITY".to_owned(), identity.clone()));
    }
    for (key, value) in &config.values {
        env.push((value_var(key), value.clone()));
    }
    env
}

/// `BROOD_VALUE_<KEY>`: the key uppercased, anything outside `[A-Z0-9_]` as `_`.
pub fn value_var(key: &str) -> String {
    let mut name = String::from("BROOD_VALUE_");
    name.extend(key.chars().map(|c| {
        let c = c.to_ascii_uppercase();
        if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChildConfig {
        ChildConfig {
            index: 3,
            hostname: "web-3".into(),
            macs: vec![[0x52, 0x54, 0, 1, 2, 3]],
            ipv4: Some(Ipv4Config {
                address: [10, 0, 0, 3],
                prefix: 24,
                gateway: Some([10, 0, 0, 1]),
            }),
            identity: Some("dom-7".into()),
            entropy: vec![9; 64],
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            values: vec![
                ("class".into(), "dns".into()),
                ("a.b-c".into(), "x\"y".into()),
            ],
            time_unix_ns: 0,
        }
    }

    #[test]
    fn json_form() {
        assert_eq!(
            to_json(&sample()),
            concat!(
                r#"{"index":3,"hostname":"web-3","macs":["52:54:00:01:02:03"],"#,
                r#""ipv4":{"address":"10.0.0.3","prefix":24,"gateway":"10.0.0.1"},"#,
                r#""identity":"dom-7","machine_id":"0123456789abcdef0123456789abcdef","#,
                r#""values":{"class":"dns","a.b-c":"x\"y"}}"#,
                "\n"
            )
        );
        let mut bare = sample();
        bare.ipv4 = None;
        bare.identity = None;
        bare.macs.clear();
        bare.values.clear();
        let json = to_json(&bare);
        assert!(
            json.contains(r#""macs":[],"ipv4":null,"identity":null"#),
            "{json}"
        );
        let mut out = String::new();
        json_string(&mut out, "a\\b\n\u{1}é");
        assert_eq!(out, r#""a\\b\n\u0001é""#);
    }

    #[test]
    fn environment() {
        let env = service_env(&sample(), Some([0x52, 0x54, 0, 1, 2, 3]));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BROOD_CHILD_INDEX"), Some("3"));
        assert_eq!(get("BROOD_MAC"), Some("52:54:00:01:02:03"));
        assert_eq!(get("BROOD_IPV4"), Some("10.0.0.3/24"));
        assert_eq!(get("BROOD_GATEWAY"), Some("10.0.0.1"));
        assert_eq!(get("BROOD_IDENTITY"), Some("dom-7"));
        assert_eq!(get("BROOD_VALUE_CLASS"), Some("dns"));
        assert_eq!(get("BROOD_VALUE_A_B_C"), Some("x\"y"));
        let mut bare = sample();
        bare.ipv4 = None;
        bare.identity = None;
        let env = service_env(&bare, None);
        assert!(env.iter().all(|(k, _)| !matches!(
            k.as_str(),
            "BROOD_MAC" | "BROOD_IPV4" | "BROOD_GATEWAY" | "BROOD_IDENTITY"
        )));
    }

    #[test]
    fn validation() {
        assert!(validate(&sample()).is_ok());
        /// Makes one field invalid.
        type Breaker = fn(&mut ChildConfig);
        let cases: Vec<(&str, Breaker)> = vec![
            ("hostname", |c| c.hostname = "bad name".into()),
            ("machine_id", |c| c.machine_id = "0123".into()),
            ("machine_id", |c| {
                c.machine_id = "0123456789ABCDEF0123456789abcdef".into()
            }),
            ("entropy", |c| c.entropy = vec![1; 15]),
            ("entropy", |c| c.entropy = vec![1; 4097]),
            ("ipv4", |c| c.ipv4.as_mut().unwrap().prefix = 33),
            ("macs", |c| c.macs.push([1, 0, 0, 0, 0, 1])),
            ("macs", |c| c.macs = vec![[0; 6]]),
            ("identity", |c| c.identity = Some("a\0b".into())),
            ("values", |c| c.values = vec![("k".into(), "v".into()); 65]),
            ("values", |c| c.values = vec![(String::new(), "v".into())]),
            ("values", |c| c.values = vec![("a b".into(), "v".into())]),
            ("values", |c| c.values = vec![("k".repeat(65), "v".into())]),
            ("values", |c| {
                c.values = vec![("k".into(), "v".repeat(4097))]
            }),
        ];
        for (field, break_it) in cases {
            let mut config = sample();
            break_it(&mut config);
            let err = validate(&config).unwrap_err();
            assert!(
                matches!(&err, ChildError::Invalid { field: f, .. } if *f == field),
                "{field}: {err}"
            );
        }
        let mut edge = sample();
        edge.entropy = vec![0; 16];
        edge.ipv4.as_mut().unwrap().prefix = 32;
        edge.values = vec![("k".repeat(64), "v".repeat(4096)); 64];
        assert!(validate(&edge).is_ok());
    }
}
