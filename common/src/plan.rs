//! Splitting a video's frames into Segment tasks. Plain functions so the
//! coordinator's planning can be tested without media or a network.

use std::ops::Range;

/// Contiguous frame ranges covering `0..frame_count` exactly once, each about
/// `segment_seconds` long, starting at a source keyframe where one lies within a
/// quarter segment of the ideal boundary (cheap seeks), else at the exact frame.
pub fn plan_segments(
    frame_count: u64,
    fps: f64,
    keyframes: &[u64],
    segment_seconds: f64,
) -> Vec<Range<u64>> {
    if frame_count == 0 {
        return Vec::new();
    }
    let target =
        if fps.is_finite() && fps > 0.0 && segment_seconds.is_finite() && segment_seconds > 0.0 {
            ((segment_seconds * fps).round() as u64).max(1)
        } else {
            frame_count
        };
    let slack = target / 4;
    // Each segment looks only at the keyframes inside its window (a binary search), not at
    // all of them: planning 1,000 segments of a 25,000-frame job on the coordinator's actor
    // thread scanned every keyframe once per segment.
    let keyframes = in_order(keyframes);
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        // Saturating: a huge segment length (1e300 s) must plan one segment, not overflow
        // (found by coordinator/src/fuzz_props.rs).
        let ideal = start.saturating_add(target);
        if ideal.saturating_add(slack) >= frame_count {
            out.push(start..frame_count);
            return out;
        }
        let lo = ideal.saturating_sub(slack).max(start + 1);
        let hi = ideal.saturating_add(slack);
        let snapped = nearest_keyframe(&keyframes, lo, hi, ideal).unwrap_or(ideal);
        out.push(start..snapped);
        start = snapped;
    }
}

/// The keyframes in order: as probes report them (borrowed), else a sorted copy.
fn in_order(keyframes: &[u64]) -> std::borrow::Cow<'_, [u64]> {
    if keyframes.is_sorted() {
        std::borrow::Cow::Borrowed(keyframes)
    } else {
        let mut k = keyframes.to_vec();
        k.sort_unstable();
        std::borrow::Cow::Owned(k)
    }
}

/// The keyframe in `lo..=hi` nearest to `target` (a binary search in sorted keyframes); on a
/// tie the earlier one, as a scan in order finds.
fn nearest_keyframe(sorted: &[u64], lo: u64, hi: u64, target: u64) -> Option<u64> {
    let from = sorted.partition_point(|k| *k < lo);
    let to = sorted.partition_point(|k| *k <= hi).max(from);
    sorted[from..to]
        .iter()
        .copied()
        .min_by_key(|k| k.abs_diff(target))
}

/// Where an idle worker's steal splits a running range `from..end` whose owner is at frame
/// `done` (chunks of `k` frames counted from `from`), or None when nothing is worth taking.
/// Near the middle of what is left, so owner and thief finish together (taking all but the
/// owner's next two chunks, as first written, left a chain of two-chunk pieces, each paying a
/// decoder start); on a keyframe within a quarter of the frames left of that point where one
/// lies, so the thief decodes nothing it throws away (at 1280x720 on a GPU node a frame decoded
/// and dropped costs about half a stylized one), else on the owner's nearest chunk boundary.
/// Never before the end of the owner's next chunk (it must hear of the split before it gets
/// there) and never leaving the thief less than one chunk.
pub fn steal_split(from: u64, done: u64, end: u64, k: u64, keyframes: &[u64]) -> Option<u64> {
    let k = k.max(1);
    let done = done.clamp(from, end);
    let lo = from.saturating_add(((done - from) / k + 2).saturating_mul(k));
    let hi = end.checked_sub(k)?;
    if lo > hi {
        return None;
    }
    let left = end - done;
    let target = (done + left / 2).clamp(lo, hi);
    let slack = left / 4;
    let (a, b) = (
        lo.max(target.saturating_sub(slack)),
        hi.min(target.saturating_add(slack)),
    );
    if let Some(kf) = nearest_keyframe(&in_order(keyframes), a, b, target) {
        return Some(kf);
    }
    // The owner's chunk boundary nearest the target: lo is one, so one lies in lo..=hi.
    let boundary = from + (target - from + k / 2) / k * k;
    Some(
        if boundary > hi {
            boundary - k
        } else {
            boundary
        }
        .max(lo),
    )
}

