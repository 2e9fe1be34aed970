/*
 * The contract of the TopKMaskedAttention op, as C++ constants.
 *
 * Mirrors sparsifiner/op_spec.py (the single source of truth); the test
 * tests/trt_plugins/test_op_constants.py checks that the two agree. The TensorRT
 * plugin, the torch binding and the kernels include this header instead of
 * spelling the names again. Bump kOP_VERSION (in both places) when attributes change.
 */
#pragma once

#include <cstdint>

namespace sparsifiner
{
namespace plugin
{

constexpr char const* kOP_NAME{"TopKMaskedAttention"};
constexpr char const* kOP_DOMAIN{"sparsifiner"};
constexpr int32_t kOP_VERSION{1};
constexpr char const* kOP_VERSION_STRING{"1"};

// torch.library registration: kTORCH_OP_NAMESPACE::kTORCH_OP_NAME.
constexpr char const* kTORCH_OP_NAMESPACE{"sparsifiner"};
constexpr char const* kTORCH_OP_NAME{"topk_masked_attention"};

// Inputs and outputs, in order.
constexpr int32_t kNB_INPUTS{5};
constexpr int32_t kNB_OUTPUTS{1};
constexpr char const* kINPUT_NAMES[kNB_INPUTS]{"q", "k", "v", "coef", "basis"};
constexpr char const* kOUTPUT_NAMES[kNB_OUTPUTS]{"out"};

// Attributes (one list serves serialisation and the plugin creator).
constexpr char const* kATTR_BUDGET{"budget"};
constexpr char const* kATTR_SCALE{"scale"};
constexpr char const* kATTR_CLS_ROWS{"cls_rows"};
constexpr int32_t kNB_ATTRIBUTES{3};
constexpr char const* kATTRIBUTE_NAMES[kNB_ATTRIBUTES]{kATTR_BUDGET, kATTR_SCALE, kATTR_CLS_ROWS};
constexpr int32_t kDEFAULT_CLS_ROWS{1};

} // namespace plugin
} // namespace sparsifiner
