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

/// The keyframes in order: as probes report them (borrowed), else a sorted copy. Callers that
/// split many ranges of one job take it once and use `steal_split_sorted`.
pub fn in_order(keyframes: &[u64]) -> std::borrow::Cow<'_, [u64]> {
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

/// What a frame decoded from the keyframe before a stolen range, only to be dropped, costs the
/// thief, in stylized frames (numerator / denominator), before a job has timed any range: on
/// the GPU node about 7 ms against about 15 ms per stylized frame and pipeline (1280x720, 16
/// pipelines; BENCHMARKS.md, session 9).
pub const LEAD_IN_COST: (u64, u64) = (1, 2);

/// A dropped frame's decode, in microseconds, against which `lead_in_cost` weighs a job's
/// measured time per stylized frame (the GPU node's 7 ms, so the ratio there stays ~1/2).
const DECODE_US: u64 = 7_000;

/// `LEAD_IN_COST` from a job's measured time per stylized frame (ms; None before any range has
/// finished): a decoded frame against a stylized one, from 1/64 up to the fixed 1/2 (so the GPU
/// node, where the half was measured, splits as before however fast it runs). On a 2-core CPU a
/// stylized 640x360 frame takes ~130 ms per worker, and the fixed 1/2 made a decoded frame cost
/// 65 ms: an idle worker found no split of a 100-frame range 150 frames past a keyframe worth
/// it and waited 11.5 s for the last range (BENCHMARKS.md, session 18).
pub fn lead_in_cost(ms_per_frame: Option<f64>) -> (u64, u64) {
    match ms_per_frame {
        Some(ms) if ms.is_finite() && ms > 0.0 => {
            let us = (ms * 1000.0).round() as u64;
            (DECODE_US, us.clamp(2 * DECODE_US, 64 * DECODE_US))
        }
        _ => LEAD_IN_COST,
    }
}

/// A thief's start (decoder, seek to a keyframe, first encoder), in stylized frames: about
/// 0.1 s at about 15 ms per frame on the GPU node.
const START_COST: u64 = 6;

/// Where an idle worker's steal splits a running range `from..end` whose owner is at frame
/// `done` (chunks of `k` frames counted from `from`), or None when no split finishes the range
/// at least a chunk sooner than its owner alone would. The split is the one that finishes
/// soonest, owner and thief working at once: the owner stylizes up to it; the thief starts,
/// decodes from the keyframe at or before it (dropping the frames before it: `LEAD_IN_COST`)
/// and stylizes the rest. So a split lands on a keyframe when that is cheaper than balancing
/// the halves exactly, and a range with no keyframe near is split less evenly or not at all.
/// (As first written the thief took everything past the owner's next two chunks, which on many
/// idle pipelines made a chain of two-chunk pieces, each paying a start and a seek; measured on
/// 4 GPUs, 100-frame pieces waited up to 1.7 s for their first frame.) Only owner chunk
/// boundaries and keyframes are candidates, never before the end of the owner's next chunk (it
/// must hear of the split before it gets there), never leaving the thief less than a chunk.
pub fn steal_split(from: u64, done: u64, end: u64, k: u64, keyframes: &[u64]) -> Option<u64> {
    steal_split_sorted(from, done, end, k, &in_order(keyframes), LEAD_IN_COST)
}

/// `steal_split` with the keyframes already in order (`in_order`), so a scan over a job's
/// leased ranges does not check their order once per range, and a dropped frame's cost
/// `lead_in` (numerator, denominator in stylized frames: `lead_in_cost`).
pub fn steal_split_sorted(
    from: u64,
    done: u64,
    end: u64,
    k: u64,
    kf: &[u64],
    lead_in: (u64, u64),
) -> Option<u64> {
    debug_assert!(kf.is_sorted(), "keyframes out of order");
    let (num, den) = (lead_in.0, lead_in.1.max(1));
    let k = k.max(1);
    let done = done.clamp(from, end);
    let lo = from.saturating_add(((done - from) / k + 2).saturating_mul(k));
    let hi = end.checked_sub(k)?;
    if lo > hi {
        return None;
    }
    let owner = |s: u64| s - done;
    let thief = |s: u64| {
        let lead_in = s - at_or_before(kf, s).min(s);
        (end - s) + lead_in * num / den + START_COST
    };
    // The owner's part grows with the split and the thief's never does (its lead-in restarts
    // at each keyframe), so the best candidates sit either side of where they cross.
    let (mut a, mut b) = (lo, hi + 1);
    while a < b {
        let m = a + (b - a) / 2;
        if owner(m) >= thief(m) {
            b = m;
        } else {
            a = m + 1;
        }
    }
    let cross = a; // the first split where the owner's part is the longer (hi + 1: none)
                   // The nearest chunk boundary and keyframe on each side of it.
    let next_kf = kf.partition_point(|x| *x < cross);
    let best = [
        Some(from + (cross - from).div_ceil(k) * k),
        kf.get(next_kf).copied(),
        cross.checked_sub(1).map(|c| from + (c - from) / k * k),
        next_kf.checked_sub(1).map(|i| kf[i]),
    ]
    .into_iter()
    .flatten()
    .filter(|s| (lo..=hi).contains(s))
    .min_by_key(|&s| (owner(s).max(thief(s)), std::cmp::Reverse(s)))?;
    let alone = end - done;
    (owner(best).max(thief(best)) + k <= alone).then_some(best)
}

