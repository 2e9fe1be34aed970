/*
 * The 2-D tile TopKMaskedAttention kernel (v2: fp16/bf16, tensor cores, sm_80+) and the
 * kernels that prepare its basis.
 *
 * Value grid (the exact-selection precondition): coef values are multiples of 2^-10 in
 * [0, 1], basis columns are m_rj * 2^e_j with integers |m_rj| <= 127. The prep kernels
 * check the basis, find E = min_j e_j, and pack t_rj = basis_rj / 2^E key-major in fp16
 * (exact: integers below 2^16 when the column exponents span <= 9). The main kernel checks
 * each row's coefficients (multiples of 2^-10, |c| <= 2, sum |c| * 1024 <= 2^16). For a
 * row on the grid every score t_j = sum_r c_r t_rj = s_j / 2^E is exact whatever the
 * summation order, so mma.m16n8k16 (fp16 in, fp32 accumulators) gives the reference's
 * scores up to the power-of-two factor, and the same top-B set. Rows off the grid (NaN,
 * inf, other values) take v1's exact per-row path (scatter scores + radix select).
 *
 * One block = an 8 x 8 square of patches of one (batch, head); warp w holds patch rows
 * 2w and 2w + 1 (16 rows, one m16 MMA row block). Per row, exactly:
 *  1. Sample: the scores of up to 256 keys on a lattice; tau = the lower edge of the
 *     1/512-octave bin (a 64-bin log histogram below the sample's maximum, then the next 6
 *     bits of the boundary bin) that holds the sample's mu + 3 sigma + 2-th largest (mu:
 *     the expected number of sampled keys above the B-th score).
 *  2. Filter (one pass over all keys, 128-key chunks): the accumulators start at -tau'
 *     (tau' a hair below tau; rows with non-negative coefficients and basis, where no
 *     cancellation can make the tensor core's sum inexact) or are compared with one FADD
 *     (other rows); the sign bits are funnel-shifted into 32-key words. Keys are permuted
 *     within a chunk so a lane's 32 accumulators are 32 consecutive keys: one SHF per
 *     score, one store per word. Candidates: score >= tau (a superset when tau' < tau).
 *     If tau <= 0 the filter keeps the positive scores (exact zeros are handled apart).
 *  3. Re-score: the union of the tile's candidate keys is scored again on tensor cores
 *     (gathered basis rows) and each row's candidates >= tau go to its list (score, key).
 *  4. Exact select on the list, per quad: a 64-bin log histogram above tau finds the bin
 *     of the B-th; the higher bins are taken, the boundary bin is compacted and ranked
 *     exactly by (score desc, key asc) (pairwise when short, else a 6-bit radix on the
 *     64-bit key (ordered score, ~key)); the row's mask is rewritten from the list. Rows whose B-th score is 0 (fewer than B positives,
 *     non-negative inputs) take their positives and the first zeros in key order.
 *  Rows where the threshold fails (fewer than B candidates, a list over `cap`), or
 *  signed rows needing zeros, take v1's path. Then attention as the v1 tiled kernel, over
 *  the union of the tile's 64 masks (attendTile). CLS rows get dense tiles as in v1.
 */
#pragma once

#include "topkMaskedAttentionPlan.h"
#include "topkMaskedAttentionTiled.cuh"

