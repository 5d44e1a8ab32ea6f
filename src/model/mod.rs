//! The vocabulary every stage shares: Quay permissions and grants (`permission`), the verified
//! identity (`identity`), the decision and its stable reason codes (`decision`), and the few
//! pure helpers over claims and time that several stages need (`claims`, `clock`).
//!
//! Plain data and pure functions only; it imports nothing else of this crate, so every stage
//! can depend on it without a cycle.

pub mod claims;
pub mod clock;
pub mod decision;
pub mod identity;
pub mod permission;
