//! Helpers for the end-to-end tests in `tests/tests/`, which start the real
//! binaries. Filled in as the binaries arrive.
#![forbid(unsafe_code)]
