#include "HeadLoss.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include "ggml-alloc.h"
#include "gguf.h"

#include "codedError.hpp"

namespace mobillm {

HeadWeights::~HeadWeights() {
  if (buffer != nullptr) ggml_backend_buffer_free(buffer);
  if (backend != nullptr) ggml_backend_free(backend);
  if (ctx != nullptr) ggml_free(ctx);
}

namespace {

// Reads `bytes` at `offset` of `path` into `out`.
bool readAt(const std::string& path, size_t offset, void* out, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "rb");
  bool ok = f != nullptr && fseeko(f, static_cast<off_t>(offset), SEEK_SET) == 0 && std::fread(out, 1, bytes, f) == bytes;
  if (f != nullptr) std::fclose(f);
  return ok;
}

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

}  // namespace

HeadLoss::HeadLoss(const Napi::CallbackInfo& info) : Napi::ObjectWrap<HeadLoss>(info) {
  path_ = info[0].As<Napi::String>().Utf8Value();
  eps_ = info[1].As<Napi::Number>().FloatValue();
  threads_ = std::max(1, info[2].As<Napi::Number>().Int32Value());
}

std::unique_ptr<HeadWeights> HeadLoss::LoadWeights(std::string* error) const {
  gguf_init_params gp = {true, nullptr};
  gguf_context* g = gguf_init_from_file(path_.c_str(), gp);
  if (g == nullptr) {
    *error = "The file is not a readable GGUF file.";
    return nullptr;
  }
  std::unique_ptr<gguf_context, void (*)(gguf_context*)> guard(g, gguf_free);
  int64_t wId = gguf_find_tensor(g, "output.weight");
  if (wId < 0) wId = gguf_find_tensor(g, "token_embd.weight");  // a model whose head is tied to its embedding
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
  ggml_init_params ip = {ggml_tensor_overhead() * 3, nullptr, true};
  hw->ctx = ggml_init(ip);
  hw->w = ggml_new_tensor_2d(hw->ctx, type, hw->d, hw->vocab);
  // Rows padded to whole Q8_0 blocks (zeros beyond the vocabulary).
  hw->wT = ggml_new_tensor_2d(hw->ctx, GGML_TYPE_Q8_0, (hw->vocab + 31) / 32 * 32, hw->d);
  hw->backend = cpuBackend(threads_);
  if (hw->ctx == nullptr || hw->backend == nullptr) {
    *error = "No ggml CPU backend for the head.";
    return nullptr;
  }
  hw->buffer = ggml_backend_alloc_ctx_tensors(hw->ctx, hw->backend);
  if (hw->buffer == nullptr || !ggml_backend_buffer_is_host(hw->buffer)) {
    *error = "Could not allocate the head.";
    return nullptr;
  }
  const size_t dataOffset = gguf_get_data_offset(g);
  if (!readAt(path_, dataOffset + gguf_get_tensor_offset(g, wId), hw->w->data, ggml_nbytes(hw->w))) {
    *error = "The head's data is cut short (truncated file).";
    return nullptr;
  }
  // The transpose, quantized to Q8_0 in slabs of vocabulary rows (each block of
  // 32 values of a W^T row comes from 32 consecutive vocabulary rows).
  {
    const int64_t slab = 4096;
    const ggml_type_traits* wTraits = ggml_get_type_traits(type);
    std::vector<float> rows(static_cast<size_t>(slab * hw->d)), cols(static_cast<size_t>(slab * hw->d));
    for (int64_t v0 = 0; v0 < hw->wT->ne[0]; v0 += slab) {
      const int64_t m = std::min(slab, hw->wT->ne[0] - v0);  // a multiple of 32
      const int64_t real = std::max<int64_t>(0, std::min(m, hw->vocab - v0));
      std::fill(rows.begin(), rows.end(), 0.0f);
      const auto* src = static_cast<const uint8_t*>(hw->w->data) + static_cast<size_t>(v0) * hw->w->nb[1];
      if (type == GGML_TYPE_F32) std::memcpy(rows.data(), src, static_cast<size_t>(real * hw->d) * sizeof(float));
      else wTraits->to_float(src, rows.data(), real * hw->d);
      for (int64_t v = 0; v < m; ++v)
        for (int64_t i = 0; i < hw->d; ++i) cols[static_cast<size_t>(i * m + v)] = rows[static_cast<size_t>(v * hw->d + i)];
      for (int64_t i = 0; i < hw->d; ++i) {
        auto* dst = static_cast<uint8_t*>(hw->wT->data) + static_cast<size_t>(i) * hw->wT->nb[1] + ggml_row_size(GGML_TYPE_Q8_0, v0);
        ggml_quantize_chunk(GGML_TYPE_Q8_0, cols.data() + i * m, dst, 0, 1, m, nullptr);
      }
    }
  }
  hw->norm.resize(static_cast<size_t>(hw->d));
  std::vector<uint8_t> raw(ggml_row_size(normType, hw->d));
  if (!readAt(path_, dataOffset + gguf_get_tensor_offset(g, nId), raw.data(), raw.size())) {
    *error = "The output norm's data is cut short (truncated file).";
    return nullptr;
  }
  if (normType == GGML_TYPE_F32) std::memcpy(hw->norm.data(), raw.data(), raw.size());
  else ggml_get_type_traits(normType)->to_float(raw.data(), hw->norm.data(), hw->d);
  return hw;
}

