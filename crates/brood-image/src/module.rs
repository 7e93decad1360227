//! Kernel modules: parsing `modules.dep`, the dependency closure of the
//! requested modules, their load order, and decompressing `.ko.{xz,zst,gz}`.
//!
//! `modules.dep` is read as untrusted text: every malformed line is an error
//! naming the line, never a panic. Module names compare as modprobe compares
//! them, with `-` and `_` equal (`virtio-rng.ko` is the module `virtio_rng`).
//! The load order is a topological order that breaks ties by name, so it does
//! not depend on the order of lines in the file or of the request.
//! Soft dependencies (`modules.softdep`) are not followed.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path};
use std::process::{Command, Stdio};

use crate::ImageError;

/// File-name suffixes of modules, with the program (and its Debian package)
/// that decompresses each. The order matters: `.ko` is last because every
/// other suffix also ends in a compression extension, not in `.ko`.
const SUFFIXES: &[(&str, Option<(&str, &str)>)] = &[
    (".ko.xz", Some(("xz", "xz-utils"))),
    (".ko.zst", Some(("zstd", "zstd"))),
    (".ko.gz", Some(("gzip", "gzip"))),
    (".ko", None),
];

/// One module as listed in `modules.dep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModuleFile {
    /// The canonical name: the file stem with `-` replaced by `_`.
    pub name: String,
    /// The path relative to the modules directory, as written in modules.dep.
    pub rel_path: String,
    /// The canonical names of its dependencies, as modules.dep lists them.
    pub deps: Vec<String>,
}

impl ModuleFile {
    /// The path inside the modules directory with any compression suffix
    /// replaced by `.ko`: how the module is stored in the image.
    pub fn image_rel_path(&self) -> String {
        let stem = split_suffix(&self.rel_path).map_or(self.rel_path.as_str(), |(stem, _)| stem);
        format!("{stem}.ko")
    }

    /// The decompressor `(program, package)` this module needs, if any.
    pub fn decompressor(&self) -> Option<(&'static str, &'static str)> {
        split_suffix(&self.rel_path).and_then(|(_, program)| program)
    }
}

/// The parsed contents of one `modules.dep`.
#[derive(Debug, Default)]
pub(crate) struct ModuleDb {
    modules: BTreeMap<String, ModuleFile>,
}

/// The result of resolving a request against a [`ModuleDb`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// Every module to load, each after all of its dependencies.
    pub order: Vec<ModuleFile>,
    /// Requested modules built into the kernel, by canonical name, sorted.
    pub builtin: Vec<String>,
    /// Modules of `order` the guest loads only before it boots a disk it
    /// was given (`/etc/brood/modules.disk`), not at every boot.
    pub on_demand: BTreeSet<String>,
}

/// The canonical form of a module name: modprobe treats `-` and `_` alike.
pub(crate) fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Splits a module path into its stem and the decompressor its suffix needs.
fn split_suffix(path: &str) -> Option<(&str, Option<(&'static str, &'static str)>)> {
    SUFFIXES
        .iter()
        .find_map(|(suffix, program)| path.strip_suffix(suffix).map(|stem| (stem, *program)))
}

/// The canonical module name of a path from modules.dep or modules.builtin.
fn name_of(path: &str) -> Option<String> {
    let (stem, _) = split_suffix(path)?;
    let base = stem.rsplit('/').next().unwrap_or(stem);
    (!base.is_empty()).then(|| canonical_name(base))
}

