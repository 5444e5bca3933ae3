// The backbone's own head on the device, for label-private training: the final
// RMSNorm and the output matrix of a GGUF file, the next-token cross-entropy of
// hidden states and its gradient with respect to them.
//
// Memory: the matrix is read where the model file's pages are (a read-only
// mapping of the file, the same file cache llama.cpp's own mapping uses), one
// chunk of vocabulary rows at a time; a chunk's pages leave this process's
// resident set when it is done. Rows read out of order (the sparse products'
// rows, the targets) are read in ascending order a span at a time, each span
// released behind the walk (HeadWeights::spanRows). No copy of the head is held.
//
// Per chunk of the vocabulary, one ggml graph on ggml's CPU backend:
//   logits = W_c z      the quantized matrix times z, exactly as llama.cpp's own
//                       head computes it (ggml rounds z to the matrix's dot type)
//   p = softmax(logits) within the chunk; chunks are joined by log-sum-exp.
// The gradient needs A = W^T softmax = sum_v p_v W_v per token:
//   sparse tokens  the rows within `tailNats` of the token's largest logit,
//                  when the probability they leave out is at most `tailMass`;
//                  that remainder is spread as the mean row of W (so the error
//                  is tailMass times how far the left-out rows' mean is from
//                  the mean row, well under the wire's 8-bit rounding);
//   dense tokens   every row: each chunk W_c is transposed into a Q8_0 block
//                  (the vocabulary then is the product's inner axis) and
//                  multiplied with p, as the logits are: in a second pass for
//                  the tokens the sparse rule refused (which reads the first
//                  pass's logits when all of them fit in KEPT_LOGITS, so W z
//                  is computed once: a small vocabulary), or, when most of the
//                  previous call's tokens were dense (a model whose
//                  distributions are wide), for every token in the first pass
//                  with the chunk's softmax, joined by log-sum-exp.
// so no [tokens x vocabulary] tensor and no transposed copy of the head is held.
//
// JavaScript:
//   new HeadLoss(modelPath, normEpsilon, threads, tuning?: { tailMass, tailNats, maxCandidates, keepLogits }, head?: { tensor, normScale, softCap, layerNorm })
//   load() -> Promise<{ vocabularySize, hiddenSize, type, mapped }>
//   run(y: Float32Array [n*d], targets: Int32Array [n], weights: Float32Array [n], wantGrad)
//     -> Promise<{ losses: Float32Array [n], top: Int32Array [n] (each token's highest-scoring id), grad?: Float32Array [n*d], denseTokens: number }>
//   grad = d(sum_j weights_j * loss_j) / dy.
//   run(..., wantGrad, rows?: { within?, check?, collect?, segments? }): candidate rows (RowRequest below, HeadRows.cpp);
//     then also { leftOutMax, leftOutMean } (check) and rows: { offsets, ids, dense } (collect).
//
// The head update of rank k, owned here in label-private training (HeadStep.cpp):
// logits = W z + B u with u = A^T z, A [d][k] and B [vocab][k] held by this
// object with their Adam moments. Its gradients need no backward pass through
// the backbone; with g_v = w (p_v - [v = target]):
//   dB_v = sum over tokens of g_v u         (sparse tokens: their kept rows, the
//                                            rest spread evenly; dense tokens: a
//                                            product per chunk in the second pass)
//   du   = w (B^T p - B_target),  dA = sum z du^T,  and dz gains A du.
// The whole-vocabulary softmax is needed before B's rows can be weighted, so a
// head with an update never takes the one-pass product (dense tokens take two).
//   setHeadUpdate(rank, a, b, moments?: { ma, va, mb, vb })   (rank 0: none)
//   run(..., wantGrad) also keeps A's and B's gradients; then, once the server
//   has applied the same step to the side network:
//   stepHeadUpdate({ learningRate, t, clipNorm, beta1, beta2, epsilon }) -> Promise<{ stepped, gradNorm }>
//     one Adam step of A and B, clipped as one group (not taken when the gradient is not finite)
//   exportHeadUpdate(withMoments) -> { rank, a, b[, ma, va, mb, vb] } (copies)
//   saveHeadUpdate(path, jobId, step, rank) / loadHeadUpdate(path, jobId, step, rank) -> Promise
//     the state with its moments written to / read from a file on a worker (checked: job, step, shape, checksum)
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

