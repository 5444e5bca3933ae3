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
};

bool evalCallback(struct ggml_tensor* t, bool ask, void* userData) {
  CaptureState* st = *static_cast<CaptureState**>(userData);
  if (st == nullptr) return !ask;  // not capturing: want nothing, keep going
  if (std::strncmp(t->name, "l_out-", 6) != 0) return !ask;
  const int layer = std::atoi(t->name + 6);
  const int slot = (layer >= 0 && layer < st->nLayer) ? st->slotOfLayer[layer] : -1;
  if (ask) return slot >= 0;
  if (slot < 0) return true;

  if (t->type != GGML_TYPE_F32 || t->ne[0] != st->nEmbd) {
    st->badShape = true;
    return false;
  }
  const size_t rows = static_cast<size_t>(t->ne[1]);
  if (st->rowsWritten[slot] + rows > st->rowsExpected) {
    st->overflow = true;
    return false;
  }
  float* dst = st->destination[slot] + st->rowsWritten[slot] * st->nEmbd;
  const size_t bytes = rows * st->nEmbd * sizeof(float);
  if (t->buffer != nullptr && ggml_backend_buffer_is_host(t->buffer) && ggml_is_contiguous(t)) {
    std::memcpy(dst, t->data, bytes);
  } else {
    ggml_backend_tensor_get(t, dst, 0, bytes);
  }
  st->rowsWritten[slot] += rows;
  // Returning false after the last wanted layer stops the graph: the rest of
  // the layers and the head are skipped. (Aborting instead would also skip the
  // logits copy, but llama.cpp then drops the micro-batch's KV entries, which
  // chunked decoding needs.)
  if (layer == st->lastWantedLayer && st->stopAfterLastWanted) return false;
  return true;
}

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

class CaptureWorker : public Napi::AsyncWorker {
 public:
  CaptureWorker(Napi::Env env, Backbone* bb, Napi::Object self)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), bb_(bb) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

  std::vector<std::vector<llama_token>> sequences;
  std::vector<Napi::ObjectReference> keepAlive;
  CaptureState state;
  bool needLastLayer = false;

  void Execute() override {
    const auto started = std::chrono::steady_clock::now();
    ExecuteDecode();
    seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }

  void ExecuteDecode() {
    llama_context* ctx = bb_->ctx();
    // Decode in chunks of at most nBatch tokens, positions continuing within
    // each sequence (the KV cache carries the context between chunks). This
    // bounds llama.cpp's output buffer, which it sizes n_outputs x n_vocab
    // floats and zero-fills: with the last layer captured, every token is an
    // output.
    const int32_t chunk = static_cast<int32_t>(bb_->nBatch());
    llama_batch batch = llama_batch_init(chunk, 0, 1);
    llama_memory_clear(llama_get_memory(ctx), true);
    *bb_->captureSlot() = &state;
    int32_t rc = 0;
    size_t s = 0, t = 0;
    while (rc == 0 && s < sequences.size()) {
      int32_t n = 0;
      while (n < chunk && s < sequences.size()) {
        const auto& seq = sequences[s];
        batch.token[n] = seq[t];
        batch.pos[n] = static_cast<llama_pos>(t);
        batch.n_seq_id[n] = 1;
        batch.seq_id[n][0] = static_cast<llama_seq_id>(s);
        // The last layer is computed for output rows only: ask for every row
        // when it is captured, otherwise for the last token of each sequence.
        batch.logits[n] = (needLastLayer || t + 1 == seq.size()) ? 1 : 0;
        ++n;
        if (++t == seq.size()) {
          ++s;
          t = 0;
        }
      }
      batch.n_tokens = n;
      rc = llama_decode(ctx, batch);
    }
    *bb_->captureSlot() = nullptr;
    llama_memory_clear(llama_get_memory(ctx), true);
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
    for (size_t s = 0; s < state.rowsWritten.size(); ++s) {
      if (state.rowsWritten[s] != state.rowsExpected) {
        code_ = "CAPTURE_FAILED";
        SetError("A captured layer returned " + std::to_string(state.rowsWritten[s]) + " rows, expected " +
                 std::to_string(state.rowsExpected) + ".");
        return;
      }
    }
  }
  // Resolves with the seconds the decode took on the worker thread.
  void OnOK() override {
    bb_->SetBusy(false);
    deferred_.Resolve(Napi::Number::New(Env(), seconds_));
  }
  void OnError(const Napi::Error& e) override {
    bb_->SetBusy(false);
    deferred_.Reject(codedError(Env(), code_, e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Backbone* bb_;
  Napi::ObjectReference self_;
  double seconds_ = 0;
  const char* code_ = "CAPTURE_FAILED";
};

// capture(sequences: Int32Array[], layers: Int32Array, outputs: Float32Array[],
//         stopEarly: boolean): Promise<void>
// outputs[k] receives layer layers[k] as [sum of sequence lengths][nEmbd],
// sequences concatenated in order. The caller validates sizes; this checks them
// again because a wrong size here would write out of bounds.
Napi::Value Backbone::Capture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckUsable(env)) return env.Undefined();
  if (busy_) {
    codedError(env, "BUSY", "A forward pass is already running on this backbone.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const Napi::Array seqs = info[0].As<Napi::Array>();
  const Napi::Int32Array layers = info[1].As<Napi::Int32Array>();
  const Napi::Array outs = info[2].As<Napi::Array>();
  const bool stopEarly = info[3].ToBoolean().Value();

  const int nLayer = llama_model_n_layer(model_);
  const int nEmbd = llama_model_n_embd(model_);
  const int nVocab = llama_vocab_n_tokens(llama_model_get_vocab(model_));
  auto* worker = new CaptureWorker(env, this, info.This().As<Napi::Object>());
  auto fail = [&](const char* code, const std::string& msg) {
    delete worker;
    codedError(env, code, msg).ThrowAsJavaScriptException();
    return env.Undefined();
  };

  size_t total = 0;
  if (seqs.Length() == 0 || seqs.Length() > nSeqMax_) return fail("BAD_ARGUMENT", "Sequence count out of range.");
  for (uint32_t s = 0; s < seqs.Length(); ++s) {
    Napi::Int32Array a = seqs.Get(s).As<Napi::Int32Array>();
    if (a.ElementLength() == 0) return fail("EMPTY_INPUT", "A sequence has no tokens.");
    std::vector<llama_token> seq(a.Data(), a.Data() + a.ElementLength());
    for (llama_token t : seq) {
      if (t < 0 || t >= nVocab) return fail("BAD_TOKEN", "A token id is outside the vocabulary.");
    }
    total += seq.size();
    worker->sequences.push_back(std::move(seq));
  }
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

  busy_ = true;
  Napi::Promise p = worker->Promise();
  worker->Queue();
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
