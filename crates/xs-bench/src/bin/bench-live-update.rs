//! `cargo xtask bench live-update [--xs-host PATH] [--nodes N] [--clients N] [--pause SECS]
//! [--show-log]`: live update
//! of a loaded xs-host (issue 18). A store of 120,000 nodes, 1,000 connected clients with
//! 10,000 watches among them and 100 open transactions is handed from one process to the
//! next by `CONTROL live-update -f <the same binary>` then `-s -t 0 -F`, as
//! `xenstore-control` sends them. Prints:
//!
//! * `bench live_update_downtime_120k <ms> ms`: from sending `-s` to its `OK`, which the
//!   new process sends as its first reply (the old one answers nothing meanwhile);
//! * `bench state_bytes_120k <n> bytes`: the state stream;
//! * `bench state_write_120k <ms> ms`, `bench state_read_120k <ms> ms`: saving it in the
//!   old process and restoring it in the new one, as each logs them;
//! * `bench live_update_serving_120k <ms> ms`: the new process's start to serving.
//!
//! Every client is checked afterwards: its watches fire, its transaction commits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xs_bench::client::{Client, Payload};
use xs_core::wire::MsgType;

const TIMEOUT: Duration = Duration::from_secs(60);

struct Args {
    xs_host: PathBuf,
    nodes: usize,
    clients: usize,
    /// `--pause SECS`: wait before the update (to attach a profiler to the daemon).
    pause: Option<u64>,
    /// `--show-log`: print the daemon's log.
    show_log: bool,
}

