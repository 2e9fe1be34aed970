/*
 * TopKMaskedAttention on the CPU (see topkMaskedAttentionCpu.h for the API).
 *
 * One work item = one batch-head and a block of consecutive query rows. Per row:
 *   1. scores s = coef_row . basis, a few axpys over N on the row's nonzero coefficients
 *      (the basis is stored once as padded fp32 rows); never an N x N buffer;
 *   2. exact top-budget selection in O(N): for long rows a threshold from 256 sampled
 *      scores lets the scoring pass itself keep only the keys above it (compressed key
 *      and index lists), then a bitwise descent on order-preserving integer keys finds
 *      the budget-th largest key T exactly; the keys > T and the lowest-index keys == T
 *      are emitted in index order. A filter that keeps fewer than budget keys rescans.
 *   3. attention over the kept keys, key-blocked: the rows of the block walk the keys in
 *      tiles that stay in L2, with an online (running max) fp32 softmax per row.
 * Rows i < c attend densely. The AVX-512 paths are compiled when the compiler targets
 * AVX-512 (-march=native on such a machine); the portable loops compute the same thing.
 */
#include "topkMaskedAttentionCpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define SPARSIFINER_CPU_AVX512 1
// GCC 12's intrinsics initialise their undefined operands with `__Y = __Y`, which
// -Wall reports once per inlined call.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#else
#define SPARSIFINER_CPU_AVX512 0
#endif

