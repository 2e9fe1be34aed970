/*
 * Per-row connectivity scores and exact top-B selection, one warp per row.
 *
 * Scores: s_j = sum_r coef_r * basis[r, j] over the nonzero coefficients of the row
 * and the nonzero basis entries only (the basis in compressed rows), accumulated in
 * fp32 in increasing r for every j. The reference adds the same products (plus exact
 * zeros) in another order, so the two can differ in the last bits of near-ties.
 *
 * Selection: radix select on order-preserving 32-bit keys, 8 bits at a time, starting
 * below the bits all keys of the row share and stopping as soon as the boundary digit
 * holds exactly the keys still needed. A final pass in increasing key index takes all
 * keys above the threshold prefix and the first `need` keys equal to it, which is the
 * reference's stable-sort rule: ties go to the lower key index. O(N) per pass, no sort.
 */
#pragma once

#include "topkMaskedAttentionCommon.cuh"

namespace sparsifiner
{
namespace kernels
{

//! Order-preserving map from fp32 to uint32 (larger float -> larger key). torch.sort
//! ranks NaN above +inf and treats -0 and +0 as equal; so does this map.
SPF_DEVICE uint32_t orderedKey(uint32_t bits)
{
    if ((bits & 0x7FFFFFFFU) > 0x7F800000U)
    {
        return 0xFFFFFFFFU; // NaN
    }
    if ((bits << 1) == 0U)
    {
        bits = 0U; // -0 -> +0
    }
    return (bits & 0x80000000U) ? ~bits : (bits | 0x80000000U);
}

//! Scores of one row into sScore[0 .. 32 * numWords) as fp32 bit patterns (entries at
//! j >= N stay +0 and are never selected). coefRow points at the row's R coefficients.
SPF_DEVICE void computeRowScores(uint32_t* sScore, void const* coefRow, DataType coefType, int32_t rank,
    BasisCsr const& csr, int32_t nWords)
{
    uint32_t const lane = laneId();
    for (int32_t w = 0; w < nWords; ++w)
    {
        sScore[w * kWARP_SIZE + lane] = 0U;
    }
    __syncwarp();
    for (int32_t r0 = 0; r0 < rank; r0 += kWARP_SIZE)
    {
        int32_t const r = r0 + static_cast<int32_t>(lane);
        float const c = r < rank ? loadAsFloat(coefRow, r, coefType) : 0.F;
        // Zero coefficients contribute nothing; NaN compares unequal to 0 and is kept.
        uint32_t pending = __ballot_sync(kFULL_MASK, c != 0.F);
        while (pending != 0U)
        {
            int32_t const src = __ffs(pending) - 1;
            pending &= pending - 1U;
            float const cr = __shfl_sync(kFULL_MASK, c, src);
            int32_t const row = r0 + src;
            int32_t const count = csr.counts[row];
            CsrEntry const* entries = csr.entries + static_cast<int64_t>(row) * csr.stride;
            // Keys are distinct within one basis row: no two lanes update the same score.
            for (int32_t e = static_cast<int32_t>(lane); e < count; e += kWARP_SIZE)
            {
                CsrEntry const entry = entries[e];
                float const s = __uint_as_float(sScore[entry.key]);
                sScore[entry.key] = __float_as_uint(fmaf(cr, entry.value, s));
            }
            // Orders this basis row's updates before the next row's (fixed r order per key).
            __syncwarp();
        }
    }
}

//! Select the `budget` largest scores of one row (see the file comment). sKey holds the
//! row's fp32 score bits on entry and its ordered keys on exit; sHist is 256 words of
//! scratch. Writes the selection bitmask maskOut[0 .. nWords) and ORs it into unionOut
//! (if not null; shared memory visible to the block).
SPF_DEVICE void selectTopK(uint32_t* sKey, uint32_t* sHist, uint32_t* maskOut, uint32_t* unionOut, int32_t numTokens,
    int32_t nWords, int32_t budget)
{
    uint32_t const lane = laneId();

    // Keys, and the bits every key shares (AND == OR there).
    uint32_t andAll = 0xFFFFFFFFU;
    uint32_t orAll = 0U;
    for (int32_t w = 0; w < nWords; ++w)
    {
        int32_t const j = w * kWARP_SIZE + static_cast<int32_t>(lane);
        uint32_t const key = orderedKey(sKey[j]);
        sKey[j] = key;
        if (j < numTokens)
        {
            andAll &= key;
            orAll |= key;
        }
    }
    for (int32_t off = 16; off > 0; off >>= 1)
    {
        andAll &= __shfl_xor_sync(kFULL_MASK, andAll, off);
        orAll |= __shfl_xor_sync(kFULL_MASK, orAll, off);
    }
    __syncwarp();

    // Threshold prefix: keys whose top bits (prefMask) equal pref are the boundary class;
    // `need` of them are still to be taken, every key with a larger prefix is taken.
    uint32_t need = static_cast<uint32_t>(budget);
    uint32_t prefMask = 0xFFFFFFFFU;
    uint32_t pref = andAll;
    uint32_t const diff = andAll ^ orAll;
    if (diff != 0U)
    {
        int32_t top = 31 - __clz(diff);
        prefMask = ~((2U << top) - 1U); // 2U << 31 wraps to 0: mask 0 when the sign bits differ
        pref = andAll & prefMask;
        while (true)
        {
            int32_t const lo = top >= 7 ? top - 7 : 0;
            uint32_t const digitMask = (2U << (top - lo)) - 1U;
            for (int32_t b = static_cast<int32_t>(lane); b < kHIST_BINS; b += kWARP_SIZE)
            {
                sHist[b] = 0U;
            }
            __syncwarp();
            for (int32_t w = 0; w < nWords; ++w)
            {
                int32_t const j = w * kWARP_SIZE + static_cast<int32_t>(lane);
                uint32_t const key = sKey[j];
                if (j < numTokens && (key & prefMask) == pref)
                {
                    atomicAdd(&sHist[(key >> lo) & digitMask], 1U);
                }
            }
            __syncwarp();
            // Lane l owns bins [8l, 8l + 8); suffix sums over lanes find the digit holding
            // the need-th largest key: above < need <= above + hist[digit].
            uint32_t h[8];
            uint32_t local = 0U;
            SPF_UNROLL
            for (int32_t i = 0; i < 8; ++i)
            {
                h[i] = sHist[lane * 8 + i];
                local += h[i];
            }
            uint32_t inclusive = local;
            SPF_UNROLL
            for (int32_t off = 1; off < kWARP_SIZE; off <<= 1)
            {
                uint32_t const other = __shfl_down_sync(kFULL_MASK, inclusive, off);
                if (lane + off < static_cast<uint32_t>(kWARP_SIZE))
                {
                    inclusive += other;
                }
            }
            uint32_t const exclusive = inclusive - local;
            bool const mine = exclusive < need && need <= inclusive;
            uint32_t digit = 0U;
            uint32_t aboveDigit = 0U;
            uint32_t inDigit = 0U;
            {
                // Unrolled without a break so that h[] stays in registers.
                uint32_t acc = exclusive;
                bool found = !mine;
                SPF_UNROLL
                for (int32_t i = 7; i >= 0; --i)
                {
                    if (!found && acc + h[i] >= need)
                    {
                        digit = lane * 8 + static_cast<uint32_t>(i);
                        aboveDigit = acc;
                        inDigit = h[i];
                        found = true;
                    }
                    acc += h[i];
                }
            }
            int32_t const owner = __ffs(__ballot_sync(kFULL_MASK, mine)) - 1;
            digit = __shfl_sync(kFULL_MASK, digit, owner);
            aboveDigit = __shfl_sync(kFULL_MASK, aboveDigit, owner);
            inDigit = __shfl_sync(kFULL_MASK, inDigit, owner);
            need -= aboveDigit;
            pref |= digit << lo;
            prefMask |= digitMask << lo;
            __syncwarp();
            if (inDigit == need || lo == 0)
            {
                break; // the whole class is taken, or every key in it is equal
            }
            top = lo - 1;
        }
    }

    // Keys above the class are taken; within the class the first `need` in key order.
    uint32_t running = 0U;
    for (int32_t w = 0; w < nWords; ++w)
    {
        int32_t const j = w * kWARP_SIZE + static_cast<int32_t>(lane);
        bool const valid = j < numTokens;
        uint32_t const masked = sKey[j] & prefMask;
        bool const above = valid && masked > pref;
        bool const equal = valid && masked == pref;
        uint32_t const equalBits = __ballot_sync(kFULL_MASK, equal);
        bool const take = above || (equal && running + __popc(equalBits & lanemaskLt()) < need);
        running += __popc(equalBits);
        uint32_t const word = __ballot_sync(kFULL_MASK, take);
        if (lane == 0)
        {
            maskOut[w] = word;
            if (unionOut != nullptr)
            {
                atomicOr(&unionOut[w], word);
            }
        }
    }
    __syncwarp();
}

} // namespace kernels
} // namespace sparsifiner
