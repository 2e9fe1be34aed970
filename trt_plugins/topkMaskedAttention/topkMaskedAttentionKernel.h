/*
 * Fused budgeted sparse attention (TopKMaskedAttention) on CUDA: the launcher API.
 *
 * Plain C++ with CUDA runtime types only (no TensorRT, no torch): the TensorRT
 * plugin, the torch binding and the benchmarks all call launchTopKMaskedAttention.
 *
 * Semantics (sparsifiner/op_spec.py): q, k, v, out are [BH, N, d] contiguous, coef is
 * [BH, N - c, R], basis is [R, N]. Rows i < c attend densely. Row i >= c keeps the
 * `budget` keys j with the largest s_j = coef[i - c] . basis[:, j] (fp32; ties go to
 * the lower j; NaN ranks highest, -0 equals +0), and returns the softmax-weighted sum
 * of their v_j, with logits scale * q_i . k_j and everything accumulated in fp32.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

namespace sparsifiner
{
namespace plugin
{

//! Element types. The values match nvinfer1::DataType so the plugin can cast.
enum class DataType : int32_t
{
    kFLOAT = 0,
    kHALF = 1,
    kBF16 = 7,
};

//! Which kernel runs the attention. kAUTO picks kTILED2D for fp16/bf16 when the non-CLS
//! rows form a square patch grid, R <= 64, budget < N and its shared memory fits; else
//! kTILED whenever its shared memory fits; else kROWWISE (the only one for fp32).
enum class AttentionAlgo : int32_t
{
    kAUTO = 0,
    kTILED = 1,   //!< 64-row query tiles, union of key sets, tensor-core MMAs (fp16/bf16).
    kROWWISE = 2, //!< one warp per query row, CUDA cores (all types; the fallback).
    kTILED2D = 3, //!< 8x8 patch tiles, scores and selection on tensor cores (fp16/bf16; v2).
};

struct TopKMaskedAttentionParams
{
    void const* q{nullptr};     //!< [BH, N, d], dataType
    void const* k{nullptr};     //!< [BH, N, d], dataType
    void const* v{nullptr};     //!< [BH, N, d], dataType
    void const* coef{nullptr};  //!< [BH, N - clsRows, R], coefType
    void const* basis{nullptr}; //!< [R, N], basisType
    void* out{nullptr};         //!< [BH, N, d], dataType
    void* workspace{nullptr};   //!< getTopKMaskedAttentionWorkspaceSize() bytes, 256-byte aligned
    size_t workspaceBytes{0};

    DataType dataType{DataType::kHALF};
    DataType coefType{DataType::kHALF};
    DataType basisType{DataType::kHALF};

    int64_t batchHeads{0}; //!< B * H; any value >= 1 (it goes into gridDim.x, never y or z)
    int32_t numTokens{0};  //!< N
    int32_t headDim{0};    //!< d, one of kSUPPORTED_HEAD_DIMS
    int32_t rank{0};       //!< R, >= 1
    int32_t budget{0};     //!< keys kept per non-CLS row, 1 <= budget <= N
    int32_t clsRows{1};    //!< c, 0 <= c < N
    float scale{1.F};      //!< logit scale, > 0
    AttentionAlgo algo{AttentionAlgo::kAUTO};
};

constexpr int32_t kNB_SUPPORTED_HEAD_DIMS{6};
constexpr int32_t kSUPPORTED_HEAD_DIMS[kNB_SUPPORTED_HEAD_DIMS]{32, 48, 64, 80, 96, 128};
//! The tiled kernel stores key positions as uint16.
constexpr int32_t kMAX_TOKENS{65535};

//! Bytes of scratch memory the launch needs (the basis in compressed rows, and packed
//! for the tensor-core scores of kTILED2D).
size_t getTopKMaskedAttentionWorkspaceSize(TopKMaskedAttentionParams const& params) noexcept;

//! nullptr when the params are valid for a launch, else a one-line reason.
char const* validateTopKMaskedAttention(TopKMaskedAttentionParams const& params) noexcept;

//! The kernel a launch would run on a device with `maxSharedBytes` of opt-in shared
//! memory per block. Writes a reason and returns kAUTO when nothing fits.
AttentionAlgo resolveTopKMaskedAttentionAlgo(
    TopKMaskedAttentionParams const& params, int32_t maxSharedBytes, char const** reason = nullptr) noexcept;

//! Enqueue the op on `stream` (the current device). Returns cudaErrorInvalidValue for
//! invalid params (see validateTopKMaskedAttention), else the launch status.
cudaError_t launchTopKMaskedAttention(TopKMaskedAttentionParams const& params, cudaStream_t stream) noexcept;

} // namespace plugin
} // namespace sparsifiner
