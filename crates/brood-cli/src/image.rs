//! `brood image ...`: builds the default guest image with brood-image and
//! renders its progress on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use brood_image::{BuildOptions, Manifest, Progress};
use clap::{Args, Subcommand};

use crate::{Output, paths};

/// Commands on guest images.
#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build the default guest image from the host's Debian packages.
    ///
    /// Outputs DIR/vmlinuz, DIR/initrd.img and DIR/manifest.json. Without
    /// --out the image goes to the data directory and is rebuilt only when
    /// its inputs changed.
    ///
    /// Examples:
    ///   brood image build
    ///   brood image build --out /tmp/img --independent-service ./10-sshd
    #[command(verbatim_doc_comment)]
    Build(BuildArgs),
    /// Show the default image's manifest.
    Show {
        /// Image directory (default: the data directory's default image).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Arguments of `brood image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Output directory (default: the data directory's default image).
    #[arg(long)]
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
    /// An extra kernel module to include, with its dependencies (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    modules: Vec<String>,
    /// Rebuild even if the image is up to date.
    #[arg(long)]
    force: bool,
}

/// Runs an image command.
pub fn run(cmd: ImageCmd, data_dir: &Path, out: Output) -> Result<i32> {
    match cmd {
        ImageCmd::Build(args) => {
            let dir = args
                .out
                .clone()
                .unwrap_or_else(|| paths::default_image_dir(data_dir));
            let agent = paths::agent_binary(args.agent.as_deref())?;
            let mut opts = BuildOptions::new(&dir, agent);
            opts.independent_services = args.independent;
            opts.dependent_services = args.dependent;
            opts.extra_modules = args.modules;
            opts.force = args.force;
            let manifest = build_with_progress(&opts, out)?;
            print_manifest(&manifest, &dir, out)?;
            Ok(0)
        }
        ImageCmd::Show { dir } => {
            let dir = dir.unwrap_or_else(|| paths::default_image_dir(data_dir));
            let m = brood_image::read_manifest(&dir).with_context(|| {
                format!("no image in {}: run `brood image build`", dir.display())
            })?;
            print_manifest(&m, &dir, out)?;
            Ok(0)
        }
    }
}

/// Builds with progress lines on stderr when it is a terminal.
pub fn build_with_progress(opts: &BuildOptions, out: Output) -> Result<Manifest> {
    let tty = std::io::stderr().is_terminal() && out == Output::Text;
    let mut show = |p: Progress| {
        if tty {
            eprintln!("[{}/{}] {p}", p.step(), Progress::STEPS);
        }
    };
    brood_image::build(opts, &mut show)
        .with_context(|| format!("build the guest image in {}", opts.out_dir.display()))
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
            for f in [&m.outputs.kernel, &m.outputs.initrd] {
                println!("{:<11} {} bytes, sha256 {}", f.file, f.size_bytes, f.sha256);
            }
        }
    }
    Ok(())
}
