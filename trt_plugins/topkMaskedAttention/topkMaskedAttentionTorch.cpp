/*
 * torch binding of the TopKMaskedAttention CUDA kernels (tests, eager use, benchmarks).
 *
 * sparsifiner/ops/kernel.py builds this file with the .cu files through
 * torch.utils.cpp_extension and registers `forward` as the CUDA implementation of the
 * torch.library op sparsifiner::topk_masked_attention. Torch types stay in this file;
 * the kernels only see TopKMaskedAttentionParams.
 */
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "topkMaskedAttentionKernel.h"
#include "topkMaskedAttentionSpec.h"

namespace
{

using sparsifiner::plugin::AttentionAlgo;
using sparsifiner::plugin::DataType;
using sparsifiner::plugin::TopKMaskedAttentionParams;

DataType toDataType(at::ScalarType t, char const* name)
{
    switch (t)
    {
    case at::kFloat: return DataType::kFLOAT;
    case at::kHalf: return DataType::kHALF;
    case at::kBFloat16: return DataType::kBF16;
    default: TORCH_CHECK(false, "TopKMaskedAttention: ", name, " must be float32, float16 or bfloat16, got ", t);
    }
    return DataType::kFLOAT;
}

//! Contiguous and 16-byte aligned (a contiguous slice of a bigger tensor may not be).
at::Tensor prepared(at::Tensor const& t)
{
    at::Tensor c = t.contiguous();
    if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0)
    {
        c = c.clone();
    }
    return c;
}

struct Prepared
{
    at::Tensor q, k, v, coef, basis;
    TopKMaskedAttentionParams params;
};

Prepared prepare(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& coef,
    at::Tensor const& basis, int64_t budget, double scale, int64_t clsRows, int64_t algo)
{
    TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
        "TopKMaskedAttention: q, k, v must all be [B, H, N, d]; got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
    TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
        "TopKMaskedAttention: q, k and v must share one dtype");
    for (at::Tensor const* t : {&q, &k, &v, &coef, &basis})
    {
        TORCH_CHECK(t->is_cuda() && t->device() == q.device(),
            "TopKMaskedAttention: all inputs must be CUDA tensors on one device");
    }
    int64_t const n = q.size(2);
    TORCH_CHECK(basis.dim() == 2 && basis.size(1) == n, "TopKMaskedAttention: basis must be [R, N=", n, "], got ",
        basis.sizes());
    TORCH_CHECK(clsRows >= 0 && clsRows < n, "TopKMaskedAttention: cls_rows ", clsRows, " must be in [0, ", n, ")");
    TORCH_CHECK(coef.dim() == 4 && coef.size(0) == q.size(0) && coef.size(1) == q.size(1)
            && coef.size(2) == n - clsRows && coef.size(3) == basis.size(0),
        "TopKMaskedAttention: coef must be [B, H, N-c, R] = [", q.size(0), ", ", q.size(1), ", ", n - clsRows, ", ",
        basis.size(0), "], got ", coef.sizes());

    Prepared r{prepared(q), prepared(k), prepared(v), coef.contiguous(), basis.contiguous(), {}};
    TopKMaskedAttentionParams& p = r.params;
    p.q = r.q.data_ptr();
    p.k = r.k.data_ptr();
    p.v = r.v.data_ptr();
    p.coef = r.coef.data_ptr();
    p.basis = r.basis.data_ptr();
    p.dataType = toDataType(q.scalar_type(), "q");
    p.coefType = toDataType(coef.scalar_type(), "coef");
    p.basisType = toDataType(basis.scalar_type(), "basis");
    p.batchHeads = q.size(0) * q.size(1);
    p.numTokens = static_cast<int32_t>(n);
    p.headDim = static_cast<int32_t>(q.size(3));
    p.rank = static_cast<int32_t>(basis.size(0));
    p.budget = static_cast<int32_t>(budget);
    p.clsRows = static_cast<int32_t>(clsRows);
    p.scale = static_cast<float>(scale);
    p.algo = static_cast<AttentionAlgo>(algo);
    return r;
}

int32_t maxSharedBytes(at::Tensor const& q)
{
    int32_t bytes{0};
    cudaError_t const status
        = cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, static_cast<int>(q.get_device()));
    TORCH_CHECK(status == cudaSuccess, "TopKMaskedAttention: ", cudaGetErrorString(status));
    return bytes;
}