/// Whether `path` is a plain relative path that stays inside its directory.
fn is_safe_relative(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

impl ModuleDb {
    /// Parses the text of `modules.dep`; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ImageError> {
        let mut db = ModuleDb::default();
        for (index, raw) in text.lines().enumerate() {
            let bad = |reason: String| ImageError::ModulesDep {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (module, deps) = line
                .split_once(':')
                .ok_or_else(|| bad("no `:` after the module path".to_string()))?;
            let module = module.trim();
            let name = checked_name(module).map_err(&bad)?;
            let deps = deps
                .split_whitespace()
                .map(|dep| checked_name(dep).map_err(&bad))
                .collect::<Result<Vec<_>, _>>()?;
            let file = ModuleFile {
                name: name.clone(),
                rel_path: module.to_string(),
                deps,
            };
            if let Some(previous) = db.modules.insert(name.clone(), file) {
                return Err(bad(format!(
                    "module {name} listed twice (also as {})",
                    previous.rel_path
                )));
            }
        }
        Ok(db)
    }

    /// Resolves `requested` (names in any `-`/`_` spelling) to the closure of
    /// their dependencies in load order. `builtin` holds the canonical names
    /// of modules built into the kernel (from `modules.builtin`); a requested
    /// module found only there is reported as built in rather than loaded.
    /// `release` and `dep_path` are only used in errors.
    pub fn resolve(
        &self,
        requested: &[String],
        builtin: &BTreeSet<String>,
        release: &str,
        dep_path: &Path,
    ) -> Result<Resolved, ImageError> {
        let mut closure: BTreeMap<&str, &ModuleFile> = BTreeMap::new();
        let mut builtin_hits = BTreeSet::new();
        let mut stack: Vec<&ModuleFile> = Vec::new();
        for request in requested {
            let name = canonical_name(request.trim());
            match self.modules.get(&name) {
                Some(file) => stack.push(file),
                None if builtin.contains(&name) => {
                    builtin_hits.insert(name);
                }
                None => {
                    return Err(ImageError::ModuleNotFound {
                        module: request.clone(),
                        release: release.to_string(),
                        path: dep_path.to_path_buf(),
                    });
                }
            }
        }
        while let Some(file) = stack.pop() {
            if closure.insert(&file.name, file).is_some() {
                continue;
            }
            for dep in &file.deps {
                let dep_file =
                    self.modules
                        .get(dep)
                        .ok_or_else(|| ImageError::ModuleDependencyMissing {
                            module: file.name.clone(),
                            dependency: dep.clone(),
                        })?;
                stack.push(dep_file);
            }
        }
        Ok(Resolved {
            order: topological_order(&closure)?,
            builtin: builtin_hits.into_iter().collect(),
            on_demand: BTreeSet::new(),
        })
    }
}

/// Validates a module path from modules.dep and returns its canonical name.
fn checked_name(path: &str) -> Result<String, String> {
    if !is_safe_relative(path) {
        return Err(format!(
            "module path {path:?} is not a relative path inside the modules directory"
        ));
    }
    name_of(path).ok_or_else(|| format!("{path:?} does not end in .ko, .ko.xz, .ko.zst or .ko.gz"))
}

/// Kahn's algorithm over `closure`, taking the smallest ready name first so the
/// order is deterministic. Every dependency is in `closure` (checked by the caller).
fn topological_order(closure: &BTreeMap<&str, &ModuleFile>) -> Result<Vec<ModuleFile>, ImageError> {
    // Unmet dependency count per module, and who waits on each module.
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, file) in closure {
        let deps: BTreeSet<&str> = file.deps.iter().map(String::as_str).collect();
        waiting.insert(name, deps.len());
        for dep in deps {
            dependents.entry(dep).or_default().push(name);
        }
    }
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, count)| **count == 0)
        .map(|(name, _)| *name)
        .collect();
    let mut order = Vec::with_capacity(closure.len());
    while let Some(name) = ready.pop_first() {
        waiting.remove(name);
        if let Some(file) = closure.get(name) {
            order.push((*file).clone());
        }
        for dependent in dependents.get(name).into_iter().flatten() {
            if let Some(count) = waiting.get_mut(dependent) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    ready.insert(dependent);
                }
            }
        }
    }
    if waiting.is_empty() {
        Ok(order)
    } else {
        Err(ImageError::ModuleCycle {
            modules: waiting.keys().copied().collect::<Vec<_>>().join(", "),
        })
    }
}

