//! The Hopper kernel's TMA descriptor of the KV cache (`CUtensorMap`), encoded on the host for every
//! decode call and passed inside the kernel's parameter record (a tensor map cannot be a kernel
//! parameter of its own from Rust: kernels/PITFALLS.md, pitfall 3).

use crate::tensor::DType;
use crate::{Error, Result};
use cudarc::driver::sys;
use flashmla_abi::params::{DecodeParams, TensorMapBytes, TENSOR_MAP_BYTES};
use flashmla_abi::sm90_config::TILE_COLS;
use flashmla_abi::{HEAD_DIM_K, PAGE_BLOCK_SIZE};

// The plan's slots and the kernel's slot arithmetic use the abi's size; the driver's type must agree.
const _: () = assert!(std::mem::size_of::<sys::CUtensorMap>() == TENSOR_MAP_BYTES);

/// Encodes the KV cache as the Hopper kernel's TMA tensor map: a 4-D tensor (576 columns, 64 tokens,
/// h_kv, num_blocks) of 16-bit elements with the byte strides `k_strides` (tokens, heads, pages; checked
/// against TMA's rules by validation), read in 64 × 64 boxes with the 128-byte swizzle; coordinates
/// outside it (page ids outside the cache) read as zeros, like FlashMLA's. A pure host call (no device
/// work), so it is made per decode call.
pub(super) fn encode_kv_tensor_map(
    d: &DecodeParams,
    k_strides: [u64; 3],
    dtype: DType,
) -> Result<TensorMapBytes> {
    use sys::{
        CUtensorMapDataType as T, CUtensorMapFloatOOBfill as Fill, CUtensorMapInterleave as I,
        CUtensorMapL2promotion as L2, CUtensorMapSwizzle as Sw,
    };
    let data_type = match dtype {
        DType::Bf16 => T::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        DType::F16 => T::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
    };
    let dims: [u64; 4] = [
        HEAD_DIM_K as u64,
        PAGE_BLOCK_SIZE as u64,
        d.num_heads_kv as u64,
        d.num_blocks as u64,
    ];
    let box_dims: [u32; 4] = [TILE_COLS as u32, PAGE_BLOCK_SIZE as u32, 1, 1];
    let element_strides = [1u32; 4];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: a pure encoding call writing 128 bytes into `map`; every array has the rank's length.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            data_type,
            4,
            d.k_cache as *mut std::ffi::c_void,
            dims.as_ptr(),
            k_strides.as_ptr(),
            box_dims.as_ptr(),
            element_strides.as_ptr(),
            I::CU_TENSOR_MAP_INTERLEAVE_NONE,
            Sw::CU_TENSOR_MAP_SWIZZLE_128B,
            L2::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            Fill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    }
    .result()
    .map_err(Error::cuda("cuTensorMapEncodeTiled"))?;
    // SAFETY: initialised by the successful call (and zeroed before).
    Ok(TensorMapBytes(unsafe { map.assume_init() }.opaque))
}
