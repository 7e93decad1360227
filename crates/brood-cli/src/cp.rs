//! `brood vm cp SRC DST`: copies a file into or out of a running
//! partition (`NAME:/path` on one side, a local path or `-` on the other),
//! streamed in both directions so any size fits, keeping its permission
//! bits. broodd moves the bytes through the guest agent a chunk at a time
//! (`GET`/`PUT /v1/partitions/{name}/files`); a copy that fails leaves the
//! destination as it was, on either side.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result, bail};
use brood_api::attach::{MODE_HEADER, OCTET_STREAM};
use clap::Args;
use http_body_util::BodyExt;
use hyper::Method;
use hyper::body::{Body, Bytes, Frame};
use hyper::header::CONTENT_TYPE;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use crate::Output;
use crate::client::{Client, decode_error, encode};
use crate::render::print_json;

/// Arguments of `brood vm cp`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  brood vm cp ./site.tar web:/srv/site.tar     # into the guest, mode kept
  brood vm cp web:/etc/os-release .            # out of it, into this directory
  brood vm cp web:/var/log/big.log - | wc -c   # to stdout
  tar c ./site | brood vm cp - web:/srv/site.tar

One side is NAME:/absolute/path in a running partition; the other a local
path, or - for stdin or stdout. A DST that is a directory (or ends in /)
gets SRC's file name. The file's permission bits are kept (a file from
stdin gets 644).")]
pub struct CpArgs {
    /// Where from: NAME:/path, a local file, or - (stdin).
    src: String,
    /// Where to: NAME:/path, a local file or directory, or - (stdout).
    dst: String,
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Side {
    Guest { vm: String, path: String },
    Local(PathBuf),
    Std,
}

fn side(s: &str) -> Result<Side> {
    if s == "-" {
        return Ok(Side::Std);
    }
    // NAME:/path; a local path with a colon is written ./a:b.
    if let Some((vm, path)) = s.split_once(':')
        && !vm.is_empty()
        && !vm.contains('/')
    {
        if !path.starts_with('/') {
            bail!("{s:?}: the guest path must be absolute ({vm}:/path)");
        }
        return Ok(Side::Guest {
            vm: vm.to_string(),
            path: path.to_string(),
        });
    }
    Ok(Side::Local(PathBuf::from(s)))
}

/// What a copy did (`-o json`).
#[derive(Debug, Serialize)]
struct Copied {
    bytes: u64,
    mode: String,
    to: String,
}

fn base_name(path: &str) -> Result<&str> {
    match path.rsplit('/').next() {
        Some(n) if !n.is_empty() && n != "." && n != ".." => Ok(n),
        _ => bail!("{path:?} names no file"),
    }
}

/// Runs `brood vm cp`.
pub async fn run(args: CpArgs, client: &Client, out: Output) -> Result<i32> {
    let copied = match (side(&args.src)?, side(&args.dst)?) {
        (Side::Guest { vm, path }, local @ (Side::Local(_) | Side::Std)) => {
            download(client, &vm, &path, local).await?
        }
        (local @ (Side::Local(_) | Side::Std), Side::Guest { vm, path }) => {
            upload(client, local, &vm, &path).await?
        }
        (Side::Guest { .. }, Side::Guest { .. }) => {
            bail!("both sides are in guests: copy out to a local file, then in")
        }
        _ => bail!(
            "neither {:?} nor {:?} is in a guest: one side is NAME:/path",
            args.src,
            args.dst
        ),
    };
    match out {
        Output::Json => print_json(&copied)?,
        Output::Text => {
            if copied.to != "-" {
                eprintln!(
                    "copied {} bytes to {} (mode {})",
                    copied.bytes, copied.to, copied.mode
                );
            }
        }
    }
    Ok(0)
}

async fn download(client: &Client, vm: &str, path: &str, to: Side) -> Result<Copied> {
    let uri = format!("/v1/partitions/{}/files?path={}", encode(vm), encode(path));
    let what = format!("read {vm}:{path}");
    let req = client
        .builder(Method::GET, &uri)
        .body(http_body_util::Empty::<Bytes>::new())
        .context("build the request")?;
    let resp = client.one_shot(req).await?;
    let status = resp.status();
    if !status.is_success() {
        let bytes = resp.into_body().collect().await.map(|c| c.to_bytes());
        return Err(decode_error(&what, status, &bytes.unwrap_or_default()).into());
    }
    let mode = resp
        .headers()
        .get(MODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .filter(|m| *m <= 0o7777)
        .unwrap_or(0o644);
    let mut body = resp.into_body();
    let target: String;
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send>;
    let mut scratch = None;
    match &to {
        Side::Std => {
            target = "-".into();
            sink = Box::new(tokio::io::stdout());
        }
        Side::Local(p) => {
            let dest = if p.is_dir() {
                p.join(base_name(path)?)
            } else {
                p.clone()
            };
            let dir = dest
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = dir.join(format!(
                ".{}.brood-cp-{}",
                dest.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
                std::process::id()
            ));
            let f = tokio::fs::File::create(&tmp)
                .await
                .with_context(|| format!("create {}", tmp.display()))?;
            target = dest.display().to_string();
            scratch = Some((tmp, dest));
            sink = Box::new(f);
        }
        Side::Guest { .. } => bail!("a download goes to a local side"),
    }
    let copy = async {
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("{what}: the transfer broke off"))?;
            if let Ok(data) = frame.into_data() {
                sink.write_all(&data).await.context("write the copy")?;
                n += data.len() as u64;
            }
        }
        sink.flush().await.context("write the copy")?;
        anyhow::Ok(n)
    };
    let result = copy.await;
    drop(sink);
    match (result, scratch) {
        (Ok(n), Some((tmp, dest))) => {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("set the mode of {}", tmp.display()))?;
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("move the copy to {}", dest.display()))?;
            Ok(Copied {
                bytes: n,
                mode: format!("{mode:o}"),
                to: target,
            })
        }
        (Ok(n), None) => Ok(Copied {
            bytes: n,
            mode: format!("{mode:o}"),
            to: target,
        }),
        (Err(e), scratch) => {
            if let Some((tmp, _)) = scratch {
                let _ = std::fs::remove_file(tmp);
            }
            Err(e)
        }
    }
}

