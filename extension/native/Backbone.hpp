// The Backbone JavaScript object: owns one llama_model, its llama_context and
// the side network to run inside forward passes; queues load and decode
// workers (one at a time).
#pragma once

#include <napi.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "llama.h"

#include "SideNetwork.hpp"

namespace mobillm {

struct CaptureState;
class DecodeWorker;

class Backbone : public Napi::ObjectWrap<Backbone> {
 public:
  static Napi::Function Init(Napi::Env env);

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
  const SideNet* sideNet() const { return sideNet_.get(); }
  // Touched only by the running decode worker (one at a time) and by setAdapter/clearAdapter when idle.
  SideCache& sideCache() { return sideCache_; }
  uint32_t nCtx() const { return nCtx_; }
  uint32_t nBatch() const { return nBatch_; }
  uint32_t nSeqMax() const { return nSeqMax_; }
  // Read by the decode worker between chunks; set by cancel() on the JavaScript thread.
  bool cancelRequested() const { return cancel_.load(); }

 private:
  bool CheckUsable(Napi::Env env, bool needLoaded = true);
  bool CheckIdle(Napi::Env env);
  void FreeNative();

  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Tokenize(const Napi::CallbackInfo& info);
  Napi::Value TokenPiece(const Napi::CallbackInfo& info);
  Napi::Value Capture(const Napi::CallbackInfo& info);
  Napi::Value LossOf(const Napi::CallbackInfo& info);
  Napi::Value LogitsAfter(const Napi::CallbackInfo& info);
  Napi::Value SetAdapter(const Napi::CallbackInfo& info);
  Napi::Value ClearAdapter(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    cancel_.store(true);
    return info.Env().Undefined();
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }
  Napi::Value Queue(std::unique_ptr<DecodeWorker> worker);

  llama_model* model_ = nullptr;
  llama_context* ctx_ = nullptr;
  std::unique_ptr<SideNet> sideNet_;
  SideCache sideCache_;
  CaptureState* active_ = nullptr;
  uint32_t nCtx_ = 0;
  uint32_t nBatch_ = 0;
  uint32_t nSeqMax_ = 0;
  std::atomic<bool> cancel_{false};
  bool busy_ = false;
  bool disposed_ = false;
  bool freePending_ = false;
};

}  // namespace mobillm
