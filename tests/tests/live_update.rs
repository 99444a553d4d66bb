//! Live update of xs-host (issue 18), driven by Xen's own `xenstore-control live-update`:
//! clients (raw ones, a guest on its socket, and a pyxs client) keep their connections,
//! watches, transactions and queued events across ten updates to the same binary while
//! `test-xenstore` and a writer run; the refusals (an open
//! transaction without `-F`, a missing, non-executable or foreign binary, a new process
//! that cannot start) leave the old process serving; a new process that dies before it
//! takes over, or hangs past `--live-update-timeout`, is replaced by the old binary (the
//! guardian); `CONTROL save-state` and `--restore`; `--state-file` across a restart.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xs_e2e::daemon::{TempDir, run_with_timeout, workspace_root, xs_host_bin};
use xs_e2e::wire::ty;
use xs_e2e::{Client, Daemon, Output, Wire, python_with_pyxs, require, tools, xs_host_only};

/// The whole tree, one node a line with its value and permissions.
fn dump(d: &Daemon, ls: &Path) -> String {
    d.run(ls, &["-f", "-p", "/"]).ok().to_owned()
}

/// `xenstore-control live-update ARGS...`.
fn live_update(d: &Daemon, control: &Path, args: &[&str]) -> Output {
    let mut all = vec!["live-update"];
    all.extend_from_slice(args);
    d.run(control, &all)
}

fn bin() -> String {
    xs_host_bin().to_string_lossy().into_owned()
}

/// The processes whose parent is `pid`, with their state letter (`Z` for a zombie).
fn children_of(pid: u32) -> Vec<(u32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // `pid (comm) state ppid ...`: comm may hold spaces, so read after its `)`.
        let mut rest = stat.get(stat.rfind(')')? + 2..)?.split(' ');
        let state = rest.next()?.chars().next()?;
        let ppid: u32 = rest.next()?.parse().ok()?;
        (ppid == pid).then_some((child, state))
    })
    .collect()
}

fn took_over(d: &Daemon) -> usize {
    d.log().matches("live-update: took over").count()
}

