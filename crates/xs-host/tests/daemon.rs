//! End-to-end tests of the built `xs-host` binary: start it on a temporary socket and talk
//! the XenStore wire protocol over Unix sockets, as libxenstore does.

use std::collections::VecDeque;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use xs_core::wire::{HEADER_LEN, Header, MsgType, push_message};

const TIMEOUT: Duration = Duration::from_secs(20);

fn scratch_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xs-host-test-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    let start = Instant::now();
    loop {
        if UnixStream::connect(path).is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("xs-host exited at start: {status}");
        }
        assert!(start.elapsed() < TIMEOUT, "xs-host did not start");
        thread::sleep(Duration::from_millis(10));
    }
}

/// A running daemon, killed when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        Daemon::start_in(scratch_dir(), extra)
    }

    fn start_in(dir: PathBuf, extra: &[&str]) -> Daemon {
        let socket = dir.join("socket");
        let log = fs::File::create(dir.join("stderr")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_xs-host"))
            .arg("-s")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_socket(&socket, &mut child);
        Daemon { child, dir, socket }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn signal(&self, sig: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), sig).unwrap();
    }

    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < TIMEOUT, "xs-host did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.path("stderr")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
struct Msg {
    header: Header,
    payload: Vec<u8>,
}

/// A wire-protocol client.
struct Client {
    stream: UnixStream,
    next_req: u32,
    events: VecDeque<(Vec<u8>, Vec<u8>)>,
}

/// The payload of `INTRODUCE <domid>|<gfn>|<evtchn>|`.
fn introduce(domid: u16) -> Vec<u8> {
    format!("{domid}\0{}\0{}\0", 4096, 1).into_bytes()
}

fn split_strings(payload: &[u8]) -> Vec<Vec<u8>> {
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    body.split(|&b| b == 0).map(<[u8]>::to_vec).collect()
}

impl Client {
    fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        Client {
            stream,
            next_req: 1,
            events: VecDeque::new(),
        }
    }

    fn send(&mut self, t: MsgType, tx: u32, payload: &[u8]) -> u32 {
        let req = self.next_req;
        self.next_req += 1;
        let mut bytes = Header {
            msg_type: t as u32,
            req_id: req,
            tx_id: tx,
            len: payload.len() as u32,
        }
        .encode()
        .to_vec();
        bytes.extend_from_slice(payload);
        self.stream.write_all(&bytes).unwrap();
        req
    }

    /// The next message, or `None` at end of stream.
    fn try_recv(&mut self) -> Option<Msg> {
        let mut h = [0u8; HEADER_LEN];
        match self.stream.read_exact(&mut h) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                return None;
            }
            Err(e) => panic!("read: {e}"),
        }
        let header = Header::decode(&h);
        let mut payload = vec![0u8; header.len as usize];
        self.stream.read_exact(&mut payload).unwrap();
        Some(Msg { header, payload })
    }

    fn recv(&mut self) -> Msg {
        self.try_recv().expect("connection closed")
    }

    /// Sends a request and returns its reply payload, or the error name.
    fn request(&mut self, t: MsgType, tx: u32, payload: &[u8]) -> Result<Vec<u8>, String> {
        let req = self.send(t, tx, payload);
        loop {
            let msg = self.recv();
            if msg.header.msg_type == MsgType::WatchEvent as u32 {
                let s = split_strings(&msg.payload);
                self.events.push_back((s[0].clone(), s[1].clone()));
                continue;
            }
            assert_eq!(msg.header.req_id, req, "reply to another request");
            assert_eq!(msg.header.tx_id, tx);
            if msg.header.msg_type == MsgType::Error as u32 {
                let name = msg.payload.strip_suffix(b"\0").unwrap_or(&msg.payload);
                return Err(String::from_utf8_lossy(name).into_owned());
            }
            assert_eq!(msg.header.msg_type, t as u32);
            return Ok(msg.payload);
        }
    }

    fn ok(&mut self, t: MsgType, tx: u32, payload: &[u8]) -> Vec<u8> {
        match self.request(t, tx, payload) {
            Ok(p) => p,
            Err(e) => panic!("{t} {:?}: {e}", String::from_utf8_lossy(payload)),
        }
    }

    fn write(&mut self, path: &str, value: &str) -> Result<(), String> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        self.request(MsgType::Write, 0, &p)
            .map(|r| assert_eq!(r, b"OK\0"))
    }

    fn read(&mut self, path: &str) -> Result<String, String> {
        self.read_tx(0, path)
    }

    fn read_tx(&mut self, tx: u32, path: &str) -> Result<String, String> {
        self.request(MsgType::Read, tx, format!("{path}\0").as_bytes())
            .map(|v| String::from_utf8(v).unwrap())
    }

    fn event(&mut self) -> (String, String) {
        let (p, t) = match self.events.pop_front() {
            Some(e) => e,
            None => {
                let msg = self.recv();
                assert_eq!(msg.header.msg_type, MsgType::WatchEvent as u32, "{msg:?}");
                let s = split_strings(&msg.payload);
                (s[0].clone(), s[1].clone())
            }
        };
        (String::from_utf8(p).unwrap(), String::from_utf8(t).unwrap())
    }

    /// Whether the daemon closed the connection (reads end of stream).
    fn is_closed(&mut self) -> bool {
        self.try_recv().is_none()
    }
}

