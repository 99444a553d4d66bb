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
use xs_e2e::{Client, Daemon, Kind, Wire, note, require, sys, xs_host_only};

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

/// Waits until the daemon's CPU time stops growing (no tick in 300 ms), at most `timeout`.
fn settled(pid: u32, timeout: Duration) {
    let start = Instant::now();
    let mut last = sys::cpu_ticks(pid);
    let mut quiet = 0;
    while quiet < 3 && start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(100));
        let now = sys::cpu_ticks(pid);
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
}

/// Issue 17 (2): a guest holds 6000 connections through its socket (as many as it may),
/// each with 200 READs of a 2000-byte node sent and no reply read, and makes 20,000 more
/// connection attempts; then, while it keeps reading a little and trying to connect, fresh
/// dom0 clients connect and read. They must do so with p99 <= 10 ms; the daemon must
/// accept none of the attempts and stay within 64 MiB plus the guest's memory quota
/// (its outstanding replies and read-ahead are bounded per domain, not per connection).
/// Before, each such connection pinned ~200 KiB (6000: 1.19 GB) and ~21,000 of them used
/// up the daemon's descriptors.
#[test]
fn guest_connection_flood_leaves_dom0_served() {
    if !xs_host_only() {
        return;
    }
    const CONNS: usize = 6000;
    const ATTEMPTS: usize = 20_000;
    const READS: usize = 200;
    /// Xen's default memory quota (`Quotas::XEN_DEFAULTS`), in KiB.
    const QUOTA_KIB: u64 = 2560;
    // Ours: the guest's connections and the attempts the listener's backlog holds (at
    // most `net.core.somaxconn`, 4096 by default, plus one); the daemon inherits the limit.
    // (Should the daemon accept the attempts, this process runs out first: noted below.)
    require!(sys::raise_nofile((CONNS + 4097 + 1000) as u64));
    let conns_arg = CONNS.to_string();
    let mut d = require!(Daemon::start_with(&["--domain-connections", &conns_arg]));
    let pid = d.pid();
    let mut dom0 = d.connect();
    dom0.write("/big", &[b'x'; 2000]).expect("write");
    dom0.set_perms("/big", &["n0", "r5"]).expect("chmod");
    drop(require!(d.guest(5)));
    let socket = d.domain_socket(5).expect("domain socket");
    let rss_start = sys::status_kib(pid, "VmRSS");
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);

    // The connections, each with its READs sent (they fit its socket buffer).
    let batch = wire::encode(ty::READ, 7, 0, b"/big\0").repeat(READS);
    let mut conns = Vec::with_capacity(CONNS);
    while conns.len() < CONNS {
        match sys::connect_nowait(&socket) {
            Ok(mut s) => {
                s.set_nonblocking(true).expect("nonblocking");
                assert_eq!(s.write(&batch).ok(), Some(batch.len()), "requests sent");
                conns.push(s);
            }
            // The backlog is full: the daemon accepts more slowly than we connect.
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {CONNS} connections accepted in 30 s",
                    conns.len()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("connection {}: {e}", conns.len()),
        }
    }
    let connected = start.elapsed();
    // The attempts beyond the limit: held in the listener's backlog while it has room,
    // refused by the kernel after that.
    let cpu_before = sys::cpu_ticks(pid);
    let attempts_start = Instant::now();
    let mut held = Vec::new();
    let mut refused = 0usize;
    let mut ours_out = None;
    for i in 0..ATTEMPTS {
        match sys::connect_nowait(&socket) {
            Ok(s) => held.push(s),
            Err(e) if e.kind() == ErrorKind::WouldBlock => refused += 1,
            // EMFILE: the daemon accepted them all, and this process has no more.
            Err(e) if e.raw_os_error() == Some(24) => {
                ours_out = Some(i);
                break;
            }
            Err(e) => panic!("attempt: {e}"),
        }
    }
    let attempts_time = attempts_start.elapsed();
    settled(pid, Duration::from_secs(15));
    let cpu_attempts = sys::cpu_ticks(pid) - cpu_before;
    let fds = open_fds(pid);

    // dom0's fresh clients, while the guest keeps reading a little of its replies (so that
    // the daemon keeps answering it) and keeps trying to connect.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let cpu_before = sys::cpu_ticks(pid);
    let mut samples = Vec::with_capacity(1000);
    let mut guest_bytes = 0usize;
    std::thread::scope(|sc| {
        let guest = sc.spawn(|| {
            let mut buf = vec![0u8; 8192];
            let mut bytes = 0usize;
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..200 {
                    if let Some(s) = conns.get_mut(i % CONNS)
                        && let Ok(n) = s.read(&mut buf)
                    {
                        bytes += n;
                    }
                    i += 1;
                }
                drop(sys::connect_nowait(&socket));
                std::thread::sleep(Duration::from_millis(1));
            }
            bytes
        });
        // 1000 clients, 2 ms apart: the guest reads from each of its connections meanwhile.
        for i in 0..1000 {
            std::thread::sleep(Duration::from_millis(2));
            let t = Instant::now();
            let mut w = Wire::connect(d.socket()).unwrap_or_else(|e| panic!("dom0 {i}: {e}"));
            w.stream()
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            assert_eq!(w.read("/big").map(|v| v.len()), Ok(2000), "dom0 client {i}");
            samples.push(t.elapsed());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        guest_bytes = guest.join().expect("guest thread");
    });
    let cpu_dom0 = sys::cpu_ticks(pid) - cpu_before;
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100 - 1];
    let worst = samples[samples.len() - 1];
    let rss = sys::status_kib(pid, "VmRSS");
    let hwm = sys::status_kib(pid, "VmHWM");
    let report = format!(
        "{CONNS} guest connections ({READS} READs each, unread) in {connected:?}; {ATTEMPTS} \
         more attempts in {attempts_time:?}: {} held in the backlog, {refused} refused, \
         {cpu_attempts} ticks of daemon CPU meanwhile; daemon holds {fds} descriptors; \
         dom0 connect+read p50 {p50:?} p99 {p99:?} max {worst:?} (guest read {guest_bytes} \
         bytes of replies meanwhile, daemon CPU {cpu_dom0} ticks); RSS {rss_start} KiB at start, {rss} KiB now, peak {hwm} KiB{}",
        held.len(),
        ours_out.map_or(String::new(), |i| format!(
            "; the test ran out of descriptors after {i} attempts"
        ))
    );
    note(&report);
    assert!(d.alive(), "daemon died; log:\n{}", d.log());
    assert!(
        fds <= CONNS + 64,
        "the daemon accepted beyond the limit: {report}"
    );
    assert!(p99 <= Duration::from_millis(10), "dom0 too slow: {report}");
    assert!(
        hwm <= 64 * 1024 + QUOTA_KIB,
        "RSS above 64 MiB plus the quota: {report}"
    );
    drop(conns);
    drop(held);
    assert_healthy(&mut d, "connection-flood");
    d.stop();
}

