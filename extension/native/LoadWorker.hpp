// Loads a GGUF model and creates its llama.cpp context on a libuv worker
// thread; on success the backbone adopts both (on the JavaScript thread).
#pragma once

#include <napi.h>

#include <string>

#include "llama.h"

#include "Backbone.hpp"

namespace mobillm {


struct CaptureState;

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

  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& e) override;

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


}  // namespace mobillm
