//! The PTX modules of `kernels/`, embedded in the binary: by default the ones carried in `host/ptx/`
//! (generated from `kernels/` by `scripts/update-ptx.sh`, checked by CI to be exactly what the sources
//! compile to), see [`PTX_ORIGIN`].

/// Target architecture of an embedded PTX module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PtxArch {
    /// Hopper (`sm_90a`): needs compute capability exactly 9.0; uses wgmma, TMA and `setmaxnreg`.
    Sm90a,
    /// Ampere and newer (`sm_80`): portable kernels, JIT-compiled by the driver for any device ≥ 8.0.
    Sm80,
}

impl PtxArch {
    /// The `ptxas -arch` value for this module.
    pub const fn ptxas_arch(self) -> &'static str {
        match self {
            PtxArch::Sm90a => "sm_90a",
            PtxArch::Sm80 => "sm_80",
        }
    }

    /// The module to run on a device of compute capability `major.minor`, if any.
    pub const fn for_compute_capability(major: i32, minor: i32) -> Option<PtxArch> {
        match (major, minor) {
            (9, 0) => Some(PtxArch::Sm90a),
            (m, _) if m >= 8 => Some(PtxArch::Sm80),
            _ => None,
        }
    }
}

/// One embedded PTX module.
#[derive(Clone, Copy, Debug)]
pub struct PtxModule {
    /// Its architecture.
    pub arch: PtxArch,
    /// Its file name stem (`flashmla_sm90a`, ...).
    pub name: &'static str,
    /// The PTX text.
    pub source: &'static str,
    /// SHA-256 of `source`, lowercase hex (what `host/ptx/FINGERPRINT` records).
    pub sha256: &'static str,
}

impl PtxModule {
    /// Names of the kernels (`.entry` functions) the module defines.
    pub fn kernel_names(&self) -> impl Iterator<Item = &'static str> {
        self.source.lines().filter_map(|line| {
            let rest = line.trim_start().strip_prefix(".visible .entry ")?;
            Some(rest.split('(').next().unwrap_or(rest).trim())
        })
    }

    /// Whether the module defines kernel `name`.
    pub fn has_kernel(&self, name: &str) -> bool {
        self.kernel_names().any(|k| k == name)
    }
}

/// Where this build's modules come from: `carried (host/ptx)` (the default), `FLASHMLA_PTX_DIR`, or
/// `built from kernels/ with <toolchain>` (`FLASHMLA_BUILD_KERNELS=1`).
pub const PTX_ORIGIN: &str = env!("FLASHMLA_PTX_ORIGIN");

/// Every module this build embeds.
pub const MODULES: [PtxModule; 2] = [
    PtxModule {
        arch: PtxArch::Sm90a,
        name: "flashmla_sm90a",
        source: include_str!(concat!(env!("OUT_DIR"), "/flashmla_sm90a.ptx")),
        sha256: env!("FLASHMLA_SM90A_SHA256"),
    },
    PtxModule {
        arch: PtxArch::Sm80,
        name: "flashmla_sm80",
        source: include_str!(concat!(env!("OUT_DIR"), "/flashmla_sm80.ptx")),
        sha256: env!("FLASHMLA_SM80_SHA256"),
    },
];

/// The embedded module for `arch`.
pub fn module(arch: PtxArch) -> &'static PtxModule {
    MODULES
        .iter()
        .find(|m| m.arch == arch)
        .unwrap_or(&MODULES[0])
}

