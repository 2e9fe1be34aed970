/*
 * Launcher of the TopKMaskedAttention kernels: validation, workspace, kernel choice,
 * shared-memory opt-in and the launches (basis compression, the 2-D kernel's basis packing, attention).
 * Also holds the row-wise (all types) instantiations.
 */
#include "topkMaskedAttentionDispatch.h"
#include "topkMaskedAttentionGrid.cuh"
#include "topkMaskedAttentionKernel.h"
#include "topkMaskedAttentionRowwise.cuh"

namespace sparsifiner
{
namespace kernels
{
namespace
{

constexpr size_t kDEFAULT_SMEM_LIMIT{48 * 1024};

AttentionKernel getRowwiseKernel(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return &rowwiseTopKAttentionKernel<float>;
    case DataType::kHALF: return &rowwiseTopKAttentionKernel<__half>;
    case DataType::kBF16: return &rowwiseTopKAttentionKernel<__nv_bfloat16>;
    }
    return nullptr;
}

AttentionKernel getKernel(LaunchPlan const& plan, TopKMaskedAttentionParams const& p)
{
    if (plan.algo == AttentionAlgo::kROWWISE)
    {
        return getRowwiseKernel(p.dataType);
    }
    if (plan.algo == AttentionAlgo::kTILED2D)
    {
        return p.dataType == DataType::kHALF ? getTile2dKernelHalf(p.headDim) : getTile2dKernelBf16(p.headDim);
    }
    if (p.dataType == DataType::kHALF)
    {
        return getTiledKernelHalf(p.headDim);
    }
    if (p.dataType == DataType::kBF16)
    {
        return getTiledKernelBf16(p.headDim);
    }
    return nullptr;
}

} // namespace
} // namespace kernels

namespace plugin
{

size_t getTopKMaskedAttentionWorkspaceSize(TopKMaskedAttentionParams const& params) noexcept
{
    return kernels::workspaceBytes(params);
}

char const* validateTopKMaskedAttention(TopKMaskedAttentionParams const& params) noexcept
{
    return kernels::validateParams(params);
}

AttentionAlgo resolveTopKMaskedAttentionAlgo(
    TopKMaskedAttentionParams const& params, int32_t maxSharedBytes, char const** reason) noexcept
{
    char const* why = kernels::validateParams(params);
    kernels::LaunchPlan plan{};
    if (why == nullptr)
    {
        plan = kernels::planLaunch(params, maxSharedBytes);
        why = plan.reason;
    }
    if (reason != nullptr)
    {
        *reason = why;
    }
    return why == nullptr ? plan.algo : AttentionAlgo::kAUTO;
}

cudaError_t launchTopKMaskedAttention(TopKMaskedAttentionParams const& params, cudaStream_t stream) noexcept
{
    using namespace kernels;
    if (validateParams(params) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    int32_t device{0};
    int32_t maxSmem{0};
    cudaError_t status = cudaGetDevice(&device);
    if (status == cudaSuccess)
    {
        status = cudaDeviceGetAttribute(&maxSmem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    }
    if (status != cudaSuccess)
    {
        return status;
    }
    LaunchPlan const plan = planLaunch(params, maxSmem);
    AttentionKernel const kernel = plan.reason == nullptr ? getKernel(plan, params) : nullptr;
    if (kernel == nullptr)
    {
        return cudaErrorInvalidValue;
    }

    auto* workspace = static_cast<uint8_t*>(params.workspace);
    auto* counts = reinterpret_cast<int32_t*>(workspace);
    auto* entries = reinterpret_cast<CsrEntry*>(
        workspace + alignUp(static_cast<size_t>(params.rank) * sizeof(int32_t), kWORKSPACE_ALIGN));
    compressBasisKernel<<<static_cast<uint32_t>(params.rank), kCSR_THREADS,
        kCSR_THREADS / kWARP_SIZE * sizeof(int32_t), stream>>>(
        params.basis, params.basisType, params.numTokens, counts, entries);
    if (plan.algo == AttentionAlgo::kTILED2D)
    {
        GridBasis const g = gridBasisOf(params);
        gridStatsKernel<<<static_cast<uint32_t>(g.statBlocks), kT2_STAT_THREADS,
            kT2_STAT_THREADS / kWARP_SIZE * sizeof(int4), stream>>>(
            params.basis, params.basisType, params.numTokens, params.rank, g.colExp, g.stats);
        gridPackKernel<<<static_cast<uint32_t>((g.npad + kT2_STAT_THREADS - 1) / kT2_STAT_THREADS), kT2_STAT_THREADS,
            kT2_STAT_THREADS / kWARP_SIZE * sizeof(int4), stream>>>(
            params.basis, params.basisType, params.numTokens, params.rank, g);
    }

    if (plan.smemBytes > kDEFAULT_SMEM_LIMIT)
    {
        status = cudaFuncSetAttribute(reinterpret_cast<void const*>(kernel),
            cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int32_t>(plan.smemBytes));
        if (status != cudaSuccess)
        {
            return status;
        }
    }
    kernel<<<static_cast<uint32_t>(plan.grid), static_cast<uint32_t>(plan.block), plan.smemBytes, stream>>>(
        params, workspaceCsr(params), plan.warps);
    return cudaGetLastError();
}

} // namespace plugin
} // namespace sparsifiner
