/*
 * ONNX Runtime custom-op library: sparsifiner::TopKMaskedAttention on the CPU EP.
 *
 * Load it with SessionOptions.register_custom_ops_library(path) (Python) or
 * RegisterCustomOpsLibrary_V2 (C API). The registered kernel takes precedence over the
 * model's local function of the same name. Glue only: shapes, types and attributes are
 * checked here, the work is runTopKMaskedAttentionCpu() on ONNX Runtime's intra-op
 * thread pool (KernelContext_ParallelFor). Every failure becomes an OrtStatus with a
 * one-line message; nothing throws across the C ABI.
 *
 * Built against the C/C++ API headers of ONNX Runtime >= 1.16 (ORT_API_VERSION 16, for
 * KernelComputeV2), with ORT_API_MANUAL_INIT: the library does not link libonnxruntime.
 */
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <atomic>
#include <cmath>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "topkMaskedAttentionCpu.h"
#include "topkMaskedAttentionSpec.h"

namespace
{

using sparsifiner::cpu::DataType;
using sparsifiner::cpu::TopKMaskedAttentionCpuParams;
namespace spec = sparsifiner::plugin;

//! Computes run by this library in this process (tests check that the kernel, not the
//! model's local function, ran).
std::atomic<int64_t> gComputeCalls{0};

//! The error every check throws; ComputeV2 turns it into an OrtStatus.
struct OpError : std::runtime_error
{
    using std::runtime_error::runtime_error;
};

std::string shapeString(std::vector<int64_t> const& shape)
{
    std::ostringstream os;
    os << "[";
    for (size_t i = 0; i < shape.size(); ++i)
    {
        os << (i ? ", " : "") << shape[i];
    }
    os << "]";
    return os.str();
}

DataType toDataType(ONNXTensorElementDataType t, char const* name)
{
    switch (t)
    {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return DataType::kFLOAT;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return DataType::kHALF;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return DataType::kBF16;
    default:
        throw OpError(std::string(name) + " must be float32, float16 or bfloat16 (ONNX element type "
            + std::to_string(static_cast<int>(t)) + ")");
    }
}

struct Input
{
    void const* data{nullptr};
    DataType type{DataType::kFLOAT};
    std::vector<int64_t> shape;
};

Input readInput(Ort::KernelContext const& ctx, size_t index)
{
    Ort::ConstValue value = ctx.GetInput(index);
    char const* name = spec::kINPUT_NAMES[index];
    if (value == nullptr || !value.IsTensor())
    {
        throw OpError(std::string("input ") + name + " is missing or not a tensor");
    }
    Ort::TensorTypeAndShapeInfo info = value.GetTensorTypeAndShapeInfo();
    Input in;
    in.type = toDataType(info.GetElementType(), name);
    in.shape = info.GetShape();
    in.data = value.GetTensorRawData();
    return in;
}

class TopKMaskedAttentionKernel
{
public:
    TopKMaskedAttentionKernel(OrtApi const& api, OrtKernelInfo const* info)
        : mApi(api)
    {
        Ort::ConstKernelInfo kernelInfo(info);
        mBudget = kernelInfo.GetAttribute<int64_t>(spec::kATTR_BUDGET);
        mScale = kernelInfo.GetAttribute<float>(spec::kATTR_SCALE);
        int64_t clsRows = spec::kDEFAULT_CLS_ROWS;
        OrtStatus* status = api.KernelInfoGetAttribute_int64(info, spec::kATTR_CLS_ROWS, &clsRows);
        if (status != nullptr)
        {
            api.ReleaseStatus(status); // absent: the schema's default
            clsRows = spec::kDEFAULT_CLS_ROWS;
        }
        mClsRows = clsRows;
        if (!std::isfinite(mScale))
        {
            throw OpError("attribute scale must be finite, got " + std::to_string(mScale));
        }
    }

    OrtStatusPtr ComputeV2(OrtKernelContext* context) noexcept
    {
        try
        {
            gComputeCalls.fetch_add(1);
            compute(context);
            return nullptr;
        }
        catch (OpError const& e)
        {
            return mApi.CreateStatus(ORT_INVALID_ARGUMENT, message(e.what()).c_str());
        }
        catch (Ort::Exception const& e)
        {
            return mApi.CreateStatus(e.GetOrtErrorCode(), message(e.what()).c_str());
        }
        catch (std::bad_alloc const&)
        {
            return mApi.CreateStatus(ORT_FAIL, message("out of memory").c_str());
        }
        catch (std::exception const& e)
        {
            return mApi.CreateStatus(ORT_FAIL, message(e.what()).c_str());
        }
    }

private:
    static std::string message(char const* what)
    {
        return std::string(spec::kOP_DOMAIN) + "::" + spec::kOP_NAME + ": " + what;
    }