namespace sparsifiner
{
namespace cpu
{
namespace
{

constexpr int32_t kVEC{16};
constexpr int32_t kDEFAULT_ROW_BLOCK{32};
//! K + V bytes of one key tile: about half of a 1 MiB L2.
constexpr int64_t kDEFAULT_TILE_BYTES{512 * 1024};
constexpr int32_t kDEFAULT_SAMPLE_MIN_N{1024};
//! K (or V) bytes of one tile of the L1-tiled attention (32 KiB: the fastest of 8-32 KiB
//! on Zen 4 at keep 0.25, by a few per cent over the L2-tiled loop).
constexpr int64_t kL1_TILE_BYTES{32 * 1024};
constexpr int64_t kL1_MIN_KEYS_PER_TILE{8};
constexpr int32_t kSAMPLE_CHUNKS{16};
constexpr int32_t kSAMPLES{kSAMPLE_CHUNKS * kVEC};
//! Workspace header: one flag (basis has a non-finite entry), padded to a cache line.
constexpr size_t kHEADER_BYTES{64};

// ---------------------------------------------------------------- element types

inline float halfToFloat(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000U) << 16;
    uint32_t const exp = (h >> 10) & 0x1FU;
    uint32_t mant = h & 0x3FFU;
    uint32_t bits;
    if (exp == 0x1FU)
    {
        bits = sign | 0x7F800000U | (mant << 13);
    }
    else if (exp != 0)
    {
        bits = sign | ((exp + 112U) << 23) | (mant << 13);
    }
    else if (mant == 0)
    {
        bits = sign;
    }
    else
    {
        int32_t e = -1;
        do
        {
            ++e;
            mant <<= 1;
        } while ((mant & 0x400U) == 0);
        bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3FFU) << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

//! Round to nearest even, as torch's and ONNX Runtime's casts do.
inline uint16_t floatToHalf(float f)
{
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    uint32_t const sign = (bits >> 16) & 0x8000U;
    uint32_t const absBits = bits & 0x7FFFFFFFU;
    if (absBits >= 0x7F800000U)
    {
        return static_cast<uint16_t>(sign | 0x7C00U | (absBits > 0x7F800000U ? 0x200U : 0U));
    }
    if (absBits >= 0x477FF000U) // rounds to >= 65520: overflow to inf
    {
        return static_cast<uint16_t>(sign | 0x7C00U);
    }
    if (absBits < 0x38800000U) // below the smallest normal half: subnormal or zero
    {
        float const a = std::fabs(f) * 16777216.F; // exact: a power of two
        uint32_t const m = static_cast<uint32_t>(std::nearbyint(a));
        return static_cast<uint16_t>(sign | m);
    }
    uint32_t const rounded = absBits + 0xFFFU + ((absBits >> 13) & 1U);
    return static_cast<uint16_t>(sign | ((rounded - 0x38000000U) >> 13));
}

inline float bf16ToFloat(uint16_t h)
{
    uint32_t const bits = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

inline uint16_t floatToBf16(float f)
{
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    if ((bits & 0x7FFFFFFFU) > 0x7F800000U)
    {
        return static_cast<uint16_t>((bits >> 16) | 0x40U);
    }
    return static_cast<uint16_t>((bits + 0x7FFFU + ((bits >> 16) & 1U)) >> 16);
}

inline size_t elementBytes(DataType t)
{
    return t == DataType::kFLOAT ? 4 : 2;
}

inline float loadElement(void const* base, DataType t, int64_t i)
{
    switch (t)
    {
    case DataType::kHALF: return halfToFloat(static_cast<uint16_t const*>(base)[i]);
    case DataType::kBF16: return bf16ToFloat(static_cast<uint16_t const*>(base)[i]);
    default: return static_cast<float const*>(base)[i];
    }
}

struct F32
{
    using Storage = float;
    static float load(Storage x) { return x; }
    static Storage store(float x) { return x; }
};
struct F16
{
    using Storage = uint16_t;
    static float load(Storage x) { return halfToFloat(x); }
    static Storage store(float x) { return floatToHalf(x); }
};
struct BF16
{
    using Storage = uint16_t;
    static float load(Storage x) { return bf16ToFloat(x); }
    static Storage store(float x) { return floatToBf16(x); }
};

// ---------------------------------------------------------------- order keys

//! An unsigned key that orders like the reference's descending sort: NaN highest,
//! -0 == +0 (adding +0 turns -0 into +0), then the usual float order.
inline uint32_t orderKey(float s)
{
    s = s + 0.F;
    if (s != s)
    {
        return 0xFFFFFFFFU;
    }
    uint32_t bits;
    std::memcpy(&bits, &s, sizeof(bits));
    return (bits & 0x80000000U) ? ~bits : (bits | 0x80000000U);
}

#if SPARSIFINER_CPU_AVX512
inline __m512i orderKeys(__m512 s)
{
    s = _mm512_add_ps(s, _mm512_setzero_ps());
    __m512i const bits = _mm512_castps_si512(s);
    __m512i const sign = _mm512_srai_epi32(bits, 31);
    __m512i key = _mm512_xor_si512(bits, _mm512_or_si512(sign, _mm512_set1_epi32(static_cast<int32_t>(0x80000000U))));
    __mmask16 const nan = _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(key, nan, _mm512_set1_epi32(-1));
}

inline __mmask16 tailMask(int32_t n)
{
    return n >= kVEC ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>(n <= 0 ? 0U : (1U << n) - 1U);
}
#endif

// ---------------------------------------------------------------- exact k-th largest key

struct Range
{
    uint32_t lo;
    uint32_t hi;
};

Range keyRange(uint32_t const* keys, int32_t n)
{
    uint32_t lo = 0xFFFFFFFFU;
    uint32_t hi = 0;
    int32_t i = 0;
#if SPARSIFINER_CPU_AVX512
    __m512i vlo = _mm512_set1_epi32(-1);
    __m512i vhi = _mm512_setzero_si512();
    for (; i + kVEC <= n; i += kVEC)
    {
        __m512i const x = _mm512_loadu_si512(keys + i);
        vlo = _mm512_min_epu32(vlo, x);
        vhi = _mm512_max_epu32(vhi, x);
    }
    lo = _mm512_reduce_min_epu32(vlo);
    hi = _mm512_reduce_max_epu32(vhi);
#endif
    for (; i < n; ++i)
    {
        lo = std::min(lo, keys[i]);
        hi = std::max(hi, keys[i]);
    }
    return {lo, hi};
}

int32_t countAtLeast(uint32_t const* keys, int32_t n, uint32_t t)
{
    int32_t count = 0;
    int32_t i = 0;
#if SPARSIFINER_CPU_AVX512
    __m512i const vt = _mm512_set1_epi32(static_cast<int32_t>(t));
    for (; i + kVEC <= n; i += kVEC)
    {
        count += __builtin_popcount(_mm512_cmpge_epu32_mask(_mm512_loadu_si512(keys + i), vt));
    }
#endif
    for (; i < n; ++i)
    {
        count += keys[i] >= t ? 1 : 0;
    }
    return count;
}

//! Keeps the keys >= t (upper) or < t (lower) in place and returns how many remain;
//! their smallest and largest key go to r (the same pass).
int32_t compactKeys(uint32_t* keys, int32_t n, uint32_t t, bool upper, Range& r)
{
    int32_t out = 0;
    int32_t i = 0;
    uint32_t lo = 0xFFFFFFFFU;
    uint32_t hi = 0;
#if SPARSIFINER_CPU_AVX512
    __m512i const vt = _mm512_set1_epi32(static_cast<int32_t>(t));
    __m512i vlo = _mm512_set1_epi32(-1);
    __m512i vhi = _mm512_setzero_si512();
    for (; i + kVEC <= n; i += kVEC)
    {
        __m512i const x = _mm512_loadu_si512(keys + i);
        __mmask16 const ge = _mm512_cmpge_epu32_mask(x, vt);
        __mmask16 const keep = upper ? ge : static_cast<__mmask16>(~ge);
        // Register compress + full store: the memory form of vpcompressd is slow on Zen 4.
        _mm512_storeu_si512(keys + out, _mm512_maskz_compress_epi32(keep, x));
        out += __builtin_popcount(keep);
        vlo = _mm512_mask_min_epu32(vlo, keep, vlo, x);
        vhi = _mm512_mask_max_epu32(vhi, keep, vhi, x);
    }
    lo = _mm512_reduce_min_epu32(vlo);
    hi = _mm512_reduce_max_epu32(vhi);
#endif
    for (; i < n; ++i)
    {
        uint32_t const x = keys[i];
        bool const keep = (x >= t) == upper;
        keys[out] = x;
        out += keep ? 1 : 0;
        lo = keep ? std::min(lo, x) : lo;
        hi = keep ? std::max(hi, x) : hi;
    }
    r = {lo, hi};
    return out;
}

//! The k-th largest of keys[0..n) (1 <= k <= n) and how many keys are strictly larger.
//! Destroys the array. A bitwise descent: each step splits the open key range at its
//! highest differing bit, drops the keys on the side that cannot hold the k-th, and
//! stops as soon as the open keys are all equal or all needed.
void kthLargestKey(uint32_t* keys, int32_t n, int32_t k, uint32_t& kth, int32_t& greater)
{
    int32_t above = 0; // keys known to be larger than every open key
    int32_t step = 0;
    Range r = keyRange(keys, n);
    while (true)
    {
        if (r.lo == r.hi)
        {
            kth = r.lo;
            greater = above;
            return;
        }
        int32_t const need = k - above; // 1 <= need <= n
        if (need == n)
        {
            kth = r.lo;
            greater = above + countAtLeast(keys, n, r.lo + 1U);
            return;
        }
        int32_t const bit = 31 - __builtin_clz(r.lo ^ r.hi);
#if SPARSIFINER_CPU_AVX512
        if (n <= 2 * kVEC)
        {
            // Few keys left: finish the descent bit by bit in two registers, no compaction.
            __m512i const a = _mm512_maskz_loadu_epi32(tailMask(n), keys);
            __m512i const b = _mm512_maskz_loadu_epi32(tailMask(n - kVEC), keys + kVEC);
            __mmask16 const ma = tailMask(n);
            __mmask16 const mb = tailMask(n - kVEC);
            uint32_t t = bit == 31 ? 0U : (r.hi >> (bit + 1)) << (bit + 1); // the common prefix
            for (int32_t i = bit; i >= 0; --i)
            {
                uint32_t const trial = t | (1U << i);
                __m512i const vt = _mm512_set1_epi32(static_cast<int32_t>(trial));
                int32_t const cnt = __builtin_popcount(_mm512_mask_cmpge_epu32_mask(ma, a, vt))
                    + __builtin_popcount(_mm512_mask_cmpge_epu32_mask(mb, b, vt));
                t = cnt >= need ? trial : t;
            }
            __m512i const vt1 = _mm512_set1_epi32(static_cast<int32_t>(t));
            kth = t;
            greater = above + __builtin_popcount(_mm512_mask_cmpgt_epu32_mask(ma, a, vt1))
                + __builtin_popcount(_mm512_mask_cmpgt_epu32_mask(mb, b, vt1));
            return;
        }
#endif
        // Alternate an interpolated split (where `need` keys would sit if the open keys were
        // spread evenly) with a bisection at the highest differing bit: fast on smooth
        // score distributions, never worse than twice the bisection steps.
        uint32_t mid = (r.hi >> bit) << bit;
        if ((step++ & 1) == 0)
        {
            uint64_t const span = static_cast<uint64_t>(r.hi) - r.lo;
            uint64_t const offset = span * static_cast<uint64_t>(n - need) / static_cast<uint64_t>(n);
            mid = static_cast<uint32_t>(std::max<uint64_t>(r.lo + offset, static_cast<uint64_t>(r.lo) + 1));
        }
        int32_t const upperCount = countAtLeast(keys, n, mid);
        if (upperCount >= need)
        {
            n = compactKeys(keys, n, mid, true, r);
        }
        else
        {
            above += upperCount;
            n = compactKeys(keys, n, mid, false, r);
        }
    }
}

// ---------------------------------------------------------------- vector math

#if SPARSIFINER_CPU_AVX512
//! exp(x) in fp32, about 1 ulp; NaN stays NaN, x <= -104 gives 0.
inline __m512 expPs(__m512 x)
{
    x = _mm512_max_ps(_mm512_set1_ps(-104.F), x); // the second operand (x) wins for NaN
    x = _mm512_min_ps(_mm512_set1_ps(88.7F), x);
    __m512 const n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341F)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375F), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4F), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4F);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3F));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3F));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2F));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1F));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1F));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.F)));
    return _mm512_scalef_ps(p, n);
}

