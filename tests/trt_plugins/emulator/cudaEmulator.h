/*
 * A small CUDA execution model on the CPU, enough to run the TopKMaskedAttention
 * kernels unchanged (compiled with SPARSIFINER_EMULATE) in the CPU-only test suite.
 *
 * Every CUDA thread of a block is a coroutine (ucontext) on one OS thread; blocks run
 * one after another. __syncthreads and __syncwarp are real barriers, warp intrinsics
 * (shuffles, ballot) and the warp-collective instructions (ldmatrix, mma.m16n8k16) are
 * modelled from the PTX ISA's fragment layouts, cp.async copies at once (zero-filling
 * when src-size is 0). Shared memory is poisoned (0xFF: NaN floats) before each block.
 * Checks: a barrier some thread never reaches is reported as a deadlock; partial warp
 * masks, misaligned ldmatrix rows and shared/global addresses outside the launch's
 * buffers are reported as errors. It does not model timing, memory ordering races or
 * bank conflicts: a passing emulation is evidence of correct indexing and logic only.
 *
 * Cost model: every run also counts warp instructions by class (see Op), per phase of
 * the kernel. Warp-collective instructions (shuffles, ballots, ldmatrix, mma, cp.async,
 * barriers, atomics) are counted here; the kernels annotate their other instructions
 * with SPF_COUNT (no code on the GPU). Each lane tallies what it executes; at every
 * warp-collective point (and at the end) the warp is charged, per class, the maximum
 * over its lanes, since a warp issues an instruction once for all its active lanes.
 * Byte classes (global traffic) are summed over lanes instead. Shared atomics that the
 * kernel marks with SPF_ATOMS_CONFLICT are grouped per warp instruction, and the extra
 * serialisation (lanes on the same bank beyond the first) is counted in kATOMS_EXTRA.
 */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace spfemu
{

enum class State
{
    kRUNNABLE,
    kBLOCK_BARRIER,
    kWARP_BARRIER,
    kDONE,
    kFAILED,
};

constexpr int32_t kSLOT_BYTES{32};
constexpr size_t kSTACK_BYTES{256 * 1024};

//! Instruction classes of the cost model (warp instructions unless named *_BYTES).
enum class Op : int32_t
{
    kFMA,         //!< FFMA, FADD, FMUL, HFMA2, IMAD (fp32 pipe, 128 lanes/clk/SM)
    kALU,         //!< integer, logic, compare, select, min/max, shifts (64 lanes/clk/SM)
    kBIT,         //!< POPC, FLO (clz/ffs), BREV (16 lanes/clk/SM)
    kCVT,         //!< 32-bit conversions F2I, I2F, F2F (16 lanes/clk/SM)
    kMUFU,        //!< exp2, rcp, ... (16 lanes/clk/SM)
    kSHFL,        //!< shuffles (32 lanes/clk/SM)
    kVOTE,        //!< ballot, any, all
    kLDS,         //!< shared loads (instructions)
    kSTS,         //!< shared stores (instructions)
    kSMEM_EXTRA,  //!< shared-memory wavefronts beyond one per instruction (wide accesses, ldmatrix.x4)
    kATOMS,       //!< shared atomics (one per warp instruction)
    kATOMS_EXTRA, //!< their serialisation: lanes on one bank beyond the first
    kLDSM,        //!< ldmatrix.x4 (instructions)
    kMMA,         //!< mma.m16n8k16 (4096 FLOP each)
    kLDG,         //!< global loads/stores and cp.async (instructions)
    kBAR,         //!< __syncthreads
    kOTHER,       //!< branches, address arithmetic not counted elsewhere, warp syncs
    kG_BYTES,     //!< global bytes moved (summed over lanes)
    kROWS,        //!< query rows processed (summed; one lane counts each row)
    kROWS_LIST,   //!< 2-D kernel rows selected on their candidate list (summed)
    kROWS_ZERO,   //!< 2-D kernel rows filled with zeros by index (summed)
    kROWS_V1,     //!< 2-D kernel rows that took v1's exact path (summed)
    kCOUNT,
};
constexpr int32_t kNUM_OPS{static_cast<int32_t>(Op::kCOUNT)};
inline bool isSummed(int32_t op)
{
    return op == static_cast<int32_t>(Op::kG_BYTES) || op >= static_cast<int32_t>(Op::kROWS);
}

//! Kernel phases the counts are split by.
enum class Phase : int32_t
{
    kPREP,      //!< basis preparation kernels
    kSCORES,    //!< connectivity scores
    kSELECT,    //!< top-B selection
    kUNION,     //!< key unions, lists and masks between selection and attention
    kATTEND,    //!< attention (logits, softmax, PV, output)
    kFALLBACK,  //!< exact per-row fallback paths inside v2 (v1 code)
    kSAMPLE,    //!< v2: the threshold from the sample (exact select on it)
    kFILTER,    //!< v2: sign bits into candidate words, counts, verdicts
    kLISTS,     //!< v2: candidate lists from the re-scored union
    kRESOLVE,   //!< v2: exact select on the lists, masks, zero fill
    kCOUNT,
};
constexpr int32_t kNUM_PHASES{static_cast<int32_t>(Phase::kCOUNT)};

struct Tally
{
    double v[kNUM_PHASES][kNUM_OPS];
};

struct AtomicRecord
{
    int32_t site;
    int32_t ordinal;
    uintptr_t address;
    bool active;
};

struct Thread
{
    ucontext_t ctx;
    uint3 tid;
    State state;
    int32_t phase;
    Tally pending;
    std::vector<int16_t> touched; // flat (phase, op) indices with a nonzero pending count
    std::vector<AtomicRecord> atomics;
    std::vector<std::pair<int32_t, int32_t>> siteOrdinals; // (site, next ordinal)
};

struct Emulator
{
    uint3 blockIdx{0, 0, 0};
    dim3 blockDim{1, 1, 1};
    dim3 gridDim{1, 1, 1};
    std::vector<Thread> threads;
    std::vector<std::vector<char>> stacks;
    int32_t current{-1};
    ucontext_t scheduler;
    int32_t blockArrived{0};
    std::vector<int32_t> warpArrived;
    std::vector<uint8_t> smemStorage;
    uint8_t* smem{nullptr};
    size_t smemBytes{0};
    std::vector<uint8_t> slots; // [warps][32][kSLOT_BYTES]
    std::vector<std::pair<uintptr_t, uintptr_t>> globalRanges;
    std::function<void()> body;
    std::string error;
    Tally total{};
    Tally scratch{}; // per-warp fold accumulator (all zero between folds)
    std::vector<int32_t> warpDone;
};

inline Emulator& emu()
{
    static Emulator e;
    return e;
}

inline Thread& self()
{
    return emu().threads[static_cast<size_t>(emu().current)];
}

//! Charge warp `warp` for its lanes' pending counts (max over lanes; bytes summed).
inline void foldWarp(uint32_t warp)
{
    Emulator& e = emu();
    Tally& t = e.total;
    double* acc = &e.scratch.v[0][0];
    int16_t warpTouched[kNUM_PHASES * kNUM_OPS];
    int32_t nTouched = 0;
    for (uint32_t i = warp * 32; i < warp * 32 + 32; ++i)
    {
        Thread& th = e.threads[i];
        double* pending = &th.pending.v[0][0];
        for (int16_t idx : th.touched)
        {
            double const x = pending[idx];
            pending[idx] = 0.0;
            if (acc[idx] == 0.0 && x != 0.0)
            {
                warpTouched[nTouched++] = idx;
            }
            acc[idx] = isSummed(idx % kNUM_OPS) ? acc[idx] + x : std::max(acc[idx], x);
        }
        th.touched.clear();
    }
    for (int32_t k = 0; k < nTouched; ++k)
    {
        int16_t const idx = warpTouched[k];
        (&t.v[0][0])[idx] += acc[idx];
        acc[idx] = 0.0;
    }
    // Shared atomics marked by the kernel: one warp instruction per (site, ordinal).
    std::vector<AtomicRecord> all;
    for (uint32_t i = warp * 32; i < warp * 32 + 32; ++i)
    {
        Thread& th = e.threads[i];
        if (th.atomics.empty())
        {
            continue;
        }
        all.insert(all.end(), th.atomics.begin(), th.atomics.end());
        th.atomics.clear();
        th.siteOrdinals.clear();
    }
    std::sort(all.begin(), all.end(), [](AtomicRecord const& a, AtomicRecord const& b) {
        return a.site != b.site ? a.site < b.site : a.ordinal < b.ordinal;
    });
    for (size_t b = 0; b < all.size();)
    {
        size_t end = b;
        int32_t banks[32] = {};
        while (end < all.size() && all[end].site == all[b].site && all[end].ordinal == all[b].ordinal)
        {
            if (all[end].active)
            {
                ++banks[(all[end].address / 4) % 32];
            }
            ++end;
        }
        int32_t worst = 0;
        for (int32_t k = 0; k < 32; ++k)
        {
            worst = std::max(worst, banks[k]);
        }
        if (worst > 1)
        {
            t.v[e.threads[warp * 32].phase][static_cast<int32_t>(Op::kATOMS_EXTRA)] += worst - 1;
        }
        b = end;
    }
}

inline void foldAll()
{
    for (uint32_t w = 0; w < emu().threads.size() / 32; ++w)
    {
        foldWarp(w);
    }
}

inline void count(Op op, double n)
{
    Thread& t = self();
    double& slot = t.pending.v[t.phase][static_cast<int32_t>(op)];
    if (slot == 0.0 && n != 0.0)
    {
        t.touched.push_back(static_cast<int16_t>(t.phase * kNUM_OPS + static_cast<int32_t>(op)));
    }
    slot += n;
}

inline void setPhase(Phase p)
{
    self().phase = static_cast<int32_t>(p);
}

//! A shared atomic the calling lane would perform (active) or skip, at a numbered site:
//! the i-th call of a site by each lane of a warp is one warp instruction.
inline void recordAtomic(int32_t site, void const* address, bool active)
{
    Thread& t = self();
    int32_t ordinal = 0;
    bool found = false;
    for (auto& so : t.siteOrdinals)
    {
        if (so.first == site)
        {
            ordinal = so.second++;
            found = true;
            break;
        }
    }
    if (!found)
    {
        t.siteOrdinals.emplace_back(site, 1);
    }
    t.atomics.push_back(AtomicRecord{site, ordinal, reinterpret_cast<uintptr_t>(address), active});
}

inline void fail(std::string const& message)
{
    Emulator& e = emu();
    if (e.error.empty())
    {
        e.error = message + " (thread " + std::to_string(self().tid.x) + ", block " + std::to_string(e.blockIdx.x) + ")";
    }
    self().state = State::kFAILED;
    swapcontext(&self().ctx, &e.scheduler); // never resumed
}

inline void yieldToScheduler()
{
    swapcontext(&self().ctx, &emu().scheduler);
}

inline void blockBarrier()
{
    Emulator& e = emu();
    count(Op::kBAR, 1);
    if (++e.blockArrived == static_cast<int32_t>(e.threads.size()))
    {
        foldAll();
        e.blockArrived = 0;
        for (Thread& t : e.threads)
        {
            if (t.state == State::kBLOCK_BARRIER)
            {
                t.state = State::kRUNNABLE;
            }
        }
        return;
    }
    self().state = State::kBLOCK_BARRIER;
    yieldToScheduler();
}

inline void warpBarrier()
{
    Emulator& e = emu();
    uint32_t const warp = self().tid.x / 32;
    if (++e.warpArrived[warp] == 32)
    {
        foldWarp(warp);
        e.warpArrived[warp] = 0;
        for (uint32_t i = warp * 32; i < warp * 32 + 32; ++i)
        {
            if (e.threads[i].state == State::kWARP_BARRIER)
            {
                e.threads[i].state = State::kRUNNABLE;
            }
        }
        return;
    }
    self().state = State::kWARP_BARRIER;
    yieldToScheduler();
}

inline void checkFullMask(uint32_t mask)
{
    if (mask != 0xFFFFFFFFU)
    {
        fail("partial warp mask");
    }
}

//! All 32 lanes' values of `mine` (a warp-collective exchange).
template <typename X>
inline void warpGather(X const& mine, X (&all)[32])
{
    static_assert(sizeof(X) <= kSLOT_BYTES, "slot too small");
    Emulator& e = emu();
    uint32_t const warp = self().tid.x / 32;
    uint32_t const lane = self().tid.x % 32;
    uint8_t* base = e.slots.data() + static_cast<size_t>(warp) * 32 * kSLOT_BYTES;
    std::memcpy(base + lane * kSLOT_BYTES, &mine, sizeof(X));
    warpBarrier();
    for (int32_t l = 0; l < 32; ++l)
    {
        std::memcpy(&all[l], base + l * kSLOT_BYTES, sizeof(X));
    }
    warpBarrier();
}

inline uint8_t* dynamicSmem()
{
    return emu().smem;
}

inline void checkSmem(void const* p, size_t bytes, char const* what)
{
    Emulator& e = emu();
    auto const a = reinterpret_cast<uintptr_t>(p);
    auto const lo = reinterpret_cast<uintptr_t>(e.smem);
    if (a < lo || a + bytes > lo + e.smemBytes)
    {
        fail(std::string(what) + ": shared-memory address out of bounds");
    }
}

inline void checkGlobal(void const* p, size_t bytes, char const* what)
{
    auto const a = reinterpret_cast<uintptr_t>(p);
    for (auto const& r : emu().globalRanges)
    {
        if (a >= r.first && a + bytes <= r.second)
        {
            return;
        }
    }
    fail(std::string(what) + ": global address outside every input buffer");
}

inline void cpAsync16(void* smemDst, void const* gmemSrc, bool valid)
{
    count(Op::kLDG, 1);
    count(Op::kG_BYTES, valid ? 16 : 0);
    checkSmem(smemDst, 16, "cp.async");
    if ((reinterpret_cast<uintptr_t>(smemDst) | reinterpret_cast<uintptr_t>(gmemSrc)) % 16 != 0)
    {
        fail("cp.async: misaligned address");
    }
    if (valid)
    {
        checkGlobal(gmemSrc, 16, "cp.async");
        std::memcpy(smemDst, gmemSrc, 16);
    }
    else
    {
        std::memset(smemDst, 0, 16);
    }
}

//! ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i..8i+7 address the rows of
//! matrix i; lane l receives row l/4, columns 2(l%4) and 2(l%4)+1 (transposed: column
//! l/4, rows 2(l%4) and 2(l%4)+1), the lower index in the low half.
inline void ldmatrixX4(uint32_t (&r)[4], void const* rowAddress, bool trans)
{
    count(Op::kLDSM, 1);
    count(Op::kSMEM_EXTRA, 3);
    checkSmem(rowAddress, 16, "ldmatrix");
    if (reinterpret_cast<uintptr_t>(rowAddress) % 16 != 0)
    {
        fail("ldmatrix: row address not 16-byte aligned");
    }
    auto const* mine = static_cast<uint16_t const*>(rowAddress);
    uint16_t const* rows[32];
    warpGather(mine, rows);
    uint32_t const lane = self().tid.x % 32;
    for (uint32_t i = 0; i < 4; ++i)
    {
        uint16_t lo;
        uint16_t hi;
        if (!trans)
        {
            uint16_t const* row = rows[8 * i + lane / 4];
            lo = row[2 * (lane % 4)];
            hi = row[2 * (lane % 4) + 1];
        }
        else
        {
            lo = rows[8 * i + 2 * (lane % 4)][lane / 4];
            hi = rows[8 * i + 2 * (lane % 4) + 1][lane / 4];
        }
        r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    }
}

//! mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: D = A B + C. Fragments (PTX ISA,
//! groupID g = lane/4, t = lane%4): A reg i holds rows g (+8 for regs 1, 3), columns
//! 2t, 2t+1 (+8 for regs 2, 3); B reg i holds rows 2t, 2t+1 (+8 for reg 1) of column g;
//! C/D element i is row g (+8 for i >= 2), column 2t + (i & 1).
template <typename Convert>
inline void mma16816(float (&d)[4], uint32_t const (&a)[4], uint32_t b0, uint32_t b1, Convert convert)
{
    struct Fragments
    {
        uint32_t a[4];
        uint32_t b[2];
    };
    count(Op::kMMA, 1);
    Fragments const mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
    Fragments all[32];
    warpGather(mine, all);
    auto half = [](uint32_t reg, int32_t high) { return static_cast<uint16_t>(high ? reg >> 16 : reg & 0xFFFFU); };
    auto elemA = [&](int32_t row, int32_t col) {
        int32_t const owner = (row % 8) * 4 + (col % 8) / 2;
        int32_t const reg = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0);
        return convert(half(all[owner].a[reg], col & 1));
    };
    auto elemB = [&](int32_t k, int32_t col) {
        int32_t const owner = col * 4 + (k % 8) / 2;
        return convert(half(all[owner].b[k >= 8 ? 1 : 0], k & 1));
    };
    int32_t const lane = static_cast<int32_t>(self().tid.x % 32);
    for (int32_t i = 0; i < 4; ++i)
    {
        int32_t const row = lane / 4 + (i >= 2 ? 8 : 0);
        int32_t const col = 2 * (lane % 4) + (i & 1);
        float acc = d[i];
        for (int32_t k = 0; k < 16; ++k)
        {
            acc += elemA(row, k) * elemB(k, col);
        }
        d[i] = acc;
    }
}

