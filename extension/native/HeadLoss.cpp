#include "HeadLoss.hpp"

#include <algorithm>
#include <cstring>

#include "codedError.hpp"

namespace mobillm {

HeadLoss::HeadLoss(const Napi::CallbackInfo& info) : Napi::ObjectWrap<HeadLoss>(info) {
  path_ = info[0].As<Napi::String>().Utf8Value();
  eps_ = info[1].As<Napi::Number>().FloatValue();
  threads_ = std::max(1, info[2].As<Napi::Number>().Int32Value());
  if (info.Length() > 3 && info[3].IsObject()) {
    Napi::Object t = info[3].As<Napi::Object>();
    if (t.Get("tailMass").IsNumber()) tuning_.tailMass = t.Get("tailMass").As<Napi::Number>().DoubleValue();
    if (t.Get("tailNats").IsNumber()) tuning_.tailNats = t.Get("tailNats").As<Napi::Number>().DoubleValue();
    if (t.Get("maxCandidates").IsNumber()) tuning_.maxCandidates = t.Get("maxCandidates").As<Napi::Number>().Int64Value();
    if (t.Get("keepLogits").IsBoolean()) tuning_.keepLogits = t.Get("keepLogits").As<Napi::Boolean>().Value();
  }
  if (info.Length() > 4 && info[4].IsObject()) {
    Napi::Object h = info[4].As<Napi::Object>();
    if (h.Get("tensor").IsString()) choice_.tensor = h.Get("tensor").As<Napi::String>().Utf8Value();
    if (h.Get("normScale").IsNumber()) choice_.normScale = h.Get("normScale").As<Napi::Number>().FloatValue();
    if (h.Get("layerNorm").IsBoolean()) choice_.layerNorm = h.Get("layerNorm").As<Napi::Boolean>().Value();
    if (h.Get("softCap").IsNumber()) choice_.softCap = std::max(0.0f, h.Get("softCap").As<Napi::Number>().FloatValue());
  }
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
    info.Set("mapped", Napi::Boolean::New(env, weights_->mapping != nullptr));
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
                std::vector<float> weights, bool wantGrad, RowRequest rows)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), head_(head), y_(std::move(y)),
        targets_(std::move(targets)), weights_(std::move(weights)), wantGrad_(wantGrad), rows_(std::move(rows)) {
    self_ = Napi::Persistent(self);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    const int64_t n = static_cast<int64_t>(targets_.size());
    losses_.resize(static_cast<size_t>(n));
    top_.resize(static_cast<size_t>(n));
    if (wantGrad_) grad_.resize(y_.size());
    std::string error;
    if (!head_->Compute(y_.data(), targets_.data(), weights_.data(), n, wantGrad_, losses_.data(), top_.data(), wantGrad_ ? grad_.data() : nullptr,
                        &denseTokens_, &rows_, &error)) {
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
    Napi::Int32Array top = Napi::Int32Array::New(env, top_.size());
    std::memcpy(top.Data(), top_.data(), top_.size() * sizeof(int32_t));
    res.Set("top", top);
    res.Set("denseTokens", Napi::Number::New(env, static_cast<double>(denseTokens_)));
    if (wantGrad_) {
      Napi::Float32Array grad = Napi::Float32Array::New(env, grad_.size());
      std::memcpy(grad.Data(), grad_.data(), grad_.size() * sizeof(float));
      res.Set("grad", grad);
    }
    if (!rows_.check.empty()) {
      res.Set("leftOutMax", Napi::Number::New(env, rows_.leftOutMax));
      res.Set("leftOutMean", Napi::Number::New(env, rows_.leftOutMean));
    }
    if (rows_.collect && wantGrad_ && rows_.within.empty()) {
      Napi::Int32Array offsets = Napi::Int32Array::New(env, rows_.offsets.size());
      std::memcpy(offsets.Data(), rows_.offsets.data(), rows_.offsets.size() * sizeof(int32_t));
      Napi::Int32Array ids = Napi::Int32Array::New(env, rows_.ids.size());
      if (!rows_.ids.empty()) std::memcpy(ids.Data(), rows_.ids.data(), rows_.ids.size() * sizeof(int32_t));
      Napi::Uint8Array dense = Napi::Uint8Array::New(env, rows_.dense.size());
      if (!rows_.dense.empty()) std::memcpy(dense.Data(), rows_.dense.data(), rows_.dense.size());
      res.Set("rows", [&] {
        Napi::Object o = Napi::Object::New(env);
        o.Set("offsets", offsets);
        o.Set("ids", ids);
        o.Set("dense", dense);
        return o;
      }());
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
  RowRequest rows_;
  std::vector<float> losses_, grad_;
  std::vector<int32_t> top_;
  int64_t denseTokens_ = 0;
};

// An optional list of rows: absent, or an Int32Array ascending without repeats within [0, vocab).
bool rowList(const Napi::Value& v, int64_t vocab, std::vector<int32_t>* out) {
  if (v.IsUndefined() || v.IsNull()) return true;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) return false;
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  out->assign(a.Data(), a.Data() + a.ElementLength());
  for (size_t i = 0; i < out->size(); ++i) {
    if ((*out)[i] < 0 || (*out)[i] >= vocab || (i > 0 && (*out)[i] <= (*out)[i - 1])) return false;
  }
  return true;
}

}  // namespace