//! Lane l of the result is the sum of the 16 lanes of v[l].
inline __m512 transposeSum16(__m512 const (&v)[16])
{
    __m512 w[8];
    for (int32_t i = 0; i < 8; ++i)
    {
        w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    }
    __m512 u[4];
    for (int32_t i = 0; i < 4; ++i)
    {
        __m512d const a = _mm512_castps_pd(w[2 * i]);
        __m512d const b = _mm512_castps_pd(w[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    __m512 const y0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
    __m512 const y1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, 0x88), _mm512_shuffle_f32x4(y0, y1, 0xDD));
}

template <typename E>
inline __m512 loadVec(typename E::Storage const* p);
template <>
inline __m512 loadVec<F32>(float const* p)
{
    return _mm512_loadu_ps(p);
}
template <>
inline __m512 loadVec<F16>(uint16_t const* p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<__m256i const*>(p)));
}
template <>
inline __m512 loadVec<BF16>(uint16_t const* p)
{
    __m512i const w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<__m256i const*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
#endif

// ---------------------------------------------------------------- per-thread scratch

struct Scratch
{
    std::vector<float> coefVal;
    std::vector<int32_t> coefIdx;
    std::vector<float const*> basisRows;
    std::vector<float> scores;     // one row of scores (portable path)
    std::vector<uint32_t> candKey; // filtered keys, index order
    std::vector<int32_t> candIdx;
    std::vector<uint32_t> work;    // destroyed by kthLargestKey
    std::vector<int32_t> sel;      // rowBlock x budget selected keys, index order
    std::vector<int32_t> iota;     // 0..N-1 for dense rows
    std::vector<float> qRows;      // rowBlock x d, fp32
    std::vector<float> acc;        // rowBlock x d running output
    std::vector<float> rowMax;
    std::vector<float> rowSum;
    std::vector<int32_t> pos;      // per row: next selected key to attend
    std::vector<float> logits;
    std::vector<float> blockLogits; // rowBlock x (budget + 16), the L1-tiled attention
};

thread_local Scratch tScratch;

template <typename T>
void ensure(std::vector<T>& v, size_t n)
{
    if (v.size() < n)
    {
        v.resize(n);
    }
}

// ---------------------------------------------------------------- the run

struct Setup
{
    TopKMaskedAttentionCpuParams const* p;
    float const* basis; // [R, nPad] fp32
    bool basisNonFinite;
    int32_t n;
    int32_t nPad;
    int32_t d;
    int32_t rows;       // N - c
    int32_t rowBlock;
    int32_t blocksPerHead;
    int32_t keyTile;
    int32_t sampleMinN;
    int32_t l1Keys; // keys per L1 tile of attendBlockL1; 0: not used
};

Setup makeSetup(TopKMaskedAttentionCpuParams const& p, void const* workspace)
{
    Setup s{};
    s.p = &p;
    auto const* header = static_cast<unsigned char const*>(workspace);
    s.basisNonFinite = header[0] != 0;
    s.basis = reinterpret_cast<float const*>(header + kHEADER_BYTES);
    s.n = p.numTokens;
    s.nPad = (p.numTokens + kVEC - 1) / kVEC * kVEC;
    s.d = p.headDim;
    s.rows = p.numTokens - p.clsRows;
    s.rowBlock = p.rowBlock > 0 ? p.rowBlock : kDEFAULT_ROW_BLOCK;
    s.blocksPerHead = (s.rows + s.rowBlock - 1) / s.rowBlock;
    int64_t const keyBytes = 2 * static_cast<int64_t>(s.d) * static_cast<int64_t>(elementBytes(p.dataType));
    int64_t tile = p.keyTile > 0 ? p.keyTile : std::max<int64_t>(256, kDEFAULT_TILE_BYTES / keyBytes);
    s.keyTile = static_cast<int32_t>(std::min<int64_t>(tile, s.n));
    s.sampleMinN = p.sampleMinN != 0 ? p.sampleMinN : kDEFAULT_SAMPLE_MIN_N;
    // The L1-tiled attention pays off when each row keeps enough keys of each tile to fill
    // the 16-key logit groups (about 8 or more on average): keep-rate budgets, not B = 49.
    int64_t const l1 = std::max<int64_t>(kVEC, kL1_TILE_BYTES / (static_cast<int64_t>(s.d) * elementBytes(p.dataType)));
    bool const worth = static_cast<int64_t>(p.budget) * l1 >= kL1_MIN_KEYS_PER_TILE * static_cast<int64_t>(s.n);
    s.l1Keys = p.l1Keys > 0 ? p.l1Keys : (p.l1Keys == 0 && worth ? static_cast<int32_t>(l1) : 0);
    return s;
}

//! Scores of 16 consecutive keys from the row's nonzero coefficients.
#if SPARSIFINER_CPU_AVX512
inline __m512 scoreChunk(Setup const& s, float const* cv, int32_t const* ci, int32_t nnz, int32_t j)
{
    __m512 acc = _mm512_mul_ps(_mm512_set1_ps(cv[0]), _mm512_loadu_ps(s.basis + static_cast<int64_t>(ci[0]) * s.nPad + j));
    for (int32_t t = 1; t < nnz; ++t)
    {
        acc = _mm512_fmadd_ps(_mm512_set1_ps(cv[t]), _mm512_loadu_ps(s.basis + static_cast<int64_t>(ci[t]) * s.nPad + j), acc);
    }
    return acc;
}
#endif

//! Keys whose order key is >= t, compressed into cand (index order); returns the count.
int32_t scoreAndFilter(Setup const& s, Scratch& w, int32_t nnz, uint32_t t)
{
    float const* cv = w.coefVal.data();
    int32_t const* ci = w.coefIdx.data();
    uint32_t* ck = w.candKey.data();
    int32_t* cx = w.candIdx.data();
    int32_t count = 0;
#if SPARSIFINER_CPU_AVX512
    float const* const* rows = w.basisRows.data();
    for (int32_t t0 = 0; t0 < nnz; ++t0)
    {
        w.basisRows[t0] = s.basis + static_cast<int64_t>(ci[t0]) * s.nPad;
    }
    __m512i const vt = _mm512_set1_epi32(static_cast<int32_t>(t));
    __m512i const lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    // Branch-free compress of one chunk: with scattered candidates a branch per chunk
    // mispredicts about half the time, which costs more than the two compresses.
    auto store = [&](__m512i key, __mmask16 keep, int32_t j) {
        __m512i const idx = _mm512_add_epi32(lane, _mm512_set1_epi32(j));
        _mm512_storeu_si512(ck + count, _mm512_maskz_compress_epi32(keep, key));
        _mm512_storeu_si512(cx + count, _mm512_maskz_compress_epi32(keep, idx));
        count += __builtin_popcount(keep);
    };
    auto emit = [&](__m512 score, int32_t j) {
        __m512i const key = orderKeys(score);
        __mmask16 const keep = _mm512_cmpge_epu32_mask(key, vt) & tailMask(s.n - j);
        if (keep != 0)
        {
            store(key, keep, j);
        }
    };
    int32_t j = 0;
    // Four independent accumulators per step: the FMA chains of one chunk are nnz long.
    for (; j + 4 * kVEC <= s.nPad; j += 4 * kVEC)
    {
        __m512 const c0 = _mm512_set1_ps(cv[0]);
        __m512 a0 = _mm512_mul_ps(c0, _mm512_loadu_ps(rows[0] + j));
        __m512 a1 = _mm512_mul_ps(c0, _mm512_loadu_ps(rows[0] + j + kVEC));
        __m512 a2 = _mm512_mul_ps(c0, _mm512_loadu_ps(rows[0] + j + 2 * kVEC));
        __m512 a3 = _mm512_mul_ps(c0, _mm512_loadu_ps(rows[0] + j + 3 * kVEC));
        for (int32_t r = 1; r < nnz; ++r)
        {
            __m512 const c = _mm512_set1_ps(cv[r]);
            float const* b = rows[r] + j;
            a0 = _mm512_fmadd_ps(c, _mm512_loadu_ps(b), a0);
            a1 = _mm512_fmadd_ps(c, _mm512_loadu_ps(b + kVEC), a1);
            a2 = _mm512_fmadd_ps(c, _mm512_loadu_ps(b + 2 * kVEC), a2);
            a3 = _mm512_fmadd_ps(c, _mm512_loadu_ps(b + 3 * kVEC), a3);
        }
        __m512i const k0 = orderKeys(a0);
        __m512i const k1 = orderKeys(a1);
        __m512i const k2 = orderKeys(a2);
        __m512i const k3 = orderKeys(a3);
        __mmask16 const m0 = _mm512_cmpge_epu32_mask(k0, vt) & tailMask(s.n - j);
        __mmask16 const m1 = _mm512_cmpge_epu32_mask(k1, vt) & tailMask(s.n - j - kVEC);
        __mmask16 const m2 = _mm512_cmpge_epu32_mask(k2, vt) & tailMask(s.n - j - 2 * kVEC);
        __mmask16 const m3 = _mm512_cmpge_epu32_mask(k3, vt) & tailMask(s.n - j - 3 * kVEC);
        // One branch per 64 keys: usually not taken when candidates are rare or clustered.
        if ((m0 | m1 | m2 | m3) != 0)
        {
            store(k0, m0, j);
            store(k1, m1, j + kVEC);
            store(k2, m2, j + 2 * kVEC);
            store(k3, m3, j + 3 * kVEC);
        }
    }
    for (; j < s.n; j += kVEC)
    {
        emit(scoreChunk(s, cv, ci, nnz, j), j);
    }
#else
    float* sc = w.scores.data();
    {
        float const c0 = cv[0];
        float const* b0 = s.basis + static_cast<int64_t>(ci[0]) * s.nPad;
        for (int32_t j = 0; j < s.nPad; ++j)
        {
            sc[j] = c0 * b0[j];
        }
    }
    for (int32_t r = 1; r < nnz; ++r)
    {
        float const c = cv[r];
        float const* b = s.basis + static_cast<int64_t>(ci[r]) * s.nPad;
        for (int32_t j = 0; j < s.nPad; ++j)
        {
            sc[j] += c * b[j];
        }
    }
    for (int32_t j = 0; j < s.n; ++j)
    {
        uint32_t const key = orderKey(sc[j]);
        ck[count] = key;
        cx[count] = j;
        count += key >= t ? 1 : 0;
    }
#endif
    return count;
}

//! A threshold key with, most likely, a few times budget scores at or above it: the
//! r-th largest of 256 scores at 16 evenly spread runs of 16 keys. 0 when not worth it.
uint32_t sampledThreshold(Setup const& s, Scratch& w, int32_t nnz)
{
    int32_t const budget = s.p->budget;
    if (s.sampleMinN < 0 || s.n < s.sampleMinN || s.n < 4 * kSAMPLES)
    {
        return 0;
    }
    double const expected = static_cast<double>(budget) * kSAMPLES / s.n;
    int32_t const r = static_cast<int32_t>(std::ceil(expected + 3.0 * std::sqrt(expected) + 3.0));
    if (r >= kSAMPLES / 2)
    {
        return 0;
    }
    uint32_t* keys = w.work.data();
    int32_t const nChunks = s.nPad / kVEC;
    for (int32_t c = 0; c < kSAMPLE_CHUNKS; ++c)
    {
        int32_t const j = static_cast<int32_t>(static_cast<int64_t>(c) * (nChunks - 1) / (kSAMPLE_CHUNKS - 1)) * kVEC;
#if SPARSIFINER_CPU_AVX512
        __m512i const key = orderKeys(scoreChunk(s, w.coefVal.data(), w.coefIdx.data(), nnz, j));
        // Padding columns of the last chunk hold zeros; they rank as score 0 at worst.
        _mm512_storeu_si512(keys + c * kVEC, key);
#else
        for (int32_t l = 0; l < kVEC; ++l)
        {
            float sum = w.coefVal[0] * s.basis[static_cast<int64_t>(w.coefIdx[0]) * s.nPad + j + l];
            for (int32_t t = 1; t < nnz; ++t)
            {
                sum += w.coefVal[t] * s.basis[static_cast<int64_t>(w.coefIdx[t]) * s.nPad + j + l];
            }
            keys[c * kVEC + l] = orderKey(sum);
        }
#endif
    }
    uint32_t kth = 0;
    int32_t greater = 0;
    kthLargestKey(keys, kSAMPLES, r, kth, greater);
    return kth;
}

//! Selects the row's keys into sel (index order, exactly budget of them).
template <typename C>
void selectRow(Setup const& s, Scratch& w, typename C::Storage const* coefRow, int32_t* sel,
    TopKMaskedAttentionCpuStats& stats)
{
    int32_t const budget = s.p->budget;
    int32_t nnz = 0;
    for (int32_t r = 0; r < s.p->rank; ++r)
    {
        float const c = C::load(coefRow[r]);
        // A zero coefficient adds exactly 0 to every score unless the basis holds inf/NaN.
        if (c != 0.F || s.basisNonFinite)
        {
            w.coefVal[nnz] = c;
            w.coefIdx[nnz] = r;
            ++nnz;
        }
    }
    ++stats.rows;
    if (nnz == 0)
    {
        // Every score is 0: the lowest indices win.
        for (int32_t j = 0; j < budget; ++j)
        {
            sel[j] = j;
        }
        return;
    }
    uint32_t const t = sampledThreshold(s, w, nnz);
    int32_t count = scoreAndFilter(s, w, nnz, t);
    if (t != 0)
    {
        ++stats.sampledRows;
        if (count < budget)
        {
            ++stats.fallbackRows;
            count = scoreAndFilter(s, w, nnz, 0);
        }
    }
    stats.candidates += count;
    uint32_t const* ck = w.candKey.data();
    int32_t const* cx = w.candIdx.data();
    uint32_t kth = 0;
    int32_t greater = 0;
    if (count == budget)
    {
        std::memcpy(sel, cx, sizeof(int32_t) * static_cast<size_t>(budget));
        return;
    }
    std::memcpy(w.work.data(), ck, sizeof(uint32_t) * static_cast<size_t>(count));
    kthLargestKey(w.work.data(), count, budget, kth, greater);
    int32_t eqLeft = budget - greater; // ties at the threshold: the lowest indices
    int32_t out = 0;
    int32_t i = 0;
#if SPARSIFINER_CPU_AVX512
    __m512i const vk = _mm512_set1_epi32(static_cast<int32_t>(kth));
    for (; i + kVEC <= count; i += kVEC)
    {
        __m512i const key = _mm512_loadu_si512(ck + i);
        uint32_t const gt = _mm512_cmpgt_epu32_mask(key, vk);
        uint32_t eq = _mm512_cmpeq_epu32_mask(key, vk);
        int32_t const nEq = __builtin_popcount(eq);
        if (nEq > eqLeft)
        {
            eq = _pdep_u32((1U << eqLeft) - 1U, eq);
        }
        eqLeft -= __builtin_popcount(eq);
        __mmask16 const take = static_cast<__mmask16>(gt | eq);
        _mm512_storeu_si512(sel + out, _mm512_maskz_compress_epi32(take, _mm512_loadu_si512(cx + i)));
        out += __builtin_popcount(take);
    }
#endif
    for (; i < count; ++i)
    {
        if (ck[i] > kth || (ck[i] == kth && eqLeft > 0))
        {
            eqLeft -= ck[i] == kth ? 1 : 0;
            sel[out++] = cx[i];
        }
    }
}

//! Online-softmax state of one query row.
struct RowState
{
    float* acc;
    float* max;
    float* sum;
};

#if SPARSIFINER_CPU_AVX512
//! attendSegment's vector path for d = 16 * kNC (the loops over d unroll).
template <typename E, int32_t kNC>
void attendSegmentVec(float const* q, typename E::Storage const* kBase, typename E::Storage const* vBase,
    int32_t const* idx, int32_t count, float scale, RowState st, float* logits)
{
    constexpr int32_t nc = kNC;
    constexpr int32_t d = kNC * kVEC;
    __m512 qv[kNC];
    for (int32_t c = 0; c < nc; ++c)
    {
        qv[c] = _mm512_loadu_ps(q + c * kVEC);
    }
    __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int32_t g = 0; g < count; g += kVEC)
    {
        int32_t const m = std::min(kVEC, count - g);
        if (m <= 4)
        {
            // A short tail: a horizontal sum per key costs less than a padded group.
            for (int32_t l = 0; l < m; ++l)
            {
                auto const* kr = kBase + static_cast<int64_t>(idx[g + l]) * d;
                __m512 a = _mm512_mul_ps(qv[0], loadVec<E>(kr));
                for (int32_t c = 1; c < nc; ++c)
                {
                    a = _mm512_fmadd_ps(qv[c], loadVec<E>(kr + c * kVEC), a);
                }
                logits[g + l] = _mm512_reduce_add_ps(a) * scale;
            }
            vmax = _mm512_mask_max_ps(vmax, tailMask(m), _mm512_loadu_ps(logits + g), vmax);
            continue;
        }
        __m512 dots[16];
        for (int32_t l = 0; l < kVEC; ++l)
        {
            auto const* kr = kBase + static_cast<int64_t>(idx[g + std::min(l, m - 1)]) * d;
            __m512 a = _mm512_mul_ps(qv[0], loadVec<E>(kr));
            for (int32_t c = 1; c < nc; ++c)
            {
                a = _mm512_fmadd_ps(qv[c], loadVec<E>(kr + c * kVEC), a);
            }
            dots[l] = a;
        }
        __m512 const lg = _mm512_mul_ps(transposeSum16(dots), _mm512_set1_ps(scale));
        _mm512_storeu_ps(logits + g, lg);
        vmax = _mm512_mask_max_ps(vmax, tailMask(m), lg, vmax);
    }
    float const mt = _mm512_reduce_max_ps(vmax);
    if (mt > *st.max)
    {
        float const factor = std::exp(*st.max - mt);
        __m512 const vf = _mm512_set1_ps(factor);
        for (int32_t c = 0; c < nc; ++c)
        {
            _mm512_storeu_ps(st.acc + c * kVEC, _mm512_mul_ps(_mm512_loadu_ps(st.acc + c * kVEC), vf));
        }
        *st.sum *= factor;
        *st.max = mt;
    }
    __m512 const vm = _mm512_set1_ps(*st.max);
    __m512 vsum = _mm512_setzero_ps();
    for (int32_t g = 0; g < count; g += kVEC)
    {
        __m512 const p = expPs(_mm512_sub_ps(_mm512_loadu_ps(logits + g), vm));
        _mm512_storeu_ps(logits + g, p);
        vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(tailMask(count - g), p));
    }
    *st.sum += _mm512_reduce_add_ps(vsum);
    __m512 a0[kNC];
    __m512 a1[kNC];
    for (int32_t c = 0; c < nc; ++c)
    {
        a0[c] = _mm512_loadu_ps(st.acc + c * kVEC);
        a1[c] = _mm512_setzero_ps();
    }
    int32_t j = 0;
    for (; j + 2 <= count; j += 2)
    {
        auto const* v0 = vBase + static_cast<int64_t>(idx[j]) * d;
        auto const* v1 = vBase + static_cast<int64_t>(idx[j + 1]) * d;
        __m512 const p0 = _mm512_set1_ps(logits[j]);
        __m512 const p1 = _mm512_set1_ps(logits[j + 1]);
        for (int32_t c = 0; c < nc; ++c)
        {
            a0[c] = _mm512_fmadd_ps(p0, loadVec<E>(v0 + c * kVEC), a0[c]);
            a1[c] = _mm512_fmadd_ps(p1, loadVec<E>(v1 + c * kVEC), a1[c]);
        }
    }
    if (j < count)
    {
        auto const* v0 = vBase + static_cast<int64_t>(idx[j]) * d;
        __m512 const p0 = _mm512_set1_ps(logits[j]);
        for (int32_t c = 0; c < nc; ++c)
        {
            a0[c] = _mm512_fmadd_ps(p0, loadVec<E>(v0 + c * kVEC), a0[c]);
        }
    }
    for (int32_t c = 0; c < nc; ++c)
    {
        _mm512_storeu_ps(st.acc + c * kVEC, _mm512_add_ps(a0[c], a1[c]));
    }
}
#endif

