//! A latency histogram in µs that crosses process boundaries: log-linear (32 sub-buckets per
//! power of two, so a percentile is at most 3 % above the true value, the scheme of the load
//! bench's), sent from a generator to the bench as its non-empty buckets. Leaf module (std).

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const NBUCKETS: usize = 64 * SUB as usize;

#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    pub n: u64,
    pub max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            counts: vec![0; NBUCKETS],
            n: 0,
            max: 0,
        }
    }
}

impl Hist {
    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            v as usize
        } else {
            let msb = 63 - v.leading_zeros();
            let e = msb - SUB_BITS;
            ((e as u64 * SUB + (v >> e)) as usize).min(NBUCKETS - 1)
        }
    }

    /// The highest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            i
        } else {
            let e = i / SUB - 1;
            let m = i % SUB + SUB;
            ((m + 1) << e) - 1
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    /// The non-empty buckets as `[index, count]` pairs, and the maximum.
    pub fn to_sparse(&self) -> (Vec<[u64; 2]>, u64) {
        let b = self.counts.iter().enumerate().filter(|(_, &c)| c > 0);
        (b.map(|(i, &c)| [i as u64, c]).collect(), self.max)
    }

    pub fn add_sparse(&mut self, buckets: &[[u64; 2]], max: u64) {
        for [i, c] in buckets {
            if let Some(slot) = self.counts.get_mut(*i as usize) {
                *slot += c;
                self.n += c;
            }
        }
        self.max = self.max.max(max);
    }

    /// The `p`-th percentile (0–100): the upper end of its bucket, at most the maximum.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
}
