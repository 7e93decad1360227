//! `brood image ...`: builds guest images with brood-image (the busybox
//! default, or a Debian root file system with any packages), lists, shows
//! and deletes the named images in the data directory, and renders build
//! progress on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use brood_image::{BuildOptions, DebianOptions, DebianProgress, Manifest, Progress};
use clap::{Args, Subcommand, ValueEnum};

use crate::{Output, paths};

/// Commands on guest images.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build a guest image: the busybox default, or a Debian root file system.
    ///
    /// The default image (DATA_DIR/images/default, or --out DIR) is built
    /// from the host's Debian packages: vmlinuz, initrd.img, manifest.json.
    /// With --rootfs debian, mmdebstrap builds a Debian root file system
    /// with the packages you name into a qcow2 root disk next to the cloud
    /// kernel and an initramfs that boots it, as DATA_DIR/images/NAME
    /// (needs root and a Debian mirror; the host's apt mirror is used).
    /// Either is rebuilt only when its inputs changed, and appears only
    /// when complete.
    ///
    /// Examples:
    ///   brood image build
    ///   brood image build --out /tmp/img --independent-service ./10-sshd
    ///   brood image build --name deb --rootfs debian --package dnsmasq --package curl
    ///   brood image build --name web --rootfs debian --suite trixie --package nginx --size 4
    ///   brood image build --service
    ///   brood image build --name deb --rootfs debian --package curl --job
    #[command(verbatim_doc_comment)]
    Build(BuildArgs),
    /// List the images in the data directory.
    List,
    /// Show an image's manifest (default: the default image).
    ///
    /// Examples:
    ///   brood image show
    ///   brood image show deb -o json
    #[command(verbatim_doc_comment)]
    Show {
        /// Image name.
        name: Option<String>,
        /// Image directory (instead of a name).
        #[arg(long, conflicts_with = "name")]
        dir: Option<PathBuf>,
    },
    /// Delete a named image (not the default one).
    ///
    /// broodd's partitions made from it keep booting from their own hard
    /// links to its files (when the data directory is one file system).
    Delete {
        /// Image name.
        name: String,
    },
}

/// The root file system of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rootfs {
    /// The busybox initramfs (no root disk): the fast default.
    Busybox,
    /// A Debian root file system on a qcow2 root disk, built with mmdebstrap.
    Debian,
}

/// Arguments of `brood image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Image name: DATA_DIR/images/NAME (default: `default`).
    #[arg(long)]
    name: Option<String>,
    /// What the image's root file system is.
    #[arg(long, value_enum, default_value = "busybox")]
    rootfs: Rootfs,
    /// Build the service image: a Debian image named `service` with the
    /// packages of the shipped service classes (dnsmasq, rsyslog,
    /// nfs-kernel-server, nftables, busybox...), plus any --package.
    #[arg(long, conflicts_with_all = ["name", "out"])]
    service: bool,
    /// Debian suite (with --rootfs debian).
    #[arg(long, value_name = "SUITE")]
    suite: Option<String>,
    /// A Debian package to install (with --rootfs debian; repeatable).
    #[arg(long = "package", value_name = "PACKAGE")]
    packages: Vec<String>,
    /// Root disk size in GiB (with --rootfs debian; default 2).
    #[arg(long = "size", value_name = "GIB")]
    size_gib: Option<u64>,
    /// Debian mirror URL (with --rootfs debian; default: the host's apt mirror).
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Output directory for the busybox image (instead of --name).
    #[arg(long, conflicts_with = "name")]
    out: Option<PathBuf>,
    /// The brood-agent binary (default: found next to brood or in its Cargo target dir).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// A script run before a fork, in the parent (repeatable).
    #[arg(long = "independent-service", value_name = "SCRIPT")]
    independent: Vec<PathBuf>,
    /// A script run after a fork, in each child, once its identity is set (repeatable).
    #[arg(long = "dependent-service", value_name = "SCRIPT")]
    dependent: Vec<PathBuf>,
    /// An extra kernel module to include in the initramfs, with its dependencies (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    modules: Vec<String>,
    /// Rebuild even if the image is up to date (a Debian image then takes
    /// the mirror's current package versions).
    #[arg(long)]
    force: bool,
    /// Build in broodd, as a job (queued with the other heavy jobs, shown
    /// by `brood job list`), instead of in this process.
    #[arg(long, conflicts_with_all = ["out", "agent", "independent", "dependent"])]
    job: bool,
    /// With --job: answer at once with the job (`brood job wait ID`).
    #[arg(long, requires = "job")]
    no_wait: bool,
}

