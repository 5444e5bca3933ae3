// MobiLLM native addon: a frozen llama.cpp backbone with per-layer activation
// capture (cb_eval on `l_out-<i>`), ggml dequantization of any GGUF tensor,
// and (later) side-network injection. Seen from TypeScript through
// extension/native/NativeAddon.ts only.
//
// Threading: every llama_decode runs on a libuv worker thread (AsyncWorker);
// the JavaScript thread only queues work and receives results. A Backbone has
// at most one job in flight; the TypeScript wrapper serialises calls.
// Ownership: a Backbone owns its llama_model and llama_context. dispose() frees
// them at once, or, when a job is in flight, as soon as that job completes.
// Any call after dispose() throws an error with code "DISPOSED".

#include <napi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

#include "SideNetwork.hpp"

namespace {

Napi::Error codedError(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

// What the eval callback needs for one decode. Owned by the worker that runs
// the decode; the Backbone points at it only while that decode runs.
struct CaptureState {
  int nLayer = 0;
  int nEmbd = 0;
  std::vector<int> slotOfLayer;      // [nLayer] -> slot index or -1
  std::vector<float*> destination;   // [slots] -> [rows][nEmbd] float32
  std::vector<size_t> rowsWritten;   // [slots]
  size_t rowsExpected = 0;           // tokens in the decode
  int lastWantedLayer = -1;
  bool stopAfterLastWanted = false;
  bool overflow = false;
  bool badShape = false;
  mobillm::SideRun* side = nullptr;  // the side network of this decode, if any
};

bool evalCallback(struct ggml_tensor* t, bool ask, void* userData) {
  CaptureState* st = *static_cast<CaptureState**>(userData);
  if (st == nullptr) return !ask;  // not capturing: want nothing, keep going
  if (std::strncmp(t->name, "l_out-", 6) != 0) return !ask;
  const int layer = std::atoi(t->name + 6);
  const bool inRange = layer >= 0 && layer < st->nLayer;
  const int slot = inRange && !st->slotOfLayer.empty() ? st->slotOfLayer[layer] : -1;
  const bool side = st->side != nullptr && layer >= 0 && layer < st->side->net->nLayer && st->side->net->slotOfLayer[layer] >= 0;
  if (ask) return slot >= 0 || side;
  if (slot < 0 && !side) return true;

  const int nEmbd = static_cast<int>(t->ne[0]);
  if (t->type != GGML_TYPE_F32 || (slot >= 0 && nEmbd != st->nEmbd) || !ggml_is_contiguous(t) ||
      t->buffer == nullptr || !ggml_backend_buffer_is_host(t->buffer)) {
    st->badShape = true;
    return false;
  }
  const size_t rows = static_cast<size_t>(t->ne[1]);
  if (slot >= 0) {
    if (st->rowsWritten[slot] + rows > st->rowsExpected) {
      st->overflow = true;
      return false;
    }
    std::memcpy(st->destination[slot] + st->rowsWritten[slot] * nEmbd, t->data, rows * nEmbd * sizeof(float));
    st->rowsWritten[slot] += rows;
  }
  if (side) {
    // Changing l_out-<L-1> in place is honoured: llama.cpp's own output norm
    // and head then run on h + delta.
    st->side->apply(layer, static_cast<float*>(t->data), static_cast<int>(rows));
  }
  // Returning false after the last wanted layer stops the graph: the rest of
  // the layers and the head are skipped. (Aborting instead would also skip the
  // logits copy, but llama.cpp then drops the micro-batch's KV entries, which
  // chunked decoding needs.)
  if (slot >= 0 && layer == st->lastWantedLayer && st->stopAfterLastWanted) return false;
  return true;
}

class DecodeWorker;

class Backbone : public Napi::ObjectWrap<Backbone> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Backbone",
                       {
                           InstanceMethod("load", &Backbone::Load),
                           InstanceMethod("info", &Backbone::Info),
                           InstanceMethod("tokenize", &Backbone::Tokenize),
                           InstanceMethod("tokenPiece", &Backbone::TokenPiece),
                           InstanceMethod("capture", &Backbone::Capture),
                           InstanceMethod("lossOf", &Backbone::LossOf),
                           InstanceMethod("logitsAfter", &Backbone::LogitsAfter),
                           InstanceMethod("setAdapter", &Backbone::SetAdapter),
                           InstanceMethod("clearAdapter", &Backbone::ClearAdapter),
                           InstanceMethod("dispose", &Backbone::Dispose),
                           InstanceAccessor("disposed", &Backbone::Disposed, nullptr),
                       });
  }

  explicit Backbone(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Backbone>(info) {}
  ~Backbone() override { FreeNative(); }

  // Called on the JavaScript thread by the load worker when it completes.
  void Adopt(llama_model* model, llama_context* ctx, uint32_t nCtx, uint32_t nBatch, uint32_t nSeqMax) {
    model_ = model;
    ctx_ = ctx;
    nCtx_ = nCtx;
    nBatch_ = nBatch;
    nSeqMax_ = nSeqMax;
  }
  void SetBusy(bool busy) {
    busy_ = busy;
    if (!busy_ && freePending_) FreeNative();
  }
  llama_model* model() const { return model_; }
  llama_context* ctx() const { return ctx_; }
  CaptureState** captureSlot() { return &active_; }
  const mobillm::SideNet* sideNet() const { return sideNet_.get(); }
  uint32_t nCtx() const { return nCtx_; }
  uint32_t nBatch() const { return nBatch_; }
  uint32_t nSeqMax() const { return nSeqMax_; }

 private:
  bool CheckUsable(Napi::Env env, bool needLoaded = true) {
    if (disposed_) {
      codedError(env, "DISPOSED", "The model was disposed; load it again to use it.")
          .ThrowAsJavaScriptException();
      return false;
    }
    if (needLoaded && model_ == nullptr) {
      codedError(env, "NOT_LOADED", "The model is not loaded yet.").ThrowAsJavaScriptException();
      return false;
    }
    return true;
  }

  void FreeNative() {
    if (ctx_ != nullptr) llama_free(ctx_);
    if (model_ != nullptr) llama_model_free(model_);
    ctx_ = nullptr;
    model_ = nullptr;
    freePending_ = false;
  }

  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Capture(const Napi::CallbackInfo& info);
  Napi::Value LossOf(const Napi::CallbackInfo& info);
  Napi::Value LogitsAfter(const Napi::CallbackInfo& info);
  Napi::Value Queue(std::unique_ptr<DecodeWorker> worker);

  bool CheckIdle(Napi::Env env) {
    if (!CheckUsable(env)) return false;
    if (busy_) {
      codedError(env, "BUSY", "A forward pass is already running on this backbone.").ThrowAsJavaScriptException();
      return false;
    }
    return true;
  }

  // setAdapter({ d, r, b, tappedLayers, adapterEps, gateTemperature, tensors: { name: Float32Array } })
  Napi::Value SetAdapter(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckIdle(env)) return env.Undefined();
    const Napi::Object o = info[0].As<Napi::Object>();
    auto net = std::make_unique<mobillm::SideNet>();
    net->d = o.Get("d").As<Napi::Number>().Int32Value();
    net->r = o.Get("r").As<Napi::Number>().Int32Value();
    net->b = o.Get("b").As<Napi::Number>().Int32Value();
    net->adapterEps = o.Get("adapterEps").As<Napi::Number>().FloatValue();
    const float temperature = o.Get("gateTemperature").As<Napi::Number>().FloatValue();
    net->nLayer = llama_model_n_layer(model_);
    const Napi::Array tapped = o.Get("tappedLayers").As<Napi::Array>();
    const Napi::Object tensors = o.Get("tensors").As<Napi::Object>();
    auto bad = [&](const std::string& msg) {
      codedError(env, "ADAPTER_MODEL_MISMATCH", msg).ThrowAsJavaScriptException();
      return env.Undefined();
    };
    if (net->d != llama_model_n_embd(model_) || net->r < 1 || net->b < 1 || temperature <= 0) return bad("The adapter's shape does not fit this model.");
    net->slotOfLayer.assign(static_cast<size_t>(net->nLayer), -1);
    int prev = -1;
    auto take = [&](const std::string& name, size_t n, std::vector<float>& dst) {
      Napi::Value v = tensors.Get(name);
      if (!v.IsTypedArray()) return false;
      Napi::Float32Array a = v.As<Napi::Float32Array>();
      if (a.ElementLength() != n) return false;
      dst.assign(a.Data(), a.Data() + n);
      return true;
    };
    for (uint32_t k = 0; k < tapped.Length(); ++k) {
      const int layer = tapped.Get(k).As<Napi::Number>().Int32Value();
      if (layer <= prev || layer >= net->nLayer) return bad("The adapter's tapped layers do not fit this model.");
      prev = layer;
      net->slotOfLayer[layer] = static_cast<int>(k);
      net->down.emplace_back();
      net->mid.emplace_back();
      net->up.emplace_back();
      std::vector<float> alpha;
      const std::string ks = std::to_string(k);
      if (!take("down." + ks, static_cast<size_t>(net->d) * net->r, net->down.back()) ||
          !take("mid." + ks, static_cast<size_t>(net->r) * net->b, net->mid.back()) ||
          !take("up." + ks, static_cast<size_t>(net->b) * net->r, net->up.back()) || !take("alpha." + ks, 1, alpha)) {
        return bad("The adapter's tensors do not match its shape.");
      }
      net->mu.push_back(1.0f / (1.0f + std::exp(-alpha[0] / temperature)));
    }
    if (prev != net->nLayer - 1) return bad("The adapter must tap the model's last layer.");
    if (!take("out", static_cast<size_t>(net->r) * net->d, net->out)) return bad("The adapter's tensors do not match its shape.");
    sideNet_ = std::move(net);
    return env.Undefined();
  }

  Napi::Value ClearAdapter(const Napi::CallbackInfo& info) {
    if (!CheckIdle(info.Env())) return info.Env().Undefined();
    sideNet_.reset();
    return info.Env().Undefined();
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckUsable(env)) return env.Undefined();
    Napi::Object out = Napi::Object::New(env);
    const llama_vocab* vocab = llama_model_get_vocab(model_);
    char buf[512];
    out.Set("nLayer", llama_model_n_layer(model_));
    out.Set("nEmbd", llama_model_n_embd(model_));
    out.Set("nHead", llama_model_n_head(model_));
    out.Set("nHeadKv", llama_model_n_head_kv(model_));
    out.Set("nCtxTrain", llama_model_n_ctx_train(model_));
    out.Set("nVocab", llama_vocab_n_tokens(vocab));
    out.Set("nParams", static_cast<double>(llama_model_n_params(model_)));
    out.Set("sizeBytes", static_cast<double>(llama_model_size(model_)));
    llama_model_desc(model_, buf, sizeof(buf));
    out.Set("description", std::string(buf));
    out.Set("addBos", llama_vocab_get_add_bos(vocab));
    out.Set("bos", llama_vocab_bos(vocab));
    out.Set("eos", llama_vocab_eos(vocab));
    out.Set("contextSize", nCtx_);
    out.Set("batchTokens", nBatch_);
    out.Set("maxSequences", nSeqMax_);
    return out;
  }

  Napi::Value Tokenize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckUsable(env)) return env.Undefined();
    const std::string text = info[0].As<Napi::String>().Utf8Value();
    const bool addSpecial = info.Length() > 1 && info[1].ToBoolean().Value();
    const llama_vocab* vocab = llama_model_get_vocab(model_);
    std::vector<llama_token> tokens(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), tokens.data(),
                               static_cast<int32_t>(tokens.size()), addSpecial, false);
    if (n < 0) {
      tokens.resize(static_cast<size_t>(-n));
      n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), tokens.data(),
                         static_cast<int32_t>(tokens.size()), addSpecial, false);
    }
    if (n < 0) {
      codedError(env, "TOKENIZE_FAILED", "The tokenizer could not encode the text.")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Napi::Int32Array out = Napi::Int32Array::New(env, static_cast<size_t>(n));
    std::memcpy(out.Data(), tokens.data(), static_cast<size_t>(n) * sizeof(int32_t));
    return out;
  }

  // The UTF-8 bytes a token renders to (special tokens render empty).
  Napi::Value TokenPiece(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckUsable(env)) return env.Undefined();
    const llama_vocab* vocab = llama_model_get_vocab(model_);
    const int32_t token = info[0].As<Napi::Number>().Int32Value();
    if (token < 0 || token >= llama_vocab_n_tokens(vocab)) {
      codedError(env, "BAD_TOKEN", "Token id out of range.").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    char buf[256];
    int32_t n = llama_token_to_piece(vocab, token, buf, sizeof(buf), 0, false);
    if (n < 0) n = 0;
    return Napi::Buffer<char>::Copy(env, buf, static_cast<size_t>(n));
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (disposed_) return info.Env().Undefined();
    disposed_ = true;
    if (busy_) {
      freePending_ = true;
    } else {
      FreeNative();
    }
    return info.Env().Undefined();
  }

  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }

  llama_model* model_ = nullptr;
  llama_context* ctx_ = nullptr;
  std::unique_ptr<mobillm::SideNet> sideNet_;
  CaptureState* active_ = nullptr;
  uint32_t nCtx_ = 0;
  uint32_t nBatch_ = 0;
  uint32_t nSeqMax_ = 0;
  bool busy_ = false;
  bool disposed_ = false;
  bool freePending_ = false;
};

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, Backbone* bb, Napi::Object self, std::string path, uint32_t nCtx,
             uint32_t nBatch, uint32_t nSeqMax, int32_t nThreads, bool flashAttention)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        bb_(bb),
        path_(std::move(path)),
        nCtx_(nCtx),
        nBatch_(nBatch),
        nSeqMax_(nSeqMax),
        nThreads_(nThreads),
        flashAttention_(flashAttention) {
    self_ = Napi::Persistent(self);
    captureSlot_ = bb->captureSlot();
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    model_ = llama_model_load_from_file(path_.c_str(), mp);
    if (model_ == nullptr) {
      code_ = "MODEL_LOAD_FAILED";
      SetError("llama.cpp could not load the model file (unsupported or damaged GGUF).");
      return;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = nCtx_;
    cp.n_batch = nBatch_;
    cp.n_ubatch = nBatch_;  // one micro-batch per decode: rows come back in batch order
    cp.n_seq_max = nSeqMax_;
    cp.kv_unified = true;
    // f32 keys/values: captured activations then match a float reference to
    // ~1e-6 (an f16 cache rounds them at ~1e-3). Costs 2x the (small) KV memory.
    // Flash attention (llama.cpp's default "auto") rounds Q to f16 on the CPU
    // (~1e-3 error); without it a float reference matches to ~1e-6.
    cp.flash_attn_type = flashAttention_ ? LLAMA_FLASH_ATTN_TYPE_AUTO : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.n_threads = nThreads_;
    cp.n_threads_batch = nThreads_;
    cp.cb_eval = evalCallback;
    cp.cb_eval_user_data = captureSlot_;
    cp.no_perf = true;
    ctx_ = llama_init_from_model(model_, cp);
    if (ctx_ == nullptr) {
      llama_model_free(model_);
      model_ = nullptr;
      code_ = "CONTEXT_FAILED";
      SetError("llama.cpp could not create a context (out of memory, or context too large).");
    }
  }
  void OnOK() override {
    bb_->Adopt(model_, ctx_, llama_n_ctx(ctx_), nBatch_, nSeqMax_);
    bb_->SetBusy(false);
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    bb_->SetBusy(false);
    deferred_.Reject(codedError(Env(), code_, e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Backbone* bb_;
  Napi::ObjectReference self_;
  CaptureState** captureSlot_;
  std::string path_;
  uint32_t nCtx_, nBatch_, nSeqMax_;
  int32_t nThreads_;
  bool flashAttention_;
  llama_model* model_ = nullptr;
  llama_context* ctx_ = nullptr;
  const char* code_ = "MODEL_LOAD_FAILED";
};

Napi::Value Backbone::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckUsable(env, false)) return env.Undefined();
  if (model_ != nullptr || busy_) {
    codedError(env, "ALREADY_LOADED", "This backbone already holds a model.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const Napi::Object opts = info[1].As<Napi::Object>();
  const uint32_t nCtx = opts.Get("contextSize").As<Napi::Number>().Uint32Value();
  const uint32_t nSeqMax = opts.Get("maxSequences").As<Napi::Number>().Uint32Value();
  const uint32_t nBatch = std::min(nCtx, opts.Get("batchTokens").As<Napi::Number>().Uint32Value());
  const int32_t nThreads = opts.Get("threads").As<Napi::Number>().Int32Value();
  const bool flashAttention = opts.Get("flashAttention").ToBoolean().Value();
  auto* worker = new LoadWorker(env, this, info.This().As<Napi::Object>(), path, nCtx, nBatch, nSeqMax, nThreads, flashAttention);
  busy_ = true;
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

// What one decode job computes.
enum class DecodeMode { Capture, Loss, Logits };

// Runs llama_decode over sequences on a worker thread, in chunks of at most
// nBatch tokens (positions continuing within each sequence; the KV cache
// carries the context between chunks). Chunking bounds llama.cpp's output
// buffer, which it sizes n_outputs x n_vocab floats and zero-fills.
//   Capture: copies the wanted layers of every token (see CaptureState).
//   Loss:    next-token cross-entropy of every token against `targets`.
//   Logits:  one sequence continuing at `startPos`; returns the last token's logits.
// When the backbone holds a side network, it runs inside the same decode.
class DecodeWorker : public Napi::AsyncWorker {
 public:
  DecodeWorker(Napi::Env env, Backbone* bb, Napi::Object self, DecodeMode mode)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), bb_(bb), mode_(mode) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

  std::vector<std::vector<llama_token>> sequences;
  std::vector<std::vector<llama_token>> targets;  // Loss mode
  std::vector<Napi::ObjectReference> keepAlive;
  CaptureState state;
  bool needLastLayer = false;
  int32_t startPos = 0;      // Logits mode
  bool keepMemory = false;   // Logits mode: continue the previous call's sequence

  void Execute() override {
    const auto started = std::chrono::steady_clock::now();
    Decode();
    seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }

  void Decode() {
    llama_context* ctx = bb_->ctx();
    const mobillm::SideNet* net = bb_->sideNet();
    const int32_t nVocab = llama_vocab_n_tokens(llama_model_get_vocab(bb_->model()));
    const int32_t chunk = static_cast<int32_t>(bb_->nBatch());
    const bool allOutputs = (mode_ == DecodeMode::Capture && needLastLayer) || mode_ == DecodeMode::Loss;
    llama_batch batch = llama_batch_init(chunk, 0, 1);
    if (!keepMemory) llama_memory_clear(llama_get_memory(ctx), true);
    mobillm::SideRun side;
    if (mode_ == DecodeMode::Capture) state.side = nullptr;
    *bb_->captureSlot() = &state;
    int32_t rc = 0;
    size_t s = 0, t = 0;
    while (rc == 0 && s < sequences.size()) {
      int32_t n = 0;
      std::vector<int> outputRows;
      std::vector<llama_token> chunkTargets;
      while (n < chunk && s < sequences.size()) {
        const auto& seq = sequences[s];
        const bool isOutput = allOutputs || t + 1 == seq.size();
        batch.token[n] = seq[t];
        batch.pos[n] = static_cast<llama_pos>(t) + (mode_ == DecodeMode::Logits ? startPos : 0);
        batch.n_seq_id[n] = 1;
        batch.seq_id[n][0] = static_cast<llama_seq_id>(s);
        batch.logits[n] = isOutput ? 1 : 0;
        if (isOutput) outputRows.push_back(n);
        if (mode_ == DecodeMode::Loss) chunkTargets.push_back(targets[s][t]);
        ++n;
        if (++t == seq.size()) {
          ++s;
          t = 0;
        }
      }
      batch.n_tokens = n;
      if (net != nullptr && mode_ != DecodeMode::Capture) {
        side.reset(net, n, outputRows);
        state.side = &side;
      }
      rc = llama_decode(ctx, batch);
      if (rc == 0 && mode_ == DecodeMode::Loss) {
        for (int32_t j = 0; j < n; ++j) {
          const float* logits = llama_get_logits_ith(ctx, j);
          float mx = logits[0];
          for (int32_t v = 1; v < nVocab; ++v) mx = std::max(mx, logits[v]);
          double sum = 0;
          for (int32_t v = 0; v < nVocab; ++v) sum += std::exp(static_cast<double>(logits[v] - mx));
          lossSum_ += std::log(sum) + mx - logits[chunkTargets[j]];
          ++lossTokens_;
        }
      }
    }
    if (rc == 0 && mode_ == DecodeMode::Logits) {
      const float* logits = llama_get_logits_ith(ctx, -1);
      lastLogits_.assign(logits, logits + nVocab);
    }
    *bb_->captureSlot() = nullptr;
    if (mode_ != DecodeMode::Logits) llama_memory_clear(llama_get_memory(ctx), true);
    llama_batch_free(batch);
    if (rc != 0) {
      code_ = "DECODE_FAILED";
      SetError("llama_decode failed with status " + std::to_string(rc) + ".");
      return;
    }
    if (state.badShape || state.overflow) {
      code_ = "CAPTURE_FAILED";
      SetError("A captured layer had an unexpected shape.");
      return;
    }
    for (size_t k = 0; k < state.rowsWritten.size(); ++k) {
      if (state.rowsWritten[k] != state.rowsExpected) {
        code_ = "CAPTURE_FAILED";
        SetError("A captured layer returned " + std::to_string(state.rowsWritten[k]) + " rows, expected " +
                 std::to_string(state.rowsExpected) + ".");
        return;
      }
    }
  }

  void OnOK() override {
    bb_->SetBusy(false);
    Napi::Env env = Env();
    switch (mode_) {
      case DecodeMode::Capture:
        deferred_.Resolve(Napi::Number::New(env, seconds_));  // seconds on the worker thread
        break;
      case DecodeMode::Loss: {
        Napi::Object r = Napi::Object::New(env);
        r.Set("lossSum", lossSum_);
        r.Set("tokens", static_cast<double>(lossTokens_));
        r.Set("seconds", seconds_);
        deferred_.Resolve(r);
        break;
      }
      case DecodeMode::Logits: {
        Napi::Float32Array out = Napi::Float32Array::New(env, lastLogits_.size());
        std::memcpy(out.Data(), lastLogits_.data(), lastLogits_.size() * sizeof(float));
        deferred_.Resolve(out);
        break;
      }
    }
  }
  void OnError(const Napi::Error& e) override {
    bb_->SetBusy(false);
    deferred_.Reject(codedError(Env(), code_, e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Backbone* bb_;
  Napi::ObjectReference self_;
  DecodeMode mode_;
  double seconds_ = 0;
  double lossSum_ = 0;
  size_t lossTokens_ = 0;
  std::vector<float> lastLogits_;
  const char* code_ = "DECODE_FAILED";
};

// Reads sequences (Int32Array[]) into the worker, validating token ids.
bool readSequences(Napi::Env env, const Napi::Array& seqs, int nVocab, uint32_t maxSeq, std::vector<std::vector<llama_token>>& out, size_t& total) {
  total = 0;
  if (seqs.Length() == 0 || seqs.Length() > maxSeq) {
    codedError(env, "BAD_ARGUMENT", "Sequence count out of range.").ThrowAsJavaScriptException();
    return false;
  }
  for (uint32_t s = 0; s < seqs.Length(); ++s) {
    Napi::Int32Array a = seqs.Get(s).As<Napi::Int32Array>();
    if (a.ElementLength() == 0) {
      codedError(env, "EMPTY_INPUT", "A sequence has no tokens.").ThrowAsJavaScriptException();
      return false;
    }
    std::vector<llama_token> seq(a.Data(), a.Data() + a.ElementLength());
    for (llama_token t : seq) {
      if (t < 0 || t >= nVocab) {
        codedError(env, "BAD_TOKEN", "A token id is outside the vocabulary.").ThrowAsJavaScriptException();
        return false;
      }
    }
    total += seq.size();
    out.push_back(std::move(seq));
  }
  return true;
}

// capture(sequences: Int32Array[], layers: Int32Array, outputs: Float32Array[],
//         stopEarly: boolean): Promise<number>
// outputs[k] receives layer layers[k] as [sum of sequence lengths][nEmbd],
// sequences concatenated in order. The caller validates sizes; this checks them
// again because a wrong size here would write out of bounds. Captures always
// run the plain backbone (no side network).
Napi::Value Backbone::Capture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckIdle(env)) return env.Undefined();
  const Napi::Array seqs = info[0].As<Napi::Array>();
  const Napi::Int32Array layers = info[1].As<Napi::Int32Array>();
  const Napi::Array outs = info[2].As<Napi::Array>();
  const bool stopEarly = info[3].ToBoolean().Value();

  const int nLayer = llama_model_n_layer(model_);
  const int nEmbd = llama_model_n_embd(model_);
  const int nVocab = llama_vocab_n_tokens(llama_model_get_vocab(model_));
  std::unique_ptr<DecodeWorker> worker(new DecodeWorker(env, this, info.This().As<Napi::Object>(), DecodeMode::Capture));
  auto fail = [&](const char* code, const std::string& msg) {
    codedError(env, code, msg).ThrowAsJavaScriptException();
    return env.Undefined();
  };
  size_t total = 0;
  if (!readSequences(env, seqs, nVocab, nSeqMax_, worker->sequences, total)) return env.Undefined();
  if (total > nCtx_) return fail("CONTEXT_OVERFLOW", "The batch has more tokens than the context holds.");

  CaptureState& st = worker->state;
  st.nLayer = nLayer;
  st.nEmbd = nEmbd;
  st.slotOfLayer.assign(static_cast<size_t>(nLayer), -1);
  st.rowsExpected = total;
  if (layers.ElementLength() != outs.Length()) return fail("BAD_ARGUMENT", "One output per layer is needed.");
  for (size_t k = 0; k < layers.ElementLength(); ++k) {
    const int layer = layers[k];
    if (layer < 0 || layer >= nLayer) return fail("LAYER_OUT_OF_RANGE", "Layer index out of range.");
    if (st.slotOfLayer[layer] >= 0) return fail("BAD_ARGUMENT", "A layer is listed twice.");
    Napi::Float32Array out = outs.Get(static_cast<uint32_t>(k)).As<Napi::Float32Array>();
    if (out.ElementLength() != total * static_cast<size_t>(nEmbd))
      return fail("BAD_ARGUMENT", "An output buffer has the wrong size.");
    st.slotOfLayer[layer] = static_cast<int>(k);
    st.destination.push_back(out.Data());
    st.rowsWritten.push_back(0);
    worker->keepAlive.push_back(Napi::Persistent(out.As<Napi::Object>()));
    if (layer > st.lastWantedLayer) st.lastWantedLayer = layer;
  }
  st.stopAfterLastWanted = stopEarly;
  worker->needLastLayer = st.lastWantedLayer == nLayer - 1;
  return Queue(std::move(worker));
}

// lossOf(sequences: Int32Array[], targets: Int32Array[]): Promise<{lossSum, tokens, seconds}>
// Next-token cross-entropy of every token (with the side network when one is set).
Napi::Value Backbone::LossOf(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckIdle(env)) return env.Undefined();
  const int nVocab = llama_vocab_n_tokens(llama_model_get_vocab(model_));
  std::unique_ptr<DecodeWorker> worker(new DecodeWorker(env, this, info.This().As<Napi::Object>(), DecodeMode::Loss));
  size_t total = 0, totalTargets = 0;
  if (!readSequences(env, info[0].As<Napi::Array>(), nVocab, nSeqMax_, worker->sequences, total)) return env.Undefined();
  if (!readSequences(env, info[1].As<Napi::Array>(), nVocab, nSeqMax_, worker->targets, totalTargets)) return env.Undefined();
  if (totalTargets != total || worker->targets.size() != worker->sequences.size()) {
    codedError(env, "BAD_ARGUMENT", "One target per input token is needed.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  for (size_t i = 0; i < worker->sequences.size(); ++i) {
    if (worker->targets[i].size() != worker->sequences[i].size()) {
      codedError(env, "BAD_ARGUMENT", "One target per input token is needed.").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  if (total > nCtx_) {
    codedError(env, "CONTEXT_OVERFLOW", "The batch has more tokens than the context holds.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Queue(std::move(worker));
}

// logitsAfter(tokens: Int32Array, startPos: number): Promise<Float32Array>
// Continues sequence 0 at startPos (0 starts afresh) and returns the logits of
// the last token. Used for generation.
Napi::Value Backbone::LogitsAfter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckIdle(env)) return env.Undefined();
  const int nVocab = llama_vocab_n_tokens(llama_model_get_vocab(model_));
  std::unique_ptr<DecodeWorker> worker(new DecodeWorker(env, this, info.This().As<Napi::Object>(), DecodeMode::Logits));
  Napi::Array one = Napi::Array::New(env, 1);
  one.Set(0u, info[0]);
  size_t total = 0;
  if (!readSequences(env, one, nVocab, 1, worker->sequences, total)) return env.Undefined();
  const int64_t startPos = info[1].As<Napi::Number>().Int64Value();
  if (startPos < 0 || static_cast<uint64_t>(startPos) + total > nCtx_) {
    codedError(env, "CONTEXT_OVERFLOW", "The text does not fit the context.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  worker->startPos = static_cast<int32_t>(startPos);
  worker->keepMemory = startPos > 0;
  return Queue(std::move(worker));
}

Napi::Value Backbone::Queue(std::unique_ptr<DecodeWorker> worker) {
  busy_ = true;
  Napi::Promise p = worker->Promise();
  worker.release()->Queue();
  return p;
}

// readTensor(path, name, rowStart?, rowCount?) -> { shape: number[], type: string, data: Float32Array }
// Reads a tensor of a GGUF file and converts it to float32 with ggml's own
// type traits (so quantized tensors are dequantized exactly as llama.cpp does).
// Rows are the outermost dimension (ne[1] for a matrix).
Napi::Value ReadTensor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  const std::string name = info[1].As<Napi::String>().Utf8Value();
  gguf_init_params gp = {true, nullptr};
  gguf_context* g = gguf_init_from_file(path.c_str(), gp);
  if (g == nullptr) {
    codedError(env, "BAD_GGUF", "The file is not a readable GGUF file.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::unique_ptr<gguf_context, void (*)(gguf_context*)> guard(g, gguf_free);
  const int64_t id = gguf_find_tensor(g, name.c_str());
  if (id < 0) {
    codedError(env, "NO_SUCH_TENSOR", "The model has no tensor named " + name + ".").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const ggml_type type = gguf_get_tensor_type(g, id);
  const int64_t* ne = gguf_get_tensor_ne(g, id);
  const int64_t rowLen = ne[0];
  int64_t nRows = 1;
  for (int d = 1; d < GGML_MAX_DIMS; ++d) nRows *= ne[d];
  int64_t rowStart = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int64Value() : 0;
  int64_t rowCount = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Int64Value() : nRows - rowStart;
  if (rowStart < 0 || rowCount < 0 || rowStart + rowCount > nRows) {
    codedError(env, "BAD_ARGUMENT", "Row range out of bounds.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const size_t rowBytes = ggml_row_size(type, rowLen);
  const ggml_type_traits* traits = ggml_get_type_traits(type);
  if (type != GGML_TYPE_F32 && (traits == nullptr || traits->to_float == nullptr)) {
    codedError(env, "UNSUPPORTED_TYPE", "No float conversion for this tensor type.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const size_t offset = gguf_get_data_offset(g) + gguf_get_tensor_offset(g, id) + static_cast<size_t>(rowStart) * rowBytes;
  std::vector<uint8_t> raw(static_cast<size_t>(rowCount) * rowBytes);
  FILE* f = std::fopen(path.c_str(), "rb");
  bool ok = f != nullptr && fseeko(f, static_cast<off_t>(offset), SEEK_SET) == 0 &&
            std::fread(raw.data(), 1, raw.size(), f) == raw.size();
  if (f != nullptr) std::fclose(f);
  if (!ok) {
    codedError(env, "TRUNCATED_GGUF", "The tensor data is cut short (truncated file).").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Float32Array out = Napi::Float32Array::New(env, static_cast<size_t>(rowCount * rowLen));
  if (type == GGML_TYPE_F32) {
    std::memcpy(out.Data(), raw.data(), raw.size());
  } else {
    traits->to_float(raw.data(), out.Data(), rowCount * rowLen);
  }
  Napi::Array shape = Napi::Array::New(env);
  uint32_t nd = 0;
  for (int d = 0; d < GGML_MAX_DIMS; ++d) {
    if (d == 0 || ne[d] > 1) shape.Set(nd++, Napi::Number::New(env, static_cast<double>(ne[d])));
  }
  Napi::Object res = Napi::Object::New(env);
  res.Set("shape", shape);
  res.Set("type", Napi::String::New(env, ggml_type_name(type)));
  res.Set("data", out);
  return res;
}

// ensureBackends(libDir): registers ggml's CPU backend unless one is already
// registered (node-llama-cpp registers it when it is loaded first).
Napi::Value EnsureBackends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  static std::atomic<bool> initialised{false};
  if (!initialised.exchange(true)) llama_backend_init();
  if (ggml_backend_dev_count() == 0) {
    const std::string dir = info[0].As<Napi::String>().Utf8Value();
    ggml_backend_load_all_from_path(dir.c_str());
  }
  const size_t n = ggml_backend_dev_count();
  if (n == 0) {
    codedError(env, "NO_BACKEND", "No ggml CPU backend could be loaded.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Object InitAll(Napi::Env env, Napi::Object exports) {
  exports.Set("Backbone", Backbone::Init(env));
  exports.Set("readTensor", Napi::Function::New(env, ReadTensor));
  exports.Set("ensureBackends", Napi::Function::New(env, EnsureBackends));
  return exports;
}

}  // namespace

NODE_API_MODULE(mobillm, InitAll)
