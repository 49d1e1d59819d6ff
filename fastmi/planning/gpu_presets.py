"""What the planner assumes about GPUs it does not measure: published figures and a GPU node's defaults."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACHIEVED_FRACTION",
    "GPU_NODE_DISK_RATE",
    "GPU_NODE_HOST_MEMORY_PER_GPU",
    "GPU_OPS_PER_STEP",
    "GPU_OP_SECONDS",
    "GPU_PRECISION_SPEED",
    "GPU_PRESETS",
    "H200_BANDWIDTH",
    "GpuPreset",
    "gpu_preset",
]

# The share of a GPU's published dense bf16 peak that a preset's matmuls are planned at: large bf16 GEMMs
# of a transformer's shapes reach roughly half to two thirds of the datasheet figure (an assumption, not
# measured by this project; --matmul-tflops replaces it).
ACHIEVED_FRACTION = 0.6
GPU_OP_SECONDS = 10e-6  # a kernel launch, when no GPU is present to measure one
GPU_OPS_PER_STEP = (50, 25)  # launches of one probe step of L layers: a + b L (bag selection, kernels, AdamW)
# What a GPU node that is not this machine is assumed to have, unless --host-memory / --disk-rate say:
# a DGX H100/H200 has 2 TB of RAM for its 8 GPUs.  A cache file costs its writer a sha256 of the tensors
# (about 2 GB/s on one server core with SHA extensions), the safetensors serialisation (a copy) and the
# write into the page cache: about 1 GB/s per extracting process together.
GPU_NODE_HOST_MEMORY_PER_GPU = 250e9
GPU_NODE_DISK_RATE = 1e9


@dataclass(frozen=True)
class GpuPreset:
    """A GPU's published figures (dense, no sparsity; vendor datasheets cited in docs/scaling.md)."""

    name: str
    memory: int  # bytes, in the datasheet's decimal GB
    bf16_tflops: float  # peak dense bf16 tensor-core TFLOP/s
    tf32_tflops: float  # peak dense TF32 tensor-core TFLOP/s
    fp32_tflops: float  # peak fp32 TFLOP/s (the probe's full-precision dots)
    bandwidth: float  # memory bytes/s

    @property
    def precision_speed(self) -> dict[str, float]:
        """The probe's matmul speed at each precision relative to bf16."""
        return {"bf16": 1.0, "tf32": self.tf32_tflops / self.bf16_tflops, "fp32": self.fp32_tflops / self.bf16_tflops}


# Datasheets state tensor-core rates with 2:4 sparsity; these are half of those (the dense rates).
GPU_PRESETS = {
    "h100": GpuPreset("H100 SXM", 80 * 10**9, 989, 494, 67, 3.35e12),
    "h200": GpuPreset("H200 SXM", 141 * 10**9, 989, 494, 67, 4.8e12),
    "a100-80gb": GpuPreset("A100 SXM 80GB", 80 * 10**9, 312, 156, 19.5, 2.039e12),
    "l40s": GpuPreset("L40S", 48 * 10**9, 362, 183, 91.6, 0.864e12),
}
H200_BANDWIDTH = GPU_PRESETS["h200"].bandwidth  # the default for GPUs not present here and named by no preset
# Probe matmul speed relative to bf16 on a GPU named by no preset: an H100/H200's (fastmi's fp32 kernels use
# full-precision dots, fastmi/kernels/bag_cross_entropy_triton.py).  On a CPU every precision runs fp32 matmuls.
GPU_PRECISION_SPEED = GPU_PRESETS["h100"].precision_speed


def gpu_preset(name: str) -> GpuPreset:
    """The preset called ``name`` (case-insensitive), or a clear error naming the ones there are."""
    preset = GPU_PRESETS.get(name.strip().lower())
    if preset is None:
        raise ValueError(f"unknown GPU {name!r}: the presets are {', '.join(GPU_PRESETS)}")
    return preset
