/*
 * Tiled TopKMaskedAttention kernels for bfloat16 (one translation unit per element type
 * so that nvcc compiles them in parallel).
 */
#include "topkMaskedAttentionDispatch.h"
#include "topkMaskedAttentionTiledInstances.cuh"

namespace sparsifiner
{
namespace kernels
{

AttentionKernel getTiledKernelBf16(int32_t headDim)
{
    return tiledKernelFor<__nv_bfloat16>(headDim);
}

AttentionKernel getTile2dKernelBf16(int32_t headDim)
{
    return tile2dKernelFor<__nv_bfloat16>(headDim);
}

} // namespace kernels
} // namespace sparsifiner
