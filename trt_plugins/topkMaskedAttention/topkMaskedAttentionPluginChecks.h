/*
 * Checks behind the TopKMaskedAttention plugin: its fields against the attribute table
 * kATTRIBUTES, and input shapes and types against the op contract. Each returns (or
 * throws) a one-line reason the plugin logs with its layer name.
 */
#pragma once

#include "topkMaskedAttentionKernel.h"
#include "topkMaskedAttentionSpec.h"

#include <NvInferRuntime.h>

#include <array>
#include <string>

namespace sparsifiner
{
namespace plugin
{

//! One attribute value, stored in the type of its plugin field (kINT32 or kFLOAT32).
struct AttributeValue
{
    int32_t i{0};
    float f{0.F};
};

using AttributeValues = std::array<AttributeValue, kNB_ATTRIBUTES>;

//! The attributes in a field collection, defaults filled in; throws std::invalid_argument for
//! unknown, repeated, mistyped or missing fields. Integers come as kINT32 (the ONNX parser
//! converts INT) or kINT64, floats as kFLOAT32 or kFLOAT64.
AttributeValues readAttributeFields(nvinfer1::PluginFieldCollection const* fc);

//! Throws std::invalid_argument when an attribute value is out of range (budget < 1, ...).
void checkAttributeValues(AttributeValues const& values);

//! "budget=49 scale=0.125 cls_rows=1": the plugin's metadata string (layer information).
std::string formatAttributes(AttributeValues const& values);

bool isSupportedTensorType(nvinfer1::DataType type);

char const* typeName(nvinfer1::DataType type);

//! Empty when the five input shapes (and types, unless nullptr) fit the op, else the reason.
//! A dimension of -1 is not known yet (dynamic) and is not compared.
std::string checkInputTensors(nvinfer1::Dims const* dims, nvinfer1::DataType const* types, int32_t nbInputs,
    int32_t budget, int32_t clsRows);

//! "kernel launch failed: <CUDA error>" and, for a plan that does not fit the device, why.
std::string describeLaunchFailure(TopKMaskedAttentionParams const& params, cudaError_t status);

} // namespace plugin
} // namespace sparsifiner
