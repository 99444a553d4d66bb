//! Hostile clients on raw sockets: garbage, truncated frames, oversized headers, clients
//! that never read their replies or read them late, clients that hang up early, and
//! thousands of connections. After each, the daemon must be alive, answer a well-behaved
//! client, and (xs-host) exit 0 on SIGTERM.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use fastrand::Rng;
use xs_e2e::wire::{self, ty};
use xs_e2e::{Client, Daemon, Kind, Wire, note, require, xs_host_only};

/// `n` pseudo-random bytes.
fn noise(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = vec![0; n];
    rng.fill(&mut out);
    out
}

/// The daemon is alive and serves a fresh client (write, then read back).
#[track_caller]
fn assert_healthy(d: &mut Daemon, tag: &str) {
    assert!(d.alive(), "daemon died ({tag}); log:\n{}", d.log());
    let mut w = d.connect();
    let path = format!("/health/{tag}");
    w.write(&path, tag.as_bytes())
        .unwrap_or_else(|e| panic!("health write ({tag}): {e}"));
    assert_eq!(
        w.read(&path).as_deref(),
        Ok(tag.as_bytes()),
        "health read ({tag})"
    );
}

/// Sends `bytes` (ignoring a daemon that hangs up early) and closes the connection.
fn send_and_close(d: &Daemon, bytes: &[u8]) {
    let mut s = UnixStream::connect(d.socket()).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let _ = s.write_all(bytes);
}

/// Reads until the daemon closes the connection; `Ok(bytes received)`, or `Err` if it is
/// still open after `timeout`.
fn wait_closed(s: &mut UnixStream, timeout: Duration) -> Result<usize, String> {
    read_until_closed(s, timeout).map(|bytes| bytes.len())
}