/// The last of the sorted keyframes at or before `frame` (0 if none): a binary search.
fn at_or_before(sorted: &[u64], frame: u64) -> u64 {
    let n = sorted.partition_point(|k| *k <= frame);
    n.checked_sub(1).map_or(0, |i| sorted[i])
}

/// The keyframe to seek to before decoding from `frame`: the last keyframe at or before it.
/// A binary search where the keyframes are in order (as probes report them; asked on every
/// lease grant), a scan otherwise.
pub fn keyframe_at_or_before(keyframes: &[u64], frame: u64) -> u64 {
    if keyframes.is_sorted() {
        return at_or_before(keyframes, frame);
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

    /// The finish time of a split as `steal_split` weighs it, for the tests' brute force.
    fn finish(done: u64, end: u64, kf: &[u64], s: u64) -> u64 {
        let lead_in = s - keyframe_at_or_before(kf, s);
        (s - done).max(end - s + lead_in / 2 + START_COST)
    }

    #[test]
    fn a_steal_splits_where_owner_and_thief_finish_soonest() {
        // 0..600, chunks of 50, owner at 120: the earliest split is 200, the latest 550.
        // Keyframes every 100 frames: 400 (owner 280 frames, thief 200 and its start) finishes
        // sooner than 350 (230 / 250 + 50 decoded twice + start) or 450 (330 / 181).
        let kf: Vec<u64> = (0..600).step_by(100).collect();
        assert_eq!(steal_split(0, 120, 600, 50, &kf), Some(400));
        // Only frame 0 is a keyframe: every frame before the split is decoded twice, so the
        // owner keeps more (500: owner 380, thief 100 + 250 + 6).
        assert_eq!(steal_split(0, 120, 600, 50, &[0]), Some(500));
        // A keyframe between chunk boundaries wins when it finishes sooner (430: 310 / 176;
        // at 400 the thief would decode 400 frames to keep 200).
        assert_eq!(steal_split(0, 120, 600, 50, &[0, 430]), Some(430));
        // The range of a stolen tail: chunks count from its own first frame, here a keyframe.
        assert_eq!(steal_split(430, 430, 1030, 50, &[430, 730]), Some(730));
        // Too little left for the owner's next chunk and one for the thief.
        assert_eq!(steal_split(0, 120, 240, 50, &[0]), None);
        // A split that saves less than a chunk is not worth it: 200..260 would cost the thief
        // 100 frames decoded twice, finishing after the owner alone (140).
        assert_eq!(steal_split(0, 120, 260, 50, &[0]), None);
        assert_eq!(steal_split(0, 20, 400, 50, &[0, 200]), Some(200));
        // Out-of-order keyframes, a zero chunk size, an owner past the end: no panic.
        assert_eq!(steal_split(0, 120, 600, 50, &[430, 0]), Some(430));
        assert_eq!(steal_split(0, 0, 100, 0, &[]), Some(71));
        assert_eq!(steal_split(0, 900, 600, 50, &[]), None);
    }

    #[test]
    fn a_cpu_jobs_timing_makes_a_long_lead_in_cheap() {
        // Session 18's idle wait: the last range 400..500 (chunks of 25) just started, the last
        // keyframe at 250. With a decoded frame at half a stylized one no split pays; at 7 ms
        // against a measured 133 ms per stylized frame, 450 does (owner 50, thief 50 + 10 + 6).
        let kf = in_order(&[0, 250]);
        assert_eq!(
            steal_split_sorted(400, 400, 500, 25, &kf, LEAD_IN_COST),
            None
        );
        let cpu = lead_in_cost(Some(133.0));
        assert_eq!(cpu, (7_000, 133_000));
        assert_eq!(steal_split_sorted(400, 400, 500, 25, &kf, cpu), Some(450));
        // The GPU node's own timing keeps about the fixed half; no timing, the fixed half.
        assert_eq!(lead_in_cost(Some(15.0)), (7_000, 15_000));
        assert_eq!(lead_in_cost(None), LEAD_IN_COST);
        assert_eq!(lead_in_cost(Some(f64::NAN)), LEAD_IN_COST);
        // Bounded: never dearer than the fixed half (a GPU node faster than 14 ms per frame and
        // pipeline splits as before), never cheaper than 1/64 of a stylized frame.
        assert_eq!(lead_in_cost(Some(10.0)), (7_000, 14_000));
        assert_eq!(lead_in_cost(Some(1e9)), (7_000, 448_000));
    }

    #[test]
    fn a_steal_split_is_the_best_candidate_a_scan_finds() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..3000 {
            let from = next(500);
            let end = from + 1 + next(1500);
            let k = 1 + next(60);
            let done = from + next(end - from + 1);
            let mut kf: Vec<u64> = (0..next(30)).map(|_| next(end + 100)).collect();
            kf.push(0);
            kf.sort_unstable();
            let lo = from + ((done - from) / k + 2) * k;
            let scan = (lo..end.saturating_sub(k).saturating_add(1))
                .filter(|s| (s - from) % k == 0 || kf.contains(s))
                .map(|s| finish(done, end, &kf, s))
                .min();
            let got = steal_split(from, done, end, k, &kf);
            let case = format!("from {from} done {done} end {end} k {k} kf {kf:?}");
            match (got, scan) {
                (Some(s), Some(best)) => {
                    assert_eq!(finish(done, end, &kf, s), best, "{case}: split {s}");
                    assert!(best + k <= end - done, "{case}");
                }
                (None, Some(best)) => assert!(best + k > end - done, "{case}: missed {best}"),
                (got, None) => assert_eq!(got, None, "{case}"),
            }
        }
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
