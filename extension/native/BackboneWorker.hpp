// What the load and decode workers share: a job on a libuv worker thread for
// one Backbone that keeps the backbone's JavaScript object alive while it
// runs, settles one promise, and on failure marks the backbone idle and
// rejects with a coded error (`code_`, set by the job before it fails).
#pragma once

#include <napi.h>

#include "Backbone.hpp"
#include "codedError.hpp"

namespace mobillm {

class BackboneWorker : public Napi::AsyncWorker {
 public:
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  BackboneWorker(Napi::Env env, Backbone* bb, Napi::Object self, const char* failureCode)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), bb_(bb), code_(failureCode) {
    self_ = Napi::Persistent(self);
  }

  void OnError(const Napi::Error& e) override {
    bb_->SetBusy(false);
    deferred_.Reject(codedError(Env(), code_, e.Message()).Value());
  }

  Napi::Promise::Deferred deferred_;
  Backbone* bb_;
  Napi::ObjectReference self_;
  const char* code_;
};

}  // namespace mobillm
