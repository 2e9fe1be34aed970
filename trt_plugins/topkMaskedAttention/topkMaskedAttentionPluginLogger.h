/*
 * Where the plugin's messages go: the ILogger that TensorRT hands the library through
 * setLoggerFinder() (topkMaskedAttentionPluginLibrary.cpp), else stderr.
 */
#pragma once

#include <NvInferRuntime.h>

namespace sparsifiner
{
namespace plugin
{

void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

void logPluginMessage(nvinfer1::ILogger::Severity severity, char const* message) noexcept;

} // namespace plugin
} // namespace sparsifiner
