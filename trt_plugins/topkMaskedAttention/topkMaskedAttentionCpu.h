/*
 * Budgeted sparse attention (TopKMaskedAttention) on the CPU: the kernel API.
 *
 * Plain C++17, no ONNX Runtime or torch type: the ONNX Runtime custom-op library
 * (topkMaskedAttentionOrt.cpp), the torch binding (topkMaskedAttentionTorchCpu.cpp) and
 * the benchmarks call these functions. The caller owns the threads: it asks for the
 * number of independent work items and runs runTopKMaskedAttentionCpu() on disjoint
 * item ranges from as many threads as it likes (ONNX Runtime's intra-op pool,
 * at::parallel_for).
 *
 * Semantics (sparsifiner/op_spec.py): q, k, v, out are [BH, N, d] contiguous, coef is
 * [BH, N - c, R], basis is [R, N]. Rows i < c attend densely. Row i >= c keeps the
 * `budget` keys j with the largest s_j = coef[i - c] . basis[:, j] (fp32; ties go to the
 * lower j; NaN ranks highest, -0 equals +0) and returns the softmax-weighted sum of their
 * v_j, with logits scale * q_i . k_j and everything accumulated in fp32.
 *
 * Scores are summed in an order of the kernel's choosing. On the project's score grid
 * (coef multiples of 2^-10, basis columns m * 2^e with |m| <= 127) every partial sum is
 * exact in fp32, so the selected keys equal the reference's bit for bit; off the grid
 * they can differ only where two scores are within rounding of each other.
 */
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparsifiner
{
namespace cpu
{

//! Element types of the tensors. The values match ONNX's TensorProto data types.
enum class DataType : int32_t
{
    kFLOAT = 1,
    kHALF = 10,
    kBF16 = 16,
};

struct TopKMaskedAttentionCpuParams
{
    void const* q{nullptr};     //!< [BH, N, d], dataType
    void const* k{nullptr};     //!< [BH, N, d], dataType
    void const* v{nullptr};     //!< [BH, N, d], dataType
    void const* coef{nullptr};  //!< [BH, N - clsRows, R], coefType
    void const* basis{nullptr}; //!< [R, N], basisType
    void* out{nullptr};         //!< [BH, N, d], dataType

    DataType dataType{DataType::kFLOAT};
    DataType coefType{DataType::kFLOAT};
    DataType basisType{DataType::kFLOAT};

    int64_t batchHeads{0}; //!< B * H >= 1
    int32_t numTokens{0};  //!< N >= 1
    int32_t headDim{0};    //!< d >= 1 (multiples of 16 take the vector path)
    int32_t rank{0};       //!< R >= 1
    int32_t budget{0};     //!< keys kept per non-CLS row, 1 <= budget <= N
    int32_t clsRows{1};    //!< c, 0 <= c < N
    float scale{1.F};      //!< logit scale, finite

    // Tuning knobs; 0 picks the default. Results never depend on them.
    int32_t rowBlock{0};    //!< query rows per work item
    int32_t keyTile{0};     //!< keys per K/V tile of the key-blocked attention loop
    int32_t sampleMinN{0};  //!< N from which selection starts from a sampled threshold (-1: never)
    int32_t l1Keys{0};      //!< keys per tile of the L1-tiled two-pass attention (-1: never; 0: by budget)
};

//! Counters of one run (optional; for tests and the benchmark).
struct TopKMaskedAttentionCpuStats
{
    int64_t rows{0};          //!< non-CLS rows selected
    int64_t sampledRows{0};   //!< rows that filtered with a sampled threshold
    int64_t fallbackRows{0};  //!< of those, rows whose filter kept fewer than budget keys (rescanned)
    int64_t candidates{0};    //!< keys that entered the exact selection, summed over rows
};

//! nullptr when the params describe a valid run, else a one-line reason (static storage).
char const* validateTopKMaskedAttentionCpu(TopKMaskedAttentionCpuParams const& params) noexcept;

//! Bytes of shared read-only scratch (the basis as padded fp32 rows).
size_t getTopKMaskedAttentionCpuWorkspaceSize(TopKMaskedAttentionCpuParams const& params) noexcept;

//! Fills the workspace; run once, single-threaded, before runTopKMaskedAttentionCpu.
void prepareTopKMaskedAttentionCpu(TopKMaskedAttentionCpuParams const& params, void* workspace) noexcept;

//! Number of independent work items (row blocks of one batch-head each).
int64_t getTopKMaskedAttentionCpuWorkItems(TopKMaskedAttentionCpuParams const& params) noexcept;

//! Runs items [begin, end). Thread safe for disjoint ranges; per-thread scratch is
//! thread_local. Returns false only when scratch memory cannot be allocated.
bool runTopKMaskedAttentionCpu(TopKMaskedAttentionCpuParams const& params, void const* workspace, int64_t begin,
    int64_t end, TopKMaskedAttentionCpuStats* stats = nullptr) noexcept;

//! The instruction set the vector paths were compiled for ("avx512" or "portable").
char const* getTopKMaskedAttentionCpuIsa() noexcept;

} // namespace cpu
} // namespace sparsifiner