Napi::Function HeadLoss::Init(Napi::Env env) {
  return DefineClass(env, "HeadLoss", {
    InstanceMethod<&HeadLoss::Load>("load"),
    InstanceMethod<&HeadLoss::Run>("run"),
    InstanceMethod<&HeadLoss::Dispose>("dispose"),
    InstanceMethod<&HeadLoss::SetHeadUpdate>("setHeadUpdate"),
    InstanceMethod<&HeadLoss::ExportHeadUpdate>("exportHeadUpdate"),
    InstanceMethod<&HeadLoss::StepHeadUpdateJs>("stepHeadUpdate"),
    InstanceMethod<&HeadLoss::SaveHeadUpdate>("saveHeadUpdate"),
    InstanceMethod<&HeadLoss::LoadHeadUpdate>("loadHeadUpdate"),
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
  RowRequest rows;
  if (info.Length() > 4 && info[4].IsObject()) {
    Napi::Object o = info[4].As<Napi::Object>();
    std::string bad;
    if (!rowList(o.Get("within"), weights_->vocab, &rows.within) || !rowList(o.Get("check"), weights_->vocab, &rows.check)) {
      bad = "within and check must be Int32Arrays of rows, ascending, without repeats.";
    } else if (!rows.within.empty() && !rows.check.empty()) {
      bad = "check needs a run over the whole vocabulary (no within).";
    } else if (!rows.within.empty()) {
      for (size_t j = 0; j < n && bad.empty(); ++j) {
        if (!std::binary_search(rows.within.begin(), rows.within.end(), t[j])) bad = "Every target must be among the rows of within.";
      }
    }
    if (!bad.empty()) {
      codedError(env, "BAD_ARGUMENT", bad).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    rows.collect = o.Get("collect").ToBoolean().Value();
    Napi::Value seg = o.Get("segments");
    if (!seg.IsUndefined()) {
      bool ok = seg.IsTypedArray() && seg.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array;
      int64_t total = 0;
      if (ok) {
        Napi::Int32Array a = seg.As<Napi::Int32Array>();
        rows.segments.assign(a.Data(), a.Data() + a.ElementLength());
        for (const int32_t c : rows.segments) {
          ok = ok && c > 0;
          total += c;
        }
      }
      if (!ok || total != static_cast<int64_t>(n)) {
        codedError(env, "BAD_ARGUMENT", "segments must be an Int32Array of positive token counts summing to the targets' length.").ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
  }
  busy_ = true;
  auto* worker = new HeadRunWorker(env, this, info.This().As<Napi::Object>(), std::vector<float>(y.Data(), y.Data() + y.ElementLength()),
                                   std::vector<int32_t>(t.Data(), t.Data() + n), std::vector<float>(w.Data(), w.Data() + n),
                                   info[3].ToBoolean().Value(), std::move(rows));
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
