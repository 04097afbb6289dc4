//! What the kernel holds for the connections: `/proc/net/sockstat` (TCP sockets in use,
//! orphans, TIME_WAIT, and `mem`, the pages charged to TCP socket buffers), `/proc/meminfo`
//! (slab: the socket structures themselves), `/proc/loadavg`. Leaf module (std).

use std::fs;

#[derive(Clone, Copy, Default, Debug)]
pub struct Kernel {
    pub tcp_inuse: u64,
    pub tcp_tw: u64,
    /// pages (4 KiB) of TCP socket buffers
    pub tcp_mem_pages: u64,
    /// KiB of slab (socket, inode, dentry, file structures live there)
    pub slab_kib: u64,
    pub avail_kib: u64,
}

fn field(text: &str, line_prefix: &str, key: &str) -> u64 {
    let Some(line) = text.lines().find(|l| l.starts_with(line_prefix)) else {
        return 0;
    };
    let mut w = line.split_whitespace();
    while let Some(k) = w.next() {
        if k == key {
            return w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    0
}

pub fn kernel() -> Kernel {
    let ss = fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let mi = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Kernel {
        tcp_inuse: field(&ss, "TCP:", "inuse"),
        tcp_tw: field(&ss, "TCP:", "tw"),
        tcp_mem_pages: field(&ss, "TCP:", "mem"),
        slab_kib: field(&mi, "Slab:", "Slab:"),
        avail_kib: field(&mi, "MemAvailable:", "MemAvailable:"),
    }
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
