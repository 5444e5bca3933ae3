// The head's loss and gradient (see HeadLoss.hpp for the method).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <thread>
#include <utility>

#include "HeadLoss.hpp"

namespace mobillm {

namespace {

constexpr double NEG_INF = -std::numeric_limits<double>::infinity();
// About 2M logits per chunk: the work buffers stay near 50 MB at Qwen's width.
constexpr int64_t LOGITS_PER_CHUNK = int64_t{1} << 21;
// The dense pass: W_c^T of a chunk (Q8_0, transposeToQ8) is at most 8 MB. Few chunks, few graphs: each op of a
// graph ends at a barrier where ggml's threads spin, which costs most when other work shares the cores.
constexpr int64_t DENSE_CHUNK_BYTES = int64_t{8} << 20;
// The first pass's logits are kept for the dense tokens' second pass (which then takes W^T p without computing
// W z again) when all of them fit in this many: 32 MiB of floats, 512 tokens of a 16,384-row vocabulary.
constexpr int64_t KEPT_LOGITS = int64_t{1} << 23;

// Builds the graph of `outs` in `ctx`, allocates it in the head's reused work buffer, copies each input's
// floats in (the inputs are marked as such) and computes it; false with `error` set when it cannot.
bool computeGraph(const HeadWeights& hw, ggml_context* ctx, const std::vector<ggml_tensor*>& outs,
                  const std::vector<std::pair<ggml_tensor*, const float*>>& inputs, std::string* error) {
  for (const auto& in : inputs) ggml_set_input(in.first);
  ggml_cgraph* gf = ggml_new_graph(ctx);
  for (ggml_tensor* out : outs) {
    ggml_set_output(out);
    ggml_build_forward_expand(gf, out);
  }
  if (!ggml_gallocr_alloc_graph(hw.work, gf)) {
    *error = "Could not allocate the head's work buffers.";
    return false;
  }
  for (const auto& in : inputs) std::memcpy(in.first->data, in.second, ggml_nbytes(in.first));
  if (ggml_backend_graph_compute(hw.backend, gf) != GGML_STATUS_SUCCESS) {
    *error = "ggml could not compute the head.";
    return false;
  }
  return true;
}

// B [vocab][k] of the head update as a ggml tensor [k, vocab] over this object's floats (no copy).
struct HostMatrix {
  ggml_context* ctx = nullptr;
  ggml_backend_buffer_t buffer = nullptr;
  ggml_tensor* t = nullptr;
  HostMatrix(const HeadWeights& hw, float* data, int64_t ne0, int64_t ne1) {
    if (ne0 == 0) return;
    ggml_init_params ip = {ggml_tensor_overhead(), nullptr, true};
    ctx = ggml_init(ip);
    t = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, ne1);
    buffer = ggml_backend_dev_buffer_from_host_ptr(ggml_backend_get_device(hw.backend), data, ggml_nbytes(t), ggml_nbytes(t));
    if (buffer == nullptr || ggml_backend_tensor_alloc(buffer, t, data) != GGML_STATUS_SUCCESS) t = nullptr;
  }
  ~HostMatrix() {
    if (buffer != nullptr) ggml_backend_buffer_free(buffer);
    if (ctx != nullptr) ggml_free(ctx);
  }
  HostMatrix(const HostMatrix&) = delete;
  HostMatrix& operator=(const HostMatrix&) = delete;
};

// W_c^T p [d, m] for p [c, m], from W_c^T as transposeToQ8 wrote it (`wT`, an input of the graph; p padded with
// zero probabilities to cp rows): an 8-bit matrix product, as the logits'.
ggml_tensor* transposedProduct(ggml_context* ctx, const HeadWeights& hw, const std::vector<uint8_t>& wT, ggml_tensor* p, int64_t c,
                               std::vector<std::pair<ggml_tensor*, const float*>>* inputs) {
  const int64_t cp = (c + 31) / 32 * 32;
  if (cp != c) p = ggml_pad(ctx, p, static_cast<int>(cp - c), 0, 0, 0);
  ggml_tensor* wq = ggml_new_tensor_2d(ctx, GGML_TYPE_Q8_0, cp, hw.d);  // [cp, d]
  inputs->emplace_back(wq, reinterpret_cast<const float*>(wT.data()));
  return ggml_mul_mat(ctx, wq, p);  // [d, m]
}

// A token's log-sum-exp `acc` over the checked rows, with those of the chunk [v0, v0 + c) whose logits are `lj`.
double addCheckedRows(const std::vector<int32_t>& check, int64_t v0, int64_t c, const float* lj, double acc) {
  auto from = std::lower_bound(check.begin(), check.end(), static_cast<int32_t>(v0));
  auto to = std::lower_bound(from, check.end(), static_cast<int32_t>(v0 + c));
  if (from == to) return acc;
  float mx = -std::numeric_limits<float>::infinity();
  for (auto it = from; it != to; ++it) mx = std::max(mx, lj[*it - v0]);
  double sum = 0;
  for (auto it = from; it != to; ++it) sum += std::exp(static_cast<double>(lj[*it - v0]) - mx);
  const double lse = mx + std::log(sum);
  return acc == NEG_INF ? lse : std::max(acc, lse) + std::log1p(std::exp(-std::fabs(acc - lse)));
}

// Each segment's kept rows and targets, ascending without repeats (a segment with a token the sparse rule refused is flagged dense instead).
// `dense`: the tokens the gradient's classification below sent to the dense product.
void collectRows(const std::vector<std::vector<std::pair<int32_t, float>>>& cand, const std::vector<uint8_t>& dense, const int32_t* targets,
                 int64_t n, RowRequest* rows) {
  const std::vector<int32_t> whole = {static_cast<int32_t>(n)};
  const std::vector<int32_t>& segments = rows->segments.empty() ? whole : rows->segments;
  rows->offsets.assign(1, 0);
  rows->ids.clear();
  rows->dense.assign(segments.size(), 0);
  int64_t j = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    const size_t from = rows->ids.size();
    for (const int64_t end = j + segments[s]; j < end; ++j) {
      if (dense[j]) rows->dense[s] = 1;
      if (rows->dense[s]) continue;
      for (const auto& e : cand[j]) rows->ids.push_back(e.first);
      rows->ids.push_back(targets[j]);
    }
    if (rows->dense[s]) rows->ids.resize(from);
    std::sort(rows->ids.begin() + static_cast<std::ptrdiff_t>(from), rows->ids.end());
    rows->ids.erase(std::unique(rows->ids.begin() + static_cast<std::ptrdiff_t>(from), rows->ids.end()), rows->ids.end());
    rows->offsets.push_back(static_cast<int32_t>(rows->ids.size()));
  }
}