/// The keyframe to seek to before decoding from `frame`: the last keyframe at or before it.
/// A binary search where the keyframes are in order (as probes report them; asked on every
/// lease grant), a scan otherwise.
pub fn keyframe_at_or_before(keyframes: &[u64], frame: u64) -> u64 {
    if keyframes.is_sorted() {
        let n = keyframes.partition_point(|k| *k <= frame);
        return n.checked_sub(1).map_or(0, |i| keyframes[i]);
    }
    keyframes
        .iter()
        .copied()
        .filter(|k| *k <= frame)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_covers(ranges: &[Range<u64>], n: u64) {
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(n));
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert!(ranges.iter().all(|r| r.start < r.end));
    }

    #[test]
    fn exact_split_without_keyframes() {
        let r = plan_segments(100, 25.0, &[0], 1.0);
        assert_covers(&r, 100);
        assert_eq!(r, vec![0..25, 25..50, 50..75, 75..100]);
    }

    #[test]
    fn snaps_to_nearby_keyframes() {
        let r = plan_segments(100, 25.0, &[0, 23, 52, 90], 1.0);
        assert_covers(&r, 100);
        assert_eq!(r, vec![0..23, 23..52, 52..77, 77..100]);
    }

    #[test]
    fn short_tail_is_merged() {
        let r = plan_segments(103, 25.0, &[0], 1.0);
        assert_covers(&r, 103);
        assert_eq!(r.last(), Some(&(75..103)));
    }

    #[test]
    fn degenerate_inputs() {
        assert!(plan_segments(0, 25.0, &[], 1.0).is_empty());
        assert_eq!(plan_segments(10, 0.0, &[], 1.0), vec![0..10]);
        assert_eq!(plan_segments(1, 25.0, &[0], 0.01), vec![0..1]);
        let r = plan_segments(7, 25.0, &[], 0.01);
        assert_covers(&r, 7);
        assert_eq!(r.len(), 7);
    }

    #[test]
    fn every_frame_exactly_once_for_many_shapes() {
        for n in 1..300u64 {
            for seg in [0.04, 0.3, 1.0, 2.5] {
                let kf: Vec<u64> = (0..n).step_by(12).collect();
                assert_covers(&plan_segments(n, 25.0, &kf, seg), n);
            }
        }
    }

    /// The plan as it was written first (every keyframe scanned per segment): the reference
    /// the binary search must agree with.
    fn plan_by_scan(n: u64, fps: f64, keyframes: &[u64], seg: f64) -> Vec<Range<u64>> {
        let target = ((seg * fps).round() as u64).max(1);
        let slack = target / 4;
        let (mut out, mut start) = (Vec::new(), 0u64);
        loop {
            let ideal = start.saturating_add(target);
            if ideal.saturating_add(slack) >= n {
                out.push(start..n);
                return out;
            }
            let lo = ideal.saturating_sub(slack).max(start + 1);
            let hi = ideal.saturating_add(slack);
            let snapped = keyframes
                .iter()
                .copied()
                .filter(|k| (lo..=hi).contains(k))
                .min_by_key(|k| k.abs_diff(ideal))
                .unwrap_or(ideal);
            out.push(start..snapped);
            start = snapped;
        }
    }

    #[test]
    fn a_steal_splits_near_the_middle_of_what_is_left() {
        // 0..600, chunks of 50, owner at 120 (in chunk 2): the earliest split is 200.
        // No keyframe near the middle (360): the nearest chunk boundary, 350.
        assert_eq!(steal_split(0, 120, 600, 50, &[0]), Some(350));
        // A keyframe within a quarter of what is left (120 frames) of the middle wins.
        assert_eq!(steal_split(0, 120, 600, 50, &[0, 250, 430, 590]), Some(430));
        assert_eq!(steal_split(0, 120, 600, 50, &[0, 250, 300, 430]), Some(300));
        // Keyframes before the earliest safe split or in the last chunk are not used.
        assert_eq!(steal_split(0, 120, 600, 50, &[0, 180, 560]), Some(350));
        // The range of a stolen tail: chunks count from its own first frame.
        assert_eq!(steal_split(430, 430, 600, 50, &[0]), Some(530));
        // Too little left: the owner's next chunk and one more for the thief do not fit.
        assert_eq!(steal_split(0, 120, 240, 50, &[0]), None);
        assert_eq!(steal_split(0, 120, 250, 50, &[0]), Some(200));
        // Out-of-order keyframes, a zero chunk size, an owner past the end: no panic.
        assert_eq!(steal_split(0, 120, 600, 50, &[590, 430, 0]), Some(430));
        assert_eq!(steal_split(0, 0, 10, 0, &[]), Some(5));
        assert_eq!(steal_split(0, 900, 600, 50, &[]), None);
    }

    #[test]
    fn steal_splits_are_safe_for_many_shapes() {
        for end in 1..200u64 {
            for k in [1, 3, 7, 25] {
                for done in (0..end).step_by(5) {
                    let kf: Vec<u64> = (0..end).step_by(11).collect();
                    if let Some(s) = steal_split(0, done, end, k, &kf) {
                        let owner_next_chunk_end = (done / k + 2) * k;
                        assert!(
                            s >= owner_next_chunk_end,
                            "end {end} k {k} done {done}: {s}"
                        );
                        assert!(s + k <= end, "end {end} k {k} done {done}: {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_binary_search_plans_what_a_scan_of_every_keyframe_plans() {
        // Deterministic pseudo-random keyframe sets: regular GOPs, scene cuts, ties around
        // the ideal cut, duplicates, and the same sets out of order.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for round in 0..400 {
            let n = 1 + next(3000);
            let mut kf: Vec<u64> = match round % 4 {
                0 => (0..n).step_by(1 + next(60) as usize).collect(),
                1 => (0..next(200)).map(|_| next(n)).collect(),
                2 => (0..n).filter(|_| next(7) == 0).collect(),
                _ => vec![0, n / 2, n / 2, n - 1],
            };
            kf.sort_unstable();
            for seg in [0.04, 0.5, 1.0, 2.0, 7.3] {
                let want = plan_by_scan(n, 25.0, &kf, seg);
                assert_eq!(
                    plan_segments(n, 25.0, &kf, seg),
                    want,
                    "n {n} seg {seg} kf {kf:?}"
                );
                let mut shuffled = kf.clone();
                shuffled.reverse();
                assert_eq!(plan_segments(n, 25.0, &shuffled, seg), want);
            }
            for f in [0, n / 3, n - 1, n + 5] {
                let scan = kf.iter().copied().filter(|k| *k <= f).max().unwrap_or(0);
                assert_eq!(keyframe_at_or_before(&kf, f), scan);
                let mut shuffled = kf.clone();
                shuffled.reverse();
                assert_eq!(keyframe_at_or_before(&shuffled, f), scan);
            }
        }
    }

    #[test]
    fn seek_keyframe() {
        assert_eq!(keyframe_at_or_before(&[0, 25, 50], 49), 25);
        assert_eq!(keyframe_at_or_before(&[0, 25, 50], 50), 50);
        assert_eq!(keyframe_at_or_before(&[], 10), 0);
    }
}