inline void trampoline()
{
    emu().body();
    Emulator& e = emu();
    uint32_t const warp = self().tid.x / 32;
    if (++e.warpDone[warp] == 32)
    {
        foldWarp(warp);
    }
    self().state = State::kDONE;
}

//! Run `body` as a 1-D grid of 1-D blocks. Returns "" or the first error. With
//! blockStride > 1 only every blockStride-th block and the last one run (a sample of a
//! big grid; the kernels' blocks are independent).
inline std::string launch(uint32_t grid, uint32_t block, size_t smemBytes, std::function<void()> body,
    uint32_t blockStride = 1, Phase initialPhase = Phase::kSCORES)
{
    Emulator& e = emu();
    e.error.clear();
    e.gridDim = dim3(grid, 1, 1);
    e.blockDim = dim3(block, 1, 1);
    e.body = std::move(body);
    if (block % 32 != 0)
    {
        return "block size must be a multiple of 32";
    }
    e.threads.assign(block, Thread{});
    while (e.stacks.size() < block)
    {
        e.stacks.emplace_back(kSTACK_BYTES);
    }
    e.warpArrived.assign(block / 32, 0);
    e.warpDone.assign(block / 32, 0);
    e.slots.assign(static_cast<size_t>(block) * kSLOT_BYTES, 0);
    e.smemStorage.assign(smemBytes + 256, 0);
    e.smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(e.smemStorage.data()) + 127) & ~uintptr_t{127});
    e.smemBytes = smemBytes;
    for (uint32_t b = 0; b < grid; ++b)
    {
        if (blockStride > 1 && b % blockStride != 0 && b + 1 != grid)
        {
            continue;
        }
        e.blockIdx = uint3{b, 0, 0};
        e.blockArrived = 0;
        std::fill(e.warpArrived.begin(), e.warpArrived.end(), 0);
        std::fill(e.warpDone.begin(), e.warpDone.end(), 0);
        std::memset(e.smem, 0xFF, smemBytes);
        for (uint32_t i = 0; i < block; ++i)
        {
            Thread& t = e.threads[i];
            t.tid = uint3{i, 0, 0};
            t.state = State::kRUNNABLE;
            t.phase = static_cast<int32_t>(initialPhase);
            t.pending = Tally{};
            t.touched.clear();
            t.atomics.clear();
            t.siteOrdinals.clear();
            getcontext(&t.ctx);
            t.ctx.uc_stack.ss_sp = e.stacks[i].data();
            t.ctx.uc_stack.ss_size = kSTACK_BYTES;
            t.ctx.uc_link = &e.scheduler;
            makecontext(&t.ctx, &trampoline, 0);
        }
        uint32_t done = 0;
        while (done < block)
        {
            bool progressed = false;
            for (uint32_t i = 0; i < block; ++i)
            {
                if (e.threads[i].state != State::kRUNNABLE)
                {
                    continue;
                }
                e.current = static_cast<int32_t>(i);
                swapcontext(&e.scheduler, &e.threads[i].ctx);
                progressed = true;
                if (e.threads[i].state == State::kFAILED)
                {
                    return e.error;
                }
                done += e.threads[i].state == State::kDONE ? 1 : 0;
            }
            if (!progressed)
            {
                return "deadlock: a barrier is not reached by every thread (block " + std::to_string(b) + ")";
            }
        }
    }
    return "";
}

} // namespace spfemu