// Rows of a dense chunk at width d (DENSE_CHUNK_BYTES of W_c^T in Q8_0).
int64_t denseRows(int64_t d) {
  return DENSE_CHUNK_BYTES / (d * static_cast<int64_t>(ggml_type_size(GGML_TYPE_Q8_0))) * 32;
}

int64_t chunkRows(int64_t vocab, int64_t tokens, int64_t maxRows) {
  const int64_t rows = std::min<int64_t>({vocab, LOGITS_PER_CHUNK / std::max<int64_t>(tokens, 1), maxRows});
  return std::max<int64_t>(32, rows / 32 * 32);
}

}  // namespace

bool HeadLoss::ComputeOver(const HeadWeights& hw, HeadUpdateState& hu, const float* y, const int32_t* targets, const float* weights, int64_t n,
                           bool wantGrad, float* losses, int32_t* top, float* grad, int64_t* denseTokens, RowRequest* rows, std::string* error) {
  const int64_t d = hw.d, V = hw.vocab;
  const int64_t k = hu.rank;
  // The final norm (HeadNorm.cpp): z = xhat * norm (+ bias).
  std::vector<float> z(static_cast<size_t>(n * d)), xhat(static_cast<size_t>(n * d)), inv(static_cast<size_t>(n));
  finalNorm(hw, eps_, y, n, z.data(), xhat.data(), inv.data());
  // The head update's u = A^T z [n][k], and B as a tensor for the chunks' B_c u.
  std::vector<float> u(static_cast<size_t>(n * k), 0.0f);
  for (int64_t j = 0; j < n && k > 0; ++j) {
    float* uj = u.data() + j * k;
    for (int64_t i = 0; i < d; ++i) {
      const float zi = z[j * d + i];
      const float* ai = hu.a.data() + i * k;
      for (int64_t c = 0; c < k; ++c) uj[c] += zi * ai[c];
    }
  }
  const HostMatrix bMatrix(hw, hu.b.data(), k, k > 0 ? V : 0);
  if (k > 0 && bMatrix.t == nullptr) {
    *error = "Could not read the head update's matrix.";
    return false;
  }
  // Per token: running log-sum-exp R, the largest logit M, the target's logit,
  // and (for the gradient) the rows within tailNats of M so far.
  std::vector<double> R(static_cast<size_t>(n), NEG_INF);
  std::vector<float> M(static_cast<size_t>(n), -std::numeric_limits<float>::infinity());
  std::vector<float> targetLogit(static_cast<size_t>(n), 0.0f);
  const int64_t cap = tuning_.maxCandidates >= 0 ? tuning_.maxCandidates : std::clamp<int64_t>(V / 64, 256, 4096);
  std::vector<std::vector<std::pair<int32_t, float>>> cand(wantGrad ? static_cast<size_t>(n) : 0);
  std::vector<uint8_t> dense(wantGrad ? static_cast<size_t>(n) : 0, cap == 0 ? 1 : 0);
  const float tailNats = static_cast<float>(tuning_.tailNats);
  // Wide distributions last time: every token's product over the vocabulary in this one pass.
  // (Not with a head update: B's rows are weighted by the whole vocabulary's softmax, known only after the pass.)
  const bool onePass = wantGrad && k == 0 && (cap == 0 || denseShare_ > 0.5);
  std::vector<float> A(wantGrad ? static_cast<size_t>(n * d) : 0, 0.0f);
  // Candidate rows checked: each token's log-sum-exp over them.
  const bool checking = rows != nullptr && !rows->check.empty();
  std::vector<double> RS(checking ? static_cast<size_t>(n) : 0, NEG_INF);
  const int64_t chunk = chunkRows(V, n, onePass ? denseRows(d) : V);
  std::vector<uint8_t> wT;  // one pass: each chunk's W_c^T
  // Two passes over a small vocabulary: the first pass's final logits [n][V] (not zeroed: the pass writes every row), for the second (no soft cap: its slope is not kept).
  const bool keep = wantGrad && !onePass && tuning_.keepLogits && hw.softCap == 0.0f && n * V <= KEPT_LOGITS;
  std::unique_ptr<float[]> kept(keep ? new float[static_cast<size_t>(n * V)] : nullptr);
  for (int64_t v0 = 0; v0 < V; v0 += chunk) {
    const int64_t c = std::min(chunk, V - v0);
    ggml_init_params ip = {ggml_tensor_overhead() * 40 + ggml_graph_overhead(), nullptr, true};
    ggml_context* ctx = ggml_init(ip);
    ggml_tensor* zt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, d, n);
    ggml_tensor* wc = ggml_view_2d(ctx, hw.w, d, c, hw.w->nb[1], static_cast<size_t>(v0) * hw.w->nb[1]);
    // The logits as llama.cpp computes them (the quantized matrix times z,
    // which ggml quantizes to the matrix's dot type).
    ggml_tensor* logits = ggml_mul_mat(ctx, wc, zt);  // [c, n]
    ggml_tensor* slope = nullptr;  // a soft cap's derivative (HeadCap.cpp), for this pass's products
    if (hw.softCap > 0.0f) logits = capLogits(ctx, logits, hw.softCap, onePass ? &slope : nullptr);
    ggml_tensor* ut = k > 0 ? ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, n) : nullptr;
    if (ut != nullptr) logits = ggml_add_inplace(ctx, logits, ggml_mul_mat(ctx, ggml_view_2d(ctx, bMatrix.t, k, c, bMatrix.t->nb[1], static_cast<size_t>(v0) * bMatrix.t->nb[1]), ut));  // + B_c u, in place (one [c, n] buffer fewer)
    ggml_tensor* p = ggml_soft_max(ctx, logits);        // [c, n], within the chunk
    std::vector<std::pair<ggml_tensor*, const float*>> inputs = {{zt, z.data()}};
    if (ut != nullptr) inputs.emplace_back(ut, u.data());
    if (onePass) transposeToQ8(hw, v0, c, threads_, &wT);
    ggml_tensor* acc = onePass ? transposedProduct(ctx, hw, wT, slope != nullptr ? ggml_mul(ctx, p, slope) : p, c, &inputs) : nullptr;  // [d, n] = W_c^T p
    ggml_set_output(logits);
    if (acc != nullptr) ggml_set_output(p);
    const bool ok = computeGraph(hw, ctx, {acc != nullptr ? acc : p}, inputs, error);
    if (ok) {
      const float* L = static_cast<const float*>(logits->data);
      const float* P = static_cast<const float*>(p->data);
      const float* Ac = acc != nullptr ? static_cast<const float*>(acc->data) : nullptr;
      for (int64_t j = 0; j < n; ++j) {
        const float* lj = L + j * c;
        if (kept) std::memcpy(kept.get() + j * V + v0, lj, static_cast<size_t>(c) * sizeof(float));
        // The chunk's log-sum-exp from its largest logit and ggml's softmax there: l_max - log p_max.
        int64_t best = 0;
        for (int64_t v = 1; v < c; ++v) if (lj[v] > lj[best]) best = v;
        const double lse = static_cast<double>(lj[best]) - std::log(static_cast<double>(P[j * c + best]));
        const int64_t t = targets[j];
        if (t >= v0 && t < v0 + c) targetLogit[j] = lj[t - v0];
        const double Rn = R[j] == NEG_INF ? lse : std::max(R[j], lse) + std::log1p(std::exp(-std::fabs(R[j] - lse)));
        if (Ac != nullptr) {
          // A_j so far was weighted by exp(-R_old); rescale it to the new log-sum-exp and add this chunk's.
          const float keep = static_cast<float>(std::exp(R[j] - Rn)), add = static_cast<float>(std::exp(lse - Rn));
          float* Aj = A.data() + j * d;
          for (int64_t i = 0; i < d; ++i) Aj[i] = Aj[i] * keep + Ac[j * d + i] * add;
        }
        R[j] = Rn;
        if (checking) RS[j] = addCheckedRows(rows->check, v0, c, lj, RS[j]);
        if (lj[best] > M[j]) {
          M[j] = lj[best];
          top[j] = static_cast<int32_t>(v0 + best);
        }
        if (!wantGrad || onePass || dense[j]) continue;
        const float floor = M[j] - tailNats;
        if (lj[best] < floor) continue;  // the whole chunk is below the token's floor
        auto& cj = cand[j];
        for (int64_t v = 0; v < c; ++v) if (lj[v] >= floor) cj.emplace_back(static_cast<int32_t>(v0 + v), lj[v]);
        if (static_cast<int64_t>(cj.size()) > cap) {
          cj.erase(std::remove_if(cj.begin(), cj.end(), [floor](const std::pair<int32_t, float>& e) { return e.second < floor; }), cj.end());
          if (static_cast<int64_t>(cj.size()) > cap) {
            dense[j] = 1;
            std::vector<std::pair<int32_t, float>>().swap(cj);
          }
        }
      }
    }
    ggml_free(ctx);
    hw.release(v0, v0 + c);
    if (!ok) return false;
  }
  for (int64_t j = 0; j < n; ++j) losses[j] = static_cast<float>(R[j] - targetLogit[j]);
  if (checking) {
    rows->leftOutMax = rows->leftOutMean = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double out = std::max(0.0, -std::expm1(RS[j] - R[j]));
      rows->leftOutMax = std::max(rows->leftOutMax, out);
      rows->leftOutMean += out / static_cast<double>(n);
    }
  }
  *denseTokens = 0;
  if (!wantGrad) return true;
  // A_j = sum_v p_jv W_v: sparse where the kept rows leave at most tailMass out, else dense.
  std::vector<int64_t> sparseList, denseList;
  std::vector<double> tail(static_cast<size_t>(n), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    if (onePass) {
      dense[j] = 1;
      denseList.push_back(j);  // computed above
      continue;
    }
    if (!dense[j]) {
      auto& cj = cand[j];
      const float floor = M[j] - tailNats;
      cj.erase(std::remove_if(cj.begin(), cj.end(), [floor](const std::pair<int32_t, float>& e) { return e.second < floor; }), cj.end());
      double kept = 0;
      for (const auto& e : cj) kept += std::exp(static_cast<double>(e.second) - R[j]);
      tail[j] = std::max(0.0, 1.0 - kept);
      if (tail[j] <= tuning_.tailMass) {
        sparseList.push_back(j);
        continue;
      }
    }
    dense[j] = 1;
    denseList.push_back(j);
  }
  if (rows != nullptr && rows->collect) collectRows(cand, dense, targets, n, rows);
  SparseProducts(hw, hu, u, sparseList, cand, R, tail, A.data());
  std::vector<float> accB(static_cast<size_t>(n * k), 0.0f);  // B^T p per token
  if (k > 0) {
    hu.ga.assign(static_cast<size_t>(d * k), 0.0f);
    hu.gb.assign(static_cast<size_t>(V * k), 0.0f);
    SparseHeadUpdate(hw, hu, sparseList, cand, R, tail, u, weights, accB.data());
  }
  if (!onePass && !denseList.empty() && !DenseProducts(hw, hu, denseList, z, kept.get(), R, A.data(), bMatrix.t, u, weights, accB.data(), error)) return false;
  *denseTokens = static_cast<int64_t>(denseList.size());
  denseShare_ = static_cast<double>(denseList.size()) / static_cast<double>(n);
  // dL/dz = w (A - W[target]) + A_update du, du = w (B^T p - B[target]); back through the RMSNorm to y.
  std::vector<float> targetRows(static_cast<size_t>(n * d)), dn(static_cast<size_t>(d)), du(static_cast<size_t>(k)), lift(static_cast<size_t>(k > 0 ? d : 0));
  hw.gatherRows(targets, n, targetRows.data());
  for (int64_t j = 0; j < n; ++j) {
    float* wt = targetRows.data() + j * d;
    const float targetSlope = capSlope(hw, hu.b.data(), k, u.data() + j * k, targets[j], targetLogit[j]);
    if (targetSlope != 1.0f) for (int64_t i = 0; i < d; ++i) wt[i] *= targetSlope;
    if (k > 0) HeadUpdateTerms(hw, hu, z.data() + j * d, u.data() + j * k, accB.data() + j * k, targets[j], weights[j], du.data(), lift.data());
    for (int64_t i = 0; i < d; ++i) dn[i] = (weights[j] * (A[j * d + i] - wt[i]) + (k > 0 ? lift[i] : 0.0f)) * hw.norm[i];
    finalNormBackward(hw, dn.data(), xhat.data() + j * d, inv[j], grad + j * d);
  }
  hw.release(0, V);
  return true;
}