    struct Job
    {
        TopKMaskedAttentionCpuParams const* params;
        void const* workspace;
        std::atomic<bool> failed{false};
    };

    static void runItem(void* data, size_t item)
    {
        auto* job = static_cast<Job*>(data);
        int64_t const i = static_cast<int64_t>(item);
        if (!sparsifiner::cpu::runTopKMaskedAttentionCpu(*job->params, job->workspace, i, i + 1))
        {
            job->failed.store(true);
        }
    }

    void compute(OrtKernelContext* context)
    {
        Ort::KernelContext ctx(context);
        if (ctx.GetInputCount() != static_cast<size_t>(spec::kNB_INPUTS))
        {
            throw OpError("expects 5 inputs (q, k, v, coef, basis), got " + std::to_string(ctx.GetInputCount()));
        }
        Input const q = readInput(ctx, 0);
        Input const k = readInput(ctx, 1);
        Input const v = readInput(ctx, 2);
        Input const coef = readInput(ctx, 3);
        Input const basis = readInput(ctx, 4);
        if (q.shape.size() != 4 || k.shape != q.shape || v.shape != q.shape)
        {
            throw OpError("q, k, v must all be [B, H, N, d]; got " + shapeString(q.shape) + ", "
                + shapeString(k.shape) + ", " + shapeString(v.shape));
        }
        if (k.type != q.type || v.type != q.type)
        {
            throw OpError("q, k and v must share one element type");
        }
        int64_t const b = q.shape[0];
        int64_t const h = q.shape[1];
        int64_t const n = q.shape[2];
        int64_t const d = q.shape[3];
        if (basis.shape.size() != 2 || basis.shape[1] != n)
        {
            throw OpError("basis must be [R, N=" + std::to_string(n) + "], got " + shapeString(basis.shape));
        }
        if (mClsRows < 0 || mClsRows >= n)
        {
            throw OpError("cls_rows " + std::to_string(mClsRows) + " must be in [0, " + std::to_string(n) + ")");
        }
        std::vector<int64_t> const expected{b, h, n - mClsRows, basis.shape[0]};
        if (coef.shape != expected)
        {
            throw OpError("coef must be [B, H, N-c, R] = " + shapeString(expected) + ", got " + shapeString(coef.shape));
        }
        if (mBudget < 1 || mBudget > n)
        {
            throw OpError("budget " + std::to_string(mBudget) + " is out of range: it must be between 1 and N = "
                + std::to_string(n));
        }
        if (n > (1 << 29) || d > (1 << 20) || basis.shape[0] > (1 << 20) || basis.shape[0] < 1 || b * h > (int64_t{1} << 40))
        {
            throw OpError("a dimension is out of range: " + shapeString(q.shape) + " with R = " + std::to_string(basis.shape[0]));
        }
        Ort::UnownedValue outValue = ctx.GetOutput(0, q.shape);
        if (b * h * n * d == 0)
        {
            return;
        }

        TopKMaskedAttentionCpuParams params;
        params.q = q.data;
        params.k = k.data;
        params.v = v.data;
        params.coef = coef.data;
        params.basis = basis.data;
        params.out = outValue.GetTensorMutableRawData();
        params.dataType = q.type;
        params.coefType = coef.type;
        params.basisType = basis.type;
        params.batchHeads = b * h;
        params.numTokens = static_cast<int32_t>(n);
        params.headDim = static_cast<int32_t>(d);
        params.rank = static_cast<int32_t>(basis.shape[0]);
        params.budget = static_cast<int32_t>(mBudget);
        params.clsRows = static_cast<int32_t>(mClsRows);
        params.scale = mScale;
        if (char const* reason = sparsifiner::cpu::validateTopKMaskedAttentionCpu(params))
        {
            throw OpError(reason);
        }
        std::vector<unsigned char> workspace(sparsifiner::cpu::getTopKMaskedAttentionCpuWorkspaceSize(params));
        sparsifiner::cpu::prepareTopKMaskedAttentionCpu(params, workspace.data());
        Job job;
        job.params = &params;
        job.workspace = workspace.data();
        int64_t const items = sparsifiner::cpu::getTopKMaskedAttentionCpuWorkItems(params);
        ctx.ParallelFor(&TopKMaskedAttentionKernel::runItem, static_cast<size_t>(items), 0, &job);
        if (job.failed.load())
        {
            throw std::bad_alloc();
        }
    }

