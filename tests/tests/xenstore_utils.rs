//! Xen's command-line clients (`xenstore-utils`, and `xenstore-control` from
//! `xen-utils-4.17`) against the daemon, with the outputs and exit codes they give against
//! Xen's C xenstored 4.17 (recorded from it; rerun with `XS_E2E_DAEMON=cxenstored`).
//!
//! Child order: xs-host lists children sorted by name, C xenstored in insertion order
//! (documented in xs-core's `store/node.rs`; no client may depend on either). Trees whose
//! listing is compared verbatim are therefore built in sorted order, where both agree; other
//! listings are compared as sets of lines.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use xs_e2e::{Daemon, Kind, Output, require, tools};

/// The xenstore-utils binaries.
struct Utils {
    read: PathBuf,
    write: PathBuf,
    ls: PathBuf,
    list: PathBuf,
    exists: PathBuf,
    rm: PathBuf,
    chmod: PathBuf,
    watch: PathBuf,
}

impl Utils {
    fn load() -> Result<Utils, xs_e2e::Skip> {
        let [read, write, ls, list, exists, rm, chmod, watch] = tools([
            "xenstore-read",
            "xenstore-write",
            "xenstore-ls",
            "xenstore-list",
            "xenstore-exists",
            "xenstore-rm",
            "xenstore-chmod",
            "xenstore-watch",
        ])?;
        Ok(Utils {
            read,
            write,
            ls,
            list,
            exists,
            rm,
            chmod,
            watch,
        })
    }
}

fn sorted_lines(s: &str) -> Vec<&str> {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort_unstable();
    v
}

#[track_caller]
fn assert_fails(out: &Output, code: i32, stderr_has: &str) {
    assert_eq!(
        out.code(),
        Some(code),
        "`{}`: expected exit code {code}; stdout {:?} stderr {:?}",
        out.cmdline,
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains(stderr_has),
        "`{}`: stderr {:?} lacks {stderr_has:?}",
        out.cmdline,
        out.stderr
    );
}

#[test]
fn fresh_store_holds_tool_xenstored() {
    let u = require!(Utils::load());
    let d = require!(Daemon::start());
    // C xenstored starts with /tool/xenstored and nothing else.
    assert_eq!(
        d.run(&u.ls, &["/"]).ok(),
        "tool = \"\"\n xenstored = \"\"\n"
    );
    assert_eq!(
        d.run(&u.ls, &["-p", "/tool"]).ok(),
        "xenstored = \"\" . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n"
    );
    d.stop();
}

#[test]
fn write_read_values_with_spaces_and_implicit_parents() {
    let u = require!(Utils::load());
    let d = require!(Daemon::start());
    assert_eq!(
        d.run(
            &u.write,
            &["/t/a/b/c", "hello world", "/t/x", "1 2  3", "/t/e", ""]
        )
        .ok(),
        ""
    );
    assert_eq!(d.run(&u.read, &["/t/a/b/c"]).ok(), "hello world\n");
    assert_eq!(
        d.run(&u.read, &["/t/x", "/t/a/b/c"]).ok(),
        "1 2  3\nhello world\n"
    );
    assert_eq!(
        d.run(&u.read, &["-p", "/t/x", "/t/a/b/c"]).ok(),
        "/t/x: 1 2  3\n/t/a/b/c: hello world\n"
    );
    // Parents created on the way have empty values, as does an explicit empty write.
    assert_eq!(d.run(&u.read, &["/t/a", "/t/a/b", "/t/e"]).ok(), "\n\n\n");
    assert_eq!(sorted_lines(d.run(&u.list, &["/t"]).ok()), ["a", "e", "x"]);
    assert_eq!(
        sorted_lines(d.run(&u.list, &["-p", "/t"]).ok()),
        ["/t/a", "/t/e", "/t/x"]
    );
    // Overwrite.
    d.run(&u.write, &["/t/x", "new value"]).ok();
    assert_eq!(d.run(&u.read, &["/t/x"]).ok(), "new value\n");
    // Escapes: xenstore-write unescapes, xenstore-read escapes again (-R: raw bytes).
    d.run(&u.write, &["/t/esc", "a\\nb\\\\c\\x41"]).ok();
    assert_eq!(d.run(&u.read, &["/t/esc"]).ok(), "a\\nb\\\\cA\n");
    assert_eq!(d.run(&u.read, &["-R", "/t/esc"]).ok(), "a\nb\\cA");
    // A 2000-byte value round-trips.
    let big = "v".repeat(2000);
    d.run(&u.write, &["/t/big", big.as_str()]).ok();
    assert_eq!(d.run(&u.read, &["/t/big"]).ok(), format!("{big}\n"));
    // Relative paths are relative to /local/domain/0 for dom0.
    d.run(&u.write, &["rel/node", "r"]).ok();
    assert_eq!(d.run(&u.read, &["/local/domain/0/rel/node"]).ok(), "r\n");
    assert_eq!(d.run(&u.read, &["rel/node"]).ok(), "r\n");
    // Missing node.
    assert_fails(
        &d.run(&u.read, &["/t/missing"]),
        1,
        "couldn't read path /t/missing",
    );
    // '@' inside a node path: C xenstored accepts it; xs-host rejects it on purpose
    // (xs-core path.rs: '@' only starts special watch paths).
    let out = d.run(&u.write, &["/t/bad@x", "1"]);
    match d.kind() {
        Kind::XsHost => assert_fails(&out, 1, "could not write path /t/bad@x"),
        Kind::CXenstored | Kind::OXenstored => {
            out.ok();
        }
    }
    d.stop();
}

