/*
 * Tiled TopKMaskedAttention kernels for float16 (one translation unit per element type
 * so that nvcc compiles them in parallel).
 */
#include "topkMaskedAttentionDispatch.h"
#include "topkMaskedAttentionTiledInstances.cuh"

namespace sparsifiner
{
namespace kernels
{

AttentionKernel getTiledKernelHalf(int32_t headDim)
{
    return tiledKernelFor<__half>(headDim);
}

AttentionKernel getTile2dKernelHalf(int32_t headDim)
{
    return tile2dKernelFor<__half>(headDim);
}

} // namespace kernels
} // namespace sparsifiner