namespace mobillm {

/** How the gradient's product over the vocabulary is cut short (see above). */
struct HeadTuning {
  double tailMass = 1e-4;      // the most probability a sparse token may leave out
  double tailNats = 18.0;      // rows kept: logit >= the token's largest - tailNats
  int64_t maxCandidates = -1;  // rows kept per token before it goes dense; -1: vocabulary / 64 within [256, 4096]; 0: always dense
  bool keepLogits = true;      // two passes over a small vocabulary: the second reads the first's logits (KEPT_LOGITS, HeadCompute.cpp)
};

/** Floats at 64-byte boundaries (ggml reads B in place, and wants its tensors aligned). */
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{64}); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const AlignedAllocator<U>&) const { return false; }
};

/** The device's head update and its optimizer state (see above); rank 0: none. */
struct HeadUpdateState {
  int64_t rank = 0;
  std::vector<float> a;                             // A [d][rank]
  std::vector<float, AlignedAllocator<float>> b;    // B [vocab][rank]
  std::vector<float> ma, va, mb, vb;    // Adam's moments of A and B
  std::vector<float> ga, gb;            // the last call's gradients (kept: the next call reuses them)
};

/** One Adam step of the head update at the side network's schedule (computed by the caller) and constants. */
struct HeadStepOptions {
  double learningRate = 0, t = 1, clipNorm = 1, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8;
};

struct SnapshotHeader;  // HeadStep.cpp

/**
 * Candidate rows (HeadRows.cpp), for a label-private job's later epochs:
 *   within   a run over these rows of the vocabulary only (sorted, unique, every
 *            target among them): the softmax is taken over them, as if the
 *            rest had no probability;
 *   check    with a whole-vocabulary run: the probability each token's softmax
 *            puts outside these rows (sorted, unique), its largest and mean;
 *   collect  with a whole-vocabulary gradient: per segment (consecutive tokens,
 *            `segments` their counts; none: one of all tokens) the rows its
 *            tokens kept (the sparse rule's) and their targets, ascending
 *            without repeats; a segment with a dense token is flagged instead.
 */
struct RowRequest {
  std::vector<int32_t> within, check, segments;
  bool collect = false;
  double leftOutMax = 0, leftOutMean = 0;
  std::vector<int32_t> offsets, ids;  // collect: segment s's rows are ids[offsets[s] .. offsets[s + 1])
  std::vector<uint8_t> dense;         // collect: 1 where a token of the segment took the dense product (no rows listed)
};

/** Bytes of the head's matrix in a span of an ascending walk over its rows (HeadWeights::spanRows). */
constexpr int64_t RELEASE_SPAN_BYTES = int64_t{8} << 20;

struct HeadWeights {
  ggml_context* ctx = nullptr;
  ggml_backend_buffer_t buffer = nullptr;
  ggml_backend_t backend = nullptr;
  ggml_gallocr_t work = nullptr;  // the chunks' graphs, one buffer reused (it grows to the largest graph)
  ggml_tensor* w = nullptr;       // [d, vocab], the file's type, in the mapping (or a private copy where no mapping exists)
  void* mapping = nullptr;        // the whole model file, read-only
  bool borrowed = false;          // backend and work belong to another HeadWeights (a copy of some of its rows)
  size_t mappingBytes = 0;
  std::vector<float> norm;        // [d]
  std::vector<float> meanRow;     // [d], the mean of W's rows
  float softCap = 0.0f;           // logits c tanh(W z / c) + B u (HeadCap.cpp); 0: W z + B u
  bool layerNorm = false;         // z = (y - mean) / std * norm + normBias (HeadNorm.cpp), else y / rms * norm
  std::vector<float> normBias;    // [d] with a LayerNorm
  int64_t d = 0, vocab = 0;
  const uint8_t* row(int64_t v) const { return static_cast<const uint8_t*>(w->data) + static_cast<size_t>(v) * w->nb[1]; }
  void rowToFloat(int64_t v, float* out) const;
  // Drops rows [v0, v1)'s pages from this process's resident set (they stay in the file cache).
  void release(int64_t v0, int64_t v1) const;
  // Rows in a span of the matrix (8 MB): a walk over rows in ascending order releases each span behind it. Rows read
  // one by one in any order would leave much of the matrix resident: a fault maps a whole large page of the file cache.
  int64_t spanRows() const;
  // Rows `ids` [n] as floats into out [n][d], read in ascending order (a RowWalk).
  void gatherRows(const int32_t* ids, int64_t n, float* out) const;
  ~HeadWeights();
};