#[test]
fn write_read_directory() {
    let d = Daemon::start(&[]);
    let mut c = d.client();
    c.write("/test/a", "hello").unwrap();
    c.write("/test/b", "").unwrap();
    assert_eq!(c.read("/test/a").unwrap(), "hello");
    assert_eq!(c.ok(MsgType::Directory, 0, b"/test\0"), b"a\0b\0");
    assert_eq!(c.ok(MsgType::Mkdir, 0, b"/test/c\0"), b"OK\0");
    assert_eq!(c.ok(MsgType::Rm, 0, b"/test/b\0"), b"OK\0");
    assert_eq!(c.ok(MsgType::Directory, 0, b"/test\0"), b"a\0c\0");
    assert_eq!(c.read("/test/b"), Err("ENOENT".into()));
    assert_eq!(c.request(MsgType::Read, 0, b"no-nul"), Err("EINVAL".into()));
    // An unknown type is an error reply, not the end of the connection.
    let req = c.send(MsgType::Read, 0, b"/test/a\0");
    let mut unknown = Header {
        msg_type: 999,
        req_id: 77,
        tx_id: 0,
        len: 0,
    }
    .encode()
    .to_vec();
    unknown.truncate(HEADER_LEN);
    c.stream.write_all(&unknown).unwrap();
    assert_eq!(c.recv().header.req_id, req);
    let e = c.recv();
    assert_eq!(
        (e.header.msg_type, e.header.req_id),
        (MsgType::Error as u32, 77)
    );
    assert_eq!(e.payload, b"ENOSYS\0");
    // Another client sees the same store.
    let mut c2 = d.client();
    assert_eq!(c2.read("/test/a").unwrap(), "hello");
}

#[test]
fn watch_event() {
    let d = Daemon::start(&[]);
    let mut watcher = d.client();
    let mut writer = d.client();
    assert_eq!(watcher.ok(MsgType::Watch, 0, b"/w\0tok\0"), b"OK\0");
    assert_eq!(watcher.event(), ("/w".into(), "tok".into()));
    writer.write("/w/x", "1").unwrap();
    assert_eq!(watcher.event(), ("/w/x".into(), "tok".into()));
    writer.write("/other", "1").unwrap();
    writer.write("/w", "2").unwrap();
    assert_eq!(watcher.event(), ("/w".into(), "tok".into()));
    assert_eq!(watcher.ok(MsgType::Unwatch, 0, b"/w\0tok\0"), b"OK\0");
    writer.write("/w/y", "1").unwrap();
    // The next thing the watcher receives is the reply, not an event.
    assert_eq!(watcher.read("/w/y").unwrap(), "1");
    assert!(watcher.events.is_empty());
}

