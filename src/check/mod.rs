//! One Check, end to end: `pipeline` runs the phases in order (extract → route → authenticate →
//! authorize → respond) in one function; `respond` builds Envoy's CheckResponse; `audit` writes
//! the one decision event per Check; `explain` reports the same run step by step.
//!
//! `server` calls into this module; nothing here knows about transports.

pub mod audit;
pub mod explain;
pub mod pipeline;
pub mod respond;
