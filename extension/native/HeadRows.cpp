// Candidate rows (see RowRequest in HeadLoss.hpp): a run over some rows of the
// vocabulary, for a label-private job's later epochs, where the rows a token's
// softmax gives weight to are known from an earlier pass over the whole head.
//
// The rows of W (as the file stores them, so their logits are bit for bit the
// whole head's), of the head update's B and of the mean row are copied into a
// head of their own; the run is the whole head's code over it, its targets and
// top ids mapped to and from the copy, B's gradient scattered back (zero on the
// other rows, whose probability the copy takes as zero).
#include <algorithm>
#include <cstring>

#include "HeadLoss.hpp"

namespace mobillm {

namespace {

// The rows `within` of `hw` as a head of their own (sharing its backend and work buffers); nullptr with `error` set when it cannot.
std::unique_ptr<HeadWeights> copyRows(const HeadWeights& hw, const std::vector<int32_t>& within, std::string* error) {
  auto sub = std::make_unique<HeadWeights>();
  sub->borrowed = true;
  sub->backend = hw.backend;
  sub->work = hw.work;
  sub->d = hw.d;
  sub->vocab = static_cast<int64_t>(within.size());
  sub->norm = hw.norm;
  sub->meanRow = hw.meanRow;
  sub->softCap = hw.softCap;
  sub->layerNorm = hw.layerNorm;
  sub->normBias = hw.normBias;
  ggml_init_params ip = {ggml_tensor_overhead() * 2, nullptr, true};
  sub->ctx = ggml_init(ip);
  if (sub->ctx == nullptr) {
    *error = "Could not allocate the candidate rows.";
    return nullptr;
  }
  sub->w = ggml_new_tensor_2d(sub->ctx, hw.w->type, hw.d, sub->vocab);
  sub->buffer = ggml_backend_alloc_ctx_tensors(sub->ctx, hw.backend);
  if (sub->buffer == nullptr || !ggml_backend_buffer_is_host(sub->buffer)) {
    *error = "Could not allocate the candidate rows.";
    return nullptr;
  }
  const size_t rowBytes = hw.w->nb[1];
  uint8_t* out = static_cast<uint8_t*>(sub->w->data);
  RowWalk walk(hw);  // within ascends
  for (size_t i = 0; i < within.size(); ++i) std::memcpy(out + i * rowBytes, walk.row(within[i]), rowBytes);
  return sub;
}

}  // namespace

bool HeadLoss::Compute(const float* y, const int32_t* targets, const float* weights, int64_t n, bool wantGrad,
                       float* losses, int32_t* top, float* grad, int64_t* denseTokens, RowRequest* rows, std::string* error) {
  if (rows == nullptr || rows->within.empty()) return ComputeOver(*weights_, update_, y, targets, weights, n, wantGrad, losses, top, grad, denseTokens, rows, error);
  const std::vector<int32_t>& within = rows->within;
  const int64_t m = static_cast<int64_t>(within.size()), k = update_.rank;
  std::unique_ptr<HeadWeights> sub = copyRows(*weights_, within, error);
  if (!sub) return false;
  std::vector<int32_t> local(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    auto at = std::lower_bound(within.begin(), within.end(), targets[j]);
    if (at == within.end() || *at != targets[j]) {
      *error = "A target is not among the candidate rows.";
      return false;
    }
    local[j] = static_cast<int32_t>(at - within.begin());
  }
  HeadUpdateState su;
  su.rank = k;
  if (k > 0) {
    su.a = update_.a;
    su.b.resize(static_cast<size_t>(m * k));
    for (int64_t i = 0; i < m; ++i) std::memcpy(su.b.data() + i * k, update_.b.data() + static_cast<int64_t>(within[i]) * k, static_cast<size_t>(k) * sizeof(float));
  }
  if (!ComputeOver(*sub, su, y, local.data(), weights, n, wantGrad, losses, top, grad, denseTokens, nullptr, error)) return false;
  for (int64_t j = 0; j < n; ++j) top[j] = within[top[j]];
  if (wantGrad && k > 0) {
    update_.ga = std::move(su.ga);
    update_.gb.assign(static_cast<size_t>(weights_->vocab * k), 0.0f);
    for (int64_t i = 0; i < m; ++i) std::memcpy(update_.gb.data() + static_cast<int64_t>(within[i]) * k, su.gb.data() + i * k, static_cast<size_t>(k) * sizeof(float));
  }
  return true;
}

}  // namespace mobillm
