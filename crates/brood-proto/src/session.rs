//! Interactive commands and file metadata: the types of
//! [`HostMsg::Session`](crate::HostMsg::Session) and its companions, and of
//! [`HostMsg::StatFile`](crate::HostMsg::StatFile).
//!
//! A session is an exec whose stdin stays open: the host feeds it with
//! [`HostMsg::SessionInput`](crate::HostMsg::SessionInput) one chunk at a
//! time (each answered once the command took it, which is the host's
//! backpressure), resizes its terminal and signals it. With a [`WinSize`]
//! the command runs on a pseudo-terminal whose output comes back as
//! `Stdout`; without one it has pipes, as an exec has.

use serde::{Deserialize, Serialize};

use crate::Command;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    /// Rows (lines).
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// An interactive command to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The command.
    pub command: Command,
    /// Variables added to the agent's environment.
    pub env: Vec<(String, String)>,
    /// Working directory; `/` when `None`.
    pub cwd: Option<String>,
    /// Run it on a pseudo-terminal of this size (`None`: pipes).
    pub tty: Option<WinSize>,
    /// Kill the command (SIGKILL to its process group) after this long.
    pub timeout_ms: Option<u64>,
}

/// What kind of file a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Anything else (device, socket, fifo).
    Other,
}

/// A file's metadata (symbolic links followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// What it is.
    pub kind: FileKind,
    /// Its size in bytes.
    pub size: u64,
    /// Its permission bits (`mode & 0o7777`).
    pub mode: u32,
}
