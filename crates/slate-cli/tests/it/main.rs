//! Integration tests for the `slate` command, in a single test binary (`it`).

mod cli;
mod fidelity;
mod nasty;
mod safety;
mod selftest;
mod support;
mod treedigest;
