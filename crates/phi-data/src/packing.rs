//! SFT packing: examples laid end to end in rows of a fixed capacity instead of one example per
//! row padded to the longest, so a length-skewed data set stops paying for padding.
//!
//! Rows are filled best-fit decreasing, TRL's `bfd` strategy: longest example first, each into
//! the fullest row it still fits (among equally full rows, the one opened first), a new row
//! when none has room. The model keeps the examples apart (`phi_core::Segments`: positions
//! restart, attention stays inside each), and [`packed_batch`]'s mask never asks an example's
//! last token to predict the next example's first.

use std::collections::{BTreeMap, VecDeque};

use crate::sft::SftExample;

/// Example indices grouped into rows of at most `capacity` tokens, best-fit decreasing (see
/// the module). Each row lists its examples longest first; rows come in the order they were
/// opened; empty examples are left out. Errors on an example longer than `capacity` (naming
/// it) or on a zero capacity.
///
/// ```
/// use phi_data::packing::pack_bfd;
/// // 6 goes first and opens row 0; 5 opens row 1; 4 fits only row 0 (room 4), 3 row 1 (room 5).
/// assert_eq!(pack_bfd(&[3, 6, 4, 5], 10).unwrap(), [vec![1, 2], vec![3, 0]]);
/// ```
pub fn pack_bfd(lengths: &[usize], capacity: usize) -> Result<Vec<Vec<usize>>, String> {
    if capacity == 0 {
        return Err("the packing length must be at least 1".into());
    }
    if let Some((i, &n)) = lengths.iter().enumerate().find(|&(_, &n)| n > capacity) {
        return Err(format!("example {i} has {n} tokens, more than the packing length {capacity}"));
    }
    // Empty examples are left out, as TRL leaves them out: they hold nothing to learn.
    let mut order: Vec<usize> = (0..lengths.len()).filter(|&i| lengths[i] > 0).collect();
    // Stable: equal lengths keep their data order, so the packing is a function of the data.
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // Free room → the rows with exactly that much room, in the order they got it.
    let mut by_room: BTreeMap<usize, VecDeque<usize>> = BTreeMap::new();
    for i in order {
        let n = lengths[i];
        // Best fit: the least room that still holds the example.
        let fit = by_room.range_mut(n..).next().map(|(&room, rows)| (room, rows.pop_front().expect("no empty queues are kept")));
        let (row, room) = match fit {
            Some((room, row)) => {
                if by_room[&room].is_empty() {
                    by_room.remove(&room);
                }
                (row, room)
            }
            None => {
                rows.push(Vec::new());
                (rows.len() - 1, capacity)
            }
        };
        rows[row].push(i);
        if room > n {
            by_room.entry(room - n).or_default().push_back(row);
        }
    }
    Ok(rows)
}

/// A batch of packed rows: ids `[rows, len]` (each row's examples end to end, then `pad`), the
/// next-token target mask `[rows, len - 1]` (1 where the target is a learned token of the same
/// example as the predicting position), `len` (the fullest row, at least 2), and each row's
/// example lengths (for `phi_core::Segments`).
pub fn packed_batch(rows: &[Vec<&SftExample>], pad: u32) -> (Vec<u32>, Vec<f32>, usize, Vec<Vec<usize>>) {
    let len = rows.iter().map(|r| r.iter().map(|e| e.ids.len()).sum::<usize>()).max().unwrap_or(1).max(2);
    let mut ids = Vec::with_capacity(rows.len() * len);
    let mut mask = Vec::with_capacity(rows.len() * (len - 1));
    let mut lengths = Vec::with_capacity(rows.len());
    for row in rows {
        let start = ids.len();
        let mut row_mask = vec![0.0f32; len - 1];
        let mut at = 0;
        for e in row {
            ids.extend_from_slice(&e.ids);
            // Position at + j − 1 predicts token j of this example.
            for j in 1..e.ids.len() {
                if e.learn.get(j).copied().unwrap_or(false) {
                    row_mask[at + j - 1] = 1.0;
                }
            }
            at += e.ids.len();
        }
        ids.resize(start + len, pad);
        mask.extend(row_mask);
        lengths.push(row.iter().map(|e| e.ids.len()).filter(|&n| n > 0).collect());
    }
    (ids, mask, len, lengths)
}

