#include "quantize.hpp"

#include <algorithm>
#include <string>

#include "codedError.hpp"
#include "llama.h"

namespace mobillm {

namespace {

class QuantizeWorker : public Napi::AsyncWorker {
 public:
  QuantizeWorker(Napi::Env env, std::string input, std::string output, llama_ftype fileType, int threads)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), input_(std::move(input)), output_(std::move(output)), fileType_(fileType), threads_(threads) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    llama_model_quantize_params params = llama_model_quantize_default_params();
    params.ftype = fileType_;
    params.nthread = threads_;
    failed_ = llama_model_quantize(input_.c_str(), output_.c_str(), &params) != 0;
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (failed_) {
      deferred_.Reject(codedError(env, "MODEL_LOAD_FAILED", "llama.cpp could not quantize the model (unreadable or unsupported GGUF, or the output could not be written).").Value());
      return;
    }
    deferred_.Resolve(env.Undefined());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string input_, output_;
  llama_ftype fileType_;
  int threads_;
  bool failed_ = false;
};

}  // namespace

Napi::Value QuantizeModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsObject()) {
    codedError(env, "BAD_ARGUMENT", "quantizeModel(input, output, { fileType, threads }) takes two paths and the options.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Object o = info[2].As<Napi::Object>();
  const Napi::Value fileType = o.Get("fileType");
  const Napi::Value threads = o.Get("threads");
  if (!fileType.IsNumber() || !threads.IsNumber()) {
    codedError(env, "BAD_ARGUMENT", "quantizeModel needs a numeric fileType (llama_ftype) and threads.").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto* worker = new QuantizeWorker(env, info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value(),
                                    static_cast<llama_ftype>(fileType.As<Napi::Number>().Int32Value()), std::max(1, threads.As<Napi::Number>().Int32Value()));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace mobillm