/** Rows of the head read in ascending order: each span (HeadWeights::spanRows) released once the walk has left it, the last when the walk ends. */
class RowWalk {
 public:
  explicit RowWalk(const HeadWeights& hw) : hw_(hw), span_(hw.spanRows()) {}
  ~RowWalk() {
    if (from_ >= 0) hw_.release(from_, hw_.vocab);
  }
  RowWalk(const RowWalk&) = delete;
  RowWalk& operator=(const RowWalk&) = delete;
  /** Row v (at least the last row read). */
  const uint8_t* row(int64_t v) {
    if (from_ >= 0 && v >= from_ + span_) {
      hw_.release(from_, v);
      from_ = -1;
    }
    if (from_ < 0) from_ = v;
    return hw_.row(v);
  }

 private:
  const HeadWeights& hw_;
  const int64_t span_;
  int64_t from_ = -1;  // the first row of the span being read; -1: none yet
};

/** The model's output step as extension/core/model/headDescription.ts describes it: which matrix is the head, what multiplies the final norm (the logit multiplier), the soft cap, the norm's kind. */
struct HeadChoice {
  std::string tensor;     // empty: output.weight, else token_embd.weight
  float normScale = 1.0f;
  float softCap = 0.0f;   // final logit soft-capping c (c tanh(l / c)); 0: none
  bool layerNorm = false; // the final norm is a LayerNorm with a bias (output_norm.bias), not an RMSNorm
};

/**
 * Soft-capping (HeadCap.cpp): the capped logits c tanh(l / c) of a chunk's
 * logits [c, n]; with `slope`, also their derivative 1 - tanh(l / c)^2.
 */
ggml_tensor* capLogits(ggml_context* ctx, ggml_tensor* logits, float cap, ggml_tensor** slope);
/** The final norm of y [n][d] (HeadNorm.cpp): z and xhat [n][d], and each token's 1 / rms or 1 / std. */
void finalNorm(const HeadWeights& hw, float eps, const float* y, int64_t n, float* z, float* xhat, float* inv);
/** One token's gradient at y from dn = dL/dz * norm [d], through the final norm. */
void finalNormBackward(const HeadWeights& hw, const float* dn, const float* xhat, float inv, float* grad);
/** W_c^T of the head's rows [v0, v0 + c) in Q8_0 [ceil(c / 32) * 32, d], zero-padded, on `threads` threads (HeadTranspose.cpp). */
void transposeToQ8(const HeadWeights& hw, int64_t v0, int64_t c, int threads, std::vector<uint8_t>* out);
/** The derivative of the capped part of a final logit (head update u_j B_v added after the cap): 1 without a cap. */
float capSlope(const HeadWeights& hw, const float* b, int64_t k, const float* uj, int64_t v, float finalLogit);

/** Reads the head of a GGUF file (HeadWeights.cpp); nullptr with `error` set when it cannot. */
std::unique_ptr<HeadWeights> loadHeadWeights(const std::string& path, int threads, const HeadChoice& choice, std::string* error);

