/*
 * Kernel lookup shared by the launcher and the per-type translation units (internal).
 * The tiled instantiations live in their own .cu files so they compile in parallel.
 */
#pragma once

#include "topkMaskedAttentionPlan.h"

namespace sparsifiner
{
namespace kernels
{

//! Uniform signature of both attention kernels (the tiled one ignores `warps`).
using AttentionKernel = void (*)(TopKMaskedAttentionParams, BasisCsr, int32_t);

//! The tiled kernel for a head dim, or nullptr when the head dim is unsupported.
AttentionKernel getTiledKernelHalf(int32_t headDim);
AttentionKernel getTiledKernelBf16(int32_t headDim);

} // namespace kernels
} // namespace sparsifiner
