//! The pause a client sees, from reply arrival times alone: the longest
//! gap between two consecutive replies that overlaps a window. Pure: no
//! clock, no I/O, so the rule is tested on made-up times.

use std::time::{Duration, Instant};

/// A span of time (an upgrade, or a quiet window of the same length).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) from: Instant,
    pub(crate) to: Instant,
}

impl Window {
    pub(crate) fn length(&self) -> Duration {
        self.to.saturating_duration_since(self.from)
    }
}

/// The longest gap between consecutive `arrivals` (in order) that overlaps
/// `window`: the previous reply came before its end and the next after its
/// start. `None` if no reply came after the window opened (the connection
/// went quiet for good, which the caller counts elsewhere).
pub(crate) fn largest(arrivals: &[Instant], window: Window) -> Option<Duration> {
    arrivals.windows(2).filter(|pair| pair[1] > window.from && pair[0] < window.to).map(|pair| pair[1] - pair[0]).max()
}

/// Nearest-rank quantile of `values` (sorted here); 0 when empty.
pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: &[u64]) -> Vec<Instant> {
        ms.iter().map(|m| base + Duration::from_millis(*m)).collect()
    }

    #[test]
    fn the_gap_spanning_the_window_counts_and_gaps_outside_do_not() {
        let base = Instant::now();
        let arrivals = at(base, &[0, 10, 20, 100, 110, 120, 300]);
        let window = Window { from: base + Duration::from_millis(30), to: base + Duration::from_millis(40) };
        assert_eq!(largest(&arrivals, window), Some(Duration::from_millis(80)));
        // A window between two ordinary replies sees the ordinary gap only.
        let window = Window { from: base + Duration::from_millis(112), to: base + Duration::from_millis(115) };
        assert_eq!(largest(&arrivals, window), Some(Duration::from_millis(10)));
        // One reaching into a long gap sees that gap.
        let window = Window { from: base + Duration::from_millis(115), to: base + Duration::from_millis(125) };
        assert_eq!(largest(&arrivals, window), Some(Duration::from_millis(180)));
        let window = Window { from: base + Duration::from_millis(400), to: base + Duration::from_millis(410) };
        assert_eq!(largest(&arrivals, window), None);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.99), 0.0);
        assert_eq!(quantile(&[5.0], 0.5), 5.0);
    }
}
