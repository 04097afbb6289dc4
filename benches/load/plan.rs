//! A fanout run as `SUBSxRATE` (`--plan 1000x20,10000x100`). Leaf module (std only).

/// One fanout run: this many subscribers, this many events/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SubRate {
    pub subs: usize,
    pub rate: f64,
}

/// Parses `SUBSxRATE` (either case of `x`); both must be > 0.
pub fn parse_sub_rate(s: &str) -> Result<SubRate, String> {
    let (n, r) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?}: expected SUBSxRATE, e.g. 1000x20"))?;
    let subs = n
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: subscribers: {e}"))?;
    let rate: f64 = r.trim().parse().map_err(|e| format!("{s:?}: rate: {e}"))?;
    if subs == 0 || rate.is_nan() || rate <= 0.0 {
        return Err(format!("{s:?}: subscribers and rate must be > 0"));
    }
    Ok(SubRate { subs, rate })
}
