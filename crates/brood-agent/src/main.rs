//! The `brood-agent` binary: picks a mode from its pid and arguments and
//! hands over to the library. Arguments are parsed by hand to keep the
//! static guest binary small.
//!
//! As PID 1 (the initramfs's `/init`) it ignores its arguments, which are
//! whatever the kernel command line left over, and runs init.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use brood_agent::point::{self, POINT_SOCKET, PointError};

const USAGE: &str = "\
usage: brood-agent [COMMAND]

The brood guest agent. As PID 1 it mounts the API file systems, loads the
image's modules, starts the agent and reaps orphans.

commands:
  init                        do what PID 1 does (also the default as PID 1)
  serve                       serve on the virtio-serial port only
  announce NAME [--timeout SECS] [--socket PATH]
                              announce point NAME to the host and wait for its
                              answer, which is printed to stdout
  fork-point [--timeout SECS] [--socket PATH]
                              run the identity-independent services, wait at
                              the fork point, and print the child's
                              configuration (JSON) once it is applied
options:
  -h, --help                  print this help
  -V, --version               print the version

announce and fork-point exit 0 with the answer, 124 on timeout, 1 on other
errors (a failed service, or a child whose identity or services failed).
";

/// Exit status of `announce` when no answer came in time (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;
const EXIT_USAGE: u8 = 2;

#[derive(Debug, PartialEq)]
enum Cli {
    Init,
    Serve,
    Announce {
        name: String,
        timeout: Option<Duration>,
        socket: PathBuf,
    },
    ForkPoint {
        timeout: Option<Duration>,
        socket: PathBuf,
    },
    Version,
    Help,
}

fn parse(args: &[String]) -> Result<Cli, String> {
    let mut args = args.iter().map(String::as_str);
    let cli = match args.next() {
        None => return Err("a command is required".into()),
        Some("-h" | "--help") => Cli::Help,
        Some("-V" | "--version") => Cli::Version,
        Some("init") => Cli::Init,
        Some("serve") => Cli::Serve,
        Some("announce") => return parse_announce(args),
        Some("fork-point") => return parse_fork_point(args),
        Some(other) => return Err(format!("unknown command {other:?}")),
    };
    match args.next() {
        None => Ok(cli),
        Some(extra) => Err(format!("unexpected argument {extra:?}")),
    }
}

/// The options `announce` and `fork-point` share, and their positional arguments.
struct WaitArgs<'a> {
    timeout: Option<Duration>,
    socket: PathBuf,
    positional: Vec<&'a str>,
}

fn parse_wait<'a>(mut args: impl Iterator<Item = &'a str>) -> Result<WaitArgs<'a>, String> {
    let mut parsed = WaitArgs {
        timeout: None,
        socket: PathBuf::from(POINT_SOCKET),
        positional: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg {
            "--timeout" => {
                let value = args.next().ok_or("--timeout needs a value")?;
                let secs: f64 = value
                    .parse()
                    .map_err(|_| format!("--timeout: {value:?} is not a number of seconds"))?;
                let t = Duration::try_from_secs_f64(secs)
                    .map_err(|_| format!("--timeout: {value:?} is out of range"))?;
                parsed.timeout = Some(t);
            }
            "--socket" => {
                parsed.socket = PathBuf::from(args.next().ok_or("--socket needs a value")?);
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            value => parsed.positional.push(value),
        }
    }
    Ok(parsed)
}

fn parse_announce<'a>(args: impl Iterator<Item = &'a str>) -> Result<Cli, String> {
    let parsed = parse_wait(args)?;
    match parsed.positional.as_slice() {
        [name] => Ok(Cli::Announce {
            name: (*name).to_owned(),
            timeout: parsed.timeout,
            socket: parsed.socket,
        }),
        [] => Err("announce needs a NAME".into()),
        [_, extra, ..] => Err(format!("unexpected argument {extra:?}")),
    }
}

fn parse_fork_point<'a>(args: impl Iterator<Item = &'a str>) -> Result<Cli, String> {
    let parsed = parse_wait(args)?;
    match parsed.positional.first() {
        None => Ok(Cli::ForkPoint {
            timeout: parsed.timeout,
            socket: parsed.socket,
        }),
        Some(extra) => Err(format!("unexpected argument {extra:?}")),
    }
}

fn main() -> ExitCode {
    if nix::unistd::getpid().as_raw() == 1 {
        brood_agent::init::run();
    }
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cli = match parse(&args) {
        Ok(cli) => cli,
        Err(msg) => {
            eprintln!("brood-agent: {msg}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli {
        Cli::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Cli::Version => {
            println!("brood-agent {}", brood_agent::VERSION);
            ExitCode::SUCCESS
        }
        Cli::Init => brood_agent::init::run(),
        Cli::Serve => match brood_agent::port::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("brood-agent: {}", brood_agent::console::chain(&err));
                ExitCode::FAILURE
            }
        },
        Cli::Announce {
            name,
            timeout,
            socket,
        } => wait("announce", point::announce(&socket, &name, timeout)),
        Cli::ForkPoint { timeout, socket } => {
            wait("fork-point", point::fork_point(&socket, timeout))
        }
    }
}

/// Prints the answer a waiting command got, or why it got none.
fn wait(command: &str, answer: Result<Vec<u8>, PointError>) -> ExitCode {
    match answer {
        Ok(message) => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&message).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("brood-agent {command}: write the answer: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(err) => {
            eprintln!(
                "brood-agent {command}: {}",
                brood_agent::console::chain(&err)
            );
            if matches!(err, PointError::Timeout { .. }) {
                ExitCode::from(EXIT_TIMEOUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn commands() {
        assert_eq!(parse(&args("--help")), Ok(Cli::Help));
        assert_eq!(parse(&args("-V")), Ok(Cli::Version));
        assert_eq!(parse(&args("init")), Ok(Cli::Init));
        assert_eq!(parse(&args("serve")), Ok(Cli::Serve));
        assert!(parse(&args("")).is_err());
        assert!(parse(&args("init extra")).is_err());
        assert!(parse(&args("bogus")).is_err());
    }

    #[test]
    fn announce_arguments() {
        assert_eq!(
            parse(&args("announce fork --timeout 2.5")),
            Ok(Cli::Announce {
                name: "fork".into(),
                timeout: Some(Duration::from_millis(2500)),
                socket: PathBuf::from(POINT_SOCKET),
            })
        );
        assert_eq!(
            parse(&args("announce --socket /tmp/s x")),
            Ok(Cli::Announce {
                name: "x".into(),
                timeout: None,
                socket: PathBuf::from("/tmp/s"),
            })
        );
        for bad in [
            "announce",
            "announce a b",
            "announce a --timeout",
            "announce a --timeout -1",
            "announce a --timeout nan",
            "announce a --timeout 1e300",
            "announce a --bogus",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn fork_point_arguments() {
        assert_eq!(
            parse(&args("fork-point")),
            Ok(Cli::ForkPoint {
                timeout: None,
                socket: PathBuf::from(POINT_SOCKET),
            })
        );
        assert_eq!(
            parse(&args("fork-point --timeout 30 --socket /tmp/s")),
            Ok(Cli::ForkPoint {
                timeout: Some(Duration::from_secs(30)),
                socket: PathBuf::from("/tmp/s"),
            })
        );
        for bad in ["fork-point x", "fork-point --timeout", "fork-point --bogus"] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
