// Grouped GEMM over an MoE layer's local experts with cuBLAS (cublasGemmGroupedBatchedEx,
// CUDA >= 12.5): one call for every expert, reading each expert's weight where its parameter
// lives, so nothing is stacked or copied. The reference is megaomni/ops/grouped_gemm.py's loop.
//
// Rows of x are in consecutive groups; offsets (int64, on the host: cuBLAS takes the problem
// sizes there, and megatron-core's dispatcher already holds the token counts on the host) says
// where each ends. Weights are nn.Linear's (out, in), row-major. cuBLAS is column-major, so a
// row-major (r, c) matrix is read as its (c, r) transpose.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublas_v2.h>

#include <vector>

namespace {

struct Problems {
  std::vector<cublasOperation_t> ta, tb;
  std::vector<int> m, n, k, lda, ldb, ldc, size;
  std::vector<int64_t> a, b, c;  // pointers, copied to the device for cuBLAS
  void add(cublasOperation_t opa, cublasOperation_t opb, int m_, int n_, int k_, const void* a_, int lda_,
           const void* b_, int ldb_, void* c_, int ldc_) {
    ta.push_back(opa); tb.push_back(opb); m.push_back(m_); n.push_back(n_); k.push_back(k_);
    a.push_back(reinterpret_cast<int64_t>(a_)); lda.push_back(lda_);
    b.push_back(reinterpret_cast<int64_t>(b_)); ldb.push_back(ldb_);
    c.push_back(reinterpret_cast<int64_t>(c_)); ldc.push_back(ldc_); size.push_back(1);
  }
};

cudaDataType_t cuda_type(const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf, "grouped_gemm: bf16 or fp16 only");
  return t.scalar_type() == at::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
}

void run(Problems& p, const at::Tensor& like) {
  const int count = static_cast<int>(p.m.size());
  if (count == 0) return;
  std::vector<int64_t> all(p.a);
  all.insert(all.end(), p.b.begin(), p.b.end());
  all.insert(all.end(), p.c.begin(), p.c.end());
  // Pinned, so the copy is queued on the stream rather than waited for (the host allocator keeps
  // the buffer until the copy has run).
  auto pointers = torch::from_blob(all.data(), {static_cast<int64_t>(all.size())}, torch::kInt64)
                      .clone()
                      .pin_memory()
                      .to(like.device(), /*non_blocking=*/true);
  auto* device_pointers = reinterpret_cast<void**>(pointers.data_ptr<int64_t>());
  std::vector<float> alpha(count, 1.0f), beta(count, 0.0f);
  const cudaDataType_t type = cuda_type(like);
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  TORCH_CHECK(cublasSetStream(handle, at::cuda::getCurrentCUDAStream()) == CUBLAS_STATUS_SUCCESS);
  const cublasStatus_t status = cublasGemmGroupedBatchedEx(
      handle, p.ta.data(), p.tb.data(), p.m.data(), p.n.data(), p.k.data(), alpha.data(),
      const_cast<const void**>(device_pointers), type, p.lda.data(),
      const_cast<const void**>(device_pointers + count), type, p.ldb.data(), beta.data(),
      device_pointers + 2 * count, type, p.ldc.data(), count, p.size.data(), CUBLAS_COMPUTE_32F);
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "cublasGemmGroupedBatchedEx failed: ", static_cast<int>(status));
}

std::vector<int64_t> ends(const at::Tensor& offsets) {
  auto host = offsets.to(torch::kCPU, torch::kInt64).contiguous();
  return std::vector<int64_t>(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
}

}  // namespace

// y (T, out) = x_g (T_g, in) @ W_g^T, group by group.
void check(const at::Tensor& t) { TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "grouped_gemm: contiguous CUDA tensors"); }

at::Tensor forward(const at::Tensor& x, const std::vector<at::Tensor>& weights, const at::Tensor& offsets) {
  const c10::cuda::CUDAGuard guard(x.device());
  check(x);
  for (const auto& w : weights) check(w);
  const int in = x.size(1), out = weights[0].size(0);
  auto y = torch::empty({x.size(0), out}, x.options());
  Problems p;
  int64_t start = 0;
  const auto end = ends(offsets);
  for (size_t g = 0; g < weights.size(); ++g) {
    const int rows = end[g] - start;
    if (rows > 0)  // column-major: y^T (out, rows) = W (out, in) . x^T (in, rows)
      p.add(CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, weights[g].data_ptr(), in,
            static_cast<const char*>(x.data_ptr()) + start * in * x.element_size(), in, static_cast<char*>(y.data_ptr()) + start * out * y.element_size(), out);
    start = end[g];
  }
  run(p, x);
  return y;
}

// dx (T, in) = dy_g (T_g, out) @ W_g.
at::Tensor backward_input(const at::Tensor& grad, const std::vector<at::Tensor>& weights, const at::Tensor& offsets) {
  const c10::cuda::CUDAGuard guard(grad.device());
  check(grad);
  const int out = grad.size(1), in = weights[0].size(1);
  auto dx = torch::empty({grad.size(0), in}, grad.options());
  Problems p;
  int64_t start = 0;
  const auto end = ends(offsets);
  for (size_t g = 0; g < weights.size(); ++g) {
    const int rows = end[g] - start;
    if (rows > 0)  // dx^T (in, rows) = W^T (in, out) . dy^T (out, rows)
      p.add(CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, weights[g].data_ptr(), in,
            static_cast<const char*>(grad.data_ptr()) + start * out * grad.element_size(), out,
            static_cast<char*>(dx.data_ptr()) + start * in * dx.element_size(), in);
    start = end[g];
  }
  run(p, grad);
  return dx;
}

// dW_g (out, in) = dy_g^T @ x_g; an expert without tokens gets zeros.
std::vector<at::Tensor> backward_weight(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& offsets) {
  const c10::cuda::CUDAGuard guard(grad.device());
  check(grad);
  check(x);
  const int out = grad.size(1), in = x.size(1);
  const auto end = ends(offsets);
  const int groups = static_cast<int>(end.size());
  auto dw = torch::empty({groups, out, in}, grad.options());
  Problems p;
  int64_t start = 0;
  for (int g = 0; g < groups; ++g) {
    const int rows = end[g] - start;
    if (rows > 0)  // dW^T (in, out) = x^T (in, rows) . dy (rows, out)
      p.add(CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows,
            static_cast<const char*>(x.data_ptr()) + start * in * x.element_size(), in,
            static_cast<const char*>(grad.data_ptr()) + start * out * grad.element_size(), out,
            static_cast<char*>(dw.data_ptr()) + static_cast<int64_t>(g) * out * in * dw.element_size(), in);
    else
      dw[g].zero_();
    start = end[g];
  }
  run(p, grad);
  return dw.unbind(0);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "grouped x @ W_g^T");
  m.def("backward_input", &backward_input, "grouped dy @ W_g");
  m.def("backward_weight", &backward_weight, "grouped dy_g^T @ x_g");
}
