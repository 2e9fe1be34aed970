/*
 * Per-row connectivity scores and exact top-B selection, one warp per row.
 *
 * Scores: s_j = sum_r coef_r * basis[r, j] over the nonzero coefficients of the row
 * and the nonzero basis entries only (the basis in compressed rows), accumulated in
 * fp32 in increasing r for every j. The reference adds the same products (plus exact
 * zeros) in another order, so the two can differ in the last bits of near-ties.
 *
 * Selection, O(N) per pass and no sort, ties to the lower key index as the reference's
 * stable sort does:
 *  - fast path (finite scores): the row's min and max, a 256-bin histogram over that
 *    range (bins are monotone in the score) finds the bin holding the B-th score; keys
 *    in higher bins are taken, and within that bin (if it has <= 32 keys) the best by
 *    (score, lower index) are found by exact ranking. Three passes over the row.
 *  - general path (NaN, inf, crowded bins, e.g. many exactly equal scores): radix select
 *    on order-preserving 32-bit keys, 8 bits at a time, starting below the bits all keys
 *    share and stopping as soon as the boundary digit holds exactly the keys still
 *    needed; a final pass in key order takes the keys above the threshold prefix and the
 *    first `need` keys equal to it.
 *
 * SPF_COUNT lines are the cost model's per-lane instruction counts of the surrounding
 * code, read from the sm_90 SASS of the tiled kernel (nothing on the GPU).
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
        SPF_COUNT(kSTS, 1);
        SPF_COUNT(kALU, 0.5); // unrolled 16x: a compare and an increment per 4 words
    }
    __syncwarp();
    for (int32_t r0 = 0; r0 < rank; r0 += kWARP_SIZE)
    {
        int32_t const r = r0 + static_cast<int32_t>(lane);
        float const c = r < rank ? loadAsFloat(coefRow, r, coefType) : 0.F;
        SPF_COUNT(kLDG, 1);
        SPF_COUNT(kG_BYTES, r < rank ? elementBytes(coefType) : 0);
        SPF_COUNT(kALU, 4);
        SPF_COUNT(kFMA, 2);
        SPF_COUNT(kOTHER, 2);
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
            SPF_COUNT(kLDG, 1);
            SPF_COUNT(kG_BYTES, 4);
            SPF_COUNT(kALU, 6);
            SPF_COUNT(kFMA, 2);
            SPF_COUNT(kOTHER, 3);
            // Keys are distinct within one basis row: no two lanes update the same score.
            for (int32_t e = static_cast<int32_t>(lane); e < count; e += kWARP_SIZE)
            {
                CsrEntry const entry = entries[e];
                float const s = __uint_as_float(sScore[entry.key]);
                sScore[entry.key] = __float_as_uint(fmaf(cr, entry.value, s));
                // 2 LDG (key, value), 2 IMAD (address), LDS, FFMA, STS; loop and 64-bit
                // address arithmetic ~1.5 per entry (unrolled by 4).
                SPF_COUNT(kLDG, 2);
                SPF_COUNT(kG_BYTES, 8);
                SPF_COUNT(kFMA, 3);
                SPF_COUNT(kLDS, 1);
                SPF_COUNT(kSTS, 1);
                SPF_COUNT(kALU, 1.5);
            }
            // Orders this basis row's updates before the next row's (fixed r order per key).
            __syncwarp();
        }
    }
}

//! The histogram bin holding the need-th largest counted key, bins scanned from the top:
//! above < need <= above + inDigit, where `above` counts the keys in higher bins. Lane l
//! owns bins [8l, 8l + 8). Needs sum(sHist) >= need >= 1. Warp-collective.
SPF_DEVICE void findBoundaryBin(
    uint32_t const* sHist, uint32_t need, uint32_t& digit, uint32_t& aboveDigit, uint32_t& inDigit)
{
    uint32_t const lane = laneId();
    uint32_t h[8];
    uint32_t local = 0U;
    SPF_UNROLL
    for (int32_t i = 0; i < 8; ++i)
    {
        h[i] = sHist[lane * 8 + i];
        local += h[i];
    }
    // 2 LDS.128 (8 wavefronts), 7 IADD; scan: 5 x (ISETP, SEL/IADD); the unrolled search
    // 8 x (IADD, ISETP, 3 SEL); ownership test, shuffles of the result.
    SPF_COUNT(kLDS, 2);
    SPF_COUNT(kSMEM_EXTRA, 6);
    SPF_COUNT(kALU, 7 + 10 + 40 + 4);
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
    digit = 0U;
    aboveDigit = 0U;
    inDigit = 0U;
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
    int32_t const owner = __ffs(__ballot_sync(kFULL_MASK, mine)) - 1;
    digit = __shfl_sync(kFULL_MASK, digit, owner);
    aboveDigit = __shfl_sync(kFULL_MASK, aboveDigit, owner);
    inDigit = __shfl_sync(kFULL_MASK, inDigit, owner);
}

//! Write one 32-key word of the selection bitmask (lane 0), and OR it into the union.
SPF_DEVICE void storeMaskWord(bool take, int32_t w, uint32_t* maskOut, uint32_t* unionOut)
{
    uint32_t const word = __ballot_sync(kFULL_MASK, take);
    SPF_COUNT(kALU, 2);
    SPF_COUNT(kOTHER, 2);
    SPF_COUNT(kSTS, 1); // predicated on lane 0: the warp still issues it
    if (laneId() == 0)
    {
        maskOut[w] = word;
        if (unionOut != nullptr)
        {
            atomicOr(&unionOut[w], word);
        }
    }
}

//! General selection: radix select on the ordered keys (any scores, NaN and inf too).
//! sKey holds fp32 score bits on entry and ordered keys on exit.
SPF_DEVICE void selectByRadix(uint32_t* sKey, uint32_t* sHist, uint32_t* maskOut, uint32_t* unionOut, int32_t numTokens,
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
        SPF_COUNT(kLDS, 1);
        SPF_COUNT(kSTS, 1);
        SPF_COUNT(kALU, 9); // orderedKey (5), valid test, AND/OR, loop
        SPF_COUNT(kOTHER, 1);
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
        SPF_COUNT(kALU, 2);
    }
    SPF_COUNT(kALU, 8);
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
                SPF_COUNT(kSTS, 1);
            }
            SPF_COUNT(kALU, 8);
            __syncwarp();
            for (int32_t w = 0; w < nWords; ++w)
            {
                int32_t const j = w * kWARP_SIZE + static_cast<int32_t>(lane);
                uint32_t const key = sKey[j];
                bool const counted = j < numTokens && (key & prefMask) == pref;
                SPF_ATOMS_CONFLICT(&sHist[(key >> lo) & digitMask], counted);
                SPF_COUNT(kLDS, 1);
                SPF_COUNT(kALU, 6); // bounds, prefix test, digit (SHF, LOP), loop
                SPF_COUNT(kFMA, 1);
                SPF_COUNT(kOTHER, 3);
                if (counted)
                {
                    atomicAdd(&sHist[(key >> lo) & digitMask], 1U);
                }
            }
            __syncwarp();
            uint32_t digit;
            uint32_t aboveDigit;
            uint32_t inDigit;
            findBoundaryBin(sHist, need, digit, aboveDigit, inDigit);
            need -= aboveDigit;
            pref |= digit << lo;
            prefMask |= digitMask << lo;
            SPF_COUNT(kALU, 10);
            SPF_COUNT(kOTHER, 3);
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
        SPF_COUNT(kLDS, 1);
        SPF_COUNT(kALU, 10);
        uint32_t const equalBits = __ballot_sync(kFULL_MASK, equal);
        bool const take = above || (equal && running + __popc(equalBits & lanemaskLt()) < need);
        running += __popc(equalBits);
        storeMaskWord(take, w, maskOut, unionOut);
    }
    __syncwarp();
}

//! Linear bin of a finite score in [lo, hi]: monotone non-decreasing in s (a rounded
//! subtraction, a rounded product by a positive constant, truncation), so a key in a
//! higher bin is strictly larger than every key in a lower one.
SPF_DEVICE uint32_t linearBin(float s, float lo, float binScale)
{
    uint32_t const b = static_cast<uint32_t>((s - lo) * binScale);
    return b < kHIST_BINS - 1 ? b : kHIST_BINS - 1;
}

//! Fast selection for finite scores spanning [lo, hi], hi > lo: one 256-bin histogram
//! over the value range finds the boundary bin; keys in higher bins are taken; within
//! the boundary bin the `need` best by (key, lower index) are found by exact ranking
//! when it holds at most 32 keys. Returns false (nothing written but sHist) when the
//! boundary bin is larger (ties, clusters): the caller then uses selectByRadix.
SPF_DEVICE bool selectByBins(uint32_t const* sScore, uint32_t* sHist, uint32_t* maskOut, uint32_t* unionOut,
    int32_t numTokens, int32_t nWords, int32_t budget, float lo, float binScale)
{
    uint32_t const lane = laneId();
    for (int32_t b = static_cast<int32_t>(lane); b < kHIST_BINS; b += kWARP_SIZE)
    {
        sHist[b] = 0U;
        SPF_COUNT(kSTS, 1);
    }
    SPF_COUNT(kALU, 8);
    __syncwarp();
    for (int32_t w = 0; w < nWords; ++w)
    {
        int32_t const j = w * kWARP_SIZE + static_cast<int32_t>(lane);
        // SASS: BSSY, BRA, LDS, FADD, FMUL, F2I, VIMNMX, IMAD.IADD, IMAD, ATOMS, BSYNC;
        // loop overhead ~1.5 per word (unrolled by 4).
        SPF_ATOMS_CONFLICT(&sHist[j < numTokens ? linearBin(__uint_as_float(sScore[j]), lo, binScale) : 0], j < numTokens);
        SPF_COUNT(kLDS, 1);
        SPF_COUNT(kFMA, 4);
        SPF_COUNT(kCVT, 1);
        SPF_COUNT(kALU, 2.5);
        SPF_COUNT(kOTHER, 3);
        if (j < numTokens)
        {
            atomicAdd(&sHist[linearBin(__uint_as_float(sScore[j]), lo, binScale)], 1U);
        }
    }
    __syncwarp();
    uint32_t digit;
    uint32_t aboveDigit;
    uint32_t inDigit;
    findBoundaryBin(sHist, static_cast<uint32_t>(budget), digit, aboveDigit, inDigit);
    uint32_t const need = static_cast<uint32_t>(budget) - aboveDigit;
    __syncwarp();
    bool const wholeBin = inDigit == need;
    if (!wholeBin && inDigit > static_cast<uint32_t>(kWARP_SIZE))
    {
        return false;
    }

    // The boundary element: the need-th best (key desc, index asc) member of the bin.
    uint32_t boundKey = 0U;
    uint32_t boundIdx = 0U;
    if (!wholeBin)
    {
        uint32_t count = 0U;
        for (int32_t w = 0; w < nWords; ++w)
        {
            int32_t const j = w * kWARP_SIZE + static_cast<int32_t>(lane);
            uint32_t const bits = j < numTokens ? sScore[j] : 0U;
            bool const member = j < numTokens && linearBin(__uint_as_float(bits), lo, binScale) == digit;
            SPF_COUNT(kLDS, 1);
            SPF_COUNT(kFMA, 2);
            SPF_COUNT(kCVT, 1);
            SPF_COUNT(kALU, 12); // bin compare, orderedKey, slot arithmetic, lanemask
            SPF_COUNT(kSTS, 2);  // predicated member stores
            SPF_COUNT(kOTHER, 2);
            uint32_t const members = __ballot_sync(kFULL_MASK, member);
            if (member)
            {
                uint32_t const slot = count + __popc(members & lanemaskLt()); // < inDigit <= 32
                sHist[2 * slot] = orderedKey(bits);
                sHist[2 * slot + 1] = static_cast<uint32_t>(j);
            }
            count += __popc(members);
        }
        __syncwarp();
        bool const have = lane < inDigit;
        uint32_t const myKey = have ? sHist[2 * lane] : 0U;
        uint32_t const myIdx = have ? sHist[2 * lane + 1] : 0xFFFFFFFFU;
        SPF_COUNT(kLDS, 1);
        SPF_COUNT(kALU, 4);
        uint32_t rank = 0U;
        for (uint32_t t = 0; t < inDigit; ++t) // inDigit is warp-uniform
        {
            uint32_t const k = __shfl_sync(kFULL_MASK, myKey, static_cast<int32_t>(t));
            uint32_t const i = __shfl_sync(kFULL_MASK, myIdx, static_cast<int32_t>(t));
            rank += (k > myKey || (k == myKey && i < myIdx)) ? 1U : 0U;
            SPF_COUNT(kALU, 6);
        }
        SPF_COUNT(kALU, 4);
        // Members have distinct (key, index) pairs, so their ranks are 0 .. inDigit - 1.
        int32_t const owner = __ffs(__ballot_sync(kFULL_MASK, have && rank == need - 1)) - 1;
        boundKey = __shfl_sync(kFULL_MASK, myKey, owner);
        boundIdx = __shfl_sync(kFULL_MASK, myIdx, owner);
    }

    for (int32_t w = 0; w < nWords; ++w)
    {
        int32_t const j = w * kWARP_SIZE + static_cast<int32_t>(lane);
        bool take = false;
        // LDS, FADD, FMUL, F2I, VIMNMX, the bin compares, orderedKey and the index test
        // (predicated), branch bookkeeping.
        SPF_COUNT(kLDS, 1);
        SPF_COUNT(kFMA, 2);
        SPF_COUNT(kCVT, 1);
        SPF_COUNT(kALU, 12);
        SPF_COUNT(kOTHER, 3);
        if (j < numTokens)
        {
            uint32_t const bits = sScore[j];
            uint32_t const b = linearBin(__uint_as_float(bits), lo, binScale);
            if (b > digit)
            {
                take = true;
            }
            else if (b == digit)
            {
                uint32_t const key = orderedKey(bits);
                take = wholeBin || key > boundKey || (key == boundKey && static_cast<uint32_t>(j) <= boundIdx);
            }
        }
        storeMaskWord(take, w, maskOut, unionOut);
    }
    __syncwarp();
    return true;
}

//! Select the `budget` largest scores of one row (see the file comment). sKey holds the
//! row's fp32 score bits on entry (ordered keys on exit if the radix path ran); sHist is
//! 256 words of scratch. Writes the selection bitmask maskOut[0 .. nWords) and ORs it
//! into unionOut (if not null; shared memory visible to the block).
SPF_DEVICE void selectTopK(uint32_t* sKey, uint32_t* sHist, uint32_t* maskOut, uint32_t* unionOut, int32_t numTokens,
    int32_t nWords, int32_t budget)
{
    uint32_t const lane = laneId();
    float lo = __builtin_huge_valf();
    float hi = -__builtin_huge_valf();
    bool nonFinite = false;
    for (int32_t w = 0; w < nWords; ++w)
    {
        int32_t const j = w * kWARP_SIZE + static_cast<int32_t>(lane);
        // SASS: BSSY, PRMT, BRA, LDS, MOV, PRMT, FSETP, 2 FMNMX, PRMT, BSYNC; loop ~2.5/word.
        SPF_COUNT(kLDS, 1);
        SPF_COUNT(kALU, 8.5);
        SPF_COUNT(kFMA, 1);
        SPF_COUNT(kOTHER, 3);
        if (j < numTokens)
        {
            float const s = __uint_as_float(sKey[j]);
            if (fabsf(s) <= kFLOAT_MAX)
            {
                lo = fminf(lo, s);
                hi = fmaxf(hi, s);
            }
            else
            {
                nonFinite = true;
            }
        }
    }
    for (int32_t off = 16; off > 0; off >>= 1)
    {
        lo = fminf(lo, __shfl_xor_sync(kFULL_MASK, lo, off));
        hi = fmaxf(hi, __shfl_xor_sync(kFULL_MASK, hi, off));
        SPF_COUNT(kALU, 2);
    }
    SPF_COUNT(kFMA, 2); // hi - lo, 256 / (hi - lo) (with MUFU.RCP)
    SPF_COUNT(kMUFU, 1);
    SPF_COUNT(kALU, 6);
    SPF_COUNT(kOTHER, 4);
    nonFinite = __ballot_sync(kFULL_MASK, nonFinite) != 0U;
    // hi - lo must be finite (it overflows for scores near +-FLT_MAX) and 256 / (hi - lo)
    // too (it overflows for a tiny range); otherwise, and for all-equal rows, use the radix.
    float const binScale = static_cast<float>(kHIST_BINS) / (hi - lo);
    if (!nonFinite && hi > lo && binScale > 0.F && binScale <= kFLOAT_MAX
        && selectByBins(sKey, sHist, maskOut, unionOut, numTokens, nWords, budget, lo, binScale))
    {
        return;
    }
    __syncwarp();
    selectByRadix(sKey, sHist, maskOut, unionOut, numTokens, nWords, budget);
}

} // namespace kernels
} // namespace sparsifiner