//! Attends one query row (fp32, d) to the keys idx[0..count): logits, running max,
//! rescale, exp, sum and the weighted sum of V, all in fp32.
template <typename E>
void attendSegment(Setup const& s, float const* q, typename E::Storage const* kBase, typename E::Storage const* vBase,
    int32_t const* idx, int32_t count, RowState st, float* logits)
{
    int32_t const d = s.d;
    float const scale = s.p->scale;
    if (count <= 0)
    {
        return;
    }
#if SPARSIFINER_CPU_AVX512
    switch (d)
    {
    case 16: attendSegmentVec<E, 1>(q, kBase, vBase, idx, count, scale, st, logits); return;
    case 32: attendSegmentVec<E, 2>(q, kBase, vBase, idx, count, scale, st, logits); return;
    case 48: attendSegmentVec<E, 3>(q, kBase, vBase, idx, count, scale, st, logits); return;
    case 64: attendSegmentVec<E, 4>(q, kBase, vBase, idx, count, scale, st, logits); return;
    case 80: attendSegmentVec<E, 5>(q, kBase, vBase, idx, count, scale, st, logits); return;
    case 96: attendSegmentVec<E, 6>(q, kBase, vBase, idx, count, scale, st, logits); return;
    case 112: attendSegmentVec<E, 7>(q, kBase, vBase, idx, count, scale, st, logits); return;
    case 128: attendSegmentVec<E, 8>(q, kBase, vBase, idx, count, scale, st, logits); return;
    default: break;
    }
#endif
    float mt = -std::numeric_limits<float>::infinity();
    for (int32_t j = 0; j < count; ++j)
    {
        auto const* kr = kBase + static_cast<int64_t>(idx[j]) * d;
        float dot = 0.F;
        for (int32_t c = 0; c < d; ++c)
        {
            dot += q[c] * E::load(kr[c]);
        }
        logits[j] = dot * scale;
        mt = logits[j] > mt ? logits[j] : mt;
    }
    if (mt > *st.max)
    {
        float const factor = std::exp(*st.max - mt);
        for (int32_t c = 0; c < d; ++c)
        {
            st.acc[c] *= factor;
        }
        *st.sum *= factor;
        *st.max = mt;
    }
    float sum = 0.F;
    for (int32_t j = 0; j < count; ++j)
    {
        float const p = std::exp(logits[j] - *st.max);
        sum += p;
        auto const* vr = vBase + static_cast<int64_t>(idx[j]) * d;
        for (int32_t c = 0; c < d; ++c)
        {
            st.acc[c] += p * E::load(vr[c]);
        }
    }
    *st.sum += sum;
}

