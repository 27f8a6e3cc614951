// The packer's hot loops (see megaomni/data/packing.py for the API and the Python reference that
// defines what each function returns; the tests assert identical outputs).
//
// Plain C++ with no torch or pybind11 headers, so it compiles in seconds: setup.py builds it as
// an ordinary extension module (megaomni._packing_ext, whose PyInit at the bottom makes an empty
// module, only so the file installs and is found like any other), and packing.py loads that same
// file with ctypes and calls the extern "C" functions below over plain buffers (the tensors'
// data_ptr(), allocated on the Python side). ctypes releases the GIL for each call, so a loader
// thread packs while the trainer runs.
//
// The Python wrapper converts arguments (dtypes, 1-D, contiguous) and checks scalars; the values
// are checked here, inside loops that run anyway, because a collator calls these once per packed
// bin and tensor-op checks in Python would cost more than the work (~40 us against ~2 us). A bad
// value makes a function return -1 and leave its message in megaomni_packing_error() (one per
// thread), which the wrapper raises as ValueError, as the reference does; -2 is out of memory
// (MemoryError), -3 any other C++ exception (RuntimeError).

#include <Python.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <numeric>
#include <queue>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace {

// Bump with any change of the functions' signatures or return conventions: packing.py refuses a
// build whose version differs (a stale .so then means the Python reference, not a crash).
constexpr int64_t kAbiVersion = 1;

thread_local char error_message[256];

// Sets this thread's message and returns -1, the error return of every entry point.
int64_t fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::vsnprintf(error_message, sizeof(error_message), format, args);
  va_end(args);
  return -1;
}

// Runs an entry point's body: C++ exceptions (only std::bad_alloc is expected, from the vectors)
// must not cross the extern "C" boundary into ctypes.
template <typename Body>
int64_t guarded(Body body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    std::snprintf(error_message, sizeof(error_message), "out of memory");
    return -2;
  } catch (const std::exception& e) {
    std::snprintf(error_message, sizeof(error_message), "%s", e.what());
    return -3;
  } catch (...) {
    std::snprintf(error_message, sizeof(error_message), "unknown C++ exception");
    return -3;
  }
}

// Indices begin..end-1 ordered by value descending; equal values keep index order (stable), which
// is what makes the output identical to the reference's sorted(..., key=-value).
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

// Runs fn(begin, end) over [0, n) in at most `threads` chunks of at least `grain` items, the
// calling thread taking the first (at::parallel_for's split). Serial when threads cannot start.
template <typename Fn>
void parallel_for(int64_t n, int64_t grain, int64_t threads, const Fn& fn) {
  const int64_t tasks = std::min<int64_t>(std::max<int64_t>(threads, 1), (n + grain - 1) / grain);
  if (tasks <= 1) {
    fn(0, n);
    return;
  }
  const int64_t chunk = (n + tasks - 1) / tasks;
  std::vector<std::thread> workers;
  int64_t begin = chunk;
  try {
    for (; begin < n; begin += chunk) workers.emplace_back(fn, begin, std::min(n, begin + chunk));
  } catch (const std::system_error&) {  // no more threads: this one does the rest
  }
  fn(0, std::min(n, chunk));
  if (begin < n) fn(begin, n);
  for (std::thread& worker : workers) worker.join();
}

}  // namespace

