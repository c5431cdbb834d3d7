//! Portcullis against its peers on the same decisions (issue 8). See `BENCHMARKS.md`,
//! section "Against peers (issue 8)", and `src/main.rs`.

// The engines' `new` read policy files and panic on a bad one: set-up, not a `Default`.
#![allow(clippy::new_without_default)]

pub mod corpus;
pub mod engines;
#[path = "../../support/generated.rs"]
pub mod generated;
