//! Running commands. Every command line is printed before it runs, so a log shows exactly
//! what to type to reproduce a step by hand.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the workspace is and where its build output goes.
#[derive(Debug)]
pub(crate) struct Workspace {
    /// The repository root (the parent of this crate's directory).
    pub(crate) root: PathBuf,
    /// The normal build's target dir; separate builds (no_std proof, loom) use
    /// subdirectories of it so they never invalidate the normal build cache.
    pub(crate) target_dir: PathBuf,
}

impl Workspace {
    pub(crate) fn locate() -> Workspace {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), PathBuf::from);
        // Cargo resolves a relative CARGO_TARGET_DIR against the directory it was started in,
        // which is ours too (`cargo run` does not change directory).
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => std::env::current_dir()
                .map(|cwd| cwd.join(&dir))
                .unwrap_or_else(|_| PathBuf::from(dir)),
            _ => root.join("target"),
        };
        Workspace { root, target_dir }
    }

    /// A `cargo` command run from the workspace root: the cargo that started us (`CARGO`),
    /// else the one on `PATH`.
    pub(crate) fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(args).current_dir(&self.root);
        cmd
    }
}

/// The command line as a shell would take it, environment overrides first.
pub(crate) fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            words.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    words.push(quote(&cmd.get_program().to_string_lossy()));
    words.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn announce(cmd: &Command) {
    println!("$ {}", display(cmd));
    // Keep our line ahead of the child's output when both go to a pipe.
    let _ = std::io::stdout().flush();
}

/// Runs `cmd` with our stdin/stdout/stderr; `Err` says why it failed.
pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    announce(cmd);
    match cmd.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("`{}` failed ({status})", short(cmd))),
        Err(e) => Err(format!("could not start `{}`: {e}", short(cmd))),
    }
}

/// Runs `cmd` and returns its standard output (its standard error goes to ours).
pub(crate) fn output(cmd: &mut Command) -> Result<String, String> {
    announce(cmd);
    match cmd.stderr(Stdio::inherit()).output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!("`{}` failed ({})", short(cmd), out.status)),
        Err(e) => Err(format!("could not start `{}`: {e}", short(cmd))),
    }
}

/// The program and first argument, to name a command in a one-line summary.
fn short(cmd: &Command) -> String {
    let program = std::path::Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    match cmd.get_args().next() {
        Some(arg) => format!("{program} {}", arg.to_string_lossy()),
        None => program,
    }
}

/// Runs `cmd`, killing it after `timeout`; returns its exit code.
pub(crate) fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<i32, String> {
    announce(cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start `{}`: {e}", short(cmd)))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return status
                    .code()
                    .ok_or_else(|| format!("`{}` ended by a signal ({status})", short(cmd)));
            }
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`{}` still running after {}s; killed",
                    short(cmd),
                    timeout.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for `{}`: {e}", short(cmd))),
        }
    }
}