#if SPARSIFINER_CPU_AVX512
//! Logits of one query row (fp32, pre-loaded in qv) for keys idx[0..count) into out;
//! writes up to 15 floats past count (callers keep that padding).
template <typename E, int32_t kNC>
inline void logitsVec(__m512 const (&qv)[kNC], typename E::Storage const* kBase, int32_t const* idx, int32_t count,
    float scale, float* out)
{
    constexpr int32_t d = kNC * kVEC;
    for (int32_t g = 0; g < count; g += kVEC)
    {
        int32_t const m = std::min(kVEC, count - g);
        if (m <= 4)
        {
            for (int32_t l = 0; l < m; ++l)
            {
                auto const* kr = kBase + static_cast<int64_t>(idx[g + l]) * d;
                __m512 a = _mm512_mul_ps(qv[0], loadVec<E>(kr));
                for (int32_t c = 1; c < kNC; ++c)
                {
                    a = _mm512_fmadd_ps(qv[c], loadVec<E>(kr + c * kVEC), a);
                }
                out[g + l] = _mm512_reduce_add_ps(a) * scale;
            }
            continue;
        }
        __m512 dots[16];
        for (int32_t l = 0; l < kVEC; ++l)
        {
            auto const* kr = kBase + static_cast<int64_t>(idx[g + std::min(l, m - 1)]) * d;
            __m512 a = _mm512_mul_ps(qv[0], loadVec<E>(kr));
            for (int32_t c = 1; c < kNC; ++c)
            {
                a = _mm512_fmadd_ps(qv[c], loadVec<E>(kr + c * kVEC), a);
            }
            dots[l] = a;
        }
        _mm512_storeu_ps(out + g, _mm512_mul_ps(transposeSum16(dots), _mm512_set1_ps(scale)));
    }
}