/// [`wait_closed`], keeping what was received.
fn read_until_closed(s: &mut UnixStream, timeout: Duration) -> Result<Vec<u8>, String> {
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(got),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if Instant::now() > deadline {
            return Err(format!(
                "still open after {timeout:?} ({} bytes received)",
                got.len()
            ));
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits up to `timeout` for the daemon to hold at most `limit` descriptors (it closes a
/// gone client's in its next iteration); returns how many it holds.
fn fds_settled(d: &Daemon, limit: usize, timeout: Duration) -> usize {
    let start = Instant::now();
    loop {
        let fds = open_fds(d.pid());
        if fds <= limit || start.elapsed() >= timeout {
            return fds;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn random_bytes() {
    let mut d = require!(Daemon::start());
    let mut good = d.connect();
    good.write("/keep", b"k").expect("write");
    // Fixed seed: every run sends the same bytes.
    let mut rng = Rng::with_seed(0x4057_11e5_eed0_0001);
    // Pure noise: mostly headers with absurd lengths and types.
    for _ in 0..50 {
        let n = 16 + rng.usize(..65_536);
        send_and_close(&d, &noise(&mut rng, n));
    }
    // Frames with valid lengths, random payloads, and types that change nothing outside
    // the store (not CONTROL, INTRODUCE, RELEASE, RESUME, SET_TARGET), plus unknown types.
    let types = [
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        10,
        11,
        12,
        13,
        14,
        17,
        21,
        22,
        31,
        999,
        u32::MAX,
    ];
    for _ in 0..50 {
        let mut s = UnixStream::connect(d.socket()).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(5))).ok();
        for _ in 0..20 {
            let t = types[rng.usize(..types.len())];
            let len = rng.usize(..=wire::PAYLOAD_MAX);
            let mut payload = noise(&mut rng, len);
            // Sprinkle NULs so that some payloads split into several strings.
            for b in payload.iter_mut() {
                if rng.u32(..8) == 0 {
                    *b = 0;
                }
            }
            let frame = wire::encode(t, rng.u32(..), rng.u32(..3), &payload);
            if s.write_all(&frame).is_err() {
                break;
            }
        }
    }
    // Runs of short frames that line up (random payloads, the types above), sent at once;
    // the client half-closes and reads until the daemon hangs up, which it must do within
    // the timeout, after answering every request, in order. xs-host only: Debian's C
    // xenstored 4.17 aborts within a few rounds ("consider_message: Assertion
    // `conn->in == NULL' failed", with or without the half-close).
    let rounds = if Kind::from_env() == Kind::XsHost {
        50
    } else {
        note("C xenstored: the aligned-frames rounds are skipped (it aborts on them)");
        0
    };
    for round in 0..rounds {
        let mut bytes = Vec::new();
        let mut sent = Vec::new();
        for _ in 0..50 {
            let t = types[rng.usize(..types.len())];
            let req = rng.u32(..);
            let len = rng.usize(..=40);
            let mut payload = noise(&mut rng, len);
            for b in payload.iter_mut() {
                if rng.u32(..4) == 0 {
                    *b = 0;
                }
            }
            bytes.extend(wire::encode(t, req, rng.u32(..3), &payload));
            sent.push(req);
        }
        let mut s = UnixStream::connect(d.socket()).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(5))).ok();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(Shutdown::Write);
        let received = read_until_closed(&mut s, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let mut rest = &received[..];
        let mut replied = Vec::new();
        while !rest.is_empty() {
            let msg = wire::read_msg(&mut rest)
                .unwrap_or_else(|e| panic!("round {round}: a broken message: {e}"));
            if msg.ty != ty::WATCH_EVENT {
                replied.push(msg.req_id);
            }
        }
        assert_eq!(
            replied, sent,
            "round {round}: one reply per request, in order"
        );
    }
    assert_eq!(
        good.read("/keep").as_deref(),
        Ok(&b"k"[..]),
        "old connection"
    );
    assert_healthy(&mut d, "random");
    assert_eq!(
        good.control(&["check"]).as_deref(),
        Ok(&b"OK\0"[..]),
        "store check"
    );
    d.stop();
}

#[test]
fn truncated_frames() {
    let mut d = require!(Daemon::start());
    let mut good = d.connect();
    good.write("/big", &[b'b'; 2000]).expect("write");
    let read_big = wire::encode(ty::READ, 1, 0, b"/big\0");
    for i in 0..400u32 {
        let bytes: Vec<u8> = match i % 5 {
            // Half a header.
            0 => wire::header(ty::READ, i, 0, 5)[..8].to_vec(),
            // A header promising 100 bytes, and 10 of them.
            1 => {
                let mut v = wire::header(ty::WRITE, i, 0, 100).to_vec();
                v.extend_from_slice(b"/trunc\0abc");
                v
            }
            // A whole request, then half of the next header.
            2 => {
                let mut v = read_big.clone();
                v.extend_from_slice(&wire::header(ty::READ, i, 0, 5)[..7]);
                v
            }
            // A header alone, promising the maximum.
            3 => wire::header(ty::WRITE, i, 0, 4096).to_vec(),
            // Many requests, then gone before reading the replies (the daemon's writes
            // fail with EPIPE).
            _ => read_big.repeat(50),
        };
        send_and_close(&d, &bytes);
    }
    assert_eq!(
        good.read("/trunc"),
        Err("ENOENT".to_owned()),
        "a truncated WRITE applied"
    );
    assert_eq!(
        good.read("/big").map(|v| v.len()),
        Ok(2000),
        "old connection"
    );
    assert_healthy(&mut d, "truncated");
    d.stop();
}

#[test]
fn oversized_header_closes_only_that_connection() {
    let mut d = require!(Daemon::start());
    let mut good = d.connect();
    good.write("/before", b"1").expect("write");
    for len in [4097u32, 65_536, u32::MAX] {
        let mut bad = UnixStream::connect(d.socket()).expect("connect");
        bad.write_all(&wire::header(ty::WRITE, 1, 0, len))
            .expect("send header");
        let _ = bad.write_all(b"/x\0y");
        match wait_closed(&mut bad, Duration::from_secs(5)) {
            Ok(0) => {}
            Ok(n) => {
                panic!("connection that sent len {len}: {n} bytes received, no reply expected")
            }
            Err(e) => panic!("connection that sent len {len}: {e}"),
        }
        // A connection mid-way through a good request is not disturbed.
        good.write("/after", len.to_string().as_bytes())
            .expect("good connection after a bad header");
    }
    assert_eq!(good.read("/after").as_deref(), Ok(&b"4294967295"[..]));
    assert_healthy(&mut d, "oversized");
    d.stop();
}

/// Floods `socket` with READs of the 2000-byte `/big` without reading the replies, while
/// `good` keeps reading; returns a report line and asserts the daemon stayed responsive
/// (and, for xs-host, that its RSS grew by less than 64 MiB).
fn flood_without_reading(d: &mut Daemon, socket: &std::path::Path, good: &mut Wire, who: &str) {
    let rss_before = d.rss_kib();
    let mut flood = UnixStream::connect(socket).expect("connect");
    flood.set_nonblocking(true).expect("nonblocking");
    // READ of a 2000-byte node: 21 bytes in, 2016 out. At most 100k requests (200 MB of
    // replies); stop early once the daemon stops taking requests for 300 ms (backpressure).
    let batch = wire::encode(ty::READ, 7, 0, b"/big\0").repeat(64);
    let mut sent_bytes = 0usize;
    let mut stalled_since: Option<Instant> = None;
    let mut worst = Duration::ZERO;
    let mut pending = &batch[..];
    let start = Instant::now();
    while sent_bytes < 100_000 * 21 && start.elapsed() < Duration::from_secs(20) {
        match flood.write(pending) {
            Ok(n) => {
                sent_bytes += n;
                pending = &pending[n..];
                if pending.is_empty() {
                    pending = &batch[..];
                }
                stalled_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("flooding client lost its connection: {e}"),
        }
        // Meanwhile another client is served promptly.
        let t = Instant::now();
        assert_eq!(good.read("/big").map(|v| v.len()), Ok(2000));
        worst = worst.max(t.elapsed());
    }
    let requests = sent_bytes / 21;
    let rss_after = d.rss_kib();
    let grew_mib = rss_after.saturating_sub(rss_before) / 1024;
    let report = format!(
        "{:?}, {who}: {requests} requests sent in {:?} without reading; RSS {rss_before} KiB \
         -> {rss_after} KiB; worst latency of the other client {worst:?}",
        d.kind(),
        start.elapsed()
    );
    note(&report);
    assert!(d.alive(), "daemon died under the flood; log:\n{}", d.log());
    assert!(worst < Duration::from_secs(2), "{report}");
    match d.kind() {
        Kind::XsHost => assert!(grew_mib < 64, "RSS ballooned: {report}"),
        // C xenstored queues replies without bound for privileged socket connections
        // (observed: ~2 GB for 900k requests); that is the failure this test guards
        // xs-host against, so the reference run only reports it.
        Kind::CXenstored | Kind::OXenstored => {}
    }
}

#[test]
fn client_that_never_reads_its_replies() {
    let mut d = require!(Daemon::start());
    let mut good = d.connect();
    good.write("/big", &[b'x'; 2000]).expect("write");
    let socket = d.socket().to_path_buf();
    flood_without_reading(&mut d, &socket, &mut good, "dom0 socket");
    assert_healthy(&mut d, "flood");
    d.stop();
}

/// The same from a guest's per-domain socket (xs-host only: C xenstored has none).
#[test]
fn guest_that_never_reads_its_replies() {
    if !xs_host_only() {
        return;
    }
    let mut d = require!(Daemon::start());
    let mut good = d.connect();
    good.write("/big", &[b'x'; 2000]).expect("write");
    good.set_perms("/big", &["n0", "r5"]).expect("chmod");
    drop(require!(d.guest(5)));
    let socket = d.domain_socket(5).expect("domain socket");
    flood_without_reading(&mut d, &socket, &mut good, "guest socket");
    assert_healthy(&mut d, "guest-flood");
    d.stop();
}

/// A connection with a watch that never reads its events, while another client writes
/// 30000 times below the watched path with a 1000-byte token: the events must not pile up
/// without bound (xs-core bounds each connection's event queue).
#[test]
fn watcher_that_never_reads_its_events() {
    let mut d = require!(Daemon::start());
    let mut watcher = d.connect();
    let token = "t".repeat(1000);
    watcher.watch("/ev", &token).expect("watch");
    let mut writer = d.connect();
    let rss_before = d.rss_kib();
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..30_000u32 {
        let t = Instant::now();
        writer
            .write(&format!("/ev/n{}", i % 100), b"v")
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        worst = worst.max(t.elapsed());
    }
    let rss_after = d.rss_kib();
    let report = format!(
        "{:?}: 30000 events of ~1 KB for a watcher that never reads, in {:?}; RSS \
         {rss_before} KiB -> {rss_after} KiB; worst write latency {worst:?}",
        d.kind(),
        start.elapsed()
    );
    note(&report);
    assert!(worst < Duration::from_secs(2), "{report}");
    if d.kind() == Kind::XsHost {
        assert!(
            rss_after.saturating_sub(rss_before) < 32 * 1024,
            "RSS ballooned: {report}"
        );
    }
    drop(watcher);
    assert_healthy(&mut d, "watcher");
    d.stop();
}

#[test]
fn thousands_of_connections() {
    let mut d = require!(Daemon::start());
    let mut good = d.connect();
    good.write("/conn", b"").expect("write");
    let fds_before = open_fds(d.pid());
    // 5000 sequential: connect and close; every 10th makes a request first.
    for i in 0..5000u32 {
        let mut w =
            Wire::connect(d.socket()).unwrap_or_else(|e| panic!("sequential connection {i}: {e}"));
        if i % 10 == 0 {
            assert_eq!(w.read("/conn").as_deref(), Ok(&b""[..]));
        }
    }
    // 400 at once, three times: all open, each writes its node, then all replies are read.
    for round in 0..3 {
        let mut conns: Vec<Wire> = (0..400)
            .map(|i| {
                Wire::connect(d.socket())
                    .unwrap_or_else(|e| panic!("round {round}: concurrent connection {i}: {e}"))
            })
            .collect();
        for (i, w) in conns.iter_mut().enumerate() {
            let payload = [format!("/conn/c{i}\0").as_bytes(), b"v"].concat();
            w.stream()
                .write_all(&wire::encode(ty::WRITE, 1, 0, &payload))
                .expect("send");
        }
        for (i, w) in conns.iter_mut().enumerate() {
            let reply = wire::read_msg(w.stream())
                .unwrap_or_else(|e| panic!("round {round}: reply {i}: {e}"));
            assert_eq!(
                (reply.ty, reply.req_id, &reply.payload[..]),
                (ty::WRITE, 1, &b"OK\0"[..]),
                "round {round}: reply {i}: {reply:?}"
            );
        }
        assert_eq!(good.directory("/conn").map(|v| v.len()), Ok(400));
    }
    // 4 threads opening and closing 250 connections each, concurrently.
    std::thread::scope(|s| {
        for t in 0..4 {
            let d = &d;
            s.spawn(move || {
                for i in 0..250 {
                    let mut w = Wire::connect(d.socket())
                        .unwrap_or_else(|e| panic!("thread {t} connection {i}: {e}"));
                    if i % 25 == 0 {
                        assert!(w.read("/conn").is_ok());
                    }
                }
            });
        }
    });
    // Closed connections are reaped: no descriptor leak.
    let fds_after = fds_settled(&d, fds_before + 2, Duration::from_secs(2));
    assert!(
        fds_after <= fds_before + 2,
        "daemon holds {fds_after} descriptors, {fds_before} before the connections"
    );
    assert_eq!(good.read("/conn/c399").as_deref(), Ok(&b"v"[..]));
    assert_healthy(&mut d, "connections");
    d.stop();
}

/// A client that sends many requests without reading its replies is held back while the
/// others are served; when it reads, it gets every reply, in order.
#[test]
fn client_that_reads_its_replies_late_gets_them_all_in_order() {
    const N: u32 = 50_000;
    let mut d = require!(Daemon::start());
    let mut good = d.connect();
    good.write("/bp", b"value").expect("write");
    let mut slow = d.connect();
    let mut writer = slow.stream().try_clone().expect("clone the socket");
    let sender = std::thread::spawn(move || {
        let requests: Vec<u8> = (1..=N)
            .flat_map(|req| wire::encode(ty::READ, req, 0, b"/bp\0"))
            .collect();
        // Blocks once the daemon stops reading.
        writer.write_all(&requests).expect("send the requests");
    });
    // The daemon is taking the slow client's requests once its first reply arrives.
    let check_reply = |msg: wire::Msg, req: u32| {
        assert_eq!(
            (msg.ty, msg.req_id, &msg.payload[..]),
            (ty::READ, req, &b"value"[..]),
            "reply {req}"
        );
    };
    slow.stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok();
    check_reply(
        wire::read_msg(slow.stream()).expect("the first reply, within 10 s"),
        1,
    );
    slow.stream().set_read_timeout(None).ok();
    let mut other = d.connect();
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(other.read("/bp").as_deref(), Ok(&b"value"[..]));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "100 reads took {:?}",
        started.elapsed()
    );
    // Held back: its requests (1 MB, more than the sockets buffer) are not all taken while
    // it reads no reply. A daemon reading on regardless would have let the sender finish.
    // (Debian's C xenstored 4.17 does: it takes them all and queues every reply, for a
    // privileged socket client without limit.)
    if Kind::from_env() == Kind::XsHost {
        let watch_until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < watch_until {
            assert!(
                !sender.is_finished(),
                "the daemon took all {N} requests of a client that reads no reply"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        note("C xenstored does not hold back a client that reads no reply");
    }
    for req in 2..=N {
        let msg = wire::read_msg(slow.stream()).unwrap_or_else(|e| panic!("reply {req}: {e}"));
        check_reply(msg, req);
    }
    sender.join().expect("sender thread");
    drop((slow, other));
    assert_healthy(&mut d, "late-reader");
    d.stop();
}

/// A client that sends its requests and shuts down its sending side still gets every
/// reply, then the end of the connection (xs-host only: C xenstored 4.17 closes the
/// connection when it reads the end, dropping the replies not yet sent).
#[test]
fn half_closed_client_gets_its_replies() {
    const N: u32 = 1000;
    if !xs_host_only() {
        return;
    }
    let mut d = require!(Daemon::start());
    let value = [b'v'; 2000];
    d.connect().write("/half", &value).expect("write");
    let mut c = d.connect();
    let requests: Vec<u8> = (1..=N)
        .flat_map(|req| wire::encode(ty::READ, req, 0, b"/half\0"))
        .collect();
    c.stream().write_all(&requests).expect("send the requests");
    c.stream().shutdown(Shutdown::Write).expect("shutdown");
    for req in 1..=N {
        let msg = wire::read_msg(c.stream()).unwrap_or_else(|e| panic!("reply {req}: {e}"));
        assert_eq!((msg.ty, msg.req_id), (ty::READ, req), "reply {req}");
        assert_eq!(msg.payload, value, "reply {req}");
    }
    assert_eq!(
        wait_closed(c.stream(), Duration::from_secs(10)),
        Ok(0),
        "after the last reply"
    );
    assert_healthy(&mut d, "half-closed");
    d.stop();
}

/// A client whose hang-up arrives with its request gets the reply, then the end (xs-host
/// only: C xenstored 4.17 drops the reply).
#[test]
fn client_that_hangs_up_after_its_request_gets_the_reply_then_eof() {
    if !xs_host_only() {
        return;
    }
    let mut d = require!(Daemon::start());
    d.connect().write("/hup", b"bye").expect("write");
    let request = wire::encode(ty::READ, 7, 0, b"/hup\0");
    for i in 0..20 {
        let mut s = UnixStream::connect(d.socket()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(&request).expect("send");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(
            got,
            wire::encode(ty::READ, 7, 0, b"bye"),
            "connection {i}: one reply, then the end"
        );
    }
    assert_healthy(&mut d, "hang-up");
    d.stop();
}

/// Clients gone half-way through a header are noticed: the daemon closes its end and keeps
/// no descriptor for them.
#[test]
fn clients_gone_mid_header_leave_no_descriptor() {
    let mut d = require!(Daemon::start());
    // The baseline with one client connected and answered (no connection is being closed
    // while it is taken, so it counts exactly what the daemon keeps).
    let mut kept = d.connect();
    kept.write("/hup", b"bye").expect("write");
    let fds_before = open_fds(d.pid());
    assert!(fds_before > 0, "cannot count the daemon's descriptors");
    let header = wire::header(ty::READ, 7, 0, 5);
    for _ in 0..200 {
        // Part of a header, then gone: the daemon must notice and close its end.
        send_and_close(&d, &header[..6]);
    }
    let fds = fds_settled(&d, fds_before, Duration::from_secs(20));
    assert!(
        fds <= fds_before,
        "the daemon holds {fds} descriptors, {fds_before} before"
    );
    assert_eq!(kept.read("/hup").as_deref(), Ok(&b"bye"[..]), "kept client");
    drop(kept);
    assert_healthy(&mut d, "mid-header");
    d.stop();
}
