//! Benchmark tooling behind the `quay-authz-bench` binary — FOR MEASURING, never part of a
//! serving quay-authz.
//!
//! `loadgen` drives `envoy.service.auth.v3.Authorization/Check` at a fixed concurrency and
//! reports throughput and latency percentiles; `noop` is an ext_authz server on the same tonic
//! stack that answers OK at once (the transport's limit, the baseline quay-authz is compared
//! with); `resilience` measures key rotation under load, an unknown-kid flood and memory with
//! many cached tokens against a real `quay-authz serve` process; `markdown` turns results into
//! BENCHMARKS.md sections.

pub mod loadgen;
pub mod markdown;
pub mod noop;
pub mod resilience;