/// Parses `modules.builtin` (one module path per line) into canonical names.
/// Unparseable lines are skipped: this file only widens what counts as found.
pub(crate) fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| name_of(line.trim()))
        .collect()
}

/// Reads a module for the image: as is for `.ko`, through the real `xz`,
/// `zstd` or `gzip` program otherwise.
pub(crate) fn read_module(dir: &Path, file: &ModuleFile) -> Result<Vec<u8>, ImageError> {
    let path = dir.join(&file.rel_path);
    let Some((program, package)) = file.decompressor() else {
        return std::fs::read(&path).map_err(|source| ImageError::Read { path, source });
    };
    decompress(&path, program, package)
}

fn decompress(
    path: &Path,
    program: &'static str,
    package: &'static str,
) -> Result<Vec<u8>, ImageError> {
    let output = Command::new(program)
        .arg("-dc")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ImageError::DecompressorMissing {
                path: path.to_path_buf(),
                program,
                package,
            },
            _ => ImageError::DecompressorSpawn {
                path: path.to_path_buf(),
                program,
                source,
            },
        })?;
    if !output.status.success() {
        return Err(ImageError::Decompress {
            path: path.to_path_buf(),
            program,
            status: output.status,
            stderr: first_line(&output.stderr),
        });
    }
    Ok(output.stdout)
}