/// Builds the tree whose listings are compared verbatim, in sorted order.
fn build_ls_tree(d: &Daemon, u: &Utils) {
    d.run(
        &u.write,
        &[
            "/ls/alpha",
            "1",
            "/ls/beta/delta",
            "two words",
            "/ls/beta/gamma",
            "say \"hi\"",
            "/ls/beta/gamma/eps",
            "tab\\there",
            "/ls/zeta",
            "",
        ],
    )
    .ok();
    d.run(&u.chmod, &["/ls/beta", "n0", "r3", "w4"]).ok();
    d.run(&u.chmod, &["/ls/zeta", "n5", "b6"]).ok();
}

#[test]
fn ls_output_formats_match_c_xenstored() {
    let u = require!(Utils::load());
    let d = require!(Daemon::start());
    build_ls_tree(&d, &u);
    // Outputs recorded from C xenstored 4.17 for the same tree (80 columns: stdout is not a
    // terminal).
    assert_eq!(
        d.run(&u.ls, &["/ls"]).ok(),
        "alpha = \"1\"\n\
         beta = \"\"\n\
         \x20delta = \"two words\"\n\
         \x20gamma = \"say \"hi\"\"\n\
         \x20\x20eps = \"tab\\there\"\n\
         zeta = \"\"\n"
    );
    assert_eq!(
        d.run(&u.ls, &["-f", "/ls"]).ok(),
        "/ls/alpha = \"1\"\n\
         /ls/beta = \"\"\n\
         /ls/beta/delta = \"two words\"\n\
         /ls/beta/gamma = \"say \"hi\"\"\n\
         /ls/beta/gamma/eps = \"tab\\there\"\n\
         /ls/zeta = \"\"\n"
    );
    assert_eq!(
        d.run(&u.ls, &["-p", "/ls"]).ok(),
        "alpha = \"1\"  . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n\
         beta = \"\"  . . . . . . . . . . . . . . . . . . . . . . . . .  (n0,r3,w4)\n\
         \x20delta = \"two words\" . . . . . . . . . . . . . . . . . . . .  (n0)\n\
         \x20gamma = \"say \"hi\"\"  . . . . . . . . . . . . . . . . . . . .  (n0)\n\
         \x20\x20eps = \"tab\\there\"  . . . . . . . . . . . . . . . . . . . .  (n0)\n\
         zeta = \"\"  . . . . . . . . . . . . . . . . . . . . . . . . .  (n5,b6)\n"
    );
    assert_eq!(
        d.run(&u.ls, &["-fp", "/ls"]).ok(),
        "/ls/alpha = \"1\"   (n0)\n\
         /ls/beta = \"\"   (n0,r3,w4)\n\
         /ls/beta/delta = \"two words\"   (n0)\n\
         /ls/beta/gamma = \"say \"hi\"\"   (n0)\n\
         /ls/beta/gamma/eps = \"tab\\there\"   (n0)\n\
         /ls/zeta = \"\"   (n5,b6)\n"
    );
    // Long values are cut to the width without -f.
    let long = "x".repeat(150);
    d.run(&u.write, &["/long/v", long.as_str()]).ok();
    assert_eq!(
        d.run(&u.ls, &["/long"]).ok(),
        format!("v = \"{}\\...\"\n", "x".repeat(71))
    );
    assert_eq!(
        d.run(&u.ls, &["-f", "/long"]).ok(),
        format!("/long/v = \"{long}\"\n")
    );
    // The whole store, modulo child order.
    assert_eq!(
        sorted_lines(d.run(&u.ls, &["-f"]).ok()),
        sorted_lines(
            "/tool = \"\"\n/tool/xenstored = \"\"\n\
             /ls = \"\"\n/ls/alpha = \"1\"\n/ls/beta = \"\"\n/ls/beta/delta = \"two words\"\n\
             /ls/beta/gamma = \"say \"hi\"\"\n/ls/beta/gamma/eps = \"tab\\there\"\n\
             /ls/zeta = \"\"\n/long = \"\"\n/long/v = \"{long}\"\n"
                .replace("{long}", &long)
                .as_str()
        )
    );
    // Missing path.
    assert_fails(
        &d.run(&u.ls, &["/nope"]),
        1,
        "xs_directory (/nope): No such file or directory",
    );
    d.stop();
}