fn parse_args() -> Args {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut a = Args {
        xs_host: root.join("target/release/xs-host"),
        nodes: 120_000,
        clients: 1000,
        pause: None,
        show_log: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--xs-host" => a.xs_host = PathBuf::from(value()),
            "--nodes" => a.nodes = value().parse().expect("--nodes N"),
            "--clients" => a.clients = value().parse().expect("--clients N"),
            "--pause" => a.pause = Some(value().parse().expect("--pause SECS")),
            "--show-log" => a.show_log = true,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn control(c: &mut Client, args: &[&[u8]]) -> String {
    let id = c
        .queue(MsgType::Control, 0, Payload::strings(args))
        .expect("queue");
    c.flush().expect("flush");
    let r = c.recv_reply(id).expect("reply").ok().expect("CONTROL");
    String::from_utf8_lossy(r.payload)
        .trim_end_matches('\0')
        .to_owned()
}

/// The figure `after` names in the log's line containing `marker`, in ms.
fn logged_ms(log: &str, marker: &str, after: &str) -> Option<f64> {
    let line = log.lines().rfind(|l| l.contains(marker))?;
    let rest = line.split(after).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn logged_bytes(log: &str) -> Option<u64> {
    let line = log.lines().rfind(|l| l.contains("state written"))?;
    let rest = line.split("records, ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn main() {
    let args = parse_args();
    assert!(
        args.xs_host.exists(),
        "{} missing: cargo build --release -p xs-host",
        args.xs_host.display()
    );
    let dir = std::env::temp_dir().join(format!("xs-bench-lu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("sock");
    let log_path = dir.join("log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut daemon: Child = Command::new(&args.xs_host)
        .args(["-N", "-s"])
        .arg(&socket)
        .args(["-Q", "nodes=0", "-Q", "watches=0", "-Q", "transactions=0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("xs-host");
    let started = Instant::now();
    while !socket.exists() {
        assert!(started.elapsed() < TIMEOUT, "xs-host did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let result = std::panic::catch_unwind(|| run(&args, &socket, &log_path, daemon.id()));
    let _ = daemon.kill();
    let _ = daemon.wait();
    if result.is_err() {
        eprintln!(
            "daemon log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn run(args: &Args, socket: &Path, log_path: &Path, daemon_pid: u32) {
    let t = Instant::now();
    let mut setup = Client::connect(socket, TIMEOUT).expect("connect");
    // The tree: 100 domains' worth of backend-like directories, values of 10-30 bytes.
    let mut pending = Vec::new();
    for i in 0..args.nodes {
        let path = format!(
            "/local/domain/{}/device/vif/{}/entry-{i}",
            i % 100,
            (i / 100) % 50
        );
        let value = format!("value-{i}-{}", "x".repeat(i % 20));
        let id = setup
            .queue(
                MsgType::Write,
                0,
                Payload {
                    strings: &[path.as_bytes()],
                    tail: value.as_bytes(),
                },
            )
            .expect("queue");
        pending.push(id);
        if pending.len() == 512 {
            setup.flush().expect("flush");
            for id in pending.drain(..) {
                setup.recv_reply(id).expect("write").ok().expect("write");
            }
        }
    }
    setup.flush().expect("flush");
    for id in pending.drain(..) {
        setup.recv_reply(id).expect("write").ok().expect("write");
    }
    eprintln!(
        "{} nodes written in {:.1} s",
        args.nodes,
        t.elapsed().as_secs_f64()
    );

    // Clients, each with ten watches; every tenth with a transaction open.
    let mut clients = Vec::with_capacity(args.clients);
    let mut txs = Vec::new();
    for c in 0..args.clients {
        let mut client = Client::connect(socket, TIMEOUT).expect("connect");
        let mut ids = Vec::new();
        for w in 0..10 {
            let path = format!("/local/domain/{}/device/vif/{w}", c % 100);
            let token = format!("c{c}w{w}");
            ids.push(
                client
                    .queue(
                        MsgType::Watch,
                        0,
                        Payload::strings(&[path.as_bytes(), token.as_bytes()]),
                    )
                    .expect("queue"),
            );
        }
        client.flush().expect("flush");
        for id in ids {
            client.recv_reply(id).expect("watch").ok().expect("watch");
        }
        for _ in 0..10 {
            client.next_event().expect("initial event");
        }
        if c % 10 == 0 {
            let id = client
                .queue(MsgType::TransactionStart, 0, Payload::strings(&[b""]))
                .expect("queue");
            client.flush().expect("flush");
            let r = client.recv_reply(id).expect("start").ok().expect("start");
            let tx: u32 = String::from_utf8_lossy(r.payload)
                .trim_end_matches('\0')
                .parse()
                .expect("tx id");
            let path = format!("/tx/c{c}");
            let id = client
                .queue(
                    MsgType::Write,
                    tx,
                    Payload {
                        strings: &[path.as_bytes()],
                        tail: b"in-tx",
                    },
                )
                .expect("queue");
            client.flush().expect("flush");
            client.recv_reply(id).expect("write").ok().expect("write");
            txs.push((c, tx));
        }
        clients.push(client);
    }
    eprintln!(
        "{} clients, {} watches, {} transactions open",
        clients.len(),
        clients.len() * 10,
        txs.len()
    );

    if let Some(secs) = args.pause {
        eprintln!("pausing {secs} s before the update (xs-host pid {daemon_pid})");
        std::thread::sleep(Duration::from_secs(secs));
    }
    let bin = args.xs_host.to_string_lossy().into_owned();
    let mut lu = Client::connect(socket, TIMEOUT).expect("connect");
    let answer = control(&mut lu, &[b"live-update", b"-f", bin.as_bytes()]);
    assert_eq!(answer, "OK", "-f");
    let t = Instant::now();
    let answer = control(&mut lu, &[b"live-update", b"-s", b"-t", b"0", b"-F"]);
    let downtime = t.elapsed();
    assert_eq!(answer, "OK", "-s");

    // Every client is still there: a write fires its watches, its transaction commits.
    let mut check = Client::connect(socket, TIMEOUT).expect("connect");
    for w in 0..10 {
        let path = format!("/local/domain/0/device/vif/{w}/after");
        let id = check
            .queue(
                MsgType::Write,
                0,
                Payload {
                    strings: &[path.as_bytes()],
                    tail: b"1",
                },
            )
            .expect("queue");
        check.flush().expect("flush");
        check.recv_reply(id).expect("write").ok().expect("write");
    }
    for (c, client) in clients.iter_mut().enumerate() {
        if c % 100 == 0 {
            for _ in 0..10 {
                let e = client.next_event().expect("event after the update");
                assert!(e.path.ends_with(b"/after"), "{e:?}");
            }
        }
    }
    for &(c, tx) in &txs {
        let client = &mut clients[c];
        let id = client
            .queue(MsgType::TransactionEnd, tx, Payload::strings(&[b"T"]))
            .expect("queue");
        client.flush().expect("flush");
        client.recv_reply(id).expect("commit").ok().expect("commit");
    }

    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    if args.show_log {
        eprint!("{log}");
    }
    let written = logged_ms(&log, "state written", "clients) in ");
    let read = logged_ms(&log, "took over", "bytes read in ");
    let serving = logged_ms(&log, "took over", "serving after ");
    let bytes = logged_bytes(&log);
    let ms = downtime.as_secs_f64() * 1e3;
    println!("bench live_update_downtime_120k {ms:.1} ms");
    if let Some(b) = bytes {
        println!("bench state_bytes_120k {b} bytes");
    }
    if let Some(w) = written {
        println!("bench state_write_120k {w:.1} ms");
    }
    if let Some(r) = read {
        println!("bench state_read_120k {r:.1} ms");
    }
    if let Some(s) = serving {
        println!("bench live_update_serving_120k {s:.1} ms");
    }
    eprintln!(
        "downtime {ms:.1} ms (goal <= 100 ms): {}",
        if ms <= 100.0 { "met" } else { "NOT met" }
    );
}
