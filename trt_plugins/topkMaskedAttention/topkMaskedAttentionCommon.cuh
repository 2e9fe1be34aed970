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
