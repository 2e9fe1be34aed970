/*
 * TopKMaskedAttention as a TensorRT IPluginV3: validation, field handling and the call of
 * launchTopKMaskedAttention(). Every noexcept method catches; failures are logged through
 * the logger TensorRT gave the library and reported as -1 / nullptr / false.
 */
#include "topkMaskedAttentionPlugin.h"

#include "topkMaskedAttentionKernel.h"
#include "topkMaskedAttentionPluginLogger.h"

#include <exception>

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
constexpr int32_t kBUDGET_INDEX{attributeIndex(kATTR_BUDGET)};
constexpr int32_t kSCALE_INDEX{attributeIndex(kATTR_SCALE)};
constexpr int32_t kCLS_ROWS_INDEX{attributeIndex(kATTR_CLS_ROWS)};
static_assert(kBUDGET_INDEX >= 0 && kSCALE_INDEX >= 0 && kCLS_ROWS_INDEX >= 0, "attribute table lacks an entry");
static_assert(static_cast<int32_t>(TrtType::kFLOAT) == static_cast<int32_t>(DataType::kFLOAT)
        && static_cast<int32_t>(TrtType::kHALF) == static_cast<int32_t>(DataType::kHALF)
        && static_cast<int32_t>(TrtType::kBF16) == static_cast<int32_t>(DataType::kBF16),
    "the kernel's DataType values must match nvinfer1::DataType");

} // namespace

// ---------------------------------------------------------------------------------------------
// TopKMaskedAttentionPlugin

TopKMaskedAttentionPlugin::TopKMaskedAttentionPlugin(std::string layerName, AttributeValues const& values)
    : mLayerName(std::move(layerName))
    , mValues(values)
{
    checkAttributeValues(mValues);
    mMetadata = formatAttributes(mValues);
}

// The serialisation fields point into their own object: a copy starts without them.
TopKMaskedAttentionPlugin::TopKMaskedAttentionPlugin(TopKMaskedAttentionPlugin const& other)
    : nvinfer1::IPluginV3(other)
    , nvinfer1::IPluginV3OneCore(other)
    , nvinfer1::IPluginV3OneBuild(other)
    , nvinfer1::IPluginV3OneRuntime(other)
    , mLayerName(other.mLayerName)
    , mValues(other.mValues)
    , mMetadata(other.mMetadata)
{
}

int32_t TopKMaskedAttentionPlugin::getBudget() const noexcept
{
    return mValues[kBUDGET_INDEX].i;
}

float TopKMaskedAttentionPlugin::getScale() const noexcept
{
    return mValues[kSCALE_INDEX].f;
}

int32_t TopKMaskedAttentionPlugin::getClsRows() const noexcept
{
    return mValues[kCLS_ROWS_INDEX].i;
}

int32_t TopKMaskedAttentionPlugin::fail(std::string const& what) const noexcept
{
    try
    {
        std::string const message = std::string(kOP_NAME) + " '" + mLayerName + "': " + what;
        logPluginMessage(nvinfer1::ILogger::Severity::kERROR, message.c_str());
    }
    catch (...)
    {
        logPluginMessage(nvinfer1::ILogger::Severity::kERROR, kOP_NAME);
    }
    return -1;
}

