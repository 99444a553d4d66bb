//! The command line: the help text, and the arguments it describes.

use std::path::PathBuf;
use std::time::Duration;

pub(crate) const HELP: &str = "\
bench-socket: XenStore daemons measured through their Unix sockets, side by side.

usage: bench-socket [--socket NAME=PATH ...] [--start-anchors] [--pid NAME=PID ...]
                    [--quick] [--filter SUBSTR] [--baseline NAME] [--timeout SECS]
                    [--runs N] [--boot-guests N] [--boot-toolstacks N] [--anchors DIR]
                    [--pin C,D | --no-pin]

  --socket NAME=PATH   measure the daemon serving PATH, reported as NAME (repeatable)
  --start-anchors      also start cxenstored, oxenstored and the echo floor with
                       DIR/start-anchor.sh on temporary sockets (measured first, under
                       those names) and stop them at the end
  --anchors DIR        where start-anchor.sh lives (default $XS_ANCHORS or
                       /work/shared/anchors)
  --pid NAME=PID       the process of socket NAME, for memory figures (default: the pid in
                       PATH.pid, else the process holding the listening socket)
  --quick              short runs (a smoke test: under a minute for four daemons)
  --filter SUBSTR      run only the workloads whose name (or a metric's) contains SUBSTR
  --baseline NAME      the socket ratios are computed against (default: the first)
  --timeout SECS       give up on a daemon that does not answer within SECS (default 10)
  --runs N             measured runs per workload and daemon (default 25 of 40 ms;
                       --quick 5 of 20 ms; the boot storm at most 5, --quick 3)
  --boot-guests N      guests of the boot storm (default 100; --quick 20)
  --boot-toolstacks N  parallel toolstack connections of the boot storm (default 4)
  --pin C,D            run bench-socket on CPU C and every daemon (whose process is known)
                       on CPU D; default: the first two CPUs this process may use, if there
                       are two or more. Each daemon's previous affinity is restored at the
                       end. (On a VM a same-core round trip is about half a cross-core one,
                       and unpinned the scheduler flips between the two every few seconds.)
  --no-pin             leave placement to the scheduler
  --help               this text

Output: `bench <metric>@<NAME> <value> <unit>` on stdout; progress, the side-by-side table
(ratios against the baseline) and the issue's goals (for sockets named xs, cxenstored,
oxenstored, echo) on stderr. Exit status 1 if a workload failed on some daemon.

Workloads (one connection, one request in flight unless stated; latencies p50 and p99):
  read_1 read_2000 write_1 write_2000 directory_10 get_perms rm_node rm_dir_10
  tx_empty tx_write tx_rmw      test-xenstore's operations (us per operation; tx_write is
                                TRANSACTION_START + WRITE + commit, tx_rmw is test-xenstore's
                                `ta rmw`: 6 round trips)
  watch_fire                    a WRITE on one connection to the WATCH_EVENT on another (us)
  rm_guest_64                   RM of a guest's 64-node /local/domain/<d> (us)
  read_32_inflight              READs with 32 requests in flight on one connection (ops/s)
  reads_1_client reads_4_clients writes_1_client writes_4_clients
                                1 or 4 connections (threads), one request in flight each,
                                aggregate ops/s
  boot_storm                    guests created libxl-style by parallel toolstack connections
                                (domain nodes in a transaction, INTRODUCE, then a vif and a
                                vbd, each in its own transaction, retried on EAGAIN) while a
                                backend connection per device kind watches its backend
                                directory; time until the last event arrived (ms), EAGAIN
                                retries and events received (count)
  memory                        (last, once) RSS of the daemon process before (rss_base) and
                                after (rss_1000x50) writing 1000 domains x 50 nodes (KB), and
                                the time that population took with 64 requests in flight (ms);
                                the nodes are removed again afterwards. Measured after the other
                                workloads (the same history for every daemon): with --filter
                                memory alone, the daemons' RSS is lower
