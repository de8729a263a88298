//! [`FlashMla`]: a device, its CUDA context and flashmla's kernels loaded into it.
//!
//! This file opens the handle, loads the module and describes the device. The handle's other methods
//! live with their concern: the ownership checks every call makes (stream, buffers, plan, device) in
//! `checks.rs`, the scheduler metadata in `sched.rs`, plans and the decode in `decode/`, and the
//! test-data fill kernel in `fill.rs`.

use crate::ptx::{self, PtxArch, PtxModule};
use crate::{Error, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;
use std::sync::{Arc, Mutex, Weak};

/// What flashmla knows about the device it runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name (`NVIDIA H200`).
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// Global memory, bytes.
    pub total_memory_bytes: usize,
    /// L2 cache, bytes.
    pub l2_cache_bytes: u32,
    /// Shared memory one block may opt into, bytes.
    pub max_shared_memory_per_block_optin: u32,
    /// CUDA driver version (`12080` = 12.8).
    pub driver_version: i32,
    /// The PTX module chosen for this device.
    pub arch: PtxArch,
}

/// Resources of one kernel as the driver compiled it for this device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// Kernel name.
    pub name: String,
    /// Registers per thread.
    pub registers: i32,
    /// Static shared memory, bytes.
    pub static_shared_bytes: i32,
    /// Local memory (stack, spills) per thread, bytes.
    pub local_bytes: i32,
    /// Largest block the kernel can be launched with.
    pub max_threads_per_block: i32,
    /// Virtual architecture of the PTX the kernel was JIT-compiled from (90 = compute_90).
    pub ptx_version: i32,
    /// Architecture of the SASS the driver produced (90 = sm_90).
    pub binary_version: i32,
}

pub(crate) struct Inner {
    pub ctx: Arc<CudaContext>,
    pub module: Arc<CudaModule>,
    pub ptx: &'static PtxModule,
    pub info: DeviceInfo,
    pub sched_meta: CudaFunction,
    pub decode_bf16: CudaFunction,
    pub decode_f16: CudaFunction,
    /// The Hopper decode kernels (sm_90a module only).
    pub decode_sm90: Option<Sm90Kernels>,
    pub combine_bf16: CudaFunction,
    pub combine_f16: CudaFunction,
    pub fill_bf16: CudaFunction,
    pub fill_f16: CudaFunction,
}

/// The Hopper decode kernels, (bf16, fp16) per schedule.
pub(crate) struct Sm90Kernels {
    pub seesaw: (CudaFunction, CudaFunction),
    pub single_softmax: (CudaFunction, CudaFunction),
}

/// A CUDA device with flashmla's PTX module loaded into its context.
///
/// Cheap to clone (an `Arc`). The module is loaded once per context: every handle made for the same
/// context shares it. All launches go to a stream the caller passes.
///
/// ```no_run
/// # fn main() -> flashmla::Result<()> {
/// let flashmla = flashmla::FlashMla::new(0)?; // Err(Error::NoDriver) on a machine without a GPU
/// println!("{} with {} SMs", flashmla.device_info().name, flashmla.device_info().sm_count);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FlashMla {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for FlashMla {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlashMla")
            .field("device", &self.inner.info)
            .finish()
    }
}

/// One loaded module per live context, keyed by the `CUcontext` handle.
/// (CUcontext handle, module forced by the caller).
type ModuleKey = (usize, Option<PtxArch>);

static LOADED: Mutex<Vec<(ModuleKey, Weak<Inner>)>> = Mutex::new(Vec::new());

/// Whether the CUDA driver library can be loaded on this machine.
///
/// Checked by name rather than through cudarc, because cudarc has no such check when another crate
/// in the build (candle) links libcuda instead of loading it; there the library is already loaded.
pub fn driver_available() -> bool {
    if cfg!(windows) {
        loadable(&["nvcuda.dll"])
    } else {
        loadable(&["libcuda.so.1", "libcuda.so"])
    }
}