/// The share of a padded batch's positions that hold tokens, over `examples` cut into batches of
/// `batch_size` in order: what packing recovers (1.0: no padding).
pub fn padded_fill(examples: &[SftExample], batch_size: usize) -> f64 {
    let (mut tokens, mut positions) = (0usize, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        tokens += chunk.iter().map(|e| e.ids.len()).sum::<usize>();
        positions += chunk.len() * chunk.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    }
    if positions == 0 { 1.0 } else { tokens as f64 / positions as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TRL's `_pack_bfd`, step for step (segment tree of free room, FIFO among equal room).
    fn trl_bfd(lengths: &[usize], cap: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let (mut bins, mut room): (Vec<Vec<usize>>, Vec<usize>) = (Vec::new(), Vec::new());
        // When each bin got its current room: among equal room, the earliest is TRL's deque front.
        let mut stamp: Vec<usize> = Vec::new();
        let mut clock = 0;
        for i in order {
            let n = lengths[i];
            let best = (0..bins.len()).filter(|&b| room[b] >= n).min_by_key(|&b| (room[b], stamp[b]));
            let b = match best {
                Some(b) => b,
                None => {
                    bins.push(Vec::new());
                    room.push(cap);
                    stamp.push(0);
                    bins.len() - 1
                }
            };
            bins[b].push(i);
            room[b] -= n;
            clock += 1;
            stamp[b] = clock;
        }
        bins
    }

    #[test]
    fn best_fit_decreasing_matches_a_direct_search_and_fills_rows() {
        let mut state = 12345u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        for cap in [16, 100, 512] {
            let lengths: Vec<usize> = (0..300).map(|_| 1 + next() % cap).collect();
            let rows = pack_bfd(&lengths, cap).unwrap();
            assert_eq!(rows, trl_bfd(&lengths, cap), "capacity {cap}");
            let mut seen: Vec<usize> = rows.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..300).collect::<Vec<_>>(), "every example exactly once");
            assert!(rows.iter().all(|r| r.iter().map(|&i| lengths[i]).sum::<usize>() <= cap));
            // Never worse than the volume bound by much (BFD is within 11/9 of optimal).
            let total: usize = lengths.iter().sum();
            assert!(rows.len() * 9 <= (total.div_ceil(cap)) * 11 + 9, "{} rows for {total} tokens at {cap}", rows.len());
        }
        assert!(pack_bfd(&[3, 11], 10).unwrap_err().contains("example 1 has 11 tokens, more than the packing length 10"));
        assert!(pack_bfd(&[], 10).unwrap().is_empty());
        assert_eq!(pack_bfd(&[0, 4, 0, 3], 10).unwrap(), [vec![1, 3]], "empty examples are left out");
    }

    #[test]
    fn a_packed_row_never_predicts_across_examples() {
        let a = SftExample { ids: vec![1, 2, 3], learn: vec![false, true, true] };
        let b = SftExample { ids: vec![4, 5], learn: vec![true, true] };
        let c = SftExample { ids: vec![6, 7, 8, 9], learn: vec![false, false, true, true] };
        let (ids, mask, len, lengths) = packed_batch(&[vec![&a, &b], vec![&c]], 0);
        assert_eq!(len, 5);
        assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]);
        // Row 0: 1→2 ✓, 2→3 ✓, 3→4 crosses (0) although 4 is learned, 4→5 ✓. Row 1: 6→7 ✗, 7→8 ✓, 8→9 ✓, 9→pad ✗.
        assert_eq!(mask, [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0]);
        assert_eq!(lengths, [vec![3, 2], vec![4]]);
        // One example per row is the padded batch.
        let (pids, pmask, plen) = crate::sft::batch(&[&a, &c], 0);
        let (ids, mask, len, _) = packed_batch(&[vec![&a], vec![&c]], 0);
        assert_eq!((ids, mask, len), (pids, pmask, plen));
    }
}
