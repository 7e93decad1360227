//! What one image build is asked to do, checked and turned into the
//! options of [`crate::build`] or [`crate::build_debian`]: the one place
//! where `brood image build`'s flags and broodd's `POST /v1/images` are
//! checked (Debian-only options, names, the service image's packages).

use std::path::{Path, PathBuf};

use crate::{BuildOptions, DebianOptions, ImageError};

/// A build as asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildRequest {
    /// Image name (`default` when left out of a busybox build).
    pub name: Option<String>,
    /// A Debian root file system (else the busybox initramfs).
    pub debian: bool,
    /// The service image: Debian, named `service`, with its packages.
    pub service: bool,
    /// Debian suite.
    pub suite: Option<String>,
    /// Debian packages.
    pub packages: Vec<String>,
    /// Debian root disk size, GiB.
    pub size_gib: Option<u64>,
    /// Debian mirror.
    pub mirror: Option<String>,
    /// Scripts run before a fork, in the parent.
    pub independent_services: Vec<PathBuf>,
    /// Scripts run after a fork, in each child.
    pub dependent_services: Vec<PathBuf>,
    /// Extra kernel modules.
    pub extra_modules: Vec<String>,
    /// Rebuild even if up to date.
    pub force: bool,
}

/// A checked build.
#[derive(Debug)]
pub enum BuildPlan {
    /// The busybox image.
    Busybox(BuildOptions),
    /// A Debian image.
    Debian(DebianOptions),
}

impl BuildPlan {
    /// The image's name (the output directory's, for a busybox image).
    pub fn name(&self) -> String {
        match self {
            BuildPlan::Busybox(o) => o
                .out_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            BuildPlan::Debian(o) => o.name.clone(),
        }
    }
}

fn invalid(reason: String) -> ImageError {
    ImageError::InvalidRequest { reason }
}

impl BuildRequest {
    /// Checks the request and makes its options: images go in `images`,
    /// a busybox image in `out` instead when given; `agent` finds the
    /// brood-agent binary, and is called only once the request passed its
    /// checks (a bad request is refused whatever the host has).
    pub fn plan(
        mut self,
        images: &Path,
        out: Option<&Path>,
        agent: impl FnOnce() -> Result<PathBuf, ImageError>,
    ) -> Result<BuildPlan, ImageError> {
        if self.service {
            if self
                .name
                .as_deref()
                .is_some_and(|n| n != crate::SERVICE_IMAGE)
            {
                return Err(invalid(format!(
                    "the service image is named {:?}: leave the name out with service",
                    crate::SERVICE_IMAGE
                )));
            }
            self.debian = true;
            self.name = Some(crate::SERVICE_IMAGE.to_owned());
            let mut packages: Vec<String> = crate::SERVICE_PACKAGES
                .iter()
                .map(|p| (*p).to_owned())
                .collect();
            packages.append(&mut self.packages);
            self.packages = packages;
        }
        if let Some(n) = &self.name {
            crate::validate_name(n)?;
        }
        if !self.debian {
            if self.suite.is_some()
                || !self.packages.is_empty()
                || self.size_gib.is_some()
                || self.mirror.is_some()
            {
                return Err(invalid(
                    "suite, packages, size and mirror need a Debian root file system (--rootfs debian)"
                        .into(),
                ));
            }
            let dir = match (out, &self.name) {
                (Some(d), _) => d.to_path_buf(),
                (None, name) => images.join(name.as_deref().unwrap_or(crate::DEFAULT_IMAGE)),
            };
            let mut o = BuildOptions::new(dir, agent()?);
            o.independent_services = self.independent_services;
            o.dependent_services = self.dependent_services;
            o.extra_modules = self.extra_modules;
            o.force = self.force;
            return Ok(BuildPlan::Busybox(o));
        }
        if out.is_some() {
            return Err(invalid(
                "--out is for the busybox image; a Debian image is built as DATA_DIR/images/NAME with --name NAME".into(),
            ));
        }
        let Some(name) = self.name else {
            return Err(invalid(
                "a Debian image needs a name (the default image stays the busybox one)".into(),
            ));
        };
        if name == crate::DEFAULT_IMAGE {
            return Err(invalid(
                "`default` is the busybox image; give a Debian image another name".into(),
            ));
        }
        let mut o = DebianOptions::new(images, &name, agent()?);
        if let Some(s) = self.suite {
            o.suite = s;
        }
        if let Some(s) = self.size_gib {
            o.size_gib = s;
        }
        o.packages = self.packages;
        o.mirror = self.mirror;
        o.independent_services = self.independent_services;
        o.dependent_services = self.dependent_services;
        o.extra_modules = self.extra_modules;
        o.force = self.force;
        Ok(BuildPlan::Debian(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(r: BuildRequest) -> Result<BuildPlan, ImageError> {
        r.plan(Path::new("/images"), None, || Ok(PathBuf::from("/agent")))
    }

    #[test]
    fn requests_are_checked_and_named() {
        let p = plan(BuildRequest::default()).unwrap();
        assert_eq!(p.name(), "default");
        let p = plan(BuildRequest {
            service: true,
            ..BuildRequest::default()
        })
        .unwrap();
        assert_eq!(p.name(), "service");
        let BuildPlan::Debian(o) = p else {
            panic!("the service image is Debian")
        };
        assert!(
            o.packages.iter().any(|p| p == "rsyslog"),
            "{:?}",
            o.packages
        );
        for bad in [
            BuildRequest {
                debian: true,
                ..BuildRequest::default()
            },
            BuildRequest {
                name: Some("bb".into()),
                packages: vec!["curl".into()],
                ..BuildRequest::default()
            },
            BuildRequest {
                name: Some("../x".into()),
                ..BuildRequest::default()
            },
            BuildRequest {
                name: Some("default".into()),
                debian: true,
                ..BuildRequest::default()
            },
            BuildRequest {
                name: Some("x".into()),
                service: true,
                ..BuildRequest::default()
            },
        ] {
            assert!(plan(bad.clone()).is_err(), "{bad:?}");
        }
    }
}
