// Loads a GGUF model and creates its llama.cpp context on a libuv worker
// thread; on success the backbone adopts both (on the JavaScript thread).
#pragma once

#include <napi.h>

#include <string>

#include "llama.h"

#include "BackboneWorker.hpp"

namespace mobillm {

struct CaptureState;

class LoadWorker : public BackboneWorker {
 public:
  LoadWorker(Napi::Env env, Backbone* bb, Napi::Object self, std::string path, uint32_t nCtx,
             uint32_t nBatch, uint32_t nSeqMax, int32_t nThreads, bool flashAttention)
      : BackboneWorker(env, bb, self, "MODEL_LOAD_FAILED"),
        path_(std::move(path)),
        nCtx_(nCtx),
        nBatch_(nBatch),
        nSeqMax_(nSeqMax),
        nThreads_(nThreads),
        flashAttention_(flashAttention),
        captureSlot_(bb->captureSlot()) {}

  void Execute() override;
  void OnOK() override;

 private:
  std::string path_;
  uint32_t nCtx_, nBatch_, nSeqMax_;
  int32_t nThreads_;
  bool flashAttention_;
  CaptureState** captureSlot_;
  llama_model* model_ = nullptr;
  llama_context* ctx_ = nullptr;
};

}  // namespace mobillm