#[test]
fn ten_updates_keep_every_client() {
    if !xs_host_only() {
        return;
    }
    let [control, ls, test] = require!(tools(["xenstore-control", "xenstore-ls", "test-xenstore"]));
    let d = require!(Daemon::start_with(&["--domain-nodes"]));
    let pid = d.pid();
    let bin = bin();

    // A tree with a bit of everything, and a guest with its own socket.
    let mut setup = d.connect();
    for i in 0..50 {
        setup
            .write(&format!("/static/n{i}"), format!("value {i}").as_bytes())
            .unwrap();
    }
    setup.set_perms("/static/n1", &["n0", "r5", "b7"]).unwrap();
    let mut guest = require!(d.guest(5));
    guest.write("data/start", b"1").unwrap();
    guest.watch("data", "guest-token").unwrap();
    assert_eq!(guest.next_event().0, "data");

    // A pyxs client (Debian's python3-pyxs) holding a watch and an open transaction.
    let py = require!(python_with_pyxs());
    let mut pyxs = Command::new(py)
        .arg(workspace_root().join("tests/py/pyxs_live_update.py"))
        .arg(d.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the pyxs client");
    let mut pyxs_out = BufReader::new(pyxs.stdout.take().expect("pyxs stdout"));
    let mut line = String::new();
    pyxs_out.read_line(&mut line).expect("pyxs READY");
    assert_eq!(line.trim(), "READY", "pyxs client: {line}");

    // A watcher reading events all along, a writer making one distinct event per write,
    // a transaction left open, test-xenstore in a loop.
    let mut watcher = d.connect();
    watcher.watch("/watched", "tok").unwrap();
    let mut held = d.connect();
    let tx = held.transaction_start().unwrap();
    held.request_tx(ty::WRITE, tx, b"/tx/value\0inside")
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // Writers and test-xenstore hold it while they work: the test takes it to look at a
    // quiet tree around every other update.
    let gate = Arc::new(Mutex::new(()));
    let writes = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, gate, writes) = (stop.clone(), gate.clone(), writes.clone());
        let mut w = d.connect();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 400 {
                {
                    let _g = gate.lock().unwrap();
                    w.write(&format!("/watched/k{i}"), b"x").unwrap();
                }
                i += 1;
                writes.store(i, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
            i
        })
    };
    let done_runs = Arc::new(AtomicUsize::new(0));
    let runs = {
        let (stop, gate, done_runs) = (stop.clone(), gate.clone(), done_runs.clone());
        let socket = d.socket().to_owned();
        std::thread::spawn(move || {
            let mut runs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let _g = gate.lock().unwrap();
                let mut c = Command::new(&test);
                c.env("XENSTORED_PATH", &socket).args(["-i", "1"]);
                runs.push(run_with_timeout(c, Duration::from_secs(30)));
                done_runs.fetch_add(1, Ordering::Relaxed);
                drop(_g);
                // Let the others take the gate.
                std::thread::sleep(Duration::from_millis(2));
            }
            runs
        })
    };

    let started = Instant::now();
    for round in 0..10 {
        // The clients get on between updates: some writes, a whole test-xenstore run.
        let (w0, r0) = (
            writes.load(Ordering::Relaxed),
            done_runs.load(Ordering::Relaxed),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while (writes.load(Ordering::Relaxed) < w0 + 10 || done_runs.load(Ordering::Relaxed) == r0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let quiet = (round % 2 == 0).then(|| gate.lock().unwrap());
        let before = quiet.as_ref().map(|_| dump(&d, &ls));
        let out = live_update(&d, &control, &["-t", "1", "-F", &bin]);
        out.ok();
        if let Some(before) = before {
            assert_eq!(
                dump(&d, &ls),
                before,
                "the tree changed across update {round}"
            );
        }
        drop(quiet);
        // The pyxs client's watch fires after each update.
        setup.write(&format!("/pylu/k{round}"), b"x").unwrap();
        // The guest is served after each update.
        let key = format!("data/r{round}");
        guest.write(&key, round.to_string().as_bytes()).unwrap();
        assert_eq!(guest.read(&key).unwrap(), round.to_string().as_bytes());
    }
    let elapsed = started.elapsed();
    assert_eq!(took_over(&d), 10, "log:\n{}", d.log());
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    let runs = runs.join().unwrap();
    assert!(!runs.is_empty());
    for r in &runs {
        r.ok();
        assert!(!r.stdout.contains("failed"), "{}", r.stdout);
    }

    // Every write's event, once, after the watch's own.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let (path, token) = watcher.next_event();
    assert_eq!((path.as_str(), token.as_str()), ("/watched", "tok"));
    watcher
        .stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for _ in 0..written {
        let (path, token) = watcher.next_event();
        assert_eq!(token, "tok");
        *seen.entry(path).or_default() += 1;
    }
    assert_eq!(seen.len(), written, "events: {seen:?}");
    assert!(seen.values().all(|&n| n == 1), "duplicated: {seen:?}");
    // None more (a duplicate would be here).
    watcher
        .stream()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(xs_e2e::wire::read_msg(watcher.stream()).is_err());

    // The guest's watch fired once per write of its own, in order.
    for round in 0..10 {
        assert_eq!(guest.next_event().0, format!("data/r{round}"));
    }

    // The transaction opened before the first update commits after the last.
    assert_eq!(held.read("/tx/value"), Err("ENOENT".to_owned()));
    held.request_tx(ty::TRANSACTION_END, tx, b"T\0").unwrap();
    assert_eq!(held.read("/tx/value").unwrap(), b"inside");
    assert_eq!(d.pid(), pid);
    // The guardians of the ten updates exited and were reaped: the daemon has no child left.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children_of(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the daemon still has children (zombie guardians?): {:?}",
            children_of(pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The pyxs client: each of its events once, and its transaction commits.
    writeln!(pyxs.stdin.take().expect("pyxs stdin"), "GO 10").expect("tell pyxs");
    let status = pyxs.wait().expect("pyxs client");
    let mut rest = String::new();
    pyxs_out.read_to_string(&mut rest).ok();
    let mut err = String::new();
    if let Some(mut e) = pyxs.stderr.take() {
        e.read_to_string(&mut err).ok();
    }
    assert!(
        status.success() && rest.contains("pyxs live update: ok"),
        "pyxs client ({status}):\n{rest}\n{err}"
    );
    eprintln!(
        "10 updates in {:.2} s with {} test-xenstore runs and {written} watched writes",
        elapsed.as_secs_f64(),
        runs.len()
    );
    d.stop();
}

#[test]
fn refusals_leave_the_old_process_serving() {
    if !xs_host_only() {
        return;
    }
    let [control, ls] = require!(tools(["xenstore-control", "xenstore-ls"]));
    let d = require!(Daemon::start());
    let bin = bin();
    let mut w = d.connect();
    w.write("/keep/a", b"1").unwrap();
    let tree = dump(&d, &ls);

    // An open transaction, no -F: refused once -t is over, with C's reason.
    let mut t = d.connect();
    let tx = t.transaction_start().unwrap();
    t.request_tx(ty::WRITE, tx, b"/keep/tx\0v").unwrap();
    let out = live_update(&d, &control, &["-t", "1", &bin]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(
        out.stderr
            .contains("Domains with long running transactions:")
            || out.stderr.contains("Overlapping transactions"),
        "{out:?}"
    );
    t.request_tx(ty::TRANSACTION_END, tx, b"T\0").unwrap();

    // Binaries that cannot take over are refused before anything is written.
    let dir = TempDir::new();
    let plain = dir.path().join("not-executable");
    std::fs::write(&plain, "x").unwrap();
    for (binary, why) in [
        ("/nonexistent/xs-host", "File not accessible."),
        (plain.to_str().unwrap(), "File not executable."),
        ("/bin/true", "File cannot take over"),
    ] {
        let out = live_update(&d, &control, &[binary]);
        assert_eq!(out.code(), Some(3), "{out:?}");
        assert!(out.stderr.contains(why), "{binary}: {out:?}");
    }

    // A new process that cannot start (a command line it refuses): the old binary takes
    // the state back and says why.
    let out = live_update(&d, &control, &["-c", "--no-such-option", &bin]);
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(
        out.stderr
            .contains("Error activating new binary: usage: invalid option '--no-such-option'"),
        "{out:?}"
    );

    // The session rules: -s only on the session's connection.
    let reply = w.control(&["live-update", "-s"]).unwrap();
    assert_eq!(reply, b"Not in live-update session.\0");
    assert_eq!(
        w.control(&["live-update", "-a"]).unwrap(),
        b"No live-update session active.\0"
    );

    // The old process served all along, and still updates.
    let mut now = dump(&d, &ls);
    now.retain(|_| true);
    let now: Vec<&str> = now.lines().filter(|l| !l.starts_with("/keep/tx")).collect();
    assert_eq!(now, tree.lines().collect::<Vec<_>>());
    assert_eq!(w.read("/keep/tx").unwrap(), b"v");
    assert_eq!(w.read("/keep/a").unwrap(), b"1");
    live_update(&d, &control, &[&bin]).ok();
    assert_eq!(w.read("/keep/a").unwrap(), b"1");
    d.stop();
}

/// A new binary that passes the probe and then dies (of a signal, before any of its code can
/// go back to the old binary): the guardian the old process left brings the old binary back
/// with the same state, under its own pid.
#[test]
fn a_new_process_that_dies_is_replaced_by_the_old_binary() {
    use std::os::unix::process::ExitStatusExt;
    if let Some(status) = replaced_by_the_old_binary(
        "kill -SEGV $$",
        &[],
        "the new process died before it took over",
    ) {
        assert_eq!(status.signal(), Some(11), "{status:?}");
    }
}

/// A new binary that passes the probe and then hangs: past `--live-update-timeout` the
/// guardian kills it and brings the old binary back.
#[test]
fn a_new_process_that_hangs_is_replaced_by_the_old_binary() {
    use std::os::unix::process::ExitStatusExt;
    if let Some(status) = replaced_by_the_old_binary(
        "exec sleep 60",
        &["--live-update-timeout", "1"],
        "the new process did not take over within 1 s (killed)",
    ) {
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }
}

/// Updates a daemon started with `extra` options to a script that passes the probe (it is
/// xs-host for that) and then runs `then`; the update must fail with `why`, the old binary
/// serving in its place under the guardian's pid, every client carrying on (the tree, a
/// watch, an open transaction), and the daemon must update again afterwards. Returns how
/// how the first process ended (`None`: skipped, xenstore-control missing or not xs-host).
fn replaced_by_the_old_binary(
    then: &str,
    extra: &[&str],
    why: &str,
) -> Option<std::process::ExitStatus> {
    if !xs_host_only() {
        return None;
    }
    let [control, ls] = match tools(["xenstore-control", "xenstore-ls"]) {
        Ok(t) => t,
        Err(skip) => {
            xs_e2e::skip::report(&skip);
            return None;
        }
    };
    let dir = TempDir::new();
    let pid_file = dir.path().join("xs-host.pid");
    let mut args = vec!["-F", pid_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut d = match Daemon::start_with(&args) {
        Ok(d) => d,
        Err(skip) => {
            xs_e2e::skip::report(&skip);
            return None;
        }
    };
    let old_pid = d.pid();
    let script = binary_that(dir.path(), then);

    let mut w = d.connect();
    w.write("/keep/a", b"1").unwrap();
    let mut watcher = d.connect();
    watcher.watch("/keep", "tok").unwrap();
    assert_eq!(watcher.next_event().0, "/keep");
    let mut t = d.connect();
    let tx = t.transaction_start().unwrap();
    t.request_tx(ty::WRITE, tx, b"/keep/tx\0in-tx").unwrap();
    let tree = dump(&d, &ls);

    let out = live_update(&d, &control, &["-t", "1", "-F", script.to_str().unwrap()]);
    assert_eq!(out.code(), Some(3), "{out:?}\n{}", d.log());
    assert!(
        out.stderr
            .contains(&format!("Error activating new binary: {why}")),
        "{out:?}"
    );
    // The old binary serves again, started by the guardian: the pid file names it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_pid = loop {
        let pid: Option<u32> = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        match pid {
            Some(p) if p != old_pid => break p,
            _ => {
                assert!(Instant::now() < deadline, "pid file: {pid:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let status = d.replaced_by(new_pid).expect("the first process, reaped");

    // Every client carried on: the tree, the watch, the transaction.
    assert_eq!(dump(&d, &ls), tree);
    w.write("/keep/b", b"2").unwrap();
    assert_eq!(
        watcher.next_event(),
        ("/keep/b".to_owned(), "tok".to_owned())
    );
    t.request_tx(ty::TRANSACTION_END, tx, b"T\0").unwrap();
    assert_eq!(w.read("/keep/tx").unwrap(), b"in-tx");
    assert!(d.log().contains(why), "{}", d.log());
    // And it updates again, to a binary that works.
    live_update(&d, &control, &[&bin()]).ok();
    assert_eq!(w.read("/keep/b").unwrap(), b"2");
    d.stop();
    Some(status)
}

/// `--state-file`: a daemon stopped with SIGTERM leaves its state, the next start restores
/// it (the tree, the guests' sockets) and removes the file; a file from before this boot is
/// not restored; a file that cannot be read stops the start and is moved aside.
#[test]
fn state_file_keeps_the_store_across_a_restart() {
    if !xs_host_only() {
        return;
    }
    let [ls] = require!(tools(["xenstore-ls"]));
    let dir = TempDir::new();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap().to_owned();
    let tree;
    {
        let d = require!(Daemon::start_with(&[
            "--domain-nodes",
            "--state-file",
            &state_arg
        ]));
        let mut w = d.connect();
        for i in 0..100 {
            w.write(&format!("/kept/n{i}"), format!("{i}").as_bytes())
                .unwrap();
        }
        w.set_perms("/kept/n3", &["n0", "r2"]).unwrap();
        let mut g = require!(d.guest(5));
        g.write("data/name", b"guest").unwrap();
        tree = dump(&d, &ls);
        assert!(!state.exists());
        d.stop();
    }
    assert!(state.exists(), "no state file after SIGTERM");
    let saved = std::fs::read(&state).unwrap();

    // The next start: the same tree, the guest's socket back, the file gone.
    {
        let d = require!(Daemon::start_with(&[
            "--domain-nodes",
            "--state-file",
            &state_arg
        ]));
        assert_eq!(dump(&d, &ls), tree);
        assert!(!state.exists(), "the state file stays after its restore");
        let mut g = Wire::connect(&d.domain_socket(5).unwrap()).unwrap();
        assert_eq!(g.read("data/name").unwrap(), b"guest");
        assert!(d.log().contains("restored from"), "{}", d.log());
        d.stop();
    }

    // A state file from before this boot: not restored, removed.
    std::fs::write(&state, &saved).unwrap();
    let mut touch = Command::new("touch");
    touch.args(["-d", "@0"]).arg(&state);
    run_with_timeout(touch, Duration::from_secs(10)).ok();
    {
        let d = require!(Daemon::start_with(&["--state-file", &state_arg]));
        assert!(dump(&d, &ls).lines().all(|l| !l.starts_with("/kept")));
        assert!(d.log().contains("written before this boot"), "{}", d.log());
        d.stop();
    }

    // One that cannot be read: the daemon does not start; the file is moved aside, so the
    // next start begins afresh.
    std::fs::write(&state, &saved[..saved.len() / 2]).unwrap();
    let socket = dir.path().join("refused.sock");
    let mut c = Command::new(xs_host_bin());
    c.arg("-N")
        .arg("-s")
        .arg(&socket)
        .arg("--state-file")
        .arg(&state);
    let out = run_with_timeout(c, Duration::from_secs(20));
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("offset"), "{out:?}");
    assert!(!state.exists());
    assert!(dir.path().join("state.rejected").exists());
}

/// A script in `dir` that passes the live-update probe (it is xs-host for that) and then
/// runs `then`.
fn binary_that(dir: &Path, then: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("new-binary");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in --live-update-probe) exec '{}' \"$1\" ;; esac\n{then}\n",
            bin()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Under systemd (`$NOTIFY_SOCKET`, here a datagram socket of the test's), the guardian is
/// announced as the main process for the time of an update and the daemon's pid given back
/// after it (so that the death of a new process does not end the service); when a new
/// process dies, the guardian, announced already, serves on as the main process.
#[test]
fn systemd_hears_of_the_main_pid_across_updates() {
    if !xs_host_only() {
        return;
    }
    let [control] = require!(tools(["xenstore-control"]));
    let dir = TempDir::new();
    let notify = dir.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let heard = || {
        let mut buf = [0u8; 256];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let main_pid = |text: String| -> u32 {
        text.strip_prefix("MAINPID=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a MAINPID: {text:?}"))
    };
    let socket = dir.path().join("sock");
    let pid_file = dir.path().join("pid");
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut daemon = Command::new(xs_host_bin())
        .arg("-N")
        .arg("-s")
        .arg(&socket)
        .arg("-F")
        .arg(&pid_file)
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = daemon.id();
    assert_eq!(heard(), "READY=1");
    let update = |binary: &str| {
        let mut c = Command::new(&control);
        c.env("XENSTORED_PATH", &socket)
            .args(["live-update", binary]);
        run_with_timeout(c, Duration::from_secs(30))
    };

    // A good update: the guardian announced, then the daemon's pid back.
    update(&bin()).ok();
    let guardian = main_pid(heard());
    assert_ne!(guardian, pid);
    assert_eq!(main_pid(heard()), pid);

    // A new process that dies: the guardian, announced, is the main process and serves.
    let dying = binary_that(dir.path(), "kill -SEGV $$");
    let out = update(dying.to_str().unwrap());
    assert_eq!(out.code(), Some(3), "{out:?}");
    let guardian = main_pid(heard());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        != Some(guardian)
    {
        assert!(Instant::now() < deadline, "the guardian does not serve");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stopped at the end, killed if the test fails.
    let serving = xs_e2e::daemon::Detached::from_pid_file(&pid_file);
    assert_eq!(serving.pid(), guardian);
    systemd
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(systemd.recv(&mut buf).is_err(), "no other main pid");
    let mut w = Wire::connect(&socket).unwrap();
    w.write("/after", b"1").unwrap();
    let status = daemon.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(11));
    serving.stop();
}

#[test]
fn save_state_and_restore() {
    if !xs_host_only() {
        return;
    }
    let [control, ls] = require!(tools(["xenstore-control", "xenstore-ls"]));
    let dir = TempDir::new();
    let state = dir.path().join("state");
    let tree;
    {
        let d = require!(Daemon::start_with(&["--domain-nodes"]));
        let mut w = d.connect();
        for i in 0..100 {
            w.write(&format!("/saved/n{i}"), format!("{i}").as_bytes())
                .unwrap();
        }
        w.set_perms("/saved/n3", &["n0", "r2"]).unwrap();
        let mut g = require!(d.guest(5));
        g.write("data/name", b"guest").unwrap();
        d.run(&control, &["save-state", state.to_str().unwrap()])
            .ok();
        tree = dump(&d, &ls);
        d.stop();
    }

    // A truncated state file: refused, with the record and offset named; nothing served.
    let bytes = std::fs::read(&state).unwrap();
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let socket = dir.path().join("refused.sock");
    let mut c = Command::new(xs_host_bin());
    c.arg("-N")
        .arg("-s")
        .arg(&socket)
        .arg("--restore")
        .arg(&truncated);
    let out = run_with_timeout(c, Duration::from_secs(20));
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("state stream") && out.stderr.contains("offset"),
        "{out:?}"
    );
    assert!(!socket.exists());

    // The whole file: the same tree, the guest's socket back.
    let state_arg = state.to_str().unwrap().to_owned();
    let d = require!(Daemon::start_with(&["--restore", &state_arg]));
    assert_eq!(dump(&d, &ls), tree);
    let mut g = Wire::connect(&d.domain_socket(5).unwrap()).unwrap();
    assert_eq!(g.read("data/name").unwrap(), b"guest");
    d.stop();
}