// ------------------------------------------------------------ the CUDA names kernels use
#define threadIdx (::spfemu::self().tid)
#define blockIdx (::spfemu::emu().blockIdx)
#define blockDim (::spfemu::emu().blockDim)
#define gridDim (::spfemu::emu().gridDim)

inline void __syncthreads()
{
    spfemu::blockBarrier();
}

inline void __syncwarp(unsigned mask = 0xFFFFFFFFU)
{
    spfemu::checkFullMask(mask);
    spfemu::count(spfemu::Op::kOTHER, 1);
    spfemu::warpBarrier();
}

inline unsigned __ballot_sync(unsigned mask, int predicate)
{
    spfemu::checkFullMask(mask);
    spfemu::count(spfemu::Op::kVOTE, 1);
    int32_t all[32];
    spfemu::warpGather(static_cast<int32_t>(predicate != 0), all);
    unsigned bits = 0;
    for (int32_t l = 0; l < 32; ++l)
    {
        bits |= static_cast<unsigned>(all[l]) << l;
    }
    return bits;
}

template <typename T>
inline T __shfl_sync(unsigned mask, T value, int src, int /*width*/ = 32)
{
    spfemu::checkFullMask(mask);
    spfemu::count(spfemu::Op::kSHFL, 1);
    T all[32];
    spfemu::warpGather(value, all);
    return all[src & 31];
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int laneMask, int /*width*/ = 32)
{
    spfemu::checkFullMask(mask);
    spfemu::count(spfemu::Op::kSHFL, 1);
    T all[32];
    spfemu::warpGather(value, all);
    return all[(spfemu::self().tid.x % 32) ^ static_cast<unsigned>(laneMask & 31)];
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, unsigned delta, int /*width*/ = 32)
{
    spfemu::checkFullMask(mask);
    spfemu::count(spfemu::Op::kSHFL, 1);
    T all[32];
    spfemu::warpGather(value, all);
    unsigned const src = spfemu::self().tid.x % 32 + delta;
    return src < 32 ? all[src] : value;
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T value, unsigned delta, int /*width*/ = 32)
{
    spfemu::checkFullMask(mask);
    spfemu::count(spfemu::Op::kSHFL, 1);
    T all[32];
    spfemu::warpGather(value, all);
    int32_t const src = static_cast<int32_t>(spfemu::self().tid.x % 32) - static_cast<int32_t>(delta);
    return src >= 0 ? all[src] : value;
}

