/*
 * The row-wise TopKMaskedAttention kernel (all types, CUDA cores) and the basis
 * compression kernel both paths use.
 *
 * Row-wise: one warp per query row. It selects the row's keys (same selection code as
 * the tiled kernel), lists them in increasing index, then runs an online softmax over
 * groups of 32 keys: each lane computes one logit (a full dot product in fp32), and the
 * warp accumulates p_j * v_j with lanes spread over the head dimension. It is the fp32
 * path, the fallback when the tiled kernel's shared memory does not fit, and a second,
 * simpler implementation to check the tiled kernel against on a GPU.
 */
#pragma once

#include "topkMaskedAttentionSelect.cuh"

namespace sparsifiner
{
namespace kernels
{

//! The basis in compressed rows (see BasisCsr), one block per basis row; entries keep
//! increasing key order (the scores do not depend on it, determinism does).
SPF_GLOBAL void SPF_LAUNCH_BOUNDS(kCSR_THREADS)
    compressBasisKernel(void const* basis, DataType basisType, int32_t n, int32_t* counts, CsrEntry* entries)
{
    SPF_DYNAMIC_SMEM(smem);
    int32_t* sTotals = reinterpret_cast<int32_t*>(smem);
    int32_t const tid = static_cast<int32_t>(threadIdx.x);
    int32_t const warp = tid / kWARP_SIZE;
    uint32_t const lane = laneId();
    int64_t const row = blockIdx.x;
    CsrEntry* dst = entries + row * n;
    int32_t carry = 0;
    for (int32_t base = 0; base < n; base += kCSR_THREADS)
    {
        int32_t const j = base + tid;
        float const w = j < n ? loadAsFloat(basis, row * n + j, basisType) : 0.F;
        bool const nonzero = w != 0.F; // -0 is dropped like +0; NaN is kept
        SPF_COUNT(kLDG, 2);
        SPF_COUNT(kG_BYTES, j < n ? elementBytes(basisType) + (nonzero ? 8 : 0) : 0);
        SPF_COUNT(kALU, 12 + 8 * 2);
        SPF_COUNT(kFMA, 6);
        SPF_COUNT(kLDS, 2);
        SPF_COUNT(kSMEM_EXTRA, 2);
        SPF_COUNT(kSTS, 1);
        SPF_COUNT(kOTHER, 4);
        uint32_t const bits = __ballot_sync(kFULL_MASK, nonzero);
        if (lane == 0)
        {
            sTotals[warp] = __popc(bits);
        }
        __syncthreads();
        int32_t offset = carry;
        int32_t total = 0;
        for (int32_t i = 0; i < kCSR_THREADS / kWARP_SIZE; ++i)
        {
            offset += i < warp ? sTotals[i] : 0;
            total += sTotals[i];
        }
        if (nonzero)
        {
            CsrEntry entry;
            entry.key = j;
            entry.value = w;
            dst[offset + __popc(bits & lanemaskLt())] = entry;
        }
        carry += total;
        __syncthreads();
    }
    if (tid == 0)
    {
        counts[row] = carry;
    }
}

//! q . row in fp32, q already in fp32 (shared memory, broadcast), row read as 16-byte vectors.
template <typename T>
SPF_DEVICE float dotRow(T const* row, float const* q, int32_t d)
{
    constexpr int32_t kPER_VEC = 16 / static_cast<int32_t>(sizeof(T));
    float acc = 0.F;
    for (int32_t i = 0; i < d; i += kPER_VEC)
    {
        uint4 const raw = *reinterpret_cast<uint4 const*>(row + i);
        T vals[kPER_VEC];
        memcpy(static_cast<void*>(vals), &raw, sizeof(raw));
        SPF_UNROLL
        for (int32_t e = 0; e < kPER_VEC; ++e)
        {
            acc = fmaf(ElemTraits<T>::toFloat(vals[e]), q[i + e], acc);
        }
    }
    return acc;
}

template <typename T>
SPF_GLOBAL void SPF_LAUNCH_BOUNDS(kROW_MAX_WARPS* kWARP_SIZE)
    rowwiseTopKAttentionKernel(TopKMaskedAttentionParams const p, BasisCsr const csr, int32_t const warps)
{
    using Traits = ElemTraits<T>;
    constexpr int32_t kDIMS_PER_LANE{kMAX_HEAD_DIM / kWARP_SIZE};
    SPF_DYNAMIC_SMEM(smem);

    int32_t const n = p.numTokens;
    int32_t const d = p.headDim;
    int32_t const cls = p.clsRows;
    int32_t const nWords = numWords(n);
    RowwiseLayout const layout = rowwiseLayout(n);
    int32_t const warp = static_cast<int32_t>(threadIdx.x) / kWARP_SIZE;
    uint32_t const lane = laneId();
    uint8_t* mine = smem + warp * layout.perWarp;
    uint32_t* sScore = reinterpret_cast<uint32_t*>(mine + layout.scores);
    uint32_t* sHist = reinterpret_cast<uint32_t*>(mine + layout.hist);
    uint32_t* sMask = reinterpret_cast<uint32_t*>(mine + layout.mask);
    float* sQ = reinterpret_cast<float*>(mine + layout.q);

    int32_t const rowsPerBlock = warps * kROWS_PER_WARP;
    int64_t const blocksPerHead = ceilDiv(n, rowsPerBlock);
    int64_t const bh = static_cast<int64_t>(blockIdx.x) / blocksPerHead;
    int32_t const rowBlock = static_cast<int32_t>(static_cast<int64_t>(blockIdx.x) % blocksPerHead);
    int64_t const headOffset = bh * n * d;
    T const* qHead = static_cast<T const*>(p.q) + headOffset;
    T const* kHead = static_cast<T const*>(p.k) + headOffset;
    T const* vHead = static_cast<T const*>(p.v) + headOffset;
    T* outHead = static_cast<T*>(p.out) + headOffset;
    size_t const coefElem = static_cast<size_t>(elementBytes(p.coefType));

    for (int32_t i = 0; i < kROWS_PER_WARP; ++i)
    {
        int32_t const row = rowBlock * rowsPerBlock + i * warps + warp;
        if (row >= n)
        {
            break; // warp-uniform; this kernel has no block-wide barrier
        }
        bool const dense = row < cls || p.budget >= n;
        int32_t count = n;
        SPF_COUNT(kROWS, lane == 0 ? 1 : 0);
        SPF_COUNT(kALU, 20);
        SPF_COUNT(kFMA, 8);
        if (!dense)
        {
            SPF_PHASE(kSCORES);
            int64_t const coefRow = (bh * (n - cls) + (row - cls)) * static_cast<int64_t>(p.rank);
            void const* coef = static_cast<uint8_t const*>(p.coef) + coefRow * coefElem;
            computeRowScores(sScore, coef, p.coefType, p.rank, csr, nWords);
            SPF_PHASE(kSELECT);
            selectTopK(sScore, sHist, sMask, nullptr, n, nWords, p.budget);
            SPF_PHASE(kUNION);
            // The selected keys as a list over the (no longer needed) keys.
            uint32_t running = 0U;
            for (int32_t w = 0; w < nWords; ++w)
            {
                uint32_t const bits = sMask[w];
                SPF_COUNT(kLDS, 1);
                SPF_COUNT(kALU, 6);
                SPF_COUNT(kSTS, 1);
                SPF_COUNT(kOTHER, 2);
                if ((bits >> lane) & 1U)
                {
                    sScore[running + __popc(bits & lanemaskLt())] = static_cast<uint32_t>(w * kWARP_SIZE) + lane;
                }
                running += __popc(bits);
            }
            count = static_cast<int32_t>(running);
        }
        SPF_PHASE(kATTEND);
        for (int32_t c = static_cast<int32_t>(lane); c < d; c += kWARP_SIZE)
        {
            sQ[c] = Traits::toFloat(qHead[static_cast<int64_t>(row) * d + c]);
            SPF_COUNT(kLDG, 1);
            SPF_COUNT(kG_BYTES, sizeof(T));
            SPF_COUNT(kSTS, 1);
            SPF_COUNT(kALU, 4);
        }
        __syncwarp();

        float m = kNEG_INF;
        float l = 0.F;
        float acc[kDIMS_PER_LANE];
        SPF_UNROLL
        for (int32_t c = 0; c < kDIMS_PER_LANE; ++c)
        {
            acc[c] = 0.F;
        }
        for (int32_t base = 0; base < count; base += kWARP_SIZE)
        {
            int32_t const u = base + static_cast<int32_t>(lane);
            bool const valid = u < count;
            int32_t const key = valid ? (dense ? u : static_cast<int32_t>(sScore[u])) : 0;
            float const logit
                = valid ? dotRow<T>(kHead + static_cast<int64_t>(key) * d, sQ, d) * p.scale : kNEG_INF;
            // d / (16 / sizeof(T)) LDG.128 of the key row, d FFMA (+ conversions for fp16/bf16:
            // HADD2.F32 on the FMA pipe), d LDS of q (broadcast, 4 per LDS.128).
            SPF_COUNT(kLDG, d * static_cast<int32_t>(sizeof(T)) / 16);
            SPF_COUNT(kG_BYTES, valid ? d * static_cast<int32_t>(sizeof(T)) : 0);
            SPF_COUNT(kFMA, d * (sizeof(T) == 4 ? 1 : 2) + 4);
            SPF_COUNT(kLDS, d / 4);
            SPF_COUNT(kALU, 8);
            float groupMax = logit;
            for (int32_t off = 16; off > 0; off >>= 1)
            {
                groupMax = fmaxf(groupMax, __shfl_xor_sync(kFULL_MASK, groupMax, off));
            }
            float const mNew = fmaxf(m, groupMax);
            float const mUse = mNew == kNEG_INF ? 0.F : mNew;
            float const corr = expf(m - mUse);
            float const prob = valid ? expf(logit - mUse) : 0.F;
            float groupSum = prob;
            for (int32_t off = 16; off > 0; off >>= 1)
            {
                groupSum += __shfl_xor_sync(kFULL_MASK, groupSum, off);
            }
            l = l * corr + groupSum;
            m = mNew;
            SPF_COUNT(kALU, 5 * 2 + 6);
            SPF_COUNT(kFMA, 5 + 4 + kDIMS_PER_LANE);
            SPF_COUNT(kMUFU, 2);
            SPF_UNROLL
            for (int32_t c = 0; c < kDIMS_PER_LANE; ++c)
            {
                acc[c] *= corr;
            }
            int32_t const inGroup = minInt(kWARP_SIZE, count - base);
            for (int32_t t = 0; t < inGroup; ++t)
            {
                float const pt = __shfl_sync(kFULL_MASK, prob, t);
                int32_t const kt = __shfl_sync(kFULL_MASK, key, t);
                T const* vRow = vHead + static_cast<int64_t>(kt) * d;
                SPF_COUNT(kLDG, kDIMS_PER_LANE);
                SPF_COUNT(kG_BYTES, d * static_cast<int32_t>(sizeof(T)) / kWARP_SIZE);
                SPF_COUNT(kFMA, kDIMS_PER_LANE * 2 + 2);
                SPF_COUNT(kALU, kDIMS_PER_LANE + 2);
                SPF_UNROLL
                for (int32_t c = 0; c < kDIMS_PER_LANE; ++c)
                {
                    int32_t const dim = static_cast<int32_t>(lane) + c * kWARP_SIZE;
                    if (dim < d)
                    {
                        acc[c] = fmaf(pt, Traits::toFloat(vRow[dim]), acc[c]);
                    }
                }
            }
        }
        float const inv = l > 0.F ? 1.F / l : 0.F;
        SPF_UNROLL
        for (int32_t c = 0; c < kDIMS_PER_LANE; ++c)
        {
            int32_t const dim = static_cast<int32_t>(lane) + c * kWARP_SIZE;
            SPF_COUNT(kLDG, 1);
            SPF_COUNT(kG_BYTES, dim < d ? sizeof(T) : 0);
            SPF_COUNT(kFMA, 2);
            SPF_COUNT(kALU, 2);
            if (dim < d)
            {
                outHead[static_cast<int64_t>(row) * d + dim] = Traits::fromFloat(acc[c] * inv);
            }
        }
        __syncwarp(); // sScore, sMask and sQ are reused by the next row
    }
}

} // namespace kernels
} // namespace sparsifiner