#[test]
fn ls_lists_children_created_out_of_order() {
    let u = require!(Utils::load());
    let d = require!(Daemon::start());
    for name in ["m", "c", "x", "a", "k"] {
        d.run(&u.write, &[format!("/o/{name}").as_str(), name]).ok();
    }
    assert_eq!(
        sorted_lines(d.run(&u.ls, &["-f", "/o"]).ok()),
        [
            "/o/a = \"a\"",
            "/o/c = \"c\"",
            "/o/k = \"k\"",
            "/o/m = \"m\"",
            "/o/x = \"x\""
        ]
    );
    let listed = d.run(&u.list, &["/o"]).ok().to_owned();
    match d.kind() {
        // Deliberate difference (xs-core store/node.rs): DIRECTORY lists children sorted.
        Kind::XsHost => assert_eq!(listed, "a\nc\nk\nm\nx\n"),
        Kind::CXenstored | Kind::OXenstored => assert_eq!(listed, "m\nc\nx\na\nk\n"),
    }
    d.stop();
}

#[test]
fn chmod_sets_several_perms_and_ls_p_shows_them() {
    let u = require!(Utils::load());
    let d = require!(Daemon::start());
    d.run(&u.write, &["/p/a/b", "1", "/p/a/c", "2"]).ok();
    d.run(&u.chmod, &["/p/a/b", "n1", "r2", "w3", "b4"]).ok();
    assert_eq!(
        d.run(&u.ls, &["-p", "/p/a"]).ok(),
        "b = \"1\"  . . . . . . . . . . . . . . . . . . . . . . . . . .  (n1,r2,w3,b4)\n\
         c = \"2\"  . . . . . . . . . . . . . . . . . . . . . . . . . .  (n0)\n"
    );
    // -r: the node and everything below it.
    d.run(&u.chmod, &["-r", "/p/a", "n3", "r4"]).ok();
    assert_eq!(
        d.run(&u.ls, &["-fp", "/p"]).ok(),
        "/p/a = \"\"   (n3,r4)\n/p/a/b = \"1\"   (n3,r4)\n/p/a/c = \"2\"   (n3,r4)\n"
    );
    // -u: the node and its parents up to the path's first component.
    d.run(&u.chmod, &["-u", "/p/a/b", "n0", "b7"]).ok();
    assert_eq!(
        d.run(&u.ls, &["-fp", "/p"]).ok(),
        "/p/a = \"\"   (n0,b7)\n/p/a/b = \"1\"   (n0,b7)\n/p/a/c = \"2\"   (n3,r4)\n"
    );
    // Children created later inherit the parent's permissions.
    d.run(&u.write, &["/p/a/new", "n"]).ok();
    assert_eq!(
        d.run(&u.ls, &["-fp", "/p/a/new"]).ok(),
        "",
        "a leaf lists no children"
    );
    let perms = d.run(&u.ls, &["-fp", "/p/a"]).ok().to_owned();
    assert!(
        perms.contains("/p/a/new = \"n\"   (n0,b7)\n"),
        "inherited perms: {perms}"
    );
    // Bad permission strings and missing nodes fail.
    let out = d.run(&u.chmod, &["/p/a/b", "q5"]);
    assert_ne!(out.code(), Some(0), "chmod with a bad perm: {out:?}");
    let out = d.run(&u.chmod, &["/p/nope", "n0"]);
    assert_ne!(out.code(), Some(0), "chmod of a missing node: {out:?}");
    d.stop();
}

