//! The feature matrix (step `features`), as smoltcp's CI builds every feature set: each
//! library crate must build with no features, with each of its features alone, with its
//! defaults and with all of them (a feature that only builds next to another is a bug users
//! meet, not CI); and xs-ring's normal dependency graph, in every one of those sets, must hold
//! nothing but the crates below (no xs-core, nothing that knows messages or allocates).

use std::collections::BTreeSet;

use crate::cmd::{self, Workspace};
use crate::steps::{Ctx, Outcome};

/// The library crates of the workspace that others build on.
const CRATES: [&str; 4] = ["xs-core", "xs-ring", "xs-serve", "x86-glue"];

/// All xs-ring may depend on (normal dependencies, any feature set): the ring moves bytes and
/// knows nothing of messages (design notes §1).
const RING_MAY_USE: [&str; 2] = ["xs-ring", "bitflags"];

pub(crate) fn step(ctx: &Ctx<'_>) -> Outcome {
    let mut failures = Vec::new();
    for krate in CRATES {
        let features = match declared_features(ctx.ws, krate) {
            Ok(f) => f,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        println!(
            "{krate}: features {}",
            if features.is_empty() {
                "(none)".to_owned()
            } else {
                features.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        );
        for set in feature_sets(&features) {
            let mut args = vec!["check", "-p", krate];
            args.extend(set.iter().map(String::as_str));
            if let Err(e) = cmd::run(&mut ctx.ws.cargo(&args)) {
                failures.push(format!("{krate} {}: {e}", set.join(" ")));
            }
            if krate == "xs-ring"
                && let Err(e) = ring_graph(ctx.ws, &set)
            {
                failures.push(e);
            }
        }
    }
    if failures.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(failures.join("; "))
    }
}

/// The cargo arguments of each feature set to build: none, each feature alone, the defaults,
/// all.
fn feature_sets(features: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut sets = vec![vec!["--no-default-features".to_owned()]];
    for f in features.iter().filter(|f| *f != "default") {
        sets.push(vec![
            "--no-default-features".to_owned(),
            "--features".to_owned(),
            f.clone(),
        ]);
    }
    sets.push(Vec::new());
    sets.push(vec!["--all-features".to_owned()]);
    sets
}

/// xs-ring's normal dependencies with the features `set` selects.
fn ring_graph(ws: &Workspace, set: &[String]) -> Result<(), String> {
    let mut args = vec![
        "tree", "-p", "xs-ring", "-e", "normal", "--prefix", "none", "--locked",
    ];
    args.extend(set.iter().map(String::as_str));
    let tree = cmd::output(&mut ws.cargo(&args))?;
    let names: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let strays: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !RING_MAY_USE.contains(n))
        .collect();
    println!(
        "xs-ring's graph ({}): {}",
        if set.is_empty() {
            "defaults".to_owned()
        } else {
            set.join(" ")
        },
        names.iter().copied().collect::<Vec<_>>().join(", ")
    );
    if strays.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "xs-ring ({}) depends on {}",
            set.join(" "),
            strays.join(", ")
        ))
    }
}

/// The features `krate`'s Cargo.toml declares (its `[features]` table: one `name = [...]`
/// per line, as the workspace writes them).
fn declared_features(ws: &Workspace, krate: &str) -> Result<BTreeSet<String>, String> {
    let path = ws.root.join("crates").join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(parse_features(&text))
}

fn parse_features(manifest: &str) -> BTreeSet<String> {
    let mut in_features = false;
    let mut out = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_features = line == "[features]";
            continue;
        }
        if !in_features || line.starts_with('#') {
            continue;
        }
        if let Some((name, _)) = line.split_once('=') {
            out.insert(name.trim().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_and_their_sets() {
        let manifest = "[package]\nname = \"x\"\n\n[features]\n# a comment\ndefault = [\"a\"]\na = []\nb = [\"dep:c\"]\n\n[dependencies]\nc = { optional = true }\n";
        let features = parse_features(manifest);
        assert_eq!(
            features.iter().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b", "default"]
        );
        let sets = feature_sets(&features);
        assert_eq!(sets.len(), 5);
        assert_eq!(sets[1], ["--no-default-features", "--features", "a"]);
        assert_eq!(sets[3], Vec::<String>::new());
        assert_eq!(sets[4], ["--all-features"]);
    }
}