/// Whether `cmd` is a build that broodd runs (`--job`).
pub fn wants_job(cmd: &ImageCmd) -> bool {
    matches!(cmd, ImageCmd::Build(a) if a.job)
}

/// `brood image build --job`: `POST /v1/images`, waiting for the job
/// unless `--no-wait`.
pub async fn build_job(cmd: ImageCmd, client: &crate::client::Client, out: Output) -> Result<i32> {
    let ImageCmd::Build(args) = cmd else {
        bail!("only `brood image build` runs as a job");
    };
    let req = brood_api::ImageBuildRequest {
        name: args.name,
        rootfs: match args.rootfs {
            Rootfs::Busybox => brood_api::ImageRootfs::Busybox,
            Rootfs::Debian => brood_api::ImageRootfs::Debian,
        },
        service: args.service,
        suite: args.suite,
        packages: args.packages,
        size_gib: args.size_gib,
        mirror: args.mirror,
        modules: args.modules,
        force: args.force,
    };
    let submit = crate::job::Submit::Post("/v1/images", &req);
    if args.no_wait {
        return crate::job::submit(client, submit, out).await;
    }
    if show_progress(out) {
        eprintln!("broodd builds the image as a job (`brood job list` shows it)...");
    }
    let img: brood_api::Image = submit.send(client, false).await?;
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(&img)?),
        Output::Text => {
            let rootfs = match img.rootfs {
                brood_api::ImageRootfs::Busybox => "busybox",
                brood_api::ImageRootfs::Debian => "debian",
            };
            println!(
                "image {} ({rootfs}, kernel {}) built by broodd",
                img.name, img.kernel
            );
            if !img.packages.is_empty() {
                println!("  packages: {}", img.packages.join(" "));
            }
        }
    }
    Ok(0)
}

/// Runs an image command.
pub fn run(cmd: ImageCmd, data_dir: &Path, out: Output) -> Result<i32> {
    let images = paths::images_dir(data_dir);
    match cmd {
        ImageCmd::Build(args) => build(args, data_dir, out),
        ImageCmd::List => list(&images, out),
        ImageCmd::Show { name, dir } => {
            let (dir, m) = match (name, dir) {
                (_, Some(dir)) => {
                    let m = brood_image::read_manifest(&dir).with_context(|| {
                        format!("no image in {}: run `brood image build`", dir.display())
                    })?;
                    (dir, m)
                }
                (name, None) => {
                    let name = name.as_deref().unwrap_or(brood_image::DEFAULT_IMAGE);
                    brood_image::open_image(&images, name)
                        .with_context(|| format!("show image {name}"))?
                }
            };
            print_manifest(&m, &dir, out)?;
            Ok(0)
        }
        ImageCmd::Delete { name } => {
            brood_image::delete_image(&images, &name)
                .with_context(|| format!("delete image {name}"))?;
            match out {
                Output::Json => println!("{}", serde_json::json!({ "deleted": name })),
                Output::Text => println!("deleted image {name}"),
            }
            Ok(0)
        }
    }
}

fn build(args: BuildArgs, data_dir: &Path, out: Output) -> Result<i32> {
    let images = paths::images_dir(data_dir);
    let asked = brood_image::BuildRequest {
        name: args.name,
        debian: args.rootfs == Rootfs::Debian,
        service: args.service,
        suite: args.suite,
        packages: args.packages,
        size_gib: args.size_gib,
        mirror: args.mirror,
        independent_services: args.independent,
        dependent_services: args.dependent,
        extra_modules: args.modules,
        force: args.force,
    };
    let agent = args.agent;
    match asked.plan(&images, args.out.as_deref(), || {
        brood_image::find_agent(agent.as_deref())
    })? {
        brood_image::BuildPlan::Busybox(opts) => {
            let manifest = build_with_progress(&opts, out)?;
            print_manifest(&manifest, &opts.out_dir, out)?;
        }
        brood_image::BuildPlan::Debian(opts) => {
            let manifest = build_debian_with_progress(&opts, out)?;
            print_manifest(&manifest, &images.join(&opts.name), out)?;
        }
    }
    Ok(0)
}

