/*
 * launchTopKMaskedAttention() and friends (topkMaskedAttentionKernel.h) on the CPU emulator,
 * so the plugin glue links against the unchanged kernels and runs end to end without a
 * GPU: the plugin library built from this file (instead of the .cu files) takes host
 * pointers where the real one takes device pointers.
 */
#define SPARSIFINER_EMULATE 1
#include "cudaEmulator.h"

#include "topkMaskedAttentionPlan.h"

#include <cstring>

// The emulator's C entry point (emulator.cpp, linked into the same library).
extern "C" int spf_emulate(void const* q, void const* k, void const* v, void const* coef, void const* basis, void* out,
    int32_t dataType, int32_t coefType, int32_t basisType, int64_t batchHeads, int32_t numTokens, int32_t headDim,
    int32_t rank, int32_t budget, int32_t clsRows, float scale, int32_t algo, int32_t maxSmem, int32_t blockStride,
    int32_t* algoUsed, char* error, int32_t errorSize, double* tally);

namespace sparsifiner
{
namespace plugin
{
namespace
{
constexpr int32_t kEMULATED_SMEM{227 * 1024}; // an H100's opt-in shared memory per block
char gLastError[512];
} // namespace

size_t getTopKMaskedAttentionWorkspaceSize(TopKMaskedAttentionParams const& params) noexcept
{
    return kernels::workspaceBytes(params);
}

char const* validateTopKMaskedAttention(TopKMaskedAttentionParams const& params) noexcept
{
    return kernels::validateParams(params);
}

AttentionAlgo resolveTopKMaskedAttentionAlgo(
    TopKMaskedAttentionParams const& params, int32_t maxSharedBytes, char const** reason) noexcept
{
    char const* why = kernels::validateParams(params);
    kernels::LaunchPlan plan{};
    if (why == nullptr)
    {
        plan = kernels::planLaunch(params, maxSharedBytes);
        why = plan.reason;
    }
    if (reason != nullptr)
    {
        *reason = why;
    }
    return why == nullptr ? plan.algo : AttentionAlgo::kAUTO;
}

cudaError_t launchTopKMaskedAttention(TopKMaskedAttentionParams const& p, cudaStream_t /*stream*/) noexcept
{
    if (kernels::validateParams(p) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    // The plugin's workspace must be writable for the size it claims (the emulator then
    // uses its own poisoned copy).
    std::memset(p.workspace, 0xFF, kernels::workspaceBytes(p));
    int32_t used{-1};
    int const rc = spf_emulate(p.q, p.k, p.v, p.coef, p.basis, p.out, static_cast<int32_t>(p.dataType),
        static_cast<int32_t>(p.coefType), static_cast<int32_t>(p.basisType), p.batchHeads, p.numTokens, p.headDim,
        p.rank, p.budget, p.clsRows, p.scale, static_cast<int32_t>(p.algo), kEMULATED_SMEM, 1, &used, gLastError,
        static_cast<int32_t>(sizeof(gLastError)), nullptr);
    return rc == 0 ? cudaSuccess : (rc == 1 ? cudaErrorInvalidValue : cudaErrorLaunchFailure);
}

} // namespace plugin
} // namespace sparsifiner
