//! This replica's own admissions that can still share a window with the future, on Redis'
//! clock, so that they can be written back after an outage, a flush or a restart; and the
//! clock offset that puts a local admission on Redis' clock.
//!
//! Pure bookkeeping: no I/O and no clock of its own (instants are passed in). Not owned here:
//! when to write back and what Redis does with it (`fallback`, `sync.lua`).

use std::collections::HashMap;

use super::BudgetId;
use super::window::Micros;

/// Admissions by member name. Each keeps its instant (Redis µs), its budgets and the instant
/// after which no window that contains it is still open.
#[derive(Debug, Default)]
pub struct Journal {
    entries: HashMap<String, Entry>,
    /// Sequence number of the last insertion (0: none yet).
    last: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    at: Micros,
    budgets: Vec<BudgetId>,
    until: Micros,
    seq: u64,
}

/// One admission to write back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Unique in the whole fleet: writing it twice is a no-op (`ZADD NX`).
    pub member: String,
    /// Redis µs.
    pub at: Micros,
    pub budgets: Vec<BudgetId>,
}

/// Redis' clock minus the local one (µs). Learned from each answer: `TIME` was read between
/// sending and receiving, so taking the send instant errs towards a later Redis instant for a
/// local admission, which keeps it in its windows a little longer, never shorter.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset: i128,
}

// === impl Journal ===

impl Journal {
    /// Records an admission under the next sequence number. A member recorded again
    /// replaces the earlier entry.
    pub fn insert(&mut self, member: String, at: Micros, budgets: Vec<BudgetId>, until: Micros) {
        self.last += 1;
        let entry = Entry {
            at,
            budgets,
            until,
            seq: self.last,
        };
        self.entries.insert(member, entry);
    }

    /// Forgets an admission given back.
    pub fn remove(&mut self, member: &str) {
        self.entries.remove(member);
    }

    /// Forgets admissions whose every window closed before `now` (Redis µs).
    pub fn prune(&mut self, now: Micros) {
        self.entries.retain(|_, e| e.until > now);
    }

    /// Sequence number of the latest insertion.
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Admissions inserted after sequence number `seq` (all of them for 0).
    pub fn since(&self, seq: u64) -> Vec<Admission> {
        self.entries
            .iter()
            .filter(|(_, e)| e.seq > seq)
            .map(|(member, e)| Admission {
                member: member.clone(),
                at: e.at,
                budgets: e.budgets.clone(),
            })
            .collect()
    }

    /// `(budget, instant)` of every admission inserted after `after(budget)` (the sequence
    /// number up to which a fleet-wide count of that budget already includes this replica's
    /// admissions; `None`: none does).
    pub fn newer_than(&self, after: impl Fn(BudgetId) -> Option<u64>) -> Vec<(BudgetId, Micros)> {
        let mut out = Vec::new();
        for e in self.entries.values() {
            for &b in &e.budgets {
                if after(b).is_none_or(|s| e.seq > s) {
                    out.push((b, e.at));
                }
            }
        }
        out
    }
}

// === impl Clock ===

impl Clock {
    /// An offset from two readings of the same instant: Redis µs and local µs.
    pub fn new(redis: Micros, local: Micros) -> Self {
        Self {
            offset: i128::from(redis) - i128::from(local),
        }
    }

    /// A local instant on Redis' clock.
    pub fn to_redis(self, local: Micros) -> Micros {
        clamp(i128::from(local) + self.offset)
    }

    /// A Redis instant on the local clock (0 for instants before the local clock started).
    pub fn to_local(self, redis: Micros) -> Micros {
        clamp(i128::from(redis) - self.offset)
    }
}

fn clamp(v: i128) -> Micros {
    Micros::try_from(v.max(0)).unwrap_or(Micros::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_is_in_a_window_and_orders_by_insertion() {
        let mut j = Journal::default();
        j.insert("a".into(), 100, vec![0, 2], 1_100);
        j.insert("b".into(), 200, vec![1], 1_200);
        j.insert("c".into(), 300, vec![2], 1_300);
        j.remove("b");
        assert_eq!(j.len(), 2);
        let mut members: Vec<String> = j.since(1).into_iter().map(|a| a.member).collect();
        members.sort();
        assert_eq!(members, ["c"], "only what came after seq 1");
        // Budget 2's count includes up to seq 1: only c is newer for it; budget 0 has no count.
        let mut newer = j.newer_than(|b| (b == 2).then_some(1));
        newer.sort_unstable();
        assert_eq!(newer, [(0, 100), (2, 300)]);
        j.prune(1_100);
        assert_eq!(j.since(0).len(), 1, "a's windows closed at 1,100");
    }

    #[test]
    fn clock_round_trips() {
        let c = Clock::new(1_700_000_000_000_000, 5_000);
        assert_eq!(c.to_redis(6_000), 1_700_000_000_001_000);
        assert_eq!(c.to_local(1_700_000_000_001_000), 6_000);
        assert_eq!(c.to_local(1), 0, "before the local clock started");
    }
}
