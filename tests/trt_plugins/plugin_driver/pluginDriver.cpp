/*
 * A TensorRT-free driver of the TopKMaskedAttention plugin library, as C entry points for
 * ctypes (tests/trt_plugins/plugin_driver.py).
 *
 * It does what TensorRT does with a plugin library, without TensorRT: dlopen() it, hand it
 * a logger through setLoggerFinder(), take the creator from getCreators(), create plugins
 * at the build and runtime phases, ask for output types and shapes (through a mock
 * IExprBuilder), format combinations, configuration and workspace, serialise and
 * re-create, and enqueue on buffers the caller owns (host memory for the plugin built on
 * the CPU emulator, CUDA memory for the real one on a GPU).
 */
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <sstream>
#include <string>
#include <vector>

namespace
{

using namespace nvinfer1;

class RecordingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            mLast = msg;
            mAll += std::string(msg) + "\n";
        }
    }
    std::string mLast;
    std::string mAll;
};

class Finder : public ILoggerFinder
{
public:
    ILogger* findLogger() override
    {
        return &mLogger;
    }
    RecordingLogger mLogger;
};

// IDimensionExpr and IExprBuilder forward to TensorRT's implementation classes (apiv);
// these stand-ins play them: a dimension is a known constant or unknown (-1).
class MockDimImpl : public apiv::VDimensionExpr
{
public:
    explicit MockDimImpl(int64_t value)
        : mValue(value)
    {
    }
    bool isConstant() const override
    {
        return mValue >= 0;
    }
    int64_t getConstantValue() const override
    {
        return mValue;
    }
    bool isSizeTensor() const override
    {
        return false;
    }
    int64_t mValue;
};

class MockDim : public IDimensionExpr
{
public:
    explicit MockDim(int64_t value)
        : mMock(value)
    {
        mImpl = &mMock;
    }
    ~MockDim() noexcept override = default;

private:
    MockDimImpl mMock;
};

class MockBuilderImpl : public apiv::VExprBuilder
{
public:
    IDimensionExpr const* constant(int64_t value) override
    {
        return &mDims.emplace_back(value);
    }
    IDimensionExpr const* operation(DimensionOperation, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return &mDims.emplace_back(-1);
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override
    {
        return &mDims.emplace_back(-1);
    }
    std::deque<MockDim> mDims;
};

class MockBuilder : public IExprBuilder
{
public:
    MockBuilder()
    {
        mImpl = &mMock;
    }
    ~MockBuilder() noexcept override = default;
    MockBuilderImpl mMock;
};

// One logger for the process: the library keeps the finder it was given.
Finder gFinder;

struct Driver
{
    void* library{nullptr};
    IPluginCreatorV3One* creator{nullptr};
    int32_t nbCreators{0};
};

int32_t writeText(std::string const& text, char* buffer, int32_t size)
{
    if (buffer != nullptr && size > 0)
    {
        std::snprintf(buffer, static_cast<size_t>(size), "%s", text.c_str());
    }
    return static_cast<int32_t>(text.size());
}

Dims makeDims(int32_t rank, int64_t const* values)
{
    Dims d{};
    d.nbDims = rank;
    for (int32_t i = 0; i < rank; ++i)
    {
        d.d[i] = values[i];
    }
    return d;
}

template <typename T>
T* capability(void* plugin, PluginCapabilityType type)
{
    return static_cast<T*>(static_cast<IPluginV3*>(plugin)->getCapabilityInterface(type));
}

std::string describeFields(PluginFieldCollection const* fc)
{
    std::ostringstream s;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        s << f.name << "\t" << static_cast<int32_t>(f.type) << "\t" << f.length << "\t";
        if (f.data == nullptr)
        {
            s << "-";
        }
        else if (f.type == PluginFieldType::kINT32)
        {
            s << *static_cast<int32_t const*>(f.data);
        }
        else if (f.type == PluginFieldType::kFLOAT32)
        {
            s.precision(9);
            s << *static_cast<float const*>(f.data);
        }
        s << "\n";
    }
    return s.str();
}

} // namespace

