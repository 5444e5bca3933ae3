// The head's weights (see HeadLoss.hpp): the output matrix read through a
// read-only mapping of the model file, the final norm, and the matrix's mean row.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <vector>

#include "HeadLoss.hpp"
#include "gguf.h"

#ifndef _WIN32
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace mobillm {

HeadWeights::~HeadWeights() {
  if (work != nullptr && !borrowed) ggml_gallocr_free(work);
  if (buffer != nullptr) ggml_backend_buffer_free(buffer);
  if (backend != nullptr && !borrowed) ggml_backend_free(backend);
  if (ctx != nullptr) ggml_free(ctx);
#ifndef _WIN32
  if (mapping != nullptr) munmap(mapping, mappingBytes);
#endif
}

namespace {

// A row of the head's type, as floats.
void rowBytesToFloat(const ggml_tensor* w, const uint8_t* r, float* out) {
  if (w->type == GGML_TYPE_F32) std::memcpy(out, r, static_cast<size_t>(w->ne[0]) * sizeof(float));
  else ggml_get_type_traits(w->type)->to_float(r, out, w->ne[0]);
}

}  // namespace

void HeadWeights::rowToFloat(int64_t v, float* out) const { rowBytesToFloat(w, row(v), out); }

void HeadWeights::release(int64_t v0, int64_t v1) const {
#ifndef _WIN32
  if (mapping == nullptr || v1 <= v0) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t base = reinterpret_cast<uintptr_t>(mapping);
  uintptr_t from = reinterpret_cast<uintptr_t>(row(v0)) & ~(page - 1);
  uintptr_t to = (reinterpret_cast<uintptr_t>(row(v1 - 1)) + w->nb[1] + page - 1) & ~(page - 1);
  to = std::min(to, base + mappingBytes);
  // The mapping is read-only and shared: its pages are the file's, and come back on the next read.
  if (from < to) madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
#else
  (void)v0;
  (void)v1;
#endif
}

int64_t HeadWeights::spanRows() const { return std::max<int64_t>(1, RELEASE_SPAN_BYTES / static_cast<int64_t>(w->nb[1])); }

void HeadWeights::gatherRows(const int32_t* ids, int64_t n, float* out) const {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [ids](int64_t x, int64_t y) { return ids[x] < ids[y]; });
  RowWalk walk(*this);
  for (const int64_t j : order) rowBytesToFloat(w, walk.row(ids[j]), out + j * d);
}

namespace {

ggml_backend_t cpuBackend(int threads) {
  ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
  if (dev == nullptr) return nullptr;
  ggml_backend_t backend = ggml_backend_dev_init(dev, nullptr);
  if (backend == nullptr) return nullptr;
  auto setThreads = reinterpret_cast<ggml_backend_set_n_threads_t>(
      ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_set_n_threads"));
  if (setThreads != nullptr) setThreads(backend, threads);
  return backend;
}

// Reads `bytes` at `offset` of `path` into `out`.
bool readAt(const std::string& path, size_t offset, void* out, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "rb");
#ifdef _WIN32
  bool ok = f != nullptr && _fseeki64(f, static_cast<long long>(offset), SEEK_SET) == 0 && std::fread(out, 1, bytes, f) == bytes;
#else
  bool ok = f != nullptr && fseeko(f, static_cast<off_t>(offset), SEEK_SET) == 0 && std::fread(out, 1, bytes, f) == bytes;
#endif
  if (f != nullptr) std::fclose(f);
  return ok;
}

// Maps the whole file read-only; false where this platform has no mapping here.
bool mapFile(const std::string& path, HeadWeights* hw) {
#ifndef _WIN32
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st {};
  void* addr = MAP_FAILED;
  if (fstat(fd, &st) == 0 && st.st_size > 0) addr = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (addr == MAP_FAILED) return false;
  hw->mapping = addr;
  hw->mappingBytes = static_cast<size_t>(st.st_size);
  return true;
#else
  (void)path;
  (void)hw;
  return false;
#endif
}

}  // namespace