inline int __any_sync(unsigned mask, int predicate)
{
    return __ballot_sync(mask, predicate) != 0U;
}

inline unsigned __reduce_max_sync(unsigned mask, unsigned value)
{
    spfemu::checkFullMask(mask);
    spfemu::count(spfemu::Op::kVOTE, 1); // REDUX
    unsigned all[32];
    spfemu::warpGather(value, all);
    return *std::max_element(all, all + 32);
}

inline int __all_sync(unsigned mask, int predicate)
{
    return __ballot_sync(mask, predicate) == mask;
}

inline int __clzll(long long x)
{
    spfemu::count(spfemu::Op::kBIT, 2);
    return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}

//! The high 32 bits of (hi:lo) << (shift & 31): SHF.L.W.U32.HI, one ALU instruction.
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift)
{
    spfemu::count(spfemu::Op::kALU, 1);
    unsigned const s = shift & 31U;
    return s == 0U ? hi : (hi << s) | (lo >> (32U - s));
}

inline int __popc(unsigned x)
{
    spfemu::count(spfemu::Op::kBIT, 1);
    return __builtin_popcount(x);
}

inline int __clz(int x)
{
    spfemu::count(spfemu::Op::kBIT, 1);
    return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x));
}

inline int __ffs(int x)
{
    spfemu::count(spfemu::Op::kBIT, 1);
    return __builtin_ffs(x);
}

inline float __uint_as_float(unsigned u)
{
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline unsigned __float_as_uint(float f)
{
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}

// Coroutines never preempt each other: a plain read-modify-write is atomic here.
inline unsigned atomicAdd(unsigned* p, unsigned v)
{
    spfemu::count(spfemu::Op::kATOMS, 1);
    unsigned const old = *p;
    *p = old + v;
    return old;
}

inline unsigned atomicOr(unsigned* p, unsigned v)
{
    spfemu::count(spfemu::Op::kATOMS, 1);
    unsigned const old = *p;
    *p = old | v;
    return old;
}
