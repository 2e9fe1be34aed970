/*
 * torch binding of the TopKMaskedAttention CPU kernel (inference, tests, benchmarks).
 *
 * sparsifiner/ops/cpu_binding.py compiles this file with topkMaskedAttentionCpu.cpp into a
 * plain shared library (no Python module), loads it with torch.ops.load_library and
 * registers torch.ops.sparsifiner_cpu.forward as the CPU implementation of the
 * torch.library op sparsifiner::topk_masked_attention. Torch types stay in this file; the
 * kernel only sees TopKMaskedAttentionCpuParams. Work items run on torch's intra-op
 * threads (at::parallel_for).
 */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <atomic>
#include <string>
#include <tuple>
#include <vector>

#include "topkMaskedAttentionCpu.h"
#include "topkMaskedAttentionSpec.h"

namespace
{

using sparsifiner::cpu::DataType;
using sparsifiner::cpu::TopKMaskedAttentionCpuParams;
using sparsifiner::cpu::TopKMaskedAttentionCpuStats;

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

std::tuple<at::Tensor, at::Tensor> forwardTuned(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v,
    at::Tensor const& coef, at::Tensor const& basis, int64_t budget, double scale, int64_t clsRows, int64_t rowBlock,
    int64_t keyTile, int64_t sampleMinN, int64_t l1Keys)
{
    TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
        "TopKMaskedAttention: q, k, v must all be [B, H, N, d]; got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
    TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
        "TopKMaskedAttention: q, k and v must share one dtype");
    for (at::Tensor const* t : {&q, &k, &v, &coef, &basis})
    {
        TORCH_CHECK(t->device().is_cpu(), "TopKMaskedAttention: the CPU kernel takes CPU tensors");
    }
    int64_t const b = q.size(0);
    int64_t const h = q.size(1);
    int64_t const n = q.size(2);
    int64_t const d = q.size(3);
    TORCH_CHECK(basis.dim() == 2 && basis.size(1) == n, "TopKMaskedAttention: basis must be [R, N=", n, "], got ",
        basis.sizes());
    TORCH_CHECK(clsRows >= 0 && clsRows < n, "TopKMaskedAttention: cls_rows ", clsRows, " must be in [0, ", n, ")");
    std::vector<int64_t> const expected{b, h, n - clsRows, basis.size(0)};
    TORCH_CHECK(coef.sizes() == at::IntArrayRef(expected), "TopKMaskedAttention: coef must be [B, H, N-c, R] = ",
        at::IntArrayRef(expected), ", got ", coef.sizes());
    TORCH_CHECK(budget >= 1 && budget <= n, "TopKMaskedAttention: budget ", budget,
        " is out of range: it must be between 1 and N = ", n);
    TORCH_CHECK(n <= (1 << 29) && basis.size(0) <= (1 << 20) && d <= (1 << 20),
        "TopKMaskedAttention: a dimension is out of range");

    at::Tensor const qc = q.contiguous();
    at::Tensor const kc = k.contiguous();
    at::Tensor const vc = v.contiguous();
    at::Tensor const coefC = coef.contiguous();
    at::Tensor const basisC = basis.contiguous();
    at::Tensor out = at::empty_like(qc);
    at::Tensor stats = at::zeros({4}, at::kLong);
    if (out.numel() == 0)
    {
        return {out, stats};
    }

    TopKMaskedAttentionCpuParams p;
    p.q = qc.data_ptr();
    p.k = kc.data_ptr();
    p.v = vc.data_ptr();
    p.coef = coefC.data_ptr();
    p.basis = basisC.data_ptr();
    p.out = out.data_ptr();
    p.dataType = toDataType(q.scalar_type(), "q, k, v");
    p.coefType = toDataType(coef.scalar_type(), "coef");
    p.basisType = toDataType(basis.scalar_type(), "basis");
    p.batchHeads = b * h;
    p.numTokens = static_cast<int32_t>(n);
    p.headDim = static_cast<int32_t>(d);
    p.rank = static_cast<int32_t>(basis.size(0));
    p.budget = static_cast<int32_t>(budget);
    p.clsRows = static_cast<int32_t>(clsRows);
    p.scale = static_cast<float>(scale);
    p.rowBlock = static_cast<int32_t>(rowBlock);
    p.keyTile = static_cast<int32_t>(keyTile);
    p.sampleMinN = static_cast<int32_t>(sampleMinN);
    p.l1Keys = static_cast<int32_t>(l1Keys);
    char const* reason = sparsifiner::cpu::validateTopKMaskedAttentionCpu(p);
    TORCH_CHECK(reason == nullptr, "TopKMaskedAttention: ", reason == nullptr ? "" : reason);

    std::vector<unsigned char> workspace(sparsifiner::cpu::getTopKMaskedAttentionCpuWorkspaceSize(p));
    sparsifiner::cpu::prepareTopKMaskedAttentionCpu(p, workspace.data());
    int64_t const items = sparsifiner::cpu::getTopKMaskedAttentionCpuWorkItems(p);
    std::atomic<bool> failed{false};
    std::atomic<int64_t> counters[4] = {0, 0, 0, 0};
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
        TopKMaskedAttentionCpuStats local;
        if (!sparsifiner::cpu::runTopKMaskedAttentionCpu(p, workspace.data(), begin, end, &local))
        {
            failed.store(true);
        }
        counters[0] += local.rows;
        counters[1] += local.sampledRows;
        counters[2] += local.fallbackRows;
        counters[3] += local.candidates;
    });
    TORCH_CHECK(!failed.load(), "TopKMaskedAttention: out of memory for the kernel's scratch buffers");
    auto* s = stats.data_ptr<int64_t>();
    for (int i = 0; i < 4; ++i)
    {
        s[i] = counters[i].load();
    }
    return {out, stats};
}

at::Tensor forward(at::Tensor const& q, at::Tensor const& k, at::Tensor const& v, at::Tensor const& coef,
    at::Tensor const& basis, int64_t budget, double scale, int64_t clsRows)
{
    return std::get<0>(forwardTuned(q, k, v, coef, basis, budget, scale, clsRows, 0, 0, 0, 0));
}

std::string isa()
{
    return sparsifiner::cpu::getTopKMaskedAttentionCpuIsa();
}

} // namespace

TORCH_LIBRARY(sparsifiner_cpu, m)
{
    m.def("forward(Tensor q, Tensor k, Tensor v, Tensor coef, Tensor basis, int budget, float scale, int cls_rows) "
          "-> Tensor");
    m.def("forward_tuned(Tensor q, Tensor k, Tensor v, Tensor coef, Tensor basis, int budget, float scale, "
          "int cls_rows, int row_block, int key_tile, int sample_min_n, int l1_keys) -> (Tensor, Tensor)");
    m.def("isa() -> str", &isa);
}

TORCH_LIBRARY_IMPL(sparsifiner_cpu, CPU, m)
{
    m.impl("forward", &forward);
    m.impl("forward_tuned", &forwardTuned);
}
