//! [`Hist`]: a latency histogram with log-linear buckets (HdrHistogram's
//! layout, cut down): 16 sub-buckets per power of two, so any percentile is
//! within 1/16 (6%) of the true value, recording is an array increment, and
//! histograms of several threads or processes merge exactly.

/// Sub-buckets per power of two (as bits).
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets: values up to 2^40 ns (18 minutes).
const BUCKETS: usize = ((40 - SUB_BITS as usize) + 1) * SUB as usize;

/// Counts of nanosecond latencies.
///
/// # Examples
///
/// ```
/// use devlife::bench::hist::Hist;
///
/// let mut h = Hist::default();
/// for ns in [1_000, 2_000, 3_000, 100_000] {
///     h.record(ns);
/// }
/// assert_eq!(h.count(), 4);
/// let p50 = h.percentile(50.0);
/// assert!((1_900..=2_100).contains(&p50), "{p50}");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hist {
    counts: Vec<u64>,
}

impl Default for Hist {
    fn default() -> Self {
        Hist { counts: vec![0; BUCKETS] }
    }
}

/// The bucket of `v`.
fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (v >> shift) & (SUB - 1);
    (((shift + 1) as u64 * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The middle of bucket `i`'s range.
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let low = (SUB + i % SUB) << shift;
    low + (1u64 << shift) / 2
}

impl Hist {
    /// Counts one latency of `ns` nanoseconds.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// How many latencies were counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `p`th percentile (0..=100), in nanoseconds (0 if empty).
    pub fn percentile(&self, p: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value(i);
            }
        }
        value(BUCKETS - 1)
    }

    /// The non-empty buckets as `index:count` pairs separated by commas
    /// (how a client process hands its histogram over).
    pub fn encode(&self) -> String {
        let mut s = String::new();
        for (i, c) in self.counts.iter().enumerate().filter(|(_, c)| **c != 0) {
            if !s.is_empty() {
                s.push(',');
            }
            s.push_str(&format!("{i}:{c}"));
        }
        s
    }

    /// The inverse of [`encode`](Self::encode); `None` on malformed text.
    pub fn decode(s: &str) -> Option<Hist> {
        let mut h = Hist::default();
        for pair in s.split(',').filter(|p| !p.is_empty()) {
            let (i, c) = pair.split_once(':')?;
            let i: usize = i.parse().ok()?;
            *h.counts.get_mut(i)? += c.parse::<u64>().ok()?;
        }
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_a_sixteenth() {
        for v in (1..2_000_000u64).step_by(7919).chain([1 << 39, 15, 16, 17, 31, 32, 33]) {
            let m = value(index(v));
            let err = m.abs_diff(v) as f64 / v as f64;
            assert!(err <= 1.0 / 16.0, "{v} -> {m}");
        }
    }

    #[test]
    fn percentiles_and_codec() {
        let mut h = Hist::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p99 = h.percentile(99.0) as f64;
        assert!((p99 / 990_000.0 - 1.0).abs() < 0.07, "{p99}");
        assert_eq!(Hist::decode(&h.encode()), Some(h.clone()));
        assert_eq!(Hist::decode("1:x"), None);
        assert_eq!(Hist::decode("999999:1"), None);
        let mut m = h.clone();
        m.merge(&h);
        assert_eq!(m.count(), 2000);
    }
}