namespace sparsifiner
{
namespace kernels
{

// ---------------------------------------------------------------- the main kernel's pieces

//! How a row is selected, decided after the filter pass.
enum : uint32_t
{
    kMODE_EMPTY = 0U,    //!< no query row in this slot (edge tile)
    kMODE_TC = 1U,       //!< on the grid: tensor-core path (before the filter's verdict)
    kMODE_LIST = 2U,     //!< exact select on the row's candidate list
    kMODE_ZEROFILL = 3U, //!< fewer than B positive scores: positives + first zeros
    kMODE_FALLBACK = 4U, //!< v1's per-row path
};

constexpr uint32_t kFLAG_OFF_GRID{1U};
constexpr uint32_t kFLAG_NEGATIVE{2U};
constexpr float kPOSITIVE_CUT{4.8828125e-4F}; //!< 2^-11: half the grid step of scores / 2^E

//! Query row of slot s of 2-D tile (ty, tx), or -1 past the grid's edge.
SPF_HOST_DEVICE int32_t tile2dRow(int32_t slot, int32_t ty, int32_t tx, int32_t side, int32_t cls)
{
    int32_t const py = ty * kT2_TILE_SIDE + (slot >> 3);
    int32_t const px = tx * kT2_TILE_SIDE + (slot & 7);
    return py < side && px < side ? cls + py * side + px : -1;
}

//! Shared-memory row of key-chunk position for column c of n8 tile nt in the filter: lane
//! t of a quad then holds keys 32 t .. 32 t + 31 of the chunk (2 per n8 tile).
SPF_DEVICE int32_t permutedKey(int32_t nt, int32_t c)
{
    return 32 * (c >> 1) + 2 * nt + (c & 1);
}

//! The 64-bit selection key of a list entry: larger = earlier in (score desc, key asc).
SPF_DEVICE uint64_t listKey(float score, uint32_t key)
{
    return (static_cast<uint64_t>(orderedKey(__float_as_uint(score))) << 32) | static_cast<uint64_t>(~key);
}

//! Prefix rule found by quadSelect: an entry is taken iff (key & mask) >= pref.
struct ListBound
{
    uint64_t pref;
    uint64_t mask;
};

//! The bin holding the need-th largest entry of a quad's 64-bin histogram, bins scanned
//! from the top (lane q of the quad owns bins [16 q, 16 q + 16)): `above` entries lie in
//! higher bins, `inBin` in it. Warp-collective; quads with active false get zeros.
SPF_DEVICE void quadBoundary(
    uint32_t const* hist, uint32_t need, bool active, uint32_t& bin, uint32_t& above, uint32_t& inBin)
{
    int32_t const q = static_cast<int32_t>(laneId() & 3U);
    uint32_t const quadBase = laneId() & ~3U;
    uint32_t h[16];
    uint32_t local = 0U;
    SPF_UNROLL
    for (int32_t i = 0; i < 16; ++i)
    {
        h[i] = active ? hist[16 * q + i] : 0U;
        local += h[i];
    }
    SPF_COUNT(kLDS, 4); // 4 x LDS.128
    SPF_COUNT(kSMEM_EXTRA, 12);
    SPF_COUNT(kALU, 16);
    uint32_t higher = 0U;
    SPF_UNROLL
    for (int32_t k = 0; k < 4; ++k)
    {
        uint32_t const other = __shfl_sync(kFULL_MASK, local, static_cast<int32_t>(quadBase) + k);
        higher += k > q ? other : 0U;
    }
    bool const mine = active && higher < need && need <= higher + local;
    uint32_t myBin = 0U;
    uint32_t myAbove = 0U;
    uint32_t myIn = 0U;
    uint32_t acc = higher;
    bool found = !mine;
    SPF_UNROLL
    for (int32_t i = 15; i >= 0; --i)
    {
        if (!found && acc + h[i] >= need)
        {
            myBin = static_cast<uint32_t>(16 * q + i);
            myAbove = acc;
            myIn = h[i];
            found = true;
        }
        acc += h[i];
    }
    SPF_COUNT(kALU, 8 + 16 * 5);
    uint32_t const owners = (__ballot_sync(kFULL_MASK, mine) >> quadBase) & 0xFU;
    int32_t const owner = static_cast<int32_t>(quadBase) + (owners != 0U ? __ffs(static_cast<int>(owners)) - 1 : 0);
    bin = __shfl_sync(kFULL_MASK, myBin, owner);
    above = __shfl_sync(kFULL_MASK, myAbove, owner);
    inBin = __shfl_sync(kFULL_MASK, myIn, owner);
    SPF_COUNT(kALU, 6);
}

//! Exact need-th largest listKey among a row's `count` entries, per quad (each quad of a
//! warp its own row and histogram `hist`, kT2_HIST_BINS words). Radix select with 6-bit
//! digits from the highest bit where the entries differ; stops when the boundary digit
//! holds exactly the entries still needed (keys are unique, so it always does).
//! Warp-collective: every lane calls it; `active` false for quads with nothing to do.
//! Meant for the short lists left by quadSelectList's first round.
SPF_DEVICE ListBound quadRadix(
    float const* scores, uint16_t const* keys, int32_t count, int32_t need, bool active, uint32_t* hist)
{
    int32_t const q = static_cast<int32_t>(laneId() & 3U);
    ListBound res{0ULL, 0ULL};
    // Bits shared by every entry (AND == OR there).
    uint64_t andAll = ~0ULL;
    uint64_t orAll = 0ULL;
    if (active)
    {
        for (int32_t i = q; i < count; i += 4)
        {
            uint64_t const k = listKey(scores[i], keys[i]);
            andAll &= k;
            orAll |= k;
            SPF_COUNT(kLDS, 2);
            SPF_COUNT(kALU, 10);
        }
    }
    SPF_UNROLL
    for (int32_t off = 1; off < 4; off <<= 1)
    {
        uint32_t const aLo = __shfl_xor_sync(kFULL_MASK, static_cast<uint32_t>(andAll), off);
        uint32_t const aHi = __shfl_xor_sync(kFULL_MASK, static_cast<uint32_t>(andAll >> 32), off);
        uint32_t const oLo = __shfl_xor_sync(kFULL_MASK, static_cast<uint32_t>(orAll), off);
        uint32_t const oHi = __shfl_xor_sync(kFULL_MASK, static_cast<uint32_t>(orAll >> 32), off);
        andAll &= (static_cast<uint64_t>(aHi) << 32) | aLo;
        orAll |= (static_cast<uint64_t>(oHi) << 32) | oLo;
        SPF_COUNT(kALU, 6);
    }
    uint64_t const diff = andAll ^ orAll;
    bool done = !active || need >= count || diff == 0ULL;
    int32_t top = 63;
    if (!done)
    {
        top = 63 - __clzll(static_cast<long long>(diff));
        res.mask = top == 63 ? 0ULL : ~((2ULL << top) - 1ULL);
        res.pref = andAll & res.mask;
    }
    uint32_t remaining = static_cast<uint32_t>(need);
    SPF_COUNT(kALU, 12);
    while (__any_sync(kFULL_MASK, !done))
    {
        int32_t const lo = top >= 5 ? top - 5 : 0;
        uint64_t const digitMask = (2ULL << (top - lo)) - 1ULL;
        if (!done)
        {
            for (int32_t b = q; b < kT2_HIST_BINS; b += 4)
            {
                hist[b] = 0U;
            }
            SPF_COUNT(kSTS, 4); // 16 bins per lane: 4 x STS.128
            SPF_COUNT(kSMEM_EXTRA, 12);
        }
        __syncwarp();
        if (!done)
        {
            for (int32_t i = q; i < count; i += 4)
            {
                uint64_t const k = listKey(scores[i], keys[i]);
                bool const inClass = (k & res.mask) == res.pref;
                SPF_ATOMS_CONFLICT(&hist[(k >> lo) & digitMask], inClass);
                SPF_COUNT(kLDS, 2);
                SPF_COUNT(kALU, 12); // ordered key, 64-bit mask test, digit
                if (inClass)
                {
                    atomicAdd(&hist[(k >> lo) & digitMask], 1U);
                }
            }
        }
        __syncwarp();
        uint32_t digit;
        uint32_t aboveDigit;
        uint32_t inDigit;
        quadBoundary(hist, remaining, !done, digit, aboveDigit, inDigit);
        if (!done)
        {
            remaining -= aboveDigit;
            res.pref |= static_cast<uint64_t>(digit) << lo;
            res.mask |= digitMask << lo;
            done = inDigit == remaining || lo == 0;
            top = lo - 1;
        }
        SPF_COUNT(kALU, 10);
        SPF_COUNT(kOTHER, 4);
        __syncwarp();
    }
    return res;
}

//! Log-scale bin of a score: 2^(23 - shift) bins per octave (the float's exponent and top
//! mantissa bits) from `baseBin` (= float bits >> shift of the lowest value of interest)
//! up, clamped to [0, 63]; scores <= 0 in bin 0. Monotone non-decreasing in the score, so
//! a higher bin only holds larger scores.
SPF_DEVICE uint32_t logBin(float t, int32_t shift, int32_t baseBin)
{
    int32_t const b = t > 0.F ? static_cast<int32_t>(__float_as_uint(t) >> shift) - baseBin : 0;
    return static_cast<uint32_t>(b < 0 ? 0 : (b > kT2_HIST_BINS - 1 ? kT2_HIST_BINS - 1 : b));
}

constexpr int32_t kSAMPLE_BIN_SHIFT{20}; //!< 8 bins per octave: 8 octaves below the sample max
constexpr int32_t kLIST_BIN_SHIFT{18};   //!< 32 bins per octave: 2 octaves above tau
constexpr int32_t kRANK_MAX{16};         //!< boundary bins up to this size: pairwise ranks

//! Exact ranks within a short list (count <= kRANK_MAX), per quad: entry i is taken when
//! fewer than `need` entries have a larger listKey. Not collective.
SPF_DEVICE void quadRank(float const* scores, uint16_t const* keys, int32_t count, uint32_t need, bool active,
    float& minTaken, uint32_t* maskRow)
{
    int32_t const q = static_cast<int32_t>(laneId() & 3U);
    if (!active)
    {
        return;
    }
    for (int32_t i = q; i < count; i += 4)
    {
        uint64_t const mine = listKey(scores[i], keys[i]);
        uint32_t rank = 0U;
        for (int32_t j = 0; j < count; ++j)
        {
            rank += listKey(scores[j], keys[j]) > mine ? 1U : 0U;
            SPF_COUNT(kLDS, 1); // LDS.64-free: score and key of entry j (broadcast)
            SPF_COUNT(kALU, 8);
        }
        if (rank < need)
        {
            minTaken = fminf(minTaken, scores[i]);
            if (maskRow != nullptr)
            {
                atomicOr(&maskRow[keys[i] >> 5], 1U << (keys[i] & 31U));
            }
        }
        SPF_COUNT(kLDS, 2);
        SPF_COUNT(kALU, 14);
    }
}

//! Result of quadSelectList: entries in bins above `bin` are taken; within `bin` the
//! compacted entries (the list's first `inBin`) with listKey >= bound (all when whole).
struct ListSelection
{
    uint32_t bin;
    uint32_t inBin;
    bool whole;
    ListBound bound;
    float minTaken; //!< the need-th largest score itself (the smallest taken)
};

//! Exact need-th largest (score desc, key asc) of a row's list, per quad, in two passes
//! over the list plus a radix on the boundary bin only: (1) a 64-bin log histogram
//! relative to baseBin; (2) entries above the boundary bin are taken (their bits set in
//! maskRow, if given, which the caller has zeroed), the boundary bin's entries are moved
//! to the front of the list in place (keys: the entry's index when indexKeys); (3) radix
//! on those. Warp-collective, like quadRadix; destroys the list's order.
SPF_DEVICE ListSelection quadSelectList(float* scores, uint16_t* keys, int32_t count, int32_t need, bool active,
    uint32_t* hist, int32_t shift, int32_t baseBin, bool indexKeys, uint32_t* maskRow, bool histogramOnly)
{
    int32_t const q = static_cast<int32_t>(laneId() & 3U);
    uint32_t const quadBase = laneId() & ~3U;
    ListSelection sel{};
    if (active)
    {
        for (int32_t b = q; b < kT2_HIST_BINS; b += 4)
        {
            hist[b] = 0U;
        }
        SPF_COUNT(kSTS, 4);
        SPF_COUNT(kSMEM_EXTRA, 12);
    }
    __syncwarp();
    if (active)
    {
        for (int32_t i = q; i < count; i += 4)
        {
            uint32_t const b = logBin(scores[i], shift, baseBin);
            SPF_ATOMS_CONFLICT(&hist[b], true);
            atomicAdd(&hist[b], 1U);
            SPF_COUNT(kLDS, 1);
            SPF_COUNT(kALU, 6); // FSETP, SHF, IADD, 2 IMNMX, loop
        }
    }
    __syncwarp();
    uint32_t above;
    quadBoundary(hist, static_cast<uint32_t>(need), active, sel.bin, above, sel.inBin);
    uint32_t const remaining = static_cast<uint32_t>(need) - above;
    sel.whole = sel.inBin == remaining;
    if (histogramOnly)
    {
        // The caller needs a threshold only: refine the boundary bin with the next 6 bits
        // (a second histogram over its members), then stop. sel.inBin: the fine bin.
        bool const fine = active && sel.bin > 0U && !sel.whole;
        if (fine)
        {
            for (int32_t b = q; b < kT2_HIST_BINS; b += 4)
            {
                hist[b] = 0U;
            }
            SPF_COUNT(kSTS, 4);
            SPF_COUNT(kSMEM_EXTRA, 12);
        }
        __syncwarp();
        if (fine)
        {
            for (int32_t i = q; i < count; i += 4)
            {
                float const t = scores[i];
                if (logBin(t, shift, baseBin) == sel.bin)
                {
                    atomicAdd(&hist[(__float_as_uint(t) >> (shift - 6)) & 63U], 1U);
                }
                SPF_COUNT(kLDS, 1);
                SPF_COUNT(kALU, 8);
            }
        }
        __syncwarp();
        uint32_t fineBin;
        uint32_t fineAbove;
        uint32_t fineIn;
        quadBoundary(hist, remaining, fine, fineBin, fineAbove, fineIn);
        sel.inBin = fine ? fineBin : 0U;
        return sel;
    }
    // Pass 2: take the higher bins, compact the boundary bin to the front (in place: an
    // entry only moves to a lower index, after every lane of the quad has read its own).
    int32_t const rounds = active ? (count + 3) / 4 : 0;
    int32_t const maxRounds = static_cast<int32_t>(__reduce_max_sync(kFULL_MASK, static_cast<uint32_t>(rounds)));
    uint32_t written = 0U;
    for (int32_t it = 0; it < maxRounds; ++it)
    {
        int32_t const i = 4 * it + q;
        bool const valid = it < rounds && i < count;
        float const t = valid ? scores[i] : 0.F;
        uint32_t const key = valid ? (indexKeys ? static_cast<uint32_t>(i) : keys[i]) : 0U;
        uint32_t const b = logBin(t, shift, baseBin);
        bool const member = valid && b == sel.bin;
        bool const take = valid && b > sel.bin;
        uint32_t const members = (__ballot_sync(kFULL_MASK, member) >> quadBase) & 0xFU;
        if (take && maskRow != nullptr)
        {
            atomicOr(&maskRow[key >> 5], 1U << (key & 31U));
        }
        uint32_t const pos = written + static_cast<uint32_t>(__popc(members & ((1U << q) - 1U)));
        written += static_cast<uint32_t>(__popc(members));
        SPF_COUNT(kLDS, indexKeys ? 1 : 2);
        SPF_COUNT(kALU, 16);
        __syncwarp();
        if (member)
        {
            scores[pos] = t;
            keys[pos] = static_cast<uint16_t>(key);
        }
        SPF_COUNT(kSTS, member ? 2 : 0);
        __syncwarp();
    }
    // Pass 3: the boundary bin alone: pairwise ranks when it is short, else a radix.
    bool const refine = active && !sel.whole;
    bool const small = sel.inBin <= static_cast<uint32_t>(kRANK_MAX);
    float minTaken = __builtin_huge_valf();
    quadRank(scores, keys, static_cast<int32_t>(sel.inBin), remaining, refine && small, minTaken, maskRow);
    sel.bound = quadRadix(
        scores, keys, static_cast<int32_t>(sel.inBin), static_cast<int32_t>(remaining), refine && !small, hist);
    if (active && !(refine && small))
    {
        for (int32_t i = q; i < static_cast<int32_t>(sel.inBin); i += 4)
        {
            float const t = scores[i];
            uint32_t const key = keys[i];
            if (sel.whole || (listKey(t, key) & sel.bound.mask) >= sel.bound.pref)
            {
                minTaken = fminf(minTaken, t);
                if (maskRow != nullptr)
                {
                    atomicOr(&maskRow[key >> 5], 1U << (key & 31U));
                }
            }
            SPF_COUNT(kLDS, 2);
            SPF_COUNT(kALU, 14);
        }
    }
    minTaken = fminf(minTaken, __shfl_xor_sync(kFULL_MASK, minTaken, 1));
    minTaken = fminf(minTaken, __shfl_xor_sync(kFULL_MASK, minTaken, 2));
    sel.minTaken = minTaken;
    SPF_COUNT(kALU, 2);
    return sel;
}

//! Keep the `count` lowest set bits of x.
SPF_DEVICE uint32_t lowestBits(uint32_t x, uint32_t count)
{
    uint32_t kept = 0U;
    for (uint32_t i = 0; i < count && x != 0U; ++i)
    {
        uint32_t const low = x & (~x + 1U);
        kept |= low;
        x ^= low;
        SPF_COUNT(kALU, 4);
    }
    return kept;
}

//! Valid-key mask of 32-key word w (keys >= n are not keys).
SPF_DEVICE uint32_t validBits(int32_t w, int32_t n)
{
    int32_t const left = n - w * kWARP_SIZE;
    return left >= kWARP_SIZE ? kFULL_MASK : (left <= 0 ? 0U : (1U << left) - 1U);
}

//! Load 128 rows of the packed basis (keys from `keyOf(position)`, or invalid -> zeros)
//! into a chunk buffer with cp.async. Block-wide; commits one group.
template <typename KeyOf>
SPF_DEVICE void loadBasisChunk(__half* dst, __half const* packed, int32_t rpad, KeyOf keyOf)
{
    int32_t const vecs = rpad / 8;
    int32_t const stride = rpad + kSMEM_PAD;
    for (int32_t i = static_cast<int32_t>(threadIdx.x); i < kT2_CHUNK * vecs; i += kTILE_THREADS)
    {
        int32_t const pos = i / vecs;
        int32_t const v = i - pos * vecs;
        int32_t const key = keyOf(pos);
        bool const valid = key >= 0;
        cpAsync16(dst + pos * stride + v * 8, packed + static_cast<int64_t>(valid ? key : 0) * rpad + v * 8, valid);
        SPF_COUNT(kALU, 6);
        SPF_COUNT(kFMA, 4);
    }
    cpAsyncCommit();
}

//! A fragments of the warp's 16 coefficient rows (k-steps of 16, rpad <= 64).
SPF_DEVICE void loadCoefFragments(uint32_t (&a)[4][4], __half const* sCoef, int32_t strideC, int32_t nKT)
{
    uint32_t const lane = laneId();
    int32_t const warp = static_cast<int32_t>(threadIdx.x) / kWARP_SIZE;
    int32_t const r = warp * 16 + static_cast<int32_t>(lane & 7) + static_cast<int32_t>((lane >> 3) & 1) * 8;
    int32_t const c = static_cast<int32_t>(lane >> 4) * 8;
    SPF_UNROLL
    for (int32_t kt = 0; kt < 4; ++kt)
    {
        if (kt < nKT)
        {
            ldmatrixX4(a[kt], sCoef + r * strideC + kt * 16 + c);
        }
        else
        {
            a[kt][0] = a[kt][1] = a[kt][2] = a[kt][3] = 0U;
        }
    }
    SPF_COUNT(kALU, 6);
}

//! Scores (t = s / 2^E) of the warp's 16 rows on 16 n8 tiles of a chunk buffer whose
//! rows are keys: n8 tile nt, column c reads buffer row rowOf(nt, c). acc starts at init.
template <typename RowOf>
SPF_DEVICE void scoreChunk(float (&acc)[16][4], uint32_t const (&a)[4][4], __half const* buf, int32_t strideB,
    int32_t nKT, float init0, float init1, RowOf rowOf)
{
    uint32_t const lane = laneId();
    SPF_UNROLL
    for (int32_t nt = 0; nt < 16; ++nt)
    {
        acc[nt][0] = acc[nt][1] = init0;
        acc[nt][2] = acc[nt][3] = init1;
    }
    int32_t const dimOff = static_cast<int32_t>((lane >> 3) & 1) * 8;
    SPF_UNROLL
    for (int32_t kt = 0; kt < 4; ++kt)
    {
        if (kt < nKT)
        {
            SPF_UNROLL
            for (int32_t np = 0; np < 8; ++np)
            {
                int32_t const nt = 2 * np + static_cast<int32_t>(lane >> 4);
                uint32_t b[4];
                ldmatrixX4(b, buf + rowOf(nt, static_cast<int32_t>(lane & 7)) * strideB + kt * 16 + dimOff);
                mma16816<__half>(acc[2 * np], a[kt], b[0], b[1]);
                mma16816<__half>(acc[2 * np + 1], a[kt], b[2], b[3]);
            }
        }
    }
    SPF_COUNT(kALU, 4);
}

//! The 64-row union of the masks of the slots whose mode passes `pick`, as a key list.
template <typename Pick>
SPF_DEVICE int32_t tileUnion(uint32_t const* sMask, uint32_t const* sMode, int32_t nWords, uint32_t* sUnion,
    uint16_t* sKeys, int32_t* sMisc, Pick pick)
{
    for (int32_t w = static_cast<int32_t>(threadIdx.x); w < nWords; w += kTILE_THREADS)
    {
        uint32_t u = 0U;
        for (int32_t s = 0; s < kTILE_ROWS; ++s)
        {
            u |= pick(sMode[s]) ? sMask[s * nWords + w] : 0U;
        }
        sUnion[w] = u;
        SPF_COUNT(kLDS, 2 * kTILE_ROWS);
        SPF_COUNT(kALU, 3 * kTILE_ROWS);
        SPF_COUNT(kSTS, 1);
    }
    __syncthreads();
    return compactUnion(sUnion, nWords, sKeys, sMisc);
}

// Its shared memory (about 75-200 KB) allows 1-2 blocks per SM: registers need not be
// capped for 3 blocks (ptxas would spill up to 88 bytes at 168 registers).
template <typename T, int32_t kHEAD_DIM>
SPF_GLOBAL void SPF_LAUNCH_BOUNDS_MIN(kTILE_THREADS, 1)
    tile2dTopKAttentionKernel(TopKMaskedAttentionParams const p, BasisCsr const csr, int32_t const cap)
{
    SPF_DYNAMIC_SMEM(smem);
    int32_t const n = p.numTokens;
    int32_t const cls = p.clsRows;
    int32_t const budget = p.budget;
    int32_t const nWords = numWords(n);
    int32_t const side = gridSide(n, cls);
    int32_t const perSide = tiles2dPerSide(side);
    int32_t const rpad = paddedRank(p.rank);
    int32_t const stride = rpad + kSMEM_PAD; // coefficient and basis rows in smem, halves
    int32_t const nKT = rpad / 16;
    Tile2dLayout const layout = tile2dLayout(n, kHEAD_DIM, static_cast<int32_t>(sizeof(T)), p.rank, cap);
    int32_t* sMisc = reinterpret_cast<int32_t*>(smem);
    float* sTau = reinterpret_cast<float*>(smem + layout.rowTau);
    float* sMax = reinterpret_cast<float*>(smem + layout.rowMax);
    uint32_t* sCount = reinterpret_cast<uint32_t*>(smem + layout.rowCount);
    uint32_t* sMode = reinterpret_cast<uint32_t*>(smem + layout.rowMode);
    uint32_t* sFlags = reinterpret_cast<uint32_t*>(smem + layout.rowFlags);
    uint32_t* sMask = reinterpret_cast<uint32_t*>(smem + layout.mask);
    uint32_t* sUnion = reinterpret_cast<uint32_t*>(smem + layout.unionWords);
    uint16_t* sKeys = reinterpret_cast<uint16_t*>(smem + layout.keys);
    __half* sCoef = reinterpret_cast<__half*>(smem + layout.coef);
    __half* sChunk = reinterpret_cast<__half*>(smem + layout.chunks);
    float* sListT = reinterpret_cast<float*>(smem + layout.listT);
    uint16_t* sListK = reinterpret_cast<uint16_t*>(smem + layout.listK);
    uint8_t* scratch = smem + layout.scratch;

    int32_t const tid = static_cast<int32_t>(threadIdx.x);
    int32_t const warp = tid / kWARP_SIZE;
    uint32_t const lane = laneId();
    int32_t const group = static_cast<int32_t>(lane >> 2);
    int32_t const quad = static_cast<int32_t>(lane & 3);

    int64_t const tiles = tiles2dPerHead(n, cls);
    int64_t const bh = static_cast<int64_t>(blockIdx.x) / tiles;
    int32_t const tile = static_cast<int32_t>(static_cast<int64_t>(blockIdx.x) % tiles);
    int32_t const clsTiles = static_cast<int32_t>(ceilDiv(cls, kTILE_ROWS));
    SPF_COUNT(kALU, 40);
    SPF_COUNT(kFMA, 10);
    if (tile < clsTiles)
    {
        // CLS rows: dense tiles exactly as in the v1 kernel.
        int32_t const rowBegin = tile * kTILE_ROWS;
        int32_t const rowEnd = minInt(rowBegin + kTILE_ROWS, cls);
        SPF_COUNT(kROWS, tid == 0 ? rowEnd - rowBegin : 0);
        SPF_PHASE(kATTEND);
        attendTile<T, kHEAD_DIM>(p, bh, [=](int32_t slot) { return rowBegin + slot < rowEnd ? rowBegin + slot : -1; },
            sMask, nWords, sKeys, n, true, scratch);
        return;
    }
    int32_t const t2 = tile - clsTiles;
    int32_t const ty = t2 / perSide;
    int32_t const tx = t2 - ty * perSide;
    auto rowOf = [=](int32_t slot) { return tile2dRow(slot, ty, tx, side, cls); };
    GridBasis const grid = gridBasisOf(p);
    int32_t const* gridFlags = grid.flags;

    // ------------------------------------------------ coefficients: check the grid, fp16
    SPF_PHASE(kSELECT);
    if (tid < kTILE_ROWS)
    {
        sFlags[tid] = 0U;
        sCount[tid] = 0U;
        SPF_COUNT(kSTS, 2);
        SPF_COUNT(kROWS, rowOf(tid) >= 0 ? 1 : 0);
    }
    __syncthreads();
    size_t const coefElem = static_cast<size_t>(elementBytes(p.coefType));
    for (int32_t i = tid; i < kTILE_ROWS * rpad; i += kTILE_THREADS)
    {
        int32_t const slot = i / rpad;
        int32_t const r = i - slot * rpad;
        int32_t const row = rowOf(slot);
        float c = 0.F;
        if (row >= 0 && r < p.rank)
        {
            int64_t const idx = (bh * (n - cls) + (row - cls)) * static_cast<int64_t>(p.rank) + r;
            c = loadAsFloat(p.coef, idx, p.coefType);
        }
        float const scaled = c * 1024.F; // exact: a power of two
        bool const onGrid = fabsf(c) <= 2.F && scaled == rintf(scaled);
        if (c != 0.F) // zeros are on the grid and add nothing: no atomics for them
        {
            atomicOr(&sFlags[slot], (onGrid ? 0U : kFLAG_OFF_GRID) | (c < 0.F ? kFLAG_NEGATIVE : 0U));
            atomicAdd(&sCount[slot], onGrid ? static_cast<uint32_t>(fabsf(scaled)) : 0U);
        }
        sCoef[slot * stride + r] = __float2half_rn(onGrid ? c : 0.F);
        SPF_COUNT(kLDG, 1);
        SPF_COUNT(kG_BYTES, row >= 0 && r < p.rank ? coefElem : 0);
        SPF_COUNT(kALU, 14);
        SPF_COUNT(kFMA, 6);
        SPF_COUNT(kCVT, 2);
        SPF_COUNT(kSTS, 1);
    }
    __syncthreads();
    bool const basisOnGrid = gridFlags[0] != 0;
    bool const basisNonneg = gridFlags[1] != 0;
    if (tid < kTILE_ROWS)
    {
        bool const onGrid = basisOnGrid && (sFlags[tid] & kFLAG_OFF_GRID) == 0U && sCount[tid] <= 65536U;
        sMode[tid] = rowOf(tid) < 0 ? kMODE_EMPTY : (onGrid ? kMODE_TC : kMODE_FALLBACK);
        if (!basisNonneg)
        {
            sFlags[tid] |= kFLAG_NEGATIVE;
        }
        SPF_COUNT(kLDS, 2);
        SPF_COUNT(kLDG, 2);
        SPF_COUNT(kALU, 10);
        SPF_COUNT(kSTS, 2);
    }

    // ------------------------------------------------ 1. sample: tau per row
    // A regular lattice of keys over the whole patch grid (strided tiles of 8 consecutive
    // keys would sample a few columns of the grid only); all keys when N <= 256.
    int32_t const sampled = minInt(n, minInt(kT2_SAMPLE_KEYS, cap));
    auto sampleKey = [=](int32_t pos) {
        return pos < sampled ? static_cast<int32_t>((2 * static_cast<int64_t>(pos) + 1) * n / (2 * sampled)) : -1;
    };
    int32_t sampleRank = budget; // the sample's order statistic that becomes tau
    if (sampled < n)
    {
        float const mu = static_cast<float>(budget) * static_cast<float>(sampled) / static_cast<float>(n);
        float const sigma = sqrtf(mu * (1.F - static_cast<float>(budget) / static_cast<float>(n)));
        sampleRank = minInt(sampled, static_cast<int32_t>(ceilf(mu + 3.F * sigma + 2.F)));
    }
    SPF_PHASE(kSCORES);
    loadBasisChunk(sChunk, grid.packed, rpad, sampleKey);
    if (sampled > kT2_CHUNK)
    {
        loadBasisChunk(sChunk + kT2_CHUNK * stride, grid.packed, rpad,
            [=](int32_t pos) { return sampleKey(pos + kT2_CHUNK); });
    }
    cpAsyncWait<0>();
    __syncthreads();
    int32_t const slotG = warp * 16 + group;
    int32_t const slotH = slotG + 8;
    uint32_t a[4][4];
    loadCoefFragments(a, sCoef, stride, nKT);
    for (int32_t half = 0; half * kT2_CHUNK < sampled; ++half)
    {
        float acc[16][4];
        scoreChunk(acc, a, sChunk + half * kT2_CHUNK * stride, stride, nKT, 0.F, 0.F,
            [](int32_t nt, int32_t c) { return nt * 8 + c; });
        SPF_PHASE(kSAMPLE);
        SPF_UNROLL
        for (int32_t nt = 0; nt < 16; ++nt)
        {
            SPF_UNROLL
            for (int32_t e = 0; e < 2; ++e)
            {
                int32_t const pos = half * kT2_CHUNK + nt * 8 + 2 * quad + e;
                if (pos < sampled)
                {
                    sListT[slotG * cap + pos] = acc[nt][e];
                    sListT[slotH * cap + pos] = acc[nt][2 + e];
                }
            }
            SPF_COUNT(kSTS, 2); // STS.64 per row
            SPF_COUNT(kALU, 6);
        }
        SPF_PHASE(kSCORES);
    }
    SPF_PHASE(kSAMPLE);
    __syncthreads(); // the chunk buffers become the quads' histograms
    uint32_t* sHist = reinterpret_cast<uint32_t*>(sChunk) + (warp * 8 + group) * kT2_HIST_STRIDE;
    float tauRow[2];
    SPF_UNROLL
    for (int32_t h = 0; h < 2; ++h)
    {
        int32_t const slot = h == 0 ? slotG : slotH;
        bool const tc = sMode[slot] == kMODE_TC;
        float mx = kNEG_INF;
        if (tc)
        {
            for (int32_t i = quad; i < sampled; i += 4)
            {
                mx = fmaxf(mx, sListT[slot * cap + i]);
                SPF_COUNT(kLDS, 1);
                SPF_COUNT(kALU, 2);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(kFULL_MASK, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(kFULL_MASK, mx, 2));
        // 64 bins of 1/8 octave up to the sample's maximum; the boundary in bin 0 (below
        // max / 2^8, zero or negative) means the zero regime.
        int32_t const baseBin = static_cast<int32_t>(__float_as_uint(mx) >> kSAMPLE_BIN_SHIFT) - (kT2_HIST_BINS - 1);
        bool const positive = tc && mx > 0.F;
        ListSelection const sel = quadSelectList(sListT + slot * cap, sListK + slot * cap, sampled, sampleRank,
            positive, sHist, kSAMPLE_BIN_SHIFT, baseBin, true, nullptr, true);
        if (quad == 0 && tc)
        {
            sMax[slot] = mx;
        }
        // tau: the lower edge of the 1/512-octave bin holding the sample's rank-th largest
        // (at least `rank` sampled keys lie at or above it); bin 0 means the zero regime.
        float const edge = __uint_as_float(
            (static_cast<uint32_t>(baseBin + static_cast<int32_t>(sel.bin)) << kSAMPLE_BIN_SHIFT)
            | (sel.inBin << (kSAMPLE_BIN_SHIFT - 6)));
        tauRow[h] = !tc ? __builtin_huge_valf() : (positive && sel.bin > 0U ? edge : 0.F);
        SPF_COUNT(kALU, 8);
    }
    // tau <= 0: the filter keeps the positive scores (t >= 2^-10 on the grid).
    bool const zeroG = !(tauRow[0] > 0.F);
    bool const zeroH = !(tauRow[1] > 0.F);
    float const tauG = zeroG ? kPOSITIVE_CUT : tauRow[0];
    float const tauH = zeroH ? kPOSITIVE_CUT : tauRow[1];
    bool const nonnegG = (sFlags[slotG] & kFLAG_NEGATIVE) == 0U;
    bool const nonnegH = (sFlags[slotH] & kFLAG_NEGATIVE) == 0U;
    // Accumulator start: -tau' with tau' a hair below tau (no cancellation when every
    // product is >= 0, so the tensor core's rounding cannot flip the sign of t - tau'),
    // or 0 and an exact FADD per score.
    bool const warpNonneg = __all_sync(kFULL_MASK, nonnegG && nonnegH);
    float const initG = warpNonneg ? -(zeroG ? tauG : tauG * (1.F - 2.44140625e-4F)) : 0.F;
    float const initH = warpNonneg ? -(zeroH ? tauH : tauH * (1.F - 2.44140625e-4F)) : 0.F;
    SPF_COUNT(kALU, 12);
    SPF_COUNT(kFMA, 4);
    __syncthreads(); // histograms done before the chunk buffers are refilled

    // ------------------------------------------------ 2. filter: candidate words, counts
    int32_t const chunks = paddedKeys(n) / kT2_CHUNK;
    uint32_t countG = 0U;
    uint32_t countH = 0U;
    SPF_PHASE(kSCORES);
    loadBasisChunk(sChunk, grid.packed, rpad, [=](int32_t pos) { return pos; });
    for (int32_t ch = 0; ch < chunks; ++ch)
    {
        __half* buf = sChunk + (ch & 1) * kT2_CHUNK * stride;
        if (ch + 1 < chunks)
        {
            loadBasisChunk(sChunk + ((ch + 1) & 1) * kT2_CHUNK * stride, grid.packed, rpad,
                [=](int32_t pos) { return (ch + 1) * kT2_CHUNK + pos; });
            cpAsyncWait<1>();
        }
        else
        {
            cpAsyncWait<0>();
        }
        __syncthreads();
        float acc[16][4];
        scoreChunk(acc, a, buf, stride, nKT, initG, initH, [](int32_t nt, int32_t c) { return permutedKey(nt, c); });
        SPF_PHASE(kFILTER);
        if (!warpNonneg)
        {
            SPF_UNROLL
            for (int32_t nt = 0; nt < 16; ++nt)
            {
                acc[nt][0] -= tauG;
                acc[nt][1] -= tauG;
                acc[nt][2] -= tauH;
                acc[nt][3] -= tauH;
            }
            SPF_COUNT(kFMA, 64);
        }
        // Sign bits in descending key order: bit k of the word is key 32 quad + k.
        uint32_t wordG = 0U;
        uint32_t wordH = 0U;
        SPF_UNROLL
        for (int32_t nt = 15; nt >= 0; --nt)
        {
            SPF_UNROLL
            for (int32_t e = 1; e >= 0; --e)
            {
                wordG = __funnelshift_l(__float_as_uint(acc[nt][e]), wordG, 1);
                wordH = __funnelshift_l(__float_as_uint(acc[nt][2 + e]), wordH, 1);
            }
        }
        int32_t const w = ch * (kT2_CHUNK / kWARP_SIZE) + quad;
        uint32_t const valid = validBits(w, n);
        uint32_t const candG = ~wordG & valid;
        uint32_t const candH = ~wordH & valid;
        countG += static_cast<uint32_t>(__popc(candG));
        countH += static_cast<uint32_t>(__popc(candH));
        if (w < nWords)
        {
            sMask[slotG * nWords + w] = candG;
            sMask[slotH * nWords + w] = candH;
        }
        SPF_COUNT(kALU, 14);
        SPF_COUNT(kSTS, 2);
        SPF_COUNT(kOTHER, 3);
        SPF_PHASE(kSCORES);
        __syncthreads(); // the buffer is refilled by the next iteration's load
    }
    SPF_PHASE(kFILTER);
    countG += __shfl_xor_sync(kFULL_MASK, countG, 1);
    countG += __shfl_xor_sync(kFULL_MASK, countG, 2);
    countH += __shfl_xor_sync(kFULL_MASK, countH, 1);
    countH += __shfl_xor_sync(kFULL_MASK, countH, 2);
    // Rows whose candidates overflow the list (spatially clustered scores) get a higher
    // threshold from the same sample, at a rank scaled to fill 3/4 of the list; keys above
    // it are a subset of the candidates, so the union re-score below still sees them all.
    float tauFinal[2] = {tauG, tauH};
    SPF_UNROLL
    for (int32_t h = 0; h < 2; ++h)
    {
        int32_t const slot = h == 0 ? slotG : slotH;
        uint32_t const count = h == 0 ? countG : countH;
        bool const zero = h == 0 ? zeroG : zeroH;
        bool const over = sMode[slot] == kMODE_TC && !zero && count > static_cast<uint32_t>(cap);
        int32_t const rank2 = over ? maxInt(1, static_cast<int32_t>(static_cast<int64_t>(sampleRank) * (3 * cap / 4) / count)) : 1;
        int32_t const baseBin = static_cast<int32_t>(__float_as_uint(sMax[slot]) >> kSAMPLE_BIN_SHIFT) - (kT2_HIST_BINS - 1);
        ListSelection const sel = quadSelectList(sListT + slot * cap, sListK + slot * cap, sampled, rank2, over, sHist,
            kSAMPLE_BIN_SHIFT, baseBin, true, nullptr, true);
        if (over && sel.bin > 0U)
        {
            tauFinal[h] = __uint_as_float((static_cast<uint32_t>(baseBin + static_cast<int32_t>(sel.bin)) << kSAMPLE_BIN_SHIFT)
                | (sel.inBin << (kSAMPLE_BIN_SHIFT - 6)));
        }
        SPF_COUNT(kALU, 10);
    }
    // Verdict per row (the quad's lane 0 writes).
    SPF_UNROLL
    for (int32_t h = 0; h < 2; ++h)
    {
        int32_t const slot = h == 0 ? slotG : slotH;
        uint32_t const count = h == 0 ? countG : countH;
        bool const zero = h == 0 ? zeroG : zeroH;
        bool const nonneg = h == 0 ? nonnegG : nonnegH;
        bool const raised = tauFinal[h] != (h == 0 ? tauG : tauH);
        uint32_t mode = sMode[slot];
        if (mode == kMODE_TC)
        {
            bool const enough = count >= static_cast<uint32_t>(budget);
            bool const fits = count <= static_cast<uint32_t>(cap) || raised; // the list pass checks raised rows
            if (!zero)
            {
                mode = enough && fits ? kMODE_LIST : kMODE_FALLBACK;
            }
            else if (enough)
            {
                mode = fits ? kMODE_LIST : kMODE_FALLBACK;
            }
            else
            {
                mode = nonneg ? kMODE_ZEROFILL : kMODE_FALLBACK;
            }
        }
        if (quad == 0)
        {
            sMode[slot] = mode;
            sTau[slot] = tauFinal[h];
            sCount[slot] = mode == kMODE_ZEROFILL ? count : 0U;
        }
        SPF_COUNT(kALU, 12);
        SPF_COUNT(kSTS, 3);
    }
    __syncthreads();

    // ------------------------------------------------ 3. re-score the candidates' union
    SPF_PHASE(kLISTS);
    int32_t const unionKeys = tileUnion(sMask, sMode, nWords, sUnion, sKeys, sMisc, [](uint32_t m) { return m == kMODE_LIST; });
    SPF_PHASE(kSCORES);
    int32_t const unionChunks = static_cast<int32_t>(ceilDiv(unionKeys, kT2_CHUNK));
    bool const listG = sMode[slotG] == kMODE_LIST;
    bool const listH = sMode[slotH] == kMODE_LIST;
    float const listTauG = sTau[slotG];
    float const listTauH = sTau[slotH];
    if (unionChunks > 0)
    {
        auto unionKey = [=](int32_t base) {
            return [=](int32_t pos) { return base + pos < unionKeys ? static_cast<int32_t>(sKeys[base + pos]) : -1; };
        };
        loadBasisChunk(sChunk, grid.packed, rpad, unionKey(0));
        for (int32_t ch = 0; ch < unionChunks; ++ch)
        {
            __half* buf = sChunk + (ch & 1) * kT2_CHUNK * stride;
            if (ch + 1 < unionChunks)
            {
                loadBasisChunk(sChunk + ((ch + 1) & 1) * kT2_CHUNK * stride, grid.packed, rpad,
                    unionKey((ch + 1) * kT2_CHUNK));
                cpAsyncWait<1>();
            }
            else
            {
                cpAsyncWait<0>();
            }
            __syncthreads();
            float acc[16][4];
            scoreChunk(acc, a, buf, stride, nKT, 0.F, 0.F, [](int32_t nt, int32_t c) { return nt * 8 + c; });
            SPF_PHASE(kLISTS);
            SPF_UNROLL
            for (int32_t nt = 0; nt < 16; ++nt)
            {
                SPF_UNROLL
                for (int32_t e = 0; e < 2; ++e)
                {
                    int32_t const u = ch * kT2_CHUNK + nt * 8 + 2 * quad + e;
                    bool const inUnion = u < unionKeys;
                    bool const takeG = inUnion && listG && acc[nt][e] >= listTauG;
                    bool const takeH = inUnion && listH && acc[nt][2 + e] >= listTauH;
                    // FSETP x2, the union bound, predicated ATOMS + 2 STS per row, key LDS.
                    // (Per-lane predicates: the emulator charges the warp if any lane issues.)
                    SPF_COUNT(kALU, 6);
                    SPF_COUNT(kFMA, 2);
                    SPF_COUNT(kLDS, takeG || takeH ? 1 : 0);
                    if (takeG)
                    {
                        uint32_t const pos = atomicAdd(&sCount[slotG], 1U);
                        if (pos < static_cast<uint32_t>(cap))
                        {
                            sListT[slotG * cap + pos] = acc[nt][e];
                            sListK[slotG * cap + pos] = sKeys[u];
                        }
                    }
                    if (takeH)
                    {
                        uint32_t const pos = atomicAdd(&sCount[slotH], 1U);
                        if (pos < static_cast<uint32_t>(cap))
                        {
                            sListT[slotH * cap + pos] = acc[nt][2 + e];
                            sListK[slotH * cap + pos] = sKeys[u];
                        }
                    }
                    SPF_COUNT(kSTS, (takeG ? 2 : 0) + (takeH ? 2 : 0));
                }
            }
            SPF_PHASE(kSCORES);
            __syncthreads();
        }
    }
    SPF_PHASE(kRESOLVE);
    __syncthreads(); // lists complete; chunk buffers become histograms again

    // ------------------------------------------------ 4. exact select on the lists, masks
    SPF_UNROLL
    for (int32_t h = 0; h < 2; ++h)
    {
        int32_t const slot = h == 0 ? slotG : slotH;
        uint32_t mode = sMode[slot];
        uint32_t const listed = sCount[slot];
        if (mode == kMODE_LIST && (listed < static_cast<uint32_t>(budget) || listed > static_cast<uint32_t>(cap)))
        {
            mode = kMODE_FALLBACK; // the tensor-core pass and the re-score disagreed, or overflow
        }
        uint32_t* maskRow = sMask + slot * nWords;
        bool const list = mode == kMODE_LIST;
        int32_t const count = list ? static_cast<int32_t>(listed) : 0;
        if (list)
        {
            for (int32_t w = quad; w < nWords; w += 4)
            {
                maskRow[w] = 0U;
                SPF_COUNT(kSTS, 1);
                SPF_COUNT(kALU, 2);
            }
        }
        __syncwarp();
        // Every list entry is >= the row's tau > 0: 1/32-octave bins from tau up; lists of
        // all the positives (tau = 2^-11) use the sample's scale instead, 8 octaves below
        // its maximum.
        float const tau = sTau[slot];
        bool const positives = tau == kPOSITIVE_CUT;
        int32_t const shift = positives ? kSAMPLE_BIN_SHIFT : kLIST_BIN_SHIFT;
        int32_t const baseBin = positives
            ? static_cast<int32_t>(__float_as_uint(sMax[slot]) >> kSAMPLE_BIN_SHIFT) - (kT2_HIST_BINS - 1)
            : static_cast<int32_t>(__float_as_uint(tau) >> kLIST_BIN_SHIFT);
        (void) quadSelectList(sListT + slot * cap, sListK + slot * cap, count, budget, list, sHist, shift, baseBin,
            false, maskRow, false);
        // Zero fill: the positives are in the mask; add the first (budget - positives) zeros
        // in key order. Each lane of the quad takes a quarter of the words, in order.
        bool const fill = mode == kMODE_ZEROFILL;
        uint32_t const need = fill ? static_cast<uint32_t>(budget) - listed : 0U;
        int32_t const per = (nWords + 3) / 4;
        int32_t const w0 = quad * per;
        int32_t const w1 = fill ? minInt(nWords, w0 + per) : w0;
        uint32_t zeros = 0U;
        for (int32_t w = w0; w < w1; ++w)
        {
            zeros += static_cast<uint32_t>(__popc(validBits(w, n) & ~maskRow[w]));
            SPF_COUNT(kLDS, 1);
            SPF_COUNT(kALU, 6);
        }
        uint32_t before = 0U;
        uint32_t const quadBase = lane & ~3U;
        SPF_UNROLL
        for (int32_t k = 0; k < 3; ++k)
        {
            uint32_t const other = __shfl_sync(kFULL_MASK, zeros, static_cast<int32_t>(quadBase) + k);
            before += k < quad ? other : 0U;
        }
        uint32_t left = need > before ? need - before : 0U;
        for (int32_t w = w0; w < w1 && left > 0U; ++w)
        {
            uint32_t const z = validBits(w, n) & ~maskRow[w];
            uint32_t const c = static_cast<uint32_t>(__popc(z));
            maskRow[w] |= c <= left ? z : lowestBits(z, left);
            left -= c <= left ? c : left;
            SPF_COUNT(kLDS, 1);
            SPF_COUNT(kSTS, 1);
            SPF_COUNT(kALU, 10);
        }
        if (quad == 0 && mode == kMODE_FALLBACK)
        {
            sMode[slot] = kMODE_FALLBACK;
        }
        SPF_COUNT(kROWS_LIST, quad == 0 && list ? 1 : 0);
        SPF_COUNT(kROWS_ZERO, quad == 0 && fill ? 1 : 0);
        SPF_COUNT(kROWS_V1, quad == 0 && mode == kMODE_FALLBACK ? 1 : 0);
        __syncwarp();
    }

    // ------------------------------------------------ v1's exact path for the other rows
    SPF_PHASE(kFALLBACK);
    uint32_t* sScore = reinterpret_cast<uint32_t*>(sListT + warp * 16 * cap);
    uint32_t* sHistV1 = sScore + nWords * kWARP_SIZE;
    for (int32_t s = warp * 16; s < warp * 16 + 16; ++s)
    {
        uint32_t const mode = sMode[s];
        uint32_t* maskRow = sMask + s * nWords;
        if (mode == kMODE_FALLBACK)
        {
            int32_t const row = rowOf(s);
            int64_t const coefRow = (bh * (n - cls) + (row - cls)) * static_cast<int64_t>(p.rank);
            void const* coef = static_cast<uint8_t const*>(p.coef) + coefRow * static_cast<int64_t>(coefElem);
            computeRowScores(sScore, coef, p.coefType, p.rank, csr, nWords);
            selectTopK(sScore, sHistV1, maskRow, nullptr, n, nWords, budget);
        }
        else if (mode == kMODE_EMPTY)
        {
            for (int32_t w = static_cast<int32_t>(lane); w < nWords; w += kWARP_SIZE)
            {
                maskRow[w] = 0U;
                SPF_COUNT(kSTS, 1);
            }
        }
        SPF_COUNT(kLDS, 1);
        SPF_COUNT(kALU, 3);
    }
    __syncthreads();

    // ------------------------------------------------ attention over the tile's union
    SPF_PHASE(kUNION);
    int32_t const numKeys
        = tileUnion(sMask, sMode, nWords, sUnion, sKeys, sMisc, [](uint32_t m) { return m != kMODE_EMPTY; });
    SPF_PHASE(kATTEND);
    attendTile<T, kHEAD_DIM>(p, bh, rowOf, sMask, nWords, sKeys, numKeys, false, scratch);
}

} // namespace kernels
} // namespace sparsifiner