async fn upload(client: &Client, from: Side, vm: &str, path: &str) -> Result<Copied> {
    let (reader, mode, name): (Box<dyn AsyncRead + Unpin + Send>, u32, Option<String>) = match &from
    {
        Side::Std => (Box::new(tokio::io::stdin()), 0o644, None),
        Side::Local(p) => {
            let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
            if !meta.is_file() {
                bail!(
                    "{} is not a regular file (for a directory: tar c DIR | brood vm exec {vm} 'tar x -C /dest' --stdin)",
                    p.display()
                );
            }
            let f = tokio::fs::File::open(p)
                .await
                .with_context(|| format!("open {}", p.display()))?;
            let name = p.file_name().and_then(|n| n.to_str()).map(str::to_string);
            (Box::new(f), meta.permissions().mode() & 0o7777, name)
        }
        Side::Guest { .. } => bail!("an upload comes from a local side"),
    };
    let dest = if path.ends_with('/') {
        let Some(name) = name else {
            bail!("{vm}:{path} is a directory: name the file to write from stdin");
        };
        format!("{path}{name}")
    } else {
        path.to_string()
    };
    let uri = format!(
        "/v1/partitions/{}/files?path={}&mode={:o}",
        encode(vm),
        encode(&dest),
        mode
    );
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let body = ReadBody {
        reader,
        buf: vec![0u8; 1 << 20].into_boxed_slice(),
        counted: counted.clone(),
    };
    let req = client
        .builder(Method::PUT, &uri)
        .header(CONTENT_TYPE, OCTET_STREAM)
        .body(body)
        .context("build the request")?;
    let what = format!("write {vm}:{dest}");
    let resp = client.one_shot(req).await?;
    let status = resp.status();
    if !status.is_success() {
        let bytes = resp.into_body().collect().await.map(|c| c.to_bytes());
        return Err(decode_error(&what, status, &bytes.unwrap_or_default()).into());
    }
    Ok(Copied {
        bytes: counted.load(std::sync::atomic::Ordering::Relaxed),
        mode: format!("{mode:o}"),
        to: format!("{vm}:{dest}"),
    })
}

/// A request body read from a file or stdin a buffer at a time: hyper
/// asks for the next frame only when the last one was sent.
pub(crate) struct ReadBody {
    pub(crate) reader: Box<dyn AsyncRead + Unpin + Send>,
    pub(crate) buf: Box<[u8]>,
    pub(crate) counted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Body for ReadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let mut rb = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.reader).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let data = Bytes::copy_from_slice(rb.filled());
                this.counted
                    .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_parse() {
        assert_eq!(side("-").unwrap(), Side::Std);
        assert_eq!(
            side("web:/etc/hosts").unwrap(),
            Side::Guest {
                vm: "web".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(side("./a:b").unwrap(), Side::Local("./a:b".into()));
        assert_eq!(side("dir/f").unwrap(), Side::Local("dir/f".into()));
        assert!(side("web:etc").is_err());
        assert_eq!(base_name("/a/b").unwrap(), "b");
        assert!(base_name("/a/").is_err());
    }
}