nvinfer1::IPluginCapability* TopKMaskedAttentionPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* TopKMaskedAttentionPlugin::clone() noexcept
{
    try
    {
        return new TopKMaskedAttentionPlugin(*this);
    }
    catch (std::exception const& e)
    {
        fail(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* TopKMaskedAttentionPlugin::getPluginName() const noexcept
{
    return kOP_NAME;
}

char const* TopKMaskedAttentionPlugin::getPluginVersion() const noexcept
{
    return kOP_VERSION_STRING;
}

char const* TopKMaskedAttentionPlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t TopKMaskedAttentionPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t TopKMaskedAttentionPlugin::getOutputDataTypes(
    TrtType* outputTypes, int32_t nbOutputs, TrtType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
        {
            return fail("expects 5 inputs and 1 output");
        }
        if (!isSupportedTensorType(inputTypes[kQ]) || inputTypes[1] != inputTypes[kQ] || inputTypes[2] != inputTypes[kQ])
        {
            return fail(std::string("q, k and v must share one of float32, float16, bfloat16; got ")
                + typeName(inputTypes[kQ]) + ", " + typeName(inputTypes[1]) + ", " + typeName(inputTypes[2]));
        }
        outputTypes[0] = inputTypes[kQ];
        return 0;
    }
    catch (std::exception const& e)
    {
        return fail(e.what());
    }
}

int32_t TopKMaskedAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
        {
            return fail("expects 5 inputs and 1 output");
        }
        nvinfer1::Dims known[kNB_INPUTS];
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            known[i].nbDims = inputs[i].nbDims;
            for (int32_t j = 0; j < inputs[i].nbDims; ++j)
            {
                nvinfer1::IDimensionExpr const* e = inputs[i].d[j];
                known[i].d[j] = e != nullptr && e->isConstant() ? e->getConstantValue() : -1;
            }
        }
        std::string const why = checkInputTensors(known, nullptr, nbInputs, getBudget(), getClsRows());
        if (!why.empty())
        {
            return fail(why);
        }
        outputs[0] = inputs[kQ];
        return 0;
    }
    catch (std::exception const& e)
    {
        return fail(e.what());
    }
}

bool TopKMaskedAttentionPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        if (inOut == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0 || pos > kNB_INPUTS)
        {
            return false;
        }
        nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != nvinfer1::TensorFormat::kLINEAR || !isSupportedTensorType(desc.type))
        {
            return false;
        }
        // q decides k, v and out; coef and basis may each have any supported type.
        bool const followsQ = pos == 1 || pos == 2 || pos == kNB_INPUTS;
        return !followsQ || desc.type == inOut[kQ].desc.type;
    }
    catch (...)
    {
        return false;
    }
}

int32_t TopKMaskedAttentionPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
        {
            return fail("expects 5 inputs and 1 output");
        }
        nvinfer1::Dims dims[kNB_INPUTS];
        nvinfer1::Dims maxDims[kNB_INPUTS];
        TrtType types[kNB_INPUTS];
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            dims[i] = in[i].desc.dims;
            maxDims[i] = in[i].max;
            types[i] = in[i].desc.type;
        }
        std::string why = checkInputTensors(dims, types, nbInputs, getBudget(), getClsRows());
        if (why.empty())
        {
            why = checkInputTensors(maxDims, nullptr, nbInputs, getBudget(), getClsRows());
        }
        if (why.empty() && out[0].desc.type != types[kQ])
        {
            why = std::string("out must have the type of q (") + typeName(types[kQ]) + "), got " + typeName(out[0].desc.type);
        }
        return why.empty() ? 0 : fail(why);
    }
    catch (std::exception const& e)
    {
        return fail(e.what());
    }
}

size_t TopKMaskedAttentionPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    if (inputs == nullptr || nbInputs != kNB_INPUTS)
    {
        return 0;
    }
    // The scratch memory holds the compressed basis: it depends on R and N, not on the batch.
    TopKMaskedAttentionParams p{};
    p.numTokens = static_cast<int32_t>(inputs[kQ].max.d[2]);
    p.rank = static_cast<int32_t>(inputs[kBASIS].max.d[0]);
    return getTopKMaskedAttentionWorkspaceSize(p);
}

char const* TopKMaskedAttentionPlugin::getMetadataString() noexcept
{
    return mMetadata.c_str();
}

int32_t TopKMaskedAttentionPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    try
    {
        if (in == nullptr || nbInputs != kNB_INPUTS)
        {
            return fail("expects 5 inputs");
        }
        nvinfer1::Dims dims[kNB_INPUTS];
        TrtType types[kNB_INPUTS];
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            dims[i] = in[i].dims;
            types[i] = in[i].type;
        }
        std::string const why = checkInputTensors(dims, types, nbInputs, getBudget(), getClsRows());
        return why.empty() ? 0 : fail(why);
    }
    catch (std::exception const& e)
    {
        return fail(e.what());
    }
}

