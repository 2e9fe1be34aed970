/*
 * Entry points of libsparsifiner_topk_attention_plugin.so, the two TensorRT looks up in a
 * plugin library: getCreators() and setLoggerFinder(). Nothing else is exported, and the
 * library needs no link against libnvinfer: it loads with `trtexec --dynamicPlugins=...`,
 * IPluginRegistry::loadLibrary() and `trt.get_plugin_registry().load_library(...)` in
 * TensorRT and TensorRT-RTX alike.
 */
#include "topkMaskedAttentionPlugin.h"
#include "topkMaskedAttentionPluginLogger.h"

#include <atomic>
#include <cstdio>

namespace sparsifiner
{
namespace plugin
{
namespace
{

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

char const* severityName(nvinfer1::ILogger::Severity severity)
{
    switch (severity)
    {
    case nvinfer1::ILogger::Severity::kINTERNAL_ERROR: return "internal error";
    case nvinfer1::ILogger::Severity::kERROR: return "error";
    case nvinfer1::ILogger::Severity::kWARNING: return "warning";
    case nvinfer1::ILogger::Severity::kINFO: return "info";
    case nvinfer1::ILogger::Severity::kVERBOSE: return "verbose";
    }
    return "message";
}

} // namespace

void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder.store(finder);
}

void logPluginMessage(nvinfer1::ILogger::Severity severity, char const* message) noexcept
{
    try
    {
        nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
        nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, message);
            return;
        }
        if (severity <= nvinfer1::ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "[sparsifiner plugin] %s: %s\n", severityName(severity), message);
        }
    }
    catch (...)
    {
        // A logger that throws must not take the engine build down.
    }
}

} // namespace plugin
} // namespace sparsifiner

#define SPARSIFINER_PLUGIN_API __attribute__((visibility("default")))

extern "C" SPARSIFINER_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    sparsifiner::plugin::setPluginLoggerFinder(finder);
}

extern "C" SPARSIFINER_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static sparsifiner::plugin::TopKMaskedAttentionPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[]{&creator};
    nbCreators = 1;
    return creators;
}
