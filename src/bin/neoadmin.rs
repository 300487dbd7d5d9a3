//! `neoadmin`: the admin node neoctl talks to. Options as NEO's (`-f neo.conf -s admin`,
//! `--cluster`, `--masters`, `--bind`).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::ExitCode;

use clap::Parser;
use neo::actors::admin::Admin;
use neo::config::AdminArgs;
use neo::runtime;

#[derive(Parser)]
#[command(name = "neoadmin", about = "NEO admin node", version)]
struct Cli {
    #[command(flatten)]
    args: AdminArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (cfg, opts) = match cli.args.config() {
        Ok(c) => c,
        Err(e) => {
            runtime::log::say(format!("neoadmin: {e}"));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = runtime::init_logging(opts.logfile.as_deref()) {
        runtime::log::say(format!("neoadmin: {e}"));
        return ExitCode::from(2);
    }
    let name = format!("admin {}", cfg.bind);
    let bind = cfg.bind.clone();
    let code = runtime::run_node(name, Some(bind), move |bound| {
        let mut cfg = cfg;
        if let Some(b) = bound {
            cfg.bind = b;
        }
        Ok(Admin::new(cfg))
    });
    ExitCode::from(code.clamp(0, 255) as u8)
}