bool HeadLoss::DenseProducts(const HeadWeights& hw, HeadUpdateState& hu, const std::vector<int64_t>& tokens, const std::vector<float>& z, const float* kept, const std::vector<double>& R,
                             float* A, ggml_tensor* b, const std::vector<float>& u, const float* weights, float* accB, std::string* error) {
  const int64_t d = hw.d, V = hw.vocab, m = static_cast<int64_t>(tokens.size()), r = hu.rank;
  // z and u [m][r] only where the logits are computed again (kept logits hold W z + B u already).
  const bool again = kept == nullptr;
  std::vector<float> zD(again ? static_cast<size_t>(m * d) : 0), negR(static_cast<size_t>(m));
  // With a head update: the tokens' u [m][r], and w u transposed [r][m] (the product over tokens that gives B's gradient).
  std::vector<float> uD(again ? static_cast<size_t>(m * r) : 0), wuT(static_cast<size_t>(m * r));
  for (int64_t k = 0; k < m; ++k) {
    if (again) std::memcpy(zD.data() + k * d, z.data() + tokens[k] * d, static_cast<size_t>(d) * sizeof(float));
    negR[k] = static_cast<float>(-R[tokens[k]]);
    for (int64_t c = 0; c < r; ++c) {
      if (again) uD[k * r + c] = u[tokens[k] * r + c];
      wuT[c * m + k] = weights[tokens[k]] * u[tokens[k] * r + c];
    }
  }
  const int64_t chunk = chunkRows(V, m, denseRows(d));
  std::vector<uint8_t> wT;
  std::unique_ptr<float[]> keptC(again ? nullptr : new float[static_cast<size_t>(std::min(chunk, V) * m)]);  // the chunk's kept logits [m][c]
  for (int64_t v0 = 0; v0 < V; v0 += chunk) {
    const int64_t c = std::min(chunk, V - v0);
    transposeToQ8(hw, v0, c, threads_, &wT);
    for (int64_t k = 0; k < m && !again; ++k) std::memcpy(keptC.get() + k * c, kept + tokens[k] * V + v0, static_cast<size_t>(c) * sizeof(float));
    ggml_init_params ip = {ggml_tensor_overhead() * 40 + ggml_graph_overhead(), nullptr, true};
    ggml_context* ctx = ggml_init(ip);
    ggml_tensor* zt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, d, m);
    ggml_tensor* nr = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 1, m);
    ggml_tensor* wc = ggml_view_2d(ctx, hw.w, d, c, hw.w->nb[1], static_cast<size_t>(v0) * hw.w->nb[1]);
    // [c, m]: the first pass's logits where they were kept, else computed again as it did.
    ggml_tensor* keptT = again ? nullptr : ggml_new_tensor_2d(ctx, GGML_TYPE_F32, c, m);
    ggml_tensor* logits = again ? ggml_mul_mat(ctx, wc, zt) : keptT;
    ggml_tensor* slope = nullptr;
    if (again && hw.softCap > 0.0f) logits = capLogits(ctx, logits, hw.softCap, &slope);
    ggml_tensor* bc = b != nullptr ? ggml_view_2d(ctx, b, r, c, b->nb[1], static_cast<size_t>(v0) * b->nb[1]) : nullptr;  // [r, c]
    ggml_tensor* ut = r > 0 ? ggml_new_tensor_2d(ctx, GGML_TYPE_F32, r, m) : nullptr;
    ggml_tensor* wut = r > 0 ? ggml_new_tensor_2d(ctx, GGML_TYPE_F32, m, r) : nullptr;
    if (again && bc != nullptr) logits = ggml_add_inplace(ctx, logits, ggml_mul_mat(ctx, bc, ut));
    ggml_tensor* p = ggml_exp_inplace(ctx, ggml_add_inplace(ctx, logits, nr));           // [c, m], the softmax over the whole vocabulary
    std::vector<std::pair<ggml_tensor*, const float*>> inputs = {{nr, negR.data()}};
    inputs.emplace_back(again ? zt : keptT, again ? zD.data() : keptC.get());
    ggml_tensor* acc = transposedProduct(ctx, hw, wT, slope != nullptr ? ggml_mul(ctx, p, slope) : p, c, &inputs);  // [d, m] = W_c^T p (times a cap's slope)
    std::vector<ggml_tensor*> outs = {acc};
    ggml_tensor *accBc = nullptr, *gradBc = nullptr;
    if (bc != nullptr) {
      accBc = ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, bc)), p);   // [r, m] = B_c^T p
      gradBc = ggml_mul_mat(ctx, wut, ggml_cont(ctx, ggml_transpose(ctx, p)));  // [r, c] = sum over tokens of p w u
      outs.push_back(accBc);
      outs.push_back(gradBc);
      if (again) inputs.emplace_back(ut, uD.data());  // (kept logits hold B u already)
      inputs.emplace_back(wut, wuT.data());
    }
    const bool ok = computeGraph(hw, ctx, outs, inputs, error);
    if (ok) {
      const float* Ac = static_cast<const float*>(acc->data);
      for (int64_t k = 0; k < m; ++k) {
        float* Aj = A + tokens[k] * d;
        for (int64_t i = 0; i < d; ++i) Aj[i] += Ac[k * d + i];
      }
      if (bc != nullptr) {
        const float* Bc = static_cast<const float*>(accBc->data);
        for (int64_t k = 0; k < m; ++k) for (int64_t c2 = 0; c2 < r; ++c2) accB[tokens[k] * r + c2] += Bc[k * r + c2];
        const float* G = static_cast<const float*>(gradBc->data);
        float* gb = hu.gb.data() + v0 * r;
        for (int64_t i = 0; i < c * r; ++i) gb[i] += G[i];
      }
    }
    ggml_free(ctx);
    hw.release(v0, v0 + c);
    if (!ok) return false;
  }
  return true;
}

}  // namespace mobillm