fn loadable(names: &[&str]) -> bool {
    names.iter().any(|name| {
        // SAFETY: loading an NVIDIA library runs only its own initialisers, as cudarc's loading of it
        // would; the handle is closed again when dropped.
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

impl FlashMla {
    /// Opens device `ordinal` (its primary context) and loads the kernels.
    ///
    /// Errors: [`Error::NoDriver`] without an NVIDIA driver, [`Error::NoDevice`] for a bad ordinal,
    /// [`Error::UnsupportedArch`] for a device older than sm_80.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_available() {
            return Err(Error::NoDriver);
        }
        let count = CudaContext::device_count().map_err(Error::cuda("cuDeviceGetCount"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoDevice {
                ordinal,
                count: count.max(0) as usize,
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(Error::cuda("cuDevicePrimaryCtxRetain"))?;
        Self::with_context(ctx)
    }

    /// Uses an existing cudarc context (e.g. the one a candle or mistral.rs device owns), with the
    /// module this device runs best (sm_90a on compute capability 9.0, else sm_80).
    pub fn with_context(ctx: Arc<CudaContext>) -> Result<Self> {
        Self::with_module(ctx, None)
    }

    /// Like [`with_context`](Self::with_context) but with a chosen PTX module, e.g. the portable sm_80
    /// kernels on a Hopper GPU (for comparison). Errors with [`Error::UnsupportedArch`] where the module
    /// cannot run.
    pub fn with_module(ctx: Arc<CudaContext>, arch: Option<PtxArch>) -> Result<Self> {
        let key = (ctx.cu_ctx() as usize, arch);
        let mut loaded = LOADED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loaded.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(inner) = loaded
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(Self { inner });
        }
        let inner = Arc::new(Self::load(ctx, arch)?);
        loaded.push((key, Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    fn load(ctx: Arc<CudaContext>, forced: Option<PtxArch>) -> Result<Inner> {
        let attr = |a| {
            ctx.attribute(a)
                .map_err(Error::cuda("cuDeviceGetAttribute"))
        };
        use sys::CUdevice_attribute as A;
        let name = ctx.name().map_err(Error::cuda("cuDeviceGetName"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(Error::cuda("cuDeviceGetAttribute"))?;
        let best = PtxArch::for_compute_capability(major, minor);
        let arch = match (forced, best) {
            // sm_90a code runs only on compute capability 9.0; sm_80 code on anything from 8.0.
            (Some(PtxArch::Sm90a), Some(PtxArch::Sm90a)) | (Some(PtxArch::Sm80), Some(_)) => forced,
            (None, best) => best,
            _ => None,
        }
        .ok_or_else(|| Error::UnsupportedArch {
            name: name.clone(),
            major,
            minor,
        })?;
        let mut driver_version = 0;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(Error::cuda("cuDriverGetVersion"))?;
        let info = DeviceInfo {
            ordinal: ctx.ordinal(),
            name,
            compute_capability: (major, minor),
            sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
            total_memory_bytes: ctx.total_mem().map_err(Error::cuda("cuDeviceTotalMem"))?,
            l2_cache_bytes: attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u32,
            max_shared_memory_per_block_optin: attr(
                A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )? as u32,
            driver_version,
            arch,
        };
        let ptx = ptx::module(arch);
        let module = ctx
            .load_module(Ptx::from_src(ptx.source))
            .map_err(Error::cuda("cuModuleLoadData"))?;
        let function = |name: &'static str| {
            if !ptx.has_kernel(name) {
                return Err(Error::MissingKernel {
                    name,
                    module: ptx.name,
                });
            }
            module
                .load_function(name)
                .map_err(Error::cuda("cuModuleGetFunction"))
        };
        use ptx::kernel as k;
        let decode_bf16 = function(k::SPLITKV_DECODE_BF16)?;
        let decode_f16 = function(k::SPLITKV_DECODE_F16)?;
        // The decode CTA needs more than the default 48 KiB of dynamic shared memory; devices that cannot
        // give it are refused at plan time (Error::SharedMemory), so only opt in where it fits.
        if info.max_shared_memory_per_block_optin as usize
            >= flashmla_abi::decode_config::smem::TOTAL
        {
            for f in [&decode_bf16, &decode_f16] {
                f.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    flashmla_abi::decode_config::smem::TOTAL as i32,
                )
                .map_err(Error::cuda("cuFuncSetAttribute"))?;
            }
        }
        let decode_sm90 = if arch == PtxArch::Sm90a {
            let kernels = Sm90Kernels {
                seesaw: (
                    function(k::SPLITKV_DECODE_SM90_BF16)?,
                    function(k::SPLITKV_DECODE_SM90_F16)?,
                ),
                single_softmax: (
                    function(k::SPLITKV_DECODE_SM90_SINGLE_BF16)?,
                    function(k::SPLITKV_DECODE_SM90_SINGLE_F16)?,
                ),
            };
            for f in [
                &kernels.seesaw.0,
                &kernels.seesaw.1,
                &kernels.single_softmax.0,
                &kernels.single_softmax.1,
            ] {
                f.set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    flashmla_abi::sm90_config::sm90_smem::TOTAL as i32,
                )
                .map_err(Error::cuda("cuFuncSetAttribute"))?;
            }
            Some(kernels)
        } else {
            None
        };
        Ok(Inner {
            ctx: ctx.clone(),
            decode_sm90,
            module: module.clone(),
            ptx,
            sched_meta: function(k::GET_DECODING_SCHED_META)?,
            decode_bf16,
            decode_f16,
            combine_bf16: function(k::COMBINE_BF16)?,
            combine_f16: function(k::COMBINE_F16)?,
            fill_bf16: function(k::FILL_BF16)?,
            fill_f16: function(k::FILL_F16)?,
            info,
        })
    }

    /// The device this handle runs on.
    pub fn device_info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// The CUDA context the kernels are loaded in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The embedded PTX module in use.
    pub fn ptx_module(&self) -> &'static PtxModule {
        self.inner.ptx
    }

    /// A new non-blocking stream on this device.
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.inner
            .ctx
            .new_stream()
            .map_err(Error::cuda("cuStreamCreate"))
    }

    /// Registers, shared and local memory of every kernel in the loaded module, as the driver built them.
    pub fn kernels(&self) -> Result<Vec<KernelInfo>> {
        use sys::CUfunction_attribute as F;
        self.inner
            .ptx
            .kernel_names()
            .map(|name| {
                let f = self
                    .inner
                    .module
                    .load_function(name)
                    .map_err(Error::cuda("cuModuleGetFunction"))?;
                let get = |a| {
                    f.get_attribute(a)
                        .map_err(Error::cuda("cuFuncGetAttribute"))
                };
                Ok(KernelInfo {
                    name: name.to_owned(),
                    registers: get(F::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
                    static_shared_bytes: get(F::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
                    local_bytes: get(F::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
                    max_threads_per_block: get(F::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
                    ptx_version: get(F::CU_FUNC_ATTRIBUTE_PTX_VERSION)?,
                    binary_version: get(F::CU_FUNC_ATTRIBUTE_BINARY_VERSION)?,
                })
            })
            .collect()
    }

    /// Makes this handle's context current on the calling thread (before a launch).
    pub(crate) fn bind(&self) -> Result<()> {
        self.inner
            .ctx
            .bind_to_thread()
            .map_err(Error::cuda("cuCtxSetCurrent"))
    }
}