    OrtApi const& mApi;
    int64_t mBudget{0};
    float mScale{1.F};
    int64_t mClsRows{spec::kDEFAULT_CLS_ROWS};
};

struct TopKMaskedAttentionOp : Ort::CustomOpBase<TopKMaskedAttentionOp, TopKMaskedAttentionKernel, true>
{
    TopKMaskedAttentionOp()
    {
        // The output has q's element type and shape. With dynamically typed inputs ONNX
        // Runtime needs this function to type the output (the C++ wrapper's variant can
        // set a shape but not copy an input's element type).
        OrtCustomOp::InferOutputShapeFn = &inferOutput;
    }

    static OrtStatusPtr ORT_API_CALL inferOutput(OrtCustomOp const* /*op*/, OrtShapeInferContext* context) noexcept
    {
        OrtApi const& api = Ort::GetApi();
        OrtTensorTypeAndShapeInfo* info = nullptr; // owned by the context
        if (OrtStatusPtr status = api.ShapeInferContext_GetInputTypeShape(context, 0, &info))
        {
            return status;
        }
        return api.ShapeInferContext_SetOutputTypeShape(context, 0, info);
    }

    OrtStatusPtr CreateKernelV2(OrtApi const& api, OrtKernelInfo const* info, void** kernel) const noexcept
    {
        try
        {
            *kernel = new TopKMaskedAttentionKernel(api, info);
            return nullptr;
        }
        catch (std::exception const& e)
        {
            std::string const msg = std::string(spec::kOP_DOMAIN) + "::" + spec::kOP_NAME + ": " + e.what();
            return api.CreateStatus(ORT_INVALID_ARGUMENT, msg.c_str());
        }
    }

    char const* GetName() const noexcept
    {
        return spec::kOP_NAME;
    }

    char const* GetExecutionProviderType() const noexcept
    {
        return "CPUExecutionProvider";
    }

    size_t GetInputTypeCount() const noexcept
    {
        return spec::kNB_INPUTS;
    }

    // Any element type: the kernel checks them and reports a clear error.
    ONNXTensorElementDataType GetInputType(size_t /*index*/) const noexcept
    {
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }

    size_t GetOutputTypeCount() const noexcept
    {
        return spec::kNB_OUTPUTS;
    }

    ONNXTensorElementDataType GetOutputType(size_t /*index*/) const noexcept
    {
        return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }
};

std::mutex gDomainMutex;
std::vector<Ort::CustomOpDomain>& domains()
{
    static std::vector<Ort::CustomOpDomain> sDomains;
    return sDomains;
}

} // namespace

extern "C"
{
//! The ONNX Runtime entry point. Each call registers the op in one session options object.
__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(
    OrtSessionOptions* options, OrtApiBase const* apiBase)
{
    OrtApi const* api = apiBase->GetApi(ORT_API_VERSION);
    if (api == nullptr)
    {
        OrtApi const* oldest = apiBase->GetApi(1);
        std::string const msg = std::string("the sparsifiner TopKMaskedAttention library needs ONNX Runtime API ")
            + std::to_string(ORT_API_VERSION) + " or newer; this runtime is " + apiBase->GetVersionString();
        return oldest->CreateStatus(ORT_FAIL, msg.c_str());
    }
    Ort::InitApi(api);
    static TopKMaskedAttentionOp const sOp;
    try
    {
        Ort::CustomOpDomain domain{spec::kOP_DOMAIN};
        domain.Add(&sOp);
        Ort::UnownedSessionOptions sessionOptions(options);
        sessionOptions.Add(domain);
        std::lock_guard<std::mutex> lock(gDomainMutex);
        domains().push_back(std::move(domain));
        return nullptr;
    }
    catch (Ort::Exception const& e)
    {
        return api->CreateStatus(e.GetOrtErrorCode(), e.what());
    }
    catch (std::exception const& e)
    {
        return api->CreateStatus(ORT_FAIL, e.what());
    }
}

//! How many times the op ran in this process.
__attribute__((visibility("default"))) int64_t SparsifinerTopKMaskedAttentionCpuCalls()
{
    return gComputeCalls.load();
}

//! The instruction set of the kernel's vector paths ("avx512" or "portable").
__attribute__((visibility("default"))) char const* SparsifinerTopKMaskedAttentionCpuIsa()
{
    return sparsifiner::cpu::getTopKMaskedAttentionCpuIsa();
}
} // extern "C"
