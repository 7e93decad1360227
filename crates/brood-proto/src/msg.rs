//! The messages carried in frames: [`HostMsg`] from the host to the agent,
//! [`GuestMsg`] from the agent to the host.
//!
//! Every `HostMsg` is a request with a host-chosen, non-zero frame id; the
//! agent answers it with one or more `GuestMsg` frames carrying the same id,
//! the last of which is final ([`GuestMsg::is_final`]). The agent also sends
//! unsolicited messages with id 0: [`GuestMsg::Ready`] once at start and
//! [`GuestMsg::Point`] whenever a guest process announces a named point.
//!
//! New variants go at the end of each enum: postcard encodes a variant by its
//! index, so appending keeps older peers decoding what they know.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Default cap on the bytes of stdout and of stderr an exec returns (16 MiB each).
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 << 20;
/// Size of the output chunks the agent streams back.
pub const OUTPUT_CHUNK: usize = 64 * 1024;
/// Longest point name the agent accepts.
pub const MAX_POINT_NAME: usize = 64;

/// A request from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// Run a command; answered by [`GuestMsg::Output`] chunks and a final [`GuestMsg::Exited`].
    Exec(ExecRequest),
    /// Read part of a file; answered by [`GuestMsg::FileData`].
    ReadFile(ReadFileRequest),
    /// Write part of a file; answered by [`GuestMsg::Written`].
    WriteFile(WriteFileRequest),
    /// Set the kernel hostname and /etc/hostname; answered by [`GuestMsg::Ok`].
    SetHostname {
        /// The new hostname (1-64 characters of `[A-Za-z0-9-.]`).
        hostname: String,
    },
    /// Sync disks and power the guest off; answered by [`GuestMsg::Ok`] first.
    PowerOff,
    /// Describe the guest; answered by [`GuestMsg::Info`].
    Info,
    /// Release the guest process blocked at point `seq` with `message`;
    /// answered by [`GuestMsg::Ok`].
    AnswerPoint {
        /// The `seq` of the [`Point`] being answered.
        seq: u32,
        /// Bytes handed to the process that announced the point.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// Prepare to be forked: run the image's identity-independent services,
    /// sync the disks, then wait at a fork point. Answered by
    /// [`GuestMsg::AtForkPoint`] (or an error with the failing service's output).
    PrepareFork,
    /// Sent to a forked child: apply this identity to the waiter at fork
    /// point `seq`, run the identity-dependent services, and answer
    /// [`GuestMsg::ForkDone`]. `seq` is from [`GuestMsg::AtForkPoint`] or
    /// from a [`Point`] named [`FORK_POINT`].
    CompleteFork {
        /// The fork point being released.
        seq: u32,
        /// The child's identity.
        config: ChildConfig,
    },
    /// Rehearse [`HostMsg::CompleteFork`] at fork point `seq` without
    /// consuming it: apply the guest's current identity again and write the
    /// child files to scratch paths. Under TCG a forked child starts with an
    /// empty translation cache, and translating the identity path costs far
    /// more than running it; a pool child rehearses before it is handed out.
    /// Answered by [`GuestMsg::Ok`].
    WarmFork {
        /// The fork point.
        seq: u32,
    },
    /// Kill (SIGKILL to its process group) the command that the
    /// [`HostMsg::Exec`] with frame id `exec_id` runs: the host sends it when
    /// whoever asked for the command went away. That exec then ends as
    /// usual, with its final [`GuestMsg::Exited`]. Answered by
    /// [`GuestMsg::Ok`], or an error of kind [`ErrorKind::NotFound`] when no
    /// such command runs (it ended already). An agent older than this
    /// message answers [`ErrorKind::BadRequest`].
    CancelExec {
        /// The frame id of the `Exec` request.
        exec_id: u32,
    },
    /// Give NIC `nic` (`eth<nic>`) an IPv4 address, bring it up and, with
    /// a gateway, route through it: what a child's identity does for
    /// `eth0`, for a VM on a brood network. Answered by [`GuestMsg::Ok`];
    /// an agent older than this message answers [`ErrorKind::BadRequest`].
    SetIpv4 {
        /// The NIC's index among the VM's NICs (at most 31).
        nic: u32,
        /// Its address.
        config: Ipv4Config,
    },
    /// Run an interactive command (stdin open, optionally on a terminal);
    /// answered first by an empty `Stdout` [`GuestMsg::Output`] once it runs
    /// (or an error when it cannot start), then as [`HostMsg::Exec`] is:
    /// output chunks and a final [`GuestMsg::Exited`].
    /// [`HostMsg::CancelExec`] kills it too.
    Session(crate::session::SessionRequest),
    /// Hand `data` to the stdin of the session with frame id `exec_id`
    /// (then close it when `eof`); answered by [`GuestMsg::Ok`] once the
    /// command took the bytes. Send the next chunk after that answer.
    SessionInput {
        /// The frame id of the `Session` request.
        exec_id: u32,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// Close stdin after them (on a terminal: send end-of-file).
        eof: bool,
    },
    /// Resize the terminal of session `exec_id` (the kernel sends its
    /// foreground process group SIGWINCH); answered by [`GuestMsg::Ok`].
    SessionResize {
        /// The frame id of the `Session` request.
        exec_id: u32,
        /// The new size.
        size: crate::session::WinSize,
    },
    /// Send signal `signal` (1-64) to the process group of session
    /// `exec_id`; answered by [`GuestMsg::Ok`].
    SessionSignal {
        /// The frame id of the `Session` request.
        exec_id: u32,
        /// The signal number.
        signal: i32,
    },
    /// Describe the file at `path`; answered by [`GuestMsg::FileStat`].
    StatFile {
        /// Absolute path in the guest.
        path: String,
    },
}

