/*
 * Field and tensor checks of the TopKMaskedAttention plugin (see the header).
 */
#include "topkMaskedAttentionPluginChecks.h"

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>

namespace sparsifiner
{
namespace plugin
{
namespace
{

using TrtType = nvinfer1::DataType;

constexpr int32_t kQ{0};
constexpr int32_t kCOEF{3};
constexpr int32_t kBASIS{4};

std::string toString(nvinfer1::Dims const& d)
{
    std::ostringstream s;
    s << "[";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        s << (i ? ", " : "") << d.d[i];
    }
    s << "]";
    return s.str();
}

bool isSupportedHeadDim(int64_t d)
{
    for (int32_t supported : kSUPPORTED_HEAD_DIMS)
    {
        if (d == supported)
        {
            return true;
        }
    }
    return false;
}

std::string attributeNames()
{
    std::string names;
    for (AttributeSpec const& spec : kATTRIBUTES)
    {
        names += (names.empty() ? "" : ", ") + std::string(spec.name);
    }
    return names;
}

int32_t readInt(nvinfer1::PluginField const& field, std::string const& name)
{
    int64_t v{0};
    switch (field.type)
    {
    case nvinfer1::PluginFieldType::kINT32: v = *static_cast<int32_t const*>(field.data); break;
    case nvinfer1::PluginFieldType::kINT64: v = *static_cast<int64_t const*>(field.data); break;
    default: throw std::invalid_argument("attribute '" + name + "' must be an integer field (kINT32)");
    }
    if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
    {
        throw std::invalid_argument("attribute '" + name + "' = " + std::to_string(v) + " does not fit int32");
    }
    return static_cast<int32_t>(v);
}

float readFloat(nvinfer1::PluginField const& field, std::string const& name)
{
    switch (field.type)
    {
    case nvinfer1::PluginFieldType::kFLOAT32: return *static_cast<float const*>(field.data);
    case nvinfer1::PluginFieldType::kFLOAT64: return static_cast<float>(*static_cast<double const*>(field.data));
    default: throw std::invalid_argument("attribute '" + name + "' must be a float field (kFLOAT32)");
    }
}

} // namespace

AttributeValues readAttributeFields(nvinfer1::PluginFieldCollection const* fc)
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr))
    {
        throw std::invalid_argument("no plugin fields were given");
    }
    AttributeValues values{};
    std::array<bool, kNB_ATTRIBUTES> seen{};
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        nvinfer1::PluginField const& field = fc->fields[i];
        std::string const name = field.name != nullptr ? field.name : "";
        int32_t const index = attributeIndex(name.c_str());
        if (index < 0)
        {
            throw std::invalid_argument("unknown attribute '" + name + "' (the op has " + attributeNames() + ")");
        }
        if (seen[index])
        {
            throw std::invalid_argument("attribute '" + name + "' is given twice");
        }
        if (field.length != 1 || field.data == nullptr)
        {
            throw std::invalid_argument("attribute '" + name + "' must hold exactly one value");
        }
        if (kATTRIBUTES[index].type == AttributeType::kINT)
        {
            values[index].i = readInt(field, name);
        }
        else
        {
            values[index].f = readFloat(field, name);
        }
        seen[index] = true;
    }
    for (int32_t i = 0; i < kNB_ATTRIBUTES; ++i)
    {
        if (!seen[i] && kATTRIBUTES[i].required)
        {
            throw std::invalid_argument(std::string("the required attribute '") + kATTRIBUTES[i].name + "' is missing");
        }
        if (!seen[i])
        {
            values[i].i = static_cast<int32_t>(kATTRIBUTES[i].defaultValue);
            values[i].f = static_cast<float>(kATTRIBUTES[i].defaultValue);
        }
    }
    return values;
}

void checkAttributeValues(AttributeValues const& values)
{
    int32_t const budget = values[attributeIndex(kATTR_BUDGET)].i;
    float const scale = values[attributeIndex(kATTR_SCALE)].f;
    int32_t const clsRows = values[attributeIndex(kATTR_CLS_ROWS)].i;
    if (budget < 1)
    {
        throw std::invalid_argument("budget must be >= 1, got " + std::to_string(budget));
    }
    if (!(scale > 0.F) || !std::isfinite(scale))
    {
        throw std::invalid_argument("scale must be a finite number > 0, got " + std::to_string(scale));
    }
    if (clsRows < 0)
    {
        throw std::invalid_argument("cls_rows must be >= 0, got " + std::to_string(clsRows));
    }
}

std::string formatAttributes(AttributeValues const& values)
{
    std::ostringstream s;
    for (int32_t i = 0; i < kNB_ATTRIBUTES; ++i)
    {
        s << (i ? " " : "") << kATTRIBUTES[i].name << "=";
        if (kATTRIBUTES[i].type == AttributeType::kINT)
        {
            s << values[i].i;
        }
        else
        {
            s << values[i].f;
        }
    }
    return s.str();
}