fn show_progress(out: Output) -> bool {
    std::io::stderr().is_terminal() && out == Output::Text
}

/// Builds with progress lines on stderr when it is a terminal.
pub fn build_with_progress(opts: &BuildOptions, out: Output) -> Result<Manifest> {
    let tty = show_progress(out);
    let mut show = |p: Progress| {
        if tty {
            eprintln!("[{}/{}] {p}", p.step(), Progress::STEPS);
        }
    };
    brood_image::build(opts, &mut show)
        .with_context(|| format!("build the guest image in {}", opts.out_dir.display()))
}

/// Builds a Debian image with progress lines on stderr when it is a terminal.
pub fn build_debian_with_progress(opts: &DebianOptions, out: Output) -> Result<Manifest> {
    let tty = show_progress(out);
    let mut show = |p: DebianProgress| {
        if tty {
            eprintln!("[{}/{}] {p}", p.step(), DebianProgress::STEPS);
        }
    };
    brood_image::build_debian(opts, &mut show)
        .with_context(|| format!("build the Debian image {}", opts.name))
}

fn list(images: &Path, out: Output) -> Result<i32> {
    let entries = brood_image::list_images(images)?;
    match out {
        Output::Json => {
            let v: Vec<_> = entries
                .iter()
                .map(|e| match &e.manifest {
                    Ok(m) => serde_json::json!({
                        "name": e.name,
                        "dir": e.dir,
                        "rootfs": m.rootfs.as_ref().map(|_| "debian").unwrap_or("busybox"),
                        "suite": m.rootfs.as_ref().map(|r| r.suite.clone()),
                        "packages": m.rootfs.as_ref().map(|r| r.requested.clone()),
                        "fingerprint": m.fingerprint,
                        "bytes": total_bytes(m),
                    }),
                    Err(err) => serde_json::json!({
                        "name": e.name,
                        "dir": e.dir,
                        "error": format!("{:#}", anyhow::Error::new(clone_err(err))),
                    }),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!(
                "{:<20} {:<8} {:<10} {:>10}  PACKAGES",
                "NAME", "ROOTFS", "SUITE", "MIB"
            );
            for e in &entries {
                match &e.manifest {
                    Ok(m) => {
                        let (kind, suite, pkgs) = match &m.rootfs {
                            Some(r) => ("debian", r.suite.as_str(), r.requested.join(",")),
                            None => ("busybox", "-", String::new()),
                        };
                        println!(
                            "{:<20} {:<8} {:<10} {:>10}  {}",
                            e.name,
                            kind,
                            suite,
                            total_bytes(m) / (1024 * 1024),
                            pkgs
                        );
                    }
                    Err(err) => println!("{:<20} damaged: {err}", e.name),
                }
            }
        }
    }
    Ok(0)
}

/// The error as text (ImageError is not Clone; the list only shows it).
fn clone_err(err: &brood_image::ImageError) -> std::io::Error {
    std::io::Error::other(err.to_string())
}

fn total_bytes(m: &Manifest) -> u64 {
    m.outputs.all().iter().map(|(f, _)| f.size_bytes).sum()
}

fn print_manifest(m: &Manifest, dir: &Path, out: Output) -> Result<()> {
    match out {
        Output::Json => {
            let v = serde_json::json!({ "dir": dir, "manifest": m });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Text => {
            println!("image       {}", dir.display());
            println!("fingerprint {}", m.fingerprint);
            println!(
                "kernel      {} {} ({})",
                m.kernel.package, m.kernel.version, m.kernel.release
            );
            println!("busybox     {} {}", m.busybox.package, m.busybox.version);
            println!("agent       sha256 {}", m.agent.sha256);
            let names: Vec<&str> = m.modules.iter().map(|x| x.name.as_str()).collect();
            println!("modules     {}", names.join(" "));
            if let Some(r) = &m.rootfs {
                println!(
                    "rootfs      debian {} ({}) from {}, {} GiB, init {}",
                    r.suite, r.variant, r.mirror, r.size_gib, r.init
                );
                println!("requested   {}", r.requested.join(" "));
                println!("packages    {} installed:", r.packages.len());
                for p in &r.packages {
                    println!("  {} {}", p.package, p.version);
                }
            }
            for (f, _) in m.outputs.all() {
                println!("{:<11} {} bytes, sha256 {}", f.file, f.size_bytes, f.sha256);
            }
        }
    }
    Ok(())
}