void launch(Prepared& r, at::Tensor& out)
{
    c10::cuda::CUDAGuard const guard(r.q.device());
    if (out.numel() == 0)
    {
        return;
    }
    TopKMaskedAttentionParams& p = r.params;
    p.out = out.data_ptr();
    size_t const wsBytes = sparsifiner::plugin::getTopKMaskedAttentionWorkspaceSize(p);
    at::Tensor workspace = at::empty({static_cast<int64_t>(wsBytes)}, r.q.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
    p.workspaceBytes = wsBytes;
    char const* reason = nullptr;
    sparsifiner::plugin::resolveTopKMaskedAttentionAlgo(p, maxSharedBytes(r.q), &reason);
    TORCH_CHECK(reason == nullptr, "TopKMaskedAttention: ", reason);
    cudaError_t const status
        = sparsifiner::plugin::launchTopKMaskedAttention(p, c10::cuda::getCurrentCUDAStream(r.q.get_device()).stream());
    TORCH_CHECK(status == cudaSuccess, "TopKMaskedAttention launch failed: ", cudaGetErrorString(status));
}

at::Tensor forward(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& coef,
    at::Tensor const& basis, int64_t budget, double scale, int64_t clsRows, int64_t algo)
{
    Prepared r = prepare(q, k, v, coef, basis, budget, scale, clsRows, algo); // checks the device first
    at::Tensor out = at::empty_like(r.q);
    launch(r, out);
    return out;
}

//! forward() into a given output (contiguous, 16-byte aligned, q's shape and dtype): the
//! GPU tests poison it with NaN first; the benchmark avoids an allocation per call.
at::Tensor forwardInto(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& coef,
    at::Tensor const& basis, int64_t budget, double scale, int64_t clsRows, int64_t algo, at::Tensor out)
{
    Prepared r = prepare(q, k, v, coef, basis, budget, scale, clsRows, algo);
    TORCH_CHECK(out.is_cuda() && out.device() == q.device() && out.scalar_type() == q.scalar_type()
            && out.sizes() == q.sizes() && out.is_contiguous() && reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0,
        "TopKMaskedAttention: out must be a contiguous, 16-byte aligned CUDA tensor shaped and typed like q");
    launch(r, out);
    return out;
}

//! The kernel forward() would run (1 tiled, 2 row-wise); raises when nothing fits.
int64_t resolveAlgo(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& coef,
    at::Tensor const& basis, int64_t budget, double scale, int64_t clsRows, int64_t algo)
{
    Prepared r = prepare(q, k, v, coef, basis, budget, scale, clsRows, algo);
    TopKMaskedAttentionParams& p = r.params;
    p.out = r.q.data_ptr(); // validation only checks presence and alignment
    at::Tensor workspace = at::empty(
        {static_cast<int64_t>(sparsifiner::plugin::getTopKMaskedAttentionWorkspaceSize(p))}, r.q.options().dtype(at::kByte));
    p.workspace = workspace.data_ptr();
    p.workspaceBytes = static_cast<size_t>(workspace.numel());
    char const* reason = nullptr;
    AttentionAlgo const chosen = sparsifiner::plugin::resolveTopKMaskedAttentionAlgo(p, maxSharedBytes(q), &reason);
    TORCH_CHECK(reason == nullptr, "TopKMaskedAttention: ", reason);
    return static_cast<int64_t>(chosen);
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    namespace plugin = sparsifiner::plugin;
    m.doc() = "CUDA kernels of the sparsifiner::TopKMaskedAttention op";
    m.def("forward", &forward, "TopKMaskedAttention forward (q, k, v, coef, basis, budget, scale, cls_rows, algo)");
    m.def("forward_into", &forwardInto, "forward() writing into `out` (last argument)");
    m.def("resolve_algo", &resolveAlgo, "the kernel forward would run: 1 tiled, 2 row-wise");
    m.attr("OP_NAME") = plugin::kOP_NAME;
    m.attr("OP_DOMAIN") = plugin::kOP_DOMAIN;
    m.attr("OP_VERSION") = plugin::kOP_VERSION;
    m.attr("TORCH_OP_NAMESPACE") = plugin::kTORCH_OP_NAMESPACE;
    m.attr("TORCH_OP_NAME") = plugin::kTORCH_OP_NAME;
    m.attr("MAX_TOKENS") = plugin::kMAX_TOKENS;
}