//! Opens the plugin library as TensorRT does; nullptr (and the reason in err) on failure.
extern "C" void* spd_open(char const* path, char* err, int32_t errSize)
{
    auto* driver = new Driver();
    driver->library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    using SetFinder = void (*)(ILoggerFinder*);
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto setFinder = driver->library ? reinterpret_cast<SetFinder>(dlsym(driver->library, "setLoggerFinder")) : nullptr;
    auto getCreators = driver->library ? reinterpret_cast<GetCreators>(dlsym(driver->library, "getCreators")) : nullptr;
    if (setFinder == nullptr || getCreators == nullptr)
    {
        writeText(driver->library ? "getCreators or setLoggerFinder is not exported" : dlerror(), err, errSize);
        delete driver;
        return nullptr;
    }
    setFinder(&gFinder);
    IPluginCreatorInterface* const* creators = getCreators(driver->nbCreators);
    for (int32_t i = 0; i < driver->nbCreators; ++i)
    {
        if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0)
        {
            driver->creator = static_cast<IPluginCreatorV3One*>(creators[i]);
        }
    }
    if (driver->creator == nullptr)
    {
        writeText("the library has no IPluginCreatorV3One", err, errSize);
        delete driver;
        return nullptr;
    }
    return driver;
}

//! "name\tversion\tnamespace\tnbCreators\n" then one "field\ttype\tlength\t-" line per field.
extern "C" int32_t spd_creator_info(void* handle, char* buffer, int32_t size)
{
    auto* d = static_cast<Driver*>(handle);
    std::ostringstream s;
    s << d->creator->getPluginName() << "\t" << d->creator->getPluginVersion() << "\t"
      << d->creator->getPluginNamespace() << "\t" << d->nbCreators << "\n"
      << describeFields(d->creator->getFieldNames());
    return writeText(s.str(), buffer, size);
}

//! The last error or warning the library logged (then forgotten).
extern "C" int32_t spd_last_error(char* buffer, int32_t size)
{
    RecordingLogger& logger = gFinder.mLogger;
    int32_t const n = writeText(logger.mLast, buffer, size);
    logger.mLast.clear();
    return n;
}

extern "C" void* spd_create(void* handle, char const* layer, int32_t phase, int32_t nbFields, char const* const* names,
    int32_t const* types, void const* const* data, int32_t const* lengths)
{
    std::vector<PluginField> fields;
    for (int32_t i = 0; i < nbFields; ++i)
    {
        fields.emplace_back(names[i], data[i], static_cast<PluginFieldType>(types[i]), lengths[i]);
    }
    PluginFieldCollection fc{nbFields, fields.data()};
    return static_cast<Driver*>(handle)->creator->createPlugin(layer, &fc, static_cast<TensorRTPhase>(phase));
}

extern "C" void spd_destroy(void* plugin)
{
    delete static_cast<IPluginV3*>(plugin);
}

//! "name\tversion\tnamespace\tnbOutputs\tmetadata\n" then the fields getFieldsToSerialize() gives.
extern "C" int32_t spd_plugin_info(void* plugin, char* buffer, int32_t size)
{
    auto* core = capability<IPluginV3OneCore>(plugin, PluginCapabilityType::kCORE);
    auto* build = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
    auto* runtime = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    std::ostringstream s;
    s << core->getPluginName() << "\t" << core->getPluginVersion() << "\t" << core->getPluginNamespace() << "\t"
      << build->getNbOutputs() << "\t" << (build->getMetadataString() ? build->getMetadataString() : "") << "\n"
      << describeFields(runtime->getFieldsToSerialize());
    return writeText(s.str(), buffer, size);
}

//! mode 0: clone(); mode 1: getFieldsToSerialize() -> createPlugin(kRUNTIME) -> attachToContext().
extern "C" void* spd_roundtrip(void* handle, void* plugin, int32_t mode)
{
    if (mode == 0)
    {
        return static_cast<IPluginV3*>(plugin)->clone();
    }
    auto* runtime = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    PluginFieldCollection const* fc = runtime->getFieldsToSerialize();
    IPluginV3* created
        = static_cast<Driver*>(handle)->creator->createPlugin("roundtrip", fc, TensorRTPhase::kRUNTIME);
    if (created == nullptr)
    {
        return nullptr;
    }
    IPluginV3* attached = capability<IPluginV3OneRuntime>(created, PluginCapabilityType::kRUNTIME)->attachToContext(nullptr);
    delete created;
    return attached;
}

