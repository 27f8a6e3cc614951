// The packer's hot loops (see megaomni/data/packing.py for the API and the Python reference that
// defines what each function returns; the tests assert identical outputs).
//
// The Python wrapper converts arguments (dtypes, 1-D) and checks scalars; the values are checked
// here, inside loops that run anyway, because a collator calls these once per packed bin and
// tensor-op checks in Python would cost more than the work (~40 us against ~2 us). Bad values
// raise ValueError (TORCH_CHECK_VALUE), as the reference does. Every entry point releases the GIL
// (see the bindings) so a loader thread packs while the trainer runs.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <queue>
#include <utility>
#include <vector>

namespace {

void check_1d(const torch::Tensor& t, torch::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(t.dim() == 1, name, " must be 1-D, got ", t.dim(), "-D");
}

// Indices 0..n-1 ordered by value descending; equal values keep index order (stable), which is
// what makes the output identical to the reference's sorted(..., key=-value).
template <typename T>
std::vector<int64_t> order_descending(const T* values, int64_t begin, int64_t end) {
  std::vector<int64_t> order(end - begin);
  std::iota(order.begin(), order.end(), begin);
  std::stable_sort(order.begin(), order.end(), [values](int64_t a, int64_t b) { return values[a] > values[b]; });
  return order;
}

// First fit in O(log bins) instead of scanning every open bin: a max-tree over the remaining room
// of the window's bins. Bins not yet created hold the whole budget, so "leftmost leaf with enough
// room" is either an open bin or, when none fits, exactly the next bin to open (first fit never
// skips a bin, so bins fill the leaves left to right). A window of w samples opens at most w bins.
class FirstFitTree {
 public:
  FirstFitTree(int64_t leaves, int64_t budget) : budget_(budget) {
    while (size_ < leaves) size_ *= 2;
    room_.assign(2 * size_, budget);
  }
  void reset() { std::fill(room_.begin(), room_.end(), budget_); }
  // Leftmost leaf with room >= length (one exists: length <= budget and a leaf is still empty).
  int64_t first_fit(int64_t length) const {
    int64_t node = 1;
    while (node < size_) node = room_[2 * node] >= length ? 2 * node : 2 * node + 1;
    return node - size_;
  }
  void take(int64_t leaf, int64_t length) {
    int64_t node = leaf + size_;
    room_[node] -= length;
    for (node /= 2; node >= 1; node /= 2) room_[node] = std::max(room_[2 * node], room_[2 * node + 1]);
  }

 private:
  int64_t budget_;
  int64_t size_ = 1;
  std::vector<int64_t> room_;
};

}  // namespace

// Bin id per sample (-1: longer than the budget). Windows of `window` consecutive samples are
// packed first-fit-decreasing on their own and their bins closed after, so a streaming loader
// can pack as samples arrive; bins are numbered in creation order across windows.
torch::Tensor ffd_pack(torch::Tensor lengths, int64_t budget, int64_t window) {
  check_1d(lengths, torch::kInt64, "lengths");
  TORCH_CHECK(budget > 0 && window > 0, "budget and window must be positive");
  lengths = lengths.contiguous();
  const int64_t n = lengths.size(0);
  const int64_t* len = lengths.data_ptr<int64_t>();
  torch::Tensor bins = torch::full({n}, -1, lengths.options());
  int64_t* bin = bins.data_ptr<int64_t>();

  FirstFitTree tree(std::max<int64_t>(1, std::min(window, n)), budget);
  int64_t next_bin = 0;  // id of the first bin of the current window
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK_VALUE(len[i] >= 0, "lengths: values must be >= 0, got ", len[i]);
  for (int64_t start = 0; start < n; start += window) {
    const int64_t end = std::min(n, start + window);
    int64_t opened = 0;
    for (int64_t i : order_descending(len, start, end)) {
      if (len[i] > budget) continue;  // stays -1: the caller skips or truncates it
      const int64_t leaf = tree.first_fit(len[i]);
      tree.take(leaf, len[i]);
      opened = std::max(opened, leaf + 1);
      bin[i] = next_bin + leaf;
    }
    next_bin += opened;
    tree.reset();
  }
  return bins;
}

// Greedy longest-processing-time: costliest sample first (stable), into the least-loaded bin
// (ties: lowest bin id). With capacity >= 0, only bins whose summed `lengths` stay within it are
// candidates, and a sample that fits none gets -1. The heap is ordered by (load, bin), a total
// order, so the bin chosen does not depend on the heap's internals.
torch::Tensor balanced_assign(torch::Tensor costs, int64_t num_bins, torch::Tensor lengths, int64_t capacity) {
  check_1d(costs, torch::kFloat64, "costs");
  check_1d(lengths, torch::kInt64, "lengths");
  TORCH_CHECK(num_bins > 0, "num_bins must be positive");
  TORCH_CHECK(capacity < 0 || lengths.size(0) == costs.size(0), "lengths and costs differ in size");
  costs = costs.contiguous();
  lengths = lengths.contiguous();
  const int64_t n = costs.size(0);
  const double* cost = costs.data_ptr<double>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(cost[i]) && cost[i] >= 0, "costs: values must be finite and >= 0");
    TORCH_CHECK_VALUE(capacity < 0 || len[i] >= 0, "lengths: values must be >= 0, got ", len[i]);
  }
  torch::Tensor bins = torch::full({n}, -1, torch::dtype(torch::kInt64));
  int64_t* bin = bins.data_ptr<int64_t>();

  using Entry = std::pair<double, int64_t>;  // (load, bin)
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  for (int64_t b = 0; b < num_bins; ++b) heap.emplace(0.0, b);
  std::vector<int64_t> used(num_bins, 0);
  std::vector<Entry> full;  // popped because the sample does not fit them; pushed back after

  for (int64_t i : order_descending(cost, 0, n)) {
    const bool capped = capacity >= 0;
    if (capped && len[i] > capacity) continue;
    while (!heap.empty() && capped && used[heap.top().second] + len[i] > capacity) {
      full.push_back(heap.top());
      heap.pop();
    }
    if (!heap.empty()) {
      Entry e = heap.top();
      heap.pop();
      bin[i] = e.second;
      used[e.second] += capped ? len[i] : 0;
      heap.emplace(e.first + cost[i], e.second);
    }
    for (const Entry& e : full) heap.push(e);
    full.clear();
  }
  return bins;
}

