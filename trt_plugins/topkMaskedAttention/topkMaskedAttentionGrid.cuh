/*
 * Preparation of the basis for the 2-D tile kernel (v2), run once per launch before it:
 * gridStatsKernel checks every column against the value grid (basis[:, j] = m * 2^e_j,
 * integers |m| <= 127) and reduces per block; gridPackKernel reduces those, sets the flags
 * (on grid, non-negative, E = min e_j) and packs basis / 2^E key-major in fp16, exact when
 * the exponents span at most 9 (every value is then an integer below 2^16).
 * Non-template kernels: include this header in one translation unit only.
 */
#pragma once

#include "topkMaskedAttentionPlan.h"

namespace sparsifiner
{
namespace kernels
{

constexpr int32_t kNO_EXPONENT{2147483647};   //!< an all-zero column
constexpr int32_t kBAD_EXPONENT{-2147483647}; //!< a column off the grid
constexpr int32_t kMAX_EXPONENT_SPREAD{9};     //!< 127 * 2^9 < 65504: fp16-exact

//! Smallest e with x <= 127 * 2^e, for finite x > 0.
SPF_DEVICE int32_t gridExponent(float x)
{
    int32_t ex = 0;
    float const f = frexpf(x, &ex); // x = f * 2^ex, f in [0.5, 1)
    int32_t e = ex - 7;             // x / 2^e = 128 f in [64, 128)
    if (f * 128.F > 127.F)
    {
        ++e;
    }
    return e;
}

//! Per column: the exponent e_j of the value grid (or a marker), and per block the min and
//! max exponent, whether every column is on the grid and whether the basis is >= 0.
SPF_GLOBAL void SPF_LAUNCH_BOUNDS(kT2_STAT_THREADS)
    gridStatsKernel(void const* basis, DataType basisType, int32_t n, int32_t rank, int32_t* colExp, int4* stats)
{
    SPF_DYNAMIC_SMEM(smem);
    int4* sRed = reinterpret_cast<int4*>(smem);
    int32_t const tid = static_cast<int32_t>(threadIdx.x);
    int32_t const j = static_cast<int32_t>(blockIdx.x) * kT2_STAT_THREADS + tid;
    int32_t e = kNO_EXPONENT;
    bool valid = true;
    bool nonneg = true;
    if (j < n)
    {
        float mx = 0.F;
        for (int32_t r = 0; r < rank; ++r)
        {
            float const b = loadAsFloat(basis, static_cast<int64_t>(r) * n + j, basisType);
            valid = valid && fabsf(b) <= kFLOAT_MAX; // NaN and inf fail
            nonneg = nonneg && !(b < 0.F);
            mx = fmaxf(mx, fabsf(b));
            SPF_COUNT(kLDG, 1);
            SPF_COUNT(kG_BYTES, elementBytes(basisType));
            SPF_COUNT(kALU, 6);
            SPF_COUNT(kFMA, 2);
        }
        if (valid && mx > 0.F)
        {
            e = gridExponent(mx);
            for (int32_t r = 0; r < rank; ++r)
            {
                float const m = ldexpf(loadAsFloat(basis, static_cast<int64_t>(r) * n + j, basisType), -e);
                valid = valid && m == rintf(m) && fabsf(m) <= 127.F;
                SPF_COUNT(kLDG, 1);
                SPF_COUNT(kG_BYTES, elementBytes(basisType));
                SPF_COUNT(kALU, 5);
                SPF_COUNT(kFMA, 2);
            }
        }
        colExp[j] = valid ? e : kBAD_EXPONENT;
    }
    int4 mine{e, e == kNO_EXPONENT ? -kNO_EXPONENT : e, valid ? 1 : 0, nonneg ? 1 : 0};
    for (int32_t off = 16; off > 0; off >>= 1)
    {
        mine.x = minInt(mine.x, __shfl_xor_sync(kFULL_MASK, mine.x, off));
        mine.y = maxInt(mine.y, __shfl_xor_sync(kFULL_MASK, mine.y, off));
        mine.z &= __shfl_xor_sync(kFULL_MASK, mine.z, off);
        mine.w &= __shfl_xor_sync(kFULL_MASK, mine.w, off);
    }
    if (laneId() == 0)
    {
        sRed[tid / kWARP_SIZE] = mine;
    }
    __syncthreads();
    if (tid == 0)
    {
        for (int32_t w = 1; w < kT2_STAT_THREADS / kWARP_SIZE; ++w)
        {
            mine.x = minInt(mine.x, sRed[w].x);
            mine.y = maxInt(mine.y, sRed[w].y);
            mine.z &= sRed[w].z;
            mine.w &= sRed[w].w;
        }
        stats[blockIdx.x] = mine;
    }
}

//! Every block reduces the column statistics (flags: block 0) and packs its keys:
//! packed[j][r] = basis[r][j] / 2^E in fp16 when the basis is on the grid, else zeros.
SPF_GLOBAL void SPF_LAUNCH_BOUNDS(kT2_STAT_THREADS)
    gridPackKernel(void const* basis, DataType basisType, int32_t n, int32_t rank, GridBasis const g)
{
    SPF_DYNAMIC_SMEM(smem);
    int4* sRed = reinterpret_cast<int4*>(smem);
    int32_t const tid = static_cast<int32_t>(threadIdx.x);
    int4 acc{kNO_EXPONENT, -kNO_EXPONENT, 1, 1};
    for (int32_t b = tid; b < g.statBlocks; b += kT2_STAT_THREADS)
    {
        int4 const s = g.stats[b];
        acc.x = minInt(acc.x, s.x);
        acc.y = maxInt(acc.y, s.y);
        acc.z &= s.z;
        acc.w &= s.w;
        SPF_COUNT(kLDG, 1);
        SPF_COUNT(kG_BYTES, 16);
        SPF_COUNT(kALU, 6);
    }
    for (int32_t off = 16; off > 0; off >>= 1)
    {
        acc.x = minInt(acc.x, __shfl_xor_sync(kFULL_MASK, acc.x, off));
        acc.y = maxInt(acc.y, __shfl_xor_sync(kFULL_MASK, acc.y, off));
        acc.z &= __shfl_xor_sync(kFULL_MASK, acc.z, off);
        acc.w &= __shfl_xor_sync(kFULL_MASK, acc.w, off);
    }
    if (laneId() == 0)
    {
        sRed[tid / kWARP_SIZE] = acc;
    }
    __syncthreads();
    for (int32_t w = 0; w < kT2_STAT_THREADS / kWARP_SIZE; ++w)
    {
        acc.x = minInt(acc.x, sRed[w].x);
        acc.y = maxInt(acc.y, sRed[w].y);
        acc.z &= sRed[w].z;
        acc.w &= sRed[w].w;
    }
    bool const anyNonzero = acc.x != kNO_EXPONENT;
    int32_t const e0 = anyNonzero ? acc.x : 0;
    bool const valid = acc.z != 0 && (!anyNonzero || acc.y - acc.x <= kMAX_EXPONENT_SPREAD);
    if (blockIdx.x == 0 && tid == 0)
    {
        g.flags[0] = valid ? 1 : 0;
        g.flags[1] = acc.w;
        g.flags[2] = e0;
        g.flags[3] = anyNonzero ? acc.y : 0;
    }
    int32_t const j = static_cast<int32_t>(blockIdx.x) * kT2_STAT_THREADS + tid;
    if (j < g.npad)
    {
        for (int32_t r0 = 0; r0 < g.rpad; r0 += 8)
        {
            __half h[8];
            SPF_UNROLL
            for (int32_t i = 0; i < 8; ++i)
            {
                int32_t const r = r0 + i;
                float const b = valid && j < n && r < rank ? loadAsFloat(basis, static_cast<int64_t>(r) * n + j, basisType) : 0.F;
                h[i] = __float2half_rn(ldexpf(b, -e0));
            }
            memcpy(static_cast<void*>(g.packed + static_cast<int64_t>(j) * g.rpad + r0), h, sizeof(h));
            SPF_COUNT(kLDG, 9);
            SPF_COUNT(kG_BYTES, 8 * elementBytes(basisType) + 16);
            SPF_COUNT(kFMA, 8);
            SPF_COUNT(kCVT, 8);
            SPF_COUNT(kALU, 12);
        }
    }
}

} // namespace kernels
} // namespace sparsifiner
