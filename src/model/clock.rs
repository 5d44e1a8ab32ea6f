//! The one place that reads the system clock. Pure stages take `now` as an argument (so expiry
//! and leeway are tested without sleeping); the edges call `unix_now` once per Check.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
