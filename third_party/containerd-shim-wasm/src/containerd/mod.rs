#![cfg(unix)]

mod client;
mod lease;

pub(crate) use client::Client;
