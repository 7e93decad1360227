//! Finding the image's inputs in the host's installed Debian packages with
//! `dpkg-query`: the versioned kernel package behind `linux-image-cloud-amd64`,
//! its release, bzImage and modules directory, and `/bin/busybox` from
//! `busybox-static`. Nothing here reads the files; [`crate::build`] does.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::ImageError;
use crate::module::first_line;

/// The kernel metapackage the image follows.
pub const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// The package that provides a static busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The installed kernel the image is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kernel {
    /// The metapackage's version.
    pub metapackage_version: String,
    /// The versioned package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Its version, e.g. `6.1.192-2`.
    pub version: String,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The bzImage, `/boot/vmlinuz-<release>`.
    pub image: PathBuf,
    /// The modules directory, `/lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

/// The installed busybox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busybox {
    /// The package version.
    pub version: String,
    /// The binary.
    pub path: PathBuf,
}

/// Resolves the kernel from [`KERNEL_METAPACKAGE`].
pub(crate) fn kernel() -> Result<Kernel, ImageError> {
    let meta = status(KERNEL_METAPACKAGE)?;
    let candidates = image_packages(&meta.depends);
    let mut chosen = None;
    for candidate in &candidates {
        match status(candidate) {
            Ok(pkg) => {
                chosen = Some(pkg);
                break;
            }
            Err(ImageError::PackageMissing { .. }) => continue,
            Err(other) => return Err(other),
        }
    }
    let pkg = chosen.ok_or_else(|| ImageError::NoKernelPackage {
        metapackage: KERNEL_METAPACKAGE.to_string(),
        depends: meta.depends.clone(),
    })?;
    let files = list(&pkg.name)?;
    let (image, release) = files
        .iter()
        .find_map(|f| {
            let release = f.strip_prefix("/boot/vmlinuz-")?;
            (!release.is_empty() && !release.contains('/'))
                .then(|| (f.clone(), release.to_string()))
        })
        .ok_or_else(|| ImageError::PackageFileMissing {
            package: pkg.name.clone(),
            what: "/boot/vmlinuz-*".to_string(),
        })?;
    let modules_dir =
        modules_dir(&files, &release).ok_or_else(|| ImageError::PackageFileMissing {
            package: pkg.name.clone(),
            what: format!("/lib/modules/{release}"),
        })?;
    Ok(Kernel {
        metapackage_version: meta.version,
        package: pkg.name,
        version: pkg.version,
        release,
        image: PathBuf::from(image),
        modules_dir,
    })
}

/// Resolves busybox from [`BUSYBOX_PACKAGE`].
pub(crate) fn busybox() -> Result<Busybox, ImageError> {
    let pkg = status(BUSYBOX_PACKAGE)?;
    let files = list(&pkg.name)?;
    let path = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|want| files.iter().any(|f| f == want))
        .ok_or_else(|| ImageError::PackageFileMissing {
            package: pkg.name.clone(),
            what: "/bin/busybox".to_string(),
        })?;
    Ok(Busybox {
        version: pkg.version,
        path: PathBuf::from(path),
    })
}

/// What `dpkg-query -W` says about one installed package.
#[derive(Debug)]
struct Status {
    name: String,
    version: String,
    depends: String,
}

/// Queries an installed package; [`ImageError::PackageMissing`] when dpkg does
/// not know it or it is not in the installed state.
fn status(package: &str) -> Result<Status, ImageError> {
    let format = "${db:Status-Abbrev}\t${Version}\t${Depends}\n";
    let stdout = match dpkg_query(&["-W", "-f", format, package]) {
        Ok(out) => out,
        // dpkg-query exits 1 for "no packages found matching".
        Err(ImageError::DpkgFailed { status, .. }) if status.code() == Some(1) => {
            return Err(missing(package));
        }
        Err(other) => return Err(other),
    };
    parse_status(package, &stdout).ok_or_else(|| missing(package))
}

/// Parses `dpkg-query -W` output in the format of [`status`].
fn parse_status(package: &str, stdout: &str) -> Option<Status> {
    let line = stdout.lines().next()?;
    let mut fields = line.splitn(3, '\t');
    let abbrev = fields.next()?;
    let version = fields.next()?.trim();
    let depends = fields.next().unwrap_or("").trim();
    // The second letter of Status-Abbrev is the current state; `i` = installed.
    let installed = abbrev.chars().nth(1) == Some('i');
    (installed && !version.is_empty()).then(|| Status {
        name: package.to_string(),
        version: version.to_string(),
        depends: depends.to_string(),
    })
}