/// The name of the point at which a guest waits to be forked.
pub const FORK_POINT: &str = "fork";

/// A child's identity, applied by the agent without a reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildConfig {
    /// The child's number among its template's children.
    pub index: u32,
    /// Its hostname.
    pub hostname: String,
    /// The MAC address for each NIC, in order (`eth0`, `eth1`, ...).
    pub macs: Vec<[u8; 6]>,
    /// An IPv4 address for the first NIC.
    pub ipv4: Option<Ipv4Config>,
    /// The domain identity handed to this child from an identity pool.
    pub identity: Option<String>,
    /// Fresh entropy mixed into the kernel RNG, which is then reseeded.
    #[serde(with = "serde_bytes")]
    pub entropy: Vec<u8>,
    /// The new /etc/machine-id (32 lowercase hex digits).
    pub machine_id: String,
    /// Key-values for the services (`--set key=value`).
    pub values: Vec<(String, String)>,
    /// The host's wall-clock time (ns since the epoch) to set in the child,
    /// whose clock otherwise carries on from the template's; 0 leaves it.
    pub time_unix_ns: u64,
}

/// An IPv4 configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Config {
    /// The address.
    pub address: [u8; 4],
    /// Prefix length, 0-32.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Option<[u8; 4]>,
}

/// How one service script ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceResult {
    /// The script's file name.
    pub name: String,
    /// Its exit code, when it exited.
    pub code: Option<i32>,
    /// Its combined stdout and stderr, cut to 64 KiB.
    pub output: String,
    /// How long it ran.
    pub duration_ms: u64,
}

/// What a child reports after [`HostMsg::CompleteFork`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkReport {
    /// The identity-dependent services that ran, in order.
    pub services: Vec<ServiceResult>,
    /// Why the child is not ready, when it is not: an identity step or a
    /// service that failed.
    pub failed: Option<String>,
    /// Guest uptime when done (the template's uptime plus the child's own).
    pub uptime_ms: u64,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Run this argv directly; `argv[0]` is looked up in `PATH`.
    Argv(Vec<String>),
    /// Run this string with `/bin/sh -c`.
    Shell(String),
}

/// A command to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The command.
    pub command: Command,
    /// Variables added to the agent's environment.
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's own (`/`) when `None`.
    pub cwd: Option<String>,
    /// Bytes written to the command's stdin, which is then closed.
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
    /// Kill the command (SIGKILL to its process group) after this long.
    pub timeout_ms: Option<u64>,
    /// Most bytes of stdout, and of stderr, sent back; the rest is read and dropped.
    pub output_limit: u64,
}

impl ExecRequest {
    /// A shell command with no stdin, no timeout and the default output limit.
    pub fn shell(cmd: impl Into<String>) -> Self {
        Self {
            command: Command::Shell(cmd.into()),
            env: Vec::new(),
            cwd: None,
            stdin: Vec::new(),
            timeout_ms: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }
}

/// Reads `max_len` bytes of `path` from `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFileRequest {
    /// Absolute path in the guest.
    pub path: String,
    /// Where to start.
    pub offset: u64,
    /// Most bytes to return; capped by the agent at [`crate::MAX_DATA_CHUNK`].
    pub max_len: u32,
}

