//! Number formatting and table headers for the text output. Leaf module (std only).

/// `1234567.8` → `"1,234,568"`.
pub fn thousands(v: f64) -> String {
    let neg = v < 0.0;
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

/// Microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// `v` rounded to `d` decimals (for the JSON lines).
pub fn round(v: f64, d: i32) -> f64 {
    let m = 10f64.powi(d);
    (v * m).round() / m
}

/// A table header: width < 0 aligns left, 0 leaves the cell as it is; cells are
/// separated by one space.
pub fn header(cols: &[(&str, i32)]) -> String {
    let mut out = String::new();
    for (i, (name, w)) in cols.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let width = w.unsigned_abs() as usize;
        let pad = " ".repeat(width.saturating_sub(name.chars().count()));
        if *w < 0 {
            out.push_str(name);
            out.push_str(&pad);
        } else {
            out.push_str(&pad);
            out.push_str(name);
        }
    }
    out
}
