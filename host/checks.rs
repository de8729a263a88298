//! The checks every [`FlashMla`] call makes before it queues anything: that the stream, each buffer and
//! the plan or metadata belong to this handle's CUDA context, and that the device can give a decode CTA
//! its shared memory. One place, so every entry point makes the same checks with the same errors.
//!
//! What a call's arguments must satisfy beyond ownership (shapes, strides, alignment, sizes) is
//! checked by `decode/validate.rs` and `DecodeShape::new`.

use crate::sched::SchedMetadata;
use crate::{Error, FlashMla, Result};
use cudarc::driver::{CudaContext, CudaStream};
use flashmla_abi::decode_config::smem;
use std::sync::Arc;

impl FlashMla {
    /// `stream` belongs to this handle's context.
    pub(crate) fn check_stream(&self, stream: &CudaStream) -> Result<()> {
        self.check_context("stream", stream.context())
    }

    /// The buffer `name`, made on the stream `owner` (cudarc records it), belongs to this handle's
    /// context.
    pub(crate) fn check_buffer(&self, name: &'static str, owner: &Arc<CudaStream>) -> Result<()> {
        self.check_context(name, owner.context())
    }

    /// `ctx`, the context of argument `name`, is this handle's: another device is
    /// [`Error::WrongDevice`], another context of the same device [`Error::WrongContext`].
    fn check_context(&self, name: &'static str, ctx: &Arc<CudaContext>) -> Result<()> {
        if ctx.cu_ctx() == self.context().cu_ctx() {
            return Ok(());
        }
        let device = self.device_info().ordinal;
        Err(if ctx.ordinal() == device {
            Error::WrongContext { name, device }
        } else {
            Error::WrongDevice {
                name,
                expected: device,
                got: ctx.ordinal(),
            }
        })
    }

    /// `metadata` (passed as `name`: the metadata itself, or the plan holding it) was allocated by a
    /// handle of this context.
    pub(crate) fn check_metadata(
        &self,
        name: &'static str,
        metadata: &SchedMetadata,
    ) -> Result<()> {
        if metadata.cu_ctx != self.context().cu_ctx() as usize {
            return Err(Error::ForeignPlan {
                name,
                made_on: metadata.ordinal,
                device: self.device_info().ordinal,
            });
        }
        Ok(())
    }

    /// The device lets a CTA of the portable decode kernel opt into the shared memory it needs (the
    /// Hopper kernel's needs only exist on devices that give more).
    pub(crate) fn check_decode_device(&self) -> Result<()> {
        let info = self.device_info();
        if (info.max_shared_memory_per_block_optin as usize) < smem::TOTAL {
            return Err(Error::SharedMemory {
                needed: smem::TOTAL,
                available: info.max_shared_memory_per_block_optin as usize,
                device: info.name.clone(),
            });
        }
        Ok(())
    }
}
