//! How many threads framewise's own CPU ops (conv_op.rs, narrow_conv_op.rs) split a run over:
//! ONNX Runtime's thread pool is not open to custom ops, so a session of N intra-op threads
//! would otherwise run its other ops on N cores and these on one. Set from the session's
//! threads when a CPU model loads (the last load wins: a process's CPU pipelines share one
//! setting).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Sets the threads the ops use (at least 1).
pub fn set(n: usize) {
    THREADS.store(n.max(1), Ordering::Relaxed);
}

/// The threads the ops use.
pub fn get() -> usize {
    THREADS.load(Ordering::Relaxed)
}

/// Runs `f` on bands of `0..rows`, one per thread (the caller's thread takes the first), and
/// returns when all have run.
pub fn bands(rows: usize, f: impl Fn(Range<usize>) + Sync) {
    let t = get().min(rows).max(1);
    if t == 1 {
        return f(0..rows);
    }
    let per = rows.div_ceil(t);
    std::thread::scope(|s| {
        let f = &f;
        for i in 1..t {
            let band = (i * per).min(rows)..((i + 1) * per).min(rows);
            if !band.is_empty() {
                s.spawn(move || f(band));
            }
        }
        f(0..per.min(rows));
    });
}

/// An output tensor's values that bands of rows write at once, each its own rows.
#[derive(Clone, Copy)]
pub struct Out {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the bands write disjoint rows of one buffer that outlives the scope (`row`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The values of `y`, for bands to write.
    pub fn new(y: &mut [f32]) -> Self {
        Self {
            ptr: y.as_mut_ptr(),
            len: y.len(),
        }
    }

    /// Values `at..at + n`.
    ///
    /// # Safety
    /// No other band reads or writes them meanwhile, and the buffer outlives the result.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn row(&self, at: usize, n: usize) -> &mut [f32] {
        assert!(at + n <= self.len, "row {at}+{n} past {}", self.len);
        // SAFETY: inside the buffer (checked); disjoint from other bands' rows as promised.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), n) }
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first value's address, for vector stores inside rows a band owns.
    pub fn ptr(&self) -> *mut f32 {
        self.ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn bands_cover_every_row_once() {
        for (threads, rows) in [(1, 7), (2, 7), (3, 2), (4, 9), (8, 1)] {
            set(threads);
            let seen = Mutex::new(vec![0u8; rows]);
            bands(rows, |b| {
                for r in b {
                    seen.lock().unwrap()[r] += 1;
                }
            });
            assert!(
                seen.into_inner().unwrap().iter().all(|&n| n == 1),
                "{threads} {rows}"
            );
        }
        set(1);
    }
}