bool isSupportedTensorType(TrtType type)
{
    return type == TrtType::kFLOAT || type == TrtType::kHALF || type == TrtType::kBF16;
}

char const* typeName(TrtType type)
{
    switch (type)
    {
    case TrtType::kFLOAT: return "float32";
    case TrtType::kHALF: return "float16";
    case TrtType::kBF16: return "bfloat16";
    default: return "an unsupported type";
    }
}

std::string checkInputTensors(
    nvinfer1::Dims const* dims, TrtType const* types, int32_t nbInputs, int32_t budget, int32_t clsRows)
{
    if (nbInputs != kNB_INPUTS)
    {
        return "expects 5 inputs (q, k, v, coef, basis), got " + std::to_string(nbInputs);
    }
    static constexpr int32_t kRANKS[kNB_INPUTS]{4, 4, 4, 4, 2};
    static constexpr char const* kLAYOUTS[kNB_INPUTS]{
        "[B, H, N, d]", "[B, H, N, d]", "[B, H, N, d]", "[B, H, N - cls_rows, R]", "[R, N]"};
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        if (dims[i].nbDims != kRANKS[i])
        {
            return std::string(kINPUT_NAMES[i]) + " must be " + kLAYOUTS[i] + ", got " + toString(dims[i]);
        }
    }
    auto differ = [](int64_t a, int64_t b) { return a >= 0 && b >= 0 && a != b; };
    nvinfer1::Dims const& q = dims[kQ];
    for (int32_t i = 1; i <= 2; ++i)
    {
        for (int32_t j = 0; j < 4; ++j)
        {
            if (differ(dims[i].d[j], q.d[j]))
            {
                return std::string(kINPUT_NAMES[i]) + " must have the shape of q " + toString(q) + ", got "
                    + toString(dims[i]);
            }
        }
    }
    int64_t const n = q.d[2];
    if (q.d[3] >= 0 && !isSupportedHeadDim(q.d[3]))
    {
        return "head dim " + std::to_string(q.d[3]) + " is not supported (use 32, 48, 64, 80, 96 or 128)";
    }
    if (n >= 0 && (n < 1 || n > kMAX_TOKENS))
    {
        return "N = " + std::to_string(n) + " tokens is outside [1, " + std::to_string(kMAX_TOKENS) + "]";
    }
    if (n >= 0 && budget > n)
    {
        return "budget " + std::to_string(budget) + " exceeds the N = " + std::to_string(n) + " tokens";
    }
    if (n >= 0 && clsRows >= n)
    {
        return "cls_rows " + std::to_string(clsRows) + " must be < N = " + std::to_string(n);
    }
    nvinfer1::Dims const& coef = dims[kCOEF];
    nvinfer1::Dims const& basis = dims[kBASIS];
    int64_t const r = basis.d[0];
    if (r == 0)
    {
        return "basis has rank R = 0; it needs R >= 1";
    }
    if (differ(basis.d[1], n) || differ(coef.d[0], q.d[0]) || differ(coef.d[1], q.d[1])
        || differ(coef.d[2], n >= 0 ? n - clsRows : -1) || differ(coef.d[3], r))
    {
        return "with q " + toString(q) + " and cls_rows " + std::to_string(clsRows) + ", coef must be "
            + kLAYOUTS[kCOEF] + " and basis [R, N]; got coef " + toString(coef) + ", basis " + toString(basis);
    }
    if (types == nullptr)
    {
        return {};
    }
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        if (!isSupportedTensorType(types[i]))
        {
            return std::string(kINPUT_NAMES[i]) + " must be float32, float16 or bfloat16, got " + typeName(types[i]);
        }
    }
    if (types[1] != types[kQ] || types[2] != types[kQ])
    {
        return std::string("q, k and v must share one type; got ") + typeName(types[kQ]) + ", " + typeName(types[1])
            + ", " + typeName(types[2]);
    }
    return {};
}

std::string describeLaunchFailure(TopKMaskedAttentionParams const& params, cudaError_t status)
{
    std::string why = std::string("kernel launch failed: ") + cudaGetErrorName(status);
    int32_t device{0};
    int32_t maxSmem{0};
    char const* reason{nullptr};
    if (status == cudaErrorInvalidValue && cudaGetDevice(&device) == cudaSuccess
        && cudaDeviceGetAttribute(&maxSmem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess
        && resolveTopKMaskedAttentionAlgo(params, maxSmem, &reason) == AttentionAlgo::kAUTO && reason != nullptr)
    {
        why += std::string(" (") + reason + ")";
    }
    return why;
}

} // namespace plugin
} // namespace sparsifiner
