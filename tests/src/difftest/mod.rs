//! The differential tester: seeded random request sequences run against xs-host and Xen's
//! own daemons (C xenstored and oxenstored 4.17, `shared/anchors/`), every reply and watch
//! event compared, the deliberate differences on a documented allow-list
//! ([`allow`]), and a minimiser that shrinks a sequence that differs to a short script
//! that still does. The program is `xs-difftest` (`src/bin/xs-difftest.rs`); CI runs a
//! short budget in `tests/difftest.rs`.
//!
//! - [`script`]: sequences as data and as replayable scripts;
//! - [`generate`]: the seeded generator;
//! - [`run`]: one sequence against one daemon, what each step observed;
//! - [`compare`]: two daemons' observations side by side, through the allow-list;
//! - [`minimise`]: delta debugging of a sequence that differs;
//! - [`driver`]: runs of many sequences against several daemons, with statistics.

pub mod allow;
pub mod compare;
pub mod driver;
pub mod generate;
pub mod minimise;
pub mod rng;
pub mod run;
pub mod script;
