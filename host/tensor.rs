//! Element types and strided views over cudarc device memory.

use crate::{Error, Result};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};

/// The 16-bit floating-point input types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl DType {
    /// Short name (`bf16`, `fp16`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::Bf16 => "bf16",
            DType::F16 => "fp16",
        }
    }

    /// Rounds an `f32` to this type and back (round to nearest even).
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::Bf16 => half::bf16::from_f32(x).to_f32(),
            DType::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// The value of a raw 16-bit pattern of this type.
    pub fn bits_to_f32(self, bits: u16) -> f32 {
        match self {
            DType::Bf16 => half::bf16::from_bits(bits).to_f32(),
            DType::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }

    /// A quiet-NaN bit pattern (used to poison outputs before a run).
    pub const fn nan_bits(self) -> u16 {
        match self {
            DType::Bf16 => 0x7FC0,
            DType::F16 => 0x7E00,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A 16-bit float type the kernels take: [`half::bf16`] or [`half::f16`].
pub trait Element:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static + sealed::Sealed
{
    /// Its [`DType`].
    const DTYPE: DType;
    /// Converts to `f32` exactly.
    fn to_f32(self) -> f32;
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::Bf16;
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// Largest element offset + 1 that a view of this shape and strides touches (0 if any dimension is 0).
fn extent(shape: &[usize], strides: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().zip(strides).try_fold(1usize, |acc, (&d, &s)| {
        acc.checked_add((d - 1).checked_mul(s)?)
    })
}

fn row_major_strides<const N: usize>(shape: [usize; N]) -> [usize; N] {
    let mut strides = [1usize; N];
    for i in (0..N.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1]);
    }
    strides
}

/// A view of `shape` and `strides` must stay inside a buffer of `len` elements.
pub(crate) fn check_view_extent<const N: usize>(
    name: &'static str,
    shape: [usize; N],
    strides: [usize; N],
    len: usize,
) -> Result<()> {
    let needed = extent(&shape, &strides).ok_or_else(|| Error::ViewTooLarge {
        name,
        shape: shape.to_vec(),
        strides: strides.to_vec(),
    })?;
    if needed > len {
        return Err(Error::OutOfBounds { name, needed, len });
    }
    Ok(())
}

macro_rules! view {
    ($name:ident, $inner:ident, $doc:literal) => {
        #[doc = $doc]
        ///
        /// Strides are in elements. The view is checked against its buffer when it is made; the decode
        /// call checks shapes, the contiguous last dimension and alignment.
        pub struct $name<'a, T, const N: usize> {
            pub(crate) data: $inner<'a, T>,
            pub(crate) shape: [usize; N],
            pub(crate) strides: [usize; N],
        }

        impl<'a, T, const N: usize> $name<'a, T, N> {
            /// A view with explicit strides. Fails if it would reach past the end of `data`.
            pub fn new(
                name: &'static str,
                data: $inner<'a, T>,
                shape: [usize; N],
                strides: [usize; N],
            ) -> Result<Self> {
                check_view_extent(name, shape, strides, data.len())?;
                Ok(Self {
                    data,
                    shape,
                    strides,
                })
            }

            /// A row-major (C-contiguous) view.
            pub fn contiguous(
                name: &'static str,
                data: $inner<'a, T>,
                shape: [usize; N],
            ) -> Result<Self> {
                Self::new(name, data, shape, row_major_strides(shape))
            }

            /// Its shape.
            pub fn shape(&self) -> [usize; N] {
                self.shape
            }

            /// Its strides, in elements.
            pub fn strides(&self) -> [usize; N] {
                self.strides
            }
        }
    };
}

view!(
    TensorView,
    CudaView,
    "A read-only strided view of device memory with `N` dimensions."
);
view!(
    TensorViewMut,
    CudaViewMut,
    "A writable strided view of device memory with `N` dimensions."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_and_strides() {
        assert_eq!(row_major_strides([2, 3, 4]), [12, 4, 1]);
        assert_eq!(extent(&[2, 3, 4], &[12, 4, 1]), Some(24));
        assert_eq!(extent(&[2, 3], &[100, 1]), Some(103));
        assert_eq!(extent(&[0, 3], &[3, 1]), Some(0));
        assert_eq!(extent(&[usize::MAX, 2], &[usize::MAX, 1]), None);
    }

    #[test]
    fn a_view_beyond_usize_names_its_shape_and_strides() {
        match check_view_extent("k_cache", [2, 3], [usize::MAX, 1], usize::MAX) {
            Err(Error::ViewTooLarge {
                name,
                shape,
                strides,
            }) => {
                assert_eq!(name, "k_cache");
                assert_eq!(shape, [2, 3]);
                assert_eq!(strides, [usize::MAX, 1]);
            }
            other => panic!("{other:?}"),
        }
        assert!(check_view_extent("q", [2, 3], [3, 1], 6).is_ok());
    }

    #[test]
    fn dtype_rounding_and_nan() {
        assert_eq!(DType::Bf16.round(1.0 + 1.0 / 512.0), 1.0);
        assert_eq!(DType::F16.round(1.0 + 1.0 / 512.0), 1.0 + 1.0 / 512.0);
        assert!(DType::Bf16.bits_to_f32(DType::Bf16.nan_bits()).is_nan());
        assert!(DType::F16.bits_to_f32(DType::F16.nan_bits()).is_nan());
    }
}
