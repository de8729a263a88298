//! Test-data kernels: fill a tensor with [`flashmla_abi::fill::fill_value`] (rounded to bf16 / fp16) and NaN in
//! the rows a page mask marks unused. Used by the GPU tests, `flashmla check` and `flashmla bench`, so
//! inputs of gigabytes cost milliseconds and the host reference can recompute any element.

use crate::arch::{self, Element};
use flashmla_abi::fill::{fill_value, FillParams};

/// Grid-stride over pairs of elements; `row_len` must be even.
///
/// # Safety
/// `params.data` must hold `rows · row_len` 16-bit values; `valid_rows`, when not null, one `i32` per page.
#[inline(always)]
pub unsafe fn fill<E: Element>(p: &FillParams, nan_bits: u32) {
    let threads = (arch::grid_dim_x() * arch::block_dim_x()) as u64;
    let mut pair = (arch::block_idx_x() * arch::block_dim_x() + arch::thread_idx_x()) as u64;
    let pairs = p.rows * p.row_len as u64 / 2;
    let valid_rows = p.valid_rows as *const i32;
    while pair < pairs {
        let index = pair * 2;
        let row = index / p.row_len as u64;
        let valid = valid_rows.is_null() || {
            let page = row / p.rows_per_page as u64;
            let token = (row % p.rows_per_page as u64) / p.tokens_divisor as u64;
            // SAFETY: page < rows / rows_per_page.
            (token as i64) < unsafe { *valid_rows.add(page as usize) } as i64
        };
        let bits = if valid {
            E::pack(
                fill_value(p.seed, index, p.amplitude),
                fill_value(p.seed, index + 1, p.amplitude),
            )
        } else {
            nan_bits
        };
        // SAFETY: index + 1 < rows · row_len; 4-byte aligned (even index).
        unsafe { *(p.data as *mut u32).add(pair as usize) = bits };
        pair += threads;
    }
}
