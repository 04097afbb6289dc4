//! The box bench's histogram survives the trip between processes.

#[allow(dead_code)] // only part of the module is tested
#[path = "../../benches/box/hist.rs"]
mod box_hist;

#[test]
fn box_histogram_survives_the_trip_between_processes() {
    let (mut a, mut b) = (box_hist::Hist::default(), box_hist::Hist::default());
    for v in 1..=5_000u64 {
        a.record(v);
    }
    for v in 5_001..=10_000u64 {
        b.record(v);
    }
    let mut merged = box_hist::Hist::default();
    for h in [&a, &b] {
        let (buckets, max) = h.to_sparse();
        merged.add_sparse(&buckets, max);
    }
    assert_eq!(merged.n, 10_000);
    assert_eq!(merged.max, 10_000);
    let p99 = merged.percentile(99.0);
    assert!((9_900..=10_000).contains(&p99), "p99 {p99}");
    let p50 = merged.percentile(50.0);
    assert!((5_000..=5_160).contains(&p50), "p50 {p50}");
}