//! acc[0..d) += sum_j p[j] * V[idx[j]].
template <typename E, int32_t kNC>
inline void weightedSumVec(float const* p, typename E::Storage const* vBase, int32_t const* idx, int32_t count, float* acc)
{
    constexpr int32_t d = kNC * kVEC;
    __m512 a0[kNC];
    __m512 a1[kNC];
    for (int32_t c = 0; c < kNC; ++c)
    {
        a0[c] = _mm512_loadu_ps(acc + c * kVEC);
        a1[c] = _mm512_setzero_ps();
    }
    int32_t j = 0;
    for (; j + 2 <= count; j += 2)
    {
        auto const* v0 = vBase + static_cast<int64_t>(idx[j]) * d;
        auto const* v1 = vBase + static_cast<int64_t>(idx[j + 1]) * d;
        __m512 const p0 = _mm512_set1_ps(p[j]);
        __m512 const p1 = _mm512_set1_ps(p[j + 1]);
        for (int32_t c = 0; c < kNC; ++c)
        {
            a0[c] = _mm512_fmadd_ps(p0, loadVec<E>(v0 + c * kVEC), a0[c]);
            a1[c] = _mm512_fmadd_ps(p1, loadVec<E>(v1 + c * kVEC), a1[c]);
        }
    }
    if (j < count)
    {
        auto const* v0 = vBase + static_cast<int64_t>(idx[j]) * d;
        __m512 const p0 = _mm512_set1_ps(p[j]);
        for (int32_t c = 0; c < kNC; ++c)
        {
            a0[c] = _mm512_fmadd_ps(p0, loadVec<E>(v0 + c * kVEC), a0[c]);
        }
    }
    for (int32_t c = 0; c < kNC; ++c)
    {
        _mm512_storeu_ps(acc + c * kVEC, _mm512_add_ps(a0[c], a1[c]));
    }
}

