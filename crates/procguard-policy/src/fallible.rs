//! Vector and slice operations with no panic path in the compiled code.
//!
//! The kernel build must not contain a reachable-looking panic: the driver's
//! package step refuses an image that imports `KeBugCheckEx`, which only the
//! panic handler calls. `Vec::push` after `try_reserve` is not enough — the
//! compiler cannot see the reservation, so `push` keeps its regrow path
//! (`handle_error` → panic); nor is `sort_unstable`, whose
//! `panic_on_ord_violation` stays in the image. These helpers guard each
//! operation with a condition the optimiser uses to drop the panic branch,
//! and report failure as a value. The driver uses them too.

use alloc::collections::TryReserveError;
use alloc::vec::Vec;
use core::cmp::Ordering;

/// Pushes `value` if `v` has spare capacity; gives it back otherwise. Never
/// reallocates, so no allocation-failure path is compiled in.
pub fn push_within_capacity<T>(v: &mut Vec<T>, value: T) -> Result<(), T> {
    if v.len() < v.capacity() {
        v.push(value);
        Ok(())
    } else {
        Err(value)
    }
}

/// Reserves room for one more element (fallibly) and pushes `value`.
///
/// # Errors
/// The reservation failed; `v` is unchanged.
pub fn try_push<T>(v: &mut Vec<T>, value: T) -> Result<(), TryReserveError> {
    v.try_reserve(1)?;
    // Capacity is now > len: this cannot give the value back.
    let _ = push_within_capacity(v, value);
    Ok(())
}

/// Appends a copy of `items` (fallibly).
///
/// # Errors
/// The reservation failed; `v` is unchanged.
pub fn try_extend_from_slice<T: Copy>(v: &mut Vec<T>, items: &[T]) -> Result<(), TryReserveError> {
    v.try_reserve(items.len())?;
    for &item in items {
        if push_within_capacity(v, item).is_err() {
            break;
        }
    }
    Ok(())
}

/// Appends the items of `items` (fallibly), as many as the reservation of
/// `count` allows (callers pass the exact count).
///
/// # Errors
/// The reservation failed; `v` is unchanged.
pub fn try_extend_counted<T>(
    v: &mut Vec<T>,
    count: usize,
    items: impl IntoIterator<Item = T>,
) -> Result<(), TryReserveError> {
    v.try_reserve(count)?;
    for item in items.into_iter().take(count) {
        if push_within_capacity(v, item).is_err() {
            break;
        }
    }
    Ok(())
}

/// A vector of `len` elements made by `make(index)`, or the reservation's error.
///
/// # Errors
/// The allocation failed.
pub fn try_vec_from_fn<T>(
    len: usize,
    mut make: impl FnMut(usize) -> T,
) -> Result<Vec<T>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)?;
    for index in 0..len {
        if push_within_capacity(&mut v, make(index)).is_err() {
            break;
        }
    }
    Ok(v)
}

/// Resizes `v` to `len`, filling with clones of `value` (fallibly).
///
/// # Errors
/// The reservation failed; `v` is unchanged.
pub fn try_resize<T: Clone>(v: &mut Vec<T>, len: usize, value: T) -> Result<(), TryReserveError> {
    if len <= v.len() {
        v.truncate(len);
        return Ok(());
    }
    let more = len - v.len();
    v.try_reserve(more)?;
    for _ in 0..more {
        if push_within_capacity(v, value.clone()).is_err() {
            break;
        }
    }
    Ok(())
}

/// Moves the larger child up until the heap property holds below `root`.
fn sift_down<T>(v: &mut [T], mut root: usize, compare: &mut impl FnMut(&T, &T) -> Ordering) {
    loop {
        let Some(mut child) = root.checked_mul(2).and_then(|twice| twice.checked_add(1)) else {
            return;
        };
        let (Some(left), right) = (
            v.get(child),
            child.checked_add(1).and_then(|next| v.get(next)),
        ) else {
            return;
        };
        if let Some(right) = right {
            if compare(left, right) == Ordering::Less {
                child += 1;
            }
        }
        let (Some(parent), Some(larger)) = (v.get(root), v.get(child)) else {
            return;
        };
        if compare(parent, larger) != Ordering::Less {
            return;
        }
        if root < child && child < v.len() {
            v.swap(root, child);
        }
        root = child;
    }
}

