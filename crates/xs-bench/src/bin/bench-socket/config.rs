//! What a run is set to do, the daemons it measures, and what can go wrong talking to them.

use std::path::PathBuf;
use std::time::Duration;

use xs_bench::client::{Client, ClientError};
use xs_bench::daemon::PidSource;

use crate::args::Args;

/// How the workloads are run: the command line with the defaults filled in.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) quick: bool,
    pub(crate) filter: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) run_time: Duration,
    pub(crate) warmup: Duration,
    pub(crate) runs: usize,
    pub(crate) boot_guests: u32,
    pub(crate) boot_toolstacks: usize,
    /// Where this process's scratch nodes live.
    pub(crate) root: String,
}

impl Config {
    /// The configuration `args` ask for: the defaults of a full or a `--quick` run, unless
    /// given.
    pub(crate) fn new(args: &Args) -> Config {
        Config {
            quick: args.quick,
            filter: args.filter.clone(),
            timeout: args.timeout,
            run_time: Duration::from_millis(if args.quick { 20 } else { 40 }),
            warmup: Duration::from_millis(if args.quick { 20 } else { 100 }),
            runs: args.runs.unwrap_or(if args.quick { 5 } else { 25 }),
            boot_guests: args
                .boot_guests
                .unwrap_or(if args.quick { 20 } else { 100 }),
            boot_toolstacks: args.boot_toolstacks,
            root: format!("/bench/socket-{}", std::process::id()),
        }
    }
}

/// A daemon under test.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) pid: Option<(u32, PidSource)>,
    /// Whether it stores what is written (false for the echo floor).
    pub(crate) stores: bool,
    /// Whether it accepts `INTRODUCE` from a socket client (`Err` has the error reply).
    pub(crate) introduce: Result<(), String>,
    /// Why it is no longer measured.
    pub(crate) dead: Option<String>,
}

impl Target {
    /// A new connection to the daemon.
    pub(crate) fn connect(&self, cfg: &Config) -> R<Client> {
        Client::connect(&self.path, cfg.timeout)
    }
}

/// What talking to a daemon gives.
pub(crate) type R<T> = Result<T, ClientError>;

/// A failure that is neither an error reply nor the connection's.
pub(crate) fn other(message: impl Into<String>) -> ClientError {
    ClientError::Protocol(message.into())
}

/// Whether an error means the daemon (or our connection to it) is gone.
pub(crate) fn kills(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Timeout | ClientError::Closed | ClientError::Io(_)
    )
}
