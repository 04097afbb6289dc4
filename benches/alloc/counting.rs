//! A global allocator that counts allocations (and bytes) by the role of
//! the thread making them. A thread's role is a `const` thread-local, so
//! reading it never allocates; threads the bench did not mark (redix's
//! own) count as `Server`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::Sub;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// redix's threads (reactor, job engine…): the default.
    Server = 0,
    /// The thread calling `Hub::publish`, while it does.
    Publisher = 1,
    /// The bench's own work (clients, bookkeeping): not part of the path.
    Bench = 2,
}

thread_local! {
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

static ALLOCS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static BYTES: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

pub fn set_role(role: Role) {
    ROLE.with(|r| r.set(role as u8));
}

fn count(size: usize) {
    let role = ROLE.try_with(Cell::get).unwrap_or(0) as usize;
    ALLOCS[role].fetch_add(1, Ordering::Relaxed);
    BYTES[role].fetch_add(size as u64, Ordering::Relaxed);
}

/// Allocations (new blocks, and reallocations) and bytes asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub allocs: u64,
    pub bytes: u64,
}

impl Sub for Snapshot {
    type Output = Snapshot;
    fn sub(self, o: Snapshot) -> Snapshot {
        Snapshot {
            allocs: self.allocs - o.allocs,
            bytes: self.bytes - o.bytes,
        }
    }
}

pub fn snapshot(role: Role) -> Snapshot {
    Snapshot {
        allocs: ALLOCS[role as usize].load(Ordering::Relaxed),
        bytes: BYTES[role as usize].load(Ordering::Relaxed),
    }
}

pub struct Counting;

// SAFETY: every call is passed to `System` unchanged; counting only
// touches atomics and a const thread-local (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        System.realloc(ptr, layout, new_size)
    }
}
