//! Frame buffers recycled within one pipeline. A 1280x720 RGB frame is 2.7 MB, and each
//! frame used to take three fresh allocations (decoded, stylized, copied for the encoder),
//! each freed on another thread: glibc maps, faults in and unmaps blocks that size, and with
//! several pipelines per process they all contend for its arenas and its memory-map lock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Idle buffers a pool keeps at most: in steady state a pipeline gives back a buffer for
/// every one it takes, so only the ones in flight are ever out.
const KEEP: usize = 8;

/// The idle frame buffers of one pipeline, shared by its decode, inference and encode threads.
#[derive(Clone, Debug, Default)]
pub struct FramePool {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
    made: Arc<AtomicUsize>,
}

impl FramePool {
    /// An empty buffer with room for `len` bytes: an idle one when one is big enough.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut v) = idle.pop() {
            if v.capacity() >= len {
                v.clear();
                return v;
            }
        }
        drop(idle);
        self.made.fetch_add(1, Ordering::Relaxed);
        Vec::with_capacity(len)
    }

    /// Hands a buffer back for reuse (freed instead when the pool already keeps enough).
    pub fn give(&self, v: Vec<u8>) {
        if v.capacity() == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < KEEP {
            idle.push(v);
        }
    }

    /// How many buffers `take` had to allocate (tests).
    pub fn made(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }

    /// How many buffers wait for reuse (tests).
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A frame's pixels lent to GStreamer: back to the pool when the encoder frees the buffer.
pub struct Lent {
    data: Vec<u8>,
    pool: FramePool,
}

impl Lent {
    pub fn new(data: Vec<u8>, pool: FramePool) -> Self {
        Self { data, pool }
    }
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl AsMut<[u8]> for Lent {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::{FramePool, Lent, KEEP};

    #[test]
    fn buffers_come_back_and_are_reused_up_to_a_bound() {
        let pool = FramePool::default();
        let a = pool.take(1000);
        assert!(a.capacity() >= 1000 && a.is_empty());
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(900);
        assert_eq!(b.as_ptr(), ptr, "the same allocation again");
        // Too small for the next request: freed, a new one made.
        pool.give(b);
        let c = pool.take(5000);
        assert!(c.capacity() >= 5000);
        assert_eq!(pool.idle(), 0);
        // A lent buffer comes back when GStreamer (here: drop) lets go of it.
        let lent = Lent::new(c, pool.clone());
        drop(lent);
        assert_eq!(pool.idle(), 1);
        for _ in 0..3 * KEEP {
            pool.give(Vec::with_capacity(10));
        }
        assert_eq!(pool.idle(), KEEP);
    }
}
