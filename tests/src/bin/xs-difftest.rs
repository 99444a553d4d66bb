//! `xs-difftest`: the differential tester. Seeded random request sequences run against
//! xs-host, Xen 4.17's C xenstored and oxenstored side by side; every reply and watch
//! event is compared; what differs and is not on the allow-list is minimised and printed
//! as a replayable script. See `tests/README.md` and [`xs_e2e::difftest`].
//!
//! ```text
//! xs-difftest [--seed N] [--sequences N | --seconds N] [--steps N]
//!             [--daemons xs-host,cxenstored,oxenstored] [--no-minimise] [--keep-going]
//!             [--fresh] [--verbose] [--out DIR] [--replay FILE] [--allow-list]
//! ```
//!
//! Exit status: 0 if nothing unexplained was found, 1 if something was, 2 on bad usage or
//! when fewer than two daemons could be started.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use xs_e2e::Kind;
use xs_e2e::difftest::allow::{RULES, Who};
use xs_e2e::difftest::driver::{Config, Driver};
use xs_e2e::difftest::script::Sequence;

const USAGE: &str = "\
usage: xs-difftest [options]
  --seed N          seed of the run (default: from the clock; printed)
  --sequences N     run N sequences (default 100 unless --seconds is given)
  --seconds N       run for N seconds (checked between sequences; hours are fine)
  --steps N         steps per sequence after its prologue (default 40)
  --daemons LIST    comma-separated: xs-host, cxenstored, oxenstored (default all three)
  --no-minimise     report a difference with its whole sequence
  --keep-going      go on after a difference (default: stop at the first)
  --fresh           restart every daemon before each sequence (slow; default: clean up)
  --verbose         print every step and what each daemon observed
  --out DIR         where scripts of differences are written (default /tmp)
  --replay FILE     run the script in FILE once (with --verbose to see every step)
  --allow-list      print the allow-list with its reasons and exit
Environment: XS_HOST_BIN (the xs-host binary), XS_E2E_ANCHORS (shared/anchors).";

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xs-difftest: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode, String> {
    let mut config = Config {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        sequences: None,
        time: None,
        steps: 40,
        minimise: true,
        verbose: false,
        keep_going: false,
        fresh: false,
        out_dir: std::env::temp_dir(),
    };
    let mut kinds = vec![Kind::XsHost, Kind::CXenstored, Kind::OXenstored];
    let mut replay: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| -> Result<u64, String> {
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        };
        match a.as_str() {
            "--seed" => config.seed = number("--seed", value("--seed")?)?,
            "--sequences" => config.sequences = Some(number("--sequences", value("--sequences")?)?),
            "--seconds" => {
                config.time = Some(Duration::from_secs(number(
                    "--seconds",
                    value("--seconds")?,
                )?));
            }
            "--steps" => config.steps = number("--steps", value("--steps")?)? as usize,
            "--daemons" => {
                kinds = value("--daemons")?
                    .split(',')
                    .map(|n| Kind::from_name(n.trim()).ok_or(format!("unknown daemon {n:?}")))
                    .collect::<Result<_, _>>()?;
            }
            "--no-minimise" => config.minimise = false,
            "--keep-going" => config.keep_going = true,
            "--fresh" => config.fresh = true,
            "--verbose" => config.verbose = true,
            "--out" => config.out_dir = PathBuf::from(value("--out")?),
            "--replay" => replay = Some(PathBuf::from(value("--replay")?)),
            "--allow-list" => {
                print_allow_list();
                return Ok(ExitCode::SUCCESS);
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            _ => return Err(format!("unknown option {a}")),
        }
    }
    if config.sequences.is_none() && config.time.is_none() {
        config.sequences = Some(100);
    }
    let (mut driver, skipped) = Driver::start(&kinds);
    for (k, why) in &skipped {
        eprintln!("xs-difftest: {} not started: {why}", k.name());
    }
    if driver.kinds().len() < 2 {
        eprintln!("xs-difftest: fewer than two daemons running, nothing to compare");
        return Ok(ExitCode::from(2));
    }
    let names: Vec<&str> = driver.kinds().iter().map(|k| k.name()).collect();
    let mut out = std::io::stdout();
    let report = if let Some(file) = replay {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let seq = Sequence::parse(&text)?;
        let _ = writeln!(out, "replaying {} on {}", file.display(), names.join(", "));
        driver.replay(&seq, &config, &mut out)
    } else {
        let _ = writeln!(
            out,
            "xs-difftest --seed {} --steps {} on {}",
            config.seed,
            config.steps,
            names.join(", ")
        );
        driver.run(&config, &mut out)
    };
    let _ = write!(out, "{}", report.summary());
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_allow_list() {
    for r in RULES {
        let who = match r.who {
            Who::Any => "any pair".to_owned(),
            Who::Daemon(k) => k.name().to_owned(),
        };
        println!(
            "{} ({who}{})\n    {}\n",
            r.id,
            if r.diverges { ", stores diverge" } else { "" },
            r.reason.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
}
