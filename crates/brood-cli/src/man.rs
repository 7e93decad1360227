//! `brood man --out DIR`: writes brood's manual pages, one per command and
//! subcommand (`brood.1`, `brood-vm.1`, `brood-vm-create.1`...), generated
//! by clap_mangen from the same command tree as `--help`, so the pages
//! never disagree with the binary. The Debian package installs them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::Output;

/// Arguments of `brood man`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood man --out /usr/share/man/man1
  brood man --out ./man && man ./man/brood-vm-create.1")]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Writes every page of `cmd` into `args.out` and prints what it wrote.
pub fn run(args: &ManArgs, cmd: clap::Command, out: Output) -> Result<i32> {
    let pages = write_pages(cmd, &args.out)?;
    match out {
        Output::Json => println!("{}", serde_json::json!({ "dir": args.out, "pages": pages })),
        Output::Text => {
            println!(
                "wrote {} manual pages to {}",
                pages.len(),
                args.out.display()
            );
        }
    }
    Ok(0)
}

/// Writes the pages of `cmd` and all its subcommands; returns their file names, sorted.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("write manual pages into {}", dir.display()))?;
    let mut pages: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("brood") && n.ends_with(".1"))
        .collect();
    pages.sort();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn a_page_per_subcommand_with_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_pages(crate::Cli::command(), dir.path()).unwrap();
        for p in ["brood.1", "brood-vm.1", "brood-vm-create.1", "brood-fork.1"] {
            assert!(pages.iter().any(|x| x == p), "{p} missing from {pages:?}");
        }
        let create = std::fs::read_to_string(dir.path().join("brood-vm-create.1")).unwrap();
        assert!(create.contains(".TH brood-vm-create 1"), "{create}");
        assert!(create.contains("memory"), "{create}");
    }
}
