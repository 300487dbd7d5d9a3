//! Hosting a role inside an application's process (the client library): the node runs on a
//! thread of its own (one actix System, no listening socket), other threads hand it
//! commands through an [`AppNode`], and its replies and notices go to an [`Outlet`] called
//! on that thread. Nothing here knows what the calls mean.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::conn::Transport;
use super::{ConnEvent, NodeHost, Process};
use crate::actors::client::{Notice, Reply};
use crate::actors::{self, Command};

/// Where a hosted node's replies and notices go. Called on the node's thread, in the order
/// the node emitted them: an outlet must not block (it would stall the node).
pub trait Outlet {
    fn reply(&mut self, r: Reply);
    fn notice(&mut self, n: Notice);
}

/// A node running on a thread of its own, driven from other threads.
pub struct AppNode {
    node: Recipient<ConnEvent>,
    system: System,
    thread: Option<JoinHandle<i32>>,
}

impl AppNode {
    /// Start the node `make` builds on a new thread named `name`; `on_exit` runs on that
    /// thread once the node stopped (exited by itself or was stopped): nothing more comes
    /// out of the outlet after it.
    pub fn spawn<A, F>(
        name: String,
        make: F,
        outlet: Box<dyn Outlet + Send>,
        on_exit: Box<dyn FnOnce() + Send>,
    ) -> std::io::Result<AppNode>
    where
        A: actors::Actor + 'static,
        F: FnOnce() -> A + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let system = System::new();
                system.block_on(async move {
                    let process = Process::default();
                    let host = NodeHost::new(name, make(), process.clone(), Transport::default())
                        .with_outlet(outlet)
                        .start();
                    process.node_started(host.clone().recipient());
                    let _ = tx.send((host.recipient(), System::current()));
                });
                let code = system.run_with_code().unwrap_or(1);
                on_exit();
                code
            })?;
        let (node, system) = rx.recv().map_err(|_| {
            std::io::Error::other("the node's thread ended before the node started")
        })?;
        Ok(AppNode {
            node,
            system,
            thread: Some(thread),
        })
    }

    /// A handle to hand the node commands from any thread.
    pub fn recipient(&self) -> Recipient<ConnEvent> {
        self.node.clone()
    }

    /// Hand the node a command; false if it no longer runs.
    pub fn command(&self, cmd: Command) -> bool {
        if !self.node.connected() {
            return false;
        }
        self.node.do_send(ConnEvent::Local(cmd));
        true
    }

    /// Ask the node to stop cleanly and wait for its thread; past `grace`, stop it anyway.
    /// Returns its exit code (1 if it had to be stopped).
    pub fn stop(&mut self, grace: Duration) -> i32 {
        let Some(thread) = self.thread.take() else {
            return 0;
        };
        self.command(Command::Shutdown);
        let deadline = Instant::now() + grace;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !thread.is_finished() {
            self.system.stop_with_code(1);
        }
        thread.join().unwrap_or(1)
    }
}

impl Drop for AppNode {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}