class HeadLoss : public Napi::ObjectWrap<HeadLoss> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit HeadLoss(const Napi::CallbackInfo& info);

  // Worker-thread entry points.
  std::unique_ptr<HeadWeights> LoadWeights(std::string* error) const { return loadHeadWeights(path_, threads_, choice_, error); }
  // HeadCompute.cpp.
  // `rows` (may be null): candidate rows, HeadRows.cpp.
  bool Compute(const float* y, const int32_t* targets, const float* weights, int64_t n, bool wantGrad,
               float* losses, int32_t* top, float* grad, int64_t* denseTokens, RowRequest* rows, std::string* error);
  // HeadStep.cpp: clips A's and B's last gradients as one group and steps them by Adam; false when they are not finite.
  bool StepHeadUpdate(const HeadStepOptions& o, double* gradNorm);
  // Worker-thread halves of saveHeadUpdate / loadHeadUpdate (HeadStep.cpp).
  bool SaveSnapshot(const std::string& path, const SnapshotHeader& header, std::string* error);
  bool LoadSnapshot(const std::string& path, const SnapshotHeader& expect, std::string* error);

  // A head disposed while it loaded drops the weights it receives.
  void Adopt(std::unique_ptr<HeadWeights> w) {
    if (!disposed_) weights_ = std::move(w);
  }
  // A dispose() during a run is deferred until the worker is done (as Backbone's is).
  void SetBusy(bool busy) {
    busy_ = busy;
    if (!busy_ && disposed_) weights_.reset();
  }
  const HeadWeights* weights() const { return weights_.get(); }

 private:
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value SetHeadUpdate(const Napi::CallbackInfo& info);
  Napi::Value ExportHeadUpdate(const Napi::CallbackInfo& info);
  Napi::Value StepHeadUpdateJs(const Napi::CallbackInfo& info);
  Napi::Value SaveHeadUpdate(const Napi::CallbackInfo& info) { return SnapshotJs(info, true); }
  Napi::Value LoadHeadUpdate(const Napi::CallbackInfo& info) { return SnapshotJs(info, false); }
  Napi::Value SnapshotJs(const Napi::CallbackInfo& info, bool save);

  // Compute over `hw` (the head, or a copy of some of its rows) with the head update `hu` (its rows alike).
  bool ComputeOver(const HeadWeights& hw, HeadUpdateState& hu, const float* y, const int32_t* targets, const float* weights, int64_t n,
                   bool wantGrad, float* losses, int32_t* top, float* grad, int64_t* denseTokens, RowRequest* rows, std::string* error);
  // The sparse tokens' A (HeadCompute.cpp), over `threads_` threads.
  // With a soft cap, each row's weight is its softmax times the cap's slope there (capSlope, from u [n][k] and B).
  void SparseProducts(const HeadWeights& hw, const HeadUpdateState& hu, const std::vector<float>& u, const std::vector<int64_t>& tokens,
                      const std::vector<std::vector<std::pair<int32_t, float>>>& candidates, const std::vector<double>& R, const std::vector<double>& tail, float* A) const;
  // HeadStep.cpp, with a head update: the sparse tokens' B^T p (accB [n][k]) and their part of B's gradient (into update_.gb).
  void SparseHeadUpdate(const HeadWeights& hw, HeadUpdateState& hu, const std::vector<int64_t>& tokens, const std::vector<std::vector<std::pair<int32_t, float>>>& candidates,
                        const std::vector<double>& R, const std::vector<double>& tail, const std::vector<float>& u, const float* weights, float* accB);
  // One token's du = w (B^T p - B[target]) and A du [d] (`lift`); adds its part to A's gradient and the target's to B's.
  void HeadUpdateTerms(const HeadWeights& hw, HeadUpdateState& hu, const float* zj, const float* uj, const float* accBj, int32_t target, float w, float* du, float* lift);
  // The dense tokens' A: every row, in f32 (HeadCompute.cpp); `kept` (may be null): the first pass's final logits [n][vocab], else W z (+ B u) again.
  // With a head update (b: B as a [k, vocab] tensor, else nullptr), also its B^T p (accB [n][k]) and B's softmax part of the gradient (into update_.gb), from u [n][k].
  bool DenseProducts(const HeadWeights& hw, HeadUpdateState& hu, const std::vector<int64_t>& tokens, const std::vector<float>& z, const float* kept, const std::vector<double>& R, float* A,
                     ggml_tensor* b, const std::vector<float>& u, const float* weights, float* accB, std::string* error);

  std::string path_;
  HeadChoice choice_;
  float eps_ = 1e-6f;
  int threads_ = 1;
  HeadTuning tuning_;
  HeadUpdateState update_;   // touched by the worker only while busy_
  mutable double denseShare_ = 0;  // the share of the last gradient call's tokens that were dense (worker thread only; calls are serial)
  bool busy_ = false;
  bool disposed_ = false;
  std::unique_ptr<HeadWeights> weights_;
};

}  // namespace mobillm