#[test]
fn transaction() {
    let d = Daemon::start(&[]);
    let mut c = d.client();
    let mut other = d.client();
    let id = c.ok(MsgType::TransactionStart, 0, b"\0");
    let tx: u32 = std::str::from_utf8(id.strip_suffix(b"\0").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(tx, 0);
    assert_eq!(c.ok(MsgType::Write, tx, b"/t/a\0in-tx"), b"OK\0");
    assert_eq!(c.read_tx(tx, "/t/a").unwrap(), "in-tx");
    assert_eq!(other.read("/t/a"), Err("ENOENT".into()));
    assert_eq!(c.ok(MsgType::TransactionEnd, tx, b"T\0"), b"OK\0");
    assert_eq!(other.read("/t/a").unwrap(), "in-tx");
    // The transaction is gone; an aborted one changes nothing.
    assert_eq!(c.read_tx(tx, "/t/a"), Err("ENOENT".into()));
    let id = c.ok(MsgType::TransactionStart, 0, b"\0");
    let tx: u32 = std::str::from_utf8(id.strip_suffix(b"\0").unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(c.ok(MsgType::Write, tx, b"/t/a\0dropped"), b"OK\0");
    assert_eq!(c.ok(MsgType::TransactionEnd, tx, b"F\0"), b"OK\0");
    assert_eq!(other.read("/t/a").unwrap(), "in-tx");
}

#[test]
fn read_only_socket() {
    let d = Daemon::start(&[]);
    let ro_path = d.path("socket_ro");
    d.client().write("/ro/a", "v").unwrap();
    let mut ro = Client::connect(&ro_path);
    assert_eq!(ro.read("/ro/a").unwrap(), "v");
    assert_eq!(ro.write("/ro/a", "w"), Err("EROFS".into()));
    assert_eq!(ro.request(MsgType::Rm, 0, b"/ro/a\0"), Err("EROFS".into()));
    assert_eq!(ro.read("/ro/a").unwrap(), "v");
    // Watches do not change the store.
    assert_eq!(ro.ok(MsgType::Watch, 0, b"/ro\0t\0"), b"OK\0");
    assert_eq!(ro.event(), ("/ro".into(), "t".into()));
}

/// A start that fails after some sockets were bound (the read-only socket's directory is
/// missing, or the pid file cannot be written) leaves no socket file behind.
#[test]
fn a_failed_start_leaves_no_socket_files() {
    let dir = scratch_dir();
    let socket = dir.join("socket");
    // A path below a regular file can be neither created nor written.
    let file = dir.join("file");
    for extra in [
        ["--socket-ro", file.join("ro").to_str().unwrap()],
        ["-F", file.join("pid").to_str().unwrap()],
    ] {
        fs::write(&file, "").unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_xs-host"))
            .arg("-s")
            .arg(&socket)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        fs::remove_file(&file).unwrap();
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{extra:?} left {left:?}");
    }
}

#[test]
fn read_only_socket_can_be_disabled_or_moved() {
    let dir = scratch_dir();
    let elsewhere = dir.join("elsewhere");
    let d = Daemon::start_in(dir, &["--socket-ro", elsewhere.to_str().unwrap()]);
    assert!(!d.path("socket_ro").exists());
    assert_eq!(
        Client::connect(&elsewhere).write("/a", "b"),
        Err("EROFS".into())
    );
    let d = Daemon::start(&["--socket-ro", "none"]);
    assert!(!d.path("socket_ro").exists());
}

#[test]
fn domain_socket() {
    let dir = scratch_dir();
    let domains = dir.join("domains");
    let d = Daemon::start_in(dir, &["--domain-sockets", domains.to_str().unwrap()]);
    let mut dom0 = d.client();
    let sock5 = domains.join("5");
    assert!(!sock5.exists());
    dom0.write("/secret", "dom0 only").unwrap();
    assert_eq!(dom0.ok(MsgType::Introduce, 0, &introduce(5)), b"OK\0");
    assert!(sock5.exists(), "DIR/5 created on INTRODUCE");
    let mut guest = Client::connect(&sock5);
    // Relative paths resolve under /local/domain/5.
    assert_eq!(guest.read("domid").unwrap(), "5");
    assert_eq!(
        guest.ok(MsgType::GetDomainPath, 0, b"5\0"),
        b"/local/domain/5\0"
    );
    guest.write("data/x", "from guest").unwrap();
    assert_eq!(dom0.read("/local/domain/5/data/x").unwrap(), "from guest");
    // Unprivileged: dom0's nodes and privileged requests are out of reach.
    assert_eq!(guest.read("/secret"), Err("EACCES".into()));
    assert_eq!(guest.read("/tool/xenstored"), Err("EACCES".into()));
    assert_eq!(guest.write("/secret", "x"), Err("EACCES".into()));
    assert_eq!(
        guest.request(MsgType::Introduce, 0, &introduce(6)),
        Err("EACCES".into())
    );
    // A watch set by dom0 on the guest's home sees the guest's writes.
    assert_eq!(
        dom0.ok(MsgType::Watch, 0, b"/local/domain/5/data\0g\0"),
        b"OK\0"
    );
    assert_eq!(dom0.event().0, "/local/domain/5/data");
    guest.write("data/y", "1").unwrap();
    assert_eq!(dom0.event().0, "/local/domain/5/data/y");
    // RELEASE removes the socket and closes the domain's connections.
    assert_eq!(dom0.ok(MsgType::Release, 0, b"5\0"), b"OK\0");
    assert!(!sock5.exists(), "DIR/5 removed on RELEASE");
    assert!(guest.is_closed());
    assert!(UnixStream::connect(&sock5).is_err());
    // dom0 is unaffected.
    assert_eq!(dom0.read("/secret").unwrap(), "dom0 only");
}

#[test]
fn no_domain_nodes() {
    let dir = scratch_dir();
    let domains = dir.join("domains");
    let d = Daemon::start_in(
        dir,
        &[
            "--no-domain-nodes",
            "--domain-sockets",
            domains.to_str().unwrap(),
        ],
    );
    let mut dom0 = d.client();
    assert_eq!(dom0.ok(MsgType::Introduce, 0, &introduce(3)), b"OK\0");
    assert_eq!(dom0.read("/local/domain/3/domid"), Err("ENOENT".into()));
    let mut guest = Client::connect(&domains.join("3"));
    assert_eq!(guest.read("domid"), Err("EACCES".into()));
}

#[test]
fn oversized_header_closes_only_that_connection() {
    let d = Daemon::start(&[]);
    let mut good = d.client();
    good.write("/x", "1").unwrap();
    let mut bad = d.client();
    let header = Header {
        msg_type: MsgType::Write as u32,
        req_id: 1,
        tx_id: 0,
        len: 4097,
    };
    bad.stream.write_all(&header.encode()).unwrap();
    assert!(bad.is_closed());
    assert_eq!(good.read("/x").unwrap(), "1");
    assert_eq!(d.client().read("/x").unwrap(), "1");
}

#[test]
fn sigterm_exits_cleanly() {
    let dir = scratch_dir();
    let pid_file = dir.join("pid");
    let mut d = Daemon::start_in(dir, &["-F", pid_file.to_str().unwrap(), "-N"]);
    let pid = fs::read_to_string(&pid_file).unwrap();
    assert_eq!(pid.trim(), d.child.id().to_string());
    let _idle = d.client();
    d.signal(rustix::process::Signal::TERM);
    let status = d.wait();
    assert_eq!(status.code(), Some(0), "{}", d.stderr());
    assert!(!d.socket.exists());
    assert!(!d.path("socket_ro").exists());
    assert!(!pid_file.exists());
}

#[test]
fn sigint_exits_cleanly() {
    let mut d = Daemon::start(&[]);
    d.signal(rustix::process::Signal::INT);
    assert_eq!(d.wait().code(), Some(0));
    assert!(!d.socket.exists());
}

#[test]
fn start_message_and_help() {
    let d = Daemon::start(&[]);
    let stderr = d.stderr();
    let socket = d.socket.display().to_string();
    assert!(
        stderr.contains(&format!(
            "xs-host: listening on {socket} (read-only: {socket}_ro)"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("export XENSTORED_PATH={socket}")));
    let help = Command::new(env!("CARGO_BIN_EXE_xs-host"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--domain-sockets DIR"));
    for bad in [&["--bogus"][..], &["-E", "x"], &["-Q", "nope=1"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_xs-host"))
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn refuses_a_live_socket_and_replaces_a_stale_one() {
    let d = Daemon::start(&[]);
    let second = Command::new(env!("CARGO_BIN_EXE_xs-host"))
        .arg("-s")
        .arg(&d.socket)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another daemon"));
    d.client().write("/still", "here").unwrap();

    let dir = scratch_dir();
    let stale = dir.join("socket");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let d2 = Daemon::start_in(dir, &[]);
    d2.client().write("/a", "b").unwrap();
}

#[test]
fn quotas_from_the_command_line() {
    let dir = scratch_dir();
    let domains = dir.join("domains");
    let d = Daemon::start_in(
        dir,
        &[
            "--domain-sockets",
            domains.to_str().unwrap(),
            "-S",
            "10",
            "-Q",
            "path-length=100",
            "-W",
            "1",
        ],
    );
    let mut dom0 = d.client();
    assert_eq!(dom0.ok(MsgType::GetQuota, 0, b"node-size\0"), b"10\0");
    assert_eq!(dom0.ok(MsgType::GetQuota, 0, b"path-max\0"), b"100\0");
    assert_eq!(dom0.ok(MsgType::GetQuota, 0, b"watches\0"), b"1\0");
    dom0.ok(MsgType::Introduce, 0, &introduce(2));
    let mut guest = Client::connect(&domains.join("2"));
    guest.write("data/ok", "0123456789").unwrap();
    assert_eq!(guest.write("data/big", "0123456789a"), Err("ENOSPC".into()));
    guest.ok(MsgType::Watch, 0, b"data\0a\0");
    assert_eq!(
        guest.request(MsgType::Watch, 0, b"data\0b\0"),
        Err("ENOSPC".into())
    );
}

#[test]
fn trace_file_and_log_switch() {
    let dir = scratch_dir();
    let trace = dir.join("trace");
    let d = Daemon::start_in(dir, &["-T", trace.to_str().unwrap()]);
    let mut c = d.client();
    c.write("/traced", "v\u{1}").unwrap();
    assert_eq!(c.read("/traced").unwrap(), "v\u{1}");
    c.ok(MsgType::Control, 0, b"log\0-io\0");
    c.read("/not-traced").unwrap_err();
    c.ok(MsgType::Control, 0, b"log\0+io\0");
    c.ok(MsgType::Control, 0, b"print\0hello trace\0");
    drop(c);
    let want = [
        r#" dom=0 IN  WRITE req=1 tx=0 "/traced\0v\x01""#,
        r#" dom=0 OUT WRITE req=1 tx=0 "OK\0""#,
        r#" dom=0 IN  READ req=2 tx=0 "/traced\0""#,
        r#" dom=0 OUT READ req=2 tx=0 "v\x01""#,
        "PRINT hello trace",
        " dom=0 OPEN socket",
    ];
    let start = Instant::now();
    let text = loop {
        let text = fs::read_to_string(&trace).unwrap();
        if want.iter().all(|w| text.contains(w)) || start.elapsed() > TIMEOUT {
            break text;
        }
        thread::sleep(Duration::from_millis(10));
    };
    for w in want {
        assert!(text.contains(w), "{w} not in\n{text}");
    }
    assert!(!text.contains("not-traced"), "{text}");
    // Every line starts with a timestamp.
    for line in text.lines() {
        assert!(line.len() > 27 && line.as_bytes()[26] == b'Z', "{line}");
    }
}

#[test]
fn control_memreport_to_file() {
    let d = Daemon::start(&[]);
    let report = d.path("memreport");
    let mut c = d.client();
    let mut payload = b"memreport\0".to_vec();
    payload.extend_from_slice(report.to_str().unwrap().as_bytes());
    payload.push(0);
    assert_eq!(c.ok(MsgType::Control, 0, &payload), b"OK\0");
    assert!(fs::read_to_string(&report).unwrap().contains("nodes:"));
}

/// A client that sends many requests and does not read its replies is held back; the
/// others are served meanwhile; it then gets every reply, in order.
#[test]
fn a_client_that_does_not_read_blocks_no_one() {
    const N: u32 = 50_000;
    let d = Daemon::start(&[]);
    d.client().write("/bp", "value").unwrap();
    let mut slow = d.client();
    let mut writer = slow.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut bytes = Vec::new();
        for req in 1..=N {
            let h = Header {
                msg_type: MsgType::Read as u32,
                req_id: req,
                tx_id: 0,
                len: 4,
            };
            bytes.extend_from_slice(&h.encode());
            bytes.extend_from_slice(b"/bp\0");
        }
        // Blocks once the daemon stops reading.
        writer.write_all(&bytes).unwrap();
    });
    thread::sleep(Duration::from_millis(300));
    let mut other = d.client();
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(other.read("/bp").unwrap(), "value");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    for req in 1..=N {
        let msg = slow.recv();
        assert_eq!(msg.header.req_id, req);
        assert_eq!(msg.payload, b"value");
    }
    sender.join().unwrap();
}

#[test]
fn many_connections() {
    let d = Daemon::start(&[]);
    d.client().write("/many", "x").unwrap();
    for _round in 0..3 {
        let mut clients: Vec<Client> = (0..400).map(|_| d.client()).collect();
        for c in &mut clients {
            c.send(MsgType::Read, 0, b"/many\0");
        }
        for c in &mut clients {
            assert_eq!(c.recv().payload, b"x");
        }
    }
    assert_eq!(d.client().read("/many").unwrap(), "x");
}

#[test]
fn garbage_does_not_crash_the_daemon() {
    let d = Daemon::start(&[]);
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..50 {
        let mut c = d.client();
        let mut bytes = vec![0u8; 2000];
        for b in bytes.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        // Small lengths so that some of it parses as requests.
        for chunk in bytes.chunks_mut(40) {
            if chunk.len() >= 16 {
                let len = u32::from(chunk[12] % 24);
                chunk[12..16].copy_from_slice(&len.to_le_bytes());
            }
        }
        let _ = c.stream.write_all(&bytes);
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = c.stream.read_to_end(&mut sink);
    }
    d.client().write("/alive", "yes").unwrap();
}

/// A client that sends its requests and shuts down its sending side still gets every reply.
#[test]
fn half_closed_client_gets_its_replies() {
    const N: u32 = 1000;
    let d = Daemon::start(&[]);
    let value = "v".repeat(2000);
    d.client().write("/half", &value).unwrap();
    let mut c = d.client();
    for _ in 0..N {
        c.send(MsgType::Read, 0, b"/half\0");
    }
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    for req in 1..=N {
        let msg = c.recv();
        assert_eq!(msg.header.req_id, req);
        assert_eq!(msg.payload, value.as_bytes());
    }
    assert!(c.is_closed());
}

#[test]
fn a_client_that_hangs_up_right_after_its_request_gets_the_reply_then_eof() {
    use std::net::Shutdown;

    let d = Daemon::start(&[]);
    d.client().write("/hup", "bye").unwrap();
    let fds = || {
        fs::read_dir(format!("/proc/{}/fd", d.child.id()))
            .unwrap()
            .count()
    };
    let before = fds();
    let mut request = Vec::new();
    push_message(&mut request, MsgType::Read as u32, 7, 0, b"/hup\0");
    for _ in 0..20 {
        // The hang-up arrives with the request: the reply must come, then the end.
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(&request).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(&got[HEADER_LEN..], b"bye");
    }
    for _ in 0..200 {
        // Part of a header, then gone: the daemon must notice and close its end.
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(&request[..6]).unwrap();
    }
    let start = Instant::now();
    while fds() > before {
        assert!(
            start.elapsed() < TIMEOUT,
            "xs-host holds {} descriptors, {before} before",
            fds()
        );
        thread::sleep(Duration::from_millis(20));
    }
}
