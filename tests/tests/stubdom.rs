//! The XenStore stub-domain image (`crates/xs-stubdom`) booted under QEMU: its self-test
//! must pass, a failing check must fail the run, and a fatal error must be reported.
//!
//! The image is `XS_STUBDOM_IMAGE`, else built with the command `cargo xtask stubdom` uses;
//! the harness (`xs_e2e::stubdom`) boots it under KVM when it can, else under TCG, which the
//! test says. These are the image's only boots in `cargo xtask test`: step `test` runs them,
//! or step `stubdom` (with the image it built and checked) when step `test` is not selected.
//! The tests skip, saying so, only when QEMU is not installed (`XS_E2E_NO_SKIP=1` makes that
//! a failure).

use xs_e2e::stubdom::{self, Boot, MIN_CHECKS, Options, READY, STATUS_FAILED, STATUS_FATAL};
use xs_e2e::{note, require};

/// Boots the image with `append` as its command line; the transcript is kept for the
/// assertions, not echoed.
fn boot(append: Option<&str>) -> Boot {
    let options = Options {
        force_tcg: false,
        append,
        timeout: None,
        announce: |_| {},
        say: note,
        echo: None,
    };
    stubdom::boot(&stubdom::image(), &options).unwrap_or_else(|e| panic!("{e}"))
}

/// What a failure message says about the run.
fn context(run: &Boot) -> String {
    format!(
        "QEMU/{} exit status {:?} ({}); transcript:\n{}",
        run.accel.name(),
        run.status,
        run.status_meaning(),
        run.text()
    )
}

fn seconds(d: Option<std::time::Duration>) -> String {
    d.map_or_else(
        || "never".to_owned(),
        |d| format!("{:.3} s", d.as_secs_f64()),
    )
}

#[test]
fn the_self_test_passes_under_qemu() {
    require!(stubdom::qemu_installed());
    let run = boot(None);
    let passed = run
        .passed()
        .unwrap_or_else(|e| panic!("{e}; transcript:\n{}", run.text()));
    assert!(
        run.has_line_starting(READY),
        "no `{READY}` line; {}",
        context(&run)
    );
    for needed in [
        "hostile/ring-index",
        "ring/reconnect",
        "txn/conflict",
        "state/save",
        "state/handover",
        "scale/populate",
    ] {
        assert!(
            run.lines.iter().any(|l| *l == format!("ok   {needed}")),
            "check {needed} did not pass; {}",
            context(&run)
        );
    }
    // `CONTROL save-state` from dom0's client, after it created nodes, a watch and a
    // transaction: the stub's save logged its line (saved into the heap, restored into a
    // scratch store and saved again to the same bytes), and dom0 was served on after it
    // (check `state/save`) and by the store that took the saved state over
    // (`state/handover`).
    let state = run
        .lines
        .iter()
        .find(|l| l.starts_with("xs: state: "))
        .unwrap_or_else(|| panic!("no `xs: state: ` line; {}", context(&run)));
    assert!(
        state.starts_with("xs: state: saved ")
            && state.contains(" records")
            && state.contains("; verified: ")
            && state.contains(" saved again to the same bytes"),
        "{state}; {}",
        context(&run)
    );
    assert!(
        run.has_line_starting("state: handover: "),
        "no handover line; {}",
        context(&run)
    );
    let heap = run
        .lines
        .iter()
        .find(|l| l.starts_with("figure: heap for"))
        .map_or("", String::as_str);
    note(&format!(
        "{passed} checks passed under QEMU/{}: `{READY}` {} after QEMU started, exited after \
         {:.2} s; {heap}; {state}",
        run.accel.name(),
        seconds(run.ready_after),
        run.elapsed.as_secs_f64(),
    ));
}

#[test]
fn a_failing_check_fails_the_run() {
    require!(stubdom::qemu_installed());
    // `selftest.break=<check>` makes the image report that check failed.
    let run = boot(Some("selftest.break=watch/fire"));
    assert!(run.passed().is_err(), "{}", context(&run));
    let (passed, failed) = run.summary().unwrap_or_else(|| {
        panic!(
            "the last line is not `xs-selftest: N passed, M failed`; {}",
            context(&run)
        )
    });
    assert_eq!(
        (run.status, failed),
        (Some(STATUS_FAILED), 1),
        "{}",
        context(&run)
    );
    assert!(
        passed >= MIN_CHECKS - 1,
        "only {passed} checks passed; {}",
        context(&run)
    );
    assert!(
        run.has_line_starting("FAIL watch/fire: "),
        "no FAIL line for the broken check; {}",
        context(&run)
    );
}

#[test]
fn a_fatal_error_is_reported() {
    require!(stubdom::qemu_installed());
    // `selftest.fault=page-fault` reads above the identity map once the store is ready: the
    // #PF handler (on its IST stack) must report it with the trace ring and exit with 37.
    let run = boot(Some("selftest.fault=page-fault"));
    assert_eq!(run.status, Some(STATUS_FATAL), "{}", context(&run));
    for wanted in [
        "FATAL: vector 14 (#PF page fault)",
        "  cr2 0x0000000140000000",
        "trace: ",
    ] {
        assert!(
            run.has_line_starting(wanted),
            "no line starting {wanted:?}; {}",
            context(&run)
        );
    }
    assert!(
        !run.has_line_starting("xs-selftest: "),
        "the self-test ran after a fatal error; {}",
        context(&run)
    );
}

#[test]
fn a_fault_while_reporting_a_panic_is_reported_too() {
    require!(stubdom::qemu_installed());
    // `selftest.fault=panic-page-fault` panics with a message whose formatting reads
    // unmapped memory: the panic report begins, the #PF handler reports the fault as a
    // second, nested report (which says why the first broke off), and the run exits with 37.
    let run = boot(Some("selftest.fault=panic-page-fault"));
    assert_eq!(run.status, Some(STATUS_FATAL), "{}", context(&run));
    for wanted in [
        "PANIC: panicked at ",
        "FATAL: while reporting an earlier fatal error:",
        "FATAL: vector 14 (#PF page fault)",
        "trace: ",
    ] {
        assert!(
            run.has_line_starting(wanted),
            "no line starting {wanted:?}; {}",
            context(&run)
        );
    }
}
