/*
 * Shared pieces of the TopKMaskedAttention kernels: portability macros, shared-memory
 * layouts, launch planning, element-type traits and thin PTX wrappers (sm_80+).
 *
 * Compiled by nvcc for the GPU, and by a host C++ compiler with SPARSIFINER_EMULATE
 * defined: the CPU emulator in tests/trt_plugins/emulator then supplies threadIdx,
 * barriers, warp intrinsics, ldmatrix, mma and cp.async, so the CPU test suite runs
 * these very kernels. Device code therefore uses only what this header provides.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "topkMaskedAttentionKernel.h"

#if defined(SPARSIFINER_EMULATE)
#define SPF_DEVICE inline
#define SPF_HOST_DEVICE inline
#define SPF_GLOBAL
#define SPF_LAUNCH_BOUNDS(n)
#define SPF_LAUNCH_BOUNDS_MIN(n, blocks)
#define SPF_UNROLL
#define SPF_DYNAMIC_SMEM(name) uint8_t* name = ::spfemu::dynamicSmem()
// Cost-model annotations (tests/trt_plugins/emulator): warp-instruction counts by class
// for the instructions the emulator cannot see (arithmetic, shared loads and stores,
// global loads), the kernel phase they belong to, and shared atomics whose bank
// conflicts are to be measured. Nothing of this reaches the GPU build.
#define SPF_COUNT(op, n) ::spfemu::count(::spfemu::Op::op, static_cast<double>(n))
#define SPF_PHASE(phase) ::spfemu::setPhase(::spfemu::Phase::phase)
#define SPF_ATOMS_CONFLICT(address, active) ::spfemu::recordAtomic(__LINE__, (address), (active))
#else
#define SPF_DEVICE __device__ __forceinline__
#define SPF_HOST_DEVICE __host__ __device__ inline
#define SPF_GLOBAL __global__
#define SPF_LAUNCH_BOUNDS(n) __launch_bounds__(n)
#define SPF_LAUNCH_BOUNDS_MIN(n, blocks) __launch_bounds__(n, blocks)
#define SPF_UNROLL _Pragma("unroll")
#define SPF_DYNAMIC_SMEM(name) extern __shared__ __align__(128) uint8_t name[]
#define SPF_COUNT(op, n) ((void) 0)
#define SPF_PHASE(phase) ((void) 0)
#define SPF_ATOMS_CONFLICT(address, active) ((void) 0)
#endif

namespace sparsifiner
{
namespace kernels
{

using plugin::AttentionAlgo;
using plugin::DataType;
using plugin::TopKMaskedAttentionParams;

constexpr uint32_t kFULL_MASK{0xFFFFFFFFU};
constexpr int32_t kWARP_SIZE{32};
constexpr int32_t kHIST_BINS{256}; //!< radix-select digit of 8 bits
constexpr int32_t kMAX_HEAD_DIM{128};
constexpr float kNEG_INF{-__builtin_huge_valf()};
constexpr float kFLOAT_MAX{3.402823466e+38F};

// Tiled kernel: 64 query rows per block, 4 warps of 16 rows (one m16 MMA row block each),
// keys in chunks of 64, shared-memory rows padded by 8 elements (16 bytes) so that
// ldmatrix row addresses fall in distinct banks.
constexpr int32_t kTILE_ROWS{64};
constexpr int32_t kTILE_WARPS{4};
constexpr int32_t kTILE_THREADS{kTILE_WARPS * kWARP_SIZE};
constexpr int32_t kKEY_CHUNK{64};
constexpr int32_t kSMEM_PAD{8};

// Row-wise kernel: up to 4 warps per block, each warp handles kROWS_PER_WARP rows.
constexpr int32_t kROW_MAX_WARPS{4};
constexpr int32_t kROWS_PER_WARP{4};

// Basis compression: one block of 256 threads per basis row.
constexpr int32_t kCSR_THREADS{256};

//! One nonzero of the pruned basis: basis[r, key] == value (converted to fp32).
struct CsrEntry
{
    int32_t key;
    float value;
};

//! The basis in compressed rows: row r holds counts[r] entries at entries + r * stride,
//! in increasing key order.
struct BasisCsr
{
    int32_t const* counts;
    CsrEntry const* entries;
    int32_t stride;
};

SPF_HOST_DEVICE int32_t numWords(int32_t n)
{
    return (n + kWARP_SIZE - 1) / kWARP_SIZE;
}

SPF_HOST_DEVICE size_t alignUp(size_t x, size_t a)
{
    return (x + a - 1) / a * a;
}

SPF_HOST_DEVICE int32_t elementBytes(DataType t)
{
    return t == DataType::kFLOAT ? 4 : 2;
}

//! Byte offsets of the tiled kernel's dynamic shared memory. [0, 64): small counters.
//! mask: per-row selection bitmasks [64][NW]; unionWords: their OR [NW]; keys: the union
//! as a list of uint16 key indices; scratch: phase 1 (per-warp scores and histogram)
//! aliased with phase 2 (Q tile and double-buffered K and V chunks).
struct TiledLayout
{
    size_t mask;
    size_t unionWords;
    size_t keys;
    size_t scratch;
    size_t total;
};

SPF_HOST_DEVICE TiledLayout tiledLayout(int32_t n, int32_t d, int32_t elemBytes)
{
    size_t const nw = static_cast<size_t>(numWords(n));
    TiledLayout l{};
    l.mask = 64;
    l.unionWords = alignUp(l.mask + kTILE_ROWS * nw * 4, 16);
    l.keys = alignUp(l.unionWords + nw * 4, 16);
    l.scratch = alignUp(l.keys + static_cast<size_t>(n) * 2, 128);
    size_t const phase1 = kTILE_WARPS * (nw * kWARP_SIZE * 4 + kHIST_BINS * 4);
    size_t const phase2 = static_cast<size_t>(kTILE_ROWS + 4 * kKEY_CHUNK) * (d + kSMEM_PAD) * elemBytes;
    l.total = l.scratch + (phase1 > phase2 ? phase1 : phase2);
    return l;
}

//! Per-warp shared memory of the row-wise kernel: scores/keys [NW * 32] (reused as the
//! selected-key list), histogram [256], selection bitmask [NW], the query row in fp32.
struct RowwiseLayout
{
    size_t scores;
    size_t hist;
    size_t mask;
    size_t q;
    size_t perWarp;
};

SPF_HOST_DEVICE RowwiseLayout rowwiseLayout(int32_t n)
{
    size_t const nw = static_cast<size_t>(numWords(n));
    RowwiseLayout l{};
    l.scores = 0;
    l.hist = nw * kWARP_SIZE * 4;
    l.mask = l.hist + kHIST_BINS * 4;
    l.q = alignUp(l.mask + nw * 4, 16);
    l.perWarp = alignUp(l.q + kMAX_HEAD_DIM * 4, 128);
    return l;
}

SPF_HOST_DEVICE int32_t minInt(int32_t a, int32_t b)
{
    return a < b ? a : b;
}

SPF_HOST_DEVICE int32_t maxInt(int32_t a, int32_t b)
{
    return a > b ? a : b;
}

SPF_HOST_DEVICE int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

//! Query tiles per (batch, head): CLS rows get their own tiles (dense), so the sparse
//! tiles' key unions are not inflated to all N keys by the CLS row.
SPF_HOST_DEVICE int64_t tilesPerHead(int32_t n, int32_t cls)
{
    return ceilDiv(cls, kTILE_ROWS) + ceilDiv(n - cls, kTILE_ROWS);
}

// ---------------------------------------------------------------- 2-D tile kernel (v2)
// One block = an 8 x 8 square of patches of one (batch, head) (the rows after the CLS rows
// form a side x side grid), 4 warps of 16 rows (2 patch rows each). Scores on tensor cores
// in 128-key chunks; the basis is packed key-major in fp16 by the prep kernels.
constexpr int32_t kT2_TILE_SIDE{8};
constexpr int32_t kT2_CHUNK{128};        //!< keys per filter / re-score chunk (16 n8 tiles)
constexpr int32_t kT2_SAMPLE_KEYS{256};  //!< at most this many sampled keys per row
constexpr int32_t kT2_MAX_RANK{64};      //!< R <= 64 (4 k-steps of 16)
constexpr int32_t kT2_HIST_BINS{64};     //!< 6-bit digits of the exact list select
constexpr int32_t kT2_HIST_STRIDE{68};   //!< words per quad histogram (spreads the banks)
constexpr int32_t kT2_STAT_THREADS{256}; //!< prep kernels: keys per block

//! side of the patch grid when the N - cls non-CLS rows form a square, else 0.
SPF_HOST_DEVICE int32_t gridSide(int32_t n, int32_t cls)
{
    int32_t const m = n - cls;
    int32_t side = 0;
    while ((side + 1) * (side + 1) <= m)
    {
        ++side;
    }
    return side * side == m && m > 0 ? side : 0;
}

SPF_HOST_DEVICE int32_t paddedRank(int32_t rank)
{
    return (rank + 15) / 16 * 16;
}

SPF_HOST_DEVICE int32_t paddedKeys(int32_t n)
{
    return (n + kT2_CHUNK - 1) / kT2_CHUNK * kT2_CHUNK;
}

SPF_HOST_DEVICE int32_t tiles2dPerSide(int32_t side)
{
    return (side + kT2_TILE_SIDE - 1) / kT2_TILE_SIDE;
}

//! Blocks per (batch, head): dense CLS tiles first, then the 2-D tiles in raster order.
SPF_HOST_DEVICE int64_t tiles2dPerHead(int32_t n, int32_t cls)
{
    int64_t const t = tiles2dPerSide(gridSide(n, cls));
    return (cls + kTILE_ROWS - 1) / kTILE_ROWS + t * t;
}

//! Byte offsets of the 2-D tile kernel's dynamic shared memory. Per-row state, the 64 row
//! masks, the union (words, key list), the coefficients (fp16, rows padded), then a scratch
//! area: selection (2 basis chunk buffers, per-row candidate lists of `cap` (score, key))
//! aliased with attention (Q tile, K and V chunks).
struct Tile2dLayout
{
    size_t rowTau;
    size_t rowMax;
    size_t rowCount;
    size_t rowMode;
    size_t rowFlags;
    size_t mask;
    size_t unionWords;
    size_t keys;
    size_t coef;
    size_t scratch;
    size_t chunks;
    size_t listT;
    size_t listK;
    size_t total;
};

SPF_HOST_DEVICE size_t tile2dChunkBytes(int32_t rank)
{
    return static_cast<size_t>(kT2_CHUNK) * (paddedRank(rank) + kSMEM_PAD) * 2;
}

SPF_HOST_DEVICE Tile2dLayout tile2dLayout(int32_t n, int32_t d, int32_t elemBytes, int32_t rank, int32_t cap)
{
    size_t const nw = static_cast<size_t>(numWords(n));
    Tile2dLayout l{};
    l.rowTau = 64; // [0, 64): counters of compactUnion and flags
    l.rowMax = l.rowTau + kTILE_ROWS * 4;
    l.rowCount = l.rowMax + kTILE_ROWS * 4;
    l.rowMode = l.rowCount + kTILE_ROWS * 4;
    l.rowFlags = l.rowMode + kTILE_ROWS * 4;
    l.mask = alignUp(l.rowFlags + kTILE_ROWS * 4, 16);
    l.unionWords = alignUp(l.mask + kTILE_ROWS * nw * 4, 16);
    l.keys = alignUp(l.unionWords + nw * 4, 16);
    l.coef = alignUp(l.keys + static_cast<size_t>(n) * 2, 128);
    l.scratch = alignUp(l.coef + static_cast<size_t>(kTILE_ROWS) * (paddedRank(rank) + kSMEM_PAD) * 2, 128);
    l.chunks = l.scratch;
    l.listT = alignUp(l.chunks + 2 * tile2dChunkBytes(rank), 128);
    l.listK = alignUp(l.listT + static_cast<size_t>(kTILE_ROWS) * cap * 4, 128);
    size_t const phase1 = alignUp(l.listK + static_cast<size_t>(kTILE_ROWS) * cap * 2, 128) - l.scratch;
    size_t const phase2 = static_cast<size_t>(kTILE_ROWS + 4 * kKEY_CHUNK) * (d + kSMEM_PAD) * elemBytes;
    l.total = l.scratch + (phase1 > phase2 ? phase1 : phase2);
    return l;
}

//! The v2 part of the workspace, after v1's compressed basis: per-block column statistics
//! of the basis (int4 {min e, max e, on grid, >= 0}), the flags {on grid, >= 0, E, max e},
//! the column exponents, and the packed basis [npad][rpad] fp16 (key-major, zero beyond R
//! and N). Empty (all sizes 0) when R > kT2_MAX_RANK.
struct GridBasis
{
    int4* stats;
    int32_t* flags;
    int32_t* colExp;
    __half* packed;
    int32_t statBlocks;
    int32_t rpad;
    int32_t npad;
};

struct GridOffsets
{
    size_t stats;
    size_t flags;
    size_t colExp;
    size_t packed;
    size_t end;
};

//! Offsets of the v2 region, starting at byte `base` (256-aligned) of the workspace.
SPF_HOST_DEVICE GridOffsets gridOffsets(size_t base, int32_t n, int32_t rank)
{
    GridOffsets o{};
    bool const used = rank >= 1 && rank <= kT2_MAX_RANK;
    size_t const blocks = used ? static_cast<size_t>((n + kT2_STAT_THREADS - 1) / kT2_STAT_THREADS) : 0;
    o.stats = alignUp(base, 256);
    o.flags = alignUp(o.stats + blocks * 16, 256);
    o.colExp = o.flags + (used ? 16 : 0);
    o.packed = alignUp(o.colExp + (used ? static_cast<size_t>(n) * 4 : 0), 256);
    o.end = o.packed + (used ? static_cast<size_t>(paddedKeys(n)) * paddedRank(rank) * 2 : 0);
    return o;
}

//! Smallest list capacity whose per-warp score-list area (16 rows x cap floats) also holds
//! the v1 fallback scratch (one row of scores and a 256-bin histogram), rounded to 32.
SPF_HOST_DEVICE int32_t tile2dMinCap(int32_t n)
{
    size_t const fallback = static_cast<size_t>(numWords(n)) * kWARP_SIZE * 4 + kHIST_BINS * 4;
    size_t const perEntry = 16 * 4;
    return static_cast<int32_t>(((fallback + perEntry - 1) / perEntry + 31) / 32 * 32);
}

inline bool isSupportedHeadDim(int32_t d)
{
    for (int32_t s : plugin::kSUPPORTED_HEAD_DIMS)
    {
        if (s == d)
        {
            return true;
        }
    }
    return false;
}

inline bool isSupportedType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

// ---------------------------------------------------------------- element types

template <typename To, typename From>
SPF_DEVICE To bitCast(From const& from)
{
    static_assert(sizeof(To) == sizeof(From), "bitCast needs equal sizes");
    To to;
    memcpy(static_cast<void*>(&to), &from, sizeof(To));
    return to;
}

template <typename T>
struct ElemTraits;

template <>
struct ElemTraits<float>
{
    static SPF_DEVICE float toFloat(float x)
    {
        return x;
    }
    static SPF_DEVICE float fromFloat(float x)
    {
        return x;
    }
};

template <>
struct ElemTraits<__half>
{
    static SPF_DEVICE float toFloat(__half x)
    {
        return __half2float(x);
    }
    static SPF_DEVICE __half fromFloat(float x)
    {
        return __float2half_rn(x);
    }
    //! Two values as one .f16x2 register, `lo` in the low half (the lower MMA index).
    static SPF_DEVICE uint32_t pack2(float lo, float hi)
    {
        return bitCast<uint32_t>(__floats2half2_rn(lo, hi));
    }
};

template <>
struct ElemTraits<__nv_bfloat16>
{
    static SPF_DEVICE float toFloat(__nv_bfloat16 x)
    {
        return __bfloat162float(x);
    }
    static SPF_DEVICE __nv_bfloat16 fromFloat(float x)
    {
        return __float2bfloat16_rn(x);
    }
    static SPF_DEVICE uint32_t pack2(float lo, float hi)
    {
        return bitCast<uint32_t>(__floats2bfloat162_rn(lo, hi));
    }
};

//! Element `idx` of a coef/basis buffer of runtime type `t`, as fp32 (exact for all three).
SPF_DEVICE float loadAsFloat(void const* base, int64_t idx, DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return static_cast<float const*>(base)[idx];
    case DataType::kHALF: return __half2float(static_cast<__half const*>(base)[idx]);
    default: return __bfloat162float(static_cast<__nv_bfloat16 const*>(base)[idx]);
    }
}

SPF_DEVICE uint32_t laneId()
{
    return threadIdx.x & (kWARP_SIZE - 1);
}

SPF_DEVICE uint32_t lanemaskLt()
{
    return (1U << laneId()) - 1U;
}

// ---------------------------------------------------------------- PTX wrappers (sm_80+)
#if !defined(SPARSIFINER_EMULATE)

SPF_DEVICE uint32_t smemAddress(void const* p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

//! 16-byte global->shared copy; zero-fills the destination when !valid (src-size 0).
SPF_DEVICE void cpAsync16(void* smemDst, void const* gmemSrc, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddress(smemDst)), "l"(gmemSrc),
                 "r"(valid ? 16 : 0)
                 : "memory");
}

SPF_DEVICE void cpAsyncCommit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int32_t kPENDING>
SPF_DEVICE void cpAsyncWait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPENDING) : "memory");
}

//! Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
SPF_DEVICE void ldmatrixX4(uint32_t (&r)[4], void const* rowAddress)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smemAddress(rowAddress))
                 : "memory");
}

SPF_DEVICE void ldmatrixX4Trans(uint32_t (&r)[4], void const* rowAddress)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smemAddress(rowAddress))
                 : "memory");
}

//! D += A (16x16, row) * B (16x8, col) with fp32 accumulators.
template <typename T>
SPF_DEVICE void mma16816(float (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1);

template <>
SPF_DEVICE void mma16816<__half>(float (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
SPF_DEVICE void mma16816<__nv_bfloat16>(float (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#else // SPARSIFINER_EMULATE: the emulator's warp-collective models of the same instructions

SPF_DEVICE void cpAsync16(void* smemDst, void const* gmemSrc, bool valid)
{
    ::spfemu::cpAsync16(smemDst, gmemSrc, valid);
}

SPF_DEVICE void cpAsyncCommit() {}

template <int32_t kPENDING>
SPF_DEVICE void cpAsyncWait()
{
}

SPF_DEVICE void ldmatrixX4(uint32_t (&r)[4], void const* rowAddress)
{
    ::spfemu::ldmatrixX4(r, rowAddress, false);
}

SPF_DEVICE void ldmatrixX4Trans(uint32_t (&r)[4], void const* rowAddress)
{
    ::spfemu::ldmatrixX4(r, rowAddress, true);
}

template <typename T>
SPF_DEVICE void mma16816(float (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1)
{
    ::spfemu::mma16816(d, a, b0, b1, [](uint16_t bits) { return ElemTraits<T>::toFloat(bitCast<T>(bits)); });
}

#endif

} // namespace kernels
} // namespace sparsifiner
