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

// The TensorRT plugin is found by (kOP_NAME, kOP_VERSION_STRING, kPLUGIN_NAMESPACE); the
// exporter writes the node attributes kPLUGIN_NAMESPACE_ATTR and kPLUGIN_VERSION_ATTR with
// these values so TensorRT's ONNX parser picks the plugin over the node's local function.
constexpr char const* kPLUGIN_NAMESPACE{"sparsifiner"};
constexpr char const* kPLUGIN_NAMESPACE_ATTR{"plugin_namespace"};
constexpr char const* kPLUGIN_VERSION_ATTR{"plugin_version"};

// torch.library registration: kTORCH_OP_NAMESPACE::kTORCH_OP_NAME.
constexpr char const* kTORCH_OP_NAMESPACE{"sparsifiner"};
constexpr char const* kTORCH_OP_NAME{"topk_masked_attention"};

// Inputs and outputs, in order.
constexpr int32_t kNB_INPUTS{5};
constexpr int32_t kNB_OUTPUTS{1};
constexpr char const* kINPUT_NAMES[kNB_INPUTS]{"q", "k", "v", "coef", "basis"};
constexpr char const* kOUTPUT_NAMES[kNB_OUTPUTS]{"out"};

// Attributes. kATTRIBUTES is the one field list: the plugin creator advertises it, the
// plugin serialises it and re-creates itself from it at runtime, in this order (the order of
// op_spec.ATTRIBUTES; tests/trt_plugins/test_op_constants.py compares the two tables).
// Adding an attribute is one row here and one in op_spec.py (then bump kOP_VERSION).
constexpr char const* kATTR_BUDGET{"budget"};
constexpr char const* kATTR_SCALE{"scale"};
constexpr char const* kATTR_CLS_ROWS{"cls_rows"};
constexpr int32_t kDEFAULT_CLS_ROWS{1};

//! How an attribute is stored: ONNX INT (a plugin field of kINT32) or FLOAT (kFLOAT32).
enum class AttributeType : int32_t
{
    kINT = 0,
    kFLOAT = 1,
};

struct AttributeSpec
{
    char const* name;
    AttributeType type;
    bool required;       //!< true: no default, the node must carry it
    double defaultValue; //!< used when the field is absent and !required
};

constexpr AttributeSpec kATTRIBUTES[]{
    {kATTR_BUDGET, AttributeType::kINT, true, 0},
    {kATTR_SCALE, AttributeType::kFLOAT, true, 0},
    {kATTR_CLS_ROWS, AttributeType::kINT, false, kDEFAULT_CLS_ROWS},
};
constexpr int32_t kNB_ATTRIBUTES{static_cast<int32_t>(sizeof(kATTRIBUTES) / sizeof(kATTRIBUTES[0]))};

//! Index of an attribute in kATTRIBUTES, or -1.
constexpr int32_t attributeIndex(char const* name)
{
    for (int32_t i = 0; i < kNB_ATTRIBUTES; ++i)
    {
        char const* a = kATTRIBUTES[i].name;
        char const* b = name;
        while (*a != '\0' && *a == *b)
        {
            ++a;
            ++b;
        }
        if (*a == *b)
        {
            return i;
        }
    }
    return -1;
}

} // namespace plugin
} // namespace sparsifiner
