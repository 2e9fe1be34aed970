/*
 * TensorRT IPluginV3 plugin of the TopKMaskedAttention op and its creator.
 *
 * sparsifiner::TopKMaskedAttention, version kOP_VERSION_STRING, namespace kPLUGIN_NAMESPACE
 * (topkMaskedAttentionSpec.h). The plugin only checks shapes and types and fills a
 * TopKMaskedAttentionParams; the CUDA work is launchTopKMaskedAttention()
 * (topkMaskedAttentionKernel.h). Attributes follow the single field table kATTRIBUTES:
 * the creator advertises it, getFieldsToSerialize() writes it, createPlugin() reads it
 * in both phases.
 */
#pragma once

#include "topkMaskedAttentionPluginChecks.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace sparsifiner
{
namespace plugin
{

class TopKMaskedAttentionPlugin final : public nvinfer1::IPluginV3,
                                        public nvinfer1::IPluginV3OneCore,
                                        public nvinfer1::IPluginV3OneBuild,
                                        public nvinfer1::IPluginV3OneRuntime
{
public:
    //! Throws std::invalid_argument when an attribute is out of range.
    TopKMaskedAttentionPlugin(std::string layerName, AttributeValues const& values);
    TopKMaskedAttentionPlugin(TopKMaskedAttentionPlugin const& other);
    TopKMaskedAttentionPlugin& operator=(TopKMaskedAttentionPlugin const&) = delete;
    ~TopKMaskedAttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    int32_t getBudget() const noexcept;
    float getScale() const noexcept;
    int32_t getClsRows() const noexcept;

private:
    //! Logs "TopKMaskedAttention 'layer': what" as an error; returns -1 for the caller.
    int32_t fail(std::string const& what) const noexcept;

    std::string mLayerName;
    AttributeValues mValues;
    std::string mMetadata;
    std::vector<nvinfer1::PluginField> mFieldsToSerialize;
    nvinfer1::PluginFieldCollection mFcToSerialize{};
};

class TopKMaskedAttentionPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    TopKMaskedAttentionPluginCreator();
    ~TopKMaskedAttentionPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFc{};
};

} // namespace plugin
} // namespace sparsifiner