Daemons that store nothing (the echo floor; detected by writing and reading back a node)
skip rm_guest_64 and memory; so do daemons whose process is unknown for memory.
";

fn parse_pair(arg: &str, flag: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((name, rest))
            if !name.is_empty()
                && !rest.is_empty()
                && !name.contains(|c: char| c.is_whitespace() || c == '@') =>
        {
            Ok((name.to_owned(), rest.to_owned()))
        }
        _ => Err(format!(
            "{flag} wants NAME=VALUE (NAME without spaces or '@'), got {arg:?}"
        )),
    }
}

/// The command line.
pub(crate) struct Args {
    pub(crate) sockets: Vec<(String, PathBuf)>,
    pub(crate) pids: Vec<(String, u32)>,
    pub(crate) start_anchors: bool,
    pub(crate) anchors_dir: PathBuf,
    pub(crate) quick: bool,
    pub(crate) filter: Option<String>,
    pub(crate) baseline: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) runs: Option<usize>,
    pub(crate) boot_guests: Option<u32>,
    pub(crate) boot_toolstacks: usize,
    pub(crate) pin: Pin,
}

/// Where bench-socket and the daemons run (`--pin`, `--no-pin`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pin {
    /// The first two allowed CPUs, if there are two.
    Auto,
    Off,
    /// (bench-socket's CPU, the daemons' CPU).
    Cpus(usize, usize),
}

/// The command line, or `None` for `--help`; `Err` says what is wrong with it.
pub(crate) fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        sockets: Vec::new(),
        pids: Vec::new(),
        start_anchors: false,
        anchors_dir: std::env::var_os("XS_ANCHORS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/shared/anchors")),
        quick: false,
        filter: None,
        baseline: None,
        timeout: Duration::from_secs(10),
        runs: None,
        boot_guests: None,
        boot_toolstacks: 4,
        pin: Pin::Auto,
    };
    let mut args = std::env::args().skip(1);
    fn value(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
        args.next()
            .ok_or_else(|| format!("{flag} needs an argument"))
    }
    fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
        s.parse()
            .map_err(|_| format!("{flag}: not a number: {s:?}"))
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => {
                let (name, path) = parse_pair(&value(&mut args, &arg)?, &arg)?;
                a.sockets.push((name, PathBuf::from(path)));
            }
            "--pid" => {
                let (name, pid) = parse_pair(&value(&mut args, &arg)?, &arg)?;
                a.pids.push((name, number(&pid, &arg)?));
            }
            "--start-anchors" => a.start_anchors = true,
            "--anchors" => a.anchors_dir = PathBuf::from(value(&mut args, &arg)?),
            "--quick" => a.quick = true,
            "--filter" => a.filter = Some(value(&mut args, &arg)?),
            "--baseline" => a.baseline = Some(value(&mut args, &arg)?),
            "--timeout" => {
                let secs: f64 = number(&value(&mut args, &arg)?, &arg)?;
                if !(secs > 0.0 && secs < 86_400.0) {
                    return Err("--timeout: want a positive number of seconds".into());
                }
                a.timeout = Duration::from_secs_f64(secs);
            }
            "--runs" => a.runs = Some(number::<usize>(&value(&mut args, &arg)?, &arg)?.max(1)),
            "--boot-guests" => {
                a.boot_guests = Some(number::<u32>(&value(&mut args, &arg)?, &arg)?.clamp(1, 2000));
            }
            "--boot-toolstacks" => {
                a.boot_toolstacks = number::<usize>(&value(&mut args, &arg)?, &arg)?.clamp(1, 64);
            }
            "--pin" => {
                let v = value(&mut args, &arg)?;
                let (c, d) = v
                    .split_once(',')
                    .ok_or_else(|| format!("--pin wants C,D (two CPU numbers), got {v:?}"))?;
                a.pin = Pin::Cpus(number(c, &arg)?, number(d, &arg)?);
            }
            "--no-pin" => a.pin = Pin::Off,
            "--help" | "-h" => return Ok(None),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(a))
}
