//! Interactive commands and file pieces: [`AgentClient::session`] starts a
//! command whose stdin stays open and returns its output stream with a
//! [`SessionControl`] that feeds it, resizes its terminal and signals it;
//! `stat_file`, `read_chunk` and `write_chunk` are single file requests for
//! callers that stream a file of any size a chunk at a time.

use std::time::Duration;

use brood_proto::{
    FileData, FileStat, GuestMsg, HostMsg, MAX_DATA_CHUNK, ReadFileRequest, SessionRequest,
    WinSize, WriteFileRequest,
};

use super::{AgentClient, REQUEST_TIMEOUT, cut};
use crate::EngineError;
use crate::agent::ExecStream;

/// How long one input chunk may wait for the command to take it.
pub const INPUT_TIMEOUT: Duration = Duration::from_secs(600);

/// Feeds and steers one running session. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionControl {
    client: AgentClient,
    id: u32,
}

impl SessionControl {
    /// Hands `data` to the command's stdin (in frame-sized pieces, each
    /// once the one before was taken), then closes it when `eof`.
    pub async fn input(&self, data: &[u8], eof: bool) -> Result<(), EngineError> {
        let mut pieces: Vec<&[u8]> = data.chunks(MAX_DATA_CHUNK).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            let msg = HostMsg::SessionInput {
                exec_id: self.id,
                data: piece.to_vec(),
                eof: eof && i == last,
            };
            self.client.call(&msg, INPUT_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Resizes the command's terminal.
    pub async fn resize(&self, size: WinSize) -> Result<(), EngineError> {
        let msg = HostMsg::SessionResize {
            exec_id: self.id,
            size,
        };
        self.client.call(&msg, REQUEST_TIMEOUT).await.map(drop)
    }

    /// Sends `signal` to the command's process group.
    pub async fn signal(&self, signal: i32) -> Result<(), EngineError> {
        let msg = HostMsg::SessionSignal {
            exec_id: self.id,
            signal,
        };
        self.client.call(&msg, REQUEST_TIMEOUT).await.map(drop)
    }
}

fn unexpected(what: &str, reply: &GuestMsg) -> EngineError {
    EngineError::AgentChannel(format!(
        "unexpected reply to {what}: {}",
        cut(&format!("{reply:?}"))
    ))
}

impl AgentClient {
    /// Starts an interactive command and waits until it runs: its output
    /// and end, and the control that feeds it. Dropping the stream kills
    /// the command.
    pub async fn session(
        &self,
        req: &SessionRequest,
    ) -> Result<(ExecStream, SessionControl), EngineError> {
        let mut stream = self
            .start_stream(&HostMsg::Session(req.clone()), req.timeout_ms, u64::MAX)
            .await?;
        stream.started(REQUEST_TIMEOUT).await?;
        let control = SessionControl {
            client: self.clone(),
            id: stream.id,
        };
        Ok((stream, control))
    }

    /// Describes a guest file.
    pub async fn stat_file(&self, path: &str) -> Result<FileStat, EngineError> {
        let msg = HostMsg::StatFile { path: path.into() };
        match self.call(&msg, REQUEST_TIMEOUT).await? {
            GuestMsg::FileStat(st) => Ok(st),
            other => Err(unexpected("stat-file", &other)),
        }
    }

    /// Reads at most `max_len` bytes (and at most a frame's worth) of a
    /// guest file from `offset`.
    pub async fn read_chunk(
        &self,
        path: &str,
        offset: u64,
        max_len: u32,
    ) -> Result<FileData, EngineError> {
        let req = ReadFileRequest {
            path: path.into(),
            offset,
            max_len,
        };
        match self.call(&HostMsg::ReadFile(req), REQUEST_TIMEOUT).await? {
            GuestMsg::FileData(mut fd) => {
                // A hostile agent may send more than was asked for.
                let cap = usize::try_from(max_len)
                    .unwrap_or(usize::MAX)
                    .min(MAX_DATA_CHUNK);
                fd.data.truncate(cap);
                Ok(fd)
            }
            other => Err(unexpected("read-file", &other)),
        }
    }

    /// Writes `data` (at most a frame's worth) to a guest file at
    /// `offset`, creating it with `mode`; `truncate` cuts it at `offset` first.
    pub async fn write_chunk(
        &self,
        path: &str,
        offset: u64,
        truncate: bool,
        mode: u32,
        data: Vec<u8>,
    ) -> Result<(), EngineError> {
        let req = WriteFileRequest {
            path: path.into(),
            offset,
            truncate,
            mode,
            data,
        };
        match self.call(&HostMsg::WriteFile(req), REQUEST_TIMEOUT).await? {
            GuestMsg::Written { .. } => Ok(()),
            other => Err(unexpected("write-file", &other)),
        }
    }
}
