//! HTTP API tests against the real server (in-process on a random port,
//! or the real binary as a child process), over real HTTP and real SQLite.

mod admin;
mod auth;
mod bad_input;
mod client;
mod connections;
mod consume;
mod deploy;
mod durability;
mod helpers;
mod openapi;
mod operate;
mod postgres;
mod process;
mod sharing;