std::unique_ptr<HeadWeights> loadHeadWeights(const std::string& path, int threads, const HeadChoice& choice, std::string* error) {
  gguf_init_params gp = {true, nullptr};
  gguf_context* g = gguf_init_from_file(path.c_str(), gp);
  if (g == nullptr) {
    *error = "The file is not a readable GGUF file.";
    return nullptr;
  }
  std::unique_ptr<gguf_context, void (*)(gguf_context*)> guard(g, gguf_free);
  int64_t wId = gguf_find_tensor(g, choice.tensor.empty() ? "output.weight" : choice.tensor.c_str());
  if (wId < 0 && choice.tensor.empty()) wId = gguf_find_tensor(g, "token_embd.weight");  // a model whose head is tied to its embedding
  const int64_t nId = gguf_find_tensor(g, "output_norm.weight");
  if (wId < 0 || nId < 0) {
    *error = "The model has no output head or no output norm.";
    return nullptr;
  }
  auto hw = std::make_unique<HeadWeights>();
  const int64_t* ne = gguf_get_tensor_ne(g, wId);
  hw->d = ne[0];
  hw->vocab = ne[1];
  const ggml_type type = gguf_get_tensor_type(g, wId);
  const ggml_type normType = gguf_get_tensor_type(g, nId);
  if (gguf_get_tensor_ne(g, nId)[0] != hw->d || (normType != GGML_TYPE_F32 && normType != GGML_TYPE_F16)) {
    *error = "The output norm does not match the head.";
    return nullptr;
  }
  ggml_init_params ip = {ggml_tensor_overhead() * 2, nullptr, true};
  hw->ctx = ggml_init(ip);
  hw->backend = cpuBackend(threads);
  if (hw->ctx == nullptr || hw->backend == nullptr) {
    *error = "No ggml CPU backend for the head.";
    return nullptr;
  }
  hw->work = ggml_gallocr_new(ggml_backend_get_default_buffer_type(hw->backend));
  hw->w = ggml_new_tensor_2d(hw->ctx, type, hw->d, hw->vocab);
  const size_t dataOffset = gguf_get_data_offset(g);
  const size_t wOffset = dataOffset + gguf_get_tensor_offset(g, wId);
  if (mapFile(path, hw.get())) {
    if (wOffset + ggml_nbytes(hw->w) > hw->mappingBytes) {
      *error = "The head's data is cut short (truncated file).";
      return nullptr;
    }
    ggml_backend_dev_t dev = ggml_backend_get_device(hw->backend);
    hw->buffer = ggml_backend_dev_buffer_from_host_ptr(dev, hw->mapping, hw->mappingBytes, hw->mappingBytes);
    if (hw->buffer == nullptr || ggml_backend_tensor_alloc(hw->buffer, hw->w, static_cast<uint8_t*>(hw->mapping) + wOffset) != GGML_STATUS_SUCCESS) {
      *error = "Could not read the head through the model file's mapping.";
      return nullptr;
    }
  } else {
    hw->buffer = ggml_backend_alloc_ctx_tensors(hw->ctx, hw->backend);
    if (hw->buffer == nullptr || !ggml_backend_buffer_is_host(hw->buffer)) {
      *error = "Could not allocate the head.";
      return nullptr;
    }
    if (!readAt(path, wOffset, hw->w->data, ggml_nbytes(hw->w))) {
      *error = "The head's data is cut short (truncated file).";
      return nullptr;
    }
  }
  // The mean row (where a sparse token's left-out probability goes), a slab at a time.
  {
    std::vector<double> sum(static_cast<size_t>(hw->d), 0.0);
    std::vector<float> r(static_cast<size_t>(hw->d));
    const int64_t slab = 4096;
    for (int64_t v0 = 0; v0 < hw->vocab; v0 += slab) {
      const int64_t v1 = std::min(hw->vocab, v0 + slab);
      for (int64_t v = v0; v < v1; ++v) {
        hw->rowToFloat(v, r.data());
        for (int64_t i = 0; i < hw->d; ++i) sum[static_cast<size_t>(i)] += r[static_cast<size_t>(i)];
      }
      hw->release(v0, v1);
    }
    hw->meanRow.resize(static_cast<size_t>(hw->d));
    for (int64_t i = 0; i < hw->d; ++i) hw->meanRow[static_cast<size_t>(i)] = static_cast<float>(sum[static_cast<size_t>(i)] / static_cast<double>(hw->vocab));
  }
  hw->norm.resize(static_cast<size_t>(hw->d));
  std::vector<uint8_t> raw(ggml_row_size(normType, hw->d));
  if (!readAt(path, dataOffset + gguf_get_tensor_offset(g, nId), raw.data(), raw.size())) {
    *error = "The output norm's data is cut short (truncated file).";
    return nullptr;
  }
  if (normType == GGML_TYPE_F32) std::memcpy(hw->norm.data(), raw.data(), raw.size());
  else ggml_get_type_traits(normType)->to_float(raw.data(), hw->norm.data(), hw->d);
  // A LayerNorm's bias, in the norm weight's type.
  if (choice.layerNorm) {
    const int64_t bId = gguf_find_tensor(g, "output_norm.bias");
    if (bId < 0 || gguf_get_tensor_ne(g, bId)[0] != hw->d || gguf_get_tensor_type(g, bId) != normType) {
      *error = "The output norm's bias is missing or does not match the head.";
      return nullptr;
    }
    hw->normBias.resize(static_cast<size_t>(hw->d));
    if (!readAt(path, dataOffset + gguf_get_tensor_offset(g, bId), raw.data(), raw.size())) {
      *error = "The output norm's bias is cut short (truncated file).";
      return nullptr;
    }
    if (normType == GGML_TYPE_F32) std::memcpy(hw->normBias.data(), raw.data(), raw.size());
    else ggml_get_type_traits(normType)->to_float(raw.data(), hw->normBias.data(), hw->d);
    hw->layerNorm = true;
  }
  // The logit multiplier, folded into the norm: s (W z) = W (s z).
  for (float& v : hw->norm) v *= choice.normScale;
  for (float& v : hw->normBias) v *= choice.normScale;
  hw->softCap = choice.softCap;
  return hw;
}

}  // namespace mobillm