//! Attention of a row block for large budgets, two exact passes: all rows take each
//! small K tile (it stays in L1) for their logits, then a softmax per row, then all rows
//! take each V tile for their weighted sums. A K or V row then comes from L2 once per
//! block rather than once per row that kept it.
template <typename E, int32_t kNC>
void attendBlockL1(Setup const& s, Scratch& w, int32_t nRows, typename E::Storage const* k,
    typename E::Storage const* v)
{
    constexpr int32_t d = kNC * kVEC;
    int32_t const budget = s.p->budget;
    int32_t const stride = budget + kVEC;
    float const scale = s.p->scale;
    float* logits = w.blockLogits.data();
    for (int32_t r = 0; r < nRows; ++r)
    {
        w.pos[r] = 0;
    }
    for (int32_t t0 = 0; t0 < s.n; t0 += s.l1Keys)
    {
        int32_t const t1 = std::min(s.n, t0 + s.l1Keys);
        for (int32_t r = 0; r < nRows; ++r)
        {
            int32_t const* sel = w.sel.data() + static_cast<int64_t>(r) * budget;
            int32_t const begin = w.pos[r];
            int32_t end = begin;
            while (end < budget && sel[end] < t1)
            {
                ++end;
            }
            if (end > begin)
            {
                __m512 qv[kNC];
                float const* q = w.qRows.data() + static_cast<int64_t>(r) * d;
                for (int32_t c = 0; c < kNC; ++c)
                {
                    qv[c] = _mm512_loadu_ps(q + c * kVEC);
                }
                logitsVec<E, kNC>(qv, k, sel + begin, end - begin, scale, logits + static_cast<int64_t>(r) * stride + begin);
            }
            w.pos[r] = end;
        }
    }
    for (int32_t r = 0; r < nRows; ++r)
    {
        float* row = logits + static_cast<int64_t>(r) * stride;
        __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
        for (int32_t g = 0; g < budget; g += kVEC)
        {
            vmax = _mm512_mask_max_ps(vmax, tailMask(budget - g), _mm512_loadu_ps(row + g), vmax);
        }
        __m512 const vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        __m512 vsum = _mm512_setzero_ps();
        for (int32_t g = 0; g < budget; g += kVEC)
        {
            __m512 const p = expPs(_mm512_sub_ps(_mm512_loadu_ps(row + g), vm));
            _mm512_storeu_ps(row + g, p);
            vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(tailMask(budget - g), p));
        }
        w.rowSum[r] = _mm512_reduce_add_ps(vsum);
        w.pos[r] = 0;
    }
    for (int32_t t0 = 0; t0 < s.n; t0 += s.l1Keys)
    {
        int32_t const t1 = std::min(s.n, t0 + s.l1Keys);
        for (int32_t r = 0; r < nRows; ++r)
        {
            int32_t const* sel = w.sel.data() + static_cast<int64_t>(r) * budget;
            int32_t const begin = w.pos[r];
            int32_t end = begin;
            while (end < budget && sel[end] < t1)
            {
                ++end;
            }
            if (end > begin)
            {
                weightedSumVec<E, kNC>(logits + static_cast<int64_t>(r) * stride + begin, v, sel + begin, end - begin,
                    w.acc.data() + static_cast<int64_t>(r) * d);
            }
            w.pos[r] = end;
        }
    }
}
#endif

//! The L1-tiled two-pass attention when it applies (AVX-512, d in 16..128 step 16);
//! returns false otherwise.
template <typename E>
bool attendBlockL1Dispatch(Setup const& s, Scratch& w, int32_t nRows, typename E::Storage const* k,
    typename E::Storage const* v)
{
#if SPARSIFINER_CPU_AVX512
    if (s.l1Keys <= 0)
    {
        return false;
    }
    switch (s.d)
    {
    case 16: attendBlockL1<E, 1>(s, w, nRows, k, v); return true;
    case 32: attendBlockL1<E, 2>(s, w, nRows, k, v); return true;
    case 48: attendBlockL1<E, 3>(s, w, nRows, k, v); return true;
    case 64: attendBlockL1<E, 4>(s, w, nRows, k, v); return true;
    case 80: attendBlockL1<E, 5>(s, w, nRows, k, v); return true;
    case 96: attendBlockL1<E, 6>(s, w, nRows, k, v); return true;
    case 112: attendBlockL1<E, 7>(s, w, nRows, k, v); return true;
    case 128: attendBlockL1<E, 8>(s, w, nRows, k, v); return true;
    default: return false;
    }
#else
    (void) s;
    (void) w;
    (void) nRows;
    (void) k;
    (void) v;
    return false;
#endif
}

template <typename E>
void loadRow(typename E::Storage const* src, int32_t d, float* dst)
{
    for (int32_t c = 0; c < d; ++c)
    {
        dst[c] = E::load(src[c]);
    }
}

template <typename E>
void storeRow(RowState st, int32_t d, typename E::Storage* dst)
{
    float const inv = 1.F / *st.sum;
    for (int32_t c = 0; c < d; ++c)
    {
        dst[c] = E::store(st.acc[c] * inv);
    }
}

template <typename E, typename C>
void runItem(Setup const& s, Scratch& w, int64_t item, TopKMaskedAttentionCpuStats& stats)
{
    using S = typename E::Storage;
    TopKMaskedAttentionCpuParams const& p = *s.p;
    int64_t const bh = item / s.blocksPerHead;
    int32_t const block = static_cast<int32_t>(item % s.blocksPerHead);
    int32_t const d = s.d;
    int32_t const budget = p.budget;
    int64_t const headOffset = bh * static_cast<int64_t>(s.n) * d;
    S const* q = static_cast<S const*>(p.q) + headOffset;
    S const* k = static_cast<S const*>(p.k) + headOffset;
    S const* v = static_cast<S const*>(p.v) + headOffset;
    S* out = static_cast<S*>(p.out) + headOffset;
    auto const* coef = static_cast<typename C::Storage const*>(p.coef) + bh * static_cast<int64_t>(s.rows) * p.rank;

    if (block == 0 && p.clsRows > 0)
    {
        // Dense rows: every key, in one segment.
        for (int32_t i = 0; i < p.clsRows; ++i)
        {
            float m = -std::numeric_limits<float>::infinity();
            float l = 0.F;
            std::fill(w.acc.begin(), w.acc.begin() + d, 0.F);
            loadRow<E>(q + static_cast<int64_t>(i) * d, d, w.qRows.data());
            RowState st{w.acc.data(), &m, &l};
            attendSegment<E>(s, w.qRows.data(), k, v, w.iota.data(), s.n, st, w.logits.data());
            storeRow<E>(st, d, out + static_cast<int64_t>(i) * d);
        }
    }

    int32_t const r0 = block * s.rowBlock;
    int32_t const nRows = std::min(s.rowBlock, s.rows - r0);
    for (int32_t r = 0; r < nRows; ++r)
    {
        int32_t const row = r0 + r;
        selectRow<C>(s, w, coef + static_cast<int64_t>(row) * p.rank, w.sel.data() + static_cast<int64_t>(r) * budget,
            stats);
        loadRow<E>(q + static_cast<int64_t>(p.clsRows + row) * d, d, w.qRows.data() + static_cast<int64_t>(r) * d);
        w.rowMax[r] = -std::numeric_limits<float>::infinity();
        w.rowSum[r] = 0.F;
        w.pos[r] = 0;
    }
    std::fill(w.acc.begin(), w.acc.begin() + static_cast<int64_t>(nRows) * d, 0.F);
    if (attendBlockL1Dispatch<E>(s, w, nRows, k, v))
    {
        for (int32_t r = 0; r < nRows; ++r)
        {
            RowState st{w.acc.data() + static_cast<int64_t>(r) * d, &w.rowMax[r], &w.rowSum[r]};
            storeRow<E>(st, d, out + static_cast<int64_t>(p.clsRows + r0 + r) * d);
        }
        return;
    }
    // Key-blocked: all rows of the block visit one K/V tile before the next, so a tile
    // is read from memory once per block and from L2 by each row.
    for (int32_t t0 = 0; t0 < s.n; t0 += s.keyTile)
    {
        int32_t const t1 = std::min(s.n, t0 + s.keyTile);
        for (int32_t r = 0; r < nRows; ++r)
        {
            int32_t const* sel = w.sel.data() + static_cast<int64_t>(r) * budget;
            int32_t const begin = w.pos[r];
            int32_t end = begin;
            if (t1 == s.n)
            {
                end = budget;
            }
            else
            {
                while (end < budget && sel[end] < t1)
                {
                    ++end;
                }
            }
            w.pos[r] = end;
            RowState st{w.acc.data() + static_cast<int64_t>(r) * d, &w.rowMax[r], &w.rowSum[r]};
            attendSegment<E>(s, w.qRows.data() + static_cast<int64_t>(r) * d, k, v, sel + begin, end - begin, st,
                w.logits.data());
        }
    }
    for (int32_t r = 0; r < nRows; ++r)
    {
        RowState st{w.acc.data() + static_cast<int64_t>(r) * d, &w.rowMax[r], &w.rowSum[r]};
        storeRow<E>(st, d, out + static_cast<int64_t>(p.clsRows + r0 + r) * d);
    }
}

