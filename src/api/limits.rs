//! What the API caps besides connections: how often a sync may be asked for
//! ([`RefreshGate`]) and how many event streams stay open, per key and in all
//! ([`StreamSlots`]). Each open stream holds its version's body; a reader that trickles pins
//! it, so the caps bound that memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::auth::Caller;
use super::error::ApiError;
use crate::config::ServerLimits;

/// Lets one sync through per minimum interval, whoever asks (`POST /refresh`, `refresh=true`).
#[derive(Debug)]
pub struct RefreshGate {
    interval: Duration,
    last: Mutex<Option<Instant>>,
}

impl RefreshGate {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
        }
    }

    /// Takes this interval's turn, or says how long until the next one. The turn is given back
    /// when the returned [`Turn`] is dropped without [`Turn::used`] (nothing started).
    pub fn admit(&self) -> Result<Turn<'_>, ApiError> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = *last {
            let since = now.duration_since(at);
            if since < self.interval {
                return Err(ApiError::RefreshTooSoon {
                    interval: self.interval,
                    retry_after: self.interval - since,
                });
            }
        }
        let before = last.replace(now);
        Ok(Turn {
            gate: self,
            before: Some(before),
        })
    }
}

/// A turn taken at the [`RefreshGate`]; given back unless a sync started.
#[derive(Debug)]
pub struct Turn<'a> {
    gate: &'a RefreshGate,
    /// What the gate held before, to put back; `None` once used.
    before: Option<Option<Instant>>,
}

impl Turn<'_> {
    /// A sync started: the turn is spent.
    pub fn used(mut self) {
        self.before = None;
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(before) = self.before.take() {
            *self.gate.last.lock().unwrap_or_else(|e| e.into_inner()) = before;
        }
    }
}

/// Seconds a refused stream is told to wait before asking again.
pub const STREAM_RETRY_AFTER_SECONDS: u64 = 5;

/// Counts open event streams, per key (by its place in the key ring) and in all.
#[derive(Debug)]
pub struct StreamSlots {
    per_key: usize,
    total: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    all: usize,
    by_key: HashMap<usize, usize>,
}

impl StreamSlots {
    pub fn new(limits: &ServerLimits) -> Self {
        Self {
            per_key: limits.max_streams_per_key,
            total: limits.max_streams,
            open: Mutex::default(),
        }
    }

    /// A slot for one more stream of `key`, freed when dropped; `429` when the key has its
    /// share open, `503` when the server has.
    pub fn acquire(self: &Arc<Self>, key: usize) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = open.by_key.get(&key).copied().unwrap_or(0);
        if mine >= self.per_key {
            return Err(ApiError::TooManyStreams(self.per_key));
        }
        if open.all >= self.total {
            return Err(ApiError::ServerBusy(
                "The server has as many event streams open as it allows (MAX_STREAMS)",
            ));
        }
        open.all += 1;
        *open.by_key.entry(key).or_default() += 1;
        Ok(StreamSlot {
            slots: Arc::clone(self),
            key,
        })
    }

    /// A slot for a stream of `caller` (whose key was checked before the handler ran).
    pub fn for_caller(self: &Arc<Self>, caller: Option<&Caller>) -> Result<StreamSlot, ApiError> {
        self.acquire(caller.map_or(usize::MAX, |c| c.key))
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).all
    }
}

/// One open stream's place; dropped with the stream.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    key: usize,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.all -= 1;
        if let Some(n) = open.by_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_within_the_interval_is_told_when_to_come_back() {
        let gate = RefreshGate::new(Duration::from_secs(60));
        // A turn that started nothing is given back.
        drop(gate.admit().unwrap());
        gate.admit().unwrap().used();
        match gate.admit() {
            Err(ApiError::RefreshTooSoon { retry_after, .. }) => {
                assert!(retry_after > Duration::from_secs(58), "{retry_after:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(RefreshGate::new(Duration::ZERO).admit().is_ok());
    }

    #[test]
    fn streams_are_capped_per_key_and_in_all_and_freed_when_dropped() {
        let slots = Arc::new(StreamSlots::new(&ServerLimits {
            max_streams: 3,
            max_streams_per_key: 2,
            ..ServerLimits::default()
        }));
        let a1 = slots.acquire(0).unwrap();
        let _a2 = slots.acquire(0).unwrap();
        assert!(matches!(slots.acquire(0), Err(ApiError::TooManyStreams(2))));
        let _b1 = slots.acquire(1).unwrap();
        assert!(matches!(slots.acquire(1), Err(ApiError::ServerBusy(_))));
        drop(a1);
        assert_eq!(slots.open(), 2);
        assert!(slots.acquire(1).is_ok());
    }
}
