/*
 * Host-side planning of a TopKMaskedAttention launch (internal): workspace layout,
 * parameter validation, and the choice of kernel, grid and shared memory. Shared by the
 * launcher (topkMaskedAttentionKernel.cu) and the CPU emulator, so both plan alike.
 */
#pragma once

#include "topkMaskedAttentionCommon.cuh"

#include <cmath>

namespace sparsifiner
{
namespace kernels
{

constexpr size_t kWORKSPACE_ALIGN{256};

inline size_t csrBytes(TopKMaskedAttentionParams const& p)
{
    size_t const r = p.rank > 0 ? static_cast<size_t>(p.rank) : 0;
    size_t const n = p.numTokens > 0 ? static_cast<size_t>(p.numTokens) : 0;
    return alignUp(r * sizeof(int32_t), kWORKSPACE_ALIGN) + r * n * sizeof(CsrEntry);
}

inline size_t workspaceBytes(TopKMaskedAttentionParams const& p)
{
    int32_t const n = p.numTokens > 0 ? p.numTokens : 0;
    return gridOffsets(csrBytes(p), n, p.rank).end;
}

inline BasisCsr workspaceCsr(TopKMaskedAttentionParams const& p)
{
    auto* base = static_cast<uint8_t*>(p.workspace);
    BasisCsr csr{};
    csr.counts = reinterpret_cast<int32_t const*>(base);
    csr.entries
        = reinterpret_cast<CsrEntry const*>(base + alignUp(static_cast<size_t>(p.rank) * sizeof(int32_t), kWORKSPACE_ALIGN));
    csr.stride = p.numTokens;
    return csr;
}

//! The v2 region of the workspace (valid for R <= kT2_MAX_RANK).
SPF_HOST_DEVICE GridBasis gridBasisOf(TopKMaskedAttentionParams const& p)
{
    size_t const r = static_cast<size_t>(p.rank);
    size_t const csr = alignUp(r * sizeof(int32_t), kWORKSPACE_ALIGN) + r * static_cast<size_t>(p.numTokens) * sizeof(CsrEntry);
    GridOffsets const o = gridOffsets(csr, p.numTokens, p.rank);
    auto* base = static_cast<uint8_t*>(p.workspace);
    GridBasis g{};
    g.stats = reinterpret_cast<int4*>(base + o.stats);
    g.flags = reinterpret_cast<int32_t*>(base + o.flags);
    g.colExp = reinterpret_cast<int32_t*>(base + o.colExp);
    g.packed = reinterpret_cast<__half*>(base + o.packed);
    g.statBlocks = (p.numTokens + kT2_STAT_THREADS - 1) / kT2_STAT_THREADS;
    g.rpad = paddedRank(p.rank);
    g.npad = paddedKeys(p.numTokens);
    return g;
}

inline char const* validateParams(TopKMaskedAttentionParams const& p)
{
    if (!p.q || !p.k || !p.v || !p.coef || !p.basis || !p.out)
    {
        return "q, k, v, coef, basis and out must all be non-null device pointers";
    }
    if (!isSupportedType(p.dataType) || !isSupportedType(p.coefType) || !isSupportedType(p.basisType))
    {
        return "data types must be float32, float16 or bfloat16";
    }
    if (p.batchHeads < 1 || p.numTokens < 1 || p.rank < 1)
    {
        return "batch*heads, N and R must all be >= 1";
    }
    if (p.numTokens > plugin::kMAX_TOKENS)
    {
        return "N (number of tokens) must be <= 65535";
    }
    if (!isSupportedHeadDim(p.headDim))
    {
        return "head dim must be one of 32, 48, 64, 80, 96, 128";
    }
    if (p.budget < 1 || p.budget > p.numTokens)
    {
        return "budget must be in [1, N]";
    }
    if (p.clsRows < 0 || p.clsRows >= p.numTokens)
    {
        return "cls_rows must be in [0, N)";
    }
    if (!(p.scale > 0.F))
    {
        return "scale must be positive";
    }
    if (p.algo != AttentionAlgo::kAUTO && p.algo != AttentionAlgo::kTILED && p.algo != AttentionAlgo::kROWWISE
        && p.algo != AttentionAlgo::kTILED2D)
    {
        return "unknown algorithm";
    }
    if ((p.algo == AttentionAlgo::kTILED || p.algo == AttentionAlgo::kTILED2D) && p.dataType == DataType::kFLOAT)
    {
        return "the tiled (tensor-core) kernels support float16 and bfloat16 only";
    }
    if (p.workspace == nullptr || p.workspaceBytes < workspaceBytes(p))
    {
        return "workspace is missing or smaller than getTopKMaskedAttentionWorkspaceSize()";
    }
    if ((reinterpret_cast<uintptr_t>(p.workspace) % kWORKSPACE_ALIGN) != 0)
    {
        return "workspace must be 256-byte aligned";
    }
    uintptr_t const vecAlign = reinterpret_cast<uintptr_t>(p.q) | reinterpret_cast<uintptr_t>(p.k)
        | reinterpret_cast<uintptr_t>(p.v) | reinterpret_cast<uintptr_t>(p.out);
    if ((vecAlign % 16) != 0)
    {
        return "q, k, v and out must be 16-byte aligned";
    }
    return nullptr;
}

struct LaunchPlan
{
    AttentionAlgo algo{AttentionAlgo::kAUTO};
    int64_t grid{0};
    int32_t block{0};
    int32_t warps{0};
    size_t smemBytes{0};
    char const* reason{nullptr};
};

constexpr int64_t kMAX_GRID_X{2147483647};

inline LaunchPlan planRowwise(TopKMaskedAttentionParams const& p, int32_t maxSmem)
{
    LaunchPlan plan{};
    size_t const perWarp = rowwiseLayout(p.numTokens).perWarp;
    int32_t warps = kROW_MAX_WARPS;
    while (warps > 1 && perWarp * warps > static_cast<size_t>(maxSmem))
    {
        --warps;
    }
    if (perWarp * warps > static_cast<size_t>(maxSmem))
    {
        plan.reason = "N is too large: one row's scores do not fit in shared memory";
        return plan;
    }
    int64_t const blocksPerHead = ceilDiv(p.numTokens, static_cast<int64_t>(warps) * kROWS_PER_WARP);
    if (p.batchHeads > kMAX_GRID_X / blocksPerHead)
    {
        plan.reason = "batch*heads*row blocks exceeds the CUDA grid limit";
        return plan;
    }
    plan.algo = AttentionAlgo::kROWWISE;
    plan.warps = warps;
    plan.block = warps * kWARP_SIZE;
    plan.grid = p.batchHeads * blocksPerHead;
    plan.smemBytes = perWarp * warps;
    return plan;
}

inline LaunchPlan planTiled(TopKMaskedAttentionParams const& p, int32_t maxSmem)
{
    LaunchPlan plan{};
    size_t const bytes = tiledLayout(p.numTokens, p.headDim, elementBytes(p.dataType)).total;
    int64_t const tiles = tilesPerHead(p.numTokens, p.clsRows);
    if (bytes > static_cast<size_t>(maxSmem))
    {
        plan.reason = "N is too large for the tiled kernel's shared memory";
        return plan;
    }
    if (p.batchHeads > kMAX_GRID_X / tiles)
    {
        plan.reason = "batch*heads*tiles exceeds the CUDA grid limit";
        return plan;
    }
    plan.algo = AttentionAlgo::kTILED;
    plan.warps = kTILE_WARPS;
    plan.block = kTILE_THREADS;
    plan.grid = p.batchHeads * tiles;
    plan.smemBytes = bytes;
    return plan;
}

//! The 2-D tile kernel (v2). plan.warps carries its list capacity per row (`cap`): room
//! for about 1.5x the candidates the sample's threshold lets through, at least the sample
//! and v1's fallback scratch, shrunk (not below budget + 32) until the block fits.
inline LaunchPlan planTile2d(TopKMaskedAttentionParams const& p, int32_t maxSmem)
{
    LaunchPlan plan{};
    int32_t const n = p.numTokens;
    if (p.dataType == DataType::kFLOAT)
    {
        plan.reason = "the 2-D tile kernel supports float16 and bfloat16 only";
        return plan;
    }
    if (gridSide(n, p.clsRows) == 0)
    {
        plan.reason = "the 2-D tile kernel needs the N - cls_rows non-CLS rows to form a square patch grid";
        return plan;
    }
    if (p.rank > kT2_MAX_RANK)
    {
        plan.reason = "the 2-D tile kernel supports R <= 64";
        return plan;
    }
    if (p.budget >= n)
    {
        plan.reason = "budget >= N is dense attention: the 2-D tile kernel selects keys (use the tiled kernel)";
        return plan;
    }
    int32_t const sampled = minInt(n, kT2_SAMPLE_KEYS);
    int32_t const sampleValid = sampled;
    double expected = p.budget;
    if (sampleValid < n)
    {
        double const mu = static_cast<double>(p.budget) * sampleValid / n;
        double const sigma = std::sqrt(mu * (1.0 - static_cast<double>(p.budget) / n));
        expected = std::ceil(mu + 3.0 * sigma + 2.0) * n / sampleValid;
    }
    int32_t const floorCap = maxInt(maxInt(tile2dMinCap(n), sampled), (p.budget + 32 + 31) / 32 * 32);
    int32_t cap = static_cast<int32_t>(std::ceil((1.5 * expected + 32.0) / 32.0)) * 32;
    cap = minInt(maxInt(cap, floorCap), maxInt(floorCap, (n + 31) / 32 * 32));
    auto bytes = [&](int32_t c) { return tile2dLayout(n, p.headDim, elementBytes(p.dataType), p.rank, c).total; };
    while (bytes(cap) > static_cast<size_t>(maxSmem) && cap - 32 >= floorCap)
    {
        cap -= 32;
    }
    if (bytes(cap) > static_cast<size_t>(maxSmem))
    {
        plan.reason = "N is too large for the 2-D tile kernel's shared memory";
        return plan;
    }
    int64_t const tiles = tiles2dPerHead(n, p.clsRows);
    if (p.batchHeads > kMAX_GRID_X / tiles)
    {
        plan.reason = "batch*heads*tiles exceeds the CUDA grid limit";
        return plan;
    }
    plan.algo = AttentionAlgo::kTILED2D;
    plan.warps = cap;
    plan.block = kTILE_THREADS;
    plan.grid = p.batchHeads * tiles;
    plan.smemBytes = bytes(cap);
    return plan;
}

inline LaunchPlan planLaunch(TopKMaskedAttentionParams const& p, int32_t maxSmem)
{
    if (p.algo == AttentionAlgo::kROWWISE || p.dataType == DataType::kFLOAT)
    {
        return planRowwise(p, maxSmem);
    }
    if (p.algo == AttentionAlgo::kTILED2D || p.algo == AttentionAlgo::kAUTO)
    {
        LaunchPlan tile2d = planTile2d(p, maxSmem);
        if (tile2d.reason == nullptr || p.algo == AttentionAlgo::kTILED2D)
        {
            return tile2d;
        }
    }
    LaunchPlan tiled = planTiled(p, maxSmem);
    if (tiled.reason == nullptr || p.algo == AttentionAlgo::kTILED)
    {
        return tiled;
    }
    return planRowwise(p, maxSmem);
}

} // namespace kernels
} // namespace sparsifiner