bool HeadLoss::Compute(const float* y, const int32_t* targets, const float* weights, int64_t n, bool wantGrad,
                       float* losses, float* grad, std::string* error) const {
  const HeadWeights& hw = *weights_;
  const int64_t d = hw.d, V = hw.vocab;
  // The final RMSNorm: z = y / rms(y) * norm.
  std::vector<float> z(static_cast<size_t>(n * d)), xhat(static_cast<size_t>(n * d)), inv(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(y[j * d + i]) * y[j * d + i];
    inv[j] = 1.0f / std::sqrt(static_cast<float>(ss / d) + eps_);
    for (int64_t i = 0; i < d; ++i) {
      xhat[j * d + i] = y[j * d + i] * inv[j];
      z[j * d + i] = xhat[j * d + i] * hw.norm[i];
    }
  }
  // Per token: running log-sum-exp R, the target's logit, and A = sum_v softmax_v W_v.
  std::vector<double> R(static_cast<size_t>(n), -std::numeric_limits<double>::infinity());
  std::vector<float> targetLogit(static_cast<size_t>(n), 0.0f);
  std::vector<float> A(wantGrad ? static_cast<size_t>(n * d) : 0, 0.0f);
  // About 2M logits per chunk: its work buffers stay near 50 MB at Qwen's width.
  const int64_t chunk = std::max<int64_t>(256, std::min<int64_t>(V, (int64_t{1} << 21) / std::max<int64_t>(n, 1))) / 32 * 32;
  for (int64_t v0 = 0; v0 < V; v0 += chunk) {
    const int64_t c = std::min(chunk, V - v0);
    ggml_init_params ip = {ggml_tensor_overhead() * 16 + ggml_graph_overhead(), nullptr, true};
    ggml_context* ctx = ggml_init(ip);
    ggml_tensor* zt = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, d, n);
    ggml_tensor* wc = ggml_view_2d(ctx, hw.w, d, c, hw.w->nb[1], static_cast<size_t>(v0) * hw.w->nb[1]);
    // The logits as llama.cpp computes them (the quantized matrix times z,
    // which ggml quantizes to the matrix's dot type).
    ggml_tensor* logits = ggml_mul_mat(ctx, wc, zt);  // [c, n]
    ggml_tensor* p = ggml_soft_max(ctx, logits);        // [c, n], within the chunk
    ggml_tensor* acc = nullptr;
    if (wantGrad) {
      // acc = W_c^T p: the transposed copy's columns of this chunk, in whole Q8_0
      // blocks (chunks start at multiples of 32; the last one's p is padded with zeros).
      const int64_t cp = (c + 31) / 32 * 32;
      ggml_tensor* wTc = ggml_view_2d(ctx, hw.wT, cp, d, hw.wT->nb[1], ggml_row_size(GGML_TYPE_Q8_0, v0));
      acc = ggml_mul_mat(ctx, wTc, cp == c ? p : ggml_pad(ctx, p, static_cast<int>(cp - c), 0, 0, 0));  // [d, n]
    }
    ggml_cgraph* gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, p);
    if (acc != nullptr) ggml_build_forward_expand(gf, acc);
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(ctx, hw.backend);
    if (buf == nullptr) {
      ggml_free(ctx);
      *error = "Could not allocate the head's work buffers.";
      return false;
    }
    std::memcpy(zt->data, z.data(), z.size() * sizeof(float));
    const bool ok = ggml_backend_graph_compute(hw.backend, gf) == GGML_STATUS_SUCCESS;
    if (ok) {
      const float* L = static_cast<const float*>(logits->data);
      const float* P = static_cast<const float*>(p->data);
      const float* Ac = acc != nullptr ? static_cast<const float*>(acc->data) : nullptr;
      for (int64_t j = 0; j < n; ++j) {
        const float* lj = L + j * c;
        // The chunk's log-sum-exp from its largest logit and ggml's softmax there: l_max - log p_max.
        int64_t best = 0;
        for (int64_t v = 1; v < c; ++v) if (lj[v] > lj[best]) best = v;
        const double lse = static_cast<double>(lj[best]) - std::log(static_cast<double>(P[j * c + best]));
        const int64_t t = targets[j];
        if (t >= v0 && t < v0 + c) targetLogit[j] = lj[t - v0];
        const double Rn = R[j] == -std::numeric_limits<double>::infinity() ? lse : std::max(R[j], lse) + std::log1p(std::exp(-std::fabs(R[j] - lse)));
        if (Ac != nullptr) {
          const float keep = static_cast<float>(std::exp(R[j] - Rn)), add = static_cast<float>(std::exp(lse - Rn));
          float* Aj = A.data() + j * d;
          for (int64_t i = 0; i < d; ++i) Aj[i] = Aj[i] * keep + Ac[j * d + i] * add;
        }
        R[j] = Rn;
      }
    }
    ggml_backend_buffer_free(buf);
    ggml_free(ctx);
    if (!ok) {
      *error = "ggml could not compute the head.";
      return false;
    }
  }
  for (int64_t j = 0; j < n; ++j) losses[j] = static_cast<float>(R[j] - targetLogit[j]);
  if (!wantGrad) return true;
  // dL/dz = w (A - W[target]); back through the RMSNorm to y.
  const ggml_type type = hw.w->type;
  const ggml_type_traits* traits = ggml_get_type_traits(type);
  std::vector<float> wt(static_cast<size_t>(d)), dn(static_cast<size_t>(d));
  for (int64_t j = 0; j < n; ++j) {
    const auto* row = static_cast<const uint8_t*>(hw.w->data) + static_cast<size_t>(targets[j]) * hw.w->nb[1];
    if (type == GGML_TYPE_F32) std::memcpy(wt.data(), row, d * sizeof(float));
    else traits->to_float(row, wt.data(), d);
    double dot = 0;
    for (int64_t i = 0; i < d; ++i) {
      dn[i] = weights[j] * (A[j * d + i] - wt[i]) * hw.norm[i];
      dot += static_cast<double>(dn[i]) * xhat[j * d + i];
    }
    const float mean = static_cast<float>(dot / d);
    for (int64_t i = 0; i < d; ++i) grad[j * d + i] = inv[j] * (dn[i] - xhat[j * d + i] * mean);
  }
  return true;
}