/// Writes `data` to `path` at `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFileRequest {
    /// Absolute path in the guest.
    pub path: String,
    /// Where to write.
    pub offset: u64,
    /// Truncate the file to `offset` before writing.
    pub truncate: bool,
    /// Mode for a file that does not exist yet.
    pub mode: u32,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A message from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMsg {
    /// Sent once, unsolicited (id 0), when the agent starts serving.
    Ready(Ready),
    /// Unsolicited (id 0): a guest process announced a named point and waits
    /// for [`HostMsg::AnswerPoint`].
    Point(Point),
    /// A chunk of a running command's output.
    Output {
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: ByteBuf,
    },
    /// A command ended (final).
    Exited(ExecStatus),
    /// Part of a file (final).
    FileData(FileData),
    /// Bytes written (final).
    Written {
        /// How many bytes were written.
        len: u64,
    },
    /// Guest description (final).
    Info(AgentInfo),
    /// The request succeeded and returns nothing (final).
    Ok,
    /// The request failed (final).
    Error(AgentError),
    /// Final reply to [`HostMsg::PrepareFork`]: the agent waits at fork point `seq`.
    AtForkPoint {
        /// The fork point to name in [`HostMsg::CompleteFork`].
        seq: u32,
        /// The identity-independent services that ran.
        services: Vec<ServiceResult>,
    },
    /// Final reply to [`HostMsg::CompleteFork`].
    ForkDone(ForkReport),
    /// A file's metadata (final reply to [`HostMsg::StatFile`]).
    FileStat(crate::session::FileStat),
}

impl GuestMsg {
    /// Whether this message ends the exchange of its request id.
    pub fn is_final(&self) -> bool {
        !matches!(self, GuestMsg::Output { .. })
    }
}

/// The agent's start-up announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Protocol version the agent speaks.
    pub proto_version: u8,
    /// The agent's version.
    pub agent_version: String,
    /// Guest uptime when the agent became ready.
    pub uptime_ms: u64,
}

/// An announced point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    /// Sequence number to quote in [`HostMsg::AnswerPoint`].
    pub seq: u32,
    /// The point's name, such as `fork` or `trigger`.
    pub name: String,
}

/// An output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStatus {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// The agent killed it when its timeout expired.
    pub timed_out: bool,
    /// Total bytes the command wrote to stdout (including dropped ones).
    pub stdout_len: u64,
    /// Total bytes the command wrote to stderr (including dropped ones).
    pub stderr_len: u64,
    /// Stdout went over the output limit and was cut.
    pub stdout_truncated: bool,
    /// Stderr went over the output limit and was cut.
    pub stderr_truncated: bool,
}

/// Part of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    /// The bytes read.
    pub data: ByteBuf,
    /// The file's size.
    pub size: u64,
    /// Whether the read reached the end of the file.
    pub eof: bool,
}

/// What the agent reports about the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's version.
    pub agent_version: String,
    /// Protocol version.
    pub proto_version: u8,
    /// Kernel hostname.
    pub hostname: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// Guest uptime.
    pub uptime_ms: u64,
    /// Online CPUs.
    pub cpus: u32,
    /// MemTotal from /proc/meminfo.
    pub mem_total_kib: u64,
    /// MemAvailable from /proc/meminfo.
    pub mem_available_kib: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The frame could not be decoded or the request was invalid.
    BadRequest,
    /// A file or program does not exist.
    NotFound,
    /// The guest refused access.
    PermissionDenied,
    /// Another I/O error.
    Io,
    /// A request or file was over a size limit.
    TooLarge,
    /// The agent does not support this request.
    Unsupported,
    /// Nothing waits at the answered point.
    NoSuchPoint,
}

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What went wrong, for people.
    pub message: String,
}

