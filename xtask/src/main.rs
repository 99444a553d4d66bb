//! Project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! Only std (and the end-to-end harness `xs-e2e`, std only too, for booting the stub-domain
//! image under QEMU): it drives `cargo`, `dpkg-query`/`apt-get`, `cc` and QEMU as child
//! processes and prints every command line it runs.

mod bench;
mod cmd;
mod features;
mod nostd;
mod packages;
mod steps;
mod stubdom;
mod vmm;
mod xen_rig;

use std::process::ExitCode;

use cmd::Workspace;

fn usage() -> String {
    let mut text = String::from(
        "usage: cargo xtask <command>

commands:
  test [--skip-packages] [--only STEP[,STEP...]]
        the project's test suite: every step runs and is timed, then a summary;
        fails if any step failed. --skip-packages: do not check or install system
        packages. --only: run just these steps. Steps:
",
    );
    for step in steps::STEPS {
        text.push_str(&format!("          {:<12} {}\n", step.name, step.about));
    }
    text.push_str(
        "  bench <core|socket|ring|live-update|vmm> [ARGS...]
        run a benchmark binary of xs-bench in release, passing ARGS to it
        (e.g. `cargo xtask bench core --quick`)
  stubdom [--run] [--tcg] [--append TEXT] [--timeout SECS] | --step
        build the XenStore stub-domain image (crates/xs-stubdom), check it and print
        its path; --run: boot it under QEMU (KVM when usable, else TCG) and pass only
        if its self-test passed; --append: the image's command line; --step: what the
        test step does (fmt, clippy, doc, build, check, and the boots of
        tests/tests/stubdom.rs)
",
    );
    text.push_str(
        "  vmm [--run] | --step
        build xs-vmm and its guest (crates/xs-vmm-guest) and print their paths;
        --run: run the guest under KVM and pass only if its self-test passed;
        --step: what the test step does (the guest's fmt and clippy, the builds, the run
        when /dev/kvm is usable)
",
    );
    text.push_str(xen_rig::USAGE);
    text.push_str("  help  this text\n");
    text
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ws = Workspace::locate();
    match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print!("{}", usage());
            ExitCode::SUCCESS
        }
        Some("test") => match parse_test(&args[1..]) {
            Ok((only, skip_packages)) => {
                if steps::run(&ws, &only, skip_packages) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => usage_error(&e),
        },
        Some("bench") => match bench::run(&ws, &args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask bench: {e}");
                ExitCode::FAILURE
            }
        },
        Some("stubdom") => match stubdom::command(&ws, &args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask stubdom: {e}");
                ExitCode::FAILURE
            }
        },
        Some("vmm") => match vmm::command(&ws, &args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask vmm: {e}");
                ExitCode::FAILURE
            }
        },
        Some("xen-rig") => match xen_rig::command(&ws, &args[1..]) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("xtask xen-rig: {e}");
                ExitCode::FAILURE
            }
        },
        Some(other) => usage_error(&format!("unknown command `{other}`")),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprint!("xtask: {message}\n\n{}", usage());
    ExitCode::from(2)
}

/// `test`'s options: the `--only` step names (empty for all) and `--skip-packages`.
fn parse_test(args: &[String]) -> Result<(Vec<String>, bool), String> {
    let mut only = Vec::new();
    let mut skip_packages = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let list = if arg == "--skip-packages" {
            skip_packages = true;
            continue;
        } else if arg == "--only" {
            args.next().ok_or("--only needs a list of steps")?.as_str()
        } else if let Some(list) = arg.strip_prefix("--only=") {
            list
        } else {
            return Err(format!("unknown option `{arg}` for test"));
        };
        for name in list.split(',').filter(|n| !n.is_empty()) {
            if !steps::STEPS.iter().any(|s| s.name == name) {
                return Err(format!("no step `{name}`"));
            }
            only.push(name.to_owned());
        }
    }
    Ok((only, skip_packages))
}
