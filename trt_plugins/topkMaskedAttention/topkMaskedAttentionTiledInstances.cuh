/*
 * The table of tiled-kernel instantiations of one element type (internal): included by
 * topkMaskedAttentionTiled{Half,Bf16}.cu and by the CPU emulator.
 */
#pragma once

#include "topkMaskedAttentionTile2d.cuh"

namespace sparsifiner
{
namespace kernels
{

template <typename T>
void (*tiledKernelFor(int32_t headDim))(TopKMaskedAttentionParams, BasisCsr, int32_t)
{
    switch (headDim)
    {
    case 32: return &tiledTopKAttentionKernel<T, 32>;
    case 48: return &tiledTopKAttentionKernel<T, 48>;
    case 64: return &tiledTopKAttentionKernel<T, 64>;
    case 80: return &tiledTopKAttentionKernel<T, 80>;
    case 96: return &tiledTopKAttentionKernel<T, 96>;
    case 128: return &tiledTopKAttentionKernel<T, 128>;
    default: return nullptr;
    }
}

template <typename T>
void (*tile2dKernelFor(int32_t headDim))(TopKMaskedAttentionParams, BasisCsr, int32_t)
{
    switch (headDim)
    {
    case 32: return &tile2dTopKAttentionKernel<T, 32>;
    case 48: return &tile2dTopKAttentionKernel<T, 48>;
    case 64: return &tile2dTopKAttentionKernel<T, 64>;
    case 80: return &tile2dTopKAttentionKernel<T, 80>;
    case 96: return &tile2dTopKAttentionKernel<T, 96>;
    case 128: return &tile2dTopKAttentionKernel<T, 128>;
    default: return nullptr;
    }
}

} // namespace kernels
} // namespace sparsifiner
