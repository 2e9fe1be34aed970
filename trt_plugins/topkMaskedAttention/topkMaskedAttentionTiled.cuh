/*
 * The tiled TopKMaskedAttention kernel (fp16/bf16, tensor cores, sm_80+).
 *
 * One block = 64 consecutive query rows of one (batch, head); 4 warps of 16 rows.
 * Phase 1: every warp selects the top-B keys of its 16 rows (topkMaskedAttentionSelect)
 *   into per-row bitmasks; their OR is compacted into the tile's key list (the union).
 * Phase 2: flash-attention style over the union in chunks of 64 keys: K and V rows are
 *   gathered to shared memory with cp.async (double-buffered), S = Q K^T and O += P V run
 *   on mma.m16n8k16 with fp32 accumulators, and each row's logits outside its own key set
 *   are masked to -inf before an online softmax in fp32. Every row therefore gets exactly
 *   its own top-B softmax, at tensor-core speed over the union.
 * CLS rows, and every row when budget >= N, attend densely: their tiles skip phase 1 and
 * run over all N keys without masks.
 */
#pragma once

#include "topkMaskedAttentionSelect.cuh"

namespace sparsifiner
{
namespace kernels
{

constexpr float kLOG2E{1.4426950408889634F};

template <typename T, int32_t kHEAD_DIM>
struct TiledConfig
{
    static_assert(kHEAD_DIM % 16 == 0, "head dim must be a multiple of 16");
    static constexpr int32_t kSTRIDE{kHEAD_DIM + kSMEM_PAD}; //!< smem row stride, elements
    static constexpr int32_t kVECS{kHEAD_DIM * 2 / 16};       //!< 16-byte vectors per row
    static constexpr int32_t kKT{kHEAD_DIM / 16};             //!< k-steps of Q K^T
    static constexpr int32_t kNT{kKEY_CHUNK / 8};             //!< n-tiles of S per chunk
    static constexpr int32_t kDT{kHEAD_DIM / 8};              //!< n-tiles of O
};

//! Compact the union bitmask into a list of key indices, in increasing order. Block-wide.
SPF_DEVICE int32_t compactUnion(uint32_t const* sUnion, int32_t nWords, uint16_t* sKeys, int32_t* sWarpTotals)
{
    int32_t const tid = static_cast<int32_t>(threadIdx.x);
    int32_t const warp = tid / kWARP_SIZE;
    uint32_t const lane = laneId();
    int32_t carry = 0;
    for (int32_t base = 0; base < nWords; base += kTILE_THREADS)
    {
        int32_t const w = base + tid;
        uint32_t bits = w < nWords ? sUnion[w] : 0U;
        int32_t const count = __popc(bits);
        SPF_COUNT(kLDS, 1);
        SPF_COUNT(kALU, 8 + 5 * 2 + 4 * 3);
        SPF_COUNT(kOTHER, 4);
        int32_t inclusive = count;
        SPF_UNROLL
        for (int32_t off = 1; off < kWARP_SIZE; off <<= 1)
        {
            int32_t const other = __shfl_up_sync(kFULL_MASK, inclusive, off);
            if (lane >= static_cast<uint32_t>(off))
            {
                inclusive += other;
            }
        }
        if (lane == kWARP_SIZE - 1)
        {
            sWarpTotals[warp] = inclusive;
        }
        __syncthreads();
        int32_t pos = carry + inclusive - count;
        int32_t chunkTotal = 0;
        for (int32_t i = 0; i < kTILE_WARPS; ++i)
        {
            pos += i < warp ? sWarpTotals[i] : 0;
            chunkTotal += sWarpTotals[i];
        }
        while (bits != 0U)
        {
            int32_t const b = __ffs(bits) - 1;
            bits &= bits - 1U;
            sKeys[pos++] = static_cast<uint16_t>(w * kWARP_SIZE + b);
            SPF_COUNT(kSTS, 1);
            SPF_COUNT(kALU, 5);
            SPF_COUNT(kOTHER, 1);
        }
        carry += chunkTotal;
        __syncthreads();
    }
    return carry;
}

//! Phase 2 of the tiled kernels: flash attention of the tile's 64 query slots over a key
//! list (sKeys[0 .. numKeys), or all N keys when dense), each slot's logits masked by its
//! own bitmask row (sMask + slot * nWords) unless dense. rowOf(slot) gives the query row
//! of a slot, or -1 for an empty slot. Block-wide; uses `scratch` for Q, K and V tiles.
template <typename T, int32_t kHEAD_DIM, typename RowOf>
SPF_DEVICE void attendTile(TopKMaskedAttentionParams const& p, int64_t bh, RowOf rowOf, uint32_t const* sMask,
    int32_t nWords, uint16_t const* sKeys, int32_t numKeys, bool dense, uint8_t* scratch)
{
    using Cfg = TiledConfig<T, kHEAD_DIM>;
    using Traits = ElemTraits<T>;
    int32_t const n = p.numTokens;
    int32_t const tid = static_cast<int32_t>(threadIdx.x);
    int32_t const warp = tid / kWARP_SIZE;
    uint32_t const lane = laneId();
    int32_t const group = static_cast<int32_t>(lane >> 2); // MMA groupID
    int32_t const quad = static_cast<int32_t>(lane & 3);   // MMA threadID_in_group
    int64_t const headOffset = bh * n * kHEAD_DIM;
    T const* qHead = static_cast<T const*>(p.q) + headOffset;
    T const* kHead = static_cast<T const*>(p.k) + headOffset;
    T const* vHead = static_cast<T const*>(p.v) + headOffset;
    T* outHead = static_cast<T*>(p.out) + headOffset;

    T* sQ = reinterpret_cast<T*>(scratch);
    T* sK = sQ + kTILE_ROWS * Cfg::kSTRIDE;
    T* sV = sK + 2 * kKEY_CHUNK * Cfg::kSTRIDE;

    for (int32_t i = tid; i < kTILE_ROWS * Cfg::kVECS; i += kTILE_THREADS)
    {
        int32_t const r = i / Cfg::kVECS;
        int32_t const c = (i % Cfg::kVECS) * 8;
        int32_t const mapped = rowOf(r);
        bool const valid = mapped >= 0;
        int32_t const row = valid ? mapped : 0;
        cpAsync16(sQ + r * Cfg::kSTRIDE + c, qHead + static_cast<int64_t>(row) * kHEAD_DIM + c, valid);
        SPF_COUNT(kALU, 6);
        SPF_COUNT(kFMA, 3);
    }
    cpAsyncCommit();

    int32_t const numChunks = static_cast<int32_t>(ceilDiv(numKeys, kKEY_CHUNK));
    auto loadChunk = [&](int32_t chunk, int32_t buffer) {
        T* dstK = sK + buffer * kKEY_CHUNK * Cfg::kSTRIDE;
        T* dstV = sV + buffer * kKEY_CHUNK * Cfg::kSTRIDE;
        for (int32_t i = tid; i < kKEY_CHUNK * Cfg::kVECS; i += kTILE_THREADS)
        {
            int32_t const r = i / Cfg::kVECS;
            int32_t const c = (i % Cfg::kVECS) * 8;
            int32_t const u = chunk * kKEY_CHUNK + r;
            bool const valid = u < numKeys;
            // Rows past the union are zero-filled: masked logits, and 0 * V stays finite.
            int32_t const key = valid ? (dense ? u : static_cast<int32_t>(sKeys[u])) : 0;
            int64_t const offset = static_cast<int64_t>(key) * kHEAD_DIM + c;
            cpAsync16(dstK + r * Cfg::kSTRIDE + c, kHead + offset, valid);
            cpAsync16(dstV + r * Cfg::kSTRIDE + c, vHead + offset, valid);
            SPF_COUNT(kLDS, dense ? 0 : 1);
            SPF_COUNT(kALU, 6);
            SPF_COUNT(kFMA, 5); // 64-bit addresses of K and V, smem offsets
        }
        cpAsyncCommit();
    };
    loadChunk(0, 0);
    cpAsyncWait<1>();
    __syncthreads();

    // Q fragments (A operand) stay in registers for the whole key loop.
    uint32_t qFrag[Cfg::kKT][4];
    {
        int32_t const r = warp * 16 + static_cast<int32_t>(lane & 7) + static_cast<int32_t>((lane >> 3) & 1) * 8;
        int32_t const c = static_cast<int32_t>(lane >> 4) * 8;
        SPF_UNROLL
        for (int32_t kt = 0; kt < Cfg::kKT; ++kt)
        {
            ldmatrixX4(qFrag[kt], sQ + r * Cfg::kSTRIDE + kt * 16 + c);
        }
        SPF_COUNT(kALU, 8);
    }

    int32_t const row0 = warp * 16 + group; // this thread's two rows in the tile
    int32_t const row1 = row0 + 8;
    uint32_t const* mask0 = sMask + row0 * nWords;
    uint32_t const* mask1 = sMask + row1 * nWords;
    float const scaleLog2 = p.scale * kLOG2E;

    float oAcc[Cfg::kDT][4];
    SPF_UNROLL
    for (int32_t i = 0; i < Cfg::kDT; ++i)
    {
        oAcc[i][0] = oAcc[i][1] = oAcc[i][2] = oAcc[i][3] = 0.F;
    }
    float m0 = kNEG_INF; // running max of the row's logits in log2 units
    float m1 = kNEG_INF;
    float l0 = 0.F; // this thread's share of the row's softmax denominator
    float l1 = 0.F;

    for (int32_t chunk = 0; chunk < numChunks; ++chunk)
    {
        int32_t const buffer = chunk & 1;
        if (chunk + 1 < numChunks)
        {
            loadChunk(chunk + 1, buffer ^ 1);
            cpAsyncWait<1>();
        }
        else
        {
            cpAsyncWait<0>();
        }
        __syncthreads();
        T const* cK = sK + buffer * kKEY_CHUNK * Cfg::kSTRIDE;
        T const* cV = sV + buffer * kKEY_CHUNK * Cfg::kSTRIDE;

        // S = Q K^T for 16 rows x 64 keys. ldmatrix x4 gives B fragments of two n-tiles.
        float s[Cfg::kNT][4];
        SPF_UNROLL
        for (int32_t nt = 0; nt < Cfg::kNT; ++nt)
        {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.F;
        }
        {
            int32_t const keyRow = static_cast<int32_t>((lane >> 4) * 8 + (lane & 7));
            int32_t const dimOff = static_cast<int32_t>((lane >> 3) & 1) * 8;
            SPF_UNROLL
            for (int32_t kt = 0; kt < Cfg::kKT; ++kt)
            {
                SPF_UNROLL
                for (int32_t np = 0; np < Cfg::kNT / 2; ++np)
                {
                    uint32_t b[4];
                    ldmatrixX4(b, cK + (np * 16 + keyRow) * Cfg::kSTRIDE + kt * 16 + dimOff);
                    mma16816<T>(s[2 * np], qFrag[kt], b[0], b[1]);
                    mma16816<T>(s[2 * np + 1], qFrag[kt], b[2], b[3]);
                }
            }
        }

        // Mask: positions past the union, and keys outside the row's own top-B set.
        float cm0 = kNEG_INF;
        float cm1 = kNEG_INF;
        SPF_UNROLL
        for (int32_t nt = 0; nt < Cfg::kNT; ++nt)
        {
            SPF_UNROLL
            for (int32_t e = 0; e < 2; ++e)
            {
                int32_t const u = chunk * kKEY_CHUNK + nt * 8 + quad * 2 + e;
                bool keep0 = u < numKeys;
                bool keep1 = keep0;
                if (keep0 && !dense)
                {
                    int32_t const key = sKeys[u];
                    uint32_t const bit = 1U << (key & 31);
                    keep0 = (mask0[key >> 5] & bit) != 0U;
                    keep1 = (mask1[key >> 5] & bit) != 0U;
                }
                // 2 FMUL (scale), 2 FMNMX, 2 SEL, bounds compare; sparse tiles: 3 LDS
                // (key, two mask words) and ~6 integer ops for the bit tests.
                SPF_COUNT(kFMA, 2);
                SPF_COUNT(kALU, 5 + (dense ? 0 : 6));
                SPF_COUNT(kLDS, dense ? 0 : 3);
                s[nt][e] = keep0 ? s[nt][e] * scaleLog2 : kNEG_INF;
                s[nt][2 + e] = keep1 ? s[nt][2 + e] * scaleLog2 : kNEG_INF;
                cm0 = fmaxf(cm0, s[nt][e]);
                cm1 = fmaxf(cm1, s[nt][2 + e]);
            }
        }
        // The four threads of a quad share a row.
        cm0 = fmaxf(cm0, __shfl_xor_sync(kFULL_MASK, cm0, 1));
        cm0 = fmaxf(cm0, __shfl_xor_sync(kFULL_MASK, cm0, 2));
        cm1 = fmaxf(cm1, __shfl_xor_sync(kFULL_MASK, cm1, 1));
        cm1 = fmaxf(cm1, __shfl_xor_sync(kFULL_MASK, cm1, 2));
        float const mNew0 = fmaxf(m0, cm0);
        float const mNew1 = fmaxf(m1, cm1);
        // A row with no kept key so far keeps max -inf: use 0 so exp2 sees -inf, not NaN.
        float const mUse0 = mNew0 == kNEG_INF ? 0.F : mNew0;
        float const mUse1 = mNew1 == kNEG_INF ? 0.F : mNew1;
        float const corr0 = exp2f(m0 - mUse0);
        float const corr1 = exp2f(m1 - mUse1);
        SPF_COUNT(kALU, 4 + 6);
        SPF_COUNT(kFMA, 4 + 2 + 4 * Cfg::kDT);
        SPF_COUNT(kMUFU, 2);
        m0 = mNew0;
        m1 = mNew1;
        l0 *= corr0;
        l1 *= corr1;
        SPF_UNROLL
        for (int32_t i = 0; i < Cfg::kDT; ++i)
        {
            oAcc[i][0] *= corr0;
            oAcc[i][1] *= corr0;
            oAcc[i][2] *= corr1;
            oAcc[i][3] *= corr1;
        }
        SPF_UNROLL
        for (int32_t nt = 0; nt < Cfg::kNT; ++nt)
        {
            s[nt][0] = exp2f(s[nt][0] - mUse0);
            s[nt][1] = exp2f(s[nt][1] - mUse0);
            s[nt][2] = exp2f(s[nt][2] - mUse1);
            s[nt][3] = exp2f(s[nt][3] - mUse1);
            l0 += s[nt][0] + s[nt][1];
            l1 += s[nt][2] + s[nt][3];
            SPF_COUNT(kFMA, 4 + 4);
            SPF_COUNT(kMUFU, 4);
        }

        // O += P V: the S accumulators of n-tiles 2kk and 2kk+1 are exactly the A
        // fragment of k-step kk; V comes through ldmatrix.trans (keys are the k dim).
        {
            int32_t const keyRow = static_cast<int32_t>(((lane >> 3) & 1) * 8 + (lane & 7));
            int32_t const dimOff = static_cast<int32_t>(lane >> 4) * 8;
            SPF_UNROLL
            for (int32_t kk = 0; kk < kKEY_CHUNK / 16; ++kk)
            {
                uint32_t a[4];
                a[0] = Traits::pack2(s[2 * kk][0], s[2 * kk][1]);
                a[1] = Traits::pack2(s[2 * kk][2], s[2 * kk][3]);
                a[2] = Traits::pack2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                a[3] = Traits::pack2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
                SPF_COUNT(kALU, 4); // F2FP.PACK_AB
                SPF_UNROLL
                for (int32_t dp = 0; dp < Cfg::kDT / 2; ++dp)
                {
                    uint32_t b[4];
                    ldmatrixX4Trans(b, cV + (kk * 16 + keyRow) * Cfg::kSTRIDE + dp * 16 + dimOff);
                    mma16816<T>(oAcc[2 * dp], a, b[0], b[1]);
                    mma16816<T>(oAcc[2 * dp + 1], a, b[2], b[3]);
                }
            }
        }
        SPF_COUNT(kALU, 4); // chunk loop, buffer pointers
        SPF_COUNT(kOTHER, 3);
        __syncthreads(); // the buffer is refilled two iterations later
    }

    // Normalise, stage the warp's 16 rows in its own slice of sQ, store 16-byte vectors.
    l0 += __shfl_xor_sync(kFULL_MASK, l0, 1);
    l0 += __shfl_xor_sync(kFULL_MASK, l0, 2);
    l1 += __shfl_xor_sync(kFULL_MASK, l1, 1);
    l1 += __shfl_xor_sync(kFULL_MASK, l1, 2);
    float const inv0 = l0 > 0.F ? 1.F / l0 : 0.F;
    float const inv1 = l1 > 0.F ? 1.F / l1 : 0.F;
    SPF_COUNT(kFMA, 4 + 2 * Cfg::kDT);
    SPF_COUNT(kMUFU, 2);
    SPF_COUNT(kALU, 4 + 2 * Cfg::kDT);
    SPF_COUNT(kSTS, 2 * Cfg::kDT);
    uint32_t* sOut0 = reinterpret_cast<uint32_t*>(sQ + row0 * Cfg::kSTRIDE);
    uint32_t* sOut1 = reinterpret_cast<uint32_t*>(sQ + row1 * Cfg::kSTRIDE);
    SPF_UNROLL
    for (int32_t i = 0; i < Cfg::kDT; ++i)
    {
        sOut0[i * 4 + quad] = Traits::pack2(oAcc[i][0] * inv0, oAcc[i][1] * inv0);
        sOut1[i * 4 + quad] = Traits::pack2(oAcc[i][2] * inv1, oAcc[i][3] * inv1);
    }
    __syncwarp();
    for (int32_t i = static_cast<int32_t>(lane); i < 16 * Cfg::kVECS; i += kWARP_SIZE)
    {
        int32_t const r = warp * 16 + i / Cfg::kVECS;
        int32_t const c = (i % Cfg::kVECS) * 8;
        SPF_COUNT(kLDS, 1);
        SPF_COUNT(kSMEM_EXTRA, 3);
        SPF_COUNT(kLDG, 1);
        int32_t const row = rowOf(r);
        SPF_COUNT(kG_BYTES, row >= 0 ? 16 : 0);
        SPF_COUNT(kALU, 5);
        SPF_COUNT(kFMA, 3);
        if (row >= 0)
        {
            *reinterpret_cast<uint4*>(outHead + static_cast<int64_t>(row) * kHEAD_DIM + c)
                = *reinterpret_cast<uint4 const*>(sQ + r * Cfg::kSTRIDE + c);
        }
    }
}

template <typename T, int32_t kHEAD_DIM>
SPF_GLOBAL void SPF_LAUNCH_BOUNDS(kTILE_THREADS)
    tiledTopKAttentionKernel(TopKMaskedAttentionParams const p, BasisCsr const csr, int32_t const /*warps*/)
{
    SPF_DYNAMIC_SMEM(smem);

    int32_t const n = p.numTokens;
    int32_t const cls = p.clsRows;
    int32_t const nWords = numWords(n);
    TiledLayout const layout = tiledLayout(n, kHEAD_DIM, static_cast<int32_t>(sizeof(T)));
    int32_t* sMisc = reinterpret_cast<int32_t*>(smem);
    uint32_t* sMask = reinterpret_cast<uint32_t*>(smem + layout.mask);
    uint32_t* sUnion = reinterpret_cast<uint32_t*>(smem + layout.unionWords);
    uint16_t* sKeys = reinterpret_cast<uint16_t*>(smem + layout.keys);
    uint8_t* scratch = smem + layout.scratch;

    int32_t const tid = static_cast<int32_t>(threadIdx.x);
    int32_t const warp = tid / kWARP_SIZE;
    uint32_t const lane = laneId();

    int64_t const tiles = tilesPerHead(n, cls);
    int64_t const bh = static_cast<int64_t>(blockIdx.x) / tiles;
    int32_t const tile = static_cast<int32_t>(static_cast<int64_t>(blockIdx.x) % tiles);
    int32_t const clsTiles = static_cast<int32_t>(ceilDiv(cls, kTILE_ROWS));
    bool const clsTile = tile < clsTiles;
    int32_t const rowBegin = clsTile ? tile * kTILE_ROWS : cls + (tile - clsTiles) * kTILE_ROWS;
    int32_t const rowEnd = clsTile ? minInt(rowBegin + kTILE_ROWS, cls) : minInt(rowBegin + kTILE_ROWS, n);
    bool const dense = clsTile || p.budget >= n;

    // ------------------------------------------------------------ phase 1: selection
    int32_t numKeys = n;
    SPF_COUNT(kROWS, tid == 0 ? rowEnd - rowBegin : 0);
    SPF_COUNT(kALU, 40); // tile and row bookkeeping (divisions by constants, pointers)
    SPF_COUNT(kFMA, 10);
    if (!dense)
    {
        SPF_PHASE(kUNION);
        for (int32_t w = tid; w < nWords; w += kTILE_THREADS)
        {
            sUnion[w] = 0U;
        }
        __syncthreads();
        uint32_t* sScore = reinterpret_cast<uint32_t*>(scratch) + warp * nWords * kWARP_SIZE;
        uint32_t* sHist = reinterpret_cast<uint32_t*>(scratch) + kTILE_WARPS * nWords * kWARP_SIZE + warp * kHIST_BINS;
        size_t const coefElem = static_cast<size_t>(elementBytes(p.coefType));
        for (int32_t r = warp * 16; r < warp * 16 + 16; ++r)
        {
            int32_t const row = rowBegin + r;
            uint32_t* maskRow = sMask + r * nWords;
            if (row < rowEnd)
            {
                int64_t const coefRow = (bh * (n - cls) + (row - cls)) * static_cast<int64_t>(p.rank);
                void const* coef = static_cast<uint8_t const*>(p.coef) + coefRow * coefElem;
                SPF_PHASE(kSCORES);
                SPF_COUNT(kALU, 6);
                SPF_COUNT(kFMA, 4);
                computeRowScores(sScore, coef, p.coefType, p.rank, csr, nWords);
                SPF_PHASE(kSELECT);
                selectTopK(sScore, sHist, maskRow, sUnion, n, nWords, p.budget);
            }
            else
            {
                for (int32_t w = static_cast<int32_t>(lane); w < nWords; w += kWARP_SIZE)
                {
                    maskRow[w] = 0U;
                    SPF_COUNT(kSTS, 1);
                }
            }
        }
        SPF_PHASE(kUNION);
        __syncthreads();
        numKeys = compactUnion(sUnion, nWords, sKeys, sMisc);
    }
    SPF_PHASE(kATTEND);

    // ------------------------------------------------------------ phase 2: attention
    attendTile<T, kHEAD_DIM>(p, bh, [=](int32_t slot) { return rowBegin + slot < rowEnd ? rowBegin + slot : -1; },
        sMask, nWords, sKeys, numKeys, dense, scratch);
}

} // namespace kernels
} // namespace sparsifiner
