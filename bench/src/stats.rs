//! Small numeric helpers: percentiles, sliding windows, rates.

/// The p-th percentile (0..=100) by nearest rank of an unsorted slice; None when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Most events in any half-open window [t, t + width) (times in µs, any order).
pub fn max_in_window(times_us: &[i64], width_us: i64) -> usize {
    max_in_window_at(times_us, width_us).0
}

/// Like `max_in_window`, also giving the (sorted) index of the first event of the first
/// fullest window.
pub fn max_in_window_at(times_us: &[i64], width_us: i64) -> (usize, usize) {
    let mut t: Vec<i64> = times_us.to_vec();
    t.sort_unstable();
    let mut best = 0;
    let mut at = 0;
    let mut j = 0;
    for i in 0..t.len() {
        // the window starting at t[i] holds t[i..j) where t[j] >= t[i] + width
        if j < i {
            j = i;
        }
        while j < t.len() && t[j] < t[i] + width_us {
            j += 1;
        }
        if j - i > best {
            best = j - i;
            at = i;
        }
    }
    (best, at)
}

/// Events per second: (n - 1) / (last - first), from the first to the last event.
pub fn rate_per_s(times_us: &[i64]) -> Option<f64> {
    if times_us.len() < 2 {
        return None;
    }
    let first = *times_us.iter().min()?;
    let last = *times_us.iter().max()?;
    if last <= first {
        return None;
    }
    Some((times_us.len() - 1) as f64 / ((last - first) as f64 / 1e6))
}

/// Counts per second bucket from `start_us`, over `seconds` buckets.
pub fn per_second(times_us: &[i64], start_us: i64, seconds: usize) -> Vec<u32> {
    let mut out = vec![0u32; seconds];
    for &t in times_us {
        if t < start_us {
            continue;
        }
        let k = ((t - start_us) / 1_000_000) as usize;
        if k < seconds {
            out[k] += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn windows() {
        // one per second for 120 s: a 60 s half-open window holds exactly 60
        let t: Vec<i64> = (0..120).map(|i| i * 1_000_000).collect();
        assert_eq!(max_in_window(&t, 60_000_000), 60);
        // a burst of 10 at 0 and 10 at 0.999 s: one 1 s window holds 20
        let mut b: Vec<i64> = (0..10).map(|i| i * 10).collect();
        b.extend((0..10).map(|i| 999_000 + i * 10));
        assert_eq!(max_in_window(&b, 1_000_000), 20);
        assert_eq!(rate_per_s(&t).map(|r| r.round()), Some(1.0));
    }
}
