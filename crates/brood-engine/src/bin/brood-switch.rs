//! `brood-switch --config FILE`: the switch I/O partition's process (see
//! `brood_engine::switch`). broodd starts and supervises one per network
//! zone; it runs until killed and re-reads FILE on SIGHUP.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let config = match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(path), None) if flag == "--config" => PathBuf::from(path),
        _ => {
            eprintln!("usage: brood-switch --config FILE");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("brood-switch: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(brood_engine::switch::run(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("brood-switch: {e}");
            ExitCode::FAILURE
        }
    }
}
