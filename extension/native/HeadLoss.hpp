// The backbone's own head on the device, for label-private training: the final
// RMSNorm and the output matrix of a GGUF file (kept quantized, as the file
// stores it), the next-token cross-entropy of hidden states and its gradient
// with respect to them. Each chunk of the vocabulary is one ggml graph run by
// ggml's CPU backend:
//   logits = W_c z      the quantized matrix times z, exactly as llama.cpp's own
//                       head computes it (ggml rounds z to the matrix's dot type)
//   p = softmax(logits) within the chunk
//   acc_c = W_c^T p     with a Q8_0 transposed copy of the matrix, made once at
//                       load (the vocabulary then is the product's inner axis)
// so no [tokens x vocabulary] tensor is held. The chunks are joined by their
// log-sum-exp; the target rows are dequantized by ggml's type traits.
//
// JavaScript:
//   new HeadLoss(modelPath, normEpsilon, threads)
//   load() -> Promise<{ vocabularySize, hiddenSize, type }>
//   run(y: Float32Array [n*d], targets: Int32Array [n], weights: Float32Array [n], wantGrad)
//     -> Promise<{ losses: Float32Array [n], grad?: Float32Array [n*d] }>
//   grad = d(sum_j weights_j * loss_j) / dy.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"

namespace mobillm {

struct HeadWeights {
  ggml_context* ctx = nullptr;
  ggml_backend_buffer_t buffer = nullptr;
  ggml_backend_t backend = nullptr;
  ggml_tensor* w = nullptr;       // [d, vocab], the file's type
  ggml_tensor* wT = nullptr;      // [vocab, d], Q8_0: the transpose, for the gradient's product over the vocabulary
  std::vector<float> norm;        // [d]
  int64_t d = 0, vocab = 0;
  ~HeadWeights();
};

class HeadLoss : public Napi::ObjectWrap<HeadLoss> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit HeadLoss(const Napi::CallbackInfo& info);

  // Worker-thread entry points.
  std::unique_ptr<HeadWeights> LoadWeights(std::string* error) const;
  bool Compute(const float* y, const int32_t* targets, const float* weights, int64_t n, bool wantGrad,
               float* losses, float* grad, std::string* error) const;

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

  std::string path_;
  float eps_ = 1e-6f;
  int threads_ = 1;
  bool busy_ = false;
  bool disposed_ = false;
  std::unique_ptr<HeadWeights> weights_;
};

}  // namespace mobillm