#[test]
fn exists_exit_codes() {
    let u = require!(Utils::load());
    let d = require!(Daemon::start());
    d.run(&u.write, &["/e/x", "1"]).ok();
    for (args, code) in [
        (&["/e/x"][..], 0),
        (&["/e"][..], 0),
        (&["/"][..], 0),
        (&["/e/y"][..], 1),
        (&["/nope/deeper"][..], 1),
        (&["/e/x", "/e"][..], 0),
        (&["/e/x", "/e/y"][..], 1),
    ] {
        let out = d.run(&u.exists, args);
        assert_eq!(out.code(), Some(code), "xenstore-exists {args:?}: {out:?}");
        assert_eq!(out.stdout, "", "xenstore-exists prints nothing: {out:?}");
    }
    d.stop();
}

#[test]
fn rm_semantics() {
    let u = require!(Utils::load());
    let d = require!(Daemon::start());
    d.run(&u.write, &["/r/a/b/c", "1", "/r/keep", "k"]).ok();
    // A missing node whose parent exists: success.
    assert_eq!(d.run(&u.rm, &["/r/missing"]).ok(), "");
    // Missing parent too: failure.
    assert_fails(
        &d.run(&u.rm, &["/nope/missing"]),
        1,
        "could not remove path /nope/missing",
    );
    // Removing a node removes its subtree.
    d.run(&u.rm, &["/r/a/b"]).ok();
    assert_eq!(d.run(&u.exists, &["/r/a/b/c"]).code(), Some(1));
    assert_eq!(d.run(&u.exists, &["/r/a/b"]).code(), Some(1));
    assert_eq!(
        d.run(&u.ls, &["-f", "/r"]).ok(),
        "/r/a = \"\"\n/r/keep = \"k\"\n"
    );
    // -t also removes parents left empty, up to the first with other children or a value.
    d.run(&u.write, &["/t2/x/y/z", "1"]).ok();
    d.run(&u.rm, &["-t", "/t2/x/y/z"]).ok();
    assert_eq!(d.run(&u.exists, &["/t2"]).code(), Some(1));
    d.run(&u.write, &["/t3/x/y/z", "1", "/t3/other", "o"]).ok();
    d.run(&u.rm, &["-t", "/t3/x/y/z"]).ok();
    assert_eq!(d.run(&u.ls, &["-f", "/t3"]).ok(), "/t3/other = \"o\"\n");
    d.stop();
}