extern "C" int32_t spd_output_type(void* plugin, int32_t const* inTypes, int32_t nbInputs, int32_t* outType)
{
    std::vector<DataType> in;
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        in.push_back(static_cast<DataType>(inTypes[i]));
    }
    DataType out{DataType::kINT8};
    int32_t const status
        = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD)->getOutputDataTypes(&out, 1, in.data(), nbInputs);
    *outType = static_cast<int32_t>(out);
    return status;
}

//! dims: nbInputs x 8 values, -1 for a dimension not known at build time.
extern "C" int32_t spd_output_shape(
    void* plugin, int32_t nbInputs, int32_t const* ranks, int64_t const* dims, int32_t* outRank, int64_t* outDims)
{
    MockBuilder builder;
    std::vector<DimsExprs> in(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        in[i].nbDims = ranks[i];
        for (int32_t j = 0; j < ranks[i]; ++j)
        {
            in[i].d[j] = &builder.mMock.mDims.emplace_back(dims[i * 8 + j]);
        }
    }
    DimsExprs out{};
    int32_t const status = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD)
                               ->getOutputShapes(in.data(), nbInputs, nullptr, 0, &out, 1, builder);
    *outRank = status == 0 ? out.nbDims : 0;
    for (int32_t j = 0; status == 0 && j < out.nbDims; ++j)
    {
        outDims[j] = out.d[j]->isConstant() ? out.d[j]->getConstantValue() : -1;
    }
    return status;
}

//! 1 when the plugin accepts the types/formats at positions 0..pos (nbInputs inputs + 1 output).
extern "C" int32_t spd_supports(
    void* plugin, int32_t pos, int32_t const* types, int32_t const* formats, int32_t nbInputs, int32_t nbOutputs)
{
    std::vector<DynamicPluginTensorDesc> io(nbInputs + nbOutputs);
    for (size_t i = 0; i < io.size(); ++i)
    {
        io[i].desc.type = static_cast<DataType>(types[i]);
        io[i].desc.format = static_cast<TensorFormat>(formats[i]);
    }
    auto* build = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
    return build->supportsFormatCombination(pos, io.data(), nbInputs, nbOutputs) ? 1 : 0;
}

//! configurePlugin with dims (-1 dynamic) and min/max ranges; the workspace for them on success.
extern "C" int32_t spd_configure(void* plugin, int32_t nbInputs, int32_t const* ranks, int64_t const* dims,
    int64_t const* minDims, int64_t const* maxDims, int32_t const* types, int32_t outType, uint64_t* workspace)
{
    std::vector<DynamicPluginTensorDesc> in(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        in[i].desc.dims = makeDims(ranks[i], dims + i * 8);
        in[i].desc.type = static_cast<DataType>(types[i]);
        in[i].desc.format = TensorFormat::kLINEAR;
        in[i].min = makeDims(ranks[i], minDims + i * 8);
        in[i].max = makeDims(ranks[i], maxDims + i * 8);
        in[i].opt = in[i].max;
    }
    DynamicPluginTensorDesc out = in[0];
    out.desc.type = static_cast<DataType>(outType);
    auto* build = capability<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
    int32_t const status = build->configurePlugin(in.data(), nbInputs, &out, 1);
    *workspace = status == 0 ? build->getWorkspaceSize(in.data(), nbInputs, &out, 1) : 0;
    return status;
}

//! onShapeChange, then enqueue on the given buffers and stream (an int status; 0 is success).
extern "C" int32_t spd_enqueue(void* plugin, int32_t nbInputs, int32_t const* ranks, int64_t const* dims,
    int32_t const* types, void const* const* inputs, void* output, void* workspace, void* stream)
{
    std::vector<PluginTensorDesc> in(nbInputs);
    for (int32_t i = 0; i < nbInputs; ++i)
    {
        in[i].dims = makeDims(ranks[i], dims + i * 8);
        in[i].type = static_cast<DataType>(types[i]);
        in[i].format = TensorFormat::kLINEAR;
        in[i].scale = 1.F;
    }
    PluginTensorDesc out = in[0];
    auto* runtime = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    if (int32_t status = runtime->onShapeChange(in.data(), nbInputs, &out, 1))
    {
        return status;
    }
    void* outputs[1]{output};
    return runtime->enqueue(in.data(), &out, inputs, outputs, workspace, static_cast<cudaStream_t>(stream));
}

extern "C" void spd_close(void* handle)
{
    auto* d = static_cast<Driver*>(handle);
    // The library stays loaded: plugins created from it may outlive the driver in a test.
    delete d;
}