// cu_seqlens (int32 [n+1], what megatron-core's PackedSeqParams takes) and position ids
// (int64 [sum], restarting at 0 for each sequence) in one pass over the lengths.
std::vector<torch::Tensor> cu_seqlens_and_positions(torch::Tensor lengths) {
  check_1d(lengths, torch::kInt64, "lengths");
  lengths = lengths.contiguous();
  const int64_t n = lengths.size(0);
  const int64_t* len = lengths.data_ptr<int64_t>();
  torch::Tensor cu = torch::empty({n + 1}, torch::dtype(torch::kInt32));
  int32_t* c = cu.data_ptr<int32_t>();
  int64_t total = 0;
  c[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(len[i] >= 0, "lengths: values must be >= 0, got ", len[i]);
    total += len[i];
    TORCH_CHECK_VALUE(total <= INT32_MAX, "lengths sum to more than ", total - 1, ": overflows int32 cu_seqlens");
    c[i + 1] = static_cast<int32_t>(total);
  }
  torch::Tensor positions = torch::empty({total}, torch::dtype(torch::kInt64));
  int64_t* p = positions.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < len[i]; ++j) p[c[i] + j] = j;
  }
  return {cu, positions};
}

// Rows src[offsets[s] : offsets[s] + lengths[s]] for s in order, concatenated into out's first rows
// (allocated when not given). A "row" is everything behind dim 0, so one memcpy per sample serves
// int64 tokens and [patches, d] bf16/fp32 media alike: the dtype only matters by its size.
torch::Tensor pack_copy(torch::Tensor src, torch::Tensor offsets, torch::Tensor lengths, torch::Tensor order,
                        c10::optional<torch::Tensor> out) {
  check_1d(offsets, torch::kInt64, "offsets");
  check_1d(lengths, torch::kInt64, "lengths");
  check_1d(order, torch::kInt64, "order");
  TORCH_CHECK_VALUE(src.device().is_cpu() && src.dim() >= 1, "src: expected a CPU tensor with at least one dim");
  TORCH_CHECK_VALUE(offsets.size(0) == lengths.size(0), "offsets has ", offsets.size(0), " values, lengths ",
                    lengths.size(0));
  src = src.contiguous();
  offsets = offsets.contiguous();
  lengths = lengths.contiguous();
  order = order.contiguous();
  const int64_t m = order.size(0), n = offsets.size(0), rows = src.size(0);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* len = lengths.data_ptr<int64_t>();
  const int64_t* ord = order.data_ptr<int64_t>();

  // Destination row of each placed sample; only placed samples are checked (a bin's worth of
  // work, not the whole data set's), all before any byte moves.
  std::vector<int64_t> dst(m + 1, 0);
  for (int64_t k = 0; k < m; ++k) {
    const int64_t s = ord[k];
    TORCH_CHECK_VALUE(s >= 0 && s < n, "order: sample indices must lie in [0, ", n, "), got ", s);
    TORCH_CHECK_VALUE(off[s] >= 0 && len[s] >= 0, "offsets and lengths must be >= 0 (sample ", s, ")");
    TORCH_CHECK_VALUE(off[s] + len[s] <= rows, "a sample's rows run past src's ", rows, " rows (sample ", s, ")");
    dst[k + 1] = dst[k] + len[s];
  }
  std::vector<int64_t> shape = src.sizes().vec();
  shape[0] = dst[m];
  torch::Tensor packed = out.has_value() ? *out : torch::empty(shape, src.options());
  TORCH_CHECK_VALUE(packed.device().is_cpu() && packed.is_contiguous() && packed.scalar_type() == src.scalar_type() &&
                        packed.dim() == src.dim() && packed.sizes().slice(1) == src.sizes().slice(1) &&
                        packed.size(0) >= dst[m],
                    "out: needs a contiguous CPU ", src.scalar_type(), " tensor of shape ", c10::IntArrayRef(shape),
                    " or more rows, got ", packed.scalar_type(), " ", packed.sizes());

  const int64_t row_bytes = c10::multiply_integers(src.sizes().slice(1)) * src.element_size();
  const char* from = static_cast<const char*>(src.data_ptr());
  char* to = static_cast<char*>(packed.data_ptr());
  // Samples are independent; split them over threads once there is enough to copy (grain in
  // samples, so a bin's dozen samples stay on one thread).
  at::parallel_for(0, m, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      std::memcpy(to + dst[k] * row_bytes, from + off[ord[k]] * row_bytes, len[ord[k]] * row_bytes);
    }
  });
  return packed;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "megaomni packing hot loops; API and reference in megaomni/data/packing.py";
  auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("ffd_pack", &ffd_pack, nogil);
  m.def("balanced_assign", &balanced_assign, nogil);
  m.def("cu_seqlens_and_positions", &cu_seqlens_and_positions, nogil);
  m.def("pack_copy", &pack_copy, nogil);
}