/// Runs `xenstore-watch -n <n> <path>`, waits for its first (initial) event line, then
/// runs `then`, and returns all the lines it printed before exiting on its own.
fn watch_events(d: &Daemon, u: &Utils, n: u32, path: &str, then: impl FnOnce()) -> Vec<String> {
    let mut cmd = d.command(&u.watch);
    cmd.args(["-n", &n.to_string(), path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn xenstore-watch");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let mut lines = Vec::new();
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(l) => lines.push(l),
        Err(_) => {
            let _ = child.kill();
            panic!("xenstore-watch printed no initial event within 10 s");
        }
    }
    then();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(10)) {
        lines.push(l);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait xenstore-watch") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("xenstore-watch -n {n} did not exit; lines so far: {lines:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "xenstore-watch exited with {status}");
    lines
}

#[test]
fn watch_prints_initial_event_then_changes() {
    let u = require!(Utils::load());
    let d = require!(Daemon::start());
    // -n 2: the initial event and one change, then exit.
    let lines = watch_events(&d, &u, 2, "/w", || {
        d.run(&u.write, &["/w/a", "1"]).ok();
    });
    assert_eq!(lines, ["/w", "/w/a"]);
    // Changes below the path, to the path itself, and removal; a write elsewhere is not seen.
    let lines = watch_events(&d, &u, 4, "/w", || {
        d.run(&u.write, &["/elsewhere", "x"]).ok();
        d.run(&u.write, &["/w/a/deep", "2"]).ok();
        d.run(&u.write, &["/w", "v"]).ok();
        d.run(&u.rm, &["/w/a"]).ok();
    });
    assert_eq!(lines, ["/w", "/w/a/deep", "/w", "/w/a"]);
    // Watching a node that does not exist yet works; its creation fires.
    let lines = watch_events(&d, &u, 2, "/later/node", || {
        d.run(&u.write, &["/later/node", "here"]).ok();
    });
    assert_eq!(lines, ["/later/node", "/later/node"]);
    d.stop();
}

/// Parses `xenstore-control quota` output into `(name, value)` pairs.
fn quota_values(out: &str) -> Vec<(String, u64)> {
    out.lines()
        .skip_while(|l| !l.starts_with("Quota settings:"))
        .skip(1)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((name.trim().to_owned(), value))
        })
        .collect()
}

#[test]
fn xenstore_control_help_quota_check_print() {
    let [control] = require!(tools(["xenstore-control"]));
    let d = require!(Daemon::start());
    let help = d.run(&control, &["help"]).ok().to_owned();
    for cmd in [
        "check",
        "help",
        "log",
        "logfile",
        "memreport",
        "print",
        "quota",
    ] {
        assert!(
            help.lines()
                .any(|l| l.split_whitespace().next() == Some(cmd)),
            "help lacks {cmd}:\n{help}"
        );
    }
    let quota = d.run(&control, &["quota"]).ok().to_owned();
    let mut values = quota_values(&quota);
    values.sort();
    // C xenstored 4.17's names and defaults.
    let mut want: Vec<(String, u64)> = [
        ("memory", 2_621_440),
        ("node-size", 2048),
        ("nodes", 1000),
        ("outstanding", 20),
        ("path-max", 2048),
        ("permissions", 5),
        ("transaction-nodes", 1024),
        ("transactions", 10),
        ("watches", 128),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v))
    .collect();
    want.sort();
    assert_eq!(values, want, "xenstore-control quota printed:\n{quota}");
    // Setting a quota by its C xenstored name shows in the listing.
    assert_eq!(
        d.run(&control, &["quota", "set", "nodes", "20"]).ok(),
        "OK\n"
    );
    assert_eq!(
        d.run(&control, &["quota", "set", "permissions", "7"]).ok(),
        "OK\n"
    );
    let quota = d.run(&control, &["quota"]).ok().to_owned();
    let values = quota_values(&quota);
    assert!(values.contains(&("nodes".to_owned(), 20)), "{quota}");
    assert!(values.contains(&("permissions".to_owned(), 7)), "{quota}");
    // Per-domain usage.
    let dom0 = d.run(&control, &["quota", "0"]).ok().to_owned();
    assert!(dom0.starts_with("Domain 0:\n"), "quota 0:\n{dom0}");
    assert!(
        dom0.lines().any(|l| l.starts_with("nodes")),
        "quota 0:\n{dom0}"
    );
    assert_eq!(d.run(&control, &["check"]).ok(), "OK\n");
    assert_eq!(d.run(&control, &["print", "hello from e2e"]).ok(), "OK\n");
    // Unknown command: exit code 3, and the list of commands on stderr.
    let out = d.run(&control, &["no-such-command"]);
    assert_fails(&out, 3, "Command not supported");
    d.stop();
}
