//! The wall clock, as the records project-vm writes keep it (seconds since
//! the Unix epoch). Below both the image store and the verbs, which stamp
//! what they make with it.

/// Seconds since the Unix epoch (0 should the clock be set before it).
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_is_past_2020() {
        assert!(super::now_unix() > 1_577_836_800);
    }
}