namespace {

class HeadLoadWorker : public Napi::AsyncWorker {
 public:
  HeadLoadWorker(Napi::Env env, HeadLoss* head, Napi::Object self)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), head_(head) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    std::string error;
    weights_ = head_->LoadWeights(&error);
    if (!weights_) SetError(error);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object info = Napi::Object::New(env);
    info.Set("vocabularySize", Napi::Number::New(env, static_cast<double>(weights_->vocab)));
    info.Set("hiddenSize", Napi::Number::New(env, static_cast<double>(weights_->d)));
    info.Set("type", Napi::String::New(env, ggml_type_name(weights_->w->type)));
    head_->Adopt(std::move(weights_));
    head_->SetBusy(false);
    deferred_.Resolve(info);
  }
  void OnError(const Napi::Error& e) override {
    head_->SetBusy(false);
    deferred_.Reject(codedError(Env(), "MODEL_LOAD_FAILED", e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  HeadLoss* head_;
  Napi::ObjectReference self_;
  std::unique_ptr<HeadWeights> weights_;
};

class HeadRunWorker : public Napi::AsyncWorker {
 public:
  HeadRunWorker(Napi::Env env, HeadLoss* head, Napi::Object self, std::vector<float> y, std::vector<int32_t> targets,
                std::vector<float> weights, bool wantGrad)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), head_(head), y_(std::move(y)),
        targets_(std::move(targets)), weights_(std::move(weights)), wantGrad_(wantGrad) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    const int64_t n = static_cast<int64_t>(targets_.size());
    losses_.resize(static_cast<size_t>(n));
    if (wantGrad_) grad_.resize(y_.size());
    std::string error;
    if (!head_->Compute(y_.data(), targets_.data(), weights_.data(), n, wantGrad_, losses_.data(), wantGrad_ ? grad_.data() : nullptr, &error)) {
      SetError(error);
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    head_->SetBusy(false);
    Napi::Object res = Napi::Object::New(env);
    Napi::Float32Array losses = Napi::Float32Array::New(env, losses_.size());
    std::memcpy(losses.Data(), losses_.data(), losses_.size() * sizeof(float));
    res.Set("losses", losses);
    if (wantGrad_) {
      Napi::Float32Array grad = Napi::Float32Array::New(env, grad_.size());
      std::memcpy(grad.Data(), grad_.data(), grad_.size() * sizeof(float));
      res.Set("grad", grad);
    }
    deferred_.Resolve(res);
  }
  void OnError(const Napi::Error& e) override {
    head_->SetBusy(false);
    deferred_.Reject(codedError(Env(), "DECODE_FAILED", e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  HeadLoss* head_;
  Napi::ObjectReference self_;
  std::vector<float> y_;
  std::vector<int32_t> targets_;
  std::vector<float> weights_;
  bool wantGrad_;
  std::vector<float> losses_, grad_;
};

}  // namespace

Napi::Function HeadLoss::Init(Napi::Env env) {
  return DefineClass(env, "HeadLoss", {
    InstanceMethod<&HeadLoss::Load>("load"),
    InstanceMethod<&HeadLoss::Run>("run"),
    InstanceMethod<&HeadLoss::Dispose>("dispose"),
  });
}

Napi::Value HeadLoss::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) {
    codedError(env, "DISPOSED", "The head was disposed; open it again to use it.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (busy_) {
    codedError(env, "BUSY", "The head is busy.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  busy_ = true;
  auto* w = new HeadLoadWorker(env, this, info.This().As<Napi::Object>());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value HeadLoss::Run(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) {
    codedError(env, "DISPOSED", "The head was disposed; open it again to use it.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (busy_ || !weights_) {
    codedError(env, busy_ ? "BUSY" : "NOT_LOADED", busy_ ? "The head is busy." : "Load the head first.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (!info[0].IsTypedArray() || !info[1].IsTypedArray() || !info[2].IsTypedArray()) {
    codedError(env, "BAD_ARGUMENT", "run(y: Float32Array, targets: Int32Array, weights: Float32Array, wantGrad)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float32Array y = info[0].As<Napi::Float32Array>();
  Napi::Int32Array t = info[1].As<Napi::Int32Array>();
  Napi::Float32Array w = info[2].As<Napi::Float32Array>();
  const size_t n = t.ElementLength();
  if (n == 0 || w.ElementLength() != n || y.ElementLength() != n * static_cast<size_t>(weights_->d)) {
    codedError(env, "BAD_ARGUMENT", "y must be [n][hiddenSize], targets and weights [n], n > 0.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  for (size_t j = 0; j < n; ++j) {
    if (t[j] < 0 || t[j] >= weights_->vocab) {
      codedError(env, "BAD_ARGUMENT", "A target id is outside the vocabulary.").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  busy_ = true;
  auto* worker = new HeadRunWorker(env, this, info.This().As<Napi::Object>(), std::vector<float>(y.Data(), y.Data() + y.ElementLength()),
                                   std::vector<int32_t>(t.Data(), t.Data() + n), std::vector<float>(w.Data(), w.Data() + n),
                                   info[3].ToBoolean().Value());
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

Napi::Value HeadLoss::Dispose(const Napi::CallbackInfo& info) {
  disposed_ = true;
  if (!busy_) weights_.reset();
  return info.Env().Undefined();
}

}  // namespace mobillm