extern "C" {

int64_t megaomni_packing_abi_version() { return kAbiVersion; }

// This thread's message for the last -1/-2/-3 an entry point returned.
const char* megaomni_packing_error() { return error_message; }

// Bin id per sample into bin[n] (-1: longer than the budget). Windows of `window` consecutive
// samples are packed first-fit-decreasing on their own and their bins closed after, so a streaming
// loader can pack as samples arrive; bins are numbered in creation order across windows.
int64_t megaomni_ffd_pack(const int64_t* len, int64_t n, int64_t budget, int64_t window, int64_t* bin) {
  if (budget <= 0 || window <= 0) return fail("budget and window must be positive");
  for (int64_t i = 0; i < n; ++i) {
    if (len[i] < 0) return fail("lengths: values must be >= 0, got %" PRId64, len[i]);
  }
  return guarded([&]() -> int64_t {
    std::fill(bin, bin + n, -1);
    FirstFitTree tree(std::max<int64_t>(1, std::min(window, n)), budget);
    int64_t next_bin = 0;  // id of the first bin of the current window
    for (int64_t start = 0; start < n; start += window) {
      const int64_t end = start + std::min(window, n - start);
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
    return 0;
  });
}

// Greedy longest-processing-time into bin[n]: costliest sample first (stable), into the
// least-loaded bin (ties: lowest bin id). With capacity >= 0, only bins whose summed `len` (n
// values; unread, may be null, when capacity < 0) stay within it are candidates, and a sample
// that fits none gets -1. The heap is ordered by (load, bin), a total order, so the bin chosen
// does not depend on the heap's internals.
int64_t megaomni_balanced_assign(const double* cost, int64_t n, int64_t num_bins, const int64_t* len,
                                 int64_t capacity, int64_t* bin) {
  if (num_bins <= 0) return fail("num_bins must be positive");
  const bool capped = capacity >= 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!(std::isfinite(cost[i]) && cost[i] >= 0)) return fail("costs: values must be finite and >= 0");
    if (capped && len[i] < 0) return fail("lengths: values must be >= 0, got %" PRId64, len[i]);
  }
  return guarded([&]() -> int64_t {
    std::fill(bin, bin + n, -1);
    using Entry = std::pair<double, int64_t>;  // (load, bin)
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
    for (int64_t b = 0; b < num_bins; ++b) heap.emplace(0.0, b);
    std::vector<int64_t> used(num_bins, 0);
    std::vector<Entry> full;  // popped because the sample does not fit them; pushed back after

    for (int64_t i : order_descending(cost, 0, n)) {
      if (capped && len[i] > capacity) continue;
      while (!heap.empty() && capped && used[heap.top().second] > capacity - len[i]) {
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
    return 0;
  });
}

// cu_seqlens into cu[n + 1] (int32, what megatron-core's PackedSeqParams takes); returns the sum
// of the lengths, the size of the positions that megaomni_positions then writes.
int64_t megaomni_cu_seqlens(const int64_t* len, int64_t n, int32_t* cu) {
  int64_t total = 0;
  cu[0] = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (len[i] < 0) return fail("lengths: values must be >= 0, got %" PRId64, len[i]);
    if (len[i] > INT32_MAX - total) {  // the sum so far plus this one, unsigned: it may pass int64
      return fail("lengths sum to more than %" PRIu64 ": overflows int32 cu_seqlens",
                  static_cast<uint64_t>(total) + static_cast<uint64_t>(len[i]) - 1);
    }
    total += len[i];
    cu[i + 1] = static_cast<int32_t>(total);
  }
  return total;
}

// Position ids into pos[cu[n]] (int64, restarting at 0 for each sequence), from the cu_seqlens
// that megaomni_cu_seqlens wrote (so only those bounds are trusted).
int64_t megaomni_positions(const int32_t* cu, int64_t n, int64_t* pos) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0, end = cu[i + 1] - cu[i]; j < end; ++j) pos[cu[i] + j] = j;
  }
  return 0;
}

// Rows src[off[s] : off[s] + len[s]] for s in ord[m], concatenated into dst's first rows. A "row"
// is everything behind dim 0 (row_bytes bytes; src has `rows` of them, off and len have n values),
// so one memcpy per sample serves int64 tokens and [patches, d] bf16/fp32 media alike: the dtype
// only matters by its size. Returns the rows needed; copies only when dst_rows >= that (so
// dst_rows = -1 just checks and counts, for the caller to allocate). Samples are independent: over
// `threads` threads once there are enough of them (grain in samples, so a bin's dozen samples
// stay on one thread).
int64_t megaomni_pack_copy(const char* src, int64_t rows, int64_t row_bytes, const int64_t* off, const int64_t* len,
                           int64_t n, const int64_t* ord, int64_t m, char* dst, int64_t dst_rows, int64_t threads) {
  return guarded([&]() -> int64_t {
    // Destination row of each placed sample; only placed samples are checked (a bin's worth of
    // work, not the whole data set's), all before any byte moves.
    std::vector<int64_t> at(m + 1, 0);
    for (int64_t k = 0; k < m; ++k) {
      const int64_t s = ord[k];
      if (s < 0 || s >= n) return fail("order: sample indices must lie in [0, %" PRId64 "), got %" PRId64, n, s);
      if (off[s] < 0 || len[s] < 0) return fail("offsets and lengths must be >= 0 (sample %" PRId64 ")", s);
      if (len[s] > rows - off[s]) {
        return fail("a sample's rows run past src's %" PRId64 " rows (sample %" PRId64 ")", rows, s);
      }
      at[k + 1] = at[k] + len[s];
    }
    if (dst_rows < at[m] || row_bytes == 0) return at[m];
    parallel_for(m, 4096, threads, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t s = ord[k];
        if (len[s] > 0) std::memcpy(dst + at[k] * row_bytes, src + off[s] * row_bytes, len[s] * row_bytes);
      }
    });
    return at[m];
  });
}

}  // extern "C"

// An empty module: importing megaomni._packing_ext is how packing.py finds this file (on
// sys.path, editable installs included) before opening it with ctypes.
static struct PyModuleDef packing_module = {
    PyModuleDef_HEAD_INIT, "_packing_ext",
    "megaomni packing hot loops as extern \"C\" functions for ctypes; API and reference in megaomni/data/packing.py",
    0, nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__packing_ext() { return PyModule_Create(&packing_module); }
