//! `brood host show`: the host broodd runs on, as `GET /v1/host` describes it.

use anyhow::Result;
use brood_api::HostInfo;
use clap::Subcommand;

use crate::Output;
use crate::client::Client;
use crate::render::{key_values, print_json, resources};

/// Commands on the host.
#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Show the host: capacity, use, accelerator, broodd's version and directories.
    #[command(after_help = "Examples:
  brood host show
  brood host show -o json
  brood --host http://10.0.0.5:7070 host show")]
    Show,
}

/// Runs a `brood host` command; returns the exit code.
pub async fn run(cmd: HostCmd, client: &Client, out: Output) -> Result<i32> {
    match cmd {
        HostCmd::Show => {
            let info: HostInfo = client.get("/v1/host").await?;
            match out {
                Output::Json => print_json(&info)?,
                Output::Text => print!("{}", show(&info)),
            }
            Ok(0)
        }
    }
}

/// The key/value listing of `brood host show`.
pub fn show(h: &HostInfo) -> String {
    key_values(&[
        ("hostname", h.hostname.clone()),
        ("version", h.version.clone()),
        ("accel", h.accel.clone()),
        (
            "partitions",
            format!("{} ({} active)", h.partitions, h.active),
        ),
        ("capacity", resources(&h.capacity)),
        ("used", resources(&h.used)),
        ("available", resources(&h.available)),
        (
            "overcommit",
            format!("{} vCPUs per host CPU", h.vcpu_overcommit),
        ),
        ("data dir", h.data_dir.clone()),
        ("run dir", h.run_dir.clone()),
        (
            "engine",
            format!(
                "{} ({}{}{}{})",
                h.engine.name,
                h.engine.accel,
                if h.engine.save_restore {
                    ", save/restore"
                } else {
                    ""
                },
                if h.engine.fork { ", fork" } else { "" },
                if h.engine.attach {
                    ", survives broodd restarts"
                } else {
                    ""
                },
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use brood_api::Resources;

    use super::*;

    #[test]
    fn show_lists_the_host() {
        let r = Resources {
            memory_mib: 1024,
            vcpus: 4,
            disk_gib: 20,
            nics: 8,
        };
        let h = HostInfo {
            hostname: "box".into(),
            version: "0.1.0".into(),
            accel: "kvm".into(),
            capacity: r,
            used: Resources::default(),
            available: r,
            vcpu_overcommit: 2.0,
            partitions: 3,
            active: 1,
            data_dir: "/var/lib/brood".into(),
            run_dir: "/run/brood".into(),
            engine: brood_api::EngineInfo {
                name: "qemu".into(),
                accel: "kvm".into(),
                kvm: true,
                save_restore: true,
                fork: true,
                rehost: true,
                attach: true,
                max_vcpus: 64,
            },
        };
        let s = show(&h);
        assert!(s.starts_with("hostname    box\n"), "{s}");
        assert!(s.contains("partitions  3 (1 active)\n"), "{s}");
        assert!(
            s.contains("used        0 MiB, 0 vCPUs, 0 GiB disk, 0 NICs\n"),
            "{s}"
        );
        assert!(s.contains("overcommit  2 vCPUs per host CPU\n"), "{s}");
    }
}
