//! Service classes as data: a class is a directory with `class.toml` (flat
//! TOML: `key = "string"` or `key = number` lines and one `[defaults]`
//! table), `start.sh` and `probe.sh`. The built-ins (`images/classes/` in
//! the repository) are compiled in; `DATA_DIR/classes/<name>/` adds or
//! overrides classes without rebuilding brood. Files are read bounded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use brood_api::service as api;

use crate::host::{Host, HostError, HostResult};

/// Longest recipe file read, in bytes.
const MAX_RECIPE_BYTES: u64 = 256 * 1024;
/// The default readiness deadline.
const DEFAULT_PROBE_MS: u64 = 30_000;

/// The compiled-in classes: name and the text of their three files.
const BUILTIN: &[(&str, &str, &str, &str)] = &[
    (
        "http",
        include_str!("../../../../images/classes/http/class.toml"),
        include_str!("../../../../images/classes/http/start.sh"),
        include_str!("../../../../images/classes/http/probe.sh"),
    ),
    (
        "log",
        include_str!("../../../../images/classes/log/class.toml"),
        include_str!("../../../../images/classes/log/start.sh"),
        include_str!("../../../../images/classes/log/probe.sh"),
    ),
    (
        "syslog-tcp",
        include_str!("../../../../images/classes/syslog-tcp/class.toml"),
        include_str!("../../../../images/classes/syslog-tcp/start.sh"),
        include_str!("../../../../images/classes/syslog-tcp/probe.sh"),
    ),
    (
        "dns",
        include_str!("../../../../images/classes/dns/class.toml"),
        include_str!("../../../../images/classes/dns/start.sh"),
        include_str!("../../../../images/classes/dns/probe.sh"),
    ),
    (
        "dhcp",
        include_str!("../../../../images/classes/dhcp/class.toml"),
        include_str!("../../../../images/classes/dhcp/start.sh"),
        include_str!("../../../../images/classes/dhcp/probe.sh"),
    ),
    (
        "nfs",
        include_str!("../../../../images/classes/nfs/class.toml"),
        include_str!("../../../../images/classes/nfs/start.sh"),
        include_str!("../../../../images/classes/nfs/probe.sh"),
    ),
    (
        "switch",
        include_str!("../../../../images/classes/switch/class.toml"),
        include_str!("../../../../images/classes/switch/start.sh"),
        include_str!("../../../../images/classes/switch/probe.sh"),
    ),
];

/// A class recipe, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// Its name.
    pub name: String,
    /// What it is.
    pub description: String,
    /// The image it needs.
    pub image: String,
    /// Default guests per domain.
    pub domain_pairing: u32,
    /// Default devices per domain.
    pub device_pairing: u32,
    /// How long its probe may take to answer.
    pub probe_timeout_ms: u64,
    /// Default class parameters.
    pub defaults: BTreeMap<String, String>,
    /// `start.sh`.
    pub start: String,
    /// `probe.sh`.
    pub probe: String,
    /// Where it was read from.
    pub dir: String,
}

/// Whether `name` can be a class: 1-32 of `[a-z0-9-]`, starting with a letter.
pub fn is_class_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses the flat TOML of `class.toml`.
pub fn parse(
    name: &str,
    toml: &str,
    start: String,
    probe: String,
    dir: String,
) -> Result<Class, String> {
    let mut top: BTreeMap<String, String> = BTreeMap::new();
    let mut defaults = BTreeMap::new();
    let mut in_defaults = false;
    for (n, raw) in toml.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            if line == "[defaults]" {
                in_defaults = true;
                continue;
            }
            return Err(format!(
                "line {}: only a [defaults] table is allowed",
                n + 1
            ));
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: want key = value", n + 1))?;
        let (k, v) = (k.trim(), v.trim());
        if !brood_proto::service::is_config_key(k) {
            return Err(format!("line {}: bad key {k:?}", n + 1));
        }
        let value = if let Some(s) = v.strip_prefix('"') {
            s.strip_suffix('"')
                .filter(|s| !s.contains('"'))
                .ok_or_else(|| format!("line {}: unterminated string", n + 1))?
                .to_owned()
        } else if v.parse::<i64>().is_ok() {
            v.to_owned()
        } else {
            return Err(format!(
                "line {}: value of {k} must be a \"string\" or a number",
                n + 1
            ));
        };
        if in_defaults {
            defaults.insert(k.to_owned(), value);
        } else {
            top.insert(k.to_owned(), value);
        }
    }
    let num = |k: &str, d: u64| -> Result<u64, String> {
        top.get(k).map_or(Ok(d), |v| {
            v.parse().map_err(|_| format!("{k} must be a number"))
        })
    };
    Ok(Class {
        name: name.to_owned(),
        description: top.get("description").cloned().unwrap_or_default(),
        image: top
            .get("image")
            .cloned()
            .unwrap_or_else(|| "default".into()),
        domain_pairing: u32::try_from(num("domain_pairing", 1)?.max(1)).unwrap_or(u32::MAX),
        device_pairing: u32::try_from(num("device_pairing", 1)?).unwrap_or(u32::MAX),
        probe_timeout_ms: num("probe_timeout_ms", DEFAULT_PROBE_MS)?.min(600_000),
        defaults,
        start,
        probe,
        dir,
    })
}

