//! `brood-bench debian`: a Debian image (`brood image build --rootfs
//! debian`) against the default busybox image and against raw QEMU booting
//! the Debian image's own kernel, initramfs and root disk, in one run:
//! cold boot to agent ready (`brood run --exec true`, alternating the three
//! kinds so that host load hits all alike), then fork to a ready child from
//! a template of each image through one broodd. Medians and ratios.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::boot::{Sample, run_brood, run_raw};
use crate::fork::Daemon;
use crate::{median, ms};

/// What to compare.
#[derive(Debug)]
pub struct DebianBench<'a> {
    /// Cold boots of each kind.
    pub runs: usize,
    /// Single forks from each template.
    pub forks: usize,
    /// The Debian image's name.
    pub image: &'a str,
    /// The data directory that holds it (DATA/images/NAME and the default).
    pub data_dir: &'a Path,
    /// The brood binary.
    pub brood: &'a Path,
    /// The broodd binary.
    pub broodd: &'a Path,
}

/// Runs the benchmark and prints its table.
pub fn debian(b: &DebianBench<'_>) -> Result<()> {
    let images = b.data_dir.join("images");
    let (dir, m) = brood_image::open_image(&images, b.image)
        .with_context(|| format!("open image {}", b.image))?;
    let root = m
        .outputs
        .root_disk
        .as_ref()
        .map(|r| r.path_in(&dir))
        .context("the image has no root disk: build it with --rootfs debian")?;
    let kernel = m.outputs.kernel.path_in(&dir);
    let initrd = m.outputs.initrd.path_in(&dir);
    let data = b.data_dir.to_str().context("data dir is not UTF-8")?;
    let (mut deb, mut def, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..b.runs {
        deb.push(
            run_brood(b.brood, &["--data-dir", data, "--image", b.image])
                .with_context(|| format!("brood run --image #{i}"))?,
        );
        def.push(
            run_brood(b.brood, &["--data-dir", data]).with_context(|| format!("brood run #{i}"))?,
        );
        raw.push(run_raw(&kernel, &initrd, Some(&root)).with_context(|| format!("raw QEMU #{i}"))?);
        eprintln!(
            "boot {:>2}: debian {:>6.0} ms | default {:>6.0} ms | raw QEMU (debian) {:>6.0} ms",
            i + 1,
            deb[i].ready_ms,
            def[i].ready_ms,
            raw[i].ready_ms
        );
    }
    let (fork_deb, fork_def) = forks(b, &dir)?;

    let med = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    println!(
        "debian benchmark: image {} ({} packages), {} boots and {} forks of each kind, 256 MiB, 1 vCPU",
        b.image,
        m.rootfs.as_ref().map_or(0, |r| r.packages.len()),
        b.runs,
        b.forks
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>11} {:>11}",
        "median", "debian", "default", "raw QEMU", "deb/default", "deb/raw"
    );
    for (name, f) in [
        (
            "start -> agent ready (ms)",
            (|s: &Sample| s.ready_ms) as fn(&Sample) -> f64,
        ),
        ("start -> exec true -> exit (ms)", |s| s.total_ms),
        ("QEMU RSS at ready (MiB)", |s| s.rss_mib),
    ] {
        let (x, y, z) = (med(&deb, f), med(&def, f), med(&raw, f));
        println!(
            "{name:<34} {x:>10.1} {y:>10.1} {z:>10.1} {:>11.3} {:>11.3}",
            x / y,
            x / z
        );
    }
    let (x, y) = (median(fork_deb), median(fork_def));
    println!(
        "{:<34} {x:>10.1} {y:>10.1} {:>10} {:>11.3} {:>11}",
        "fork request -> ready child (ms)",
        "-",
        x / y,
        "-"
    );
    Ok(())
}

/// Fork-to-ready from a template of the Debian image and of the default
/// one, through one broodd, alternating.
fn forks(b: &DebianBench<'_>, image_dir: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    const POOL: u64 = 2;
    let default_dir: PathBuf = b.data_dir.join("images").join(brood_image::DEFAULT_IMAGE);
    let d = Daemon::start(b.broodd, &default_dir)?;
    let images = d.data().join("images");
    std::fs::create_dir_all(&images)?;
    std::os::unix::fs::symlink(image_dir, images.join(b.image))?;
    for (name, image) in [("tdeb", Some(b.image)), ("tdef", None)] {
        let mut config = json!({"memory_mib": 256});
        if let Some(i) = image {
            config["image"] = json!(i);
        }
        d.call(
            "POST",
            "/v1/partitions",
            Some(&json!({"name": name, "configs": {"default": config}, "start": true})),
        )?;
        d.exec_true(name)?;
        d.call(
            "POST",
            "/v1/templates",
            Some(&json!({"vm": name, "warm": POOL})),
        )?;
    }
    let (mut deb, mut def) = (Vec::new(), Vec::new());
    for i in 0..b.forks {
        for (tpl, out) in [("tdeb", &mut deb), ("tdef", &mut def)] {
            d.wait_pool(tpl, POOL)?;
            let t0 = Instant::now();
            let r = d.call(
                "POST",
                &format!("/v1/templates/{tpl}/fork"),
                Some(&json!({"count": 1})),
            )?;
            out.push(ms(t0.elapsed()));
            let c = &r["children"][0];
            if c["status"] != "ready" {
                bail!("fork {i} of {tpl}: {c}");
            }
            d.delete(c["name"].as_str().unwrap_or(""))?;
        }
        eprintln!(
            "fork {:>2}: debian {:>6.1} ms | default {:>6.1} ms",
            i + 1,
            deb[i],
            def[i]
        );
    }
    for tpl in ["tdeb", "tdef"] {
        d.call("DELETE", &format!("/v1/templates/{tpl}?cascade=true"), None)?;
    }
    Ok((deb, def))
}
