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

//! Uniform signature of the attention kernels: the tiled kernel ignores the third
//! argument, the row-wise one takes its warps per block, the 2-D tile one its list capacity.
using AttentionKernel = void (*)(TopKMaskedAttentionParams, BasisCsr, int32_t);

//! The tiled kernel for a head dim, or nullptr when the head dim is unsupported.
AttentionKernel getTiledKernelHalf(int32_t headDim);
AttentionKernel getTiledKernelBf16(int32_t headDim);
//! The 2-D tile kernel (v2) for a head dim, or nullptr.
AttentionKernel getTile2dKernelHalf(int32_t headDim);
AttentionKernel getTile2dKernelBf16(int32_t headDim);

} // namespace kernels
} // namespace sparsifiner
