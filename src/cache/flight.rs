//! Coalescing (SPEC §11): of concurrent identical requests one, the leader, calls upstream;
//! the others follow and get its answer.
//!
//! A leader that fails, or whose caller goes away, lands nothing: each follower then joins
//! again, and the first of them leads. A request never follows the leader of a lane below
//! its own (a smaller share of every budget, SPEC §12): that leader may wait for a slot
//! the higher lane has at once, so the request calls upstream on its own instead. No follower waits on a leader that is gone, since a
//! dropped [`Lead`] lands `Failed`; how long a follower waits at all is its own deadline,
//! which the caller of [`Follow::wait`] puts around it.
//!
//! The map of flights is a `Mutex<HashMap>` (foldhash, seeded per process: keys are callers'
//! paths): it is touched twice per cacheable miss (join, land), never on a hit or an
//! uncached route, and each touch is a hash and an insert or remove. Measured against
//! dashmap (`CACHE=1 CACHE_TTL=0s NGINX=0 bench/instructions.sh`, every request a flight's
//! leader): 48,292 instructions per miss with this map, 48,450 with a `DashMap` (its
//! `entry` takes an owned key); the lock is held for ~100 instructions of a miss that also
//! makes an upstream call. Per-key locking (dashmap's shards) would pay off only if misses
//! of many keys came in at the rate hits do, so the map stays std's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::{Entry, Key};

/// The requests in flight upstream, one per key, with their leader's share of every budget
/// (its lane's, in thousandths: `budget::Share::permille`).
#[derive(Debug, Default)]
pub struct Flights {
    flying: Mutex<HashMap<Key, (watch::Sender<Landing>, u16), foldhash::fast::RandomState>>,
}

/// What a flight ends with, as its followers see it.
#[derive(Debug, Clone)]
enum Landing {
    Flying,
    /// The answer, for every follower (stored or not).
    Answered(Arc<Entry>),
    /// The leader's answer cannot be shared (e.g. a body too large to hold): each follower
    /// calls upstream on its own.
    Declined,
    /// The leader failed or was cancelled: join again.
    Failed,
    /// The upstream could not answer (a 429, a 5xx after retries, no answer); the leader's
    /// caller got the last good answer instead, or the failure: a follower that has a last
    /// good answer answers with it at once, the others join again (and after a second such
    /// flight call upstream on their own).
    Unavailable,
}

/// A request's part in a flight.
#[derive(Debug)]
pub enum Role {
    /// Call upstream, then [`Lead::land`] (or [`Lead::decline`]; dropping it fails it).
    Leader(Lead),
    /// Wait for the leader's answer.
    Follower(Follow),
    /// Call upstream without a flight: the one under way is a lower lane's.
    Alone,
}

/// The leader's side: lands the flight once.
#[derive(Debug)]
pub struct Lead {
    flights: Arc<Flights>,
    key: Key,
    landing: watch::Sender<Landing>,
}

/// A follower's side.
#[derive(Debug)]
pub struct Follow {
    landing: watch::Receiver<Landing>,
}

/// How a follower's wait ended.
#[derive(Debug)]
pub enum Waited {
    Answered(Arc<Entry>),
    /// Call upstream alone, without a flight.
    OnYourOwn,
    /// The leader is gone: join again.
    LeaderLost,
    /// The upstream could not answer: the last good answer, if the follower has one; else
    /// join again.
    Unavailable,
}

impl Flights {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Leads the flight for `key` when none flies, else follows it, unless its leader's
    /// share of every budget is smaller than `share` (a lower lane's; in thousandths):
    /// then alone.
    pub fn join(self: &Arc<Self>, key: &Key, share: u16) -> Role {
        let mut flying = self.flying.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((landing, leader)) = flying.get(key) {
            if *leader < share {
                return Role::Alone;
            }
            return Role::Follower(Follow {
                landing: landing.subscribe(),
            });
        }
        let (landing, _) = watch::channel(Landing::Flying);
        flying.insert(key.clone(), (landing.clone(), share));
        Role::Leader(Lead {
            flights: self.clone(),
            key: key.clone(),
            landing,
        })
    }

    /// Flights in the air (for tests and `/status`).
    pub fn flying(&self) -> usize {
        self.flying
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Lead {
    /// Hands `answer` to every follower. Store it before landing, when it is to be stored:
    /// a request that comes once the flight is gone finds it there.
    pub fn land(self, answer: Arc<Entry>) {
        self.end(Landing::Answered(answer));
    }

    /// Sends every follower upstream on its own.
    pub fn decline(self) {
        self.end(Landing::Declined);
    }

    /// Tells the followers the upstream could not answer (the leader answered stale, or
    /// with the failure).
    pub fn unavailable(self) {
        self.end(Landing::Unavailable);
    }

    fn end(self, landing: Landing) {
        // Out of the map first: whoever comes next starts a new flight or finds the store.
        self.leave();
        self.landing.send_replace(landing);
        // `Drop` sees the landing and sends nothing more.
    }

    fn leave(&self) {
        let mut flying = self
            .flights
            .flying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // One lookup: the flight under the key is this one, but for a leader whose flight
        // a successor replaced (never so far: a flight leaves the map only here).
        if let Some(flight) = flying.remove(&self.key)
            && !flight.0.same_channel(&self.landing)
        {
            flying.insert(self.key.clone(), flight);
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if matches!(*self.landing.borrow(), Landing::Flying) {
            self.leave();
            self.landing.send_replace(Landing::Failed);
        }
    }
}

impl Follow {
    /// Waits for the leader's landing.
    pub async fn wait(mut self) -> Waited {
        let landed = self
            .landing
            .wait_for(|landing| !matches!(landing, Landing::Flying))
            .await
            .map(|landing| landing.clone());
        match landed {
            Ok(Landing::Answered(answer)) => Waited::Answered(answer),
            Ok(Landing::Declined) => Waited::OnYourOwn,
            Ok(Landing::Unavailable) => Waited::Unavailable,
            // A sender gone without a landing cannot happen (`Drop` lands `Failed`); if it
            // did, joining again is the safe answer.
            Ok(Landing::Failed | Landing::Flying) | Err(_) => Waited::LeaderLost,
        }
    }
}
