//! Integration tests for the `slate` command, in a single test binary (`it`).

mod nasty;
mod selftest;
mod treedigest;
