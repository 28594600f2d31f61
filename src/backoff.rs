//! How long to wait before trying again. One rule for every retry loop (downloads, GCS,
//! RunPod's job polls), so a flaky service sees the same, jittered, capped pressure from all
//! of them, and `Retry-After` is read one way.

use std::time::{Duration, SystemTime};

/// Exponential back-off with jitter: a random pause in [d/2, d], d = base·2^(n−1) capped at
/// `cap`. Jitter keeps many workers that failed together from retrying together; `n` counts
/// failures from 1 (0 is treated as 1).
pub fn jittered(base: Duration, n: u32, cap: Duration) -> Duration {
    let d = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(cap);
    let mut r = [0u8; 8];
    let frac = match getrandom::fill(&mut r) {
        Ok(()) => (u64::from_le_bytes(r) % 1000) as f64 / 1000.0,
        Err(_) => 0.5,
    };
    d.mul_f64(0.5 + frac / 2.0)
}

/// A `Retry-After` value, as delta-seconds or an HTTP date, capped at `cap`; `None` when it
/// is neither (a garbled header is ignored, not obeyed).
pub fn retry_after(value: &str, cap: Duration) -> Option<Duration> {
    let v = value.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(d.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_within_their_jitter_and_stop_at_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(30);
        for n in 1..=5u32 {
            let d = jittered(base, n, cap);
            let full = base * (1 << (n - 1));
            assert!(
                d >= full / 2 && d <= full,
                "attempt {n}: {d:?} outside [{:?}, {full:?}]",
                full / 2
            );
        }
        assert!(jittered(base, 0, cap) <= base);
        assert!(jittered(base, 40, cap) <= cap);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_ignores_garbage() {
        let cap = Duration::from_secs(300);
        assert_eq!(retry_after(" 7 ", cap), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("9999", cap), Some(cap));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT", cap),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", cap), None);
    }
}