int32_t TopKMaskedAttentionPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    try
    {
        nvinfer1::Dims const& q = inputDesc[kQ].dims;
        TopKMaskedAttentionParams p{};
        p.batchHeads = q.d[0] * q.d[1];
        if (p.batchHeads == 0)
        {
            return 0;
        }
        p.q = inputs[0];
        p.k = inputs[1];
        p.v = inputs[2];
        p.coef = inputs[kCOEF];
        p.basis = inputs[kBASIS];
        p.out = outputs[0];
        p.dataType = static_cast<DataType>(inputDesc[kQ].type);
        p.coefType = static_cast<DataType>(inputDesc[kCOEF].type);
        p.basisType = static_cast<DataType>(inputDesc[kBASIS].type);
        p.numTokens = static_cast<int32_t>(q.d[2]);
        p.headDim = static_cast<int32_t>(q.d[3]);
        p.rank = static_cast<int32_t>(inputDesc[kBASIS].dims.d[0]);
        p.budget = getBudget();
        p.clsRows = getClsRows();
        p.scale = getScale();
        p.algo = AttentionAlgo::kAUTO;
        // TensorRT allocated getWorkspaceSize() bytes at the profile's maximum; R and N are fixed.
        p.workspace = workspace;
        p.workspaceBytes = getTopKMaskedAttentionWorkspaceSize(p);
        if (char const* why = validateTopKMaskedAttention(p))
        {
            return fail(why);
        }
        cudaError_t const status = launchTopKMaskedAttention(p, stream);
        return status == cudaSuccess ? 0 : fail(describeLaunchFailure(p, status));
    }
    catch (std::exception const& e)
    {
        return fail(e.what());
    }
}

nvinfer1::IPluginV3* TopKMaskedAttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone();
}

nvinfer1::PluginFieldCollection const* TopKMaskedAttentionPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mFieldsToSerialize.clear();
        for (int32_t i = 0; i < kNB_ATTRIBUTES; ++i)
        {
            bool const isInt = kATTRIBUTES[i].type == AttributeType::kINT;
            mFieldsToSerialize.emplace_back(kATTRIBUTES[i].name, isInt ? static_cast<void const*>(&mValues[i].i)
                                                                         : static_cast<void const*>(&mValues[i].f),
                isInt ? nvinfer1::PluginFieldType::kINT32 : nvinfer1::PluginFieldType::kFLOAT32, 1);
        }
        mFcToSerialize.nbFields = static_cast<int32_t>(mFieldsToSerialize.size());
        mFcToSerialize.fields = mFieldsToSerialize.data();
        return &mFcToSerialize;
    }
    catch (std::exception const& e)
    {
        fail(e.what());
    }
    return nullptr;
}

// ---------------------------------------------------------------------------------------------
// TopKMaskedAttentionPluginCreator

TopKMaskedAttentionPluginCreator::TopKMaskedAttentionPluginCreator()
{
    for (AttributeSpec const& spec : kATTRIBUTES)
    {
        mFields.emplace_back(spec.name, nullptr,
            spec.type == AttributeType::kINT ? nvinfer1::PluginFieldType::kINT32 : nvinfer1::PluginFieldType::kFLOAT32,
            1);
    }
    mFc.nbFields = static_cast<int32_t>(mFields.size());
    mFc.fields = mFields.data();
}

char const* TopKMaskedAttentionPluginCreator::getPluginName() const noexcept
{
    return kOP_NAME;
}

char const* TopKMaskedAttentionPluginCreator::getPluginVersion() const noexcept
{
    return kOP_VERSION_STRING;
}

char const* TopKMaskedAttentionPluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

nvinfer1::PluginFieldCollection const* TopKMaskedAttentionPluginCreator::getFieldNames() noexcept
{
    return &mFc;
}

nvinfer1::IPluginV3* TopKMaskedAttentionPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    // Both phases read the same fields: the ONNX attributes at kBUILD, getFieldsToSerialize() at kRUNTIME.
    std::string const layer = name != nullptr ? name : "";
    try
    {
        return new TopKMaskedAttentionPlugin(layer, readAttributeFields(fc));
    }
    catch (std::exception const& e)
    {
        std::string const message = std::string(kOP_NAME) + " '" + layer + "': " + e.what();
        logPluginMessage(nvinfer1::ILogger::Severity::kERROR, message.c_str());
    }
    catch (...)
    {
        logPluginMessage(nvinfer1::ILogger::Severity::kERROR, "TopKMaskedAttention: createPlugin failed");
    }
    return nullptr;
}

} // namespace plugin
} // namespace sparsifiner