/// Sorts `v` by `compare` (unstable, O(n log n), O(n) when already sorted,
/// no allocation): a heapsort
/// with no panic path, for the kernel build in place of `sort_unstable_by`
/// (whose Ord-violation check keeps a panic in the image). An inconsistent
/// `compare` leaves some order; it never panics.
pub fn sort_unstable_by<T>(v: &mut [T], mut compare: impl FnMut(&T, &T) -> Ordering) {
    // Policies usually arrive in order (canonical blobs, generated rule
    // lists): one pass settles them, as the standard sort's run detection did.
    let sorted = v.windows(2).all(|pair| match pair {
        [first, second] => compare(first, second) != Ordering::Greater,
        _ => true,
    });
    if sorted {
        return;
    }
    let len = v.len();
    for start in (0..len / 2).rev() {
        sift_down(v, start, &mut compare);
    }
    for end in (1..len).rev() {
        if end < v.len() {
            v.swap(0, end);
        }
        if let Some(heap) = v.get_mut(..end) {
            sift_down(heap, 0, &mut compare);
        }
    }
}

/// [`sort_unstable_by`] with the natural order.
pub fn sort_unstable<T: Ord>(v: &mut [T]) {
    sort_unstable_by(v, T::cmp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn heapsort_sorts_like_the_standard_sort() {
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        for len in [0usize, 1, 2, 3, 7, 8, 64, 1000] {
            let mut data: Vec<(u16, u32)> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed % 50) as u16, (seed >> 20) as u32)
                })
                .collect();
            let mut expected = data.clone();
            expected.sort_unstable();
            sort_unstable(&mut data);
            assert_eq!(data, expected, "len {len}");
        }
        let mut by_key = vec![3, 1, 2];
        sort_unstable_by(&mut by_key, |a, b| b.cmp(a));
        assert_eq!(by_key, [3, 2, 1]);
    }

    #[test]
    fn an_inconsistent_order_does_not_panic() {
        let mut data: Vec<u32> = (0..100).collect();
        let mut flip = false;
        sort_unstable_by(&mut data, |_, _| {
            flip = !flip;
            if flip {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        });
        data.sort_unstable();
        assert_eq!(
            data,
            (0..100).collect::<Vec<_>>(),
            "a permutation, nothing lost"
        );
    }

    #[test]
    fn vector_helpers_fill_and_never_grow_past_capacity() {
        let mut v: Vec<u8> = Vec::with_capacity(1);
        assert_eq!(push_within_capacity(&mut v, 1), Ok(()));
        if v.capacity() == 1 {
            assert_eq!(push_within_capacity(&mut v, 2), Err(2));
        }
        try_push(&mut v, 3).unwrap();
        try_extend_from_slice(&mut v, &[4, 5]).unwrap();
        assert_eq!(
            v.iter().filter(|&&x| x != 2).copied().collect::<Vec<_>>(),
            [1, 3, 4, 5]
        );
        let mut r = vec![9u8];
        try_resize(&mut r, 3, 7).unwrap();
        assert_eq!(r, [9, 7, 7]);
        try_resize(&mut r, 1, 0).unwrap();
        assert_eq!(r, [9]);
        assert_eq!(try_vec_from_fn(4, |i| i * 2).unwrap(), [0, 2, 4, 6]);
        let mut c = Vec::new();
        try_extend_counted(&mut c, 2, [1, 2, 3]).unwrap();
        assert_eq!(c, [1, 2]);
        assert!(try_vec_from_fn::<u64>(usize::MAX, |_| 0).is_err());
    }
}
