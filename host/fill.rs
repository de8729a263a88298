//! The fill kernels (`flashmla_fill_bf16`, `flashmla_fill_f16`): deterministic pseudo-random test and
//! benchmark inputs written on the device, with NaN in the pages a mask marks unused. The values are
//! [`flashmla_abi::fill::fill_value`]'s, which the host can recompute element by element.

use crate::launch::{self, LaunchConfig};
use crate::tensor::DType;
use crate::{FlashMla, Result};
use cudarc::driver::sys;
use flashmla_abi::fill::{FillParams, FILL_THREADS};

impl FlashMla {
    /// Fills a buffer with reproducible test data on `stream`, with no host buffer and no copy: the
    /// `rows × row_len` 16-bit values at `params.data` get
    /// [`fill_value`](flashmla_abi::fill::fill_value)`(seed, index, amplitude)` rounded to `dtype`,
    /// except rows past the valid rows of their page (the page mask `params.valid_rows`), which get NaN
    /// (FlashMLA's tests put NaN in every unused KV-cache slot). The test and benchmark harness
    /// (`flashmla-harness`) generates its cases with it and recomputes any element with `fill_value`
    /// for the reference.
    ///
    /// # Safety
    /// `params` must describe a live buffer of this context (and a valid page mask or 0).
    pub unsafe fn fill_raw(
        &self,
        stream: sys::CUstream,
        dtype: DType,
        params: &FillParams,
    ) -> Result<()> {
        self.bind()?;
        let f = match dtype {
            DType::Bf16 => &self.inner.fill_bf16,
            DType::F16 => &self.inner.fill_f16,
        };
        let pairs = params.rows * params.row_len as u64 / 2;
        let blocks = pairs
            .div_ceil(FILL_THREADS as u64)
            .clamp(1, self.device_info().sm_count as u64 * 16) as u32;
        let config = LaunchConfig {
            grid: (blocks, 1, 1),
            block: (FILL_THREADS, 1, 1),
            dynamic_smem_bytes: 0,
            programmatic_serialization: false,
        };
        // SAFETY: forwarded.
        unsafe { launch::launch(f.cu_function(), stream, &config, params) }
    }
}
