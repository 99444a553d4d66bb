//! The differential tester (`xs-difftest`, `src/difftest/`) for a short budget: random
//! sequences against xs-host, C xenstored and oxenstored side by side; any difference the
//! allow-list does not explain fails the test, with its minimised script.
//!
//! `XS_DIFFTEST_SECONDS` (default 30) sets the budget, `XS_DIFFTEST_SEED` the seed (default
//! a fixed one, so that CI runs the same sequences; `xs-difftest --seconds N` explores
//! with fresh seeds). A reference daemon that cannot start is skipped with a note; with
//! none the test is skipped.

use std::time::Duration;

use xs_e2e::Kind;
use xs_e2e::difftest::driver::{Config, Driver};
use xs_e2e::skip::{Skip, note, report};

#[test]
fn xs_host_answers_as_the_reference_daemons() {
    // Built (or named by XS_HOST_BIN) before the clock starts.
    let _ = xs_e2e::daemon::xs_host_bin();
    let (mut driver, skipped) = Driver::start(&[Kind::XsHost, Kind::CXenstored, Kind::OXenstored]);
    for (k, why) in &skipped {
        note(&format!("{} not started: {why}", k.name()));
    }
    if driver.kinds().len() < 2 {
        report(&Skip("no reference daemon could be started".into()));
        return;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let config = Config {
        seed: env("XS_DIFFTEST_SEED", 17),
        sequences: None,
        time: Some(Duration::from_secs(env("XS_DIFFTEST_SECONDS", 30))),
        steps: 40,
        minimise: true,
        verbose: false,
        keep_going: false,
        fresh: false,
        out_dir: std::env::temp_dir(),
    };
    let mut out = Vec::new();
    let r = driver.run(&config, &mut out);
    let out = String::from_utf8_lossy(&out);
    note(&format!(
        "seed {}: {}",
        config.seed,
        r.summary().lines().next().unwrap_or("")
    ));
    assert!(r.clean(), "{out}\n{}", r.summary());
}