fn operator_dir(host: &Host) -> PathBuf {
    host.paths.data.join("classes")
}

async fn read_bounded(path: &Path) -> HostResult<String> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| HostError::io(format!("read {}", path.display()), e))?;
    if meta.len() > MAX_RECIPE_BYTES {
        return Err(HostError::invalid(format!(
            "{} is {} bytes, over the {MAX_RECIPE_BYTES}-byte limit of a recipe file",
            path.display(),
            meta.len()
        )));
    }
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| HostError::io(format!("read {}", path.display()), e))
}

/// Loads class `name`: the operator's directory first, then the built-ins.
pub async fn load(host: &Host, name: &str) -> HostResult<Class> {
    if !is_class_name(name) {
        return Err(HostError::invalid(format!(
            "class {name:?} is not a class name: want 1-32 of [a-z0-9-], starting with a letter"
        )));
    }
    let dir = operator_dir(host).join(name);
    if tokio::fs::metadata(&dir).await.is_ok() {
        let toml = read_bounded(&dir.join("class.toml")).await?;
        let start = read_bounded(&dir.join("start.sh")).await?;
        let probe = read_bounded(&dir.join("probe.sh")).await?;
        return parse(name, &toml, start, probe, dir.display().to_string()).map_err(|e| {
            HostError::invalid(format!("class {name}: {}/class.toml: {e}", dir.display()))
        });
    }
    match BUILTIN.iter().find(|(n, ..)| *n == name) {
        Some((n, toml, start, probe)) => parse(
            n,
            toml,
            (*start).to_owned(),
            (*probe).to_owned(),
            format!("built-in (images/classes/{n})"),
        )
        .map_err(|e| HostError::invalid(format!("built-in class {n}: {e}"))),
        None => {
            let known = names(host).await.join(", ");
            Err(HostError::invalid(format!(
                "no class {name:?}: known classes are {known}; add one as {}/{name}/{{class.toml,start.sh,probe.sh}}",
                operator_dir(host).display()
            )))
        }
    }
}

/// Every class name, built-in or the operator's.
pub async fn names(host: &Host) -> Vec<String> {
    let mut out: Vec<String> = BUILTIN.iter().map(|(n, ..)| (*n).to_owned()).collect();
    if let Ok(mut rd) = tokio::fs::read_dir(operator_dir(host)).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            let n = e.file_name().to_string_lossy().into_owned();
            if is_class_name(&n) && !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out.sort();
    out
}

/// Every class, as the API shows them (unreadable ones are skipped).
pub async fn list(host: &Host) -> Vec<api::ServiceClass> {
    let mut out = Vec::new();
    for n in names(host).await {
        if let Ok(c) = load(host, &n).await {
            out.push(api::ServiceClass {
                name: c.name,
                description: c.description,
                image: c.image,
                domain_pairing: c.domain_pairing,
                device_pairing: c.device_pairing,
                dir: c.dir,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses() {
        for (n, toml, start, probe) in BUILTIN {
            let c = parse(n, toml, (*start).into(), (*probe).into(), String::new()).unwrap();
            assert!(!c.description.is_empty(), "{n}");
            assert!(matches!(c.image.as_str(), "default" | "service"), "{n}");
        }
    }

    #[test]
    fn bad_recipes_are_refused() {
        let p = |t: &str| parse("x", t, String::new(), String::new(), String::new());
        assert!(p("[other]\n").is_err());
        assert!(p("a b = 1\n").is_err());
        assert!(p("a = \"open\n").is_err());
        assert!(p("a = bare\n").is_err());
        assert!(p("domain_pairing = \"x\"\n").is_err());
        let c = p("# c\ndomain_pairing = 3\n[defaults]\nport = \"80\"\n").unwrap();
        assert_eq!(c.domain_pairing, 3);
        assert_eq!(c.defaults.get("port").map(String::as_str), Some("80"));
        assert!(!is_class_name("Http"));
        assert!(!is_class_name("../x"));
    }
}