/// Kernel names the host launches; each is an `#[unsafe(no_mangle)]` entry point in `kernels/src`.
pub mod kernel {
    /// `kernels/src/sched_meta.rs`.
    pub const GET_DECODING_SCHED_META: &str = "flashmla_get_decoding_sched_meta";
    /// `kernels/src/portable.rs`, bf16.
    pub const SPLITKV_DECODE_BF16: &str = "flashmla_splitkv_decode_bf16";
    /// `kernels/src/portable.rs`, fp16.
    pub const SPLITKV_DECODE_F16: &str = "flashmla_splitkv_decode_f16";
    /// `kernels/src/decode_sm90.rs` (seesaw schedule), bf16 (sm_90a module only).
    pub const SPLITKV_DECODE_SM90_BF16: &str = "flashmla_splitkv_decode_sm90_bf16";
    /// `kernels/src/decode_sm90.rs` (seesaw schedule), fp16 (sm_90a module only).
    pub const SPLITKV_DECODE_SM90_F16: &str = "flashmla_splitkv_decode_sm90_f16";
    /// `kernels/src/decode_sm90_single.rs` (single-softmax schedule), bf16 (sm_90a module only).
    pub const SPLITKV_DECODE_SM90_SINGLE_BF16: &str = "flashmla_splitkv_decode_sm90_single_bf16";
    /// `kernels/src/decode_sm90_single.rs` (single-softmax schedule), fp16 (sm_90a module only).
    pub const SPLITKV_DECODE_SM90_SINGLE_F16: &str = "flashmla_splitkv_decode_sm90_single_f16";
    /// `kernels/src/combine.rs`, bf16.
    pub const COMBINE_BF16: &str = "flashmla_combine_bf16";
    /// `kernels/src/combine.rs`, fp16.
    pub const COMBINE_F16: &str = "flashmla_combine_f16";
    /// `kernels/src/fill.rs`, bf16 test data.
    pub const FILL_BF16: &str = "flashmla_fill_bf16";
    /// `kernels/src/fill.rs`, fp16 test data.
    pub const FILL_F16: &str = "flashmla_fill_f16";
    /// Kernels only the sm_90a module has (wgmma, TMA).
    pub const SM90A_ONLY: &[&str] = &[
        SPLITKV_DECODE_SM90_BF16,
        SPLITKV_DECODE_SM90_F16,
        SPLITKV_DECODE_SM90_SINGLE_BF16,
        SPLITKV_DECODE_SM90_SINGLE_F16,
    ];
    /// Every kernel the host looks up in every module.
    pub const ALL: &[&str] = &[
        GET_DECODING_SCHED_META,
        SPLITKV_DECODE_BF16,
        SPLITKV_DECODE_F16,
        COMBINE_BF16,
        COMBINE_F16,
        FILL_BF16,
        FILL_F16,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_defines_every_host_kernel() {
        for m in MODULES {
            assert!(m.source.contains(".target"), "{} is empty", m.name);
            for k in kernel::ALL {
                assert!(
                    m.has_kernel(k),
                    "{} lacks {k}; it has {:?}",
                    m.name,
                    m.kernel_names().collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn only_the_sm90a_module_has_the_hopper_kernels() {
        for m in MODULES {
            for k in kernel::SM90A_ONLY {
                assert_eq!(
                    m.has_kernel(k),
                    m.arch == PtxArch::Sm90a,
                    "{} / {k}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn modules_target_their_arch() {
        for m in MODULES {
            let target = format!(".target {}", m.arch.ptxas_arch());
            assert!(
                m.source.lines().any(|l| l.trim() == target),
                "{} lacks `{target}`",
                m.name
            );
            assert!(
                m.source.contains(".version 8."),
                "{}: PTX ISA below 8.x",
                m.name
            );
        }
    }

    /// The carried modules are the ones `host/ptx/FINGERPRINT` names (CI checks, with the nightly, that
    /// they are what `kernels/` compiles to and that a GPU-suite run is recorded for them).
    #[test]
    fn carried_modules_match_the_fingerprint() {
        const FINGERPRINT: &str = include_str!("ptx/FINGERPRINT");
        if PTX_ORIGIN != "carried (host/ptx)" {
            return; // FLASHMLA_PTX_DIR or FLASHMLA_BUILD_KERNELS: not the carried modules
        }
        for m in MODULES {
            let line = format!("sha256 {}  {}.ptx", m.sha256, m.name);
            assert!(
                FINGERPRINT.lines().any(|l| l == line),
                "host/ptx/FINGERPRINT lacks `{line}`: run scripts/update-ptx.sh"
            );
        }
    }

    #[test]
    fn arch_selection() {
        assert_eq!(PtxArch::for_compute_capability(9, 0), Some(PtxArch::Sm90a));
        assert_eq!(PtxArch::for_compute_capability(8, 9), Some(PtxArch::Sm80));
        assert_eq!(PtxArch::for_compute_capability(12, 0), Some(PtxArch::Sm80));
        assert_eq!(PtxArch::for_compute_capability(7, 5), None);
    }
}
