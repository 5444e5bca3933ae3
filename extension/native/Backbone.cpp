// The Backbone object: state, model queries and the adapter slot. The decode
// entry points (capture, lossOf, logitsAfter) are in BackboneDecode.cpp.
#include "Backbone.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "LoadWorker.hpp"
#include "codedError.hpp"
#include "readSideNet.hpp"

namespace mobillm {

Napi::Function Backbone::Init(Napi::Env env) {
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
                         InstanceMethod("cancel", &Backbone::Cancel),
                         InstanceAccessor("disposed", &Backbone::Disposed, nullptr),
                     });
}

bool Backbone::CheckUsable(Napi::Env env, bool needLoaded) {
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

bool Backbone::CheckIdle(Napi::Env env) {
  if (!CheckUsable(env)) return false;
  if (busy_) {
    codedError(env, "BUSY", "A forward pass is already running on this backbone.").ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

void Backbone::FreeNative() {
  if (ctx_ != nullptr) llama_free(ctx_);
  if (model_ != nullptr) llama_model_free(model_);
  ctx_ = nullptr;
  model_ = nullptr;
  freePending_ = false;
}

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

// setAdapter({ d, r, b, tappedLayers, adapterEps, gateTemperature, tensors: { name: Float32Array } })
Napi::Value Backbone::SetAdapter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckIdle(env)) return env.Undefined();
  std::unique_ptr<SideNet> net = readSideNet(env, info[0], model_);
  if (net) {
    sideNet_ = std::move(net);
    sideCache_.clear();
  }
  return env.Undefined();
}

Napi::Value Backbone::ClearAdapter(const Napi::CallbackInfo& info) {
  if (!CheckIdle(info.Env())) return info.Env().Undefined();
  sideNet_.reset();
  sideCache_.clear();
  return info.Env().Undefined();
}

Napi::Value Backbone::Info(const Napi::CallbackInfo& info) {
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
  // Fill-in-the-middle tokens as llama.cpp reads them (metadata, or known texts), -1 when absent.
  out.Set("fimPre", llama_vocab_fim_pre(vocab));
  out.Set("fimSuf", llama_vocab_fim_suf(vocab));
  out.Set("fimMid", llama_vocab_fim_mid(vocab));
  out.Set("contextSize", nCtx_);
  out.Set("batchTokens", nBatch_);
  out.Set("maxSequences", nSeqMax_);
  return out;
}

Napi::Value Backbone::Tokenize(const Napi::CallbackInfo& info) {
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
Napi::Value Backbone::TokenPiece(const Napi::CallbackInfo& info) {
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

Napi::Value Backbone::Dispose(const Napi::CallbackInfo& info) {
  if (disposed_) return info.Env().Undefined();
  disposed_ = true;
  if (busy_) {
    freePending_ = true;
  } else {
    FreeNative();
  }
  return info.Env().Undefined();
}

}  // namespace mobillm