impl AgentError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoded, FrameDecoder, encode_frame};

    fn round_trip<M>(msg: &M) -> M
    where
        M: Serialize + serde::de::DeserializeOwned,
    {
        let bytes = encode_frame(11, msg).unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        match dec.next_frame() {
            Some(Decoded::Frame(f)) => f.decode().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_host_message_round_trips() {
        let msgs = vec![
            HostMsg::Exec(ExecRequest {
                command: Command::Argv(vec!["ls".into(), "-l".into()]),
                env: vec![("A".into(), "b".into())],
                cwd: Some("/tmp".into()),
                stdin: b"in".to_vec(),
                timeout_ms: Some(5),
                output_limit: 10,
            }),
            HostMsg::Exec(ExecRequest::shell("exit 7")),
            HostMsg::ReadFile(ReadFileRequest {
                path: "/etc/x".into(),
                offset: 3,
                max_len: 9,
            }),
            HostMsg::WriteFile(WriteFileRequest {
                path: "/tmp/y".into(),
                offset: 0,
                truncate: true,
                mode: 0o644,
                data: vec![0, 1, 2],
            }),
            HostMsg::SetHostname {
                hostname: "h".into(),
            },
            HostMsg::PowerOff,
            HostMsg::Info,
            HostMsg::PrepareFork,
            HostMsg::CompleteFork {
                seq: 4,
                config: ChildConfig {
                    index: 3,
                    hostname: "web-3".into(),
                    macs: vec![[0x52, 0x54, 0, 1, 2, 3]],
                    ipv4: Some(Ipv4Config {
                        address: [10, 0, 0, 3],
                        prefix: 24,
                        gateway: Some([10, 0, 0, 1]),
                    }),
                    identity: Some("dom-7".into()),
                    entropy: vec![9; 64],
                    machine_id: "0123456789abcdef0123456789abcdef".into(),
                    values: vec![("class".into(), "dns".into())],
                    time_unix_ns: 1_795_000_000_000_000_000,
                },
            },
            HostMsg::WarmFork { seq: 4 },
            HostMsg::CancelExec { exec_id: 9 },
            HostMsg::Session(crate::session::SessionRequest {
                command: Command::Shell("sh".into()),
                env: vec![("TERM".into(), "xterm".into())],
                cwd: None,
                tty: Some(crate::session::WinSize { rows: 24, cols: 80 }),
                timeout_ms: None,
            }),
            HostMsg::SessionInput {
                exec_id: 3,
                data: b"ls\n".to_vec(),
                eof: true,
            },
            HostMsg::SessionResize {
                exec_id: 3,
                size: crate::session::WinSize { rows: 5, cols: 6 },
            },
            HostMsg::SessionSignal {
                exec_id: 3,
                signal: 2,
            },
            HostMsg::StatFile {
                path: "/etc/hosts".into(),
            },
            HostMsg::AnswerPoint {
                seq: 2,
                message: b"child 1".to_vec(),
            },
        ];
        for m in msgs {
            assert_eq!(round_trip(&m), m);
        }
    }

    #[test]
    fn every_guest_message_round_trips() {
        let msgs = vec![
            GuestMsg::Ready(Ready {
                proto_version: 1,
                agent_version: "0.1".into(),
                uptime_ms: 9,
            }),
            GuestMsg::Point(Point {
                seq: 1,
                name: "fork".into(),
            }),
            GuestMsg::Output {
                stream: Stream::Stderr,
                data: ByteBuf::from(vec![1, 2]),
            },
            GuestMsg::Exited(ExecStatus {
                code: Some(7),
                signal: None,
                timed_out: false,
                stdout_len: 1,
                stderr_len: 2,
                stdout_truncated: true,
                stderr_truncated: false,
            }),
            GuestMsg::FileData(FileData {
                data: ByteBuf::from(vec![3]),
                size: 1,
                eof: true,
            }),
            GuestMsg::Written { len: 4 },
            GuestMsg::Info(AgentInfo {
                agent_version: "0.1".into(),
                proto_version: 1,
                hostname: "g".into(),
                kernel_release: "6.1".into(),
                uptime_ms: 1,
                cpus: 2,
                mem_total_kib: 3,
                mem_available_kib: 4,
            }),
            GuestMsg::Ok,
            GuestMsg::Error(AgentError::new(ErrorKind::NotFound, "no such file")),
            GuestMsg::AtForkPoint {
                seq: 4,
                services: vec![ServiceResult {
                    name: "10-warm".into(),
                    code: Some(0),
                    output: "ok".into(),
                    duration_ms: 3,
                }],
            },
            GuestMsg::ForkDone(ForkReport {
                services: vec![],
                failed: Some("20-dns exited 1".into()),
                uptime_ms: 5,
            }),
            GuestMsg::FileStat(crate::session::FileStat {
                kind: crate::session::FileKind::File,
                size: 7,
                mode: 0o755,
            }),
        ];
        for m in msgs {
            assert_eq!(round_trip(&m), m);
        }
        assert!(
            !GuestMsg::Output {
                stream: Stream::Stdout,
                data: ByteBuf::new()
            }
            .is_final()
        );
        assert!(GuestMsg::Ok.is_final());
    }

    #[test]
    fn huge_declared_vec_length_fails_cleanly() {
        // Variant 0 (Exec), command Argv with a declared length of 2^63 elements.
        let body = [0u8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        let f = crate::RawFrame {
            id: 1,
            body: body.to_vec(),
        };
        assert!(f.decode::<HostMsg>().is_err());
    }
}