/// The first line of a program's stderr, for error messages.
pub(crate) fn first_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko.zst: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/fs/unrelated.ko:
";

    fn db(text: &str) -> Result<ModuleDb, ImageError> {
        ModuleDb::parse(text, Path::new("/m/modules.dep"))
    }

    fn resolve(text: &str, requested: &[&str]) -> Result<Resolved, ImageError> {
        let requested: Vec<String> = requested.iter().map(|s| s.to_string()).collect();
        db(text)?.resolve(
            &requested,
            &BTreeSet::new(),
            "6.1.0-test",
            Path::new("/m/modules.dep"),
        )
    }

    fn names(resolved: &Resolved) -> Vec<&str> {
        resolved.order.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn closure_is_in_dependency_order_and_excludes_the_rest() {
        let r = resolve(DEP, &["virtio_net", "virtio_mmio"]).unwrap();
        assert_eq!(
            names(&r),
            [
                "failover",
                "net_failover",
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_net"
            ]
        );
        for (i, m) in r.order.iter().enumerate() {
            for dep in &m.deps {
                let at = r.order.iter().position(|o| &o.name == dep).unwrap();
                assert!(at < i, "{dep} after {}", m.name);
            }
        }
    }

    #[test]
    fn order_does_not_depend_on_line_or_request_order() {
        let mut lines: Vec<&str> = DEP.lines().collect();
        lines.reverse();
        let reversed = lines.join("\n");
        let a = resolve(DEP, &["virtio_mmio", "virtio_net", "virtio-rng"]).unwrap();
        let b = resolve(&reversed, &["virtio-rng", "virtio_net", "virtio_mmio"]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn dash_and_underscore_are_the_same_name() {
        let r = resolve(DEP, &["virtio_rng", "virtio-mmio"]).unwrap();
        let rng = r.order.iter().find(|m| m.name == "virtio_rng").unwrap();
        assert_eq!(
            rng.rel_path,
            "kernel/drivers/char/hw_random/virtio-rng.ko.xz"
        );
        assert_eq!(
            rng.image_rel_path(),
            "kernel/drivers/char/hw_random/virtio-rng.ko"
        );
        assert_eq!(rng.decompressor(), Some(("xz", "xz-utils")));
        assert!(r.order.iter().any(|m| m.name == "virtio_mmio"));
    }

    #[test]
    fn missing_module_is_named() {
        let err = resolve(DEP, &["virtio_mmio", "virtio_gpu"]).unwrap_err();
        assert!(
            matches!(&err, ImageError::ModuleNotFound { module, .. } if module == "virtio_gpu"),
            "{err:?}"
        );
        assert!(err.to_string().contains("virtio_gpu"), "{err}");
    }

    #[test]
    fn builtin_module_is_reported_not_loaded() {
        let builtin = parse_builtin("kernel/drivers/virtio/virtio_pci.ko\nkernel/x/y.ko\n");
        let r = db(DEP)
            .unwrap()
            .resolve(
                &["virtio-pci".to_string(), "virtio_ring".to_string()],
                &builtin,
                "r",
                Path::new("/m/modules.dep"),
            )
            .unwrap();
        assert_eq!(r.builtin, ["virtio_pci"]);
        assert_eq!(names(&r), ["virtio_ring"]);
    }

    #[test]
    fn missing_dependency_is_named() {
        let err = resolve("a.ko: b.ko\n", &["a"]).unwrap_err();
        assert!(
            matches!(&err, ImageError::ModuleDependencyMissing { module, dependency } if module == "a" && dependency == "b"),
            "{err:?}"
        );
    }

    #[test]
    fn cycle_is_an_error_naming_its_members() {
        let text = "k/a.ko: k/b.ko\nk/b.ko: k/c.ko\nk/c.ko: k/a.ko\nk/d.ko:\nk/e.ko: k/a.ko\n";
        let err = resolve(text, &["e", "d"]).unwrap_err();
        match &err {
            ImageError::ModuleCycle { modules } => assert_eq!(modules, "a, b, c, e"),
            other => panic!("unexpected {other:?}"),
        }
        // A self-dependency is a cycle too.
        assert!(matches!(
            resolve("k/a.ko: k/a.ko\n", &["a"]),
            Err(ImageError::ModuleCycle { .. })
        ));
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for (text, line) in [
            ("a.ko:\nno colon here\n", 2),
            ("a.ko:\n\nb.txt: a.ko\n", 3),
            (": a.ko\n", 1),
            ("../../etc/passwd.ko:\n", 1),
            ("/lib/modules/x/a.ko:\n", 1),
            ("a.ko: b.so\n", 1),
            ("a.ko:\nx/a.ko:\n", 2),
            ("k/.ko:\n", 1),
        ] {
            match db(text) {
                Err(ImageError::ModulesDep {
                    line: got, path, ..
                }) => {
                    assert_eq!(got, line, "{text:?}");
                    assert_eq!(path, Path::new("/m/modules.dep"));
                }
                other => panic!("{text:?}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn odd_but_valid_text_parses() {
        let d = db("\n  a.ko:   b.ko\t c.ko  \r\n# comment\nb.ko:\nc.ko:").unwrap();
        assert_eq!(d.modules.len(), 3);
        assert_eq!(d.modules["a"].deps, ["b", "c"]);
        // Garbage never panics.
        for text in ["\u{0}:\u{0}", ":::", "a.ko::", "\u{fffd}.ko: \u{fffd}.ko"] {
            let _ = db(text);
        }
    }

    #[test]
    fn compressed_modules_are_decompressed_with_the_real_programs() {
        let dir = tempfile::tempdir().unwrap();
        let body = b"\x7fELF fake module body".repeat(100);
        for (program, suffix) in [("xz", "xz"), ("zstd", "zst"), ("gzip", "gz")] {
            let plain = dir.path().join(format!("m_{suffix}.ko"));
            std::fs::write(&plain, &body).unwrap();
            let status = Command::new(program)
                .arg("-q")
                .arg(&plain)
                .status()
                .unwrap_or_else(|e| panic!("{program} is needed for this test: {e}"));
            assert!(status.success());
            let file = ModuleFile {
                name: format!("m_{suffix}"),
                rel_path: format!("m_{suffix}.ko.{suffix}"),
                deps: vec![],
            };
            assert_eq!(read_module(dir.path(), &file).unwrap(), body, "{program}");
        }
    }

    #[test]
    fn missing_decompressor_says_what_to_install() {
        let err = decompress(Path::new("/m/a.ko.xz"), "brood-no-such-xz", "xz-utils").unwrap_err();
        assert!(
            err.to_string().contains("apt-get install -y xz-utils"),
            "{err}"
        );
    }
}
