//! The seven figures of BENCHMARKS.md, one module each. Every figure starts
//! its own stack, so one figure's job records never weigh on another's.

pub mod control;
pub mod fleet;
pub mod followers;
pub mod footprint;
pub mod start;
pub mod streaming;
pub mod throughput;
