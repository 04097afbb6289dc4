//! Jobs in flight per client (`limits.jobs_in_flight`), counted by the
//! engine: it alone knows when a request creates a job (a summarize that
//! joins the job in flight for its URL, or is answered from the cache,
//! creates none) and when the job ends. A client is the `owner` number the
//! API put in the request (an API key or a client IP, see
//! `limits::ClientKey::owner_id`); owner 0 is nobody and never counted.
//!
//! Bounded: an entry lives only while its count is above zero, so there
//! are never more entries than jobs in flight (`jobs.max_jobs`).

use std::collections::HashMap;

use super::Reply;

/// The `Retry-After` of a refusal: a job runs for seconds, and the
/// client's own next `done` tells it sooner than any guess.
pub const RETRY_AFTER_S: u64 = 5;

/// Owner → jobs in flight.
#[derive(Debug, Default)]
pub struct InFlight {
    counts: HashMap<u64, u32>,
}

impl InFlight {
    /// May `owner` create another job under `cap` (0: no cap)? The 429
    /// to answer when not.
    pub fn admit(&self, owner: u64, cap: u32) -> Result<(), Reply> {
        let held = self.counts.get(&owner).copied().unwrap_or(0);
        if owner == 0 || cap == 0 || held < cap {
            return Ok(());
        }
        Err(Reply::Refused {
            status: 429,
            code: "too_many_jobs",
            message: format!(
                "this client has {held} jobs in flight, the most limits.jobs_in_flight allows; submit more as they end"
            ),
            retry_after_s: RETRY_AFTER_S,
        })
    }

    /// Counts a job `owner` created. Every owner but 0 is counted, cap or
    /// not, so a cap set by a reload finds the true counts.
    pub fn add(&mut self, owner: u64) {
        if owner != 0 {
            *self.counts.entry(owner).or_insert(0) += 1;
        }
    }

    /// One of `owner`'s jobs ended.
    pub fn release(&mut self, owner: u64) {
        if let Some(n) = self.counts.get_mut(&owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&owner);
            }
        }
    }

    /// Owners with a job in flight.
    pub fn owners(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_owner_up_to_the_cap_and_forgets_at_zero() {
        let mut f = InFlight::default();
        f.add(7);
        f.add(7);
        f.add(8);
        let refused = f.admit(7, 2);
        assert!(
            matches!(
                refused,
                Err(Reply::Refused {
                    status: 429,
                    code: "too_many_jobs",
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(f.admit(8, 2).is_ok(), "per owner");
        assert!(
            f.admit(7, 3).is_ok() && f.admit(7, 0).is_ok(),
            "a higher cap, none"
        );
        f.release(7);
        assert!(f.admit(7, 2).is_ok(), "a job ended");
        f.release(7);
        f.release(8);
        f.release(8);
        assert_eq!(f.owners(), 0, "no entry at zero");
        f.add(0);
        assert_eq!(f.owners(), 0, "owner 0 is nobody");
        assert!(f.admit(0, 1).is_ok());
    }
}
