/*
 * The TopKMaskedAttention kernels on the CPU emulator, as a C entry point for ctypes.
 * Same validation, planning, workspace and launches as launchTopKMaskedAttention; the
 * kernels are the unchanged device code of trt_plugins/topkMaskedAttention.
 */
#define SPARSIFINER_EMULATE 1
#include "cudaEmulator.h"

#include "topkMaskedAttentionGrid.cuh"
#include "topkMaskedAttentionPlan.h"
#include "topkMaskedAttentionRowwise.cuh"
#include "topkMaskedAttentionTiledInstances.cuh"

#include <cstdlib>
#include <memory>

namespace
{

using namespace sparsifiner::kernels;
using sparsifiner::plugin::AttentionAlgo;
using sparsifiner::plugin::DataType;
using sparsifiner::plugin::TopKMaskedAttentionParams;

void writeError(char* buffer, int32_t size, std::string const& message)
{
    if (buffer != nullptr && size > 0)
    {
        std::snprintf(buffer, static_cast<size_t>(size), "%s", message.c_str());
    }
}

void (*rowwiseKernelFor(DataType t))(TopKMaskedAttentionParams, BasisCsr, int32_t)
{
    switch (t)
    {
    case DataType::kFLOAT: return &rowwiseTopKAttentionKernel<float>;
    case DataType::kHALF: return &rowwiseTopKAttentionKernel<__half>;
    case DataType::kBF16: return &rowwiseTopKAttentionKernel<__nv_bfloat16>;
    }
    return nullptr;
}

} // namespace

//! Sizes of the cost-model tally: kNUM_PHASES x kNUM_OPS doubles (phase-major).
extern "C" int spf_count_layout(int32_t* phases, int32_t* ops)
{
    *phases = spfemu::kNUM_PHASES;
    *ops = spfemu::kNUM_OPS;
    return 0;
}

//! Returns 0 on success, 1 for invalid params or a plan that does not fit, 2 for an
//! emulation error (deadlock, out-of-bounds access, ...). *algoUsed gets the kernel run;
//! blockStride > 1 runs only a sample of the attention blocks (rows of others stay as given).
//! tally (optional, kNUM_PHASES x kNUM_OPS doubles) receives the cost-model tally of the
//! launch: warp instructions by phase and class (tests/trt_plugins/emulator/cudaEmulator.h).
extern "C" int spf_emulate(void const* q, void const* k, void const* v, void const* coef, void const* basis, void* out,
    int32_t dataType, int32_t coefType, int32_t basisType, int64_t batchHeads, int32_t numTokens, int32_t headDim,
    int32_t rank, int32_t budget, int32_t clsRows, float scale, int32_t algo, int32_t maxSmem, int32_t blockStride,
    int32_t* algoUsed, char* error, int32_t errorSize, double* tally)
{
    spfemu::emu().total = spfemu::Tally{};
    TopKMaskedAttentionParams p{};
    p.q = q;
    p.k = k;
    p.v = v;
    p.coef = coef;
    p.basis = basis;
    p.out = out;
    p.dataType = static_cast<DataType>(dataType);
    p.coefType = static_cast<DataType>(coefType);
    p.basisType = static_cast<DataType>(basisType);
    p.batchHeads = batchHeads;
    p.numTokens = numTokens;
    p.headDim = headDim;
    p.rank = rank;
    p.budget = budget;
    p.clsRows = clsRows;
    p.scale = scale;
    p.algo = static_cast<AttentionAlgo>(algo);

    size_t const wsBytes = workspaceBytes(p);
    std::unique_ptr<uint8_t[]> wsStorage(new uint8_t[wsBytes + kWORKSPACE_ALIGN]);
    auto* ws = reinterpret_cast<uint8_t*>(
        (reinterpret_cast<uintptr_t>(wsStorage.get()) + kWORKSPACE_ALIGN - 1) & ~(uintptr_t{kWORKSPACE_ALIGN} - 1));
    std::memset(ws, 0xFF, wsBytes);
    p.workspace = ws;
    p.workspaceBytes = wsBytes;

    if (char const* why = validateParams(p))
    {
        writeError(error, errorSize, why);
        return 1;
    }
    LaunchPlan const plan = planLaunch(p, maxSmem);
    if (plan.reason != nullptr)
    {
        writeError(error, errorSize, plan.reason);
        return 1;
    }
    *algoUsed = static_cast<int32_t>(plan.algo);

    size_t const n = static_cast<size_t>(numTokens);
    size_t const qkvBytes = static_cast<size_t>(batchHeads) * n * static_cast<size_t>(headDim)
        * static_cast<size_t>(elementBytes(p.dataType));
    auto range = [](void const* ptr, size_t bytes) {
        auto const a = reinterpret_cast<uintptr_t>(ptr);
        return std::make_pair(a, a + bytes);
    };
    // cp.async may read q, k, v and (the 2-D kernel's packed basis) the workspace.
    spfemu::emu().globalRanges = {range(q, qkvBytes), range(k, qkvBytes), range(v, qkvBytes), range(ws, wsBytes)};

    auto* counts = reinterpret_cast<int32_t*>(ws);
    auto* entries = reinterpret_cast<CsrEntry*>(ws + alignUp(static_cast<size_t>(rank) * 4, kWORKSPACE_ALIGN));
    std::string status = spfemu::launch(static_cast<uint32_t>(rank), kCSR_THREADS, kCSR_THREADS / 32 * 4,
        [&] { compressBasisKernel(basis, p.basisType, numTokens, counts, entries); }, 1, spfemu::Phase::kPREP);
    if (status.empty() && plan.algo == AttentionAlgo::kTILED2D)
    {
        GridBasis const g = gridBasisOf(p);
        status = spfemu::launch(static_cast<uint32_t>(g.statBlocks), kT2_STAT_THREADS, kT2_STAT_THREADS / 32 * 16,
            [&] { gridStatsKernel(basis, p.basisType, numTokens, rank, g.colExp, g.stats); }, 1, spfemu::Phase::kPREP);
        if (status.empty())
        {
            uint32_t const blocks = static_cast<uint32_t>((g.npad + kT2_STAT_THREADS - 1) / kT2_STAT_THREADS);
            status = spfemu::launch(blocks, kT2_STAT_THREADS, kT2_STAT_THREADS / 32 * 16,
                [&] { gridPackKernel(basis, p.basisType, numTokens, rank, g); }, 1, spfemu::Phase::kPREP);
        }
    }
    if (status.empty())
    {
        auto kernel = plan.algo == AttentionAlgo::kTILED
            ? (p.dataType == DataType::kHALF ? tiledKernelFor<__half>(headDim) : tiledKernelFor<__nv_bfloat16>(headDim))
            : plan.algo == AttentionAlgo::kTILED2D
            ? (p.dataType == DataType::kHALF ? tile2dKernelFor<__half>(headDim) : tile2dKernelFor<__nv_bfloat16>(headDim))
            : rowwiseKernelFor(p.dataType);
        BasisCsr const csr = workspaceCsr(p);
        status = spfemu::launch(static_cast<uint32_t>(plan.grid), static_cast<uint32_t>(plan.block), plan.smemBytes,
            [&] { kernel(p, csr, plan.warps); }, static_cast<uint32_t>(blockStride));
    }
    if (!status.empty())
    {
        writeError(error, errorSize, status);
        return 2;
    }
    if (tally != nullptr)
    {
        std::memcpy(tally, &spfemu::emu().total, sizeof(spfemu::Tally));
    }
    return 0;
}
