//! Latency histograms and the per-thread tally that feeds them.
//!
//! The histogram is log-linear: 32 sub-buckets per power of two (≤ 3.2 % bucket width), in
//! µs, so a reported percentile is at most 3 % above the true one. A `Tally` belongs to one
//! generator thread; it counts deliveries (stale ones apart) and is flushed to the shared
//! counters once per loop iteration. Leaf module (std only).

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const NBUCKETS: usize = 64 * SUB as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    pub n: u64,
    pub sum: u128,
    pub max: u64,
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; NBUCKETS],
            n: 0,
            sum: 0,
            max: 0,
        }
    }
    #[inline]
    pub fn index(v: u64) -> usize {
        if v < 2 * SUB {
            v as usize
        } else {
            let msb = 63 - v.leading_zeros();
            let e = msb - SUB_BITS;
            ((e as u64 * SUB + (v >> e)) as usize).min(NBUCKETS - 1)
        }
    }
    /// Highest value that falls into bucket `i`.
    pub fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            i
        } else {
            let e = i / SUB - 1;
            let top = i % SUB + SUB;
            ((top + 1) << e) - 1
        }
    }
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.n += 1;
        self.sum += v as u128;
        if v > self.max {
            self.max = v;
        }
    }
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.sum += o.sum;
        self.max = self.max.max(o.max);
    }
    pub fn percentile(&self, p: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let target = ((p / 100.0) * self.n as f64).ceil().max(1.0) as u64;
        let mut c = 0;
        for (i, &k) in self.counts.iter().enumerate() {
            c += k;
            if c >= target {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }
}

/// One generator thread's counters, flushed to the shared ones once per loop iteration.
pub struct Tally {
    pub hist: Histogram,
    /// connect() → ready, per successful attempt, µs
    pub setup: Histogram,
    /// latency per node when there are several (empty for one server)
    pub node_hist: Vec<Histogram>,
    /// the node of the connection being read
    pub node: usize,
    pub events: u64,
    pub stale: u64,
    pub bytes: u64,
    pub last_recv: u64,
    pub pub_start: u64,
    pub now_ns: u64,
    /// ns per unit of a delivery's `"t"`: 1 for the bench's events (ns), 1,000,000 for
    /// market trades (ms)
    pub t_unit_ns: u64,
}

impl Tally {
    pub fn new(nodes: usize, pub_start: u64, now_ns: u64) -> Tally {
        Tally {
            hist: Histogram::new(),
            setup: Histogram::new(),
            node_hist: if nodes > 1 {
                vec![Histogram::new(); nodes]
            } else {
                vec![]
            },
            node: 0,
            events: 0,
            stale: 0,
            bytes: 0,
            last_recv: 0,
            pub_start,
            now_ns,
            t_unit_ns: 1,
        }
    }

    #[inline]
    pub fn delivery(&mut self, t: u64) {
        let t = t.saturating_mul(self.t_unit_ns);
        if t < self.pub_start {
            self.stale += 1;
        } else {
            self.events += 1;
            let us = self.now_ns.saturating_sub(t) / 1000;
            self.hist.record(us);
            if let Some(h) = self.node_hist.get_mut(self.node) {
                h.record(us);
            }
            self.last_recv = self.now_ns;
        }
    }

    pub fn into_hists(self) -> Hists {
        Hists {
            lat: self.hist,
            setup: self.setup,
            node_lat: self.node_hist,
        }
    }
}

/// What a set of connections measured: publish→receive latency (all, and per node when there
/// are several) and connect→ready.
pub struct Hists {
    pub lat: Histogram,
    pub setup: Histogram,
    pub node_lat: Vec<Histogram>,
}

impl Hists {
    pub fn merge(&mut self, o: &Hists) {
        self.lat.merge(&o.lat);
        self.setup.merge(&o.setup);
        if self.node_lat.len() < o.node_lat.len() {
            self.node_lat.resize(o.node_lat.len(), Histogram::new());
        }
        for (a, b) in self.node_lat.iter_mut().zip(&o.node_lat) {
            a.merge(b);
        }
    }
}
