//! Fixtures shared by the integration and end-to-end tests: real components on loopback.
//!
//! Each integration test crate declares `mod common;` and uses what it needs; the modules carry
//! `#![allow(dead_code)]` because no single test uses every fixture.

pub mod cli;
pub mod envoy;
pub mod issuer;
pub mod log_capture;
pub mod pki;
pub mod quay;
pub mod redis;
pub mod serve;
pub mod service;
pub mod tools;
pub mod upstream;