/// A guest at its connection limit: a further connection waits (in the backlog, not
/// accepted) until one of the guest's closes, and is then served; dom0 is served meanwhile.
#[test]
fn guest_connection_beyond_the_limit_waits_for_one_to_close() {
    if !xs_host_only() {
        return;
    }
    // --domain-nodes: the guest reads its own `domid`, which INTRODUCE then creates.
    let mut d = require!(Daemon::start_with(&[
        "--domain-connections",
        "4",
        "--domain-nodes"
    ]));
    drop(require!(d.guest(5)));
    let socket = d.domain_socket(5).expect("domain socket");
    let mut conns: Vec<Wire> = (0..4)
        .map(|i| Wire::connect(&socket).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    for w in &mut conns {
        assert_eq!(w.read("domid").as_deref(), Ok(&b"5"[..]));
    }
    let mut fifth = sys::connect_nowait(&socket).expect("queued in the backlog");
    fifth
        .write_all(&wire::encode(ty::READ, 9, 0, b"domid\0"))
        .expect("send");
    fifth
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let early = wire::read_msg(&mut fifth);
    assert!(early.is_err(), "served beyond the limit: {early:?}");
    assert_healthy(&mut d, "at-limit");
    drop(conns.pop());
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let reply = wire::read_msg(&mut fifth).expect("served once one closed");
    assert_eq!((reply.req_id, &reply.payload[..]), (9, &b"5"[..]));
    // Still at the limit: a sixth waits again.
    let mut sixth = sys::connect_nowait(&socket).expect("queued in the backlog");
    sixth
        .write_all(&wire::encode(ty::READ, 10, 0, b"domid\0"))
        .expect("send");
    sixth
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    assert!(
        wire::read_msg(&mut sixth).is_err(),
        "served beyond the limit"
    );
    drop(fifth);
    sixth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let reply = wire::read_msg(&mut sixth).expect("served once one closed");
    assert_eq!(reply.req_id, 10);
    d.stop();
}

/// A daemon that may open 256 descriptors, and a guest with no connection limit connecting
/// 400 times: the guest gets what the descriptor reserve leaves, and dom0's clients still
/// connect and are served (before, the guest took every descriptor and dom0's connections
/// were never accepted: `accept: Too many open files`). Once the guest lets go, the
/// connections that waited are served.
#[test]
fn dom0_connects_while_a_guest_takes_every_descriptor_it_may() {
    if !xs_host_only() {
        return;
    }
    let mut d = Daemon::start_xs_host_with_nofile(&["--domain-connections", "0"], 256);
    drop(require!(d.guest(5)));
    let socket = d.domain_socket(5).expect("domain socket");
    let mut guest = Vec::new();
    for i in 0..400 {
        let mut s = sys::connect_nowait(&socket).unwrap_or_else(|e| panic!("guest {i}: {e}"));
        s.write_all(&wire::encode(ty::READ, i, 0, b"domid\0"))
            .expect("send");
        guest.push(s);
    }
    settled(d.pid(), Duration::from_secs(10));
    let fds = open_fds(d.pid());
    // Several dom0 clients at once, each served.
    let mut dom0: Vec<Wire> = (0..10)
        .map(|i| Wire::connect(d.socket()).unwrap_or_else(|e| panic!("dom0 {i}: {e}")))
        .collect();
    for (i, w) in dom0.iter_mut().enumerate() {
        w.stream()
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        assert_eq!(
            w.read("/").map(|_| ()),
            Ok(()),
            "dom0 client {i} not served with the guest holding {fds} descriptors; log:\n{}",
            d.log()
        );
    }
    // Which of the guest's connections were served (their replies are in by now).
    let replied: Vec<bool> = guest
        .iter_mut()
        .map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(5))).ok();
            wire::read_msg(s).is_ok()
        })
        .collect();
    let served = replied.iter().filter(|&&r| r).count();
    note(&format!(
        "daemon limited to 256 descriptors: holds {fds} with 400 guest connection attempts, \
         of which {served} served; dom0's 10 clients served"
    ));
    assert!(fds < 256, "{fds} descriptors: the reserve was used");
    assert!(
        served > 100 && served < 256,
        "{served} guest connections served"
    );
    // The guest lets go of what was served: the ones that waited are served in turn.
    let mut waiting: Vec<UnixStream> = guest
        .into_iter()
        .zip(replied)
        .filter_map(|(s, r)| (!r).then_some(s))
        .collect();
    let later = waiting
        .iter_mut()
        .filter_map(|s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            wire::read_msg(s).ok()
        })
        .count();
    assert_eq!(
        later,
        waiting.len(),
        "connections that waited, served later"
    );
    assert!(
        !d.log().contains("Too many open files"),
        "the daemon ran out of descriptors; log:\n{}",
        d.log()
    );
    drop(dom0);
    assert_healthy(&mut d, "fd-reserve");
    d.stop();
}
