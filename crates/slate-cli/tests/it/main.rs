//! Integration tests for the `slate` command, in a single test binary (`it`).

mod agent;
mod apply;
mod boot;
mod cli;
mod dashboard;
mod diskless;
mod enroll;
mod fidelity;
mod home;
mod install_cached;
mod live;
mod mount;
mod nasty;
mod rollout;
mod safety;
mod selftest;
mod serve;
mod state;
mod support;
mod transport;
mod treedigest;
mod trust;