/// The `linux-image-*` package names in a Depends field, in order, taking every
/// alternative (`a | b`) and dropping version constraints and arch qualifiers.
fn image_packages(depends: &str) -> Vec<String> {
    depends
        .split([',', '|'])
        .filter_map(|alt| {
            let name = alt.split_whitespace().next()?;
            let name = name.split(['(', ':']).next()?;
            name.starts_with("linux-image-").then(|| name.to_string())
        })
        .collect()
}

/// The package's modules directory: the listed path ending in
/// `/lib/modules/<release>` (Debian 12 has `/lib/…`, later releases `/usr/lib/…`).
fn modules_dir(files: &[String], release: &str) -> Option<PathBuf> {
    let suffix = format!("/lib/modules/{release}");
    files
        .iter()
        .find(|f| f.ends_with(&suffix))
        .map(PathBuf::from)
}

/// The files of an installed package, one absolute path per entry.
fn list(package: &str) -> Result<Vec<String>, ImageError> {
    let out = dpkg_query(&["-L", package])?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(String::from)
        .collect())
}

fn dpkg_query(args: &[&str]) -> Result<String, ImageError> {
    let joined = args.join(" ");
    let output = Command::new("dpkg-query")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::DpkgSpawn {
            args: joined.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(ImageError::DpkgFailed {
            args: joined,
            status: output.status,
            stderr: first_line(&output.stderr),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn missing(package: &str) -> ImageError {
    ImageError::PackageMissing {
        package: package.to_string(),
    }
}

/// Whether `data` starts like a Linux bzImage: the boot protocol's `HdrS`
/// magic at offset 0x202 (Documentation/arch/x86/boot.rst).
pub(crate) fn is_bzimage(data: &[u8]) -> bool {
    data.get(0x202..0x206) == Some(b"HdrS".as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn depends_yields_image_packages_in_order() {
        assert_eq!(
            image_packages("linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"),
            ["linux-image-6.1.0-56-cloud-amd64"]
        );
        assert_eq!(
            image_packages(
                "linux-image-6.1.0-9-cloud-amd64-unsigned:amd64 (= 6.1.27-1) | linux-image-6.1.0-9-cloud-amd64 (= 6.1.27-1), initramfs-tools"
            ),
            [
                "linux-image-6.1.0-9-cloud-amd64-unsigned",
                "linux-image-6.1.0-9-cloud-amd64"
            ]
        );
        assert!(image_packages("").is_empty());
        assert!(image_packages(" , | ,").is_empty());
    }

    #[test]
    fn status_requires_the_installed_state() {
        let s = parse_status("p", "ii \t1.2-3\ta (>= 1), b\n").unwrap();
        assert_eq!(
            (s.version.as_str(), s.depends.as_str()),
            ("1.2-3", "a (>= 1), b")
        );
        assert!(parse_status("p", "hi \t1.0\t\n").is_some());
        for removed in ["rc \t1.0\t\n", "un \t\t\n", "", "ii \t\t\n", "garbage"] {
            assert!(parse_status("p", removed).is_none(), "{removed:?}");
        }
    }

    #[test]
    fn modules_dir_matches_either_lib_layout() {
        let files = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            modules_dir(
                &files(&["/boot/vmlinuz-r", "/lib/modules/r", "/lib/modules/r/kernel"]),
                "r"
            ),
            Some(PathBuf::from("/lib/modules/r"))
        );
        assert_eq!(
            modules_dir(
                &files(&["/usr/lib/modules/r/kernel", "/usr/lib/modules/r"]),
                "r"
            ),
            Some(PathBuf::from("/usr/lib/modules/r"))
        );
        assert_eq!(modules_dir(&files(&["/lib/modules/r2"]), "r"), None);
    }

    #[test]
    fn host_packages_resolve() {
        // The README's setup installs both packages; see the crate docs.
        let k = kernel().unwrap();
        assert_eq!(
            k.image,
            Path::new("/boot").join(format!("vmlinuz-{}", k.release))
        );
        assert!(k.package.starts_with("linux-image-"));
        assert!(k.modules_dir.join("modules.dep").is_file());
        let b = busybox().unwrap();
        assert!(b.path.is_file());
        let err = status("brood-no-such-package").unwrap_err();
        assert!(
            err.to_string()
                .contains("apt-get install -y brood-no-such-package"),
            "{err}"
        );
    }
}