template <typename E, typename C>
void runItems(Setup const& s, int64_t begin, int64_t end, TopKMaskedAttentionCpuStats& stats)
{
    Scratch& w = tScratch;
    TopKMaskedAttentionCpuParams const& p = *s.p;
    size_t const n = static_cast<size_t>(s.nPad) + kVEC;
    size_t const rb = static_cast<size_t>(s.rowBlock);
    ensure(w.coefVal, static_cast<size_t>(p.rank));
    ensure(w.coefIdx, static_cast<size_t>(p.rank));
    ensure(w.basisRows, static_cast<size_t>(p.rank));
    ensure(w.scores, n);
    ensure(w.candKey, n);
    ensure(w.candIdx, n);
    ensure(w.work, std::max<size_t>(n, kSAMPLES + kVEC));
    ensure(w.sel, rb * static_cast<size_t>(p.budget) + kVEC);
    ensure(w.qRows, rb * static_cast<size_t>(s.d));
    ensure(w.acc, rb * static_cast<size_t>(s.d));
    ensure(w.rowMax, rb);
    ensure(w.rowSum, rb);
    ensure(w.pos, rb);
    ensure(w.logits, n);
    ensure(w.blockLogits, rb * (static_cast<size_t>(p.budget) + kVEC));
    if (p.clsRows > 0 && w.iota.size() < static_cast<size_t>(s.n))
    {
        size_t const old = w.iota.size();
        w.iota.resize(static_cast<size_t>(s.n));
        for (size_t j = old; j < w.iota.size(); ++j)
        {
            w.iota[j] = static_cast<int32_t>(j);
        }
    }
    for (int64_t item = begin; item < end; ++item)
    {
        runItem<E, C>(s, w, item, stats);
    }
}

template <typename E>
void dispatchCoef(Setup const& s, int64_t begin, int64_t end, TopKMaskedAttentionCpuStats& stats)
{
    switch (s.p->coefType)
    {
    case DataType::kHALF: runItems<E, F16>(s, begin, end, stats); break;
    case DataType::kBF16: runItems<E, BF16>(s, begin, end, stats); break;
    default: runItems<E, F32>(s, begin, end, stats); break;
    }
}

bool validType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

} // namespace

char const* validateTopKMaskedAttentionCpu(TopKMaskedAttentionCpuParams const& p) noexcept
{
    if (!validType(p.dataType) || !validType(p.coefType) || !validType(p.basisType))
    {
        return "q, k, v, coef and basis must be float32, float16 or bfloat16";
    }
    if (p.batchHeads < 1 || p.numTokens < 1 || p.headDim < 1 || p.rank < 1)
    {
        return "B * H, N, d and R must all be at least 1";
    }
    if (p.clsRows < 0 || p.clsRows >= p.numTokens)
    {
        return "cls_rows must be in [0, N)";
    }
    if (p.budget < 1 || p.budget > p.numTokens)
    {
        return "budget is out of range: it must be between 1 and N";
    }
    if (!std::isfinite(p.scale))
    {
        return "scale must be finite";
    }
    if (p.numTokens > (1 << 30) / 2 || p.rowBlock < 0 || p.keyTile < 0 || p.l1Keys < -1)
    {
        return "N or a tuning knob is out of range";
    }
    bool const empty = p.q == nullptr || p.k == nullptr || p.v == nullptr || p.coef == nullptr || p.basis == nullptr
        || p.out == nullptr;
    if (empty)
    {
        return "a tensor pointer is null";
    }
    return nullptr;
}

size_t getTopKMaskedAttentionCpuWorkspaceSize(TopKMaskedAttentionCpuParams const& p) noexcept
{
    size_t const nPad = (static_cast<size_t>(std::max(p.numTokens, 0)) + kVEC - 1) / kVEC * kVEC;
    return kHEADER_BYTES + static_cast<size_t>(std::max(p.rank, 0)) * nPad * sizeof(float) + 64;
}

void prepareTopKMaskedAttentionCpu(TopKMaskedAttentionCpuParams const& p, void* workspace) noexcept
{
    auto* header = static_cast<unsigned char*>(workspace);
    auto* basis = reinterpret_cast<float*>(header + kHEADER_BYTES);
    int64_t const nPad = (static_cast<int64_t>(p.numTokens) + kVEC - 1) / kVEC * kVEC;
    bool nonFinite = false;
    for (int64_t r = 0; r < p.rank; ++r)
    {
        for (int64_t j = 0; j < nPad; ++j)
        {
            float const b = j < p.numTokens ? loadElement(p.basis, p.basisType, r * p.numTokens + j) : 0.F;
            nonFinite = nonFinite || !std::isfinite(b);
            basis[r * nPad + j] = b;
        }
    }
    std::memset(header, 0, kHEADER_BYTES);
    header[0] = nonFinite ? 1 : 0;
}

int64_t getTopKMaskedAttentionCpuWorkItems(TopKMaskedAttentionCpuParams const& p) noexcept
{
    int32_t const rowBlock = p.rowBlock > 0 ? p.rowBlock : kDEFAULT_ROW_BLOCK;
    int64_t const rows = static_cast<int64_t>(p.numTokens) - p.clsRows;
    return p.batchHeads * ((rows + rowBlock - 1) / rowBlock);
}

bool runTopKMaskedAttentionCpu(TopKMaskedAttentionCpuParams const& p, void const* workspace, int64_t begin,
    int64_t end, TopKMaskedAttentionCpuStats* stats) noexcept
{
    try
    {
        Setup const s = makeSetup(p, workspace);
        TopKMaskedAttentionCpuStats local;
        switch (p.dataType)
        {
        case DataType::kHALF: dispatchCoef<F16>(s, begin, end, local); break;
        case DataType::kBF16: dispatchCoef<BF16>(s, begin, end, local); break;
        default: dispatchCoef<F32>(s, begin, end, local); break;
        }
        if (stats != nullptr)
        {
            stats->rows += local.rows;
            stats->sampledRows += local.sampledRows;
            stats->fallbackRows += local.fallbackRows;
            stats->candidates += local.candidates;
        }
        return true;
    }
    catch (std::bad_alloc const&)
    {
        return false;
    }
}

char const* getTopKMaskedAttentionCpuIsa() noexcept
{
    return SPARSIFINER_CPU_AVX512 ? "avx512" : "portable";
}

} // namespace cpu
} // namespace sparsifiner
