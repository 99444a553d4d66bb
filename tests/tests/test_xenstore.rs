//! Xen's own XenStore test program, `test-xenstore` (`tools/tests/xenstore`, shipped by
//! `xen-utils-4.17`): reads, writes, directories, removals and transactions including a
//! conflicting one that must fail with `EAGAIN`. It exits 0 when every test passes and 3 on
//! the first failure (printing `<test>: failed (ret = <errno>, stage <stage>)`).

use std::process::Command;
use std::time::Duration;

use xs_e2e::daemon::run_with_timeout;
use xs_e2e::{Client, Daemon, Output, require, tools};

const TESTS: [&str; 12] = [
    "read 1",
    "read 2000",
    "write 1",
    "write 2000",
    "dir",
    "rm node",
    "rm dir",
    "ta empty",
    "ta empty x",
    "ta rmw",
    "ta rmw x",
    "ta err",
];

#[track_caller]
fn assert_all_passed(out: &Output) {
    out.ok();
    for name in TESTS {
        let line = out
            .stdout
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .unwrap_or_else(|| panic!("no result line for {name:?}:\n{}", out.stdout));
        assert!(
            line.contains(" ns"),
            "{name:?} did not report a timing: {line:?}"
        );
    }
    assert!(
        !out.stdout.contains("failed") && !out.stdout.contains("Exhaustive"),
        "{}",
        out.stdout
    );
}

#[test]
fn lists_its_twelve_tests() {
    let [t] = require!(tools(["test-xenstore"]));
    let mut c = Command::new(&t);
    c.arg("-l");
    let out = run_with_timeout(c, Duration::from_secs(10));
    let names: Vec<&str> = out
        .ok()
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(names, TESTS);
}

#[test]
fn all_tests_pass_with_five_iterations() {
    let [t] = require!(tools(["test-xenstore"]));
    let d = require!(Daemon::start());
    let out = d.run(&t, &["-i", "5"]);
    assert_all_passed(&out);
    // Its clean-up removed its directory (relative: /local/domain/0/xenstore-test).
    let mut w = d.connect();
    assert_eq!(
        w.read("/local/domain/0/xenstore-test"),
        Err("ENOENT".to_owned())
    );
    // Again on the same daemon: nothing left over disturbs a second run.
    assert_all_passed(&d.run(&t, &["-i", "5"]));
    d.stop();
}

#[test]
fn parallel_instances_pass() {
    let [t] = require!(tools(["test-xenstore"]));
    let d = require!(Daemon::start());
    // Three instances at once: their transactions touch disjoint nodes under the shared
    // parent xenstore-test, and the clean-up transactions race on that parent.
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| d.run(&t, &["-i", "20"])))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("test-xenstore thread"))
            .collect()
    });
    for out in &outs {
        assert_all_passed(out);
    }
    d.stop();
}

#[test]
fn random_mode_passes() {
    let [t] = require!(tools(["test-xenstore"]));
    let d = require!(Daemon::start());
    // Random tests in random order for 2 s (-r prints no timings).
    let out = d.run(&t, &["-r", "2", "-i", "3"]);
    out.ok();
    assert!(!out.stdout.contains("failed"), "{}", out.stdout);
    d.stop();
}
