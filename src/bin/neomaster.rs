//! `neomaster`: a master node. Options as NEO's (`-f neo.conf -s master`, `--cluster`,
//! `--masters`, `--bind`, `--autostart`, ...); the command line overrides the file.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::process::ExitCode;

use clap::Parser;
use neo::actors::master::Master;
use neo::config::MasterArgs;
use neo::runtime;

#[derive(Parser)]
#[command(name = "neomaster", about = "NEO master node", version)]
struct Cli {
    #[command(flatten)]
    args: MasterArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (cfg, opts) = match cli.args.config() {
        Ok(c) => c,
        Err(e) => {
            runtime::log::say(format!("neomaster: {e}"));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = runtime::init_logging(opts.logfile.as_deref()) {
        runtime::log::say(format!("neomaster: {e}"));
        return ExitCode::from(2);
    }
    let name = format!("master {}", cfg.bind);
    let bind = cfg.bind.clone();
    let code = runtime::run_node(name, Some(bind), move |bound| {
        let mut cfg = cfg;
        if let Some(b) = bound {
            cfg.bind = b;
        }
        Ok(Master::new(cfg))
    });
    ExitCode::from(code.clamp(0, 255) as u8)
}
