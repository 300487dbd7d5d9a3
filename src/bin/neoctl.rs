//! `neoctl`: operate a cluster through its admin node (`-a ADDRESS`, default
//! 127.0.0.1:9999). DENIED and NOT_READY answers print their message and exit non-zero.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use neo::ctl::{self, CtlError};
use neo::proto::Address;
use neo::runtime::client;

#[derive(Parser)]
#[command(name = "neoctl", about = "Operate a NEO cluster through its admin node", version, after_help = ctl::USAGE)]
struct Cli {
    /// The admin node's address.
    #[arg(short = 'a', long, default_value = "127.0.0.1:9999")]
    address: String,
    /// The command (see below).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let address = match Address::parse_with_default(&cli.address, Some(neo::config::ADMIN_PORT)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("neoctl: -a: {e}");
            return ExitCode::from(2);
        }
    };
    let cmd = match ctl::parse(&cli.command) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("neoctl: {e}\n\n{}", ctl::USAGE);
            return ExitCode::from(2);
        }
    };
    let answers = match client::request(&address, &ctl::requests(&cmd), Duration::from_secs(60)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ERROR: {e}");
            return ExitCode::FAILURE;
        }
    };
    match ctl::render(&cmd, &answers) {
        Ok(text) => {
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(CtlError::Denied(msg)) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
        Err(CtlError::Error(msg)) => {
            eprintln!("ERROR: {msg}");
            ExitCode::FAILURE
        }
    }
}
