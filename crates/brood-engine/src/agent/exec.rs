//! Commands in the guest: [`ExecStream`], one running command read an
//! event at a time with its deadline and host-side output cap, and the
//! `exec*` methods of [`AgentClient`] built on it. A stream dropped before
//! its command ended sends `HostMsg::CancelExec`, so nothing runs on in the
//! guest for a caller that went away.

use std::time::Duration;

use brood_proto::{ExecRequest, ExecStatus, GuestMsg, HostMsg, Stream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{AgentClient, EXEC_REPORT_GRACE, closed_err, cut, lock};
use crate::EngineError;

/// Output of a command collected in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// How it ended.
    pub status: ExecStatus,
    /// Its stdout, at most the request's output limit.
    pub stdout: Vec<u8>,
    /// Its stderr, at most the request's output limit.
    pub stderr: Vec<u8>,
}

/// One event of a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// A chunk of output (within the request's output limit).
    Output {
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The command ended; nothing follows.
    Exited(ExecStatus),
}

/// A command running in the guest, read one event at a time. Dropping it
/// before the command ended kills the command.
#[derive(Debug)]
pub struct ExecStream {
    pub(super) id: u32,
    rx: mpsc::Receiver<GuestMsg>,
    client: AgentClient,
    limit: u64,
    seen: [u64; 2],
    deadline: Option<(Instant, Duration)>,
    epoch: u64,
    done: bool,
}

impl ExecStream {
    /// The next event; `None` once the command's end was returned or an
    /// error was. Fails when the agent goes away, answers with an error, or
    /// does not report the end within the command's timeout plus
    /// [`EXEC_REPORT_GRACE`].
    pub async fn next(&mut self) -> Option<Result<ExecEvent, EngineError>> {
        while !self.done {
            let msg = match self.deadline {
                Some((at, after)) => match tokio::time::timeout_at(at, self.rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => {
                        self.cancel();
                        return Some(Err(EngineError::Timeout {
                            op: "exec in the guest (the agent did not report the end of \
                                 the command: it is hung or stopped)",
                            after,
                        }));
                    }
                },
                None => self.rx.recv().await,
            };
            let event = match msg {
                Some(GuestMsg::Output { stream, data }) => {
                    let seen = &mut self.seen[usize::from(stream == Stream::Stderr)];
                    let room =
                        usize::try_from(self.limit.saturating_sub(*seen)).unwrap_or(usize::MAX);
                    let mut data = data.into_vec();
                    data.truncate(room);
                    *seen += data.len() as u64;
                    if data.is_empty() {
                        continue;
                    }
                    Ok(ExecEvent::Output { stream, data })
                }
                Some(GuestMsg::Exited(status)) => Ok(ExecEvent::Exited(status)),
                Some(GuestMsg::Error(e)) => Err(EngineError::Agent(e)),
                Some(other) => Err(EngineError::AgentChannel(format!(
                    "unexpected reply to exec: {}",
                    cut(&format!("{other:?}"))
                ))),
                None => Err(self.client.lost_err(self.epoch)),
            };
            if !matches!(event, Ok(ExecEvent::Output { .. })) {
                self.finish();
            }
            return Some(event);
        }
        None
    }

    /// Waits for the agent's first answer to a `Session`: an empty output
    /// chunk once the command runs, or the error that kept it from starting.
    pub(super) async fn started(&mut self, within: Duration) -> Result<(), EngineError> {
        let first = tokio::time::timeout(within, self.rx.recv()).await;
        let err = match first {
            Ok(Some(GuestMsg::Output { .. })) => return Ok(()),
            Ok(Some(GuestMsg::Error(e))) => EngineError::Agent(e),
            Ok(Some(other)) => EngineError::AgentChannel(format!(
                "unexpected first reply to a session: {}",
                cut(&format!("{other:?}"))
            )),
            Ok(None) => self.client.lost_err(self.epoch),
            Err(_) => EngineError::Timeout {
                op: "starting a session in the guest (the agent did not answer)",
                after: within,
            },
        };
        self.cancel();
        Err(err)
    }

    /// Kills the command in the guest (if it still runs) and stops reading it.
    pub fn cancel(&mut self) {
        if self.done {
            return;
        }
        self.finish();
        self.client.cancel_exec(self.id);
    }

    fn finish(&mut self) {
        self.done = true;
        lock(&self.client.pending).remove(&self.id);
        self.rx.close();
    }
}

impl Drop for ExecStream {
    fn drop(&mut self) {
        self.cancel();
    }
}

impl AgentClient {
    /// Starts a command and returns the stream of its output and end.
    pub async fn exec_stream(&self, req: &ExecRequest) -> Result<ExecStream, EngineError> {
        self.start_stream(
            &HostMsg::Exec(req.clone()),
            req.timeout_ms,
            req.output_limit,
        )
        .await
    }

    /// Sends a request answered as an exec is (output, then the end).
    pub(super) async fn start_stream(
        &self,
        msg: &HostMsg,
        timeout_ms: Option<u64>,
        output_limit: u64,
    ) -> Result<ExecStream, EngineError> {
        let (id, epoch, rx) = self.send(msg).await?;
        let deadline = timeout_ms.map(|ms| {
            let after = Duration::from_millis(ms).saturating_add(EXEC_REPORT_GRACE);
            (until(after), after)
        });
        Ok(ExecStream {
            id,
            rx,
            client: self.clone(),
            limit: output_limit,
            seen: [0, 0],
            deadline,
            epoch,
            done: false,
        })
    }

    /// Runs a command, handing each output chunk to `sink` as it arrives.
    pub async fn exec_with(
        &self,
        req: &ExecRequest,
        mut sink: impl FnMut(Stream, &[u8]),
    ) -> Result<ExecStatus, EngineError> {
        let mut run = self.exec_stream(req).await?;
        while let Some(ev) = run.next().await {
            match ev? {
                ExecEvent::Output { stream, data } => sink(stream, &data),
                ExecEvent::Exited(status) => return Ok(status),
            }
        }
        Err(closed_err())
    }

    /// Runs a command and collects its output.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecOutput, EngineError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let status = self
            .exec_with(req, |s, d| match s {
                Stream::Stdout => stdout.extend_from_slice(d),
                Stream::Stderr => stderr.extend_from_slice(d),
            })
            .await?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }
}

/// The instant `after` from now, or about a year away for a huge `after`.
fn until(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86400))
}
